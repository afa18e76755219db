package lab

import (
	"errors"
	"fmt"
	"io/fs"
	"runtime"

	"golang.org/x/sys/unix"

	"github.com/portsleuth/portsleuth/internal/scenario"
)

// Calls an experiment reports as failed.
const (
	CallBind    = "bind"
	CallConnect = "connect"
	CallListen  = "listen"
	CallNone    = "none"
)

// experiment is one baseline or remedy run in its own namespace.
type experiment struct {
	remedy, pattern, variant string
	cfg                      config
	attempts                 int
	work                     func(*experiment) error
	m                        Measure
	note                     string
	// unavailable says why the remedy could not be applied on this kernel.
	unavailable string
	fds         []int
}

// rangeStart is the first port of every lab range; listeners sit below it
// so they never take from the pools.
const rangeStart = 40000

// Listener ports: TCP destinations, UDP destinations, a server's port.
const (
	destPort    = 8080
	udpDestPort = 5300
	serverPort  = 9000
	fixedPort   = 30000 // the fixed source port of a tuple conflict
)

func (e *experiment) String() string {
	name := e.remedy
	if name == "" {
		name = "baseline"
	}
	return fmt.Sprintf("%s %s", e.pattern, name)
}

// run runs the workload in a fresh network namespace on a thread of its own.
func (e *experiment) run() error {
	done := make(chan error, 1)
	go e.onOwnThread(done)
	if err := <-done; err != nil {
		return fmt.Errorf("%s: %w", e, err)
	}
	return nil
}

// onOwnThread locks its thread and never unlocks it, so the thread exits
// with the goroutine and takes the namespace with it: no other goroutine
// ever runs there. The main thread is the exception: Go never ends it (it
// would stay parked in the lab's namespace), so there the work moves to
// another thread, which it cannot share while this goroutine holds it.
func (e *experiment) onOwnThread(done chan<- error) {
	runtime.LockOSThread()
	if unix.Gettid() == unix.Getpid() {
		inner := make(chan error, 1)
		go e.onOwnThread(inner)
		err := <-inner
		runtime.UnlockOSThread()
		done <- err
		return
	}
	err := e.inNamespace()
	e.closeAll() // before the caller hears of it: it may count fds next
	done <- err
}

func (e *experiment) inNamespace() error {
	if err := scenario.Isolate(); err != nil {
		return err
	}
	rng := fmt.Sprintf("%d %d", rangeStart, rangeStart+e.cfg.rangeN-1)
	if err := scenario.Sysctl("ip_local_port_range", rng); err != nil {
		return err
	}
	for _, s := range e.cfg.sysctls {
		err := scenario.Sysctl(s.name, s.value)
		if errors.Is(err, fs.ErrNotExist) {
			e.unavailable = missingSysctl(s.name)
			return nil
		}
		if err != nil {
			return err
		}
	}
	return e.work(e)
}

// missingSysctl says why a sysctl is not there.
func missingSysctl(name string) string {
	why := map[string]string{
		"tcp_tw_recycle":    "removed in Linux 4.12",
		"ip_autobind_reuse": "added in Linux 5.7",
	}[name]
	s := "net.ipv4." + name + " does not exist on this kernel"
	if why != "" {
		s += " (" + why + ")"
	}
	return s
}

func (e *experiment) closeAll() {
	for _, fd := range e.fds {
		unix.Close(fd)
	}
	e.fds = nil
}

// socket makes a socket the experiment closes at the end.
func (e *experiment) socket(typ int) (int, error) {
	fd, err := unix.Socket(unix.AF_INET, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("socket: %w", err)
	}
	e.fds = append(e.fds, fd)
	return fd, nil
}

// closeNow closes a socket before the end (the last one made).
func (e *experiment) closeNow(fd int) {
	for i := len(e.fds) - 1; i >= 0; i-- {
		if e.fds[i] == fd {
			e.fds = append(e.fds[:i], e.fds[i+1:]...)
			break
		}
	}
	unix.Close(fd)
}

// options sets the config's socket options; false when the kernel lacks one
// (e.unavailable says which).
func (e *experiment) options(fd int) (bool, error) {
	c := e.cfg
	for _, o := range []struct {
		on         bool
		level, opt int
		val        int
		name       string
	}{
		{c.reuseAddr, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1, "SO_REUSEADDR"},
		{c.reusePort, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1, "SO_REUSEPORT"},
		{c.noPort, unix.SOL_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1, "IP_BIND_ADDRESS_NO_PORT"},
		// Low 16 bits the lowest port, high 16 the highest.
		{c.socketRange, unix.SOL_IP, unix.IP_LOCAL_PORT_RANGE, 1024 | 65535<<16, "IP_LOCAL_PORT_RANGE"},
	} {
		if !o.on {
			continue
		}
		err := unix.SetsockoptInt(fd, o.level, o.opt, o.val)
		if errors.Is(err, unix.ENOPROTOOPT) {
			e.unavailable = fmt.Sprintf("setsockopt(%s) says ENOPROTOOPT: this kernel lacks it (added in Linux 6.3)", o.name)
			if o.name != "IP_LOCAL_PORT_RANGE" {
				e.unavailable = fmt.Sprintf("setsockopt(%s) says ENOPROTOOPT: this kernel lacks it", o.name)
			}
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("setsockopt(%s): %w", o.name, err)
		}
	}
	return true, nil
}

func setLinger0(fd int) error {
	return unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
}

// fail records the first failed call; errors that are not the kernel
// refusing a port are the experiment's own error.
func (e *experiment) fail(call string, err error) error {
	var errno unix.Errno
	if !errors.As(err, &errno) {
		return fmt.Errorf("%s: %w", call, err)
	}
	switch errno {
	case unix.EADDRINUSE, unix.EADDRNOTAVAIL, unix.EAGAIN:
	default:
		return fmt.Errorf("%s: %w", call, err)
	}
	e.m.FailedCall, e.m.Errno = call, unix.ErrnoName(errno)
	return nil
}

func (e *experiment) succeeded() {
	e.m.FailedCall, e.m.Errno = CallNone, ""
}

func loopback(host byte, port int) unix.Sockaddr {
	return &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, host}, Port: port}
}

// dest is attempt i's destination, src its source address (127.0.0.1 and up).
func (e *experiment) dest(i int) unix.Sockaddr { return loopback(1, destPort+i%e.cfg.dests) }

func (e *experiment) src(i int) byte { return byte(1 + (i/e.cfg.dests)%e.cfg.sources) }

// listeners opens one listener per destination.
func (e *experiment) listeners() ([]int, error) {
	var ls []int
	for i := 0; i < e.cfg.dests; i++ {
		fd, err := e.listener(loopback(1, destPort+i), false)
		if err != nil {
			return nil, err
		}
		ls = append(ls, fd)
	}
	return ls, nil
}

func (e *experiment) listener(sa unix.Sockaddr, reusePort bool) (int, error) {
	fd, err := e.socket(unix.SOCK_STREAM)
	if err != nil {
		return -1, err
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		return -1, fmt.Errorf("setsockopt(SO_REUSEADDR): %w", err)
	}
	if reusePort {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
			return -1, fmt.Errorf("setsockopt(SO_REUSEPORT): %w", err)
		}
	}
	if err := unix.Bind(fd, sa); err != nil {
		return -1, fmt.Errorf("binding a listener: %w", err)
	}
	if err := unix.Listen(fd, 4096); err != nil {
		return -1, fmt.Errorf("listen: %w", err)
	}
	return fd, nil
}
