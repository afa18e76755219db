package metrics

import (
	"testing"

	"github.com/portsleuth/portsleuth/internal/event"
)

// A key the kernel deleted (serve forgot its process) is dropped from
// Deltas; a new process on the same pid counts from zero.
func TestDeltasKeyDeleted(t *testing.T) {
	src := newFakeSource()
	d := NewDeltas()
	src.fail(7, "old", bindInUse, 5)
	src.fail(8, "live", bindInUse, 1)
	if inc, _ := d.Next(src.snap); inc.Failures[event.ProcKey{PID: 7, Start: 7000}][bindInUse] != 5 {
		t.Fatalf("first increment: %v", inc.Failures)
	}

	gone := event.ProcKey{PID: 7, Start: 7000}
	delete(src.snap.Failures, gone)
	delete(src.snap.Procs, gone)
	delete(src.snap.Meta, gone)
	src.fail(8, "live", bindInUse, 2)
	inc, _ := d.Next(src.snap)
	if len(inc.Failures) != 1 || inc.Failures[event.ProcKey{PID: 8, Start: 8000}][bindInUse] != 2 {
		t.Errorf("after the delete: increments %v, want only pid 8 +2", inc.Failures)
	}
	if len(inc.Procs) != 1 {
		t.Errorf("after the delete: proc increments %v, want only pid 8", inc.Procs)
	}
	if _, ok := d.procs[gone]; ok || len(d.fails) != 1 {
		t.Errorf("deleted key kept: procs %v fails %v", d.procs, d.fails)
	}

	// pid 7 reused by a later process: its counts are all new.
	reused := event.ProcKey{PID: 7, Start: 9000}
	src.snap.Failures[reused] = map[event.Class]uint64{bindInUse: 1}
	src.snap.Procs[reused] = event.ProcStats{BindsFailed: 1}
	inc, _ = d.Next(src.snap)
	if inc.Failures[reused][bindInUse] != 1 || inc.Procs[reused].BindsFailed != 1 || len(inc.Failures) != 1 {
		t.Errorf("reused pid: increments %v %v, want +1 for the new process only", inc.Failures, inc.Procs)
	}
}

// A process forgotten (its record deleted) that fails again: its new record
// counts in full, even past the old count (without Forget, 7 after 5 would
// have been read as 2 new).
func TestDeltasForgetCountsARecreatedRecordInFull(t *testing.T) {
	src := newFakeSource()
	d := NewDeltas()
	k := event.ProcKey{PID: 7, Start: 7000}
	src.fail(7, "svc", bindInUse, 5)
	d.Next(src.snap)
	d.Forget(map[event.ProcKey]bool{k: true})
	src.snap.Failures[k] = map[event.Class]uint64{bindInUse: 7}
	inc, _ := d.Next(src.snap)
	if got := inc.Failures[k][bindInUse]; got != 7 {
		t.Errorf("increment after Forget: %d, want 7", got)
	}
}
