package htmlreport

import (
	"bytes"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"golang.org/x/net/html"

	"github.com/portsleuth/portsleuth/internal/event"
	"github.com/portsleuth/portsleuth/internal/netns"
	"github.com/portsleuth/portsleuth/internal/pools"
	"github.com/portsleuth/portsleuth/internal/report"
)

var t0 = time.Date(2026, 11, 22, 3, 1, 34, 0, time.UTC)

// hostile are names and command lines a process may choose.
var hostile = []string{
	"</script><script>alert(1)</script>",
	"<svg onload=alert(2)>",
	`"><img src=x onerror=alert(3)>`,
	"\x1b]0;OWNED\x07\x1b[2J",
	"bad\xff\xfeutf8",
	"rtl\u202eexe.txt",
	"</title></desc></svg><iframe src=http://evil/>",
	"{{.R}}",
	"nul\x00byte",
}

// processes builds a report of n failing processes, each with a timeline
// series, a pattern and an example, named by name(i).
func processes(n int, name func(i int) string) report.Report {
	r := report.Report{Schema: report.Schema, Backend: "fentry", Started: t0.Format(time.RFC3339), DurationSeconds: 60,
		Timeline: report.Timeline{Start: t0.Format(time.RFC3339Nano), StepSeconds: 1, Steps: 60}}
	sys := &netns.Sysctls{Netns: 7, PortRange: [2]int{32768, 60999}, Source: name(0)}
	for i := range n {
		pid := uint32(1000 + i)
		p := report.Process{PID: pid, Comm: name(i), Cmdline: name(i) + " --flag " + strings.Repeat("x", 300), Netns: 7,
			Cgroup: "/" + name(i), Failures: uint64(n - i + 3), Errors: map[string]uint64{name(i): uint64(n - i + 3)}, Sysctls: sys,
			Patterns: []report.PatternEntry{{Pattern: "bind-any-before-connect", Count: uint64(n - i + 3), Evidence: name(i), Advice: name(i),
				Holders: []pools.Owner{{PID: int(pid), Comm: name(i), Sockets: 3}}}},
			Examples: []report.Record{{Time: t0.Format(time.RFC3339Nano), PID: pid, Comm: name(i), Thread: name(i), Op: "bind", Proto: "tcp", Family: "ipv4",
				Addr: "0.0.0.0:0", Errno: "EADDRINUSE", Pattern: "bind-any-before-connect", Options: []string{}}},
		}
		r.Processes = append(r.Processes, p)
		r.Timeline.Series = append(r.Timeline.Series, report.TimelineSeries{PID: pid, Comm: name(i), Pattern: "bind-any-before-connect",
			Errno: "EADDRINUSE", Total: uint64(n - i + 3), Offset: i % 50, Counts: []uint32{uint32(n - i), 1, 2}})
	}
	r.Culprits = []report.Culprit{{PID: 1000, Comm: name(0), Cmdline: name(0), Patterns: []string{},
		PortsHeld: report.PortsHeld{BindOwner: 5}, Victims: []report.Victim{{PID: 1001, Comm: name(1), Failures: 3}}}}
	for s := range 30 {
		r.PoolSamples = append(r.PoolSamples, report.PoolSample{Time: t0.Add(time.Duration(s) * time.Second).Format(time.RFC3339Nano),
			Netns: 7, Kind: "bind", Proto: "tcp", Local: "0.0.0.0", Used: s, Free: 100 - s, Size: 100})
	}
	return r
}

func render(t *testing.T, r report.Report) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := Write(&b, &r); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// Every process-controlled string ends up as inert, visible text.
func TestHostileStringsStayText(t *testing.T) {
	r := processes(len(hostile), func(i int) string { return hostile[i%len(hostile)] })
	r.Command = &report.Command{Argv: hostile, PID: 1}
	r.Inferred = hostile
	out := render(t, r)
	if !utf8.Valid(out) {
		t.Error("the page is not valid UTF-8")
	}
	for i, c := range out {
		if (c < 0x20 && c != '\n' && c != '\t') || c == 0x7f {
			t.Fatalf("raw control byte %#x at %d: %q", c, i, out[max(0, i-40):min(len(out), i+40)])
		}
	}
	if bytes.Contains(out, []byte("\u202e")) {
		t.Error("a bidi override reached the page")
	}
	doc, err := html.Parse(bytes.NewReader(out))
	if err != nil {
		t.Fatal(err)
	}
	for n := range doc.Descendants() {
		if n.Type != html.ElementNode {
			continue
		}
		switch n.Data {
		case "script", "iframe", "img", "object", "embed", "link":
			t.Errorf("element <%s> injected", n.Data)
		}
		for _, a := range n.Attr {
			if strings.HasPrefix(strings.ToLower(a.Key), "on") {
				t.Errorf("<%s %s=%q>: an event handler", n.Data, a.Key, a.Val)
			}
			if a.Key == "src" || a.Key == "href" {
				t.Errorf("<%s %s=%q>: a reference", n.Data, a.Key, a.Val)
			}
		}
	}
	text := textOf(doc)
	for _, want := range []string{"</script><script>alert(1)</script>", "<svg onload=alert(2)>", `\x1b]0;OWNED\x07\x1b[2J`, `bad\xff\xfeutf8`, `rtl\u202eexe.txt`, `nul\x00byte`} {
		if !strings.Contains(text, want) {
			t.Errorf("the page does not show %q as text", want)
		}
	}
}

func textOf(n *html.Node) string {
	var b strings.Builder
	for d := range n.Descendants() {
		if d.Type == html.TextNode {
			b.WriteString(d.Data)
		}
	}
	return b.String()
}

// 10,000 processes with long command lines still make a page of a few MB.
func TestTenThousandProcessesStaySmall(t *testing.T) {
	const n = 10000
	r := processes(n, func(i int) string { return fmt.Sprintf("worker-%d", i) })
	start := time.Now()
	out := render(t, r)
	t.Logf("%d processes: %d bytes in %s", n, len(out), time.Since(start).Round(time.Millisecond))
	if len(out) > 8<<20 {
		t.Errorf("%d bytes, want under 8 MB", len(out))
	}
	doc, err := html.Parse(bytes.NewReader(out))
	if err != nil {
		t.Fatal(err)
	}
	charts, rows := 0, 0
	for d := range doc.Descendants() {
		if d.Type == html.ElementNode && d.Data == "figure" && strings.HasPrefix(attr(d, "id"), "tl-") {
			charts++
		}
		if d.Type == html.ElementNode && d.Data == "table" && attr(d, "id") == "uncharted" {
			for r := range d.Descendants() {
				if r.Type == html.ElementNode && r.Data == "tr" {
					rows++
				}
			}
		}
	}
	if charts != MaxCharts || rows != MaxTableRows+1 {
		t.Errorf("%d charts, %d table rows: want %d and %d plus a header", charts, rows, MaxCharts, MaxTableRows)
	}
	if !strings.Contains(textOf(doc), fmt.Sprintf("%d more are in the JSON report", n-MaxCharts-MaxTableRows)) {
		t.Error("the page does not say how many processes it left out")
	}
}

func attr(n *html.Node, key string) string {
	for _, a := range n.Attr {
		if a.Key == key {
			return a.Val
		}
	}
	return ""
}

// A pool chart draws every sample (up to maxColumns) and lists them.
func TestPoolChartDrawsTheSamples(t *testing.T) {
	r := processes(2, func(i int) string { return fmt.Sprintf("p%d", i) })
	doc, err := html.Parse(bytes.NewReader(render(t, r)))
	if err != nil {
		t.Fatal(err)
	}
	var fig *html.Node
	for d := range doc.Descendants() {
		if d.Type == html.ElementNode && d.Data == "figure" && attr(d, "id") == "pool-0" {
			fig = d
		}
	}
	if fig == nil || attr(fig, "data-samples") != "30" || attr(fig, "data-kind") != "bind" {
		t.Fatalf("no pool chart of 30 samples: %+v", fig)
	}
	lines := map[string]int{}
	for d := range fig.Descendants() {
		if d.Type == html.ElementNode && d.Data == "polyline" {
			lines[attr(d, "data-line")] = len(strings.Fields(attr(d, "points")))
		}
	}
	if len(lines) != 2 || lines["used"] != 30 || lines["free"] != 30 {
		t.Errorf("lines %v: want used and free, 30 points each", lines)
	}
}

// Without lab results, each pattern's remedy section shows the advice and
// why there is no verdict; with them, the verdicts and any refuted claim.
func TestRemedySection(t *testing.T) {
	r := processes(1, func(int) string { return "advice text" })
	r.LabNote = "the remedy lab has not run on 6.1.0"
	out := string(render(t, r))
	if !strings.Contains(out, `data-section="remedy-verdicts"`) || !strings.Contains(out, "No lab verdict for this pattern: the remedy lab has not run on 6.1.0") {
		t.Error("no remedy section, or no reason for the missing verdict")
	}
	r.LabNote = ""
	r.Processes[0].Patterns[0].Lab = &report.LabCitation{Kernel: "6.1.0", Range: 64, Measured: "2026-11-30T09:00:00Z",
		Remedies: []report.LabRemedy{{Remedy: "ip_bind_address_no_port", Verdict: "fixes", Baseline: 64, Made: 256, Possible: 256}},
		Refuted:  []string{"the advice expects so_reuseaddr to be no-effect <b>"}}
	out = string(render(t, r))
	for _, want := range []string{`data-remedy="ip_bind_address_no_port" data-verdict="fixes"`, "64 → 256 of 256",
		"The lab refutes the advice on this kernel:</strong> the advice expects so_reuseaddr to be no-effect &lt;b&gt;"} {
		if !strings.Contains(out, want) {
			t.Errorf("no %q in the remedy section", want)
		}
	}
}

// The escaping copy keeps what only unexported fields hold: an example's
// holder shows its address. An address's zone, text the process chose, is
// escaped like every other string.
func TestHolderAddressShown(t *testing.T) {
	r := processes(1, func(int) string { return "p" })
	r.Processes[0].Examples[0].Holder = &event.Holder{State: "LISTEN", Local: netip.MustParseAddrPort("127.0.0.1:8080"), PID: 42, Comm: "holder"}
	r.Processes[0].Examples = append(r.Processes[0].Examples, r.Processes[0].Examples[0])
	r.Processes[0].Examples[1].Holder = &event.Holder{State: "LISTEN",
		Local: netip.AddrPortFrom(netip.MustParseAddr("fe80::1").WithZone("\x1b[2J"), 80)}
	out := render(t, r)
	doc, err := html.Parse(bytes.NewReader(out))
	if err != nil {
		t.Fatal(err)
	}
	text := textOf(doc)
	for _, want := range []string{"LISTEN 127.0.0.1:8080 pid 42 holder", `LISTEN [fe80::1%\x1b[2J]:80`} {
		if !strings.Contains(text, want) {
			t.Errorf("the page does not show %q", want)
		}
	}
	if strings.Contains(text, "invalid AddrPort") || bytes.Contains(out, []byte("\x1b")) {
		t.Error("an address lost, or its zone not escaped")
	}
}

// A recording may hold samples of any number of pools: the page charts
// MaxPoolCharts and says how many it left out.
func TestPoolChartsAreBounded(t *testing.T) {
	r := processes(1, func(int) string { return "p" })
	r.PoolSamples = nil
	const pools = MaxPoolCharts + 8
	for i := range pools {
		for s := range 3 {
			r.PoolSamples = append(r.PoolSamples, report.PoolSample{Time: t0.Add(time.Duration(i*3+s) * time.Second).Format(time.RFC3339Nano),
				Netns: 7, Kind: "bind", Proto: "tcp", Local: fmt.Sprintf("10.0.%d.%d", i/250, i%250+1), Used: s, Free: 100 - s, Size: 100})
		}
	}
	doc, err := html.Parse(bytes.NewReader(render(t, r)))
	if err != nil {
		t.Fatal(err)
	}
	charts := 0
	for d := range doc.Descendants() {
		if d.Type == html.ElementNode && d.Data == "figure" && strings.HasPrefix(attr(d, "id"), "pool-") {
			charts++
		}
	}
	if charts != MaxPoolCharts {
		t.Errorf("%d pool charts, want %d", charts, MaxPoolCharts)
	}
	if want := "8 more pools (24 samples) are not charted"; !strings.Contains(textOf(doc), want) {
		t.Errorf("the page does not say %q", want)
	}
}

// A pool's samples are drawn and listed in time order, whatever their
// RFC 3339 text: "...35Z" is before "...35.5Z", and an offset counts.
func TestPoolSamplesInTimeOrder(t *testing.T) {
	r := processes(1, func(int) string { return "p" })
	sample := func(at string, used int) report.PoolSample {
		return report.PoolSample{Time: at, Netns: 7, Kind: "bind", Proto: "tcp", Local: "0.0.0.0", Used: used, Free: 100 - used, Size: 100}
	}
	r.PoolSamples = []report.PoolSample{
		sample("2026-11-22T03:01:35.5Z", 3),
		sample("2026-11-22T03:01:35Z", 2),
		sample("2026-11-22T04:01:34.5+01:00", 1), // 03:01:34.5Z
	}
	doc, err := html.Parse(bytes.NewReader(render(t, r)))
	if err != nil {
		t.Fatal(err)
	}
	var used []string
	var xs []float64
	for d := range doc.Descendants() {
		if d.Type != html.ElementNode {
			continue
		}
		if d.Data == "tr" && d.Parent.Data == "tbody" && d.Parent.Parent.Parent.Parent.Data == "figure" && attr(d.Parent.Parent.Parent.Parent, "id") == "pool-0" {
			var cells []string
			for c := range d.Descendants() {
				if c.Type == html.ElementNode && c.Data == "td" {
					cells = append(cells, textOf(c))
				}
			}
			used = append(used, cells[2])
		}
		if d.Data == "polyline" && attr(d, "data-line") == "used" {
			for _, pt := range strings.Fields(attr(d, "points")) {
				var x, y float64
				if _, err := fmt.Sscanf(pt, "%g,%g", &x, &y); err != nil {
					t.Fatal(err)
				}
				xs = append(xs, x)
			}
		}
	}
	if strings.Join(used, " ") != "1 2 3" {
		t.Errorf("table rows have used %v, want 1 2 3", used)
	}
	if len(xs) != 3 || !slices.IsSorted(xs) {
		t.Errorf("the line's points go %v: want left to right", xs)
	}
}

// Pool sampling's losses are counters of their own, highlighted when not
// zero, the first error's text beside them.
func TestPoolSamplingLossCounters(t *testing.T) {
	r := processes(1, func(int) string { return "p" })
	check := func(want map[string]uint64, note string) {
		t.Helper()
		doc, err := html.Parse(bytes.NewReader(render(t, r)))
		if err != nil {
			t.Fatal(err)
		}
		for d := range doc.Descendants() {
			if d.Type != html.ElementNode || d.Data != "li" || attr(d.Parent, "class") != "counters" {
				continue
			}
			text := textOf(d)
			for label, n := range want {
				if !strings.Contains(text, label) {
					continue
				}
				if !strings.HasPrefix(text, fmt.Sprint(n)+label) {
					t.Errorf("counter %q, want %d %s", text, n, label)
				}
				if (n > 0) != (attr(d, "class") == "warn") {
					t.Errorf("counter %q highlighted %q", text, attr(d, "class"))
				}
				if label == "pool sample errors" && !strings.Contains(text, note) {
					t.Errorf("counter %q does not say %q", text, note)
				}
				delete(want, label)
			}
		}
		if len(want) > 0 {
			t.Errorf("no counters %v", want)
		}
	}
	check(map[string]uint64{"pool samples dropped": 0, "pools unsampled": 0, "pool sample errors": 0}, "")
	r.PoolSamplingLosses = report.PoolSamplingLosses{PoolSamplesDropped: 5, PoolsUnsampled: 2, PoolSampleErrors: 1,
		PoolSampleError: "sampling the pools of netns 9: \x1b[2J gone"}
	check(map[string]uint64{"pool samples dropped": 5, "pools unsampled": 2, "pool sample errors": 1}, `the first: sampling the pools of netns 9: \x1b[2J gone`)
}
