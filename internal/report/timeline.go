package report

import (
	"cmp"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/portsleuth/portsleuth/internal/attrib"
	"github.com/portsleuth/portsleuth/internal/event"
)

// Timeline is when the failures came: per process, pattern and errno, the
// failures whose events arrived in each step of a shared time axis. It
// counts events, so a process's series sum to its failures less its
// events_missed. JSON names are a contract (see README).
type Timeline struct {
	// Start is the start of the first step (RFC 3339, UTC); empty with no events.
	Start string `json:"start"`
	// StepSeconds is one step: 1, doubled each time a long report would pass
	// MaxTimelineSteps.
	StepSeconds int `json:"step_seconds"`
	// Steps is the length of the axis.
	Steps  int              `json:"steps"`
	Series []TimelineSeries `json:"series"`
	// Unplotted counts events in no series (in the counts of the report):
	// those of processes past MaxTimelineSeries, and those with no time.
	Unplotted uint64 `json:"unplotted_events,omitempty"`
}

// TimelineSeries is one process's failures of one pattern and errno over time.
type TimelineSeries struct {
	PID     uint32 `json:"pid"`
	StartNs uint64 `json:"start_ns"`
	Comm    string `json:"comm"`
	Pattern string `json:"pattern"`
	Errno   string `json:"errno"`
	Total   uint64 `json:"total"`
	// Offset is the step of Counts[0]: steps before it, and after the last
	// count, had no failure of this series.
	Offset int      `json:"offset"`
	Counts []uint32 `json:"counts"`
}

// Timeline bounds: the axis folds to a coarser step rather than grow, and
// the cells of all series together stay within maxTimelineCells (4 bytes each).
const (
	MaxTimelineSteps  = 3600
	MaxTimelineSeries = 16384
	maxTimelineCells  = 1 << 21
)

// timeline accumulates events per (process, failure class) and step. The
// class, not the pattern, is kept: a pattern depends on the process's final
// counters, which only Build has.
type timeline struct {
	start     time.Time // zero until the first event
	step      time.Duration
	steps     int
	cells     int
	series    map[seriesKey]*steps
	unplotted uint64
}

type seriesKey struct {
	proc  event.ProcKey
	class event.Class
}

// steps are counts from step off on.
type steps struct {
	off    int
	counts []uint32
}

func newTimeline() *timeline {
	return &timeline{step: time.Second, series: map[seriesKey]*steps{}}
}

// add counts one event at t.
func (tl *timeline) add(t time.Time, k seriesKey) {
	s := tl.series[k]
	if s == nil {
		if len(tl.series) >= MaxTimelineSeries {
			tl.unplotted++
			return
		}
		s = &steps{}
		tl.series[k] = s
	}
	i := tl.index(t)
	switch {
	case len(s.counts) == 0:
		s.off, s.counts = i, []uint32{0}
		tl.cells++
	case i < s.off:
		grown := make([]uint32, s.off-i+len(s.counts))
		copy(grown[s.off-i:], s.counts)
		tl.cells += len(grown) - len(s.counts)
		s.off, s.counts = i, grown
	case i >= s.off+len(s.counts):
		n := i - s.off + 1 - len(s.counts)
		s.counts = append(s.counts, make([]uint32, n)...)
		tl.cells += n
	}
	if c := &s.counts[i-s.off]; *c < math.MaxUint32 {
		*c++
	}
	for tl.cells > maxTimelineCells {
		tl.fold()
	}
}

// index is t's step, after moving the start back or folding as needed: the
// ring buffer delivers events of different CPUs slightly out of order.
func (tl *timeline) index(t time.Time) int {
	if tl.start.IsZero() {
		tl.start = t.Truncate(tl.step)
	}
	if t.Before(tl.start) {
		back := int((tl.start.Sub(t) + tl.step - 1) / tl.step)
		tl.start = tl.start.Add(-time.Duration(back) * tl.step)
		tl.steps += back
		for _, s := range tl.series {
			s.off += back
		}
	}
	for {
		i := int(t.Sub(tl.start) / tl.step)
		if i < MaxTimelineSteps && tl.steps <= MaxTimelineSteps {
			tl.steps = max(tl.steps, i+1)
			return i
		}
		tl.fold()
	}
}

// fold doubles the step, merging pairs of steps.
func (tl *timeline) fold() {
	tl.step *= 2
	tl.steps = (tl.steps + 1) / 2
	tl.cells = 0
	for _, s := range tl.series {
		off := s.off / 2
		merged := make([]uint32, (s.off+len(s.counts)-1)/2-off+1)
		for j, c := range s.counts {
			m := &merged[(s.off+j)/2-off]
			*m = uint32(min(uint64(*m)+uint64(c), math.MaxUint32))
		}
		s.off, s.counts = off, merged
		tl.cells += len(merged)
	}
}

// build names the series: pattern by the process's final counters, merging
// the classes that map to one (pattern, errno).
func (tl *timeline) build(keep func(event.ProcKey) (comm string, st event.ProcStats, ok bool)) Timeline {
	out := Timeline{StepSeconds: int(tl.step / time.Second), Steps: tl.steps, Series: []TimelineSeries{}, Unplotted: tl.unplotted}
	if tl.start.IsZero() {
		return out
	}
	out.Start = tl.start.UTC().Format(time.RFC3339Nano)
	type named struct {
		proc           event.ProcKey
		pattern, errno string
	}
	merged := map[named]*TimelineSeries{}
	for k, s := range tl.series {
		comm, st, ok := keep(k.proc)
		if !ok {
			continue
		}
		n := named{k.proc, string(attrib.Classify(k.class, st)), errnoName(k.class.Errno)}
		ts := merged[n]
		if ts == nil {
			ts = &TimelineSeries{PID: k.proc.PID, StartNs: k.proc.Start, Comm: comm, Pattern: n.pattern, Errno: n.errno, Offset: s.off}
			merged[n] = ts
		}
		ts.merge(s)
	}
	for _, ts := range merged {
		out.Series = append(out.Series, *ts)
	}
	slices.SortFunc(out.Series, func(a, b TimelineSeries) int {
		return cmp.Or(cmp.Compare(a.PID, b.PID), cmp.Compare(a.StartNs, b.StartNs),
			strings.Compare(a.Pattern, b.Pattern), strings.Compare(a.Errno, b.Errno))
	})
	return out
}

// merge adds s's counts to ts, widening ts as needed.
func (ts *TimelineSeries) merge(s *steps) {
	lo := min(ts.Offset, s.off)
	hi := max(ts.Offset+len(ts.Counts), s.off+len(s.counts))
	counts := make([]uint32, hi-lo)
	copy(counts[ts.Offset-lo:], ts.Counts)
	for j, c := range s.counts {
		m := &counts[s.off-lo+j]
		*m = uint32(min(uint64(*m)+uint64(c), math.MaxUint32))
	}
	ts.Offset, ts.Counts = lo, counts
	ts.Total = 0
	for _, c := range counts {
		ts.Total += uint64(c)
	}
}

// buildTimeline is the timeline of the listed processes.
func buildTimeline(c *Collector, snap event.Snapshot, procs []Process) Timeline {
	listed := make(map[event.ProcKey]string, len(procs))
	for _, p := range procs {
		listed[event.ProcKey{PID: p.PID, Start: p.StartNs}] = p.Comm
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.tl.build(func(k event.ProcKey) (string, event.ProcStats, bool) {
		comm, ok := listed[k]
		return comm, snap.Procs[k], ok
	})
}

// samples are the pool samples added, never nil.
func (c *Collector) samples() []PoolSample {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]PoolSample{}, c.poolSamples...)
}
