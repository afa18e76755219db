package metrics

import (
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/portsleuth/portsleuth/internal/event"
	"github.com/portsleuth/portsleuth/internal/procinfo"
)

func TestForgetterGrace(t *testing.T) {
	src := newFakeSource()
	src.fail(1, "gone", bindInUse, 1)
	src.fail(2, "live", bindInUse, 1)
	src.fail(3, "busy", bindInUse, 1) // gone, but its counts keep changing
	goneK, liveK, busyK := event.ProcKey{PID: 1, Start: 1000}, event.ProcKey{PID: 2, Start: 2000}, event.ProcKey{PID: 3, Start: 3000}
	alive := func(k event.ProcKey) bool { return k == liveK }

	grace := time.Minute
	f := NewForgetter(grace)
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i, at := range []time.Duration{0, 20 * time.Second, 40 * time.Second, 59 * time.Second} {
		src.fail(3, "busy", bindInUse, 1)
		if gone := f.Observe(src.snap, alive, t0.Add(at)); len(gone) != 0 {
			t.Fatalf("observation %d at +%v, within grace: forgot %v", i, at, gone)
		}
	}
	for _, at := range []time.Duration{time.Minute, 5 * time.Minute} {
		src.fail(3, "busy", bindInUse, 1)
		gone := f.Observe(src.snap, alive, t0.Add(at))
		if len(gone) != 1 || !gone[goneK] {
			t.Errorf("at +%v: forgot %v, want only %v", at, gone, goneK)
		}
		if gone[liveK] || gone[busyK] {
			t.Errorf("at +%v: forgot a live or changing process: %v", at, gone)
		}
	}

	// The kernel deleted it; the Forgetter lets it go too.
	delete(src.snap.Failures, goneK)
	delete(src.snap.Procs, goneK)
	delete(src.snap.Meta, goneK)
	src.fail(3, "busy", bindInUse, 1)
	if gone := f.Observe(src.snap, alive, t0.Add(6*time.Minute)); len(gone) != 0 {
		t.Errorf("after the delete: forgot %v", gone)
	}
	if _, ok := f.seen[goneK]; ok || len(f.seen) != 2 {
		t.Errorf("forgotten process still tracked: %v", f.seen)
	}
}

// A change restarts the grace period.
func TestForgetterChangeRestartsGrace(t *testing.T) {
	src := newFakeSource()
	src.fail(1, "gone", bindInUse, 1)
	k := event.ProcKey{PID: 1, Start: 1000}
	dead := func(event.ProcKey) bool { return false }
	f := NewForgetter(time.Minute)
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	f.Observe(src.snap, dead, t0)
	st := src.snap.Procs[k]
	st.ConnectsOK++ // a call counter moved, no failure
	src.snap.Procs[k] = st
	if gone := f.Observe(src.snap, dead, t0.Add(50*time.Second)); len(gone) != 0 {
		t.Fatalf("forgot %v within grace", gone)
	}
	if gone := f.Observe(src.snap, dead, t0.Add(70*time.Second)); len(gone) != 0 {
		t.Errorf("forgot %v 20s after its last change", gone)
	}
	if gone := f.Observe(src.snap, dead, t0.Add(110*time.Second)); !gone[k] {
		t.Errorf("not forgotten a grace after its last change: %v", gone)
	}
}

func TestAlive(t *testing.T) {
	self := uint32(os.Getpid())
	st, err := procinfo.StartTime(self)
	if err != nil {
		t.Fatalf("reading own start time: %v", err)
	}
	if !Alive(event.ProcKey{PID: self, Start: st}) {
		t.Errorf("this process is not alive")
	}
	if Alive(event.ProcKey{PID: self, Start: st + uint64(time.Hour)}) {
		t.Errorf("another start time on this pid counts as alive")
	}

	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatalf("running true: %v", err)
	}
	pid := uint32(cmd.Process.Pid) // reaped by Run: gone, unless reused since
	if _, err := procinfo.StartTime(pid); err == nil {
		t.Skipf("pid %d was reused already", pid)
	}
	if Alive(event.ProcKey{PID: pid, Start: st}) {
		t.Errorf("exited pid %d counts as alive", pid)
	}
}
