package lab

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/portsleuth/portsleuth/internal/attrib"
	"github.com/portsleuth/portsleuth/internal/report"
)

// checkClaims: every claim of the advice texts (attrib.Claims) holds on
// this kernel. A kernel that behaves otherwise fails here, by name, before
// a report repeats the claim to someone in an incident.
func checkClaims(t *testing.T, release string, got map[string]PatternResult) {
	t.Helper()
	measured := map[string]bool{}
	for _, p := range got {
		measured[p.Pattern] = true
		for _, s := range Refuted(p) {
			t.Errorf("kernel %s: %s", release, s)
		}
	}
	for pattern := range attrib.Claims {
		if !measured[pattern] {
			t.Errorf("kernel %s: the advice for %s makes claims the lab does not measure", release, pattern)
		}
	}
}

// Refuted names a claim the result contradicts, and one it never measured.
func TestRefuted(t *testing.T) {
	p := PatternResult{Pattern: "bind-any-before-connect", Remedies: []RemedyResult{
		{Remedy: "ip_bind_address_no_port", Verdict: Fixes, Made: 256},
		{Remedy: "so_reuseaddr", Verdict: Fixes, Made: 256},
		{Remedy: "so_reuseaddr+ip_autobind_reuse", Verdict: MovesToConnect},
	}}
	got := Refuted(p)
	if len(got) != 2 {
		t.Fatalf("want so_reuseaddr refuted and tcp_tw_recycle unmeasured, got %q", got)
	}
	if want := "the advice expects so_reuseaddr to be no-effect for bind-any-before-connect, the lab measured fixes (256 made)"; got[0] != want {
		t.Errorf("got %q, want %q", got[0], want)
	}
	// A variant's claims apply to that variant only.
	tw := PatternResult{Pattern: "port-in-use", Variant: "time-wait", Remedies: []RemedyResult{{Remedy: "so_reuseaddr", Verdict: Fixes}}}
	if got := Refuted(tw); len(got) != 0 {
		t.Errorf("time-wait variant: %q", got)
	}
}

// Cite cites only the failures' kernel, and a kernel where the lab
// contradicts the advice shows it in the report, above the proof.
func TestCiteRefutedClaim(t *testing.T) {
	res := &Result{Kernel: "9.9.9", Range: 64, Patterns: []PatternResult{{
		Pattern: "bind-any-before-connect", Shape: Shape{Range: 64, Dests: 4},
		Baseline: Measure{Made: 64, FailedCall: CallBind, Errno: "EADDRINUSE"},
		Remedies: []RemedyResult{
			{Remedy: "ip_bind_address_no_port", Verdict: Fixes, Made: 256, Possible: 256},
			{Remedy: "so_reuseaddr", Verdict: Fixes, Made: 256, Possible: 256},
			{Remedy: "so_reuseaddr+ip_autobind_reuse", Verdict: MovesToConnect, Made: 66},
			{Remedy: "tcp_tw_recycle", Verdict: Unavailable},
		},
	}}}
	newReport := func(kernel string) *report.Report {
		return &report.Report{Kernel: kernel, Processes: []report.Process{{PID: 1, Patterns: []report.PatternEntry{
			{Pattern: "bind-any-before-connect", Count: 1}, {Pattern: "privileged-port", Count: 1},
		}}}}
	}
	r := newReport("6.1.0")
	if note := Cite(r, res, time.Now()); !strings.Contains(note, "kernel 9.9.9") || r.Processes[0].Patterns[0].Lab != nil {
		t.Errorf("another kernel's results cited: note %q", note)
	}
	r = newReport("9.9.9")
	if note := Cite(r, res, time.Now()); note != "" {
		t.Errorf("note %q", note)
	}
	c := r.Processes[0].Patterns[0].Lab
	if c == nil || len(c.Refuted) != 1 || !strings.Contains(c.Refuted[0], "so_reuseaddr to be no-effect") {
		t.Fatalf("citation %+v", c)
	}
	if r.Processes[0].Patterns[1].Lab != nil {
		t.Errorf("a pattern the lab does not reproduce got a citation")
	}
	var b bytes.Buffer
	if err := r.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "LAB REFUTES: the advice expects so_reuseaddr") || !strings.Contains(b.String(), "lab:      proven on 9.9.9") {
		t.Errorf("text:\n%s", b.String())
	}
}
