package probe

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/portsleuth/portsleuth/gen"
)

// Capabilities are per thread and the Go runtime runs many threads, so each
// case runs this test binary again as a child whose whole process was
// started with fewer capabilities (setpriv, from util-linux), and reads back
// what the child saw.

// capsChildEnv selects what TestCapsChild does in the child: "start:B",
// "load:B" (the kernel's own check, past portsleuth's) or "unmount:B".
const capsChildEnv = "PORTSLEUTH_CAPS_CHILD"

// childResult is what a child reports, one JSON line after childMark.
type childResult struct {
	Err        string   `json:"err"`
	Privileges bool     `json:"privileges"` // errors.Is(err, ErrPrivileges)
	Missing    []string `json:"missing"`    // from a *PrivilegeError
	// For "unmount:B": whether the mount was there while tracing and after Close.
	MountedWhileTracing bool   `json:"mounted_while_tracing"`
	MountedAfterClose   bool   `json:"mounted_after_close"`
	DirsAfterClose      string `json:"dirs_after_close"` // the created directories still present
	CloseErr            string `json:"close_err"`
}

const childMark = "CAPS-CHILD-RESULT "

// runChild runs TestCapsChild in mode under the command prefix wrap (e.g.
// setpriv with its options), and returns what the child reported.
func runChild(t *testing.T, bin, mode string, wrap ...string) childResult {
	t.Helper()
	args := append(slices.Clone(wrap), bin, "-test.run=^TestCapsChild$", "-test.count=1")
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = append(os.Environ(), capsChildEnv+"="+mode)
	cmd.Dir = "/"
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if line, ok := strings.CutPrefix(sc.Text(), childMark); ok {
			var r childResult
			if err := json.Unmarshal([]byte(line), &r); err != nil {
				t.Fatalf("child %s: %v: %s", mode, err, line)
			}
			return r
		}
	}
	t.Fatalf("child %s reported nothing (%v)\nstdout:\n%s\nstderr:\n%s", mode, err, out, stderr.String())
	return childResult{}
}

func requireRootAndSetpriv(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: starts children with a chosen subset of root's capabilities")
	}
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

// dropCaps is a setpriv prefix for a child that stays uid 0 but holds every
// capability except drop (the bounding set caps what exec gives root).
func dropCaps(setpriv string, drop ...string) []string {
	bound := make([]string, len(drop))
	for i, c := range drop {
		bound[i] = "-" + c
	}
	return []string{setpriv, "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=" + strings.Join(bound, ",")}
}

// publicCopy copies the test binary where an unprivileged user can run it:
// go test builds it in a directory only root can enter.
func publicCopy(t *testing.T) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "portsleuth-caps-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	src, err := os.Open(self)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	bin := filepath.Join(dir, "probe.test")
	dst, err := os.OpenFile(bin, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
	return bin
}

func self(t *testing.T) string {
	t.Helper()
	bin, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// Without CAP_NET_ADMIN (and without CAP_SYS_ADMIN, which stands in for it)
// the cgroup backend is refused, and the error says CAP_NET_ADMIN: both
// portsleuth's own check and the kernel's answer to the load. The tracing
// programs still load: they need only CAP_BPF and CAP_PERFMON.
func TestCgroupBackendNamesCapNetAdmin(t *testing.T) {
	setpriv := requireRootAndSetpriv(t)
	wrap := dropCaps(setpriv, "net_admin", "sys_admin")
	for _, mode := range []string{"start:cgroup", "load:cgroup"} {
		r := runChild(t, self(t), mode, wrap...)
		if !r.Privileges || !slices.Equal(r.Missing, []string{"CAP_NET_ADMIN"}) || !strings.Contains(r.Err, "CAP_NET_ADMIN") {
			t.Errorf("%s without CAP_NET_ADMIN: privileges=%v missing=%v err=%q; want ErrPrivileges naming CAP_NET_ADMIN", mode, r.Privileges, r.Missing, r.Err)
		}
		if strings.Contains(r.Err, "lockdown") {
			t.Errorf("%s: blames lockdown for a missing capability: %q", mode, r.Err)
		}
	}
	if r := runChild(t, self(t), "load:tracepoint", wrap...); r.Err != "" {
		t.Errorf("the tracepoint programs should load with CAP_BPF and CAP_PERFMON alone: %s", r.Err)
	}
}

// A process without capabilities (not root) is told CAP_BPF and CAP_PERFMON,
// whatever the backend; the kernel's refusal of the load names them too.
func TestNoCapabilitiesNamesCapBPFAndPerfmon(t *testing.T) {
	setpriv := requireRootAndSetpriv(t)
	bin := publicCopy(t)
	wrap := []string{setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--ambient-caps=-all"}
	for _, mode := range []string{"start:tracepoint", "start:cgroup", "load:tracepoint", "load:cgroup"} {
		r := runChild(t, bin, mode, wrap...)
		if !r.Privileges || !strings.Contains(r.Err, "CAP_BPF") || !strings.Contains(r.Err, "CAP_PERFMON") {
			t.Errorf("%s without capabilities: privileges=%v err=%q; want ErrPrivileges naming CAP_BPF and CAP_PERFMON", mode, r.Privileges, r.Err)
		}
	}
	r := runChild(t, bin, "load:cgroup", wrap...)
	if want := []string{"CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"}; !slices.Equal(r.Missing, want) {
		t.Errorf("load:cgroup without capabilities: missing %v, want %v", r.Missing, want)
	}
}

// What portsleuth mounts itself it unmounts on Close, and the directories it
// created go too. Each case runs in a private mount namespace whose copy of
// the file system is unmounted first, so the host's mounts are untouched.
func TestCloseUnmountsWhatItMounted(t *testing.T) {
	requireRootAndSetpriv(t)
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Skip("needs unshare (util-linux) for a private mount namespace")
	}
	if _, err := os.Stat("/run/portsleuth"); err == nil {
		t.Skip("/run/portsleuth exists: a mount left by an older portsleuth? the test must see the directories created")
	}
	wrap := []string{unshare, "--mount", "--propagation", "private"}
	for _, b := range []string{"cgroup", "tracepoint"} {
		t.Run(b, func(t *testing.T) {
			r := runChild(t, self(t), "unmount:"+b, wrap...)
			if r.Err != "" {
				t.Fatalf("starting %s: %s", b, r.Err)
			}
			if !r.MountedWhileTracing {
				t.Fatalf("%s: nothing was mounted while tracing", b)
			}
			if r.MountedAfterClose || r.DirsAfterClose != "" || r.CloseErr != "" {
				t.Errorf("%s after Close: still mounted=%v, directories left %q, close error %q", b, r.MountedAfterClose, r.DirsAfterClose, r.CloseErr)
			}
		})
	}
	if _, err := os.Stat("/run/portsleuth"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("/run/portsleuth is left on the host: %v", err)
	}
}

// A mount that is not portsleuth's stays: the host's cgroup2, and a file
// system someone mounts over portsleuth's before Close.
func TestCloseLeavesOtherMounts(t *testing.T) {
	requireRootAndSetpriv(t)
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Skip("needs unshare (util-linux) for a private mount namespace")
	}
	if _, err := os.Stat("/run/portsleuth"); err == nil {
		t.Skip("/run/portsleuth exists: a mount left by an older portsleuth? the test removes what it creates there")
	}
	wrap := []string{unshare, "--mount", "--propagation", "private"}
	if r := runChild(t, self(t), "keep-host:cgroup", wrap...); r.Err != "" || !r.MountedAfterClose {
		t.Errorf("the host's cgroup2: err %q, still mounted after Close: %v", r.Err, r.MountedAfterClose)
	}
	if r := runChild(t, self(t), "covered:cgroup", wrap...); r.Err != "" || !r.MountedAfterClose || r.CloseErr != "" {
		t.Errorf("a tmpfs over portsleuth's cgroup2: err %q, still mounted after Close: %v, close error %q", r.Err, r.MountedAfterClose, r.CloseErr)
	}
}

// TestCapsChild is the child side of the tests above; run directly it does
// nothing.
func TestCapsChild(t *testing.T) {
	mode := os.Getenv(capsChildEnv)
	if mode == "" {
		t.Skip("the child of the capability and mount tests; runs only under them")
	}
	what, backend, _ := strings.Cut(mode, ":")
	b := Backend(backend)
	var r childResult
	var err error
	switch what {
	case "start":
		var tr *Tracer
		if tr, err = Start(Options{Backend: b}); err == nil {
			tr.Close()
		}
	case "load":
		err = loadOnly(b)
	case "unmount":
		r, err = unmountCase(b)
	case "keep-host":
		r, err = keepHostCase(b)
	case "covered":
		r, err = coveredCase(b)
	default:
		err = fmt.Errorf("unknown child mode %q", mode)
	}
	if err != nil {
		r.Err = err.Error()
		r.Privileges = errors.Is(err, ErrPrivileges)
		var pe *PrivilegeError
		if errors.As(err, &pe) {
			r.Missing = pe.Missing
		}
	}
	line, _ := json.Marshal(r)
	fmt.Printf("%s%s\n", childMark, line)
}

// loadOnly loads b's programs with no check of portsleuth's before: what the
// kernel itself refuses.
func loadOnly(b Backend) error {
	spec, err := gen.LoadPortsleuth()
	if err != nil {
		return err
	}
	if err := configure(spec, Options{}); err != nil {
		return err
	}
	coll, err := load(spec, b.hooks(spec, ""), b)
	if err != nil {
		return err
	}
	coll.Close()
	return nil
}

// fsOf is the file system type a backend may mount, and where.
func fsOf(b Backend) (fstype, dir string) {
	if b == Cgroup {
		return "cgroup2", cgroupMountDir
	}
	return "tracefs", tracefsDir
}

// unmountAll unmounts every mount of fstype in this (private) mount namespace.
func unmountAll(fstype string) error {
	for _, m := range mounts(fstype) {
		if err := unix.Unmount(m, unix.MNT_DETACH); err != nil {
			return fmt.Errorf("unmounting %s: %w", m, err)
		}
	}
	if fstype == "tracefs" {
		// debugfs offers tracefs at debug/tracing too.
		for _, m := range mounts("debugfs") {
			if err := unix.Unmount(m, unix.MNT_DETACH); err != nil {
				return fmt.Errorf("unmounting %s: %w", m, err)
			}
		}
	}
	return nil
}

// mounts lists the mount points of fstype in /proc/self/mountinfo.
func mounts(fstype string) []string {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	var out []string
	for line := range strings.Lines(string(b)) {
		pre, post, ok := strings.Cut(line, " - ")
		fields, fs := strings.Fields(pre), strings.Fields(post)
		if ok && len(fields) >= 5 && len(fs) >= 1 && fs[0] == fstype {
			out = append(out, fields[4])
		}
	}
	return out
}

func mountedAt(fstype, dir string) bool { return slices.Contains(mounts(fstype), dir) }

func unmountCase(b Backend) (childResult, error) {
	var r childResult
	fstype, dir := fsOf(b)
	if err := unmountAll(fstype); err != nil {
		return r, err
	}
	tr, err := Start(Options{Backend: b})
	if err != nil {
		return r, err
	}
	r.MountedWhileTracing = mountedAt(fstype, dir)
	if err := tr.Close(); err != nil {
		r.CloseErr = err.Error()
	}
	r.MountedAfterClose = len(mounts(fstype)) > 0
	if b == Cgroup {
		for _, d := range []string{cgroupMountDir, filepath.Dir(cgroupMountDir)} {
			if _, err := os.Lstat(d); err == nil {
				r.DirsAfterClose += d + " "
			}
		}
	}
	return r, nil
}

func keepHostCase(b Backend) (childResult, error) {
	var r childResult
	fstype, _ := fsOf(b)
	before := mounts(fstype)
	if len(before) == 0 {
		return r, fmt.Errorf("no %s mounted here to keep", fstype)
	}
	tr, err := Start(Options{Backend: b})
	if err != nil {
		return r, err
	}
	if err := tr.Close(); err != nil {
		r.CloseErr = err.Error()
	}
	r.MountedAfterClose = slices.Equal(mounts(fstype), before)
	return r, nil
}

// coveredCase mounts a tmpfs over portsleuth's own mount while it traces:
// Close must leave the tmpfs, which is not its own.
func coveredCase(b Backend) (childResult, error) {
	var r childResult
	fstype, dir := fsOf(b)
	if err := unmountAll(fstype); err != nil {
		return r, err
	}
	tr, err := Start(Options{Backend: b})
	if err != nil {
		return r, err
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, ""); err != nil {
		tr.Close()
		return r, fmt.Errorf("covering %s: %w", dir, err)
	}
	if err := tr.Close(); err != nil {
		r.CloseErr = err.Error()
	}
	r.MountedAfterClose = mountedAt("tmpfs", dir)
	// Undo the test's own mounts; the namespace dies with this process, but
	// the directories are on the host's file system.
	unix.Unmount(dir, unix.MNT_DETACH)
	unix.Unmount(dir, unix.MNT_DETACH)
	os.Remove(cgroupMountDir)
	os.Remove(filepath.Dir(cgroupMountDir))
	return r, nil
}
