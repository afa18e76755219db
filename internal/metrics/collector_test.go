package metrics

import (
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/portsleuth/portsleuth/internal/event"
)

// fakeSource serves whatever snapshot the test put in it.
type fakeSource struct{ snap event.Snapshot }

func (f *fakeSource) Snapshot() (event.Snapshot, error) { return f.snap, nil }

func (f *fakeSource) ProgramStats() (map[string]event.ProgramStats, error) { return nil, nil }

// fail records n more failures of class for the process pid named comm.
func (f *fakeSource) fail(pid uint32, comm string, class event.Class, n uint64) {
	k := event.ProcKey{PID: pid, Start: uint64(pid) * 1000}
	if f.snap.Failures[k] == nil {
		f.snap.Failures[k] = map[event.Class]uint64{}
	}
	f.snap.Failures[k][class] += n
	f.snap.Meta[k] = event.ProcMeta{Comm: comm}
	st := f.snap.Procs[k]
	st.BindsFailed += n
	f.snap.Procs[k] = st
}

func newFakeSource() *fakeSource {
	return &fakeSource{snap: event.Snapshot{
		Procs:        map[event.ProcKey]event.ProcStats{},
		Meta:         map[event.ProcKey]event.ProcMeta{},
		Failures:     map[event.ProcKey]map[event.Class]uint64{},
		Unattributed: map[event.Class]uint64{},
	}}
}

var bindInUse = event.Class{Op: event.Bind, Proto: "tcp", Family: "ipv4", Errno: unix.EADDRINUSE}

// fakeClock is a clock the test moves by hand.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

func newTestCollector(src Source) (*Collector, *fakeClock) {
	clock := &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	c := NewCollector(src, "test", false)
	c.Now = clock.now
	return c, clock
}

// failuresByComm gathers through a registry, as a scrape does, and sums
// portsleuth_failures_total by comm.
func failuresByComm(t *testing.T, c *Collector) map[string]float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(c); err != nil {
		t.Fatalf("registering: %v", err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gathering: %v", err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "portsleuth_failures_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "comm" {
					out[lp.GetValue()] += m.GetCounter().GetValue()
				}
			}
		}
	}
	return out
}

// fillComms makes MaxComms names fail once each.
func fillComms(t *testing.T, src *fakeSource, c *Collector) {
	t.Helper()
	for i := range MaxComms {
		src.fail(uint32(100+i), fmt.Sprintf("svc%02d", i), bindInUse, 1)
	}
	if err := c.Update(); err != nil {
		t.Fatal(err)
	}
}

func TestCommLabelFreedAfterIdle(t *testing.T) {
	src := newFakeSource()
	c, clock := newTestCollector(src)
	c.CommIdle = time.Minute
	fillComms(t, src, c)

	clock.t = clock.t.Add(2 * time.Minute)
	src.fail(999, "late", bindInUse, 3)
	got := failuresByComm(t, c)
	if got["late"] != 3 {
		t.Errorf("late comm after the others went idle: got %v under its own label, want 3 (other: %v)", got["late"], got[OtherComm])
	}
	if _, ok := got["svc00"]; ok {
		t.Errorf("idle comm svc00 still exported: %v", got)
	}
	if got[OtherComm] != 0 {
		t.Errorf("other = %v, want 0", got[OtherComm])
	}
}

func TestCommLabelOtherWithinWindow(t *testing.T) {
	src := newFakeSource()
	c, clock := newTestCollector(src)
	c.CommIdle = time.Minute
	fillComms(t, src, c)

	clock.t = clock.t.Add(30 * time.Second)
	src.fail(999, "late", bindInUse, 3)
	got := failuresByComm(t, c)
	if got[OtherComm] != 3 || got["late"] != 0 {
		t.Errorf("late comm within the window: other=%v late=%v, want other=3 late=0", got[OtherComm], got["late"])
	}
	if got["svc00"] != 1 || len(got) != MaxComms+1 {
		t.Errorf("want the %d first comms kept plus other, got %d series: %v", MaxComms, len(got), got)
	}

	// A slot freed later goes to the late name; what "other" counted stays there.
	clock.t = clock.t.Add(2 * time.Minute)
	src.fail(999, "late", bindInUse, 2)
	got = failuresByComm(t, c)
	if got[OtherComm] != 3 || got["late"] != 2 {
		t.Errorf("after the window: other=%v late=%v, want other=3 late=2", got[OtherComm], got["late"])
	}
}

func TestCommLabelKeptWhileFailing(t *testing.T) {
	src := newFakeSource()
	c, clock := newTestCollector(src)
	c.CommIdle = time.Minute
	fillComms(t, src, c)
	// svc00 keeps failing every 40s; the rest go idle.
	for range 3 {
		clock.t = clock.t.Add(40 * time.Second)
		src.fail(100, "svc00", bindInUse, 1)
		if err := c.Update(); err != nil {
			t.Fatal(err)
		}
	}
	got := failuresByComm(t, c)
	if got["svc00"] != 4 {
		t.Errorf("busy comm svc00 = %v, want 4 (a steady series)", got["svc00"])
	}
	if len(got) != 1 {
		t.Errorf("idle comms still exported: %v", got)
	}
}

func TestCommNamedLikeSharedLabel(t *testing.T) {
	src := newFakeSource()
	c, clock := newTestCollector(src)
	c.CommIdle = time.Minute
	src.fail(1, OtherComm, bindInUse, 1)
	src.fail(2, UnattributedComm, bindInUse, 1)
	if err := c.Update(); err != nil {
		t.Fatal(err)
	}
	clock.t = clock.t.Add(2 * time.Minute)
	got := failuresByComm(t, c)
	if got[OtherComm] != 2 || len(c.comms) != 0 {
		t.Errorf("names of shared labels: got %v, slots %v; want other=2 and no slot taken", got, c.comms)
	}
}

func TestCommNotUTF8(t *testing.T) {
	src := newFakeSource()
	c, _ := newTestCollector(src)
	src.fail(1, "bad\xff\xfe\x1b", bindInUse, 2)
	got := failuresByComm(t, c)
	if got[`bad\xff\xfe\x1b`] != 2 {
		t.Errorf("non-UTF-8 comm: got %v, want 2 under the escaped name", got)
	}
}
