package scenario

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// sysConnect is connect(2)'s number on x86_64, as /proc/TID/syscall shows
// the call a thread is blocked in.
const sysConnect = 42

// restartedConnect is a blocking connect() that a signal interrupts while it
// waits for the handshake: the kernel restarts it (Go's handlers are
// SA_RESTART), so the program sees one call that succeeds. The SYN waits
// because the listener's accept queue is full; accepting the connection
// that fills it lets the retransmitted SYN through.
func restartedConnect(r *Result) error {
	lfd, err := tcpSocket()
	if err != nil {
		return err
	}
	defer unix.Close(lfd)
	if err := r.bind(lfd, "127.0.0.1", ListenPort); err != nil {
		return err
	}
	if err := unix.Listen(lfd, 0); err != nil { // an accept queue of one
		return fmt.Errorf("listen: %w", err)
	}
	first, err := tcpSocket()
	if err != nil {
		return err
	}
	defer unix.Close(first)
	if err := r.connect(first, "127.0.0.1", ListenPort); err != nil {
		return fmt.Errorf("the connection filling the queue: %w", err)
	}
	// Made here, on the thread in the scenario's namespace: a socket stays
	// in its maker's namespace whichever thread connects it.
	fd, err := tcpSocket()
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	tid := make(chan int, 1)
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // its tid must stay the connecting thread's
		defer runtime.UnlockOSThread()
		tid <- unix.Gettid()
		done <- r.connect(fd, "127.0.0.1", ListenPort)
	}()
	if err := interruptConnect(<-tid); err != nil {
		return err
	}
	// Let the retransmitted SYN in: take the connection that fills the queue.
	c, _, err := unix.Accept4(lfd, unix.SOCK_CLOEXEC)
	if err != nil {
		return fmt.Errorf("accept: %w", err)
	}
	defer unix.Close(c)
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("the interrupted connect: %w", err)
		}
	case <-time.After(30 * time.Second):
		return fmt.Errorf("the interrupted connect did not finish in 30 s")
	}
	r.Extra = map[string]int{"signalled": 1}
	return nil
}

// interruptConnect waits (bounded) until thread tid sleeps in connect(),
// signals it, and waits until it sleeps in connect() again: restarted.
func interruptConnect(tid int) error {
	if err := waitInConnect(tid); err != nil {
		return err
	}
	if err := unix.Tgkill(os.Getpid(), tid, unix.SIGURG); err != nil { // Go's own preemption signal: handled, SA_RESTART
		return fmt.Errorf("signalling the connecting thread: %w", err)
	}
	return waitInConnect(tid)
}

func waitInConnect(tid int) error {
	path := fmt.Sprintf("/proc/self/task/%d/syscall", tid)
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		b, err := os.ReadFile(path)
		if err == nil && strings.HasPrefix(string(b), fmt.Sprintf("%d ", sysConnect)) {
			return nil
		}
	}
	return fmt.Errorf("thread %d never blocked in connect()", tid)
}
