package cli

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Capabilities are per thread and the Go runtime runs many threads, so these
// tests run this test binary as the portsleuth command ($PORTSLEUTH_RUN_CLI)
// in a child started with fewer capabilities by setpriv (util-linux).

func setprivPath(t *testing.T) string {
	t.Helper()
	requireRoot(t)
	path, err := exec.LookPath("setpriv")
	if err != nil {
		t.Skip("needs setpriv (util-linux) to start children with fewer capabilities")
	}
	// busybox has a setpriv without --bounding-set (the test VMs).
	if help, _ := exec.Command(path, "--help").CombinedOutput(); !strings.Contains(string(help), "--bounding-set") {
		t.Skipf("needs util-linux's setpriv (%s has no --bounding-set)", path)
	}
	return path
}

// withoutCaps is a setpriv prefix for a uid 0 child that holds every
// capability but drop ("all" for none): exec gives root its bounding set.
func withoutCaps(setpriv string, drop ...string) []string {
	bound := make([]string, len(drop))
	for i, c := range drop {
		bound[i] = "-" + c
	}
	return []string{setpriv, "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=" + strings.Join(bound, ",")}
}

// runReduced runs `portsleuth args...` under the command prefix wrap and
// returns its exit code, stdout and stderr.
func runReduced(t *testing.T, wrap []string, args ...string) (int, string, string) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	argv := append(append(append([]string{}, wrap...), self), args...)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), runCLIEnv+"=1")
	cmd.Dir = "/"
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("running %v: %v", argv, err)
	}
	return cmd.ProcessState.ExitCode(), stdout.String(), stderr.String()
}

// startNetnsHolder starts a process in a network namespace of its own that
// holds the same capabilities as a child of withoutCaps(drop...): the kernel
// then lets that child open its /proc/PID/ns/net, and only setns is refused.
func startNetnsHolder(t *testing.T, setpriv string, drop ...string) (pid int, inode uint64) {
	t.Helper()
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Skip("needs unshare (util-linux) for a network namespace")
	}
	argv := append(append([]string{unshare, "--net"}, withoutCaps(setpriv, drop...)...), "cat")
	cmd := exec.Command(argv[0], argv[1:]...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close(); cmd.Wait() })
	own := nsInode(t, os.Getpid())
	pid = cmd.Process.Pid
	// unshare and setpriv exec in place: the pid is cat's once its name is.
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if strings.TrimSpace(string(comm)) == "cat" {
			if inode = nsInode(t, pid); inode != own {
				return pid, inode
			}
		}
	}
	t.Fatalf("holder %d never reached its own network namespace", pid)
	return 0, 0
}

func nsInode(t *testing.T, pid int) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

type portsCapsOutput struct {
	Namespaces []struct {
		Netns uint64 `json:"netns"`
	} `json:"namespaces"`
	Skipped []skippedNetns `json:"skipped"`
}

// Without CAP_SYS_ADMIN, `ports --netns all` reads its own namespace, lists
// each one it could not enter with the capability the kernel wanted, and
// exits 0 since it read one.
func TestPortsSkipsNamespacesItCannotEnter(t *testing.T) {
	setpriv := setprivPath(t)
	holderPID, holderNS := startNetnsHolder(t, setpriv, "sys_admin")
	own := nsInode(t, os.Getpid())
	wrap := withoutCaps(setpriv, "sys_admin")

	code, stdout, stderr := runReduced(t, wrap, "ports", "-o", "json", "--netns", "all")
	if code != 0 {
		t.Fatalf("ports --netns all without CAP_SYS_ADMIN: exit %d\n%s", code, stderr)
	}
	var out portsCapsOutput
	if err := json.Unmarshal([]byte(stdout), &out); err != nil {
		t.Fatalf("%v\n%s", err, stdout)
	}
	read := false
	for _, ns := range out.Namespaces {
		read = read || ns.Netns == own
		if ns.Netns == holderNS {
			t.Errorf("netns %d was read without CAP_SYS_ADMIN", holderNS)
		}
	}
	if !read {
		t.Errorf("its own netns %d was not read: %s", own, stdout)
	}
	var skip *skippedNetns
	for i, s := range out.Skipped {
		if s.Netns == holderNS {
			skip = &out.Skipped[i]
		}
	}
	if skip == nil {
		t.Fatalf("netns %d (pid %d) is not in the skipped list: %s", holderNS, holderPID, stdout)
	}
	if !strings.Contains(skip.Reason, "CAP_SYS_ADMIN") || len(skip.PIDs) == 0 || skip.PIDs[0] != holderPID {
		t.Errorf("skipped %+v: want pid %d and a reason naming CAP_SYS_ADMIN", *skip, holderPID)
	}

	code, stdout, stderr = runReduced(t, wrap, "ports", "--netns", "all")
	want := fmt.Sprintf("netns %d (pids %d): skipped: entering network namespace %d needs CAP_SYS_ADMIN", holderNS, holderPID, holderNS)
	if code != 0 || !strings.Contains(stdout, want) {
		t.Errorf("text output: exit %d, want a line %q:\n%s%s", code, want, stdout, stderr)
	}
}

// A single namespace it cannot enter is a failure (nothing was read), with
// the namespace and the capability in the output.
func TestPortsFailsWhenNoNamespaceIsRead(t *testing.T) {
	setpriv := setprivPath(t)
	holderPID, holderNS := startNetnsHolder(t, setpriv, "sys_admin")
	code, stdout, stderr := runReduced(t, withoutCaps(setpriv, "sys_admin"), "ports", "-o", "json", "--netns", fmt.Sprint(holderPID))
	if code != 1 || !strings.Contains(stderr, "CAP_SYS_ADMIN") {
		t.Errorf("ports --netns %d without CAP_SYS_ADMIN: exit %d (want 1), stderr %q", holderPID, code, stderr)
	}
	var out portsCapsOutput
	if err := json.Unmarshal([]byte(stdout), &out); err != nil {
		t.Fatalf("%v\n%s", err, stdout)
	}
	if len(out.Namespaces) != 0 || len(out.Skipped) != 1 || out.Skipped[0].Netns != holderNS || !strings.Contains(out.Skipped[0].Reason, "CAP_SYS_ADMIN") {
		t.Errorf("want netns %d alone in skipped, naming CAP_SYS_ADMIN: %s", holderNS, stdout)
	}
}

// A --netns that is no network namespace is a usage error (exit 2), found
// before anything loads: a process without capabilities gets the same
// answer, not a privilege error. A FIFO is not opened for reading (it would
// block).
func TestPortsNetnsMustBeANetworkNamespace(t *testing.T) {
	requireRoot(t)
	fifo := filepath.Join(t.TempDir(), "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	plain := filepath.Join(t.TempDir(), "passwd")
	if err := os.WriteFile(plain, []byte("root:x:0:0::/root:/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ netns, want string }{
		{plain, "not a network namespace"},
		{fifo, "not a network namespace"},
		{"/proc/self/ns/mnt", "not a network namespace"},
		{"/nonexistent/netns", "no such file"},
		{"4194305", "no process 4194305"},
		{"0", "not a pid"},
	} {
		var stdout, stderr bytes.Buffer
		if code := Run([]string{"ports", "--netns", c.netns}, &stdout, &stderr); code != 2 || !strings.Contains(stderr.String(), c.want) {
			t.Errorf("ports --netns %s: exit %d (want 2), stderr %q (want %q)", c.netns, code, firstLine(stderr.String()), c.want)
		}
		if stdout.Len() != 0 {
			t.Errorf("ports --netns %s printed %q", c.netns, stdout.String())
		}
	}
	setpriv := setprivPath(t)
	code, _, stderr := runReduced(t, withoutCaps(setpriv, "all"), "ports", "--netns", plain)
	if code != 2 || !strings.Contains(stderr, "not a network namespace") {
		t.Errorf("ports --netns %s without capabilities: exit %d (want 2), stderr %q", plain, code, firstLine(stderr))
	}
}

// Without capabilities a tracing command says which ones the kernel wants;
// without CAP_NET_ADMIN, the cgroup backend names CAP_NET_ADMIN, not
// lockdown.
func TestPrivilegeErrorsNameTheCapability(t *testing.T) {
	setpriv := setprivPath(t)
	code, _, stderr := runReduced(t, withoutCaps(setpriv, "all"), "report", "--backend", "tracepoint", "--duration", "1ms")
	if code != 1 || !strings.Contains(stderr, "CAP_BPF") || !strings.Contains(stderr, "CAP_PERFMON") {
		t.Errorf("report without capabilities: exit %d (want 1), stderr %q", code, stderr)
	}
	code, _, stderr = runReduced(t, withoutCaps(setpriv, "net_admin", "sys_admin"), "report", "--backend", "cgroup", "--duration", "1ms")
	if code != 1 || !strings.Contains(stderr, "CAP_NET_ADMIN") || strings.Contains(stderr, "lockdown") {
		t.Errorf("report --backend cgroup without CAP_NET_ADMIN: exit %d (want 1), stderr %q", code, stderr)
	}
}

func firstLine(s string) string {
	first, _, _ := strings.Cut(s, "\n")
	return first
}
