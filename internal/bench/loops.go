package bench

import (
	"runtime"
	"time"

	"golang.org/x/sys/unix"

	"github.com/portsleuth/portsleuth/internal/scenario"
)

// looper runs every measured loop on one locked thread inside its own
// network namespace, with a listener to connect to.
type looper struct {
	jobs     chan job
	listener int
}

type job struct {
	fn   func() error
	done chan error
}

var (
	loopDest = &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}, Port: scenario.ListenPort}
	loopSrc  = &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}
	// An RST on close leaves no TIME_WAIT: rounds never run out of ports.
	abortive = &unix.Linger{Onoff: 1, Linger: 0}
)

func newLooper() (*looper, error) {
	l := &looper{jobs: make(chan job)}
	ready := make(chan error)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the namespace
		err := scenario.Isolate()
		if err == nil {
			err = scenario.Sysctl("ip_local_port_range", "10000 60999")
		}
		if err == nil {
			l.listener, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
		}
		if err == nil {
			err = unix.Bind(l.listener, loopDest)
		}
		if err == nil {
			err = unix.Listen(l.listener, 4096)
		}
		ready <- err
		if err != nil {
			return
		}
		for j := range l.jobs {
			j.done <- j.fn()
		}
	}()
	return l, <-ready
}

func (l *looper) run(fn func() error) error {
	j := job{fn, make(chan error)}
	l.jobs <- j
	return <-j.done
}

// timed runs fn on the loop thread and returns the CPU time that thread spent
// in it, user and kernel: the BPF programs run there, inside the syscalls,
// while time the thread spends preempted by other tasks is left out.
func (l *looper) timed(fn func() error) (time.Duration, error) {
	var d time.Duration
	err := l.run(func() error {
		start := threadCPU()
		err := fn()
		d = threadCPU() - start
		return err
	})
	return d, err
}

func threadCPU() time.Duration {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts)
	return time.Duration(ts.Nano())
}

func (l *looper) close() { close(l.jobs) }

// connectOnce connects a new socket (bound first if bind is set), accepts
// it, and closes both ends.
func (l *looper) connectOnce(bind bool) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, abortive); err != nil {
		return err
	}
	if bind {
		if err := unix.Bind(fd, loopSrc); err != nil {
			return err
		}
	}
	if err := unix.Connect(fd, loopDest); err != nil {
		return err
	}
	srv, _, err := unix.Accept(l.listener)
	if err != nil {
		return err
	}
	return unix.Close(srv)
}

func (l *looper) connectClose(n int) (time.Duration, error) {
	return l.timed(func() error {
		for i := 0; i < n; i++ {
			if err := l.connectOnce(false); err != nil {
				return err
			}
		}
		return nil
	})
}

func (l *looper) bindConnect(n int) (time.Duration, error) {
	return l.timed(func() error {
		for i := 0; i < n; i++ {
			if err := l.connectOnce(true); err != nil {
				return err
			}
		}
		return nil
	})
}

func (l *looper) getppid(n int) (time.Duration, error) {
	return l.timed(func() error {
		for i := 0; i < n; i++ {
			unix.Getppid()
		}
		return nil
	})
}
