package cli

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/portsleuth/portsleuth/internal/lab"
	"github.com/portsleuth/portsleuth/internal/probe"
	"github.com/portsleuth/portsleuth/internal/report"
	"github.com/portsleuth/portsleuth/internal/scenario"
)

// The test binary doubles as the scenario driver: run with $PORTSLEUTH_SCENARIO
// set, it reproduces one incident in a fresh network namespace and exits.
func TestMain(m *testing.M) {
	if os.Getenv(scenario.Env) != "" {
		os.Exit(scenario.Main(os.Stdout, os.Stderr))
	}
	if os.Getenv(runCLIEnv) != "" {
		os.Exit(Run(os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(withOwnLabCache(m))
}

// withOwnLabCache runs the tests with a remedy-lab cache of their own: the
// host's (a `portsleuth lab` run there) must not change what reports say.
func withOwnLabCache(m *testing.M) int {
	if os.Getenv(lab.CacheEnv) != "" {
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "portsleuth-lab-cache-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	os.Setenv(lab.CacheEnv, dir)
	return m.Run()
}

// testBackend is the backend under test: $PORTSLEUTH_TEST_BACKEND (the VM
// harness forces fentry and kprobe), else auto.
func testBackend() string {
	if b := os.Getenv("PORTSLEUTH_TEST_BACKEND"); b != "" {
		return b
	}
	return "auto"
}

// kernelLayer says whether the report came from kernel-function hooks.
func kernelLayer(r report.Report) bool { return r.Backend == "fentry" || r.Backend == "kprobe" }

// belowSyscalls says whether the backend hooks below the syscall layer (in
// the kernel functions or the cgroup socket hooks): it sees io_uring calls,
// and counts a connect as ok once a port was found.
func belowSyscalls(r report.Report) bool { return kernelLayer(r) || r.Backend == "cgroup" }

// runCLIEnv makes the test binary behave as the portsleuth command.
const runCLIEnv = "PORTSLEUTH_RUN_CLI"

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: loads BPF programs (CAP_BPF, CAP_PERFMON) and creates network namespaces (CAP_SYS_ADMIN)")
	}
}

// traceScenario runs `portsleuth report -o json -- <this binary>` with the
// scenario selected, and returns the report and the scenario's own account.
func traceScenario(t *testing.T, name string, extra ...string) (report.Report, scenario.Result) {
	t.Helper()
	r, res, _ := traceScenarioRaw(t, name, extra...)
	return r, res
}

// traceScenarioRaw is traceScenario that also returns the report's JSON.
func traceScenarioRaw(t *testing.T, name string, extra ...string) (report.Report, scenario.Result, []byte) {
	t.Helper()
	requireRoot(t)
	t.Setenv(scenario.Env, name)
	file := filepath.Join(t.TempDir(), "report.json")
	args := append([]string{"report", "-o", "json", "--file", file, "--backend", testBackend()}, extra...)
	// PORTSLEUTH_RECORD_DIR=dir saves each run's raw data, e.g. to refresh testdata/recordings.
	if dir := os.Getenv("PORTSLEUTH_RECORD_DIR"); dir != "" {
		args = append(args, "--record", filepath.Join(dir, name+".json"), "--force")
	}
	args = append(args, "--", os.Args[0])
	var stdout, stderr bytes.Buffer
	if code := Run(args, &stdout, &stderr); code != 0 {
		t.Fatalf("portsleuth %s: exit %d\nstderr: %s", strings.Join(args, " "), code, stderr.String())
	}
	var res scenario.Result
	if err := json.Unmarshal(bytes.TrimSpace(stdout.Bytes()), &res); err != nil {
		t.Fatalf("scenario %s printed %q (stderr %q): %v", name, stdout.String(), stderr.String(), err)
	}
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var r report.Report
	if err := json.Unmarshal(raw, &r); err != nil {
		t.Fatalf("report is not JSON: %v\n%s", err, raw)
	}
	if r.Command == nil || r.Command.PID != res.PID || r.Command.ExitCode != 0 {
		t.Fatalf("report's command %+v does not match scenario pid %d", r.Command, res.PID)
	}
	if b := testBackend(); b != "auto" && r.Backend != b {
		t.Fatalf("ran on backend %s, want %s", r.Backend, b)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("report of %s:\n%s", name, raw)
		}
	})
	return r, res, raw
}

func findProcess(r report.Report, pid int) *report.Process {
	for i := range r.Processes {
		if int(r.Processes[i].PID) == pid {
			return &r.Processes[i]
		}
	}
	return nil
}

// checkCulprit asserts the exact counts and the single pattern of one culprit.
func checkCulprit(t *testing.T, r report.Report, res scenario.Result, pattern, errno string, failures int) *report.Process {
	t.Helper()
	p := findProcess(r, res.PID)
	if p == nil {
		t.Fatalf("pid %d (%s) is not in the report", res.PID, res.Scenario)
	}
	if got := res.BindsFailed + res.ConnectsFail; got != failures {
		t.Fatalf("the scenario itself saw %d failures, want %d: the kernel behaved unexpectedly (%+v)", got, failures, res)
	}
	if p.Failures != uint64(failures) || p.Errors[errno] != uint64(failures) {
		t.Errorf("failures = %d, errors = %v; want %d %s", p.Failures, p.Errors, failures, errno)
	}
	if len(p.Patterns) != 1 || p.Patterns[0].Pattern != pattern || p.Patterns[0].Count != uint64(failures) {
		t.Errorf("patterns = %+v; want only %s x%d", p.Patterns, pattern, failures)
	}
	if p.Binds.OK != uint64(res.BindsOK) || p.Binds.Failed != uint64(res.BindsFailed) ||
		p.Connects.OK != uint64(res.ConnectsOK) || p.Connects.Failed != uint64(res.ConnectsFail) {
		t.Errorf("binds %+v connects %+v; the scenario saw %+v", p.Binds, p.Connects, res)
	}
	if p.Comm == "" || p.Cmdline == "" || p.Netns == 0 {
		t.Errorf("process identity incomplete: comm %q cmdline %q netns %d", p.Comm, p.Cmdline, p.Netns)
	}
	if p.Sysctls == nil || p.Sysctls.PortRange != scenario.PortRange {
		t.Errorf("sysctls %+v: want the scenario namespace's range %v", p.Sysctls, scenario.PortRange)
	}
	if len(p.Examples) == 0 {
		t.Errorf("no examples")
	}
	for _, e := range p.Examples {
		if e.Pattern != pattern || e.Errno != errno || int(e.PID) != res.PID || e.Netns != p.Netns {
			t.Errorf("example %+v: want pid %d, %s, %s", e, res.PID, pattern, errno)
		}
		wantSource := "syscall"
		switch {
		case kernelLayer(r):
			wantSource = map[string]string{"bind": "inet_bind", "connect": "inet_hash_connect"}[e.Op]
			if e.Family == "ipv6" {
				wantSource = strings.Replace(wantSource, "inet_", "inet6_", 1)
			}
		case r.Backend == "cgroup":
			wantSource = "cgroup_" + e.Op
		}
		if e.Source != wantSource {
			t.Errorf("example source %q, want %q on backend %s", e.Source, wantSource, r.Backend)
		}
		if e.ErrnoInferred != (r.Backend == "cgroup") {
			t.Errorf("example errno_inferred %v on backend %s", e.ErrnoInferred, r.Backend)
		}
	}
	// (lost_events counts the whole host; other processes may storm.)
	if p.EventsMissed != 0 {
		t.Errorf("%d of the scenario's events missed", p.EventsMissed)
	}
	return p
}

func TestErlangBindAnyBeforeConnect(t *testing.T) {
	r, res := traceScenario(t, "bind-any-before-connect")
	p := checkCulprit(t, r, res, "bind-any-before-connect", "EADDRINUSE", scenario.FailAttempts)
	// 64 client sockets, one listener.
	if res.ConnectsOK != scenario.RangeSize {
		t.Errorf("scenario connected %d times, want %d", res.ConnectsOK, scenario.RangeSize)
	}
	if p.Port0Binds.OK != scenario.RangeSize || p.Port0Binds.Connected != scenario.RangeSize {
		t.Errorf("port0 binds %+v, want %d of %d connected", p.Port0Binds, scenario.RangeSize, scenario.RangeSize)
	}
	ev := p.Patterns[0].Evidence
	if !strings.Contains(ev, "64 of 64 sockets this process bound to port 0 went on to connect()") ||
		!strings.Contains(ev, "0.0.0.0:0") || !strings.Contains(ev, "40000-40063") {
		t.Errorf("evidence %q", ev)
	}
	if adv := p.Patterns[0].Advice; !strings.Contains(adv, "IP_BIND_ADDRESS_NO_PORT") || !strings.Contains(adv, "SO_REUSEADDR") {
		t.Errorf("advice %q", adv)
	}
	e := p.Examples[0]
	if e.Op != "bind" || e.Proto != "tcp" || e.Family != "ipv4" || e.Addr != "0.0.0.0:0" || e.Dest != "" {
		t.Errorf("example %+v", e)
	}
	// The pressure at the first failure: every port of 0.0.0.0's bind pool taken.
	ps := p.Patterns[0].Pressure
	if ps == nil || ps.BindPool == nil || ps.BindPool.Local != "0.0.0.0" || ps.BindPool.Free != 0 || ps.BindPool.Used != scenario.RangeSize {
		t.Errorf("pressure snapshot %+v", ps)
	}
}

func TestSquidBindIPBeforeConnect(t *testing.T) {
	r, res := traceScenario(t, "bind-ip-before-connect")
	n := len(scenario.SquidAddrs)
	p := checkCulprit(t, r, res, "bind-ip-before-connect", "EADDRINUSE", n*scenario.SquidFailsPerAddr)
	if res.ConnectsOK != n*scenario.RangeSize {
		t.Errorf("scenario connected %d times, want %d: each address has its own pool", res.ConnectsOK, n*scenario.RangeSize)
	}
	for _, ip := range scenario.SquidAddrs {
		if !strings.Contains(p.Patterns[0].Evidence, ip+":0") {
			t.Errorf("evidence %q does not name %s", p.Patterns[0].Evidence, ip)
		}
	}
}

func TestTimeWaitConnectExhaustion(t *testing.T) {
	r, res := traceScenario(t, "timewait-exhaustion")
	p := checkCulprit(t, r, res, "connect-port-exhaustion", "EADDRNOTAVAIL", scenario.FailAttempts)
	if res.ConnectsOK != scenario.RangeSize {
		t.Errorf("scenario connected %d times, want %d", res.ConnectsOK, scenario.RangeSize)
	}
	e := p.Examples[0]
	if e.Op != "connect" || e.Dest != "127.0.0.1:8080" || e.Addr != "0.0.0.0:0" {
		t.Errorf("example %+v", e)
	}
	if p.Sysctls.TCPTwReuse != 0 || !strings.Contains(p.Patterns[0].Advice, "tcp_tw_reuse is 0 here") {
		t.Errorf("sysctls %+v, advice %q", p.Sysctls, p.Patterns[0].Advice)
	}
	ps := p.Patterns[0].Pressure
	if ps == nil || ps.ConnectPool == nil || ps.ConnectPool.Dest != "127.0.0.1:8080" || ps.ConnectPool.TimeWait != scenario.RangeSize || ps.ConnectPool.Free != 0 {
		t.Errorf("pressure snapshot %+v; want the pool to 127.0.0.1:8080 full of %d TIME_WAIT", ps, scenario.RangeSize)
	} else if ps.ConnectPool.PercentUsed != 100 {
		t.Errorf("pool %.1f%% used, want 100", ps.ConnectPool.PercentUsed)
	}
	if kernelLayer(r) {
		// Every one of the 64 candidate ports holds a TIME_WAIT that may not be reused.
		if e.TWBlocked != scenario.RangeSize || e.EstBlocked != 0 {
			t.Errorf("candidates blocked: %d by TIME_WAIT, %d live; want %d, 0", e.TWBlocked, e.EstBlocked, scenario.RangeSize)
		}
		if !strings.Contains(p.Patterns[0].Evidence, "by TIME_WAIT") {
			t.Errorf("evidence %q does not say TIME_WAIT blocked the ports", p.Patterns[0].Evidence)
		}
	}
}

func TestPortInUse(t *testing.T) {
	r, res := traceScenario(t, "port-in-use")
	p := checkCulprit(t, r, res, "port-in-use", "EADDRINUSE", scenario.PortInUseAttempts)
	e := p.Examples[0]
	if e.Addr != "127.0.0.1:8080" || len(e.Options) != 1 || e.Options[0] != "SO_REUSEADDR" {
		t.Errorf("example %+v: want 127.0.0.1:8080 with SO_REUSEADDR", e)
	}
	// The holder is named on every backend (the kernel layer sees it in
	// inet_bind_conflict; otherwise a scan of the namespace finds it).
	h := e.Holder
	if h == nil {
		t.Fatalf("no holder on backend %s", r.Backend)
	}
	if h.State != "LISTEN" || h.Local.String() != "127.0.0.1:8080" || strings.Join(h.Options, ",") != "SO_REUSEADDR" ||
		int(h.PID) != res.PID || h.SockIno == 0 {
		t.Errorf("holder %+v: want pid %d LISTEN 127.0.0.1:8080 [SO_REUSEADDR]", h, res.PID)
	}
	ev := p.Patterns[0].Evidence
	if !strings.Contains(ev, fmt.Sprintf("held by pid %d", res.PID)) || !strings.Contains(ev, "no option shares a port with a listener") {
		t.Errorf("evidence %q", ev)
	}
}

func TestBindAddressNoPortFixHasNoFailures(t *testing.T) {
	r, res := traceScenario(t, "bind-no-port-fix", "--all")
	p := findProcess(r, res.PID)
	if p == nil {
		t.Fatalf("pid %d missing from the --all report", res.PID)
	}
	if res.ConnectsOK != scenario.NoPortConnections || res.BindsFailed+res.ConnectsFail != 0 {
		t.Fatalf("the fix failed in the kernel: %+v", res)
	}
	if p.Failures != 0 || len(p.Patterns) != 0 {
		t.Errorf("failures %d patterns %+v; want none", p.Failures, p.Patterns)
	}
	if p.Binds.OK != uint64(res.BindsOK) || p.Connects.OK != scenario.NoPortConnections {
		t.Errorf("binds %+v connects %+v; scenario %+v", p.Binds, p.Connects, res)
	}
	// The kernel picked no port at bind time: nothing was reserved for all destinations.
	if p.Port0Binds.OK != 0 {
		t.Errorf("port0 binds %+v; with IP_BIND_ADDRESS_NO_PORT bind() reserves no port", p.Port0Binds)
	}
}

func TestBusyProcessIsNotACulprit(t *testing.T) {
	r, res := traceScenario(t, "culprit-beside-busy", "--all")
	checkCulprit(t, r, res, "bind-any-before-connect", "EADDRINUSE", scenario.FailAttempts)
	busy := findProcess(r, res.Child)
	if busy == nil {
		t.Fatalf("the busy child %d is not even in the --all report: was it traced?", res.Child)
	}
	if busy.Failures != 0 || len(busy.Patterns) != 0 {
		t.Errorf("busy child blamed: %+v", busy)
	}
	// A refused connect fails after the port was found: the kernel layer
	// (inet_hash_connect) and the cgroup hooks count it as ok, the syscall
	// layer as another error.
	refused, refusedOK := uint64(scenario.BusyRefused), uint64(0)
	if belowSyscalls(r) {
		refused, refusedOK = 0, scenario.BusyRefused
	}
	if busy.Connects.OK != scenario.BusyConnects+refusedOK || busy.Connects.OtherErrors != refused {
		t.Errorf("busy child connects %+v, want %d ok, %d other errors", busy.Connects, scenario.BusyConnects+refusedOK, refused)
	}
	// Ranked by failures: the culprit above the busy process (other processes
	// on the host may rank anywhere).
	rank := map[uint32]int{}
	for i, p := range r.Processes {
		rank[p.PID] = i
	}
	if rank[uint32(res.PID)] > rank[uint32(res.Child)] {
		t.Errorf("culprit ranked %d, below the busy child at %d", rank[uint32(res.PID)], rank[uint32(res.Child)])
	}

	// Without --all the busy process does not appear at all.
	r2, res2 := traceScenario(t, "culprit-beside-busy")
	if findProcess(r2, res2.Child) != nil {
		t.Errorf("busy child %d listed as a culprit", res2.Child)
	}
}

func TestConnectTupleConflict(t *testing.T) {
	r, res := traceScenario(t, "tuple-conflict")
	p := checkCulprit(t, r, res, "connect-tuple-conflict", "EADDRNOTAVAIL", 1)
	e := p.Examples[0]
	if e.Addr != "127.0.0.1:40100" || e.Dest != "127.0.0.1:8080" || len(e.Options) != 1 || e.Options[0] != "SO_REUSEADDR" {
		t.Errorf("example %+v: want 127.0.0.1:40100 -> 127.0.0.1:8080 [SO_REUSEADDR]", e)
	}
}

func TestIPv6UDPAndNonLocal(t *testing.T) {
	r, res := traceScenario(t, "ipv6-and-udp")
	p := findProcess(r, res.PID)
	if p == nil {
		t.Fatalf("pid %d missing", res.PID)
	}
	if p.Failures != 3 || p.Errors["EADDRINUSE"] != 2 || p.Errors["EADDRNOTAVAIL"] != 1 {
		t.Errorf("failures %d errors %v; want 2 EADDRINUSE + 1 EADDRNOTAVAIL", p.Failures, p.Errors)
	}
	got := map[string]uint64{}
	for _, pat := range p.Patterns {
		got[pat.Pattern] = pat.Count
	}
	if got["port-in-use"] != 2 || got["address-not-local"] != 1 || len(got) != 2 {
		t.Errorf("patterns %v", got)
	}
	type key struct{ family, proto, addr string }
	seen := map[key][]string{}
	for _, e := range p.Examples {
		seen[key{e.Family, e.Proto, e.Addr}] = e.Options
	}
	for k, opts := range map[key][]string{
		{"ipv6", "tcp", "[::1]:8080"}:     {"IPV6_V6ONLY"},
		{"ipv4", "udp", "127.0.0.1:5353"}: {},
		{"ipv4", "tcp", "192.0.2.1:0"}:    {},
	} {
		got, ok := seen[k]
		if !ok || strings.Join(got, ",") != strings.Join(opts, ",") {
			t.Errorf("no example %v with options %v; examples: %v", k, opts, seen)
		}
	}
}

// signalWriter closes ready on the first write: the tracer is attached.
type signalWriter struct {
	bytes.Buffer
	ready chan struct{}
	once  sync.Once
}

func (w *signalWriter) Write(p []byte) (int, error) {
	w.once.Do(func() { close(w.ready) })
	return w.Buffer.Write(p)
}

// watch -o json under a storm: few lines, and the folded counts add up to
// every failure.
func TestWatchFoldsAStormWithoutLosingCount(t *testing.T) {
	requireRoot(t)
	child, release, childOut := startWaitingScenario(t, "bind-storm")
	defer child.Process.Kill()

	var out bytes.Buffer
	stderr := &signalWriter{ready: make(chan struct{})}
	done := make(chan int)
	go func() {
		done <- Run([]string{"watch", "-o", "json", "--backend", testBackend(), "--pid", strconv.Itoa(child.Process.Pid), "--duration", "2s"}, &out, stderr)
	}()
	select {
	case <-stderr.ready:
	case code := <-done:
		t.Fatalf("watch exited %d before attaching: %s", code, stderr.String())
	}
	release.Write([]byte("go\n"))
	if err := child.Wait(); err != nil {
		t.Fatalf("storm scenario: %v\n%s", err, childOut.String())
	}
	if code := <-done; code != 0 {
		t.Fatalf("watch exit %d: %s", code, stderr.String())
	}

	var lines, total uint64
	var first, last time.Time
	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		if strings.Contains(line, `"type":"enrichment"`) {
			continue // what enrichment found, not a failure
		}
		var r report.Record
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("not a JSON record: %q", line)
		}
		if at, err := time.Parse(time.RFC3339Nano, r.Time); err == nil {
			if first.IsZero() || at.Before(first) {
				first = at
			}
			if at.After(last) {
				last = at
			}
		}
		if r.PID != uint32(child.Process.Pid) || r.Pattern != "port-in-use" || r.Errno != "EADDRINUSE" || r.Addr != "127.0.0.1:8080" {
			t.Errorf("record %+v", r)
		}
		lines++
		total += max(r.Folded, 1)
	}
	if total != scenario.StormBinds {
		t.Errorf("records stand for %d failures, want %d", total, scenario.StormBinds)
	}
	// At most foldBurst lines + 1 folded line per second the storm lasted
	// (it lasts well under 2 s here, longer in an emulated VM).
	windows := uint64(last.Sub(first)/time.Second) + 2
	if lines > windows*(foldBurst+1) {
		t.Errorf("%d lines for one storm of %d windows: the view did not fold", lines, windows)
	}
	t.Logf("%d failures shown as %d lines", total, lines)
}

// Without privileges: one line naming them, exit 1.
func TestWatchWithoutPrivileges(t *testing.T) {
	requireRoot(t) // to become nobody
	dir, err := os.MkdirTemp("", "portsleuth-nobody")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	exe := filepath.Join(dir, "portsleuth.test")
	b, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(exe, b, 0o755); err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o755)
	cmd := exec.Command(exe, "watch")
	cmd.Env = append(os.Environ(), runCLIEnv+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err = cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("want exit 1, got %v; stderr %q", err, stderr.String())
	}
	msg := strings.TrimSpace(stderr.String())
	if strings.Count(msg, "\n") != 0 || !strings.Contains(msg, "CAP_BPF") || !strings.Contains(msg, "CAP_PERFMON") {
		t.Errorf("want one line naming CAP_BPF and CAP_PERFMON, got %q", msg)
	}
}

// doctor tells the truth: the backend it says auto would use is the one auto
// uses, and the backend under test is reported as working.
func TestDoctorAgreesWithAuto(t *testing.T) {
	requireRoot(t)
	var out, errb bytes.Buffer
	if code := Run([]string{"doctor"}, &out, &errb); code != 0 {
		t.Fatalf("doctor exit %d: %s %s", code, out.String(), errb.String())
	}
	defer func() {
		if t.Failed() {
			t.Logf("doctor:\n%s", out.String())
		}
	}()
	var auto string
	for _, l := range strings.Split(out.String(), "\n") {
		if rest, ok := strings.CutPrefix(l, "auto would use:"); ok {
			auto, _, _ = strings.Cut(strings.TrimSpace(rest), ":")
		}
	}
	tr, err := probe.Start(probe.Options{Backend: probe.Auto})
	if err != nil {
		t.Fatal(err)
	}
	used := tr.Backend()
	tr.Close()
	if auto == "" || string(used) != auto {
		t.Errorf("doctor says auto would use %q, auto used %q", auto, used)
	}
	if b := testBackend(); b != "auto" && !strings.Contains(out.String(), "backend "+b+":") {
		t.Errorf("doctor does not report backend %s", b)
	}
	if b := testBackend(); b != "auto" {
		for _, l := range strings.Split(out.String(), "\n") {
			if strings.HasPrefix(l, "backend "+b+":") && !strings.Contains(l, "works") {
				t.Errorf("doctor: %q, but the tests run on %s", l, b)
			}
		}
	}
}

// kernelAtLeast compares the running kernel's major.minor.
func kernelAtLeast(t *testing.T, major, minor int) bool {
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		t.Fatal(err)
	}
	var ma, mi int
	fmt.Sscanf(unix.ByteSliceToString(uts.Release[:]), "%d.%d", &ma, &mi)
	return ma > major || (ma == major && mi >= minor)
}

// io_uring connect (and bind, 6.11+) never pass the syscall tracepoints: only
// the backends below them (kernel functions, cgroup hooks) attribute these.
func TestIOUringFailuresNeedTheKernelLayer(t *testing.T) {
	r, res := traceScenario(t, "io-uring")
	p := findProcess(r, res.PID)
	if !belowSyscalls(r) {
		if p != nil {
			t.Errorf("backend %s saw io_uring failures it cannot see: %+v", r.Backend, p)
		}
		t.Logf("backend %s is blind to io_uring, as documented (%d io_uring connects failed unseen)", r.Backend, res.Extra["uring_connect_failed"])
		return
	}
	if res.Extra["uring_bind_unsupported"] == 1 && kernelAtLeast(t, 6, 11) {
		t.Fatalf("IORING_OP_BIND unsupported on a 6.11+ kernel")
	}
	binds := uint64(res.Extra["uring_bind_failed"])
	if p == nil {
		t.Fatalf("pid %d not reported", res.PID)
	}
	if p.Failures != scenario.FailAttempts+binds || p.Errors["EADDRNOTAVAIL"] != scenario.FailAttempts || p.Errors["EADDRINUSE"] != binds {
		t.Errorf("failures %d errors %v; want %d EADDRNOTAVAIL + %d EADDRINUSE", p.Failures, p.Errors, scenario.FailAttempts, binds)
	}
	got := map[string]uint64{}
	for _, pat := range p.Patterns {
		got[pat.Pattern] = pat.Count
	}
	if got["connect-port-exhaustion"] != scenario.FailAttempts || got["port-in-use"] != binds {
		t.Errorf("patterns %v", got)
	}
	t.Logf("io_uring: %d connects and %d binds failed, all attributed", scenario.FailAttempts, binds)
}

// listen() fails EADDRINUSE in two ways: an unbound socket finds no free port
// (exhaustion), and a second listener on a port two SO_REUSEADDR binds shared.
func TestListenFailures(t *testing.T) {
	r, res := traceScenario(t, "listen")
	if res.Extra["listen_unbound_ok"] != scenario.RangeSize || res.Extra["listen_unbound_failed"] != scenario.ListenFails {
		t.Fatalf("the kernel behaved unexpectedly: %+v", res.Extra)
	}
	p := findProcess(r, res.PID)
	if r.Backend == "cgroup" {
		// No cgroup hook runs in listen(): blind, and saying so.
		if p != nil && (p.Listens.Failed != 0 || p.Failures != 0) {
			t.Errorf("backend cgroup reports listen failures it cannot see: %+v", p)
		}
		if !slices.ContainsFunc(r.Inferred, func(s string) bool { return strings.Contains(s, "listen() failures") }) {
			t.Errorf("the report does not say listen() failures are not seen: %q", r.Inferred)
		}
		return
	}
	if p == nil {
		t.Fatalf("pid %d missing", res.PID)
	}
	want := uint64(scenario.ListenFails + 1)
	if p.Failures != want || p.Listens.Failed != want || p.Listens.OK != scenario.RangeSize+1 {
		t.Errorf("failures %d, listens %+v; want %d failed, %d ok", p.Failures, p.Listens, want, scenario.RangeSize+1)
	}
	got := map[string]uint64{}
	for _, pat := range p.Patterns {
		got[pat.Pattern] = pat.Count
	}
	if got["bind-port-exhaustion"] != scenario.ListenFails || got["port-in-use"] != 1 || len(got) != 2 {
		t.Errorf("patterns %v", got)
	}
	for _, e := range p.Examples {
		if e.Op != "listen" {
			t.Errorf("example %+v: want op listen", e)
		}
	}
	for _, pat := range p.Patterns {
		if pat.Pattern != "port-in-use" {
			continue
		}
		if !strings.Contains(pat.Evidence, "listen() call of 127.0.0.1:8080") || !strings.Contains(pat.Advice, "SO_REUSEPORT") {
			t.Errorf("port-in-use: %+v", pat)
		}
		// The kernel layer names the first listener as the holder.
		// (The scenario is a child of this test binary, so it is named as its worker.)
		if kernelLayer(r) && (!strings.Contains(pat.Evidence, fmt.Sprintf("held by pid %d (%s", res.PID, p.Comm)) ||
			!strings.Contains(pat.Evidence, "LISTEN 127.0.0.1:8080")) {
			t.Errorf("evidence %q does not name the first listener", pat.Evidence)
		}
	}
}

// startWaitingScenario starts scenario name in a child that waits for a line
// on release before it begins (extra adds to its environment); its output
// goes to the returned buffer.
func startWaitingScenario(t *testing.T, name string, extra ...string) (*exec.Cmd, io.WriteCloser, *bytes.Buffer) {
	t.Helper()
	child := exec.Command(os.Args[0])
	child.Env = append(append(os.Environ(), scenario.Env+"="+name, scenario.WaitEnv+"=1"), extra...)
	release, err := child.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	var childOut bytes.Buffer
	child.Stdout, child.Stderr = &childOut, &childOut
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	return child, release, &childOut
}
