package lab

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/portsleuth/portsleuth/internal/netns"
	"github.com/portsleuth/portsleuth/internal/report"
)

func TestVerdictRules(t *testing.T) {
	base := Measure{Made: 64, FailedCall: CallBind, Errno: "EADDRINUSE"}
	for _, c := range []struct {
		name  string
		m     Measure
		un    string
		churn bool
		want  string
	}{
		{"no failure", Measure{Made: 256, FailedCall: CallNone}, "", false, Fixes},
		{"reaches the shape's space", Measure{Made: 256, FailedCall: CallConnect}, "", false, Fixes},
		{"same count, same call", Measure{Made: 64, FailedCall: CallBind}, "", false, NoEffect},
		{"same count, in connect", Measure{Made: 64, FailedCall: CallConnect}, "", false, MovesToConnect},
		{"a few more, in connect", Measure{Made: 70, FailedCall: CallConnect}, "", false, MovesToConnect},
		{"twice, in bind", Measure{Made: 128, FailedCall: CallBind}, "", false, Partial},
		{"fewer", Measure{Made: 10, FailedCall: CallBind}, "", false, NoEffect},
		{"missing", Measure{}, "no such option", false, Unavailable},
		// A churn (connect, close, again) refills any finite pool.
		{"churn: the shape's count, then a failure", Measure{Made: 256, FailedCall: CallConnect}, "", true, Partial},
		{"churn: no failure", Measure{Made: 256, FailedCall: CallNone}, "", true, Fixes},
	} {
		e := &experiment{m: c.m, unavailable: c.un}
		if got, note := verdict(base, e, 256, c.churn); got != c.want {
			t.Errorf("%s: want %s, got %s (%s)", c.name, c.want, got, note)
		}
	}
	// A shape whose baseline never failed proves no remedy.
	calm := Measure{Made: 256, FailedCall: CallNone}
	if got, _ := verdict(calm, &experiment{m: calm}, 256, false); got != NoEffect {
		t.Errorf("baseline without failure: want %s, got %s", NoEffect, got)
	}
}

func TestValidRange(t *testing.T) {
	for _, n := range []int{MinRange, DefaultRange, MaxRange} {
		if err := ValidRange(n); err != nil {
			t.Errorf("%d: %v", n, err)
		}
	}
	for _, n := range []int{-1, 0, MinRange - 1, MaxRange + 1} {
		if err := ValidRange(n); !errors.Is(err, ErrRange) {
			t.Errorf("%d: want ErrRange, got %v", n, err)
		}
	}
	if _, err := Run("x", 7, nil); !errors.Is(err, ErrRange) {
		t.Errorf("Run with 7 ports: want ErrRange before anything runs, got %v", err)
	}
}

func TestAdviceSentence(t *testing.T) {
	p := PatternResult{
		Pattern:  BindAnyBeforeConnect,
		Shape:    Shape{Range: 64, Dests: 4, Sources: 1},
		Baseline: Measure{Made: 64, Possible: 64, FailedCall: CallBind, Errno: "EADDRINUSE"},
		Remedies: []RemedyResult{
			{Remedy: "ip_bind_address_no_port", Verdict: Fixes, Made: 256, Possible: 256, FailedCall: CallConnect, Errno: "EADDRNOTAVAIL"},
			{Remedy: "so_reuseaddr", Verdict: NoEffect, Made: 64, FailedCall: CallBind, Errno: "EADDRINUSE"},
			{Remedy: "tcp_tw_recycle", Verdict: Unavailable, Note: "removed in Linux 4.12"},
		},
	}
	got := Advice("6.18.0", p)
	want := "proven on 6.18.0 (lab, 64 ports, 4 destinations): baseline 64, then bind() EADDRINUSE; " +
		"ip_bind_address_no_port fixes (64 -> 256 of 256); so_reuseaddr no effect (64); tcp_tw_recycle unavailable (removed in Linux 4.12)"
	if got != want {
		t.Errorf("advice:\n got %s\nwant %s", got, want)
	}
}

// A stored result comes back for the same release and shapes only, from a
// 0600 file; a link at the cache path is not followed.
func TestCacheRoundTrip(t *testing.T) {
	dir := t.TempDir()
	shapes := DefaultShapes(64, "all")
	r := &Result{Kernel: "6.18.0-test", Range: 64, Patterns: []PatternResult{{Pattern: PortInUse}}}
	if err := Store(dir, r, shapes); err != nil {
		t.Fatal(err)
	}
	got, when, ok := Cached(dir, "6.18.0-test", 64)
	if !ok || got.Kernel != r.Kernel || len(got.Patterns) != 1 || when.IsZero() {
		t.Fatalf("Cached: got %+v at %v, ok %v", got, when, ok)
	}
	if _, _, ok := Cached(dir, "6.1.0-test", 64); ok {
		t.Error("a result of another release came back")
	}
	if _, _, ok := Cached(dir, "6.18.0-test", 128); ok {
		t.Error("a result of another range came back")
	}
	path := cachePath(dir, r.Kernel, shapes)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("cache file mode %v, want 0600", fi.Mode().Perm())
	}
	other := filepath.Join(dir, "elsewhere.json")
	if err := os.Rename(path, other); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(other, path); err != nil {
		t.Fatal(err)
	}
	if _, _, ok := Cached(dir, "6.18.0-test", 64); ok {
		t.Error("the cache was read through a symbolic link")
	}
	// A file others may write is not ours alone; names the lab never gives
	// are refused: reports cite what the cache says.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := Store(dir, r, shapes); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o622); err != nil {
		t.Fatal(err)
	}
	if _, _, ok := Cached(dir, "6.18.0-test", 64); ok {
		t.Error("a group- and world-writable cache file was read")
	}
	bad := &Result{Kernel: "6.18.0-test", Range: 64, Patterns: []PatternResult{{Pattern: PortInUse,
		Remedies: []RemedyResult{{Remedy: "so_reuseaddr", Verdict: "\x1b[2Jfixes"}}}}}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := Store(dir, bad, shapes); err != nil {
		t.Fatal(err)
	}
	if _, _, ok := Cached(dir, "6.18.0-test", 64); ok {
		t.Error("a cached verdict the lab never gives was read")
	}
}

// Every seed recording with a pattern the lab knows gives shapes, with the
// process named and its range taken from its namespace.
func TestShapesFromRecordings(t *testing.T) {
	want := map[string]string{
		"bind-any-before-connect":           BindAnyBeforeConnect,
		"bind-ip-before-connect":            BindIPBeforeConnect,
		"timewait-exhaustion":               ConnectPortExhaustion,
		"port-in-use":                       PortInUse,
		"tuple-conflict":                    ConnectTupleConflict,
		"listen":                            BindPortExhaustion,
		"edge-udp-autobind-and-tw-reuse-on": ConnectPortExhaustion,
	}
	for name, pattern := range want {
		procs, err := LoadProcesses(filepath.Join("../../testdata/recordings", name+".json"))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		shapes, err := ShapesFrom(procs, pattern)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		s := shapes[0]
		if s.Process == nil || s.Process.PID == 0 || s.Range < MinRange || s.Range > MaxRange {
			t.Errorf("%s: shape %+v", name, s)
		}
	}
	procs, err := LoadProcesses("../../testdata/recordings/bind-ip-before-connect.json")
	if err != nil {
		t.Fatal(err)
	}
	shapes, _ := ShapesFrom(procs, BindIPBeforeConnect)
	if len(shapes) != 1 || shapes[0].Range != 64 || shapes[0].TCPTwReuse != 2 {
		t.Errorf("bind-ip-before-connect: want one 64-port shape with tcp_tw_reuse 2, got %+v", shapes)
	}
	if _, err := LoadProcesses("../../testdata/recordings/edge-privileged-and-denied.json"); err != nil {
		t.Fatal(err)
	}
}

func TestLoadProcessesRejectsOtherJSON(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.json")
	if err := os.WriteFile(path, []byte(`{"hello": 1}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadProcesses(path); err == nil || !strings.Contains(err.Error(), "neither a report") {
		t.Errorf("want a clear error, got %v", err)
	}
}

// Culprits of one shape are measured once; distinct shapes are capped and
// the cap said; sysctl values the kernel would refuse are not used.
func TestShapesFromBounds(t *testing.T) {
	proc := func(pid uint32, ports int, twReuse int) report.Process {
		return report.Process{PID: pid, Comm: "app", Patterns: []report.PatternEntry{{Pattern: BindAnyBeforeConnect, Count: 1}},
			Sysctls: &netns.Sysctls{PortRange: [2]int{40000, 40000 + ports - 1}, TCPTwReuse: twReuse}}
	}
	var same []report.Process
	for i := range 40 {
		same = append(same, proc(uint32(100+i), 64, 0))
	}
	got, err := ShapesFrom(same, "all")
	if err != nil || len(got) != 1 || got[0].Process.PID != 100 || !slices.Contains(got[0].Notes, "also the shape of pid 101 (app)") {
		t.Fatalf("one shape for 40 alike culprits: %d shapes, %v", len(got), err)
	}
	var distinct []report.Process
	for i := range 40 {
		distinct = append(distinct, proc(uint32(100+i), 64+i, 0))
	}
	got, _ = ShapesFrom(distinct, "all")
	if len(got) != MaxFromShapes || !slices.Contains(got[len(got)-1].Notes, "8 more shapes left out: the lab measures at most 32 per run") {
		t.Errorf("distinct shapes: %d, last notes %q", len(got), got[len(got)-1].Notes)
	}
	got, _ = ShapesFrom([]report.Process{proc(1, 64, 1000)}, "all")
	if got[0].TCPTwReuse != -1 || !slices.ContainsFunc(got[0].Notes, func(n string) bool { return strings.HasPrefix(n, "tcp_tw_reuse=1000 is not a value") }) {
		t.Errorf("tcp_tw_reuse=1000 kept: %d, %q", got[0].TCPTwReuse, got[0].Notes)
	}
}
