package scenario

import (
	"fmt"
	"os"
	"os/exec"
	"time"

	"golang.org/x/sys/unix"
)

// FailAttempts is how many calls each exhaustion scenario makes after the
// pool ran out; every one of them must fail.
const FailAttempts = 10

// bindAnyBeforeConnect is the Erlang VM incident: bind(0.0.0.0:0) before every
// connect(). bind(0) needs a port free for all destinations, so 64 ports give
// 64 connections although the 4-tuple space is nearly empty.
func bindAnyBeforeConnect(r *Result) error {
	if _, err := r.listen("127.0.0.1", ListenPort); err != nil {
		return err
	}
	if err := r.bindThenConnect("0.0.0.0", RangeSize+FailAttempts); err != nil {
		return err
	}
	time.Sleep(HolderLinger) // a real culprit lives on: let the agent look at its namespace
	return nil
}

// bindThenConnect makes n attempts of bind(ip:0) + connect(), keeping every
// connection open. Only bind may fail: a bound socket that can't connect is an error.
func (r *Result) bindThenConnect(ip string, n int) error {
	for i := 0; i < n; i++ {
		fd, err := tcpSocket()
		if err != nil {
			return err
		}
		if err := r.bind(fd, ip, 0); err != nil {
			unix.Close(fd)
			if errnoOf(err) != unix.EADDRINUSE {
				return fmt.Errorf("bind(%s:0): %w", ip, err)
			}
			continue
		}
		if err := r.connect(fd, "127.0.0.1", ListenPort); err != nil {
			return fmt.Errorf("connect after bind(%s:0): %w", ip, err)
		}
	}
	return nil
}

// SquidAddrs are the local addresses bindIPBeforeConnect binds, like squid's
// tcp_outgoing_address list.
var SquidAddrs = []string{"127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"}

// SquidFailsPerAddr is how many failing binds each address gets.
const SquidFailsPerAddr = 5

// bindIPBeforeConnect is the squid incident: bind(ip:0) before connect across
// several source addresses. Each address has its own 64-port pool.
func bindIPBeforeConnect(r *Result) error {
	if _, err := r.listen("127.0.0.1", ListenPort); err != nil {
		return err
	}
	for _, ip := range SquidAddrs {
		if err := r.bindThenConnect(ip, RangeSize+SquidFailsPerAddr); err != nil {
			return err
		}
	}
	return nil
}

// timeWaitExhaustion is the image-server incident: connect+close to one
// destination without keep-alive. The client closes first, so every used
// port sits in TIME_WAIT; with tcp_tw_reuse=0 connect() runs out of ports.
func timeWaitExhaustion(r *Result) error {
	if err := timeWaitPrefill(r); err != nil {
		return err
	}
	for i := 0; i < FailAttempts; i++ {
		fd, err := tcpSocket()
		if err != nil {
			return err
		}
		if err := r.connect(fd, "127.0.0.1", ListenPort); errnoOf(err) != unix.EADDRNOTAVAIL {
			return fmt.Errorf("connect with every port in TIME_WAIT: want EADDRNOTAVAIL, got %v", err)
		}
		unix.Close(fd)
	}
	time.Sleep(HolderLinger)
	return nil
}

// PortInUseAttempts is how many times portInUse binds the held port.
const PortInUseAttempts = 3

// portInUse is the plain case: a server can't bind its port because a
// listener holds it, SO_REUSEADDR or not.
func portInUse(r *Result) error {
	if _, err := r.listen("127.0.0.1", ListenPort); err != nil {
		return err
	}
	for i := 0; i < PortInUseAttempts; i++ {
		fd, err := tcpSocket()
		if err != nil {
			return err
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
			return err
		}
		if err := r.bind(fd, "127.0.0.1", ListenPort); errnoOf(err) != unix.EADDRINUSE {
			return fmt.Errorf("second bind of a listening port: want EADDRINUSE, got %v", err)
		}
		unix.Close(fd)
	}
	// A real holder outlives the failure: stay a moment so the agent can
	// find the listener's owner in /proc.
	time.Sleep(HolderLinger)
	return nil
}

// HolderLinger is how long a scenario keeps its sockets after its failures,
// as a real culprit would, so the agent can look at its namespace. The agent
// reads a failure within its 200 ms tick and looks at the namespace next;
// on an emulated CPU shared with another VM (CI) that look came 0.35-0.9 s
// after the failure, more on the first (the iterators load): a second or
// so left little room (likely why two fresh-clone runs had a snapshot or a
// holder missing).
const HolderLinger = 3 * time.Second

// NoPortConnections is how many connections bindNoPortFix opens: more than
// the range, so plain bind-before-connect would fail.
const NoPortConnections = 100

// bindNoPortFix is the recommended pattern: IP_BIND_ADDRESS_NO_PORT, then
// bind(ip:0) + connect. The port is chosen per destination at connect time,
// so two destinations give twice the range.
func bindNoPortFix(r *Result) error {
	for _, port := range []int{ListenPort, ListenPort2} {
		if _, err := r.listen("127.0.0.1", port); err != nil {
			return err
		}
	}
	for i := 0; i < NoPortConnections; i++ {
		fd, err := tcpSocket()
		if err != nil {
			return err
		}
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1); err != nil {
			return err
		}
		if err := r.bind(fd, "127.0.0.1", 0); err != nil {
			return fmt.Errorf("bind with IP_BIND_ADDRESS_NO_PORT: %w", err)
		}
		if err := r.connect(fd, "127.0.0.1", ListenPort+i%2); err != nil {
			return fmt.Errorf("connect %d: %w", i, err)
		}
	}
	return nil
}

// Busy counts: connections and refused connects of busyOK.
const (
	BusyConnects = 300
	BusyRefused  = 20
	BusyUDPBinds = 50
)

// busyOK is an unrelated, busy, healthy process: many successful connects,
// refused ones (not an address error) and UDP binds. It is never a culprit.
func busyOK(r *Result) error {
	if err := Sysctl("ip_local_port_range", "20000 60000"); err != nil {
		return err
	}
	lfd, err := r.listen("127.0.0.1", ListenPort)
	if err != nil {
		return err
	}
	for i := 0; i < BusyConnects; i++ {
		fd, srv, err := r.connectAccepted(lfd, ListenPort)
		if err != nil {
			return fmt.Errorf("busy connect: %w", err)
		}
		unix.Close(fd)
		unix.Close(srv)
	}
	for i := 0; i < BusyRefused; i++ {
		fd, err := tcpSocket()
		if err != nil {
			return err
		}
		if err := r.connect(fd, "127.0.0.1", 9); errnoOf(err) != unix.ECONNREFUSED {
			return fmt.Errorf("connect to a closed port: want ECONNREFUSED, got %v", err)
		}
		unix.Close(fd)
	}
	for i := 0; i < BusyUDPBinds; i++ {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		if err := r.bind(fd, "127.0.0.1", 0); err != nil {
			return fmt.Errorf("udp bind: %w", err)
		}
		unix.Close(fd)
	}
	return nil
}

// culpritBesideBusy runs busyOK in a child process, then is the Erlang culprit
// itself: the report must name the culprit and not the busy child.
func culpritBesideBusy(r *Result) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	child := exec.Command(exe)
	child.Env = append(os.Environ(), Env+"=busy-ok")
	child.Stderr = os.Stderr
	out, err := child.Output()
	if err != nil {
		return fmt.Errorf("busy child: %w", err)
	}
	r.Child = child.Process.Pid
	os.Stderr.Write(out)
	return bindAnyBeforeConnect(r)
}

// TuplePort is the fixed source port of tupleConflict.
const TuplePort = 40100

// tupleConflict binds two SO_REUSEADDR sockets to one fixed source port and
// connects both to one destination: the second 4-tuple already exists.
func tupleConflict(r *Result) error {
	if _, err := r.listen("127.0.0.1", ListenPort); err != nil {
		return err
	}
	for i := 0; i < 2; i++ {
		fd, err := tcpSocket()
		if err != nil {
			return err
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
			return err
		}
		if err := r.bind(fd, "127.0.0.1", TuplePort); err != nil {
			return fmt.Errorf("bind of a fixed source port: %w", err)
		}
		err = r.connect(fd, "127.0.0.1", ListenPort)
		if want := map[int]unix.Errno{0: 0, 1: unix.EADDRNOTAVAIL}[i]; errnoOf(err) != want {
			return fmt.Errorf("connect %d from a fixed port: want %v, got %v", i, want, err)
		}
	}
	return nil
}

// NonLocalAddr is a documentation address (TEST-NET-1) that no namespace of ours has.
const NonLocalAddr = "192.0.2.1"

// ipv6AndUDP covers the other families and protocols: a TCP port held on
// [::1], a UDP port held on 127.0.0.1, and a bind to an address this
// namespace doesn't have. One failure each.
func ipv6AndUDP(r *Result) error {
	// IPv6: listener on [::1]:8080, then a second bind of it.
	l6, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	lo6 := &unix.SockaddrInet6{Addr: [16]byte{15: 1}, Port: ListenPort}
	if err := r.bindSA(l6, lo6); err != nil {
		return fmt.Errorf("bind [::1]:%d: %w", ListenPort, err)
	}
	if err := unix.Listen(l6, 16); err != nil {
		return err
	}
	s6, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	if err := unix.SetsockoptInt(s6, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1); err != nil {
		return err
	}
	if err := r.bindSA(s6, lo6); errnoOf(err) != unix.EADDRINUSE {
		return fmt.Errorf("second bind of [::1]:%d: want EADDRINUSE, got %v", ListenPort, err)
	}

	// UDP: two sockets on one port without SO_REUSEADDR.
	var u [2]int
	for i := range u {
		if u[i], err = unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0); err != nil {
			return err
		}
	}
	if err := r.bind(u[0], "127.0.0.1", UDPPort); err != nil {
		return err
	}
	if err := r.bind(u[1], "127.0.0.1", UDPPort); errnoOf(err) != unix.EADDRINUSE {
		return fmt.Errorf("second UDP bind: want EADDRINUSE, got %v", err)
	}

	// An address that is not local.
	fd, err := tcpSocket()
	if err != nil {
		return err
	}
	if err := r.bind(fd, NonLocalAddr, 0); errnoOf(err) != unix.EADDRNOTAVAIL {
		return fmt.Errorf("bind to %s: want EADDRNOTAVAIL, got %v", NonLocalAddr, err)
	}
	return nil
}

// UDPPort is the port ipv6AndUDP binds twice.
const UDPPort = 5353

func (r *Result) bindSA(fd int, sa unix.Sockaddr) error {
	err := unix.Bind(fd, sa)
	if err != nil {
		r.BindsFailed++
		r.Errors[unix.ErrnoName(errnoOf(err))]++
		return err
	}
	r.BindsOK++
	return nil
}

// StormBinds is how many failing binds bindStorm makes.
const StormBinds = 2000

// bindStorm is a restart loop gone wild: one socket retries bind() of a held
// port as fast as it can.
func bindStorm(r *Result) error {
	if _, err := r.listen("127.0.0.1", ListenPort); err != nil {
		return err
	}
	fd, err := tcpSocket()
	if err != nil {
		return err
	}
	for i := 0; i < StormBinds; i++ {
		if err := r.bind(fd, "127.0.0.1", ListenPort); errnoOf(err) != unix.EADDRINUSE {
			return fmt.Errorf("bind %d of a held port: want EADDRINUSE, got %v", i, err)
		}
	}
	return nil
}

// ListenFails is how many listen() calls on unbound sockets listen makes
// after the range ran out.
const ListenFails = 5

// listenFailures covers the two ways listen() fails EADDRINUSE: on an unbound socket
// it takes a port from the ephemeral range, so 64 listeners exhaust it; and
// two SO_REUSEADDR sockets that shared a port with bind() cannot both listen.
func listenFailures(r *Result) error {
	r.Extra = map[string]int{}
	for i := 0; i < RangeSize+ListenFails; i++ {
		fd, err := tcpSocket()
		if err != nil {
			return err
		}
		if err := unix.Listen(fd, 1); err != nil {
			if errnoOf(err) != unix.EADDRINUSE {
				return fmt.Errorf("listen without bind: %w", err)
			}
			r.Extra["listen_unbound_failed"]++
			unix.Close(fd)
			continue
		}
		r.Extra["listen_unbound_ok"]++
	}
	var fds [2]int
	for i := range fds {
		fd, err := tcpSocket()
		if err != nil {
			return err
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
			return err
		}
		if err := r.bind(fd, "127.0.0.1", ListenPort); err != nil {
			return fmt.Errorf("SO_REUSEADDR bind %d of a shared port: %w", i, err)
		}
		fds[i] = fd
	}
	if err := unix.Listen(fds[0], 1); err != nil {
		return err
	}
	if err := unix.Listen(fds[1], 1); errnoOf(err) != unix.EADDRINUSE {
		return fmt.Errorf("second listen on a shared port: want EADDRINUSE, got %v", err)
	}
	r.Extra["listen_shared_failed"]++
	time.Sleep(HolderLinger)
	return nil
}

// Pool sizes of holdPools.
const (
	HoldEstablished = 10
	HoldTimeWait    = 20
	HoldBound       = 5
)

// holdPools fills known numbers into the pools ports measures: to
// 127.0.0.1:8080, HoldEstablished open connections and HoldTimeWait closed
// ones (client-side close, tcp_tw_reuse=0); to 127.0.0.1:8081,
// HoldBound bind(127.0.0.1:0)+connect sockets, whose ports a bind() owns and
// so leave every destination's pool. It then holds them (HoldEnv).
func holdPools(r *Result) error {
	if err := Sysctl("tcp_tw_reuse", "0"); err != nil {
		return err
	}
	l1, err := r.listen("127.0.0.1", ListenPort)
	if err != nil {
		return err
	}
	if _, err := r.listen("127.0.0.1", ListenPort2); err != nil {
		return err
	}
	for i := 0; i < HoldEstablished+HoldTimeWait; i++ {
		fd, srv, err := r.connectAccepted(l1, ListenPort)
		if err != nil {
			return err
		}
		if i >= HoldEstablished {
			unix.Close(fd) // the client closes first: its side goes to TIME_WAIT
			unix.Close(srv)
		}
	}
	for i := 0; i < HoldBound; i++ {
		fd, err := tcpSocket()
		if err != nil {
			return err
		}
		if err := r.bind(fd, "127.0.0.1", 0); err != nil {
			return err
		}
		if err := r.connect(fd, "127.0.0.1", ListenPort2); err != nil {
			return err
		}
	}
	return nil
}

// ManyOpen connections are held open (two fds each: within a 20k fd limit)
// and ManyTimeWait more are closed client-first, spread over ManyDests
// destination ports so no pool gets crowded (a crowded pool makes each
// connect() scan the range): a namespace of about 100k sockets for timing ports.
const (
	ManyOpen     = 9000
	ManyTimeWait = 82000
	ManyDests    = 16
)

func manySockets(r *Result) error {
	if err := Sysctl("ip_local_port_range", "10000 65000"); err != nil {
		return err
	}
	if err := Sysctl("tcp_tw_reuse", "0"); err != nil {
		return err
	}
	var ls [ManyDests]int
	for i := range ls {
		l, err := r.listen("127.0.0.1", ListenPort+i)
		if err != nil {
			return err
		}
		ls[i] = l
	}
	for i := 0; i < ManyOpen+ManyTimeWait; i++ {
		fd, err := tcpSocket()
		if err != nil {
			return err
		}
		if err := unix.Connect(fd, sockaddr("127.0.0.1", ListenPort+i%ManyDests)); err != nil {
			return fmt.Errorf("connect %d: %w", i, err)
		}
		srv, _, err := unix.Accept4(ls[i%ManyDests], unix.SOCK_CLOEXEC)
		if err != nil {
			return err
		}
		if i >= ManyOpen {
			unix.Close(fd)
			unix.Close(srv)
		}
	}
	r.ConnectsOK = ManyOpen + ManyTimeWait
	return nil
}
