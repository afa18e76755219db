// Package htmlreport renders a culprit report (internal/report) as one
// self-contained HTML file for a post-mortem: the headline, a timeline of
// failures per culprit on a shared time axis, the occupancy of the pools
// that failed, sysctls, remedies and examples. It loads nothing: inline CSS
// and SVG, no script, and a Content-Security-Policy that forbids any fetch.
// Every chart has a text alternative and its numbers in a table.
package htmlreport

import (
	"bufio"
	"cmp"
	_ "embed"
	"fmt"
	"html/template"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/portsleuth/portsleuth/internal/netns"
	"github.com/portsleuth/portsleuth/internal/report"
	"github.com/portsleuth/portsleuth/internal/term"
)

// Bounds that keep a report of 10,000 processes within a few MB: the rest
// is in the tables (capped, saying so) and all of it in the JSON report.
const (
	// MaxCharts is how many processes get a timeline chart.
	MaxCharts = 12
	// MaxDetailed is how many processes are shown in full.
	MaxDetailed = 20
	// MaxTableRows caps the summary table and each chart's data table.
	MaxTableRows = 1000
	// maxCmdline cuts a command line in the summary table.
	maxCmdline = 160
)

//go:embed report.html.tmpl
var pageText string

var page = template.Must(template.New("report").Funcs(template.FuncMap{
	"num":   func(n uint64) string { return strconv.FormatUint(n, 10) },
	"add":   func(a, b float64) float64 { return a + b },
	"sub":   func(a, b float64) float64 { return a - b },
	"add1":  func(n int) int { return n + 1 },
	"deref": func(b *bool) bool { return b != nil && *b },
	"derefString": func(s *string) string {
		if s == nil {
			return ""
		}
		return *s
	},
}).Parse(pageText))

// Write renders r as HTML to w.
func Write(w io.Writer, r *report.Report) error {
	v := newView(r)
	bw := bufio.NewWriter(w)
	if err := page.Execute(bw, v); err != nil {
		return fmt.Errorf("rendering the html report: %w", err)
	}
	return bw.Flush()
}

// view is what the template shows; every string in it is escaped (term.Escape).
type view struct {
	R          report.Report
	Headline   []string
	Counters   []counter
	Axis       axis
	Charts     []timelineChart
	Uncharted  []procRow
	UnchartedN int
	Pools      []poolChart
	PoolsLeft  poolsLeftOut
	Sysctls    []netns.Sysctls
	Detailed   []procView
	MoreProcs  int
}

type counter struct {
	Label, Note string
	Value       uint64
}

// procRow is one line of the summary table.
type procRow struct {
	PID                  uint32
	Comm, Cmdline, Top   string
	Failures, EventsMiss uint64
}

// procView is one process shown in full.
type procView struct {
	report.Process
	Errors   string
	Patterns []patternView
}

type patternView struct {
	report.PatternEntry
	Pressure string
	Holders  []string
}

type kv struct{ Key, Value string }

func newView(orig *report.Report) view {
	r := escaped(*orig)
	v := view{R: r, Sysctls: sysctlsOf(r.Processes)}
	for _, s := range orig.Headline() {
		v.Headline = append(v.Headline, term.Escape(s))
	}
	v.Counters = counters(&r)
	v.Axis = newAxis(&r)
	v.Charts = timelineCharts(&r, v.Axis)
	charted := map[uint32]bool{}
	for _, c := range v.Charts {
		charted[c.PID] = true
	}
	for _, p := range r.Processes {
		if charted[p.PID] {
			continue
		}
		if len(v.Uncharted) >= MaxTableRows {
			v.UnchartedN++
			continue
		}
		v.Uncharted = append(v.Uncharted, rowOf(p))
	}
	v.Pools, v.PoolsLeft = poolCharts(r.PoolSamples, v.Axis)
	for i, p := range r.Processes {
		if i >= MaxDetailed {
			v.MoreProcs = len(r.Processes) - MaxDetailed
			break
		}
		v.Detailed = append(v.Detailed, procViewOf(p, orig.Processes[i]))
	}
	return v
}

func counters(r *report.Report) []counter {
	var missed, failures uint64
	for _, p := range r.Processes {
		missed += p.EventsMissed
		failures += p.Failures
	}
	var unattributed uint64
	for _, u := range r.Unattributed {
		unattributed += u.Count
	}
	return []counter{
		{"failures", "counted in the kernel: exact", failures},
		{"processes", "that failed (or, with --all, made calls)", uint64(len(r.Processes))},
		{"lost events", "the ring buffer was full: counts stay exact, examples and the timeline miss them", r.LostEvents},
		{"events missed", "failures counted whose event never arrived: not in the timeline", missed},
		{"enrichment dropped", "first failures that got no pressure snapshot (queue full)", r.EnrichmentDropped},
		{"untracked calls", "calls not followed to their outcome: in no count", r.UntrackedCalls},
		{"unattributed", "failures counted without a process (table full)", unattributed},
		{"unplotted events", "events of processes past the timeline's series bound", r.Timeline.Unplotted},
		{"pool samples", "pool measurements taken during the report", uint64(len(r.PoolSamples))},
		{"pool samples dropped", "pool samples not taken or kept: past the sampling bounds", r.PoolSamplesDropped},
		{"pools unsampled", "pools a failure drew from that were never sampled (bounds, full queue or errors)", r.PoolsUnsampled},
		{"pool sample errors", poolErrorNote(r), r.PoolSampleErrors},
	}
}

// poolErrorNote explains the pool sampling errors with the first of them.
func poolErrorNote(r *report.Report) string {
	if r.PoolSampleError == "" {
		return "namespaces that could not be opened or scanned"
	}
	return "namespaces that could not be opened or scanned; the first: " + r.PoolSampleError
}

func rowOf(p report.Process) procRow {
	row := procRow{PID: p.PID, Comm: p.Comm, Cmdline: p.Cmdline, Failures: p.Failures, EventsMiss: p.EventsMissed}
	if len(row.Cmdline) > maxCmdline {
		row.Cmdline = strings.ToValidUTF8(row.Cmdline[:maxCmdline], "") + "…"
	}
	if len(p.Patterns) > 0 {
		row.Top = p.Patterns[0].Pattern
	}
	return row
}

// procViewOf shows escaped process p; orig is the same process unescaped,
// whose pressure snapshot escapes its own text.
func procViewOf(p, orig report.Process) procView {
	pv := procView{Process: p}
	var errs []string
	for _, name := range slices.Sorted(maps.Keys(p.Errors)) {
		errs = append(errs, fmt.Sprintf("%s %d", name, p.Errors[name]))
	}
	pv.Errors = strings.Join(errs, ", ")
	for i, pat := range p.Patterns {
		pat := patternView{PatternEntry: pat}
		if pat.PatternEntry.Pressure != nil {
			pat.Pressure = orig.Patterns[i].Pressure.Text() // Text escapes
		}
		for _, h := range pat.PatternEntry.Holders {
			pat.Holders = append(pat.Holders, fmt.Sprintf("pid %d %s: %d sockets", h.PID, h.Comm, h.Sockets))
		}
		pv.Patterns = append(pv.Patterns, pat)
	}
	return pv
}

// sysctlsOf is each namespace's sysctls once, by namespace.
func sysctlsOf(procs []report.Process) []netns.Sysctls {
	seen := map[uint64]bool{}
	var out []netns.Sysctls
	for _, p := range procs {
		if p.Sysctls == nil || seen[p.Netns] {
			continue
		}
		seen[p.Netns] = true
		s := *p.Sysctls
		if s.Netns == 0 {
			s.Netns = p.Netns
		}
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b netns.Sysctls) int { return cmp.Compare(a.Netns, b.Netns) })
	return out
}

// axis is the shared time axis of every chart.
type axis struct {
	Start, End time.Time
	Ticks      []tick
	Caption    string
}

type tick struct {
	X             float64
	Label, Anchor string
}

// Chart geometry, in SVG user units.
const (
	chartW  = 900.0
	plotL   = 64.0
	plotR   = 890.0
	plotW   = plotR - plotL
	plotTop = 12.0
	plotH   = 120.0
	chartH  = plotTop + plotH + 34
	nTicks  = 6
)

func newAxis(r *report.Report) axis {
	var a axis
	extend := func(t time.Time) {
		if a.Start.IsZero() || t.Before(a.Start) {
			a.Start = t
		}
		if t.After(a.End) {
			a.End = t
		}
	}
	if start, err := time.Parse(time.RFC3339Nano, r.Timeline.Start); err == nil {
		step := time.Duration(max(1, r.Timeline.StepSeconds)) * time.Second
		extend(start)
		extend(start.Add(time.Duration(r.Timeline.Steps) * step))
	}
	for _, s := range r.PoolSamples {
		if t, err := time.Parse(time.RFC3339Nano, s.Time); err == nil {
			extend(t)
		}
	}
	if a.Start.IsZero() {
		return a
	}
	if a.End.Sub(a.Start) < time.Second {
		a.End = a.Start.Add(time.Second)
	}
	layout := "15:04:05"
	if a.End.Sub(a.Start) < 10*time.Second {
		layout = "15:04:05.0" // a short report: the ticks are apart by less than a second
	}
	for i := range nTicks {
		f := float64(i) / float64(nTicks-1)
		t := a.Start.Add(time.Duration(f * float64(a.End.Sub(a.Start))))
		tk := tick{X: round2(plotL + f*plotW), Label: t.UTC().Format(layout), Anchor: "middle"}
		switch i {
		case 0:
			tk.Anchor = "start"
		case nTicks - 1:
			tk.Anchor = "end"
		}
		a.Ticks = append(a.Ticks, tk)
	}
	a.Caption = fmt.Sprintf("%s to %s UTC (%s)", a.Start.UTC().Format("2006-01-02 15:04:05"),
		a.End.UTC().Format("15:04:05"), a.End.Sub(a.Start).Round(time.Second))
	return a
}

// x is t's position on the axis.
func (a axis) x(t time.Time) float64 {
	span := a.End.Sub(a.Start)
	if span <= 0 {
		return plotL
	}
	return plotL + float64(t.Sub(a.Start))/float64(span)*plotW
}

// round2 keeps coordinates short in the file.
func round2(f float64) float64 {
	s := strconv.FormatFloat(f, 'f', 1, 64)
	r, _ := strconv.ParseFloat(s, 64)
	return r
}
