package cli

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/portsleuth/portsleuth/gen"
	"github.com/portsleuth/portsleuth/internal/probe"
	"github.com/portsleuth/portsleuth/internal/scenario"
)

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// serveBackend is the backend serve runs on in tests: the one under test, or
// on a host without kernel backends the tracepoints, asked for explicitly.
func serveBackend() string {
	if b := testBackend(); b != "auto" {
		return b
	}
	return "tracepoint"
}

// ourPrograms lists the kernel names (truncated to 15 bytes) of every program
// in the object.
func ourPrograms(t *testing.T) map[string]bool {
	spec, err := gen.LoadPortsleuth()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for name := range spec.Programs {
		if len(name) > 15 {
			name = name[:15]
		}
		names[name] = true
	}
	return names
}

// loadedPrograms lists, by id, the loaded programs that carry one of our
// names and that no other process holds: another tracer on the host (a serve
// daemon, another test run) keeps its programs open, while a program this
// process leaked is either still held here or held by nobody. A program held
// by nobody may also be another tracer's on its way out (the kernel releases
// some links after an RCU grace period): those get a bounded wait to go.
func loadedPrograms(t *testing.T, ours map[string]bool) map[ebpf.ProgramID]string {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		found, orphans := ourLoadedPrograms(t, ours)
		if orphans == 0 || time.Now().After(deadline) {
			return found
		}
	}
}

// ourLoadedPrograms is one look for loadedPrograms; orphans counts the
// programs found that no process holds.
func ourLoadedPrograms(t *testing.T, ours map[string]bool) (found map[ebpf.ProgramID]string, orphans int) {
	t.Helper()
	others, self := programsHeldByOthers(t), heldPrograms("self")
	found = map[ebpf.ProgramID]string{}
	for id := ebpf.ProgramID(0); ; {
		next, err := ebpf.ProgramGetNextID(id)
		if err != nil {
			break
		}
		id = next
		if others[id] {
			continue
		}
		p, err := ebpf.NewProgramFromID(id)
		if err != nil {
			continue
		}
		if info, err := p.Info(); err == nil && ours[info.Name] {
			found[id] = info.Name
			if !self[id] {
				orphans++
			}
		}
		p.Close()
	}
	return found, orphans
}

// heldPrograms lists the ids of the programs process pid ("self" for this
// one) holds open: through a program fd, or through a link fd, whose fdinfo
// names its program too.
func heldPrograms(pid string) map[ebpf.ProgramID]bool {
	held := map[ebpf.ProgramID]bool{}
	dir := "/proc/" + pid + "/fd"
	fds, err := os.ReadDir(dir)
	if err != nil {
		return held // the process is gone
	}
	for _, fd := range fds {
		target, err := os.Readlink(dir + "/" + fd.Name())
		if err != nil || (target != "anon_inode:bpf-prog" && target != "anon_inode:bpf_link") {
			continue
		}
		info, err := os.ReadFile("/proc/" + pid + "/fdinfo/" + fd.Name())
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(info), "\n") {
			if v, ok := strings.CutPrefix(line, "prog_id:"); ok {
				if id, err := strconv.ParseUint(strings.TrimSpace(v), 10, 32); err == nil {
					held[ebpf.ProgramID(id)] = true
				}
			}
		}
	}
	return held
}

// programsHeldByOthers lists the programs every other process holds open.
func programsHeldByOthers(t *testing.T) map[ebpf.ProgramID]bool {
	t.Helper()
	procs, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	self := strconv.Itoa(os.Getpid())
	held := map[ebpf.ProgramID]bool{}
	for _, p := range procs {
		if _, err := strconv.Atoi(p.Name()); err != nil || p.Name() == self {
			continue
		}
		for id := range heldPrograms(p.Name()) {
			held[id] = true
		}
	}
	return held
}

// newHeldPrograms adds to into the programs this process holds now and did
// not hold before.
func newHeldPrograms(before, into map[ebpf.ProgramID]bool) {
	for id := range heldPrograms("self") {
		if !before[id] {
			into[id] = true
		}
	}
}

// stillLoaded waits (bounded) for the programs ids to be unloaded and
// returns those that are still loaded. Links whose release the kernel defers
// past an RCU grace period drop their program a moment after they close.
func stillLoaded(ids map[ebpf.ProgramID]bool) []ebpf.ProgramID {
	var left []ebpf.ProgramID
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		left = left[:0]
		for id := range ids {
			if p, err := ebpf.NewProgramFromID(id); err == nil {
				p.Close()
				left = append(left, id)
			}
		}
		if len(left) == 0 || time.Now().After(deadline) {
			return left
		}
	}
}

// scenarioAs runs this test binary as scenario name under a command name of
// its own (the basename it is executed by): metrics labelled by comm then
// count this run's scenario alone, not another test run's cli.test.
func scenarioAs(t *testing.T, comm, name string) *exec.Cmd {
	t.Helper()
	exe := filepath.Join(t.TempDir(), comm)
	if err := os.Symlink(os.Args[0], exe); err != nil {
		t.Fatal(err)
	}
	child := exec.Command(exe)
	child.Env = append(os.Environ(), scenario.Env+"="+name)
	return child
}

func scrape(t *testing.T, addr string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return fams
}

func counter(fams map[string]*dto.MetricFamily, name string, labels map[string]string) float64 {
	f := fams[name]
	if f == nil {
		return -1
	}
next:
	for _, m := range f.Metric {
		for _, l := range m.Label {
			if v, ok := labels[l.GetName()]; ok && v != l.GetValue() {
				continue next
			}
		}
		return m.GetCounter().GetValue()
	}
	return 0
}

// serve during the Erlang scenario: /metrics has the exact failure count,
// the culprit log names the process, and nothing stays loaded afterwards.
// The host may run other tracers and other test runs meanwhile: the
// scenario runs under a comm of its own, and only the programs this process
// held while serve ran must be gone afterwards.
func TestServeMetricsAndCleanShutdown(t *testing.T) {
	requireRoot(t)
	heldBefore := heldPrograms("self")
	addr := freePort(t)
	stdout := &signalWriter{ready: make(chan struct{})}
	var stderr bytes.Buffer
	done := make(chan int)
	go func() {
		done <- Run([]string{"serve", "--backend", serveBackend(), "--listen", addr, "--log-format", "json",
			"--report-interval", "1s", "--duration", "4s"}, stdout, &stderr)
	}()
	select {
	case <-stdout.ready:
	case code := <-done:
		t.Fatalf("serve exited %d: %s", code, stderr.String())
	}
	// serve logs "serving" once its programs are attached.
	serveProgs := map[ebpf.ProgramID]bool{}
	newHeldPrograms(heldBefore, serveProgs)
	if len(serveProgs) == 0 {
		t.Fatalf("serve is running but this process holds no new BPF program")
	}

	comm := "srv" + strconv.Itoa(os.Getpid())
	child := scenarioAs(t, comm, "bind-any-before-connect")
	out, err := child.Output()
	if err != nil {
		t.Fatalf("scenario: %v", err)
	}
	var res scenario.Result
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatal(err)
	}

	fams := scrape(t, addr)
	newHeldPrograms(heldBefore, serveProgs) // any loaded since (the socket iterators)
	// The liveness endpoint: the reader is passing.
	if resp, err := http.Get("http://" + addr + "/healthz"); err != nil {
		t.Errorf("GET /healthz: %v", err)
	} else {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || string(body) != "ok\n" {
			t.Errorf("GET /healthz: %d %q, want 200 ok", resp.StatusCode, body)
		}
	}
	got := counter(fams, "portsleuth_failures_total", map[string]string{
		"op": "bind", "errno": "EADDRINUSE", "pattern": "bind-any-before-connect", "comm": comm})
	if got != scenario.FailAttempts {
		t.Errorf("portsleuth_failures_total{comm=%q} = %v, want %d", comm, got, scenario.FailAttempts)
	}
	if n := counter(fams, "portsleuth_calls_total", map[string]string{"op": "connect", "result": "ok"}); n < scenario.RangeSize {
		t.Errorf("connect ok = %v, want at least %d", n, scenario.RangeSize)
	}
	if counter(fams, "portsleuth_lost_events_total", nil) < 0 {
		t.Errorf("portsleuth_lost_events_total missing")
	}
	if fams["process_resident_memory_bytes"] == nil || fams["portsleuth_bpf_program_runs_total"] == nil {
		t.Errorf("agent cost metrics missing")
	}
	// Which backend runs, and whether its errnos are inferred (cgroup) or seen.
	info := fams["portsleuth_backend_info"]
	if info == nil || len(info.Metric) != 1 {
		t.Fatalf("portsleuth_backend_info: %v", info)
	}
	labels := map[string]string{}
	for _, l := range info.Metric[0].Label {
		labels[l.GetName()] = l.GetValue()
	}
	wantErrno := map[bool]string{true: "inferred", false: "observed"}[labels["backend"] == "cgroup"]
	if labels["backend"] != serveBackend() || labels["errno"] != wantErrno {
		t.Errorf("portsleuth_backend_info labels %v, want backend %s, errno %s", labels, serveBackend(), wantErrno)
	}

	if code := <-done; code != 0 {
		t.Fatalf("serve exit %d: %s", code, stderr.String())
	}
	// One or more culprit lines (the interval may split the scenario) adding up to 10.
	var logged uint64
	sc := bufio.NewScanner(strings.NewReader(stdout.String()))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var line struct {
			Msg      string `json:"msg"`
			PID      int    `json:"pid"`
			Failures uint64 `json:"failures"`
			Patterns string `json:"patterns"`
		}
		if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "culprit" && line.PID == res.PID {
			logged += line.Failures
			if line.Patterns != "bind-any-before-connect="+itoa(line.Failures) {
				t.Errorf("culprit line patterns %q", line.Patterns)
			}
		}
	}
	if logged != scenario.FailAttempts {
		t.Errorf("culprit log lines account for %d failures, want %d:\n%s", logged, scenario.FailAttempts, stdout.String())
	}
	// Detached cleanly: none of the programs serve held is loaded any more.
	if left := stillLoaded(serveProgs); len(left) > 0 {
		t.Errorf("programs %v (of %d serve held) still loaded 10s after serve exited", left, len(serveProgs))
	}
	t.Logf("serve held %d programs; all unloaded after it exited", len(serveProgs))
}

func itoa(n uint64) string { b, _ := json.Marshal(n); return string(b) }

func TestServeBadInput(t *testing.T) {
	for _, args := range [][]string{
		{"serve", "--listen", "nonsense"},
		{"serve", "--log-format", "yaml"},
		{"serve", "--report-interval", "0s"},
	} {
		var out, errb bytes.Buffer
		if code := Run(args, &out, &errb); code != 2 {
			t.Errorf("%q: exit %d, want 2 (%s)", args, code, errb.String())
		}
	}
	requireRoot(t)
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	var out, errb bytes.Buffer
	code := Run([]string{"serve", "--backend", serveBackend(), "--listen", busy.Addr().String(), "--duration", "1s"}, &out, &errb)
	if code != 2 || !strings.Contains(errb.String(), "listening on "+busy.Addr().String()) {
		t.Errorf("listen address in use: exit %d, stderr %q", code, errb.String())
	}
}

// serve picks a backend that costs only the calls it hooks (fentry, kprobe,
// then the cgroup hooks), or refuses to tax every syscall.
func TestServeDefaultBackendIsLowOverhead(t *testing.T) {
	requireRoot(t)
	var out, errb bytes.Buffer
	code := Run([]string{"serve", "--listen", freePort(t), "--duration", "500ms"}, &out, &errb)
	switch code {
	case 0:
		if !strings.Contains(out.String(), "backend=fentry") && !strings.Contains(out.String(), "backend=kprobe") &&
			!strings.Contains(out.String(), "backend=cgroup") {
			t.Errorf("serve ran on something else than fentry/kprobe/cgroup: %s", out.String())
		}
		// It takes the first of them that works: doctor's probe says which.
		for _, b := range probe.LowOverhead {
			if probe.Try(b) == nil {
				if !strings.Contains(out.String(), "backend="+string(b)) {
					t.Errorf("serve did not pick %s, the first low-overhead backend that works here: %s", b, out.String())
				}
				break
			}
		}
	case 1:
		if !strings.Contains(errb.String(), "pass --backend tracepoint") {
			t.Errorf("refusal does not say how to proceed: %q", errb.String())
		}
	default:
		t.Errorf("exit %d: %s", code, errb.String())
	}
}
