package deploy

import (
	"maps"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// relabelConfig is one relabel_configs entry: the fields this repository
// uses, with Prometheus's defaults applied by relabel.
type relabelConfig struct {
	SourceLabels []string `json:"source_labels"`
	Separator    *string  `json:"separator"`
	Regex        *string  `json:"regex"`
	TargetLabel  string   `json:"target_label"`
	Replacement  *string  `json:"replacement"`
	Action       string   `json:"action"`
}

// relabel applies rules to labels as Prometheus does for the actions keep,
// drop and replace (anchored regex, defaults "(.*)", ";" and "$1"); it
// returns the labels without the __ ones and whether the target is kept.
func relabel(t *testing.T, rules []relabelConfig, labels map[string]string) (map[string]string, bool) {
	t.Helper()
	ls := maps.Clone(labels)
	for _, r := range rules {
		sep, re, repl := ";", "(.*)", "$1"
		if r.Separator != nil {
			sep = *r.Separator
		}
		if r.Regex != nil {
			re = *r.Regex
		}
		if r.Replacement != nil {
			repl = *r.Replacement
		}
		rx := regexp.MustCompile("^(?:" + re + ")$")
		vals := make([]string, len(r.SourceLabels))
		for i, l := range r.SourceLabels {
			vals[i] = ls[l]
		}
		v := strings.Join(vals, sep)
		switch r.Action {
		case "keep":
			if !rx.MatchString(v) {
				return nil, false
			}
		case "drop":
			if rx.MatchString(v) {
				return nil, false
			}
		case "", "replace":
			if m := rx.FindStringSubmatchIndex(v); m != nil {
				ls[r.TargetLabel] = string(rx.ExpandString(nil, repl, v, m))
			}
		default:
			t.Fatalf("relabel action %q is not simulated here", r.Action)
		}
	}
	out := map[string]string{}
	for k, v := range ls {
		if !strings.HasPrefix(k, "__") {
			out[k] = v
		}
	}
	return out, true
}

// labelNameRe is what Kubernetes discovery replaces in label names.
var labelNameRe = regexp.MustCompile(`[^a-zA-Z0-9_]`)

// podMeta is what Kubernetes pod discovery gives the DaemonSet's pod on
// node-1 for one of its container ports.
func podMeta(m manifests, portName string, port int32) map[string]string {
	meta := map[string]string{
		"__address__":                                 "10.0.0.7:" + strconv.Itoa(int(port)),
		"__meta_kubernetes_namespace":                 m.ds.Namespace,
		"__meta_kubernetes_pod_name":                  m.ds.Name + "-x7k2p",
		"__meta_kubernetes_pod_node_name":             "node-1",
		"__meta_kubernetes_pod_container_name":        m.ds.Spec.Template.Spec.Containers[0].Name,
		"__meta_kubernetes_pod_container_port_name":   portName,
		"__meta_kubernetes_pod_container_port_number": strconv.Itoa(int(port)),
	}
	for k, v := range m.ds.Spec.Template.Labels {
		meta["__meta_kubernetes_pod_label_"+labelNameRe.ReplaceAllString(k, "_")] = v
	}
	for k, v := range m.ds.Spec.Template.Annotations {
		meta["__meta_kubernetes_pod_annotation_"+labelNameRe.ReplaceAllString(k, "_")] = v
	}
	return meta
}
