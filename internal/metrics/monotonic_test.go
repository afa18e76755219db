package metrics

import (
	"reflect"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/portsleuth/portsleuth/internal/event"
	"github.com/portsleuth/portsleuth/internal/netns"
)

var connectNotAvail = event.Class{Op: event.Connect, Proto: "tcp", Family: "ipv4", Errno: unix.EADDRNOTAVAIL, Port0: true}

// A kernel counter read at 3, 5, 5, 9 gives increments 3, 2, none, 4: the
// increments add up to the last reading, and an unchanged entry leaves no
// empty map behind.
func TestDeltasMonotonicAcrossSnapshots(t *testing.T) {
	src := newFakeSource()
	d := NewDeltas()
	k := event.ProcKey{PID: 7, Start: 7000}
	var sum uint64
	for i, c := range []struct{ now, want uint64 }{{3, 3}, {5, 2}, {5, 0}, {9, 4}} {
		src.snap.Failures[k] = map[event.Class]uint64{bindInUse: c.now}
		src.snap.Procs[k] = event.ProcStats{BindsFailed: c.now}
		inc, cum := d.Next(src.snap)
		if got := inc.Failures[k][bindInUse]; got != c.want {
			t.Errorf("reading %d (%d): increment %d, want %d", i, c.now, got, c.want)
		}
		if got := inc.Procs[k].BindsFailed; got != c.want {
			t.Errorf("reading %d (%d): stats increment %d, want %d", i, c.now, got, c.want)
		}
		if _, ok := inc.Failures[k]; ok != (c.want > 0) {
			t.Errorf("reading %d: failure entry present %v with increment %d", i, ok, c.want)
		}
		if _, ok := inc.Procs[k]; ok != (c.want > 0) {
			t.Errorf("reading %d: stats entry present %v with increment %d", i, ok, c.want)
		}
		if cum.Failures[k][bindInUse] != c.now {
			t.Errorf("reading %d: cumulative %d, want the snapshot's %d", i, cum.Failures[k][bindInUse], c.now)
		}
		sum += inc.Failures[k][bindInUse]
	}
	if sum != 9 {
		t.Errorf("increments add up to %d, want the last reading, 9", sum)
	}
}

// The kernel's call counters are an LRU: an entry evicted and recreated
// reads smaller than before. A smaller value means a new entry, all of it new.
func TestDeltasEvictedEntryComesBackSmaller(t *testing.T) {
	src := newFakeSource()
	d := NewDeltas()
	k := event.ProcKey{PID: 7, Start: 7000}
	src.snap.Failures[k] = map[event.Class]uint64{bindInUse: 10, connectNotAvail: 4}
	src.snap.Procs[k] = event.ProcStats{BindsOK: 50, BindsFailed: 10, ConnectsFailed: 4}
	d.Next(src.snap)

	// Evicted between two reads, then recreated: bind counts restart, the
	// connect class (another kernel entry) kept counting.
	src.snap.Failures[k] = map[event.Class]uint64{bindInUse: 2, connectNotAvail: 6}
	src.snap.Procs[k] = event.ProcStats{BindsOK: 1, BindsFailed: 2, ConnectsFailed: 6}
	inc, _ := d.Next(src.snap)
	if got := inc.Failures[k]; got[bindInUse] != 2 || got[connectNotAvail] != 2 || len(got) != 2 {
		t.Errorf("increments %v, want bind +2 (recreated) and connect +2", got)
	}
	if got := inc.Procs[k]; got != (event.ProcStats{BindsOK: 1, BindsFailed: 2, ConnectsFailed: 2}) {
		t.Errorf("stats increment %+v, want binds ok +1, failed +2 (recreated), connects failed +2", got)
	}

	// Evicted and not recreated: no increment, and nothing remembered of it.
	delete(src.snap.Failures, k)
	delete(src.snap.Procs, k)
	inc, _ = d.Next(src.snap)
	if len(inc.Failures) != 0 || len(inc.Procs) != 0 || len(d.fails) != 0 || len(d.procs) != 0 {
		t.Errorf("after eviction: increments %v %v, remembered %v %v; want none", inc.Failures, inc.Procs, d.fails, d.procs)
	}
}

// Each counter of ProcStats is a delta of its own: one field restarting
// (smaller) while the others grow. A field added to ProcStats but not to
// subStats fails here.
func TestDeltasEveryStatsField(t *testing.T) {
	n := reflect.TypeOf(event.ProcStats{}).NumField()
	for i := range n {
		name := reflect.TypeOf(event.ProcStats{}).Field(i).Name
		t.Run(name, func(t *testing.T) {
			before, after, want := event.ProcStats{}, event.ProcStats{}, event.ProcStats{}
			for j := range n {
				reflect.ValueOf(&before).Elem().Field(j).SetUint(100)
				reflect.ValueOf(&after).Elem().Field(j).SetUint(130)
				reflect.ValueOf(&want).Elem().Field(j).SetUint(30)
			}
			reflect.ValueOf(&after).Elem().Field(i).SetUint(7) // recreated
			reflect.ValueOf(&want).Elem().Field(i).SetUint(7)
			k := event.ProcKey{PID: 1, Start: 1}
			d := NewDeltas()
			d.Next(event.Snapshot{Procs: map[event.ProcKey]event.ProcStats{k: before}})
			inc, _ := d.Next(event.Snapshot{Procs: map[event.ProcKey]event.ProcStats{k: after}})
			if got := inc.Procs[k]; got != want {
				t.Errorf("increment %+v, want %+v", got, want)
			}
		})
	}
}

// Failures the kernel could not attribute (its per-process table was full)
// are deltas too, restarts included; the rest of the snapshot passes through.
func TestDeltasUnattributedAndPassThrough(t *testing.T) {
	d := NewDeltas()
	snap := func(bind, conn uint64) event.Snapshot {
		return event.Snapshot{
			Unattributed: map[event.Class]uint64{bindInUse: bind, connectNotAvail: conn},
			Meta:         map[event.ProcKey]event.ProcMeta{{PID: 1, Start: 1}: {Comm: "svc"}},
			Netns:        map[uint64]netns.Sysctls{4026531840: {PortRange: [2]int{40000, 40063}}},
			Lost:         bind, Untracked: conn,
		}
	}
	for i, c := range []struct {
		bind, conn         uint64
		wantBind, wantConn uint64
	}{
		{5, 0, 5, 0},
		{8, 3, 3, 3},
		{8, 3, 0, 0},
		{2, 4, 2, 1}, // the bind count restarted
	} {
		s := snap(c.bind, c.conn)
		inc, _ := d.Next(s)
		if inc.Unattributed[bindInUse] != c.wantBind || inc.Unattributed[connectNotAvail] != c.wantConn {
			t.Errorf("reading %d: unattributed increments %v, want bind %d connect %d", i, inc.Unattributed, c.wantBind, c.wantConn)
		}
		for class, n := range inc.Unattributed {
			if n == 0 {
				t.Errorf("reading %d: zero increment kept for %+v", i, class)
			}
		}
		if !reflect.DeepEqual(inc.Meta, s.Meta) || !reflect.DeepEqual(inc.Netns, s.Netns) || inc.Lost != s.Lost || inc.Untracked != s.Untracked {
			t.Errorf("reading %d: meta %v netns %v lost %d untracked %d not passed through", i, inc.Meta, inc.Netns, inc.Lost, inc.Untracked)
		}
	}
}

// Forget drops exactly the processes named, and forgetting one never seen is harmless.
func TestDeltasForgetOnlyTheGone(t *testing.T) {
	src := newFakeSource()
	d := NewDeltas()
	src.fail(1, "gone", bindInUse, 5)
	src.fail(2, "stays", bindInUse, 5)
	d.Next(src.snap)
	gone, stays := event.ProcKey{PID: 1, Start: 1000}, event.ProcKey{PID: 2, Start: 2000}
	d.Forget(map[event.ProcKey]bool{gone: true, {PID: 3, Start: 3}: true})
	if _, ok := d.procs[gone]; ok {
		t.Errorf("forgotten process still remembered")
	}
	if _, ok := d.fails[failKey{gone, bindInUse}]; ok {
		t.Errorf("forgotten process's failures still remembered")
	}
	if d.procs[stays].BindsFailed != 5 || d.fails[failKey{stays, bindInUse}] != 5 {
		t.Errorf("the other process was forgotten too: %v %v", d.procs, d.fails)
	}
	// Both fail once more: the survivor's record counts +1, the forgotten one's in full.
	src.fail(1, "gone", bindInUse, 1)
	src.fail(2, "stays", bindInUse, 1)
	inc, _ := d.Next(src.snap)
	if inc.Failures[gone][bindInUse] != 6 || inc.Failures[stays][bindInUse] != 1 {
		t.Errorf("increments %v, want the forgotten pid 1 +6, pid 2 +1", inc.Failures)
	}
}

// End to end through a scrape: the totals only grow, across an eviction,
// and unattributed failures have their own comm label.
func TestCollectorTotalsSurviveEviction(t *testing.T) {
	src := newFakeSource()
	c, _ := newTestCollector(src)
	k := event.ProcKey{PID: 7, Start: 7000}
	src.fail(7, "svc", bindInUse, 4)
	src.snap.Unattributed[connectNotAvail] = 2
	if got := failuresByComm(t, c); got["svc"] != 4 || got[UnattributedComm] != 2 {
		t.Fatalf("first scrape %v, want svc 4, %s 2", got, UnattributedComm)
	}
	// The kernel evicted the process's entries and recreated them with 1.
	src.snap.Failures[k] = map[event.Class]uint64{bindInUse: 1}
	src.snap.Procs[k] = event.ProcStats{BindsFailed: 1}
	// A fresh map, as the tracer builds one per snapshot: Deltas keeps the
	// last one it was given.
	src.snap.Unattributed = map[event.Class]uint64{connectNotAvail: 3}
	if got := failuresByComm(t, c); got["svc"] != 5 || got[UnattributedComm] != 3 {
		t.Errorf("after the eviction %v, want svc 5 (4 + 1 new), %s 3", got, UnattributedComm)
	}
	if got := callsTotal(t, c, "bind", "failed"); got != 5 {
		t.Errorf("portsleuth_calls_total{bind,failed} = %v, want 5", got)
	}
}

// callsTotal scrapes portsleuth_calls_total for one op and result.
func callsTotal(t *testing.T, c *Collector, op, result string) float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(c); err != nil {
		t.Fatalf("registering: %v", err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gathering: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "portsleuth_calls_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, lp := range m.GetLabel() {
				labels[lp.GetName()] = lp.GetValue()
			}
			if labels["op"] == op && labels["result"] == result {
				return m.GetCounter().GetValue()
			}
		}
	}
	return -1
}
