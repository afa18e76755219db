package lab

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
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
