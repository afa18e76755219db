package deploy

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// promtool finds promtool (Debian's prometheus package; `make deps`). It
// skips only outside CI: in CI a missing promtool fails.
func promtool(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath("promtool")
	if err == nil {
		return path
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("promtool not found and CI is set: install Debian's prometheus package (make deps): %v", err)
	}
	t.Skip("needs promtool (Debian's prometheus package: make deps)")
	return ""
}

func runPromtool(t *testing.T, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command(promtool(t), args...).CombinedOutput()
	t.Logf("promtool %s:\n%s", strings.Join(args, " "), out)
	return string(out), err
}

func TestPromtoolCheckRules(t *testing.T) {
	if out, err := runPromtool(t, "check", "rules", Alerts); err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
}

// Every alert is unit tested, firing and quiet, by alerts_test.yml.
func TestPromtoolTestRules(t *testing.T) {
	if out, err := runPromtool(t, "test", "rules", AlertsTest); err != nil {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
	}
}

func TestEveryAlertIsTestedFiringAndQuiet(t *testing.T) {
	var tests struct {
		Tests []struct {
			AlertRuleTest []struct {
				Alertname string `json:"alertname"`
				ExpAlerts []any  `json:"exp_alerts"`
			} `json:"alert_rule_test"`
		} `json:"tests"`
	}
	if err := yaml.Unmarshal(readFile(t, AlertsTest), &tests); err != nil {
		t.Fatal(err)
	}
	firing, quiet := map[string]bool{}, map[string]bool{}
	for _, g := range tests.Tests {
		for _, c := range g.AlertRuleTest {
			if len(c.ExpAlerts) > 0 {
				firing[c.Alertname] = true
			} else {
				quiet[c.Alertname] = true
			}
		}
	}
	for _, r := range loadRules(t) {
		if !firing[r.Alert] || !quiet[r.Alert] {
			t.Errorf("alert %s: tested firing %v, tested quiet %v: want both", r.Alert, firing[r.Alert], quiet[r.Alert])
		}
	}
}

// Debian builds Prometheus without Kubernetes service discovery, so its
// promtool refuses kubernetes_sd_configs. There, the config is checked with
// that block swapped for a static target; everything else (relabeling, rule
// files) is checked as written. TestScrapeConfigSelectsTheDaemonSet covers
// the Kubernetes part.
func TestPromtoolCheckConfig(t *testing.T) {
	out, err := runPromtool(t, "check", "config", PrometheusConfig)
	if err == nil {
		return
	}
	if !strings.Contains(out, "field kubernetes_sd_configs not found") {
		t.Fatalf("promtool check config: %v\n%s", err, out)
	}
	t.Log("this promtool has no Kubernetes service discovery (Debian's build): checking the config with a static target instead")
	dir := t.TempDir()
	writeStaticConfig(t, filepath.Join(dir, "prometheus.yml"))
	if err := os.WriteFile(filepath.Join(dir, "alerts.yml"), readFile(t, Alerts), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := runPromtool(t, "check", "config", filepath.Join(dir, "prometheus.yml")); err != nil {
		t.Fatalf("promtool check config (static target): %v\n%s", err, out)
	}
}

// writeStaticConfig writes the scrape config with every
// kubernetes_sd_configs block replaced by a static target.
func writeStaticConfig(t *testing.T, path string) {
	t.Helper()
	var cfg map[string]any
	if err := yaml.Unmarshal(readFile(t, PrometheusConfig), &cfg); err != nil {
		t.Fatal(err)
	}
	jobs, _ := cfg["scrape_configs"].([]any)
	for _, j := range jobs {
		job := j.(map[string]any)
		if _, ok := job["kubernetes_sd_configs"]; ok {
			delete(job, "kubernetes_sd_configs")
			job["static_configs"] = []any{map[string]any{"targets": []any{"127.0.0.1:9963"}}}
		}
	}
	b, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// scrapeConfig is the part of prometheus.yml the checks below read.
type scrapeConfig struct {
	RuleFiles     []string `json:"rule_files"`
	ScrapeConfigs []struct {
		JobName             string `json:"job_name"`
		KubernetesSDConfigs []struct {
			Role       string `json:"role"`
			Namespaces struct {
				Names []string `json:"names"`
			} `json:"namespaces"`
		} `json:"kubernetes_sd_configs"`
		RelabelConfigs []relabelConfig `json:"relabel_configs"`
	} `json:"scrape_configs"`
}

// The scrape config finds the DaemonSet's pods: its relabeling, run on the
// meta labels Kubernetes discovery gives each of their ports, keeps exactly
// the metrics port and names the node.
func TestScrapeConfigSelectsTheDaemonSet(t *testing.T) {
	var cfg scrapeConfig
	if err := yaml.Unmarshal(readFile(t, PrometheusConfig), &cfg); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(cfg.RuleFiles, filepath.Base(Alerts)) {
		t.Errorf("rule_files %v do not load %s", cfg.RuleFiles, filepath.Base(Alerts))
	}
	if len(cfg.ScrapeConfigs) != 1 || len(cfg.ScrapeConfigs[0].KubernetesSDConfigs) != 1 {
		t.Fatalf("want one job with one kubernetes_sd_configs entry, got %+v", cfg.ScrapeConfigs)
	}
	job := cfg.ScrapeConfigs[0]
	sd := job.KubernetesSDConfigs[0]
	m := loadManifests(t)
	if sd.Role != "pod" || !slices.Equal(sd.Namespaces.Names, []string{m.ds.Namespace}) {
		t.Errorf("discovers role %q in %v, want pods in [%s]", sd.Role, sd.Namespaces.Names, m.ds.Namespace)
	}
	c := agentContainer(t, m.ds)
	// Discovery makes a target of every declared port; a port the job
	// must not scrape checks that the keep rules do select.
	ports := append(slices.Clone(c.Ports), c.Ports[0])
	ports[len(ports)-1].Name = "other"
	for _, port := range ports {
		meta := podMeta(m, port.Name, port.ContainerPort)
		got, kept := relabel(t, job.RelabelConfigs, meta)
		if port.Name != "metrics" {
			if kept {
				t.Errorf("port %s is scraped too", port.Name)
			}
			continue
		}
		if !kept {
			t.Fatalf("the metrics port is dropped by the relabeling (meta labels %v)", meta)
		}
		if got["node"] != "node-1" || got["instance"] != "node-1" {
			t.Errorf("target labels %v: want node and instance set to the node name", got)
		}
	}
	// A pod of some other workload in the namespace is not scraped.
	other := podMeta(m, "metrics", MetricsPort)
	other["__meta_kubernetes_pod_label_app_kubernetes_io_name"] = "something-else"
	if _, kept := relabel(t, job.RelabelConfigs, other); kept {
		t.Error("another workload's pod with a metrics port is scraped")
	}
}
