package deploy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	sigsjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"

	"github.com/portsleuth/portsleuth/internal/cli"
)

// documentedCaps are the capabilities the DaemonSet adds, each commented
// in the manifest with what it is for (the README's fleet section too).
var documentedCaps = []corev1.Capability{"BPF", "PERFMON", "NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE", "DAC_READ_SEARCH"}

const imageRepo = "ghcr.io/portsleuth/portsleuth"

// manifests are the objects of daemonset.yaml, decoded strictly.
type manifests struct {
	ns     *corev1.Namespace
	sa     *corev1.ServiceAccount
	quota  *corev1.ResourceQuota
	ds     *appsv1.DaemonSet
	policy *networkingv1.NetworkPolicy
}

func readFile(t *testing.T, name string) []byte {
	t.Helper()
	b, err := Files.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// splitDocs splits a multi-document YAML stream at its "---" lines,
// dropping documents that hold only comments.
func splitDocs(b []byte) [][]byte {
	var docs [][]byte
	for _, d := range regexp.MustCompile(`(?m)^---[ \t]*$`).Split(string(b), -1) {
		for _, line := range strings.Split(d, "\n") {
			if l := strings.TrimSpace(line); l != "" && !strings.HasPrefix(l, "#") {
				docs = append(docs, []byte(d))
				break
			}
		}
	}
	return docs
}

// unmarshalStrict decodes YAML into v as the API server decodes JSON:
// field names match case-sensitively (encoding/json would take hostPid for
// hostPID), and unknown or duplicate fields are errors.
func unmarshalStrict(y []byte, v any) error {
	j, err := yaml.YAMLToJSONStrict(y)
	if err != nil {
		return err
	}
	strict, err := sigsjson.UnmarshalStrict(j, v)
	if err != nil {
		return err
	}
	return errors.Join(strict...)
}

// decodeStrict decodes one object, rejecting unknown and duplicate fields:
// a misspelt or misplaced field would otherwise vanish without a word.
func decodeStrict(doc []byte) (any, error) {
	var tm metav1.TypeMeta
	if err := yaml.Unmarshal(doc, &tm); err != nil {
		return nil, fmt.Errorf("reading the kind: %w", err)
	}
	var obj any
	switch tm.APIVersion + " " + tm.Kind {
	case "v1 Namespace":
		obj = &corev1.Namespace{}
	case "v1 ServiceAccount":
		obj = &corev1.ServiceAccount{}
	case "v1 ResourceQuota":
		obj = &corev1.ResourceQuota{}
	case "apps/v1 DaemonSet":
		obj = &appsv1.DaemonSet{}
	case "networking.k8s.io/v1 NetworkPolicy":
		obj = &networkingv1.NetworkPolicy{}
	default:
		return nil, fmt.Errorf("unexpected object %s %s", tm.APIVersion, tm.Kind)
	}
	if err := unmarshalStrict(doc, obj); err != nil {
		return nil, fmt.Errorf("decoding %s: %w", tm.Kind, err)
	}
	return obj, nil
}

func loadManifests(t *testing.T) manifests {
	t.Helper()
	var m manifests
	for i, doc := range splitDocs(readFile(t, DaemonSet)) {
		obj, err := decodeStrict(doc)
		if err != nil {
			t.Fatalf("%s, document %d: %v", DaemonSet, i+1, err)
		}
		switch o := obj.(type) {
		case *corev1.Namespace:
			m.ns = o
		case *corev1.ServiceAccount:
			m.sa = o
		case *corev1.ResourceQuota:
			m.quota = o
		case *appsv1.DaemonSet:
			m.ds = o
		case *networkingv1.NetworkPolicy:
			m.policy = o
		}
	}
	if m.ns == nil || m.sa == nil || m.quota == nil || m.ds == nil || m.policy == nil {
		t.Fatalf("%s: want a Namespace, a ServiceAccount, a ResourceQuota, a DaemonSet and a NetworkPolicy, got %+v", DaemonSet, m)
	}
	return m
}

func TestManifestsDecodeStrictly(t *testing.T) {
	m := loadManifests(t)
	for _, ns := range []string{m.sa.Namespace, m.quota.Namespace, m.ds.Namespace, m.policy.Namespace} {
		if ns != m.ns.Name {
			t.Errorf("object in namespace %q, want %q (the manifest's Namespace)", ns, m.ns.Name)
		}
	}
	if m.ds.Spec.Template.Spec.ServiceAccountName != m.sa.Name {
		t.Errorf("DaemonSet runs as service account %q, the manifest creates %q", m.ds.Spec.Template.Spec.ServiceAccountName, m.sa.Name)
	}
	// hostPID and added capabilities are outside the baseline standard: a
	// namespace enforcing it would refuse every pod.
	if got := m.ns.Labels["pod-security.kubernetes.io/enforce"]; got != "privileged" {
		t.Errorf("namespace enforces pod security %q, want privileged", got)
	}
}

// The decoder must really refuse what the API types lack: otherwise the
// test above proves nothing.
func TestStrictDecodingRefusesUnknownFields(t *testing.T) {
	for _, bad := range []string{
		"apiVersion: apps/v1\nkind: DaemonSet\nspec:\n  template:\n    spec:\n      hostPid: true\n",
		"apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: a\n  name: b\n",
		"apiVersion: apps/v1\nkind: DaemonSet\nspec:\n  template:\n    spec:\n      containers:\n        - name: a\n          securityContext:\n            capabilities:\n              added: [BPF]\n",
	} {
		if _, err := decodeStrict([]byte(bad)); err == nil {
			t.Errorf("decoded without error:\n%s", bad)
		}
	}
}

func agentContainer(t *testing.T, ds *appsv1.DaemonSet) corev1.Container {
	t.Helper()
	if n := len(ds.Spec.Template.Spec.Containers); n != 1 {
		t.Fatalf("DaemonSet has %d containers, want 1", n)
	}
	return ds.Spec.Template.Spec.Containers[0]
}

func TestDaemonSetPodSpec(t *testing.T) {
	m := loadManifests(t)
	pod := m.ds.Spec.Template.Spec
	if !pod.HostPID {
		t.Error("hostPID is off: /proc/<pid>/ns/net of other pods' processes is out of reach")
	}
	if pod.HostNetwork {
		t.Error("hostNetwork is on: the metrics port would be bound on the node's addresses")
	}
	if !slices.ContainsFunc(pod.Tolerations, func(tol corev1.Toleration) bool {
		return tol.Operator == corev1.TolerationOpExists && tol.Key == "" && tol.Effect == ""
	}) {
		t.Errorf("tolerations %+v do not tolerate every taint: some nodes would go unwatched", pod.Tolerations)
	}
	if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
		t.Error("the pod mounts a service account token it never uses")
	}
	if pod.PriorityClassName != "system-node-critical" {
		t.Errorf("priorityClassName %q, want system-node-critical: the agent would be among the first evicted under node pressure", pod.PriorityClassName)
	}
	checkPriorityQuota(t, m.quota, pod.PriorityClassName)
	for k, v := range m.ds.Spec.Selector.MatchLabels {
		if m.ds.Spec.Template.Labels[k] != v {
			t.Errorf("selector %s=%s does not match the pod template's labels %v", k, v, m.ds.Spec.Template.Labels)
		}
	}

	c := agentContainer(t, m.ds)
	repo, tag, ok := strings.Cut(c.Image, ":")
	if !ok || repo != imageRepo || tag == "" || tag == "latest" {
		t.Errorf("image %q, want %s:<release tag>", c.Image, imageRepo)
	}
	if len(c.Args) == 0 || c.Args[0] != "serve" {
		t.Fatalf("args %q do not run serve", c.Args)
	}
	if len(c.Ports) != 1 || c.Ports[0].Name != "metrics" || c.Ports[0].ContainerPort != MetricsPort {
		t.Errorf("ports %+v, want one named metrics on %d", c.Ports, MetricsPort)
	}
	if got := listenFlag(c.Args); got != "0.0.0.0:"+strconv.Itoa(MetricsPort) {
		t.Errorf("--listen %q, want 0.0.0.0:%d: the pod IP, in the pod's own network namespace", got, MetricsPort)
	}
	ann := m.ds.Spec.Template.Annotations
	if ann["prometheus.io/scrape"] != "true" || ann["prometheus.io/port"] != strconv.Itoa(MetricsPort) || ann["prometheus.io/path"] != "/metrics" {
		t.Errorf("prometheus.io annotations %v do not point at /metrics on %d", ann, MetricsPort)
	}
	// Liveness asks /healthz, which fails when the event reader is stuck
	// (/metrics answers even then); the others ask /metrics.
	for name, p := range map[string]struct {
		probe *corev1.Probe
		path  string
	}{"startup": {c.StartupProbe, "/metrics"}, "readiness": {c.ReadinessProbe, "/metrics"}, "liveness": {c.LivenessProbe, "/healthz"}} {
		if p.probe == nil || p.probe.HTTPGet == nil || p.probe.HTTPGet.Path != p.path || p.probe.HTTPGet.Port.String() != "metrics" {
			t.Errorf("%s probe %+v is not an HTTP GET of %s on the metrics port", name, p.probe, p.path)
		}
	}
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
		t.Errorf("resources %+v: want CPU and memory requests and a memory limit", c.Resources)
	}
	cgroupMount := slices.IndexFunc(c.VolumeMounts, func(v corev1.VolumeMount) bool { return v.MountPath == "/sys/fs/cgroup" })
	if cgroupMount < 0 || !c.VolumeMounts[cgroupMount].ReadOnly {
		t.Fatalf("mounts %+v: want the host's cgroup root read-only at /sys/fs/cgroup", c.VolumeMounts)
	}
	vol := slices.IndexFunc(pod.Volumes, func(v corev1.Volume) bool { return v.Name == c.VolumeMounts[cgroupMount].Name })
	if vol < 0 || pod.Volumes[vol].HostPath == nil || pod.Volumes[vol].HostPath.Path != "/sys/fs/cgroup" {
		t.Errorf("the /sys/fs/cgroup mount is not the host's /sys/fs/cgroup: %+v", pod.Volumes)
	}
}

// checkPriorityQuota checks that quota admits one pod of priority class
// class per node, as clusters that limit the critical classes to
// kube-system require.
func checkPriorityQuota(t *testing.T, quota *corev1.ResourceQuota, class string) {
	t.Helper()
	sel := quota.Spec.ScopeSelector
	if sel == nil || !slices.ContainsFunc(sel.MatchExpressions, func(e corev1.ScopedResourceSelectorRequirement) bool {
		return e.ScopeName == corev1.ResourceQuotaScopePriorityClass && e.Operator == corev1.ScopeSelectorOpIn && slices.Contains(e.Values, class)
	}) {
		t.Errorf("ResourceQuota scope %+v does not cover priority class %s", sel, class)
	}
	// Kubernetes supports clusters of up to 5000 nodes.
	if pods, ok := quota.Spec.Hard[corev1.ResourcePods]; !ok || pods.Value() < 5000 {
		t.Errorf("ResourceQuota admits %v pods of %s, want one per node of the largest cluster (5000)", quota.Spec.Hard, class)
	}
}

// listenFlag returns the value of --listen in args ("" if absent).
func listenFlag(args []string) string {
	for i, a := range args {
		if v, ok := strings.CutPrefix(a, "--listen="); ok {
			return v
		}
		if a == "--listen" && i+1 < len(args) {
			return args[i+1]
		}
	}
	return ""
}

func TestDaemonSetSecurityContext(t *testing.T) {
	m := loadManifests(t)
	sc := agentContainer(t, m.ds).SecurityContext
	if sc == nil || sc.Capabilities == nil {
		t.Fatal("no securityContext with capabilities")
	}
	if sc.Privileged != nil && *sc.Privileged {
		t.Error("privileged: true: the agent needs a few capabilities, not all of them")
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Error("the root file system is writable")
	}
	if !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("drops %v, want ALL", sc.Capabilities.Drop)
	}
	got := slices.Sorted(slices.Values(sc.Capabilities.Add))
	if want := slices.Sorted(slices.Values(documentedCaps)); !slices.Equal(got, want) {
		t.Errorf("adds capabilities %v, want exactly %v", got, want)
	}
	// The API refuses allowPrivilegeEscalation: false together with SYS_ADMIN.
	if sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation {
		t.Error("allowPrivilegeEscalation: false with SYS_ADMIN: the API server rejects the pod")
	}
	if sc.RunAsUser == nil || *sc.RunAsUser != 0 {
		t.Error("not run as uid 0: the capabilities above reach only root's effective set")
	}
	for _, c := range sc.Capabilities.Add {
		if !capCommented(readFile(t, DaemonSet), string(c)) {
			t.Errorf("capability %s has no comment saying what it is for", c)
		}
	}
}

// capCommented says whether the list item for capability c in the manifest
// follows a comment line.
func capCommented(manifest []byte, c string) bool {
	lines := strings.Split(string(manifest), "\n")
	for i, l := range lines {
		if strings.TrimSpace(l) == "- "+c && i > 0 && strings.HasPrefix(strings.TrimSpace(lines[i-1]), "#") {
			return true
		}
	}
	return false
}

// The DaemonSet's arguments are parsed by serve's own flag set: a flag
// renamed or a value serve can't parse fails here, not on the fleet.
func TestDaemonSetArgsParse(t *testing.T) {
	c := agentContainer(t, loadManifests(t).ds)
	if code, out := runHelp(c.Args); code != 0 {
		t.Errorf("portsleuth %s: exit %d:\n%s", strings.Join(c.Args, " "), code, out)
	}
	// The check itself: a flag serve lacks must fail it.
	if code, _ := runHelp([]string{"serve", "--no-such-flag=1"}); code == 0 {
		t.Error("an unknown serve flag parsed: the check above proves nothing")
	}
}

// runHelp runs the portsleuth command line args with --help appended:
// every flag before it is parsed, and nothing is started.
func runHelp(args []string) (int, string) {
	var out bytes.Buffer
	code := cli.Run(append(slices.Clone(args), "--help"), io.Discard, &out)
	return code, out.String()
}

func TestNetworkPolicyAdmitsOnlyPrometheus(t *testing.T) {
	m := loadManifests(t)
	p := m.policy.Spec
	for k, v := range p.PodSelector.MatchLabels {
		if m.ds.Spec.Template.Labels[k] != v {
			t.Errorf("policy selects %s=%s, which the agent's pods lack", k, v)
		}
	}
	if !slices.Equal(p.PolicyTypes, []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}) {
		t.Errorf("policy types %v, want Ingress", p.PolicyTypes)
	}
	if len(p.Ingress) != 1 || len(p.Ingress[0].From) != 1 || len(p.Ingress[0].Ports) != 1 {
		t.Fatalf("ingress %+v: want one rule, from one peer, to one port", p.Ingress)
	}
	from := p.Ingress[0].From[0]
	if from.PodSelector == nil || len(from.PodSelector.MatchLabels) == 0 || from.NamespaceSelector == nil || len(from.NamespaceSelector.MatchLabels) == 0 {
		t.Errorf("peer %+v is not one namespace's Prometheus pods", from)
	}
	if port := p.Ingress[0].Ports[0].Port; port == nil || port.String() != "metrics" {
		t.Errorf("policy admits port %v, want the metrics port", port)
	}
}
