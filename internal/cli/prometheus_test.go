package cli

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/portsleuth/portsleuth/deploy"
	"github.com/portsleuth/portsleuth/internal/scenario"
)

// The identity of the pod the Prometheus test's culprit runs in.
const (
	promTestContainer = "f0e1d2c3b4a5968778695a4b3c2d1e0ff0e1d2c3b4a5968778695a4b3c2d1e0f"
	promTestPodUID    = "5c4b3a29-1807-4f6e-8d7c-6b5a49382716"
)

// promPendingFor replaces PortPoolNearlyFull's `for: 5m` in the test's copy
// of the rules, the one change made to them: long enough for the alert to be
// seen pending, short enough for a test.
const promPendingFor = "5s"

// A real Prometheus (Debian's) scrapes serve on loopback every second and
// evaluates deploy/prometheus/alerts.yml while a culprit in a pod's cgroup
// fills a 64-port pool and keeps it full: the pool's used/size crosses 0.9,
// PortPoolNearlyFull goes pending then firing, its description naming the
// pool's owner (queried at evaluation, not a label), the
// failure counter rises to the scenario's count and BindBeforeConnectFailures
// fires naming the container and pod; every query of the Grafana dashboard
// runs on this Prometheus.
func TestPrometheusScrapesServeAndFiresAlerts(t *testing.T) {
	requireRoot(t)
	promBin := prometheusBinary(t)
	cg := newTestCgroups(t)
	pod := cg.mkdir(t, "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod"+
		strings.ReplaceAll(promTestPodUID, "-", "_")+".slice/cri-containerd-"+promTestContainer+".scope")

	serveAddr := freePort(t)
	stopServe := startServeProcess(t, serveAddr, "--pool-interval", "1s")
	child := startPoolChild(t, "pm"+strconv.Itoa(os.Getpid()%1000000), "bind-any-before-connect")
	cg.move(t, pod, child.cmd.Process.Pid)
	netns := strconv.FormatUint(child.netns, 10)

	prom := startPrometheus(t, promBin, serveAddr)
	if !poll(60*time.Second, func() bool {
		v, err := prom.query(`up{job="portsleuth"} == 1`)
		return err == nil && len(v) == 1
	}) {
		t.Fatalf("Prometheus never scraped serve at %s\nprometheus:\n%s\nserve:\n%s", serveAddr, prom.logTail(), stopServe())
	}
	failures := fmt.Sprintf(`portsleuth_failures_total{comm=%q,pattern="bind-any-before-connect"}`, child.comm)
	if v, err := prom.query(failures); err != nil || len(v) != 0 {
		t.Fatalf("before the culprit ran: %s = %v (%v), want no series", failures, v, err)
	}
	child.goAhead(t)

	// The pool fills.
	ratio := fmt.Sprintf(`portsleuth_port_pool_used{netns=%q} / portsleuth_port_pool_size{netns=%q}`, netns, netns)
	var full []promSample
	if !poll(60*time.Second, func() bool {
		v, err := prom.query(ratio + " > 0.9")
		full = v
		return err == nil && len(v) > 0
	}) {
		all, _ := prom.query(ratio)
		t.Fatalf("no pool of namespace %s crossed 0.9 in Prometheus: %s = %v\nserve:\n%s", netns, ratio, all, stopServe())
	}
	t.Logf("query %s > 0.9:\n%s", ratio, formatSamples(full))

	// The alert fires on the pool's labels; its description names the owner.
	var firing promAlert
	if !poll(90*time.Second, func() bool {
		alerts, err := prom.alerts()
		for _, a := range alerts {
			if err == nil && a.Labels["alertname"] == "PortPoolNearlyFull" && a.Labels["netns"] == netns &&
				a.Labels["kind"] == "bind" && a.Labels["local"] == "0.0.0.0" && a.State == "firing" {
				firing = a
				return true
			}
		}
		return false
	}) {
		alerts, _ := prom.alerts()
		t.Fatalf("PortPoolNearlyFull never fired for the bind pool 0.0.0.0 of namespace %s; alerts: %+v\nprometheus:\n%s", netns, alerts, prom.logTail())
	}
	t.Logf("firing alert:\n%s", firing)
	// An owner in the labels would restart `for` whenever the top owner changed.
	for _, l := range []string{"owner_comm", "owner_container", "owner_pod_uid", "owner_unit"} {
		if v, ok := firing.Labels[l]; ok {
			t.Errorf("PortPoolNearlyFull has label %s=%q: the owner belongs in the annotations", l, v)
		}
	}
	owner := fmt.Sprintf("Its top owner is %s in container %s of pod uid %s, holding ", child.comm, promTestContainer, promTestPodUID)
	if !strings.Contains(firing.Annotations["description"], owner) {
		t.Errorf("PortPoolNearlyFull description does not name the owner (want %q):\n%s", owner, firing.Annotations["description"])
	}
	if firing.Labels["severity"] != "warning" || !strings.Contains(firing.Annotations["summary"], "is 100% used") {
		t.Errorf("PortPoolNearlyFull: severity %q, summary %q", firing.Labels["severity"], firing.Annotations["summary"])
	}
	// Pending came first: Prometheus records every state in ALERTS.
	alertSeries := fmt.Sprintf(`ALERTS{alertname="PortPoolNearlyFull",netns=%q,kind="bind",local="0.0.0.0",alertstate=%%q}[5m]`, netns)
	pending, err := prom.queryRange(fmt.Sprintf(alertSeries, "pending"))
	if err != nil || len(pending) == 0 {
		t.Fatalf("no pending state recorded for PortPoolNearlyFull (%v)", err)
	}
	fired, err := prom.queryRange(fmt.Sprintf(alertSeries, "firing"))
	if err != nil || len(fired) == 0 {
		t.Fatalf("no firing state recorded for PortPoolNearlyFull (%v)", err)
	}
	t.Logf("PortPoolNearlyFull pending from %s, firing from %s", pending[0].first(), fired[0].first())
	if !pending[0].first().Before(fired[0].first()) {
		t.Errorf("PortPoolNearlyFull fired at %s, not after being pending (from %s)", fired[0].first(), pending[0].first())
	}

	// The failures are counted, and named by container and pod.
	var counted []promSample
	if !poll(60*time.Second, func() bool {
		v, err := prom.query(failures)
		counted = v
		return err == nil && len(v) == 1 && v[0].Value == scenario.FailAttempts
	}) {
		t.Fatalf("%s = %v, want %d", failures, counted, scenario.FailAttempts)
	}
	t.Logf("query %s:\n%s", failures, formatSamples(counted))
	if l := counted[0].Metric; l["container_id"] != promTestContainer || l["pod_uid"] != promTestPodUID {
		t.Errorf("failures labelled container_id %q, pod_uid %q, want %q, %q", l["container_id"], l["pod_uid"], promTestContainer, promTestPodUID)
	}
	var bbc promAlert
	if !poll(60*time.Second, func() bool {
		alerts, err := prom.alerts()
		for _, a := range alerts {
			if err == nil && a.Labels["alertname"] == "BindBeforeConnectFailures" && a.Labels["comm"] == child.comm && a.State == "firing" {
				bbc = a
				return true
			}
		}
		return false
	}) {
		alerts, _ := prom.alerts()
		t.Fatalf("BindBeforeConnectFailures never fired for %s; alerts: %+v", child.comm, alerts)
	}
	t.Logf("firing alert:\n%s", bbc)
	if bbc.Labels["container_id"] != promTestContainer || bbc.Labels["pod_uid"] != promTestPodUID {
		t.Errorf("BindBeforeConnectFailures labelled container_id %q, pod_uid %q", bbc.Labels["container_id"], bbc.Labels["pod_uid"])
	}
	if !strings.Contains(bbc.Annotations["description"], "in container "+promTestContainer) {
		t.Errorf("BindBeforeConnectFailures description does not name the container: %q", bbc.Annotations["description"])
	}

	checkDashboardQueries(t, prom, netns)
}

// checkDashboardQueries runs every query of the Grafana dashboard on prom,
// with the dashboard's variables filled in: each must be valid PromQL, and
// the pool and failure panels must show this test's data.
func checkDashboardQueries(t *testing.T, prom *promServer, netns string) {
	t.Helper()
	b, err := deploy.Files.ReadFile(deploy.Dashboard)
	if err != nil {
		t.Fatal(err)
	}
	var d any
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	vars := strings.NewReplacer(`$node`, `.*`, `$__rate_interval`, `1m`, `$__range`, `5m`)
	for _, expr := range exprsOf(d) {
		q := vars.Replace(expr)
		v, err := prom.query(q)
		if err != nil {
			t.Errorf("dashboard query %s: %v", q, err)
			continue
		}
		t.Logf("dashboard query: %d series: %s", len(v), q)
		if strings.Contains(q, "portsleuth_port_pool_used") || strings.Contains(q, "portsleuth_failures_total") {
			if len(v) == 0 {
				t.Errorf("dashboard query %s shows nothing while namespace %s has a full pool and failures", q, netns)
			}
		}
	}
}

// exprsOf collects the "expr" strings of a dashboard at any depth.
func exprsOf(v any) []string {
	var out []string
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			if s, ok := e.(string); ok && k == "expr" {
				out = append(out, s)
			}
			out = append(out, exprsOf(e)...)
		}
	case []any:
		for _, e := range v {
			out = append(out, exprsOf(e)...)
		}
	}
	return out
}

// prometheusBinary finds the prometheus server (Debian's prometheus
// package, installed by make deps). Missing, it skips, except in CI.
func prometheusBinary(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath("prometheus")
	if err == nil {
		return path
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("prometheus not found and CI is set: install Debian's prometheus package (make deps): %v", err)
	}
	t.Skip("needs the prometheus server (Debian's prometheus package: make deps)")
	return ""
}

// promServer is a Prometheus started for one test, on its own port and
// storage.
type promServer struct {
	addr    string
	logPath string
}

// startPrometheus runs prometheus scraping serveAddr every second with a
// copy of deploy/prometheus/alerts.yml, evaluated every second, and stops it
// at cleanup.
func startPrometheus(t *testing.T, bin, serveAddr string) *promServer {
	t.Helper()
	dir := t.TempDir()
	rules := promTestRules(t)
	if err := os.WriteFile(filepath.Join(dir, "alerts.yml"), []byte(rules), 0o644); err != nil {
		t.Fatal(err)
	}
	config := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files: [alerts.yml]
scrape_configs:
  - job_name: portsleuth
    static_configs:
      - targets: [%q]
        labels: {node: test-node}
`, serveAddr)
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	p := &promServer{addr: freePort(t), logPath: filepath.Join(dir, "prometheus.log")}
	logf, err := os.Create(p.logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(bin, "--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "data"), "--web.listen-address="+p.addr)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = logf, logf
	// Dies with the test binary, whatever kills it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-exited
			t.Errorf("prometheus ignored SIGTERM for 30 s:\n%s", p.logTail())
		}
	})
	if !poll(60*time.Second, func() bool {
		resp, err := http.Get("http://" + p.addr + "/-/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}) {
		t.Fatalf("prometheus never became ready on %s:\n%s", p.addr, p.logTail())
	}
	return p
}

// promTestRules is deploy/prometheus/alerts.yml with PortPoolNearlyFull's
// `for: 5m` replaced by promPendingFor, and nothing else changed.
func promTestRules(t *testing.T) string {
	t.Helper()
	b, err := deploy.Files.ReadFile(deploy.Alerts)
	if err != nil {
		t.Fatal(err)
	}
	rules := string(b)
	start := strings.Index(rules, "- alert: PortPoolNearlyFull\n")
	if start < 0 {
		t.Fatal("no PortPoolNearlyFull rule in alerts.yml")
	}
	end := len(rules)
	if next := strings.Index(rules[start+1:], "- alert: "); next >= 0 {
		end = start + 1 + next
	}
	rule := rules[start:end]
	if strings.Count(rule, "for: 5m\n") != 1 {
		t.Fatalf("PortPoolNearlyFull has no single `for: 5m` to shorten:\n%s", rule)
	}
	return rules[:start] + strings.Replace(rule, "for: 5m\n", "for: "+promPendingFor+"\n", 1) + rules[end:]
}

func (p *promServer) logTail() string {
	b, _ := os.ReadFile(p.logPath)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// promSample is one series of a query result: an instant value, or the
// values of a range.
type promSample struct {
	Metric map[string]string `json:"metric"`
	Value  float64           `json:"-"`
	Times  []time.Time       `json:"-"`
}

func (s promSample) first() time.Time {
	if len(s.Times) == 0 {
		return time.Time{}
	}
	return s.Times[0]
}

func formatSamples(v []promSample) string {
	var b strings.Builder
	for _, s := range v {
		fmt.Fprintf(&b, "  %v => %v\n", s.Metric, s.Value)
	}
	return b.String()
}

// apiGet calls Prometheus's HTTP API and decodes its data into out.
func (p *promServer) apiGet(path string, params url.Values, out any) error {
	client := http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get("http://" + p.addr + path + "?" + params.Encode())
	if err != nil {
		return fmt.Errorf("querying prometheus: %w", err)
	}
	defer resp.Body.Close()
	var r struct {
		Status string          `json:"status"`
		Error  string          `json:"error"`
		Data   json.RawMessage `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return fmt.Errorf("decoding prometheus's answer: %w", err)
	}
	if r.Status != "success" {
		return fmt.Errorf("prometheus: %s", r.Error)
	}
	return json.Unmarshal(r.Data, out)
}

// query runs an instant query that returns a vector.
func (p *promServer) query(q string) ([]promSample, error) {
	var data struct {
		ResultType string `json:"resultType"`
		Result     []struct {
			Metric map[string]string `json:"metric"`
			Value  [2]any            `json:"value"`
		} `json:"result"`
	}
	if err := p.apiGet("/api/v1/query", url.Values{"query": {q}}, &data); err != nil {
		return nil, err
	}
	if data.ResultType != "vector" {
		return nil, fmt.Errorf("query %s: a %s, not a vector", q, data.ResultType)
	}
	out := make([]promSample, len(data.Result))
	for i, r := range data.Result {
		s, _ := r.Value[1].(string)
		v, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return nil, fmt.Errorf("query %s: value %v: %w", q, r.Value[1], err)
		}
		out[i] = promSample{Metric: r.Metric, Value: v}
	}
	return out, nil
}

// queryRange runs an instant query of a range selector: the samples'
// timestamps, oldest first.
func (p *promServer) queryRange(q string) ([]promSample, error) {
	var data struct {
		ResultType string `json:"resultType"`
		Result     []struct {
			Metric map[string]string `json:"metric"`
			Values [][2]any          `json:"values"`
		} `json:"result"`
	}
	if err := p.apiGet("/api/v1/query", url.Values{"query": {q}}, &data); err != nil {
		return nil, err
	}
	if data.ResultType != "matrix" {
		return nil, fmt.Errorf("query %s: a %s, not a matrix", q, data.ResultType)
	}
	out := make([]promSample, len(data.Result))
	for i, r := range data.Result {
		out[i].Metric = r.Metric
		for _, v := range r.Values {
			ts, _ := v[0].(float64)
			out[i].Times = append(out[i].Times, time.UnixMilli(int64(ts*1000)))
		}
	}
	return out, nil
}

// promAlert is one alert of /api/v1/alerts.
type promAlert struct {
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
	State       string            `json:"state"`
	ActiveAt    time.Time         `json:"activeAt"`
	Value       string            `json:"value"`
}

func (a promAlert) String() string {
	b, _ := json.MarshalIndent(a, "  ", "  ")
	return "  " + string(b)
}

func (p *promServer) alerts() ([]promAlert, error) {
	var data struct {
		Alerts []promAlert `json:"alerts"`
	}
	err := p.apiGet("/api/v1/alerts", nil, &data)
	return data.Alerts, err
}
