package scenario

import (
	"bufio"
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Starve sizes: the culprit holds StarveHeld ports through bind() before
// connect(); the victim then tries StarveTries plain connects.
const (
	StarveHeld  = 60
	StarveTries = 10
)

// starve is cross-process starvation: a forked child (the culprit) binds
// StarveHeld sockets to 127.0.0.1:0 and connects them to :8080, holding
// their ports for every destination; then this process (the victim) makes
// plain connects to :8081, and all but the ports left fail EADDRNOTAVAIL.
// Extra["culprit"] is the child's pid, Extra["netns"] the namespace.
func starve(r *Result) error {
	for _, port := range []int{ListenPort, ListenPort2} {
		if _, err := r.listen("127.0.0.1", port); err != nil {
			return err
		}
	}
	sa, salen := rawSockaddr4([4]byte{127, 0, 0, 1}, 0)
	dst, dstlen := rawSockaddr4([4]byte{127, 0, 0, 1}, ListenPort)
	c := &rawBindConnect{sa: sa, salen: salen, dst: dst, dstlen: dstlen, n: StarveHeld}
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC); err != nil {
		return err
	}
	c.ready = uintptr(fds[1])
	pid, err := rawFork(c)
	if err != nil {
		return err
	}
	unix.Close(fds[1])
	defer func() {
		unix.Kill(pid, unix.SIGKILL)
		var ws unix.WaitStatus
		unix.Wait4(pid, &ws, 0, nil)
	}()
	// The child writes one byte per connection it holds, then waits to be killed.
	held := 0
	buf := make([]byte, StarveHeld)
	for held < StarveHeld {
		n, err := unix.Read(fds[0], buf)
		if err != nil || n == 0 {
			break
		}
		held += n
	}
	unix.Close(fds[0])
	if held != StarveHeld {
		return fmt.Errorf("the culprit held %d connections, want %d", held, StarveHeld)
	}
	for i := 0; i < StarveTries; i++ {
		fd, err := tcpSocket()
		if err != nil {
			return err
		}
		_ = r.connect(fd, "127.0.0.1", ListenPort2) // counted; kept open, like a client pool
	}
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		return err
	}
	r.Extra = map[string]int{"culprit": pid, "held": held, "netns": int(st.Ino)}
	linger()
	return nil
}

// linger keeps the namespace and its sockets a moment after the failures, as
// an incident's would be (see HolderLinger).
func linger() { time.Sleep(HolderLinger) }

// rawBindConnect is the starving child: n sockets bound to sa (port 0) and
// connected to dst, one byte to ready per connection, then pause.
type rawBindConnect struct {
	sa, dst       unsafe.Pointer
	salen, dstlen uintptr
	n             int
	ready         uintptr
}

//go:nosplit
func (c *rawBindConnect) run() {
	one := [1]byte{1}
	for i := 0; i < c.n; i++ {
		fd, _, e := syscall.RawSyscall(syscall.SYS_SOCKET, syscall.AF_INET, syscall.SOCK_STREAM, 0)
		if e != 0 {
			break
		}
		if _, _, e := syscall.RawSyscall(syscall.SYS_BIND, fd, uintptr(c.sa), c.salen); e != 0 {
			break
		}
		if _, _, e := syscall.RawSyscall(syscall.SYS_CONNECT, fd, uintptr(c.dst), c.dstlen); e != 0 {
			break
		}
		syscall.RawSyscall(syscall.SYS_WRITE, c.ready, uintptr(unsafe.Pointer(&one[0])), 1)
	}
	syscall.RawSyscall(syscall.SYS_CLOSE, c.ready, 0, 0)
	for {
		syscall.RawSyscall(syscall.SYS_PAUSE, 0, 0, 0)
	}
}

// CrashLoopRuns is how many times the crash-looping server fails to start.
const CrashLoopRuns = 3

// crashLoop is a server that fails to bind its port and exits at once, again
// and again, while another process holds the port: a forked child listens
// on :8080, then CrashLoopRuns forked children each bind :8080, fail
// EADDRINUSE and exit within microseconds. Extra["holder"] is the listener.
func crashLoop(r *Result) error {
	sa, salen := rawSockaddr4([4]byte{127, 0, 0, 1}, ListenPort)
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC); err != nil {
		return err
	}
	holder, err := rawFork(&rawListener{sa: sa, salen: salen, ready: uintptr(fds[1])})
	if err != nil {
		return err
	}
	unix.Close(fds[1])
	defer func() {
		unix.Kill(holder, unix.SIGKILL)
		var ws unix.WaitStatus
		unix.Wait4(holder, &ws, 0, nil)
	}()
	buf := make([]byte, 1)
	if n, err := unix.Read(fds[0], buf); err != nil || n != 1 {
		return fmt.Errorf("the holder did not start listening: %v", err)
	}
	unix.Close(fds[0])
	failed := 0
	for i := 0; i < CrashLoopRuns; i++ {
		pid, err := rawFork(&rawBindOnceFamily{family: unix.AF_INET, sotype: unix.SOCK_STREAM, sa: sa, salen: salen})
		if err != nil {
			return err
		}
		var ws unix.WaitStatus
		if _, err := unix.Wait4(pid, &ws, 0, nil); err != nil {
			return err
		}
		if ws.Exited() && ws.ExitStatus() == int(unix.EADDRINUSE) {
			failed++
		}
	}
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		return err
	}
	r.Extra = map[string]int{"holder": holder, "failed": failed, "netns": int(st.Ino)}
	linger()
	return nil
}

// rawListener listens on sa, says so on ready, then pauses.
type rawListener struct {
	sa    unsafe.Pointer
	salen uintptr
	ready uintptr
}

//go:nosplit
func (l *rawListener) run() {
	one := [1]byte{1}
	fd, _, e := syscall.RawSyscall(syscall.SYS_SOCKET, syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if e == 0 {
		_, _, e = syscall.RawSyscall(syscall.SYS_BIND, fd, uintptr(l.sa), l.salen)
	}
	if e == 0 {
		_, _, e = syscall.RawSyscall(syscall.SYS_LISTEN, fd, 16, 0)
	}
	if e == 0 {
		syscall.RawSyscall(syscall.SYS_WRITE, l.ready, uintptr(unsafe.Pointer(&one[0])), 1)
	}
	syscall.RawSyscall(syscall.SYS_CLOSE, l.ready, 0, 0)
	for {
		syscall.RawSyscall(syscall.SYS_PAUSE, 0, 0, 0)
	}
}

// CloserConnections is how many connections the closer scenario's child
// opens and closes first.
const CloserConnections = 60

// closerExhaustion is the image-server incident in small: a short-lived
// client (a forked child) opens CloserConnections connections and closes
// each first, so the TIME_WAITs are its, and exits; then this process's
// plain connects to the same destination find the pool taken by those
// TIME_WAITs (tcp_tw_reuse=0) and fail. Extra["closer"] is the child's pid,
// Extra["time_wait"] the TIME_WAITs the kernel holds at the end: loopback can
// still, rarely, answer a closed connection's last ACK with a RST (seen with
// tcp_send_reset from a listener, reason TCP_FLAGS), which ends a TIME_WAIT
// early, so the count is measured, not assumed.
func closerExhaustion(r *Result) error {
	if err := Sysctl("tcp_tw_reuse", "0"); err != nil {
		return err
	}
	lfd, err := r.listen("127.0.0.1", ListenPort)
	if err != nil {
		return err
	}
	dst, dstlen := rawSockaddr4([4]byte{127, 0, 0, 1}, ListenPort)
	pid, err := rawFork(&rawConnectClose{dst: dst, dstlen: dstlen, n: CloserConnections})
	if err != nil {
		return err
	}
	// The server greets each connection and closes only after the client's
	// FIN: the client keeps the TIME_WAIT, as a client that closes first
	// does. The client closes only once it has read the greeting, so the
	// handshake is complete on both sides: a FIN that overtakes the
	// handshake's last ACK (they can leave from different CPUs when the
	// child migrates) can be answered by a RST, which kills the TIME_WAIT.
	buf := make([]byte, 16)
	for i := 0; i < CloserConnections; i++ {
		fd, _, err := unix.Accept4(lfd, unix.SOCK_CLOEXEC)
		if err != nil {
			return fmt.Errorf("accepting the closer's connection %d: %w", i, err)
		}
		if _, err := unix.Write(fd, []byte{'+'}); err != nil {
			return fmt.Errorf("greeting the closer's connection %d: %w", i, err)
		}
		for {
			n, err := unix.Read(fd, buf)
			if n <= 0 || err != nil {
				break
			}
		}
		unix.Close(fd)
	}
	var ws unix.WaitStatus
	if _, err := unix.Wait4(pid, &ws, 0, nil); err != nil {
		return err
	}
	if !ws.Exited() || ws.ExitStatus() != CloserConnections {
		return fmt.Errorf("the closer ended with %v, want %d connections closed", ws, CloserConnections)
	}
	// The closer's last FINs may still be in flight (a loaded host defers
	// the softirq that answers them): a port in FIN_WAIT or CLOSING is taken
	// as surely as one in TIME_WAIT, but not counted as one. Wait (bounded)
	// until every closed connection is TIME_WAIT or gone.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		st, err := clientStatesTo(ListenPort)
		if err != nil {
			return err
		}
		if st[tcpFinWait1]+st[tcpFinWait2]+st[tcpClosing] == 0 || time.Now().After(deadline) {
			break
		}
	}
	for i := 0; i < StarveTries; i++ {
		fd, err := tcpSocket()
		if err != nil {
			return err
		}
		if r.connect(fd, "127.0.0.1", ListenPort) == nil {
			if afd, _, err := unix.Accept4(lfd, unix.SOCK_CLOEXEC); err == nil {
				defer unix.Close(afd)
			}
		}
	}
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		return err
	}
	states, err := clientStatesTo(ListenPort)
	if err != nil {
		return err
	}
	r.Extra = map[string]int{"closer": pid, "netns": int(st.Ino), "time_wait": states[tcpTimeWait]}
	// Any other state holding a range port would change what the victim
	// can get: said, so a test that fails says why.
	for state, n := range states {
		if state != tcpTimeWait && state != tcpEstablished {
			r.Extra["state_"+state] = n
		}
	}
	linger()
	return nil
}

// TCP states as /proc/net/tcp prints them.
const (
	tcpEstablished = "01"
	tcpFinWait1    = "04"
	tcpFinWait2    = "05"
	tcpTimeWait    = "06"
	tcpClosing     = "0B"
)

// clientStatesTo counts, by state, this namespace's sockets connected to
// 127.0.0.1:port from the ephemeral range (/proc/net/tcp: a TIME_WAIT is 06,
// a FIN_WAIT2 orphan 05): what the kernel itself holds, whatever became of
// individual connections.
func clientStatesTo(port int) (map[string]int, error) {
	f, err := os.Open("/proc/thread-self/net/tcp")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	n := map[string]int{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fl := strings.Fields(sc.Text())
		if len(fl) < 4 || !strings.Contains(fl[1], ":") || !strings.Contains(fl[2], ":") {
			continue
		}
		var lport, rport int
		_, err1 := fmt.Sscanf(fl[1][strings.IndexByte(fl[1], ':')+1:], "%X", &lport)
		_, err2 := fmt.Sscanf(fl[2][strings.IndexByte(fl[2], ':')+1:], "%X", &rport)
		if err1 == nil && err2 == nil && rport == port && lport >= PortRange[0] && lport <= PortRange[1] {
			n[fl[3]]++
		}
	}
	return n, sc.Err()
}

// rawConnectClose connects n sockets to dst, closing each once the server's
// one-byte greeting has arrived, and exits with how many it closed after a
// connect and read that succeeded.
type rawConnectClose struct {
	dst    unsafe.Pointer
	dstlen uintptr
	n      int
	buf    [1]byte
}

//go:nosplit
func (c *rawConnectClose) run() {
	closed := uintptr(0)
	for i := 0; i < c.n; i++ {
		fd, _, e := syscall.RawSyscall(syscall.SYS_SOCKET, syscall.AF_INET, syscall.SOCK_STREAM, 0)
		if e != 0 {
			break
		}
		if _, _, e := syscall.RawSyscall(syscall.SYS_CONNECT, fd, uintptr(c.dst), c.dstlen); e == 0 {
			if n, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&c.buf[0])), 1); e == 0 && n == 1 {
				closed++
			}
		}
		syscall.RawSyscall(syscall.SYS_CLOSE, fd, 0, 0)
	}
	syscall.RawSyscall(syscall.SYS_EXIT_GROUP, closed, 0, 0)
}
