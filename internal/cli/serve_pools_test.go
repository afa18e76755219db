package cli

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
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"golang.org/x/sys/unix"

	"github.com/portsleuth/portsleuth/internal/metrics"
	"github.com/portsleuth/portsleuth/internal/procinfo"
	"github.com/portsleuth/portsleuth/internal/scenario"
)

// poolChildEnv makes the test binary run a scenario on its main thread: the
// thread-group leader, whose /proc/PID/ns/net is what serve's pool scan
// enumerates (scenario.Main isolates some other locked thread). The child
// waits for a line on stdin before it starts (so the test can move it into
// a cgroup first), and holds its sockets until stdin closes.
const poolChildEnv = "PORTSLEUTH_POOLS_CHILD"

func init() {
	name := os.Getenv(poolChildEnv)
	if name == "" {
		return
	}
	// In init the main goroutine runs on the main thread; locking it here
	// keeps it there.
	runtime.LockOSThread()
	os.Exit(poolChild(name))
}

func poolChild(name string) int {
	fn, ok := scenario.Scenarios[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "pool child: unknown scenario %q\n", name)
		return 2
	}
	if err := scenario.Isolate(); err != nil {
		fmt.Fprintf(os.Stderr, "pool child %s: %v\n", name, err)
		return 1
	}
	in := bufio.NewReader(os.Stdin)
	if _, err := in.ReadString('\n'); err != nil {
		fmt.Fprintf(os.Stderr, "pool child %s: waiting for the go line: %v\n", name, err)
		return 1
	}
	res := &scenario.Result{Scenario: name, PID: os.Getpid(), TID: unix.Gettid(), Errors: map[string]int{}}
	if err := fn(res); err != nil {
		fmt.Fprintf(os.Stderr, "pool child %s: %v\n", name, err)
		return 1
	}
	b, _ := json.Marshal(res)
	fmt.Printf("%s\n", b)
	_, _ = io.Copy(io.Discard, in)
	return 0
}

// poolChildProc is a started pool child.
type poolChildProc struct {
	cmd     *exec.Cmd
	release io.WriteCloser
	out     *bytes.Buffer
	comm    string
	netns   uint64
}

// startPoolChild starts scenario name under command name comm, waiting for
// its go line; it is released (stdin closed) and reaped at cleanup.
func startPoolChild(t *testing.T, comm, name string) *poolChildProc {
	t.Helper()
	exe := filepath.Join(t.TempDir(), comm)
	if err := os.Symlink(os.Args[0], exe); err != nil {
		t.Fatal(err)
	}
	c := &poolChildProc{cmd: exec.Command(exe), out: &bytes.Buffer{}, comm: comm}
	c.cmd.Env = append(os.Environ(), poolChildEnv+"="+name)
	c.cmd.Stdout, c.cmd.Stderr = c.out, c.out
	var err error
	if c.release, err = c.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.release.Close()
		if err := c.cmd.Wait(); err != nil {
			t.Errorf("%s (%s): %v\n%s", comm, name, err, c.out.String())
		}
	})
	self, err := netnsOf(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	// The child's leader enters its own namespace before it waits.
	if !poll(10*time.Second, func() bool {
		c.netns, err = netnsOf(c.cmd.Process.Pid)
		return err == nil && c.netns != self
	}) {
		t.Fatalf("%s never entered a namespace of its own: %v", comm, err)
	}
	return c
}

func (c *poolChildProc) goAhead(t *testing.T) {
	t.Helper()
	if _, err := c.release.Write([]byte("go\n")); err != nil {
		t.Fatalf("releasing %s: %v", c.comm, err)
	}
}

func netnsOf(pid int) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

// testCgroups builds real cgroup v2 directories under one of its own and
// removes them at cleanup, deepest first, once the processes moved into
// them are out.
type testCgroups struct {
	root    string // the cgroup2 mount
	base    string // our directory, relative to root
	created []string
}

func newTestCgroups(t *testing.T) *testCgroups {
	t.Helper()
	root, err := procinfo.Cgroup2Mount()
	if err != nil || root == "" {
		t.Skipf("needs a cgroup v2 hierarchy mounted (found none: %v)", err)
	}
	c := &testCgroups{root: root}
	c.base = "/portsleuth-test-" + strconv.Itoa(os.Getpid())
	if err := os.Mkdir(filepath.Join(root, c.base), 0o755); err != nil {
		t.Skipf("needs a writable cgroup v2 hierarchy: creating a cgroup under %s: %v", root, err)
	}
	c.created = append(c.created, c.base)
	t.Cleanup(func() { c.cleanup(t) })
	return c
}

// mkdir creates rel (a path below our directory) and every parent, and
// returns its path relative to the cgroup2 root.
func (c *testCgroups) mkdir(t *testing.T, rel string) string {
	t.Helper()
	path := c.base
	for _, part := range strings.Split(strings.Trim(rel, "/"), "/") {
		path += "/" + part
		err := os.Mkdir(filepath.Join(c.root, path), 0o755)
		if err == nil {
			c.created = append(c.created, path)
		} else if !errors.Is(err, os.ErrExist) {
			t.Fatalf("creating cgroup %s: %v", path, err)
		}
	}
	return path
}

// move puts process pid (all its threads) into cgroup rel.
func (c *testCgroups) move(t *testing.T, rel string, pid int) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(c.root, rel, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0); err != nil {
		t.Fatalf("moving pid %d into %s: %v", pid, rel, err)
	}
}

// cleanup moves whatever still runs in our cgroups back into this test's
// own cgroup, then removes them deepest first.
func (c *testCgroups) cleanup(t *testing.T) {
	home := c.root
	if f, err := os.Open("/proc/self/cgroup"); err == nil {
		home = filepath.Join(c.root, procinfo.CgroupPath(f))
		f.Close()
	}
	for i := len(c.created) - 1; i >= 0; i-- {
		dir := filepath.Join(c.root, c.created[i])
		b, _ := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
		for _, pid := range strings.Fields(string(b)) {
			os.WriteFile(filepath.Join(home, "cgroup.procs"), []byte(pid), 0)
		}
		// An exited process leaves its cgroup a moment after it is reaped.
		var err error
		if !poll(10*time.Second, func() bool {
			err = unix.Rmdir(dir)
			return err == nil || errors.Is(err, unix.ENOENT)
		}) {
			t.Errorf("removing cgroup %s: %v", dir, err)
		}
	}
}

// startServeProcess runs serve as a process of its own (this binary as the
// CLI), so the test can stop it with SIGTERM like an operator would, and
// waits for it to attach. It is stopped at cleanup unless stopped before.
func startServeProcess(t *testing.T, addr string, extra ...string) (stop func() string) {
	t.Helper()
	args := append([]string{"serve", "--backend", serveBackend(), "--listen", addr, "--log-format", "json", "--report-interval", "1s"}, extra...)
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), runCLIEnv+"=1")
	out, err := os.Create(filepath.Join(t.TempDir(), "serve.out"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	stopped := false
	stop = func() string {
		if stopped {
			return mustRead(t, out.Name())
		}
		stopped = true
		cmd.Process.Signal(syscall.SIGTERM)
		err := cmd.Wait()
		log := mustRead(t, out.Name())
		if err != nil {
			t.Errorf("serve: %v\n%s", err, log)
		}
		return log
	}
	t.Cleanup(func() { stop() })
	if !poll(60*time.Second, func() bool {
		return strings.Contains(mustRead(t, out.Name()), `"msg":"serving"`) || !alive(cmd.Process.Pid)
	}) || !alive(cmd.Process.Pid) {
		t.Fatalf("serve did not start: %s", stop())
	}
	return stop
}

// labelsOf is a series' labels.
func labelsOf(m *dto.Metric) map[string]string {
	l := map[string]string{}
	for _, p := range m.GetLabel() {
		l[p.GetName()] = p.GetValue()
	}
	return l
}

// value finds the series of family name whose labels are exactly want
// (every label of the family named), -1 if none.
func value(fams map[string]*dto.MetricFamily, name string, want map[string]string) float64 {
	f := fams[name]
	if f == nil {
		return -1
	}
next:
	for _, m := range f.Metric {
		l := labelsOf(m)
		if len(l) != len(want) {
			continue
		}
		for k, v := range want {
			if l[k] != v {
				continue next
			}
		}
		return m.GetGauge().GetValue() + m.GetCounter().GetValue()
	}
	return -1
}

// seriesIn lists the series of family name in network namespace netns.
func seriesIn(fams map[string]*dto.MetricFamily, name string, netns uint64) []map[string]string {
	var out []map[string]string
	if f := fams[name]; f != nil {
		for _, m := range f.Metric {
			if l := labelsOf(m); l["netns"] == strconv.FormatUint(netns, 10) {
				out = append(out, l)
			}
		}
	}
	return out
}

const (
	testContainerA = "a1a2a3a4a5a6a7a8a9a0b1b2b3b4b5b6b7b8b9b0c1c2c3c4c5c6c7c8c9c0d1d2"
	testContainerB = "e1e2e3e4e5e6e7e8e9e0f1f2f3f4f5f6f7f8f9f0a1a2a3a4a5a6a7a8a9a0b1b2"
	testPodUID     = "8d3f0c5e-1b2a-4c6d-9e7f-0a1b2c3d4e5f"
)

// serve on a host with pods, a docker container and a systemd service, all
// built as real cgroups with real processes failing in namespaces of their
// own: the failures carry container_id, pod_uid and unit; a 64-port pool
// filled with TIME_WAIT shows used 64, free 0, 64 TIME_WAIT; a pool held by
// live connections names its owner and the owner's container.
func TestServePoolsAndIdentity(t *testing.T) {
	requireRoot(t)
	cg := newTestCgroups(t)
	pod := cg.mkdir(t, "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"+
		strings.ReplaceAll(testPodUID, "-", "_")+".slice/cri-containerd-"+testContainerA+".scope")
	docker := cg.mkdir(t, "system.slice/docker-"+testContainerB+".scope")
	unit := "pstest" + strconv.Itoa(os.Getpid()) + ".service"
	service := cg.mkdir(t, "system.slice/"+unit)

	addr := freePort(t)
	stop := startServeProcess(t, addr, "--pool-interval", "1s")

	id := strconv.Itoa(os.Getpid() % 1000000)
	tw := startPoolChild(t, "pt"+id, "timewait-exhaustion")
	held := startPoolChild(t, "pb"+id, "bind-any-before-connect")
	inUse := startPoolChild(t, "pu"+id, "port-in-use")
	cg.move(t, pod, tw.cmd.Process.Pid)
	cg.move(t, docker, held.cmd.Process.Pid)
	cg.move(t, service, inUse.cmd.Process.Pid)
	for _, c := range []*poolChildProc{tw, held, inUse} {
		c.goAhead(t)
	}

	failures := []struct {
		child                   *poolChildProc
		op, errno, pattern      string
		container, podUID, unit string
		want                    float64
	}{
		{tw, "connect", "EADDRNOTAVAIL", "connect-port-exhaustion", testContainerA, testPodUID, "", scenario.FailAttempts},
		{held, "bind", "EADDRINUSE", "bind-any-before-connect", testContainerB, "", "", scenario.FailAttempts},
		{inUse, "bind", "EADDRINUSE", "port-in-use", "", "", unit, scenario.PortInUseAttempts},
	}
	twPool := map[string]string{"netns": strconv.FormatUint(tw.netns, 10), "kind": "connect", "proto": "tcp",
		"local": "127.0.0.1", "dest": "127.0.0.1:8080"}
	heldPool := map[string]string{"netns": strconv.FormatUint(held.netns, 10), "kind": "bind", "proto": "tcp",
		"local": "0.0.0.0", "dest": ""}
	heldOwner := map[string]string{"owner_comm": held.comm, "owner_container": testContainerB, "owner_pod_uid": "", "owner_unit": ""}
	for k, v := range heldPool {
		heldOwner[k] = v
	}

	var fams map[string]*dto.MetricFamily
	var missing string
	ok := poll(60*time.Second, func() bool {
		fams = scrape(t, addr)
		for _, f := range failures {
			l := map[string]string{"op": f.op, "errno": f.errno, "pattern": f.pattern, "comm": f.child.comm,
				"container_id": f.container, "pod_uid": f.podUID, "unit": f.unit}
			if got := value(fams, "portsleuth_failures_total", l); got != f.want {
				missing = fmt.Sprintf("portsleuth_failures_total%v = %v, want %v", l, got, f.want)
				return false
			}
		}
		for name, want := range map[string]float64{"portsleuth_port_pool_used": 64, "portsleuth_port_pool_free": 0,
			"portsleuth_port_pool_size": 64, "portsleuth_port_pool_time_wait": scenario.RangeSize} {
			if got := value(fams, name, twPool); got != want {
				missing = fmt.Sprintf("%s%v = %v, want %v", name, twPool, got, want)
				return false
			}
		}
		if got := value(fams, "portsleuth_port_pool_owner_info", heldOwner); got != scenario.RangeSize {
			missing = fmt.Sprintf("portsleuth_port_pool_owner_info%v = %v, want %d; the pool's owner series: %v",
				heldOwner, got, scenario.RangeSize, seriesIn(fams, "portsleuth_port_pool_owner_info", held.netns))
			return false
		}
		return true
	})
	if !ok {
		t.Fatalf("%s\nserve:\n%s", missing, stop())
	}
	if value(fams, "portsleuth_pool_scans_total", map[string]string{"result": "ok"}) < 1 {
		t.Errorf("no successful pool scan counted: %v\n%s", fams["portsleuth_pool_scans_total"], stop())
	}
	if d := value(fams, "portsleuth_pool_scan_duration_seconds", map[string]string{}); d <= 0 {
		t.Errorf("portsleuth_pool_scan_duration_seconds = %v", d)
	}
	// Our three namespaces at least were read and exported.
	if n := value(fams, "portsleuth_pool_scan_namespaces", map[string]string{"result": "exported"}); n < 3 {
		t.Errorf("portsleuth_pool_scan_namespaces{result=\"exported\"} = %v, want at least 3", n)
	}
	// Every family serve exports is in metrics.Names (what dashboards check against).
	names := map[string]bool{}
	for _, n := range metrics.Names() {
		names[n] = true
	}
	for name := range fams {
		if !names[name] {
			t.Errorf("serve exports %s, which metrics.Names() does not list", name)
		}
	}
	log := stop()
	if !strings.Contains(log, `"msg":"stopped"`) {
		t.Errorf("serve did not stop cleanly:\n%s", log)
	}
	// The culprit log names them the same way.
	for _, f := range failures {
		if !culpritLogged(log, f.child.comm, f.container, f.podUID, f.unit) {
			t.Errorf("no culprit line for %s with container_id %q, pod_uid %q, unit %q", f.child.comm, f.container, f.podUID, f.unit)
		}
	}
}

// culpritLogged says whether serve's JSON log has a culprit line for comm
// with this identity.
func culpritLogged(log, comm, container, podUID, unit string) bool {
	for line := range strings.Lines(log) {
		var l struct {
			Msg         string `json:"msg"`
			Comm        string `json:"comm"`
			ContainerID string `json:"container_id"`
			PodUID      string `json:"pod_uid"`
			Unit        string `json:"unit"`
		}
		if json.Unmarshal([]byte(line), &l) == nil && l.Msg == "culprit" && l.Comm == comm &&
			l.ContainerID == container && l.PodUID == podUID && l.Unit == unit {
			return true
		}
	}
	return false
}

// --pool-top 1: one series per namespace for each pool gauge, the fullest
// pool, and the rest counted as dropped.
func TestServePoolTopBound(t *testing.T) {
	requireRoot(t)
	addr := freePort(t)
	stop := startServeProcess(t, addr, "--pool-interval", "1s", "--pool-top", "1")
	tw := startPoolChild(t, "pk"+strconv.Itoa(os.Getpid()%1000000), "timewait-exhaustion")
	tw.goAhead(t)
	var fams map[string]*dto.MetricFamily
	full := map[string]string{"netns": strconv.FormatUint(tw.netns, 10), "kind": "bind", "proto": "tcp", "local": "0.0.0.0", "dest": ""}
	if !poll(60*time.Second, func() bool {
		fams = scrape(t, addr)
		return value(fams, "portsleuth_port_pool_used", full) == scenario.RangeSize
	}) {
		t.Fatalf("the fullest pool %v never showed 64 used; ours: %v\nserve:\n%s",
			full, seriesIn(fams, "portsleuth_port_pool_used", tw.netns), stop())
	}
	for _, name := range []string{"portsleuth_port_pool_used", "portsleuth_port_pool_free", "portsleuth_port_pool_size",
		"portsleuth_port_pool_time_wait"} {
		perNS := map[string]int{}
		for _, m := range fams[name].GetMetric() {
			perNS[labelsOf(m)["netns"]]++
		}
		for ns, n := range perNS {
			if n != 1 {
				t.Errorf("%s: %d series in netns %s with --pool-top 1", name, n, ns)
			}
		}
		if len(perNS) > 64 {
			t.Errorf("%s: %d namespaces, more than the bound of 64", name, len(perNS))
		}
	}
	// Its namespace has three full pools (bind 0.0.0.0, bind 127.0.0.1, the connect pool): two dropped per scan.
	if d := value(fams, "portsleuth_pool_scan_pools_dropped_total", map[string]string{}); d < 2 {
		t.Errorf("portsleuth_pool_scan_pools_dropped_total = %v, want at least 2", d)
	}
	stop()
}

func TestServePoolFlags(t *testing.T) {
	for _, args := range [][]string{
		{"--pool-interval", "500ms"},
		{"--pool-interval", "2h"},
		{"--pool-interval", "-1s"},
		{"--pool-interval", "soon"},
		{"--pool-top", "0"},
		{"--pool-top", "101"},
		{"--pool-top", "-3"},
	} {
		var out, errb bytes.Buffer
		if code := Run(append([]string{"serve", "--listen", "127.0.0.1:0"}, args...), &out, &errb); code != 2 {
			t.Errorf("%q: exit %d, want 2 (%s)", args, code, errb.String())
		}
	}
	for _, ok := range [][2]string{{"0", "10"}, {"1s", "1"}, {"1h", "100"}, {"15s", "10"}} {
		d, _ := time.ParseDuration(ok[0])
		n, _ := strconv.Atoi(ok[1])
		if err := validatePoolFlags(d, n); err != nil {
			t.Errorf("--pool-interval %s --pool-top %s refused: %v", ok[0], ok[1], err)
		}
	}
}
