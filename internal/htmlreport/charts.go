package htmlreport

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/portsleuth/portsleuth/internal/report"
)

// maxColumns bounds the bars of a chart: a long axis sums steps per bar.
const maxColumns = 600

// palette colours the (pattern, errno) pairs, the same pair alike in every chart.
var palette = []string{"#d62728", "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"}

// timelineChart is one process's failures over time.
type timelineChart struct {
	frame
	ID       string
	PID      uint32
	StartNs  uint64
	Comm     string
	Total    uint64
	Peak     uint64
	Title    string
	Desc     string
	Series   []seriesView
	YLabel   string
	Ticks    []tick
	Rows     []tableRow
	RowsMore int
	// Column is how long one bar is.
	Column string
}

// seriesView is one (pattern, errno) of a chart: its JSON counts in data-
// attributes, its bars as rectangles.
type seriesView struct {
	Pattern, Errno, Color string
	Offset                int
	Counts                string // the JSON series' counts, comma-separated
	Total                 uint64
	Bars                  []bar
}

type bar struct{ X, Y, W, H float64 }

type tableRow struct {
	Time  string
	Cells []uint64
	Total uint64
}

// frame is the geometry of a chart's plot, for the template; every chart
// embeds it.
type frame struct{}

func (frame) W() float64          { return chartW }
func (frame) H() float64          { return chartH }
func (frame) PlotL() float64      { return plotL }
func (frame) PlotR() float64      { return plotR }
func (frame) PlotTop() float64    { return plotTop }
func (frame) PlotBottom() float64 { return plotTop + plotH }
func (frame) TickY() float64      { return plotTop + plotH + 16 }

// timelineCharts draws the processes with the most failures, at most MaxCharts.
func timelineCharts(r *report.Report, a axis) []timelineChart {
	tl := r.Timeline
	start, err := time.Parse(time.RFC3339Nano, tl.Start)
	if err != nil || tl.Steps <= 0 {
		return nil
	}
	step := time.Duration(max(1, tl.StepSeconds)) * time.Second
	byProc := map[procID][]report.TimelineSeries{}
	for _, s := range tl.Series {
		k := procID{s.PID, s.StartNs}
		byProc[k] = append(byProc[k], s)
	}
	colours := colourMap(tl.Series)
	var charts []timelineChart
	for _, p := range r.Processes {
		series := byProc[procID{p.PID, p.StartNs}]
		if len(series) == 0 {
			continue
		}
		if len(charts) >= MaxCharts {
			break
		}
		c := newTimelineChart(fmt.Sprintf("tl-%d", len(charts)), p, series, colours, start, step, tl.Steps, a)
		charts = append(charts, c)
	}
	return charts
}

type procID struct {
	pid   uint32
	start uint64
}

func colourMap(series []report.TimelineSeries) map[string]string {
	var keys []string
	for _, s := range series {
		k := s.Pattern + " " + s.Errno
		if !slices.Contains(keys, k) {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	m := map[string]string{}
	for i, k := range keys {
		m[k] = palette[i%len(palette)]
	}
	return m
}

func newTimelineChart(id string, p report.Process, series []report.TimelineSeries, colours map[string]string, start time.Time, step time.Duration, steps int, a axis) timelineChart {
	per := (steps + maxColumns - 1) / maxColumns // steps per bar
	cols := (steps + per - 1) / per
	sums := make([][]uint64, len(series)) // per series, per column
	colTotal := make([]uint64, cols)
	c := timelineChart{ID: id, PID: p.PID, StartNs: p.StartNs, Comm: p.Comm, Ticks: a.Ticks}
	for i, s := range series {
		sums[i] = make([]uint64, cols)
		for j, n := range s.Counts {
			col := (s.Offset + j) / per
			if col >= 0 && col < cols {
				sums[i][col] += uint64(n)
				colTotal[col] += uint64(n)
			}
		}
		c.Total += s.Total
	}
	c.Peak = max(1, slices.Max(colTotal))
	c.Column = (time.Duration(per) * step).String()
	base := make([]uint64, cols)
	for i, s := range series {
		sv := seriesView{Pattern: s.Pattern, Errno: s.Errno, Color: colours[s.Pattern+" "+s.Errno],
			Offset: s.Offset, Counts: joinCounts(s.Counts), Total: s.Total}
		for col, n := range sums[i] {
			if n == 0 {
				continue
			}
			t0 := start.Add(time.Duration(col*per) * step)
			x0, x1 := a.x(t0), a.x(t0.Add(time.Duration(per)*step))
			y0 := plotTop + plotH - float64(base[col]+n)/float64(c.Peak)*plotH
			h := float64(n) / float64(c.Peak) * plotH
			sv.Bars = append(sv.Bars, bar{round2(x0), round2(y0), round2(max(0.6, (x1-x0)*0.9)), round2(max(0.6, h))})
			base[col] += n
		}
		c.Series = append(c.Series, sv)
	}
	c.YLabel = fmt.Sprintf("%d per %s", c.Peak, c.Column)
	c.Title = fmt.Sprintf("Failures of pid %d %s over time", p.PID, p.Comm)
	c.Desc = timelineDesc(c, start, step, per, colTotal)
	c.Rows, c.RowsMore = timelineRows(series, start, step, steps)
	return c
}

func joinCounts(counts []uint32) string {
	var b strings.Builder
	for i, n := range counts {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.FormatUint(uint64(n), 10))
	}
	return b.String()
}

// timelineDesc says in words what the chart shows.
func timelineDesc(c timelineChart, start time.Time, step time.Duration, per int, colTotal []uint64) string {
	peakAt := slices.Index(colTotal, c.Peak)
	first := slices.IndexFunc(colTotal, func(n uint64) bool { return n > 0 })
	last := first
	for i, n := range colTotal {
		if n > 0 {
			last = i
		}
	}
	at := func(col int) string {
		return start.Add(time.Duration(col*per) * step).UTC().Format("15:04:05")
	}
	var parts []string
	for _, s := range c.Series {
		parts = append(parts, fmt.Sprintf("%s %s: %d", s.Pattern, s.Errno, s.Total))
	}
	return fmt.Sprintf("%d failure events from %s to %s UTC, at most %d per %s (at %s). By pattern and errno: %s.",
		c.Total, at(first), at(last), c.Peak, c.Column, at(peakAt), strings.Join(parts, "; "))
}

// timelineRows are the steps with failures, one row each, capped.
func timelineRows(series []report.TimelineSeries, start time.Time, step time.Duration, steps int) ([]tableRow, int) {
	cells := map[int][]uint64{}
	for i, s := range series {
		for j, n := range s.Counts {
			if n == 0 {
				continue
			}
			at := s.Offset + j
			if cells[at] == nil {
				cells[at] = make([]uint64, len(series))
			}
			cells[at][i] += uint64(n)
		}
	}
	at := make([]int, 0, len(cells))
	for k := range cells {
		at = append(at, k)
	}
	slices.Sort(at)
	more := max(0, len(at)-MaxTableRows)
	at = at[:len(at)-more]
	rows := make([]tableRow, 0, len(at))
	for _, k := range at {
		row := tableRow{Time: start.Add(time.Duration(k) * step).UTC().Format("15:04:05"), Cells: cells[k]}
		for _, n := range row.Cells {
			row.Total += n
		}
		rows = append(rows, row)
	}
	return rows, more
}

// poolChart is one pool's occupancy over time.
type poolChart struct {
	frame
	ID, Title, Desc string
	Kind, Proto     string
	Netns           uint64
	Local, Dest     string
	Size            int
	Samples         int
	Lines           []poolLine
	Rows            []report.PoolSample
	RowsNote        string
	Ticks           []tick
}

type poolLine struct {
	Name, Color, Points string
	Last                int
}

type poolKey struct {
	netns              uint64
	kind, proto, local string
	dest               string
}

// MaxPoolCharts bounds the pool charts: as many pools as a live report
// samples. A recording may hold samples of any number of pools.
const MaxPoolCharts = report.MaxSampledNamespaces * report.MaxSampledPools

// timedSample is a sample with its time parsed once: RFC 3339 strings do
// not sort in time order ("...01Z" after "...01.5Z", offsets).
type timedSample struct {
	at time.Time // zero when the time does not parse
	report.PoolSample
}

// poolsLeftOut are the pools past MaxPoolCharts, not charted.
type poolsLeftOut struct {
	Pools, Samples int
}

// poolCharts groups the samples by pool, first sampled first, and charts at
// most MaxPoolCharts of them. A connect pool is one per destination: its
// source is the fullest at each sample.
func poolCharts(samples []report.PoolSample, a axis) ([]poolChart, poolsLeftOut) {
	groups := map[poolKey][]timedSample{}
	var order []poolKey
	for _, s := range samples {
		k := poolKey{s.Netns, s.Kind, s.Proto, s.Local, s.Dest}
		if s.Kind == "connect" {
			k.local = ""
		}
		if groups[k] == nil {
			order = append(order, k)
		}
		at, _ := time.Parse(time.RFC3339Nano, s.Time)
		groups[k] = append(groups[k], timedSample{at, s})
	}
	for _, g := range groups {
		slices.SortStableFunc(g, func(x, y timedSample) int { return x.at.Compare(y.at) })
	}
	slices.SortStableFunc(order, func(x, y poolKey) int { return groups[x][0].at.Compare(groups[y][0].at) })
	var left poolsLeftOut
	if len(order) > MaxPoolCharts {
		for _, k := range order[MaxPoolCharts:] {
			left.Pools++
			left.Samples += len(groups[k])
		}
		order = order[:MaxPoolCharts]
	}
	var charts []poolChart
	for i, k := range order {
		charts = append(charts, newPoolChart(fmt.Sprintf("pool-%d", i), k, groups[k], a))
	}
	return charts, left
}

// newPoolChart charts one pool's samples, in time order.
func newPoolChart(id string, k poolKey, samples []timedSample, a axis) poolChart {
	c := poolChart{ID: id, Kind: k.kind, Proto: k.proto, Netns: k.netns, Local: k.local, Dest: k.dest, Samples: len(samples), Ticks: a.Ticks}
	for _, s := range samples {
		c.Size = max(c.Size, s.Size)
	}
	per := (len(samples) + maxColumns - 1) / maxColumns
	var shown []timedSample
	for i := 0; i < len(samples); i += per {
		shown = append(shown, samples[i])
	}
	if last := samples[len(samples)-1]; shown[len(shown)-1] != last {
		shown = append(shown, last)
	}
	for _, s := range shown {
		c.Rows = append(c.Rows, s.PoolSample)
	}
	if per > 1 {
		c.RowsNote = fmt.Sprintf("every %d%s sample of %d (all are in the JSON report)", per, ordinal(per), len(samples))
	}
	first, last := samples[0].PoolSample, samples[len(samples)-1].PoolSample
	c.Lines = poolLines(k.kind, shown, last, c.Size, a)
	where := "bind(" + k.local + ":0) pool (" + k.proto + ")"
	if k.kind == "connect" {
		where = "connect pool to " + k.dest
	}
	c.Title = fmt.Sprintf("Occupancy of the %s in netns %d", where, k.netns)
	c.Desc = fmt.Sprintf("%d samples of %d ports from %s to %s: used %d to %d (peak %d), free %d at the end; TIME_WAIT %d, established %d at the end.",
		len(samples), c.Size, first.Time, last.Time, first.Used, last.Used, peakUsed(samples), last.Free, last.TimeWait, last.Established)
	return c
}

type lineSpec struct {
	name, color string
	get         func(report.PoolSample) int
}

var poolLineSpecs = []lineSpec{
	{"used", "#d62728", func(s report.PoolSample) int { return s.Used }},
	{"TIME_WAIT", "#ff7f0e", func(s report.PoolSample) int { return s.TimeWait }},
	{"established", "#1f77b4", func(s report.PoolSample) int { return s.Established }},
	{"free", "#2ca02c", func(s report.PoolSample) int { return s.Free }},
}

// poolLines draws the shown samples, a line per count; last gives the legend.
func poolLines(kind string, shown []timedSample, last report.PoolSample, size int, a axis) []poolLine {
	specs := poolLineSpecs
	if kind == "bind" {
		specs = []lineSpec{specs[0], specs[3]} // a bind pool's ports are held by bind() owners: no states
	}
	var lines []poolLine
	for _, l := range specs {
		var pts strings.Builder
		for _, s := range shown {
			if s.at.IsZero() {
				continue
			}
			y := plotTop + plotH - float64(l.get(s.PoolSample))/float64(max(1, size))*plotH
			fmt.Fprintf(&pts, "%g,%g ", round2(a.x(s.at)), round2(y))
		}
		lines = append(lines, poolLine{Name: l.name, Color: l.color, Points: strings.TrimSpace(pts.String()), Last: l.get(last)})
	}
	return lines
}

func peakUsed(samples []timedSample) int {
	peak := 0
	for _, s := range samples {
		peak = max(peak, s.Used)
	}
	return peak
}

func ordinal(n int) string {
	switch {
	case n%100 >= 11 && n%100 <= 13:
		return "th"
	case n%10 == 1:
		return "st"
	case n%10 == 2:
		return "nd"
	case n%10 == 3:
		return "rd"
	}
	return "th"
}
