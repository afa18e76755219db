// Package metrics exposes what the tracer counts as Prometheus metrics and
// turns the kernel's cumulative counters into increments. A kernel entry can
// vanish (call counters are an LRU; serve forgets processes long gone) or
// restart from zero, so every total here is a sum of increments, never a raw
// map value.
package metrics

import (
	"maps"

	"github.com/portsleuth/portsleuth/internal/event"
)

type failKey struct {
	proc  event.ProcKey
	class event.Class
}

// Deltas remembers the last snapshot to hand out increments. Its memory is
// bounded by the kernel maps it mirrors: keys gone from the kernel are dropped.
type Deltas struct {
	fails        map[failKey]uint64
	procs        map[event.ProcKey]event.ProcStats
	unattributed map[event.Class]uint64
}

// NewDeltas starts from zero: the first Next returns everything counted so far.
func NewDeltas() *Deltas {
	return &Deltas{fails: map[failKey]uint64{}, procs: map[event.ProcKey]event.ProcStats{}, unattributed: map[event.Class]uint64{}}
}

// Next returns s with Failures and Procs replaced by their increments since
// the previous call. Meta and Netns are passed through.
func (d *Deltas) Next(s event.Snapshot) (inc event.Snapshot, cumulative event.Snapshot) {
	inc = event.Snapshot{
		Procs:        map[event.ProcKey]event.ProcStats{},
		Meta:         s.Meta,
		Failures:     map[event.ProcKey]map[event.Class]uint64{},
		Unattributed: map[event.Class]uint64{},
		Netns:        s.Netns,
		Lost:         s.Lost,
		Untracked:    s.Untracked,
	}
	fails := make(map[failKey]uint64, len(d.fails))
	for pid, classes := range s.Failures {
		for c, n := range classes {
			k := failKey{pid, c}
			fails[k] = n
			if dn := delta(d.fails[k], n); dn > 0 {
				if inc.Failures[pid] == nil {
					inc.Failures[pid] = map[event.Class]uint64{}
				}
				inc.Failures[pid][c] = dn
			}
		}
	}
	for c, n := range s.Unattributed {
		if dn := delta(d.unattributed[c], n); dn > 0 {
			inc.Unattributed[c] = dn
		}
	}
	d.unattributed = maps.Clone(s.Unattributed) // the source may reuse its map
	procs := make(map[event.ProcKey]event.ProcStats, len(s.Procs))
	for pid, st := range s.Procs {
		procs[pid] = st
		if dst := subStats(d.procs[pid], st); dst != (event.ProcStats{}) {
			inc.Procs[pid] = dst
		}
	}
	d.fails, d.procs = fails, procs
	return inc, s
}

// Forget drops what it remembers of processes whose kernel records were
// deleted: should one fail again, its new record counts in full.
func (d *Deltas) Forget(gone map[event.ProcKey]bool) {
	for k := range d.fails {
		if gone[k.proc] {
			delete(d.fails, k)
		}
	}
	for k := range gone {
		delete(d.procs, k)
	}
}

// delta is the increment from last to now; a smaller value means the entry
// was recreated, and all of it is new.
func delta(last, now uint64) uint64 {
	if now >= last {
		return now - last
	}
	return now
}

func subStats(a, b event.ProcStats) event.ProcStats {
	return event.ProcStats{
		BindsOK:           delta(a.BindsOK, b.BindsOK),
		BindsFailed:       delta(a.BindsFailed, b.BindsFailed),
		BindsOther:        delta(a.BindsOther, b.BindsOther),
		ConnectsOK:        delta(a.ConnectsOK, b.ConnectsOK),
		ConnectsFailed:    delta(a.ConnectsFailed, b.ConnectsFailed),
		ConnectsOther:     delta(a.ConnectsOther, b.ConnectsOther),
		Port0BindsOK:      delta(a.Port0BindsOK, b.Port0BindsOK),
		Port0BindConnects: delta(a.Port0BindConnects, b.Port0BindConnects),
		ConnectTWBlocked:  delta(a.ConnectTWBlocked, b.ConnectTWBlocked),
		ConnectEstBlocked: delta(a.ConnectEstBlocked, b.ConnectEstBlocked),
		ListensOK:         delta(a.ListensOK, b.ListensOK),
		ListensFailed:     delta(a.ListensFailed, b.ListensFailed),
	}
}
