package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
	"github.com/cilium/ebpf"
	"golang.org/x/net/html"
	"golang.org/x/sys/unix"

	"github.com/portsleuth/portsleuth/internal/htmlreport"
	"github.com/portsleuth/portsleuth/internal/report"
)

// htmlRecordings are the recordings the HTML report is rendered from: the
// seed scenarios and the hand-written ones of testdata/html.
func htmlRecordings(t *testing.T) []string {
	t.Helper()
	var all []string
	for _, pattern := range []string{"../../testdata/recordings/*.json", "../../testdata/html/*.json"} {
		names, err := filepath.Glob(pattern)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, names...)
	}
	if len(all) < 10 {
		t.Fatalf("found only %d recordings", len(all))
	}
	return all
}

// replayAs runs `report --replay rec -o format --file` and returns the file.
func replayAs(t *testing.T, rec, format, dir string) []byte {
	t.Helper()
	name := strings.TrimSuffix(filepath.Base(rec), ".json")
	file := filepath.Join(dir, name+"."+format)
	var stdout, stderr bytes.Buffer
	args := []string{"report", "--replay", rec, "-o", format, "--file", file}
	if code := Run(args, &stdout, &stderr); code != 0 {
		t.Fatalf("portsleuth %s: exit %d: %s", strings.Join(args, " "), code, stderr.String())
	}
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The page of every recording has its sections, and its charts draw the
// JSON report's numbers: each series' counts, each chart's total, and each
// process's events (its failures less those missed).
func TestHTMLReportMatchesJSON(t *testing.T) {
	dir := t.TempDir()
	for _, rec := range htmlRecordings(t) {
		t.Run(strings.TrimSuffix(filepath.Base(rec), ".json"), func(t *testing.T) {
			var r report.Report
			if err := json.Unmarshal(replayAs(t, rec, "json", dir), &r); err != nil {
				t.Fatal(err)
			}
			page := replayAs(t, rec, "html", dir)
			doc, err := html.Parse(bytes.NewReader(page))
			if err != nil {
				t.Fatal(err)
			}
			checkSections(t, doc)
			checkCharts(t, doc, r)
			checkCounters(t, doc, r)
			checkAccessible(t, doc)
		})
	}
}

func checkSections(t *testing.T, doc *html.Node) {
	t.Helper()
	for _, id := range []string{"counts", "headline", "timeline", "pools", "sysctls", "processes"} {
		if htmlFind(doc, func(n *html.Node) bool { return n.Data == "section" && htmlAttr(n, "id") == id }) == nil {
			t.Errorf("no section %q", id)
		}
	}
}

func checkCharts(t *testing.T, doc *html.Node, r report.Report) {
	t.Helper()
	series := map[uint32][]report.TimelineSeries{}
	for _, s := range r.Timeline.Series {
		series[s.PID] = append(series[s.PID], s)
	}
	charts := htmlFindAll(doc, func(n *html.Node) bool { return n.Data == "figure" && strings.HasPrefix(htmlAttr(n, "id"), "tl-") })
	if want := min(len(series), htmlreport.MaxCharts); len(charts) != want {
		t.Errorf("%d timeline charts, want %d", len(charts), want)
	}
	for _, fig := range charts {
		pid := htmlAtoi(t, htmlAttr(fig, "data-pid"))
		p := htmlProcess(r, uint32(pid))
		if p == nil {
			t.Fatalf("chart of pid %d, which is not in the report", pid)
		}
		want := series[uint32(pid)]
		groups := htmlFindAll(fig, func(n *html.Node) bool { return n.Data == "g" && htmlAttr(n, "class") == "series" })
		if len(groups) != len(want) {
			t.Fatalf("pid %d: %d series drawn, JSON has %d", pid, len(groups), len(want))
		}
		var total uint64
		for i, g := range groups {
			s := want[i]
			if htmlAttr(g, "data-pattern") != s.Pattern || htmlAttr(g, "data-errno") != s.Errno ||
				htmlAtoi(t, htmlAttr(g, "data-offset")) != s.Offset || htmlAttr(g, "data-counts") != joinUint32(s.Counts) {
				t.Errorf("pid %d series %d: drawn %s %s @%s [%s], JSON %+v", pid, i, htmlAttr(g, "data-pattern"), htmlAttr(g, "data-errno"),
					htmlAttr(g, "data-offset"), htmlAttr(g, "data-counts"), s)
			}
			nonzero := 0
			for _, c := range s.Counts {
				if c > 0 {
					nonzero++
				}
			}
			// One bar per step with failures (an axis this short needs no summing).
			if r.Timeline.Steps <= 600 && len(htmlFindAll(g, func(n *html.Node) bool { return n.Data == "rect" })) != nonzero {
				t.Errorf("pid %d series %d: bars do not match the %d steps with failures", pid, i, nonzero)
			}
			total += s.Total
		}
		if got := uint64(htmlAtoi(t, htmlAttr(fig, "data-total"))); got != total || total != p.Failures-p.EventsMissed {
			t.Errorf("pid %d: chart total %d, series %d, failures %d less %d missed", pid, got, total, p.Failures, p.EventsMissed)
		}
		if table := tableTotal(t, fig); table != total {
			t.Errorf("pid %d: the data table sums to %d, the series to %d", pid, table, total)
		}
	}
}

// tableTotal sums the last column of a chart's data table.
func tableTotal(t *testing.T, fig *html.Node) uint64 {
	var sum uint64
	for _, tr := range htmlFindAll(fig, func(n *html.Node) bool { return n.Data == "tr" && n.Parent.Data == "tbody" }) {
		cells := htmlFindAll(tr, func(n *html.Node) bool { return n.Data == "td" })
		sum += uint64(htmlAtoi(t, htmlText(cells[len(cells)-1])))
	}
	return sum
}

// checkCounters finds the losses in plain sight, with the JSON's numbers.
func checkCounters(t *testing.T, doc *html.Node, r report.Report) {
	t.Helper()
	var missed uint64
	for _, p := range r.Processes {
		missed += p.EventsMissed
	}
	want := map[string]uint64{"lost events": r.LostEvents, "events missed": missed, "enrichment dropped": r.EnrichmentDropped,
		"pool samples": uint64(len(r.PoolSamples)), "processes": uint64(len(r.Processes)),
		"pool samples dropped": r.PoolSamplesDropped, "pools unsampled": r.PoolsUnsampled, "pool sample errors": r.PoolSampleErrors}
	for _, li := range htmlFindAll(doc, func(n *html.Node) bool {
		return n.Data == "li" && n.Parent != nil && htmlAttr(n.Parent, "class") == "counters"
	}) {
		v := htmlFind(li, func(n *html.Node) bool { return n.Data == "span" && htmlAttr(n, "class") == "v" })
		label := strings.TrimSpace(v.NextSibling.Data)
		if n, ok := want[label]; ok {
			if got := uint64(htmlAtoi(t, htmlText(v))); got != n {
				t.Errorf("%s: page %d, JSON %d", label, got, n)
			}
			if (n > 0) != strings.Contains(htmlAttr(li, "class"), "warn") && label != "processes" && label != "pool samples" {
				t.Errorf("%s %d: highlighted %q", label, n, htmlAttr(li, "class"))
			}
			delete(want, label)
		}
	}
	if len(want) > 0 {
		t.Errorf("counters missing: %v", want)
	}
}

// checkAccessible: every chart is an image named by its title and
// described by its desc, and has a data table.
func checkAccessible(t *testing.T, doc *html.Node) {
	t.Helper()
	for _, svg := range htmlFindAll(doc, func(n *html.Node) bool { return n.Data == "svg" }) {
		if htmlAttr(svg, "role") != "img" {
			t.Errorf("an svg without role=img")
		}
		for _, id := range strings.Fields(htmlAttr(svg, "aria-labelledby")) {
			el := htmlFind(svg, func(n *html.Node) bool { return htmlAttr(n, "id") == id })
			if el == nil || (el.Data != "title" && el.Data != "desc") || strings.TrimSpace(htmlText(el)) == "" {
				t.Errorf("aria-labelledby %q names no title or desc with text", id)
			}
		}
		if htmlFind(svg.Parent, func(n *html.Node) bool { return n.Data == "details" }) == nil {
			t.Errorf("chart %s has no data table", htmlAttr(svg.Parent, "id"))
		}
	}
}

func htmlProcess(r report.Report, pid uint32) *report.Process {
	for i := range r.Processes {
		if r.Processes[i].PID == pid {
			return &r.Processes[i]
		}
	}
	return nil
}

func htmlFind(n *html.Node, match func(*html.Node) bool) *html.Node {
	for d := range n.Descendants() {
		if d.Type == html.ElementNode && match(d) {
			return d
		}
	}
	return nil
}

func htmlFindAll(n *html.Node, match func(*html.Node) bool) []*html.Node {
	var out []*html.Node
	for d := range n.Descendants() {
		if d.Type == html.ElementNode && match(d) {
			out = append(out, d)
		}
	}
	return out
}

func htmlAttr(n *html.Node, key string) string {
	for _, a := range n.Attr {
		if a.Key == key {
			return a.Val
		}
	}
	return ""
}

func htmlText(n *html.Node) string {
	var b strings.Builder
	for d := range n.Descendants() {
		if d.Type == html.TextNode {
			b.WriteString(d.Data)
		}
	}
	return b.String()
}

func htmlAtoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil {
		t.Fatalf("not a number: %q", s)
	}
	return n
}

func joinUint32(counts []uint32) string {
	parts := make([]string, len(counts))
	for i, c := range counts {
		parts[i] = strconv.FormatUint(uint64(c), 10)
	}
	return strings.Join(parts, ",")
}

// -o html refuses a terminal (the page is for a browser) but writes to a
// pipe or a file.
func TestHTMLReportNeedsAFileOnATerminal(t *testing.T) {
	rec := "../../testdata/recordings/port-in-use.json"
	tty := openPTY(t)
	var stderr bytes.Buffer
	if code := Run([]string{"report", "--replay", rec, "-o", "html"}, tty, &stderr); code != 2 {
		t.Errorf("exit %d on a terminal, want 2 (usage)", code)
	}
	if !strings.Contains(stderr.String(), "--file") {
		t.Errorf("the usage error does not say what to do: %s", stderr.String())
	}
	var stdout bytes.Buffer
	stderr.Reset()
	if code := Run([]string{"report", "--replay", rec, "-o", "html"}, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d to a pipe: %s", code, stderr.String())
	}
	if !bytes.HasPrefix(stdout.Bytes(), []byte("<!DOCTYPE html>")) {
		t.Errorf("stdout is not a page: %.80q", stdout.String())
	}
	stderr.Reset()
	if code := Run([]string{"report", "--replay", rec, "-o", "yaml"}, &stdout, &stderr); code != 2 {
		t.Errorf("-o yaml: exit %d, want 2", code)
	}
}

// openPTY opens the terminal side of a new pseudo-terminal.
func openPTY(t *testing.T) *os.File {
	t.Helper()
	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	t.Cleanup(func() { master.Close() })
	if err := unix.IoctlSetPointerInt(int(master.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(master.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	tty, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tty.Close() })
	return tty
}

const chromiumPath = "/usr/bin/chromium"

// A real browser loads each page with no console message, no exception, no
// dialog and no request but the file itself, and takes a screenshot
// (also into $PORTSLEUTH_SCREENSHOT_DIR when set).
func TestHTMLReportInBrowser(t *testing.T) {
	if _, err := os.Stat(chromiumPath); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI needs %s (make deps installs it): %v", chromiumPath, err)
		}
		t.Skipf("no %s (make deps installs Debian's chromium): %v", chromiumPath, err)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(chromiumPath), chromedp.Headless,
		chromedp.NoSandbox, chromedp.DisableGPU, chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1200, 900))
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelAlloc()
	browser, cancelBrowser := chromedp.NewContext(alloc)
	defer cancelBrowser()
	if err := chromedp.Do(browser); err != nil {
		t.Fatalf("starting %s: %v", chromiumPath, err)
	}
	dir := t.TempDir()
	t.Run("the checks catch a bad page", func(t *testing.T) {
		bad := filepath.Join(dir, "bad.html")
		if err := os.WriteFile(bad, []byte(badPage), 0o600); err != nil {
			t.Fatal(err)
		}
		requests, problems, _ := visit(t, browser, "file://"+bad)
		if len(requests) < 2 || len(problems) < 2 {
			t.Errorf("a page with an image, a console call and an exception: requests %q, problems %q", requests, problems)
		}
	})
	for _, rec := range htmlRecordings(t) {
		name := strings.TrimSuffix(filepath.Base(rec), ".json")
		t.Run(name, func(t *testing.T) {
			replayAs(t, rec, "html", dir)
			loadInBrowser(t, browser, filepath.Join(dir, name+".html"), name)
		})
	}
}

// browserEvents keeps what a page did; the listener runs on chromedp's goroutine.
type browserEvents struct {
	mu       sync.Mutex
	requests []string
	problems []string
}

func (b *browserEvents) add(ev any) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch e := ev.(type) {
	case *network.EventRequestWillBeSent:
		b.requests = append(b.requests, e.Request.URL)
	case *runtime.EventConsoleAPICalled:
		b.problems = append(b.problems, fmt.Sprintf("console.%s called", e.Type))
	case *runtime.EventExceptionThrown:
		b.problems = append(b.problems, "exception: "+e.ExceptionDetails.Text)
	case *log.EventEntryAdded:
		if e.Entry.Level == log.EntryLevelError || e.Entry.Level == log.EntryLevelWarning {
			b.problems = append(b.problems, fmt.Sprintf("log %s: %s (%s)", e.Entry.Level, e.Entry.Text, e.Entry.URL))
		}
	case *page.EventJavascriptDialogOpening:
		b.problems = append(b.problems, "a dialog opened: "+e.Message)
	}
}

func loadInBrowser(t *testing.T, browser context.Context, file, name string) {
	t.Helper()
	url := "file://" + file
	requests, problems, png := visit(t, browser, url)
	for _, p := range problems {
		t.Errorf("%s", p)
	}
	if len(requests) != 1 || requests[0] != url {
		t.Errorf("requests %q, want only %s", requests, url)
	}
	if !bytes.HasPrefix(png, []byte("\x89PNG\r\n\x1a\n")) {
		t.Fatalf("the screenshot is not a PNG: %.8q", png)
	}
	dirs := []string{t.TempDir()}
	if d := os.Getenv("PORTSLEUTH_SCREENSHOT_DIR"); d != "" {
		dirs = append(dirs, d)
	}
	for _, d := range dirs {
		if err := os.WriteFile(filepath.Join(d, name+".png"), png, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// visit loads url in a new tab and returns the requests it made, the
// problems it showed and a screenshot.
func visit(t *testing.T, browser context.Context, url string) ([]string, []string, []byte) {
	t.Helper()
	tab, cancelTab := chromedp.NewContext(browser)
	defer cancelTab()
	if err := chromedp.Do(tab); err != nil {
		t.Fatal(err)
	}
	var seen browserEvents
	if err := chromedp.Listen(tab, seen.add); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(tab, time.Minute)
	defer cancel()
	if err := chromedp.Do(ctx, chromedp.Navigate(url)); err != nil {
		t.Fatalf("loading %s: %v", url, err)
	}
	// The events of the load arrive before the reply to a later command.
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	seen.mu.Lock()
	defer seen.mu.Unlock()
	return slices.Clone(seen.requests), slices.Clone(seen.problems), png
}

// badPage would fail every check of loadInBrowser: it proves they can fail.
const badPage = `<!DOCTYPE html><html><head><title>bad</title></head><body>
<img src="missing.png" alt=""><script>console.log("hello"); throw new Error("boom")</script></body></html>`

// A live report samples the pool its first failure drew from, once a
// second, and the samples show the pool filling; the page draws them. The
// script moves on only when the test has seen the sampler scan: twice
// before the pool fills, twice after, however slow the host.
func TestHTMLReportLivePoolSamples(t *testing.T) {
	requireRoot(t)
	for _, tool := range []string{"unshare", "ip", "python3"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s: %v", tool, err)
		}
	}
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		t.Fatalf("enabling BPF run counts (how the test sees the sampler scan): %v", err)
	}
	defer stats.Close()
	var r report.Report
	if err := json.Unmarshal(livePoolReport(t, "json"), &r); err != nil {
		t.Fatal(err)
	}
	var used []int
	for _, s := range r.PoolSamples {
		if s.Kind == "bind" && s.Proto == "tcp" && s.Local == "127.0.0.1" && s.Size == 100 {
			used = append(used, s.Used)
		}
	}
	if len(used) < 2 || slices.Max(used) <= used[0] {
		t.Fatalf("bind pool of 127.0.0.1 sampled as used %v: want samples that rise (all: %+v)", used, r.PoolSamples)
	}
	t.Logf("bind pool of 127.0.0.1, used: %v", used)
	if r.PoolSamplingLosses != (report.PoolSamplingLosses{}) {
		t.Errorf("pool sampling lost something: %+v", r.PoolSamplingLosses)
	}
	if len(r.Timeline.Series) == 0 {
		t.Errorf("no timeline: %+v", r.Timeline)
	}
	doc, err := html.Parse(bytes.NewReader(livePoolReport(t, "html")))
	if err != nil {
		t.Fatal(err)
	}
	fig := htmlFind(doc, func(n *html.Node) bool { return n.Data == "figure" && htmlAttr(n, "data-kind") == "bind" })
	if fig == nil || htmlAtoi(t, htmlAttr(fig, "data-samples")) < 2 {
		t.Fatalf("the page draws no bind pool of 2 or more samples")
	}
}

// livePoolReport runs `report -o format -- fillPoolScript` and steps the
// script through its stages, each once the pool sampler has scanned it.
func livePoolReport(t *testing.T, format string) []byte {
	t.Helper()
	dir := t.TempDir()
	script := filepath.Join(dir, "fill.sh")
	if err := os.WriteFile(script, []byte(fillPoolScript), 0o755); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "report."+format)
	args := []string{"report", "-o", format, "--file", file, "--backend", testBackend(), "--", "unshare", "-n", "sh", script, dir}
	earlier := udpIteratorRuns(t) // another report's scanners are not this one's
	var stdout, stderr bytes.Buffer
	code := make(chan int, 1)
	go func() { code <- Run(args, &stdout, &stderr) }()
	// However the test ends, the script is let go and the report awaited.
	finished := false
	finish := func() int {
		for _, name := range []string{"fill", "done"} {
			if err := os.WriteFile(filepath.Join(dir, name), nil, 0o600); err != nil {
				t.Error(err)
			}
		}
		finished = true
		return <-code
	}
	defer func() {
		if !finished {
			finish()
		}
	}()
	waitForScans(t, "the empty pool", earlier, nil)
	if err := os.WriteFile(filepath.Join(dir, "fill"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	pollFor(t, "the script to fill the pool", func() bool {
		_, err := os.Stat(filepath.Join(dir, "filled"))
		return err == nil
	})
	waitForScans(t, "the full pool", earlier, udpIteratorRuns(t))
	if c := finish(); c != 0 {
		t.Fatalf("portsleuth %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), c, stdout.String(), stderr.String())
	}
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// waitForScans waits until one UDP socket-iterator program, not one of
// earlier, has run twice more than in since: twice, because the enricher's
// scanner also scans, once, at the script's one failure, while the
// sampler's scans every second. Each scan runs the program exactly once
// where there is no UDP socket (at the end of the walk), so runs are scans,
// and the second scan counted after since began after it.
func waitForScans(t *testing.T, what string, earlier, since map[ebpf.ProgramID]uint64) {
	t.Helper()
	pollFor(t, "the pool sampler to scan "+what, func() bool {
		for id, n := range udpIteratorRuns(t) {
			if _, ok := earlier[id]; !ok && n >= since[id]+2 {
				return true
			}
		}
		return false
	})
}

// pollFor polls cond until it holds or a generous deadline passes.
func pollFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(2 * time.Minute); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// udpIteratorRuns are the run counts (with BPF stats on) of the UDP socket
// iterator programs this process holds, by program.
func udpIteratorRuns(t *testing.T) map[ebpf.ProgramID]uint64 {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fdinfo")
	if err != nil {
		t.Fatal(err)
	}
	runs := map[ebpf.ProgramID]uint64{}
	for _, fd := range fds {
		info, err := os.ReadFile(filepath.Join("/proc/self/fdinfo", fd.Name()))
		if err != nil || !bytes.Contains(info, []byte("\nprog_type:")) {
			continue // closed meanwhile, or not a program
		}
		id, ok := fdinfoField(info, "prog_id:")
		if !ok {
			continue
		}
		if n, ok := udpIteratorRunCount(ebpf.ProgramID(id)); ok {
			runs[ebpf.ProgramID(id)] = n
		}
	}
	return runs
}

func udpIteratorRunCount(id ebpf.ProgramID) (uint64, bool) {
	p, err := ebpf.NewProgramFromID(id)
	if err != nil {
		return 0, false // unloaded meanwhile
	}
	defer p.Close()
	info, err := p.Info()
	if err != nil || info.Name != "ports_udp" {
		return 0, false
	}
	st, err := p.Stats()
	if err != nil {
		return 0, false
	}
	return st.RunCount, true
}

func fdinfoField(info []byte, key string) (uint64, bool) {
	for _, line := range strings.Split(string(info), "\n") {
		if v, ok := strings.CutPrefix(line, key); ok {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 32)
			return n, err == nil
		}
	}
	return 0, false
}

// fillPoolScript runs in a new network namespace, its stages gated on files
// the test creates in the directory $1: a bind() fails on a port in use (the
// first failure, of the bind pool of 127.0.0.1); on "fill", 60 of the
// pool's 100 ports are taken and "filled" is written; on "done" it exits.
// It makes no UDP socket (see waitForScans). Its waits are bounded, should
// the test die.
const fillPoolScript = `set -e
ip link set lo up
sysctl -qw net.ipv4.ip_local_port_range="40000 40099"
exec python3 - "$1" <<'EOF'
import os, socket, sys, time
d = sys.argv[1]
def wait_for(name):
    for _ in range(6000):
        if os.path.exists(os.path.join(d, name)):
            return
        time.sleep(0.05)
    sys.exit("no %s from the test in 300 s" % name)
listener = socket.socket()
listener.bind(("127.0.0.1", 5000))
listener.listen()
try:
    socket.socket().bind(("127.0.0.1", 5000))
except OSError:
    pass
wait_for("fill")
held = []
for _ in range(60):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()  # the socket iterators see listeners, not sockets only bound
    held.append(s)
open(os.path.join(d, "filled"), "w").close()
wait_for("done")
EOF
`
