package pressure

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The test binary re-runs itself as the processes the tests need: a member
// that holds a new network namespace (and sockets in it), or a short-lived
// process that makes one failing call in a namespace and exits.
const (
	helperEnv  = "PRESSURE_TEST_HELPER" // "hold" or "fail"
	rangeEnv   = "PRESSURE_TEST_RANGE"  // hold: ip_local_port_range to set
	listenEnv  = "PRESSURE_TEST_LISTEN" // hold: address to listen on
	fillEnv    = "PRESSURE_TEST_FILL"   // hold: connect here until the pool is empty
	nsEnv      = "PRESSURE_TEST_NS"     // fail: namespace file to enter
	opEnv      = "PRESSURE_TEST_OP"     // fail: "bind" or "connect"
	addrEnv    = "PRESSURE_TEST_ADDR"   // fail: the address
	maxFill    = 70000                  // bounds the fill loop above any port range
	helperWait = 20 * time.Second
)

func TestHelperProcess(t *testing.T) {
	switch os.Getenv(helperEnv) {
	case "hold":
		runHolder()
	case "fail":
		runFailer()
	}
}

func runHolder() {
	die := func(err error) { fmt.Printf("error %v\n", err); os.Exit(1) }
	if err := loUp(); err != nil {
		die(err)
	}
	if r := os.Getenv(rangeEnv); r != "" {
		if err := os.WriteFile("/proc/sys/net/ipv4/ip_local_port_range", []byte(r), 0); err != nil {
			die(err)
		}
	}
	filled := 0
	if a := os.Getenv(listenEnv); a != "" {
		l, err := tcpSocket()
		if err == nil {
			err = unix.Bind(l, sockaddrOf(a))
		}
		if err == nil {
			err = unix.Listen(l, 4096)
		}
		if err != nil {
			die(fmt.Errorf("listening on %s: %w", a, err))
		}
	}
	if a := os.Getenv(fillEnv); a != "" {
		for range maxFill {
			s, err := tcpSocket()
			if err != nil {
				die(err)
			}
			if err := unix.Connect(s, sockaddrOf(a)); errors.Is(err, unix.EADDRNOTAVAIL) {
				break
			} else if err != nil {
				die(fmt.Errorf("connecting to %s: %w", a, err))
			}
			filled++
		}
	}
	fmt.Printf("ready %d\n", filled)
	_, _ = io.Copy(io.Discard, os.Stdin) // hold until the test closes stdin
	os.Exit(0)
}

func runFailer() {
	runtime.LockOSThread() // the thread that enters the namespace makes the call
	f, err := os.Open(os.Getenv(nsEnv))
	if err == nil {
		err = unix.Setns(int(f.Fd()), unix.CLONE_NEWNET)
	}
	var s int
	if err == nil {
		s, err = tcpSocket()
	}
	if err != nil {
		fmt.Printf("error %v\n", err)
		os.Exit(1)
	}
	sa := sockaddrOf(os.Getenv(addrEnv))
	if os.Getenv(opEnv) == "bind" {
		err = unix.Bind(s, sa)
	} else {
		err = unix.Connect(s, sa)
	}
	var errno unix.Errno
	errors.As(err, &errno)
	fmt.Printf("%d %d %d\n", os.Getpid(), unix.Gettid(), int(errno))
	os.Exit(0)
}

func tcpSocket() (int, error) {
	return unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
}

func sockaddrOf(s string) unix.Sockaddr {
	ap := netip.MustParseAddrPort(s)
	return &unix.SockaddrInet4{Addr: ap.Addr().As4(), Port: int(ap.Port())}
}

func loUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket for ioctl: %w", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	ifr.SetUint16(unix.IFF_UP | unix.IFF_LOOPBACK | unix.IFF_RUNNING)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("bringing lo up: %w", err)
	}
	return nil
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces (CAP_SYS_ADMIN) and loads BPF iterators")
	}
}

// holder is a live process in a network namespace of its own.
type holder struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	pid    int
	netns  uint64
	filled int
}

// startHolder starts a process in a new network namespace and waits until
// it has set the namespace up (env: the rangeEnv/listenEnv/fillEnv settings).
func startHolder(t *testing.T, env ...string) *holder {
	t.Helper()
	cmd := helperCmd(append(env, helperEnv+"=hold"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET, Pdeathsig: syscall.SIGKILL}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	line := startAndRead(t, cmd)
	h := &holder{cmd: cmd, stdin: stdin, pid: cmd.Process.Pid}
	t.Cleanup(h.stop)
	var ok bool
	if n, found := strings.CutPrefix(line, "ready "); found {
		h.filled, err = strconv.Atoi(n)
		ok = err == nil
	}
	if !ok {
		t.Fatalf("holder: %q", line)
	}
	var st unix.Stat_t
	if err := unix.Stat(fmt.Sprintf("/proc/%d/ns/net", h.pid), &st); err != nil {
		t.Fatal(err)
	}
	h.netns = st.Ino
	return h
}

// stop ends the holder (closing its stdin) and reaps it.
func (h *holder) stop() {
	if h.cmd.ProcessState != nil {
		return
	}
	h.stdin.Close()
	if h.cmd.Wait() != nil {
		h.cmd.Process.Kill()
	}
}

// failed is what a short-lived process reported about its one call.
type failed struct {
	pid, tid uint32
	errno    unix.Errno
}

// failIn runs a process that makes one op (bind or connect) to addr inside
// the namespace of pid, reports it and exits; it is reaped before return.
func failIn(t *testing.T, pid int, op, addr string) failed {
	t.Helper()
	cmd := helperCmd([]string{helperEnv + "=fail", fmt.Sprintf("%s=/proc/%d/ns/net", nsEnv, pid), opEnv + "=" + op, addrEnv + "=" + addr})
	line := startAndRead(t, cmd)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("failer: %v (%q)", err, line)
	}
	var f failed
	var errno int
	if _, err := fmt.Sscanf(line, "%d %d %d", &f.pid, &f.tid, &errno); err != nil {
		t.Fatalf("failer: %q", line)
	}
	f.errno = unix.Errno(errno)
	if _, err := os.Stat(fmt.Sprintf("/proc/%d/task/%d", f.pid, f.tid)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("failing task %d/%d still there: %v", f.pid, f.tid, err)
	}
	return f
}

func helperCmd(env []string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = os.Stderr
	return cmd
}

// startAndRead starts cmd and returns its first line of output.
func startAndRead(t *testing.T, cmd *exec.Cmd) string {
	t.Helper()
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(out).ReadString('\n')
		lines <- strings.TrimSpace(line)
	}()
	select {
	case line := <-lines:
		return line
	case <-time.After(helperWait):
		cmd.Process.Kill()
		t.Fatalf("no word from helper %d within %v", cmd.Process.Pid, helperWait)
		return ""
	}
}

func inodeOfFile(t *testing.T, f *os.File) uint64 {
	t.Helper()
	ino, err := inodeOf(f)
	if err != nil {
		t.Fatal(err)
	}
	return ino
}

// fakeClock lets tests move time for the scan limit and idle expiry.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time      { return c.t }
func (c *fakeClock) add(d time.Duration) { c.t = c.t.Add(d) }
func withClock(h *nsHandles) *fakeClock {
	c := &fakeClock{t: time.Unix(1e9, 0)}
	h.now = c.now
	return c
}
func closeHandles(t *testing.T, h *nsHandles) { t.Cleanup(func() { h.Close() }) }

// Our own namespace is served from our own handle, whatever pid is named.
func TestHandleSelf(t *testing.T) {
	needRoot(t)
	h := newNSHandles(4)
	closeHandles(t, h)
	f, err := h.open(h.self, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if got := inodeOfFile(t, f); got != h.self || h.self == 0 {
		t.Errorf("inode %d, want ours %d", got, h.self)
	}
	if h.scans != 0 || len(h.entries) != 0 {
		t.Errorf("scans %d, entries %d: our own namespace needs neither", h.scans, len(h.entries))
	}
}

// A handle taken while a member lived serves after the last member exited.
func TestHandleOutlivesTheTask(t *testing.T) {
	needRoot(t)
	h := newNSHandles(4)
	closeHandles(t, h)
	m := startHolder(t)
	f, err := h.open(m.netns, uint32(m.pid), uint32(m.pid))
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if h.scans != 0 || h.entries[m.netns] == nil {
		t.Fatalf("scans %d, cached %v: the live task should have filled the cache", h.scans, h.entries[m.netns] != nil)
	}
	m.stop()
	f, err = h.open(m.netns, uint32(m.pid), uint32(m.pid))
	if err != nil {
		t.Fatalf("after the only member exited: %v", err)
	}
	defer f.Close()
	if got := inodeOfFile(t, f); got != m.netns {
		t.Errorf("inode %d, want %d", got, m.netns)
	}
	if h.scans != 0 {
		t.Errorf("scans %d, want 0", h.scans)
	}
}

// A namespace pinned when its failure was read (the task alive) is still
// the one enrichment opens after the task and every member are gone, with
// no /proc scan: its inode can't have been handed to another namespace,
// since the pin keeps it alive.
func TestPinnedNamespaceOutlivesItsTasks(t *testing.T) {
	needRoot(t)
	h := newNSHandles(4)
	closeHandles(t, h)
	m := startHolder(t)
	h.pin(m.netns, uint32(m.pid), uint32(m.pid))
	h.pin(m.netns, uint32(m.pid), uint32(m.pid)) // again: already held
	if len(h.pinned) != 1 || len(h.entries) != 0 {
		t.Fatalf("pinned %d, cached %d: want the one namespace pinned", len(h.pinned), len(h.entries))
	}
	m.stop()
	f, err := h.open(m.netns, uint32(m.pid), uint32(m.pid))
	if err != nil {
		t.Fatalf("after its only task exited: %v", err)
	}
	defer f.Close()
	if got := inodeOfFile(t, f); got != m.netns {
		t.Errorf("inode %d, want %d", got, m.netns)
	}
	if h.scans != 0 || len(h.pinned) != 0 || h.entries[m.netns] == nil {
		t.Errorf("scans %d, pinned %d, cached %v: want the pin handed to the cache, no scan", h.scans, len(h.pinned), h.entries[m.netns] != nil)
	}
	// A task that is gone already pins nothing (the reader never scans).
	h.pin(m.netns+1<<20, uint32(m.pid), uint32(m.pid))
	if len(h.pinned) != 0 || h.scans != 0 {
		t.Errorf("a gone task pinned %d namespaces, %d scans", len(h.pinned), h.scans)
	}
}

// With the named task gone (or elsewhere), a live member is found by a scan;
// a task of another namespace is never taken for it.
func TestHandleFromAnotherMember(t *testing.T) {
	needRoot(t)
	h := newNSHandles(4)
	closeHandles(t, h)
	m := startHolder(t)
	me := uint32(os.Getpid())
	f, err := h.open(m.netns, me, me) // alive, but in our namespace
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if got := inodeOfFile(t, f); got != m.netns {
		t.Errorf("inode %d, want %d", got, m.netns)
	}
	if h.scans != 1 || h.members[m.netns] != m.pid {
		t.Errorf("scans %d, member %d: want one scan finding %d", h.scans, h.members[m.netns], m.pid)
	}
}

// Scans for members run at most once per scanEvery.
func TestHandleScanLimit(t *testing.T) {
	needRoot(t)
	h := newNSHandles(4)
	closeHandles(t, h)
	clock := withClock(h)
	const nowhere = 1 // no namespace has inode 1
	for range 2 {
		if f, err := h.open(nowhere, 0, 0); err == nil {
			f.Close()
			t.Fatal("opened a namespace that does not exist")
		}
	}
	if h.scans != 1 {
		t.Fatalf("scans %d, want 1 within %v", h.scans, scanEvery)
	}
	m := startHolder(t) // born after the scan: not found until the next one
	if f, err := h.open(m.netns, 0, 0); err == nil {
		f.Close()
		t.Fatal("scanned again within the limit")
	}
	clock.add(scanEvery)
	f, err := h.open(m.netns, 0, 0)
	if err != nil {
		t.Fatalf("after %v: %v", scanEvery, err)
	}
	f.Close()
	if h.scans != 2 {
		t.Errorf("scans %d, want 2", h.scans)
	}
}

// The cache is bounded: the least recently used handle is closed, while an
// fd already handed out stays valid; idle handles are closed too.
func TestHandleEviction(t *testing.T) {
	needRoot(t)
	h := newNSHandles(2)
	closeHandles(t, h)
	clock := withClock(h)
	var members []*holder
	for range 3 {
		members = append(members, startHolder(t))
	}
	open := func(m *holder) *os.File {
		t.Helper()
		f, err := h.open(m.netns, uint32(m.pid), uint32(m.pid))
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	given := open(members[0])
	defer given.Close()
	first := h.entries[members[0].netns].f
	clock.add(time.Second)
	open(members[1]).Close()
	clock.add(time.Second)
	open(members[2]).Close()
	if len(h.entries) != 2 || h.entries[members[0].netns] != nil {
		t.Fatalf("entries %d, first still cached %v", len(h.entries), h.entries[members[0].netns] != nil)
	}
	if _, err := first.Stat(); !errors.Is(err, os.ErrClosed) {
		t.Errorf("evicted handle not closed: %v", err)
	}
	if got := inodeOfFile(t, given); got != members[0].netns {
		t.Errorf("handed-out fd: inode %d, want %d", got, members[0].netns)
	}
	third := h.entries[members[2].netns].f
	clock.add(handleIdle + time.Second)
	open(members[1]).Close() // refilled from its live task after expiry
	if len(h.entries) != 1 {
		t.Errorf("entries %d after %v idle, want 1", len(h.entries), handleIdle)
	}
	if _, err := third.Stat(); !errors.Is(err, os.ErrClosed) {
		t.Errorf("idle handle not closed: %v", err)
	}
}
