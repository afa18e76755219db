package procinfo

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// helperTree is a real prefork-shaped process tree: parent and child run the
// same executable (a copy of the test binary, so the test process itself,
// running the original, is not part of the family).
type helperTree struct {
	exe           string
	parent, child uint32
}

// startHelperTree starts the tree and kills it when the test ends. before and
// after bracket the parent's fork on CLOCK_MONOTONIC.
func startHelperTree(t *testing.T) (tree helperTree, before, after uint64) {
	t.Helper()
	tree.exe = copyTestBinary(t)
	cmd := exec.Command(tree.exe)
	cmd.Env = append(os.Environ(), helperEnv+"=parent")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	before = monotonicNs(t)
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting helper: %v", err)
	}
	after = monotonicNs(t)
	tree.parent = uint32(cmd.Process.Pid)
	t.Cleanup(func() { stopHelperTree(cmd, stdin, &tree) })
	if tree.child, err = readPid(stdout, 10*time.Second); err != nil {
		t.Fatalf("reading the helper child's pid: %v", err)
	}
	return tree, before, after
}

// stopHelperTree closes the helpers' stdin so the parent reaps its child and
// exits; killing the parent first would leave the child a zombie of init.
func stopHelperTree(cmd *exec.Cmd, stdin io.Closer, tree *helperTree) {
	stdin.Close()
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		if tree.child != 0 {
			_ = syscall.Kill(int(tree.child), syscall.SIGKILL)
		}
		_ = cmd.Process.Kill()
		<-done
	}
}

func copyTestBinary(t *testing.T) string {
	t.Helper()
	src, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), "procinfo-helper")
	if err := os.WriteFile(dst, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return dst
}

// readPid reads the first line of r as a pid, giving up after timeout.
func readPid(r io.Reader, timeout time.Duration) (uint32, error) {
	type result struct {
		line string
		err  error
	}
	ch := make(chan result, 1)
	go func() {
		line, err := bufio.NewReader(r).ReadString('\n')
		ch <- result{line, err}
	}()
	select {
	case res := <-ch:
		if res.err != nil {
			return 0, res.err
		}
		pid, err := strconv.ParseUint(strings.TrimSpace(res.line), 10, 32)
		return uint32(pid), err
	case <-time.After(timeout):
		return 0, fmt.Errorf("no pid within %v", timeout)
	}
}

func monotonicNs(t *testing.T) uint64 {
	t.Helper()
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	return uint64(ts.Nano())
}

// goneProcess is the pid of a process that has exited and been reaped.
func goneProcess(t *testing.T) uint32 {
	t.Helper()
	cmd := exec.Command("/bin/true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	return uint32(cmd.Process.Pid)
}

func TestMaster(t *testing.T) {
	tree, _, _ := startHelperTree(t)
	for _, c := range []struct {
		name      string
		pid, want uint32
	}{
		{"worker names its master", tree.child, tree.parent},
		{"master is its own", tree.parent, tree.parent},
		{"a different exe is no family", uint32(os.Getpid()), uint32(os.Getpid())},
		{"init", 1, 1},
	} {
		got, err := Master(c.pid)
		if err != nil || got != c.want {
			t.Errorf("%s: Master(%d) = %d, %v; want %d", c.name, c.pid, got, err, c.want)
		}
	}
	gone := goneProcess(t)
	if got, err := Master(gone); err == nil || got != gone {
		t.Errorf("Master(reaped %d) = %d, %v; want itself and an error", gone, got, err)
	}
}

// A worker moved to another cgroup is someone else's (a unit started by the
// same binary): it is its own master.
func TestMasterStopsAtCgroup(t *testing.T) {
	root := cgroupRootForTest(t)
	dirs := makeCgroups(t, root, "/system.slice/other.service")
	tree, _, _ := startHelperTree(t)
	moveToCgroup(t, root, dirs[0], tree.child)
	if got, err := Master(tree.child); err != nil || got != tree.child {
		t.Errorf("Master(%d) in another cgroup = %d, %v; want itself", tree.child, got, err)
	}
	if got, err := Master(tree.parent); err != nil || got != tree.parent {
		t.Errorf("Master(%d) = %d, %v; want itself", tree.parent, got, err)
	}
}

func TestProgramOf(t *testing.T) {
	tree, _, _ := startHelperTree(t)
	// The binary is replaced under running processes (a package upgrade):
	// still the same program.
	if err := os.Remove(tree.exe); err != nil {
		t.Fatal(err)
	}
	parent, err := ProgramOf(tree.parent)
	if err != nil {
		t.Fatal(err)
	}
	child, err := ProgramOf(tree.child)
	if err != nil {
		t.Fatal(err)
	}
	self, err := ProgramOf(uint32(os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	if parent.Exe != tree.exe || parent.Comm != "procinfo-helper" || parent.Cgroup != self.Cgroup {
		t.Errorf("ProgramOf(helper) = %+v; want exe %s, comm procinfo-helper, cgroup %q", parent, tree.exe, self.Cgroup)
	}
	if parent.Key() != child.Key() {
		t.Errorf("two runs of one binary in one cgroup have different keys: %q, %q", parent.Key(), child.Key())
	}
	if self.Key() == parent.Key() {
		t.Errorf("different binaries share key %q", self.Key())
	}
	exe, err := filepath.EvalSymlinks("/proc/self/exe")
	if err != nil {
		t.Fatal(err)
	}
	if self.Exe != exe {
		t.Errorf("ProgramOf(self).Exe = %q, want %q", self.Exe, exe)
	}
	if _, err := ProgramOf(goneProcess(t)); err == nil {
		t.Error("ProgramOf of a reaped process: no error")
	}
}

func TestStartTime(t *testing.T) {
	tree, before, after := startHelperTree(t)
	tick := uint64(1e9 / clockTicks)
	const slack = uint64(1e6)
	helper, err := StartTime(tree.parent)
	if err != nil {
		t.Fatal(err)
	}
	// The fork happened in [before, after]; /proc truncates it to a tick.
	if helper > after+slack || helper+tick+slack <= before {
		t.Errorf("StartTime(helper) = %d, forked within [%d, %d] (tick %d)", helper, before, after, tick)
	}
	if !SameStart(before, helper) && !SameStart(after, helper) && (helper < before || helper > after) {
		t.Errorf("SameStart rejects every time in the fork window [%d, %d] for %d", before, after, helper)
	}
	self1, err := StartTime(uint32(os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	self2, err := StartTime(uint32(os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	if diff := max(self1, self2) - min(self1, self2); diff > slack {
		t.Errorf("StartTime(self) moved by %d ns between calls", diff)
	}
	if self1 > helper+slack || self1 == 0 {
		t.Errorf("StartTime(self) = %d, not before the helper it started (%d)", self1, helper)
	}
	if _, err := StartTime(goneProcess(t)); err == nil {
		t.Error("StartTime of a reaped process: no error")
	}
}

func TestSameStart(t *testing.T) {
	tick := uint64(1e9 / clockTicks)
	const proc = uint64(5_000_000_000)
	for _, c := range []struct {
		bpf  uint64
		want bool
	}{
		{proc, true},
		{proc + tick - 1, true},
		{proc + tick/2, true},
		{proc - 500_000, true}, // clock-read jitter
		{proc - 2*tick, false},
		{proc + 2*tick, false},
	} {
		if got := SameStart(c.bpf, proc); got != c.want {
			t.Errorf("SameStart(%d, %d) = %v, want %v", c.bpf, proc, got, c.want)
		}
	}
}

func TestParseStat(t *testing.T) {
	// A comm may hold spaces and parentheses: fields count from the last ')'.
	tail := make([]string, 49)
	for i := range tail {
		tail[i] = strconv.Itoa(i + 100)
	}
	tail[0], tail[1], tail[19] = "S", "4242", "987654"
	line := "1234 (a) b (c) " + strings.Join(tail, " ") + "\n"
	got, err := parseStat([]byte(line))
	if err != nil || got.ppid != 4242 || got.startTicks != 987654 {
		t.Errorf("parseStat = %+v, %v; want ppid 4242, start 987654", got, err)
	}
	for _, bad := range []string{"", "1234 comm S 1", "1 (x) S 2 3"} {
		if _, err := parseStat([]byte(bad)); err == nil {
			t.Errorf("parseStat(%q): no error", bad)
		}
	}
}

func TestClockTicks(t *testing.T) {
	// USER_HZ is 100 on x86 and arm64; anything else means auxv was misread.
	if clockTicks != 100 {
		t.Errorf("clockTicks = %d, want 100", clockTicks)
	}
}

// taskstats names the fork to within microseconds, on the clock BPF reads,
// and agrees with the /proc tick.
func TestPreciseStartTime(t *testing.T) {
	tree, before, after := startHelperTree(t)
	got, err := PreciseStartTime(tree.parent)
	if errors.Is(err, ErrNoTaskstats) {
		t.Skipf("no taskstats here (CONFIG_TASKSTATS=n, or not the initial network namespace): %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	// Microsecond truncation plus the reply's bracket: 10 µs is plenty.
	const margin = 10_000
	if got+margin < before || got > after+margin {
		t.Errorf("PreciseStartTime(helper) = %d, forked within [%d, %d]", got, before, after)
	}
	ticks, err := StartTime(tree.parent)
	if err != nil {
		t.Fatal(err)
	}
	if !SameStart(got, ticks) {
		t.Errorf("SameStart(%d, %d) = false for one process", got, ticks)
	}
	if _, err := PreciseStartTime(goneProcess(t)); err == nil {
		t.Error("PreciseStartTime of a reaped process: no error")
	}
}
