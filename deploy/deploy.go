// Package deploy holds what a platform team applies and imports to run
// portsleuth on a fleet: the Kubernetes manifests, the Prometheus scrape
// config and alerting rules (with their promtool unit tests), the Grafana
// dashboard and the image recipe. Its tests check them against the
// Kubernetes API types, promtool and the metrics serve really exports.
package deploy

import "embed"

// Files are the deployment files, by their path in this directory.
//
//go:embed daemonset.yaml Containerfile prometheus/prometheus.yml prometheus/alerts.yml prometheus/alerts_test.yml grafana/portsleuth.json
var Files embed.FS

// Paths of the files in Files.
const (
	DaemonSet        = "daemonset.yaml"
	Containerfile    = "Containerfile"
	PrometheusConfig = "prometheus/prometheus.yml"
	Alerts           = "prometheus/alerts.yml"
	AlertsTest       = "prometheus/alerts_test.yml"
	Dashboard        = "grafana/portsleuth.json"
)

// MetricsPort is the port serve listens on in the DaemonSet's pods.
const MetricsPort = 9963
