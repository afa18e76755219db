package cli

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A recording from the repository's testdata: replaying it needs no BPF.
const hardenRecording = "../../testdata/recordings/port-in-use.json"

// nobody owns the links an unprivileged user plants.
const nobody = 65534

func runCLI(args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = Run(args, &out, &errb)
	return code, out.String(), errb.String()
}

// tracingStarted says whether a run got as far as loading programs:
// startSession names the backend on stderr once they are attached.
func tracingStarted(stderr string) bool { return strings.Contains(stderr, "portsleuth: backend ") }

func mustRead(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// rootOnlyFile is the victim: a file only root may read or write.
func rootOnlyFile(t *testing.T) string {
	t.Helper()
	victim := filepath.Join(t.TempDir(), "shadow")
	if err := os.WriteFile(victim, []byte("root only\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return victim
}

// stickyTmp is a world-writable sticky directory, like /tmp.
func stickyTmp(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "tmp")
	if err := os.Mkdir(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o777|os.ModeSticky); err != nil {
		t.Fatal(err)
	}
	return dir
}

// plantLink makes a symbolic link owned by nobody, as a local user would.
func plantLink(t *testing.T, target, link string) {
	t.Helper()
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(link, nobody, nobody); err != nil {
		t.Fatal(err)
	}
}

// dirEntries lists a directory: what a run leaves behind, temporary files included.
func dirEntries(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// Root must not write through a link an unprivileged user planted in /tmp.
func TestReportFileSymlinkInStickyDir(t *testing.T) {
	requireRoot(t)
	victim := rootOnlyFile(t)
	dir := stickyTmp(t)
	link := filepath.Join(dir, "report.txt")
	plantLink(t, victim, link)

	code, _, stderr := runCLI("report", "--replay", hardenRecording, "--file", link)
	if code == 0 {
		t.Errorf("report --file through a planted link: exit 0")
	}
	if got := mustRead(t, victim); got != "root only\n" {
		t.Fatalf("the link's target was overwritten: %q", got)
	}
	if !strings.Contains(stderr, link) || !strings.Contains(stderr, "--force") {
		t.Errorf("stderr %q does not name the path and --force", stderr)
	}

	code, _, stderr = runCLI("report", "--replay", hardenRecording, "--file", link, "--force")
	if code != 0 {
		t.Fatalf("--force: exit %d: %s", code, stderr)
	}
	if got := mustRead(t, victim); got != "root only\n" {
		t.Fatalf("--force wrote through the link: %q", got)
	}
	st, err := os.Lstat(link)
	if err != nil || !st.Mode().IsRegular() {
		t.Fatalf("--force left %v (%v) at %s, want the report in place of the link", st.Mode(), err, link)
	}
	if got := mustRead(t, link); !strings.Contains(got, "port-in-use") {
		t.Errorf("report file holds %q", got)
	}
	if names := dirEntries(t, dir); !slices.Equal(names, []string{"report.txt"}) {
		t.Errorf("left behind in %s: %q", dir, names)
	}
}

// A dangling link must not make root create its target.
func TestReportFileDanglingSymlink(t *testing.T) {
	requireRoot(t)
	target := filepath.Join(t.TempDir(), "etc-cron.d-evil")
	link := filepath.Join(stickyTmp(t), "report.json")
	plantLink(t, target, link)
	for _, force := range []bool{false, true} {
		args := []string{"report", "--replay", hardenRecording, "-o", "json", "--file", link}
		if force {
			args = append(args, "--force")
		}
		runCLI(args...)
		if _, err := os.Lstat(target); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("force=%v: the dangling link's target was created (%v)", force, err)
		}
	}
}

func TestReportFileMode0600(t *testing.T) {
	old := unix.Umask(0o022)
	defer unix.Umask(old)
	path := filepath.Join(t.TempDir(), "report.txt")
	if code, _, stderr := runCLI("report", "--replay", hardenRecording, "--file", path); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("report file mode %v, want 0600: it holds command lines", st.Mode().Perm())
	}
}

// A live report with --file and --record: both 0600, and the recording replays.
func TestReportAndRecordingMode0600(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	file, record := filepath.Join(dir, "report.json"), filepath.Join(dir, "rec.json")
	code, _, stderr := runCLI("report", "--backend", testBackend(), "-o", "json", "--file", file, "--record", record, "--", "true")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	for _, p := range []string{file, record} {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, want 0600", p, st.Mode().Perm())
		}
	}
	if code, _, stderr := runCLI("report", "--replay", record); code != 0 {
		t.Errorf("replaying the recording: exit %d: %s", code, stderr)
	}
	if names := dirEntries(t, dir); !slices.Equal(names, []string{"rec.json", "report.json"}) {
		t.Errorf("left behind in %s: %q", dir, names)
	}
}

func TestReportRefusesExistingFileWithoutForce(t *testing.T) {
	path := filepath.Join(t.TempDir(), "report.txt")
	if err := os.WriteFile(path, []byte("yesterday's report\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, stderr := runCLI("report", "--replay", hardenRecording, "--file", path)
	if code == 0 || !strings.Contains(stderr, "--force") {
		t.Errorf("overwrote an existing file: exit %d, stderr %q", code, stderr)
	}
	if got := mustRead(t, path); got != "yesterday's report\n" {
		t.Fatalf("existing file changed: %q", got)
	}
	if code, _, stderr := runCLI("report", "--replay", hardenRecording, "--file", path, "--force"); code != 0 {
		t.Fatalf("--force: exit %d: %s", code, stderr)
	}
	if got := mustRead(t, path); !strings.Contains(got, "port-in-use") {
		t.Errorf("--force did not replace the file: %q", got)
	}
}

// --file and --record on one file would leave neither: a usage error.
func TestReportFileAndRecordSamePath(t *testing.T) {
	dir := t.TempDir()
	x := filepath.Join(dir, "x.json")
	if err := os.WriteFile(filepath.Join(dir, "existing"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(filepath.Join(dir, "existing"), filepath.Join(dir, "hardlink")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o700); err != nil {
		t.Fatal(err)
	}
	for _, paths := range [][2]string{
		{x, x},
		{x, filepath.Join(dir, "sub", "..", "x.json")},
		{filepath.Join(dir, "existing"), filepath.Join(dir, "hardlink")},
	} {
		// --duration: the old code traced, and must end.
		code, _, stderr := runCLI("report", "--duration", "1s", "--file", paths[0], "--record", paths[1])
		if code != 2 || !strings.Contains(stderr, "same file") {
			t.Errorf("--file %s --record %s: exit %d, want 2 (stderr %q)", paths[0], paths[1], code, stderr)
		}
		if tracingStarted(stderr) {
			t.Errorf("--file %s --record %s: traced before refusing", paths[0], paths[1])
		}
	}
	if _, err := os.Stat(x); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s was created", x)
	}
}

// A recording that cannot be written must be refused before tracing, not
// after a whole session is lost.
func TestRecordIntoMissingDirectoryFailsBeforeTracing(t *testing.T) {
	requireRoot(t)
	path := filepath.Join(t.TempDir(), "nonexistent", "dir", "x")
	code, _, stderr := runCLI("report", "--backend", testBackend(), "--duration", "1s", "--record", path)
	if code == 0 || !strings.Contains(stderr, path) {
		t.Errorf("exit %d, stderr %q: want a failure naming %s", code, stderr, path)
	}
	if tracingStarted(stderr) {
		t.Errorf("traced before refusing the path: %q", stderr)
	}
}

// A failing replay leaves the existing report file as it was.
func TestFailedReplayLeavesFileIntact(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.json")
	existing := filepath.Join(dir, "report.txt")
	if err := os.WriteFile(existing, []byte("last good report\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, stderr := runCLI("report", "--replay", missing, "--file", existing, "--force")
	if code != 1 || !strings.Contains(stderr, missing) {
		t.Errorf("exit %d, stderr %q: want 1 naming %s", code, stderr, missing)
	}
	if got := mustRead(t, existing); got != "last good report\n" {
		t.Fatalf("existing report destroyed by a failed replay: %q", got)
	}
	fresh := filepath.Join(dir, "new.txt")
	if code, _, _ := runCLI("report", "--replay", missing, "--file", fresh); code == 0 {
		t.Errorf("replay of a missing file: exit 0")
	}
	if names := dirEntries(t, dir); !slices.Equal(names, []string{"report.txt"}) {
		t.Errorf("a failed replay left %q", names)
	}
}

// absentPID finds a pid no process has now.
func absentPID(t *testing.T) int {
	t.Helper()
	pidMax := 32768
	if b, err := os.ReadFile("/proc/sys/kernel/pid_max"); err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			pidMax = min(n, 1<<22)
		}
	}
	for pid := pidMax - 1; pid > pidMax-1000; pid-- {
		if err := unix.Kill(pid, 0); errors.Is(err, unix.ESRCH) {
			return pid
		}
	}
	t.Fatal("no free pid near pid_max")
	return 0
}

// otherThread is a thread of this process that is not its main thread.
func otherThread(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if tid, err := strconv.Atoi(e.Name()); err == nil && tid != os.Getpid() {
			return tid
		}
	}
	t.Skip("this process has one thread")
	return 0
}

// --pid of no process traced nothing, in silence: now a usage error.
func TestPIDOfNoProcessIsUsageError(t *testing.T) {
	pid := absentPID(t)
	for _, cmd := range []string{"watch", "report"} {
		code, _, stderr := runCLI(cmd, "--pid", strconv.Itoa(pid), "--duration", "1s")
		if code != 2 || !strings.Contains(stderr, fmt.Sprintf("no process %d", pid)) {
			t.Errorf("%s --pid %d: exit %d, want 2 naming the pid (stderr %q)", cmd, pid, code, stderr)
		}
		if tracingStarted(stderr) {
			t.Errorf("%s --pid %d: traced before refusing", cmd, pid)
		}
	}
	tid := otherThread(t)
	if code, _, stderr := runCLI("watch", "--pid", strconv.Itoa(tid), "--duration", "1s"); code != 2 {
		t.Errorf("--pid of thread %d: exit %d, want 2 (stderr %q)", tid, code, stderr)
	}
	// A replay filters on the recorded host's pids: no check against this one.
	if code, _, stderr := runCLI("report", "--replay", hardenRecording, "--pid", strconv.Itoa(pid)); code != 0 {
		t.Errorf("replay --pid %d: exit %d: %s", pid, code, stderr)
	}
}

// The kernel keeps 15 bytes of a task name: a longer --comm matches nothing.
func TestCommLongerThan15IsUsageError(t *testing.T) {
	long := "0123456789abcdef"
	for _, args := range [][]string{
		{"watch", "--comm", long, "--duration", "1s"},
		{"report", "--comm", long, "--duration", "1s"},
		{"report", "--replay", hardenRecording, "--comm", long},
	} {
		code, _, stderr := runCLI(args...)
		if code != 2 || !strings.Contains(stderr, "--comm") {
			t.Errorf("%q: exit %d, want 2 (stderr %q)", args, code, stderr)
		}
	}
	if code, _, stderr := runCLI("report", "--replay", hardenRecording, "--comm", long[:15]); code != 0 {
		t.Errorf("--comm of 15 bytes: exit %d: %s", code, stderr)
	}
}

// A bad or taken --listen is a usage error found before any program loads.
func TestServeListenErrorsBeforeLoading(t *testing.T) {
	requireRoot(t)
	before := loadedPrograms(t, ourPrograms(t))
	busy, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	for _, addr := range []string{"256.0.0.1:1", busy.Addr().String(), "localhost:0", ":9963", "127.0.0.1:http", "127.0.0.1:65536"} {
		code, stdout, stderr := runCLI("serve", "--backend", serveBackend(), "--listen", addr, "--duration", "1s")
		if code != 2 || !strings.Contains(stderr, addr) {
			t.Errorf("--listen %s: exit %d, want 2 naming the address (stderr %q)", addr, code, stderr)
		}
		if strings.Contains(stdout, "serving") {
			t.Errorf("--listen %s: served before failing: %q", addr, stdout)
		}
	}
	for id, name := range loadedPrograms(t, ourPrograms(t)) {
		if _, old := before[id]; !old {
			t.Errorf("program %s (id %d) loaded for a serve that could not listen", name, id)
		}
	}
}

// 0.0.0.0 listens on IPv4 only and [::1] on IPv6 only: no family is exposed
// that was not asked for. (Only loopback is dialled.)
func TestListenOneFamily(t *testing.T) {
	if l, err := net.Listen("tcp6", "[::1]:0"); err != nil {
		t.Skipf("no IPv6 loopback here: %v", err)
	} else {
		l.Close()
	}
	for _, c := range []struct{ listen, reach, unreachable string }{
		{"0.0.0.0:0", "127.0.0.1", "::1"},
		{"[::]:0", "::1", "127.0.0.1"},
		{"[::1]:0", "::1", "127.0.0.1"},
	} {
		ln, err := openListener(c.listen)
		if err != nil {
			t.Fatalf("%s: %v", c.listen, err)
		}
		_, port, _ := net.SplitHostPort(ln.Addr().String())
		if conn, err := net.Dial("tcp", net.JoinHostPort(c.reach, port)); err != nil {
			t.Errorf("--listen %s: %s unreachable: %v", c.listen, c.reach, err)
		} else {
			conn.Close()
		}
		if conn, err := net.Dial("tcp", net.JoinHostPort(c.unreachable, port)); err == nil {
			conn.Close()
			t.Errorf("--listen %s also listens on %s", c.listen, c.unreachable)
		}
		ln.Close()
	}
}

// procChildren lists the pids whose parent is ppid and whose name is comm.
func procChildren(ppid int, comm string) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if p, c, _, ok := procStat(pid); ok && p == ppid && c == comm {
			pids = append(pids, pid)
		}
	}
	return pids
}

// procStat reads a process's parent, name and state from /proc/PID/stat.
func procStat(pid int) (ppid int, comm string, state byte, ok bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, "", 0, false
	}
	s := string(b)
	open, closing := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || closing < open {
		return 0, "", 0, false
	}
	f := strings.Fields(s[closing+1:])
	if len(f) < 2 {
		return 0, "", 0, false
	}
	ppid, err = strconv.Atoi(f[1])
	return ppid, s[open+1 : closing], f[0][0], err == nil
}

// alive says whether pid runs: gone and zombie (killed, not yet reaped by
// whoever adopted it) both count as dead.
func alive(pid int) bool {
	_, _, state, ok := procStat(pid)
	return ok && state != 'Z' && state != 'X'
}

// poll waits for cond, bounded.
func poll(limit time.Duration, cond func() bool) bool {
	for deadline := time.Now().Add(limit); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if cond() {
			return true
		}
	}
	return cond()
}

// A SIGKILLed agent can clean up nothing: the parent-death signal must end
// the traced command, which otherwise runs on, adopted by init.
func TestAgentSIGKILLEndsCommand(t *testing.T) {
	requireRoot(t)
	sleepBin, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep binary")
	}
	agent := exec.Command(os.Args[0], "report", "--backend", testBackend(), "--", sleepBin, "60")
	agent.Env = append(os.Environ(), runCLIEnv+"=1")
	// A file, not a pipe: sleep inherits it, and a pipe would hold Wait
	// until sleep exits.
	out, err := os.Create(filepath.Join(t.TempDir(), "agent.out"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	agent.Stdout, agent.Stderr = out, out
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	defer agent.Process.Kill()

	var cmd int
	found := poll(60*time.Second, func() bool {
		if pids := procChildren(agent.Process.Pid, "sleep"); len(pids) > 0 {
			cmd = pids[0]
			return true
		}
		return !alive(agent.Process.Pid) // exited early: fail now, with its output
	})
	if !found || cmd == 0 {
		t.Fatalf("the agent did not start sleep: %s", mustRead(t, out.Name()))
	}
	t.Cleanup(func() { syscall.Kill(cmd, syscall.SIGKILL) })

	if err := agent.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	agent.Wait()
	if !poll(10*time.Second, func() bool { return !alive(cmd) }) {
		ppid, _, state, _ := procStat(cmd)
		t.Fatalf("sleep (pid %d) still runs (state %c, parent %d) after the agent was SIGKILLed", cmd, state, ppid)
	}
}

// A recording keeps no start time: the replay says so instead of printing
// the zero time as a date.
func TestReplayHeaderHasNoFakeDate(t *testing.T) {
	for _, format := range []string{"text", "json"} {
		code, stdout, stderr := runCLI("report", "--replay", hardenRecording, "-o", format)
		if code != 0 {
			t.Fatalf("-o %s: exit %d: %s", format, code, stderr)
		}
		if strings.Contains(stdout, "0001-01-01") {
			t.Errorf("-o %s: replay shows the zero time as its start: %s", format, stdout)
		}
	}
	if _, stdout, _ := runCLI("report", "--replay", hardenRecording); !strings.HasPrefix(stdout, "portsleuth report: started unknown (replay of a recording)") {
		t.Errorf("text header %q", strings.SplitN(stdout, "\n", 2)[0])
	}
}
