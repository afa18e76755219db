package scenario

import (
	"fmt"
	"os"
	"strconv"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// FanOutEnv sets how many processes the fan-out scenario forks (default
// FanOutProcs); each fails FanOutClasses binds of different classes.
const FanOutEnv = "PORTSLEUTH_FANOUT"

// FanOutProcs is more processes than any table the agent keeps per process
// and failure class would hold at 4 classes each, were it an LRU of 32768.
const FanOutProcs = 10000

// FanOutClasses is the number of failing binds, each of its own failure
// class, every fan-out child makes.
const FanOutClasses = 4

// fanOutCall is one raw bind a child makes: everything is prepared before
// the fork, so the child runs no Go code that could allocate or grow its stack.
type fanOutCall struct {
	family uintptr
	sa     unsafe.Pointer
	salen  uintptr
	errno  uintptr
}

// fanOut forks FanOutProcs children (no exec: each is a copy that makes four
// raw syscalls and exits), each failing a bind to a held port (127.0.0.1 and
// the wildcard), to a held [::1] port, and to an address not on any
// interface. A child's exit status has one bit per bind that failed with the
// expected errno, so the scenario's account is the kernel's own answers.
func fanOut(r *Result) error {
	n := FanOutProcs
	if s := os.Getenv(FanOutEnv); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v <= 0 || v > 100000 {
			return fmt.Errorf("%s=%q: want 1..100000", FanOutEnv, s)
		}
		n = v
	}
	if _, err := r.listen("127.0.0.1", ListenPort); err != nil {
		return err
	}
	l6, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	if err := unix.SetsockoptInt(l6, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1); err != nil {
		return err
	}
	if err := unix.Bind(l6, &unix.SockaddrInet6{Addr: [16]byte{15: 1}, Port: ListenPort}); err != nil {
		return fmt.Errorf("binding [::1]:%d: %w", ListenPort, err)
	}
	if err := unix.Listen(l6, 16); err != nil {
		return err
	}
	r.BindsOK += 2
	v4 := rawSockaddr4
	sa6 := &unix.RawSockaddrInet6{Family: unix.AF_INET6, Port: uint16(ListenPort>>8 | ListenPort<<8&0xff00), Addr: [16]byte{15: 1}}
	var calls fanOutCalls
	calls[0].sa, calls[0].salen = v4([4]byte{127, 0, 0, 1}, ListenPort)
	calls[1].sa, calls[1].salen = v4([4]byte{}, ListenPort)
	calls[2].sa, calls[2].salen = v4([4]byte{192, 0, 2, 1}, ListenPort2) // TEST-NET-1: on no interface
	calls[3].sa, calls[3].salen = unsafe.Pointer(sa6), unsafe.Sizeof(*sa6)
	for i := range calls {
		calls[i].family, calls[i].errno = unix.AF_INET, uintptr(unix.EADDRINUSE)
	}
	calls[2].errno = uintptr(unix.EADDRNOTAVAIL)
	calls[3].family = unix.AF_INET6

	const parallel = 32
	running, ok := 0, 0
	reap := func() error {
		var ws unix.WaitStatus
		if _, err := unix.Wait4(-1, &ws, 0, nil); err != nil {
			return fmt.Errorf("waiting for a fan-out child: %w", err)
		}
		running--
		if ws.Exited() && ws.ExitStatus() == 1<<FanOutClasses-1 {
			ok++
		} else {
			r.Extra["bad_children"]++
		}
		return nil
	}
	r.Extra = map[string]int{}
	for i := 0; i < n; i++ {
		for running >= parallel {
			if err := reap(); err != nil {
				return err
			}
		}
		if _, err := rawFork(&calls); err != nil {
			return err
		}
		running++
	}
	for running > 0 {
		if err := reap(); err != nil {
			return err
		}
	}
	r.BindsFailed = ok * FanOutClasses
	r.Errors["EADDRINUSE"] = ok * 3
	r.Errors["EADDRNOTAVAIL"] = ok
	r.Extra["children"] = ok
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		return fmt.Errorf("reading the namespace's inode: %w", err)
	}
	r.Extra["netns"] = int(st.Ino) // the children's: tests tell them from the host's other processes
	return nil
}

// fanOutCalls are a fan-out child's binds.
type fanOutCalls [FanOutClasses]fanOutCall

// run makes the binds and exits with one bit per bind that failed as expected.
//
//go:nosplit
func (calls *fanOutCalls) run() {
	status := uintptr(0)
	for i := 0; i < FanOutClasses; i++ {
		c := &calls[i]
		fd, _, e := syscall.RawSyscall(syscall.SYS_SOCKET, c.family, syscall.SOCK_STREAM, 0)
		if e != 0 {
			continue
		}
		if _, _, e := syscall.RawSyscall(syscall.SYS_BIND, fd, uintptr(c.sa), c.salen); e == syscall.Errno(c.errno) {
			status |= 1 << i
		}
	}
	syscall.RawSyscall(syscall.SYS_EXIT_GROUP, status, 0, 0)
}

// rawChild is the work of a forked copy of this process with one thread:
// its run must be nosplit, make raw syscalls only, and exit. Nothing may
// enter the Go runtime there (a stack check could, if the parent's runtime
// had flagged the goroutine for preemption when it forked).
type rawChild interface{ run() }

// rawFork forks a copy of this process that runs c. It returns the child's pid.
func rawFork(c rawChild) (int, error) {
	pid, errno := forkRun(c)
	if errno != 0 {
		return 0, fmt.Errorf("fork: %w", errno)
	}
	return int(pid), nil
}

//go:nosplit
func forkRun(c rawChild) (uintptr, syscall.Errno) {
	pid, _, errno := syscall.RawSyscall6(syscall.SYS_CLONE, uintptr(syscall.SIGCHLD), 0, 0, 0, 0, 0)
	if errno == 0 && pid == 0 {
		c.run()
	}
	return pid, errno
}

// PidReuseFirst and PidReuseSecond are how many binds the two processes of
// the pid-reuse scenario fail.
const (
	PidReuseFirst  = 3
	PidReuseSecond = 5
)

// pidReuse runs two processes under the same pid, one after the other, each
// in a network namespace of its own: the first fails PidReuseFirst binds and
// exits, then ns_last_pid makes the kernel hand its pid to the second, which
// fails PidReuseSecond. Extra["pid"] is the shared pid.
func pidReuse(r *Result) error {
	sa, salen := rawSockaddr4([4]byte{}, ListenPort2)
	first := rawNetnsBinds{sa: sa, salen: salen, n: PidReuseFirst}
	second := rawNetnsBinds{sa: sa, salen: salen, n: PidReuseSecond}
	pid, err := rawFork(&first)
	if err != nil {
		return err
	}
	if err := waitExit(pid, PidReuseFirst); err != nil {
		return err
	}
	for try := 0; try < 50; try++ {
		// Another process may take the pid first on a busy host: try again.
		if err := writeProc("/proc/sys/kernel/ns_last_pid", strconv.Itoa(pid-1)); err != nil {
			return fmt.Errorf("setting ns_last_pid: %w", err)
		}
		again, err := rawFork(&second)
		if err != nil {
			return err
		}
		if err := waitExit(again, PidReuseSecond); err != nil {
			return err
		}
		if again == pid {
			r.BindsFailed = PidReuseFirst + PidReuseSecond
			r.Errors["EADDRINUSE"] = r.BindsFailed
			r.Extra = map[string]int{"pid": pid}
			return nil
		}
		// A stray second process failed too; the test counts only the pid.
	}
	return fmt.Errorf("the kernel never handed pid %d out again", pid)
}

// waitExit waits for pid and checks it exited with status want.
func waitExit(pid, want int) error {
	var ws unix.WaitStatus
	if _, err := unix.Wait4(pid, &ws, 0, nil); err != nil {
		return fmt.Errorf("waiting for %d: %w", pid, err)
	}
	if !ws.Exited() || ws.ExitStatus() != want {
		return fmt.Errorf("process %d ended with %v, want exit status %d (binds that failed as expected)", pid, ws, want)
	}
	return nil
}

func rawSockaddr4(a [4]byte, port int) (unsafe.Pointer, uintptr) {
	sa := &unix.RawSockaddrInet4{Family: unix.AF_INET, Port: uint16(port>>8 | port<<8&0xff00), Addr: a}
	return unsafe.Pointer(sa), unsafe.Sizeof(*sa)
}

// rawNetnsBinds is a forked child's work: a network namespace of its own, a
// listener on sa, then n more binds to sa, which must fail EADDRINUSE.
type rawNetnsBinds struct {
	sa    unsafe.Pointer
	salen uintptr
	n     int
}

//go:nosplit
func (b *rawNetnsBinds) run() {
	failed := uintptr(0)
	if _, _, e := syscall.RawSyscall(syscall.SYS_UNSHARE, syscall.CLONE_NEWNET, 0, 0); e != 0 {
		syscall.RawSyscall(syscall.SYS_EXIT_GROUP, 0, 0, 0)
	}
	l, _, e := syscall.RawSyscall(syscall.SYS_SOCKET, syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if e == 0 {
		_, _, e = syscall.RawSyscall(syscall.SYS_BIND, l, uintptr(b.sa), b.salen)
	}
	if e == 0 {
		_, _, e = syscall.RawSyscall(syscall.SYS_LISTEN, l, 1, 0)
	}
	if e == 0 {
		for i := 0; i < b.n; i++ {
			fd, _, e := syscall.RawSyscall(syscall.SYS_SOCKET, syscall.AF_INET, syscall.SOCK_STREAM, 0)
			if e != 0 {
				continue
			}
			if _, _, e := syscall.RawSyscall(syscall.SYS_BIND, fd, uintptr(b.sa), b.salen); e == syscall.EADDRINUSE {
				failed++
			}
		}
	}
	syscall.RawSyscall(syscall.SYS_EXIT_GROUP, failed, 0, 0)
}

// ForkUDP6Failures forks n processes, each failing one bind of a UDP socket
// to [2001:db8::2]:0 (documentation space: on no interface) with
// EADDRNOTAVAIL, a failure class no other scenario makes. It returns how
// many failed as expected. Call it from a locked thread in a namespace of
// its own.
func ForkUDP6Failures(n int) (int, error) {
	sa := &unix.RawSockaddrInet6{Family: unix.AF_INET6, Addr: [16]byte{0x20, 0x01, 0x0d, 0xb8, 15: 2}}
	b := &rawBindOnceFamily{family: unix.AF_INET6, sotype: unix.SOCK_DGRAM, sa: unsafe.Pointer(sa), salen: unsafe.Sizeof(*sa)}
	ok := 0
	for i := 0; i < n; i++ {
		pid, err := rawFork(b)
		if err != nil {
			return ok, err
		}
		var ws unix.WaitStatus
		if _, err := unix.Wait4(pid, &ws, 0, nil); err != nil {
			return ok, err
		}
		if ws.Exited() && ws.ExitStatus() == int(unix.EADDRNOTAVAIL) {
			ok++
		}
	}
	return ok, nil
}

// rawBindOnceFamily binds a new socket of its family and type to sa once
// and exits with the errno (0 on success).
type rawBindOnceFamily struct {
	family, sotype uintptr
	sa             unsafe.Pointer
	salen          uintptr
}

//go:nosplit
func (b *rawBindOnceFamily) run() {
	fd, _, e := syscall.RawSyscall(syscall.SYS_SOCKET, b.family, b.sotype, 0)
	if e == 0 {
		_, _, e = syscall.RawSyscall(syscall.SYS_BIND, fd, uintptr(b.sa), b.salen)
	}
	syscall.RawSyscall(syscall.SYS_EXIT_GROUP, uintptr(e), 0, 0)
}
