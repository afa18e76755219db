package report

import (
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/portsleuth/portsleuth/internal/event"
)

var t0 = time.Date(2026, 11, 22, 3, 1, 34, 0, time.UTC)

var connectClass = event.Class{Op: event.Connect, Proto: "tcp", Family: "ipv4", Errno: unix.EADDRNOTAVAIL, Port0: true, AnyAddr: true}

func failure(pid uint32, at time.Time, class event.Class) event.Event {
	return event.Event{Time: at, PID: pid, TID: pid, Comm: "client", Class: class,
		Addr: netip.MustParseAddrPort("0.0.0.0:0"), Dest: netip.MustParseAddrPort("127.0.0.1:8080"), Netns: 7}
}

// snapshotOf counts the events as the kernel would have.
func snapshotOf(events []event.Event) event.Snapshot {
	s := event.Snapshot{Procs: map[event.ProcKey]event.ProcStats{}, Meta: map[event.ProcKey]event.ProcMeta{},
		Failures: map[event.ProcKey]map[event.Class]uint64{}}
	for _, e := range events {
		k := e.Proc()
		if s.Failures[k] == nil {
			s.Failures[k] = map[event.Class]uint64{}
		}
		s.Failures[k][e.Class]++
		st := s.Procs[k]
		st.ConnectsFailed++
		s.Procs[k] = st
		s.Meta[k] = event.ProcMeta{Comm: e.Comm, Netns: e.Netns}
	}
	return s
}

func buildFrom(events []event.Event) Report {
	c := NewOfflineCollector()
	for i := range events {
		c.Observe(&events[i])
	}
	return Build(snapshotOf(events), c, Filter{}, "replay", t0, 0)
}

func TestTimelineCountsPerSecond(t *testing.T) {
	refused := connectClass
	refused.Errno = unix.EADDRINUSE
	r := buildFrom([]event.Event{
		failure(10, t0.Add(100*time.Millisecond), connectClass),
		failure(10, t0.Add(900*time.Millisecond), connectClass),
		failure(10, t0.Add(2100*time.Millisecond), connectClass),
		failure(10, t0.Add(2200*time.Millisecond), refused),
		failure(11, t0.Add(1500*time.Millisecond), connectClass),
	})
	tl := r.Timeline
	if tl.Start != t0.Format(time.RFC3339Nano) || tl.StepSeconds != 1 || tl.Steps != 3 {
		t.Fatalf("axis %s step %d steps %d, want %s 1 3", tl.Start, tl.StepSeconds, tl.Steps, t0.Format(time.RFC3339Nano))
	}
	want := []string{
		"10 connect-port-exhaustion EADDRNOTAVAIL 0 [2 0 1] 3",
		"10 other EADDRINUSE 2 [1] 1",
		"11 connect-port-exhaustion EADDRNOTAVAIL 1 [1] 1",
	}
	if len(tl.Series) != len(want) {
		t.Fatalf("series %+v, want %d", tl.Series, len(want))
	}
	for i, s := range tl.Series {
		if got := seriesString(s); got != want[i] {
			t.Errorf("series %d = %s, want %s", i, got, want[i])
		}
		if s.Comm != "client" {
			t.Errorf("series %d comm %q", i, s.Comm)
		}
	}
}

func seriesString(s TimelineSeries) string {
	var counts []string
	for _, n := range s.Counts {
		counts = append(counts, itoa(uint64(n)))
	}
	return strings.Join([]string{itoa(uint64(s.PID)), s.Pattern, s.Errno, itoa(uint64(s.Offset)), "[" + strings.Join(counts, " ") + "]", itoa(s.Total)}, " ")
}

func itoa(n uint64) string { return strconv.FormatUint(n, 10) }

// The ring buffer hands over events of different CPUs slightly out of order.
func TestTimelineEarlierEventMovesTheStart(t *testing.T) {
	r := buildFrom([]event.Event{
		failure(10, t0.Add(1500*time.Millisecond), connectClass),
		failure(11, t0.Add(1200*time.Millisecond), connectClass),
		failure(10, t0.Add(300*time.Millisecond), connectClass),
	})
	tl := r.Timeline
	if tl.Start != t0.Format(time.RFC3339Nano) || tl.Steps != 2 {
		t.Fatalf("start %s steps %d", tl.Start, tl.Steps)
	}
	if got := seriesString(tl.Series[0]); got != "10 connect-port-exhaustion EADDRNOTAVAIL 0 [1 1] 2" {
		t.Errorf("pid 10: %s", got)
	}
	if got := seriesString(tl.Series[1]); got != "11 connect-port-exhaustion EADDRNOTAVAIL 1 [1] 1" {
		t.Errorf("pid 11: %s", got)
	}
}

func TestTimelineFoldsALongReport(t *testing.T) {
	events := []event.Event{failure(10, t0, connectClass)}
	for h := range 3 {
		events = append(events, failure(10, t0.Add(time.Duration(h+1)*time.Hour), connectClass))
	}
	r := buildFrom(events)
	tl := r.Timeline
	// 3 h at 1 s is 10,801 steps: folded twice, to 4 s and 2,701 steps.
	if tl.StepSeconds != 4 || tl.Steps != 2701 {
		t.Fatalf("step %d steps %d, want 4 2701", tl.StepSeconds, tl.Steps)
	}
	s := tl.Series[0]
	if s.Total != 4 || s.Offset != 0 || len(s.Counts) != 2701 || s.Counts[0] != 1 || s.Counts[900] != 1 || s.Counts[2700] != 1 {
		t.Errorf("series total %d offset %d len %d", s.Total, s.Offset, len(s.Counts))
	}
}

func TestTimelineBounds(t *testing.T) {
	tl := newTimeline()
	for pid := range uint32(MaxTimelineSeries + 5) {
		tl.add(t0, seriesKey{proc: event.ProcKey{PID: pid + 1}, class: connectClass})
	}
	if tl.unplotted != 5 || len(tl.series) != MaxTimelineSeries {
		t.Errorf("unplotted %d series %d", tl.unplotted, len(tl.series))
	}
	// Long series in numbers: the cells stay bounded by folding.
	tl = newTimeline()
	for pid := range uint32(1000) {
		k := seriesKey{proc: event.ProcKey{PID: pid + 1}, class: connectClass}
		tl.add(t0, k)
		tl.add(t0.Add((MaxTimelineSteps-1)*time.Second), k)
	}
	total := 0
	for _, s := range tl.series {
		total += len(s.counts)
		if s.counts[0] != 1 || s.counts[len(s.counts)-1] != 1 {
			t.Fatalf("a fold lost counts: %v...", s.counts[:2])
		}
	}
	if total > maxTimelineCells || total != tl.cells || tl.step != 2*time.Second {
		t.Errorf("cells %d (kept %d), step %s", total, tl.cells, tl.step)
	}
}

// On every recorded scenario the timeline holds each process's events: its
// failures less those whose events were missed.
func TestReplayTimelineMatchesCounts(t *testing.T) {
	names, err := filepath.Glob(filepath.Join(recordings, "*.json"))
	if err != nil || len(names) == 0 {
		t.Fatalf("no recordings: %v", err)
	}
	for _, path := range names {
		name := strings.TrimSuffix(filepath.Base(path), ".json")
		t.Run(name, func(t *testing.T) {
			r := replay(t, name)
			totals := map[event.ProcKey]uint64{}
			for _, s := range r.Timeline.Series {
				var sum uint64
				for _, n := range s.Counts {
					sum += uint64(n)
				}
				if sum != s.Total || s.Offset < 0 || s.Offset+len(s.Counts) > r.Timeline.Steps {
					t.Errorf("series %+v: sum %d, steps %d", s, sum, r.Timeline.Steps)
				}
				totals[event.ProcKey{PID: s.PID, Start: s.StartNs}] += s.Total
			}
			for _, p := range r.Processes {
				if got := totals[event.ProcKey{PID: p.PID, Start: p.StartNs}]; got != p.Failures-p.EventsMissed {
					t.Errorf("pid %d: timeline %d, failures %d less %d missed", p.PID, got, p.Failures, p.EventsMissed)
				}
			}
		})
	}
}

func TestReportJSONHasTimelineAndPoolSamples(t *testing.T) {
	c := NewOfflineCollector()
	e := failure(10, t0, connectClass)
	c.Observe(&e)
	c.AddPoolSamples([]PoolSample{{Time: t0.Format(time.RFC3339Nano), Netns: 7, Kind: "connect", Local: "127.0.0.1", Dest: "127.0.0.1:8080", Used: 64, Size: 64}})
	r := Build(snapshotOf([]event.Event{e}), c, Filter{}, "replay", t0, 0)
	var b strings.Builder
	if err := r.WriteJSON(&b); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"timeline": {`, `"step_seconds": 1`, `"counts": [`, `"pool_samples": [`, `"time_wait": 0`} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("JSON lacks %s:\n%s", want, b.String())
		}
	}
	// An empty report still has both, empty: a consumer need not test for null.
	empty := Build(event.Snapshot{}, NewOfflineCollector(), Filter{}, "replay", t0, 0)
	b.Reset()
	if err := empty.WriteJSON(&b); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), `"series": []`) || !strings.Contains(b.String(), `"pool_samples": []`) {
		t.Errorf("empty report: %s", b.String())
	}
}
