package cli

import (
	"testing"

	"github.com/portsleuth/portsleuth/internal/report"
	"github.com/portsleuth/portsleuth/internal/scenario"
)

// More failing processes than a per-(process, class) LRU of 32768 entries
// held: every failure is counted, each process apart, and anything past the
// kernel's table would be counted by class and shown, never dropped.
func TestFanOutCountedExactly(t *testing.T) {
	r, res := traceScenario(t, "fan-out")
	children := res.Extra["children"]
	if children != scenario.FanOutProcs || res.Extra["bad_children"] != 0 {
		t.Fatalf("the scenario ran %d children as planned and %d that did not fail as expected, want %d and 0",
			children, res.Extra["bad_children"], scenario.FanOutProcs)
	}
	// The children failed in the scenario's namespace; the report covers the host.
	var procs, failures, unattributed uint64
	errs := map[string]uint64{}
	for _, p := range r.Processes {
		if int(p.PID) == res.PID || p.Netns != uint64(res.Extra["netns"]) {
			continue
		}
		procs++
		failures += p.Failures
		for e, n := range p.Errors {
			errs[e] += n
		}
		if p.Failures != scenario.FanOutClasses {
			t.Errorf("pid %d: %d failures, want %d", p.PID, p.Failures, scenario.FanOutClasses)
		}
	}
	for _, u := range r.Unattributed {
		unattributed += u.Count
	}
	want := uint64(children * scenario.FanOutClasses)
	if failures+unattributed != want {
		t.Errorf("counted %d failures of processes and %d without one, want %d in all", failures, unattributed, want)
	}
	if unattributed != 0 || procs != uint64(children) {
		t.Errorf("%d processes in the report and %d failures without a process; want all %d processes apart",
			procs, unattributed, children)
	}
	if errs["EADDRINUSE"] != uint64(3*children) || errs["EADDRNOTAVAIL"] != uint64(children) {
		t.Errorf("errors %v, want EADDRINUSE %d and EADDRNOTAVAIL %d", errs, 3*children, children)
	}
}

// A pid the kernel hands out again names another process: two entries, each
// with its own counts and namespace (the pid is reused through ns_last_pid).
func TestReusedPidIsTwoProcesses(t *testing.T) {
	r, res := traceScenario(t, "pid-reuse")
	pid := uint32(res.Extra["pid"])
	var got []report.Process
	for _, p := range r.Processes {
		if p.PID == pid {
			got = append(got, p)
		}
	}
	if len(got) != 2 {
		t.Fatalf("pid %d has %d entries in the report, want 2 (one per process)", pid, len(got))
	}
	counts := map[uint64]bool{got[0].Failures: true, got[1].Failures: true}
	if !counts[scenario.PidReuseFirst] || !counts[scenario.PidReuseSecond] {
		t.Errorf("failures %d and %d, want %d and %d", got[0].Failures, got[1].Failures, scenario.PidReuseFirst, scenario.PidReuseSecond)
	}
	// Each had a namespace of its own, but the kernel may hand the first
	// one's inode number to the second once the first is destroyed (seen on
	// 6.12): only the start times must differ.
	if got[0].StartNs == got[1].StartNs || got[0].Netns == 0 || got[1].Netns == 0 {
		t.Errorf("the two processes share a start time (%d, %d), or one has no namespace (%d, %d)",
			got[0].StartNs, got[1].StartNs, got[0].Netns, got[1].Netns)
	}
	for _, p := range got {
		for _, e := range p.Examples {
			if e.Netns != p.Netns {
				t.Errorf("pid %d (start %d, netns %d) shows an example of netns %d: another process's", p.PID, p.StartNs, p.Netns, e.Netns)
			}
		}
	}
}
