package deploy

import (
	"encoding/json"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/portsleuth/portsleuth/internal/metrics"
)

// rule is one alerting rule of alerts.yml.
type rule struct {
	Alert       string            `json:"alert"`
	Expr        string            `json:"expr"`
	For         string            `json:"for"`
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
}

func loadRules(t *testing.T) []rule {
	t.Helper()
	var f struct {
		Groups []struct {
			Name  string `json:"name"`
			Rules []rule `json:"rules"`
		} `json:"groups"`
	}
	if err := unmarshalStrict(readFile(t, Alerts), &f); err != nil {
		t.Fatal(err)
	}
	var rules []rule
	for _, g := range f.Groups {
		rules = append(rules, g.Rules...)
	}
	return rules
}

// dashboardQueries returns every PromQL expression of the dashboard: panel
// targets and template variable queries, at any depth.
func dashboardQueries(t *testing.T) []string {
	t.Helper()
	var d any
	if err := json.Unmarshal(readFile(t, Dashboard), &d); err != nil {
		t.Fatalf("%s: %v", Dashboard, err)
	}
	var exprs []string
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, e := range v {
				if s, ok := e.(string); ok && (k == "expr" || k == "definition") {
					exprs = append(exprs, s)
				}
				walk(e)
			}
		case []any:
			for _, e := range v {
				walk(e)
			}
		}
	}
	walk(d)
	return exprs
}

// metricRe finds the names of serve's families (and of the agent's own
// process collector) in PromQL; label names never start this way.
var metricRe = regexp.MustCompile(`\b(?:portsleuth|process|go)_[a-zA-Z0-9_]*[a-zA-Z0-9]\b`)

// unknownMetrics lists the metric names in expr that serve does not export.
// A histogram's _bucket, _sum and _count count as their family.
func unknownMetrics(expr string, exported []string) []string {
	var unknown []string
	for _, name := range metricRe.FindAllString(expr, -1) {
		if slices.Contains(exported, name) {
			continue
		}
		base := name
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			base = strings.TrimSuffix(base, suffix)
		}
		if base == name || !slices.Contains(exported, base) {
			unknown = append(unknown, name)
		}
	}
	return unknown
}

func TestUnknownMetricsCheck(t *testing.T) {
	exported := []string{"portsleuth_failures_total", "portsleuth_scan_seconds"}
	for expr, want := range map[string][]string{
		`rate(portsleuth_failures_total{pattern="x"}[5m])`:           nil,
		`histogram_quantile(0.9, portsleuth_scan_seconds_bucket)`:    nil,
		`portsleuth_failure_total + portsleuth_scan_seconds_total`:   {"portsleuth_failure_total", "portsleuth_scan_seconds_total"},
		`sum by (pod_uid, container_id) (portsleuth_failures_total)`: nil,
	} {
		if got := unknownMetrics(expr, exported); !slices.Equal(got, want) {
			t.Errorf("unknownMetrics(%q) = %v, want %v", expr, got, want)
		}
	}
}

// The alerts and the dashboard query only what serve exports
// (metrics.Names reads serve's own collectors).
func TestQueriesUseExportedMetrics(t *testing.T) {
	exported := metrics.Names()
	if len(exported) == 0 {
		t.Fatal("metrics.Names() is empty")
	}
	check := func(where, expr string) {
		if unknown := unknownMetrics(expr, exported); len(unknown) > 0 {
			t.Errorf("%s queries %v, which serve does not export (it exports %v)", where, unknown, exported)
		}
	}
	for _, r := range loadRules(t) {
		check("alert "+r.Alert, r.Expr)
		for k, v := range r.Annotations {
			check("alert "+r.Alert+" annotation "+k, v)
		}
	}
	queries := dashboardQueries(t)
	for _, q := range queries {
		check("dashboard", q)
	}

	// What the dashboard is for: failures, pools, the agent's cost.
	used := strings.Join(queries, "\n")
	for _, name := range []string{
		"portsleuth_failures_total", "portsleuth_port_pool_used", "portsleuth_port_pool_size",
		"portsleuth_port_pool_free", "portsleuth_port_pool_time_wait", "portsleuth_port_pool_owner_info",
		"portsleuth_bpf_program_run_seconds_total", "portsleuth_lost_events_total",
		"portsleuth_enrichment_dropped_total", "portsleuth_pool_scan_duration_seconds",
	} {
		if !regexp.MustCompile(`\b` + name + `\b`).MatchString(used) {
			t.Errorf("the dashboard never queries %s", name)
		}
	}
}

func TestAlertRules(t *testing.T) {
	want := map[string]string{
		"PortPoolNearlyFull":        "warning",
		"BindBeforeConnectFailures": "warning",
		"PortExhaustion":            "critical",
		"AgentDroppingEvents":       "warning",
	}
	rules := loadRules(t)
	for _, r := range rules {
		sev, ok := want[r.Alert]
		if !ok {
			t.Errorf("unexpected alert %s", r.Alert)
			continue
		}
		delete(want, r.Alert)
		if r.Labels["severity"] != sev {
			t.Errorf("%s: severity %q, want %q", r.Alert, r.Labels["severity"], sev)
		}
		if r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
			t.Errorf("%s: want a summary and a description", r.Alert)
		}
	}
	for name := range want {
		t.Errorf("no alert %s", name)
	}
}

func TestDashboard(t *testing.T) {
	var d struct {
		UID       string `json:"uid"`
		Templates struct {
			List []struct {
				Name string `json:"name"`
				Type string `json:"type"`
			} `json:"list"`
		} `json:"templating"`
		Panels []struct {
			ID         int    `json:"id"`
			Type       string `json:"type"`
			Title      string `json:"title"`
			Datasource *struct {
				UID string `json:"uid"`
			} `json:"datasource"`
			GridPos *struct{ H, W, X, Y int } `json:"gridPos"`
			Targets []struct {
				Expr  string `json:"expr"`
				RefID string `json:"refId"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(readFile(t, Dashboard), &d); err != nil {
		t.Fatal(err)
	}
	if d.UID == "" {
		t.Error("no uid: every import would make a new dashboard")
	}
	if !slices.ContainsFunc(d.Templates.List, func(v struct {
		Name string `json:"name"`
		Type string `json:"type"`
	}) bool {
		return v.Name == "datasource" && v.Type == "datasource"
	}) {
		t.Error("no datasource variable: the dashboard would be tied to one Prometheus")
	}
	ids := map[int]bool{}
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d twice", p.ID)
		}
		ids[p.ID] = true
		if p.GridPos == nil || p.GridPos.W == 0 || p.GridPos.X+p.GridPos.W > 24 {
			t.Errorf("panel %q: bad gridPos %+v", p.Title, p.GridPos)
		}
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" || len(p.Targets) == 0 {
			t.Errorf("panel %q: want the ${datasource} variable and targets", p.Title)
		}
		for _, tg := range p.Targets {
			if strings.TrimSpace(tg.Expr) == "" || tg.RefID == "" {
				t.Errorf("panel %q: a target without expr or refId", p.Title)
			}
		}
	}
}
