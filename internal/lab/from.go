package lab

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"time"

	"github.com/portsleuth/portsleuth/internal/netns"
	"github.com/portsleuth/portsleuth/internal/report"
)

// maxReportBytes bounds a report read by --from, as a recording is bounded.
const maxReportBytes = report.MaxRecordingBytes

// LoadProcesses reads the culprits of a `report -o json` output or of a
// recording (told apart by their keys), replaying a recording offline.
// Neither is ever held whole in memory as text.
func LoadProcesses(path string) ([]report.Process, error) {
	kind, err := sniff(path)
	if err != nil {
		return nil, err
	}
	if kind == "recording" {
		return replay(path)
	}
	f, err := report.OpenInput(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var r report.Report
	if err := json.NewDecoder(io.LimitReader(f, maxReportBytes)).Decode(&r); err != nil {
		return nil, fmt.Errorf("reading report %s: %w", path, err)
	}
	return r.Processes, nil
}

// sniff reads the top-level keys, one value at a time, until one says
// whether the file is a report ("processes", "backend") or a recording
// ("procs", "events").
func sniff(path string) (string, error) {
	f, err := report.OpenInput(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	dec := json.NewDecoder(io.LimitReader(f, maxReportBytes))
	bad := func(err error) (string, error) {
		return "", fmt.Errorf("reading %s: not a report or a recording: %w", path, err)
	}
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return bad(fmt.Errorf("not a JSON object (%v)", err))
	}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return bad(err)
		}
		switch t {
		case "processes", "backend":
			return "report", nil
		case "procs", "events":
			return "recording", nil
		}
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return bad(err)
		}
	}
	return "", fmt.Errorf("reading %s: neither a report (no \"processes\") nor a recording (no \"procs\")", path)
}

// replay builds the report of a recording; nothing of this host is read.
func replay(path string) ([]report.Process, error) {
	rec, err := report.LoadRecording(path)
	if err != nil {
		return nil, err
	}
	col := report.NewOfflineCollector()
	for i := range rec.Events {
		col.Observe(&rec.Events[i])
	}
	return report.Build(rec.Snapshot(), col, report.Filter{}, "replay", time.Time{}, 0).Processes, nil
}

// ErrNoShapes is a report with no failure the lab can reproduce.
var ErrNoShapes = errors.New("no culprit with a pattern the lab reproduces")

// ShapesFrom derives each culprit's shape for each of its patterns the lab
// knows; pattern "" or "all" keeps them all.
//
// Culprits of one shape are measured once, for the first of them (the
// processes come most failures first); at most MaxFromShapes distinct shapes
// are measured, and a note on the last says what was left out.
func ShapesFrom(procs []report.Process, pattern string) ([]Shape, error) {
	var out []Shape
	seen := map[string]int{} // shape without its process -> index in out
	left := 0
	for _, p := range procs {
		for _, pe := range p.Patterns {
			s, ok := shapeOf(p, pe.Pattern)
			if !ok || !(pattern == "" || pattern == "all" || s.Pattern == pattern) {
				continue
			}
			key := s.key()
			if i, dup := seen[key]; dup {
				out[i].alsoFor(p)
				continue
			}
			if len(out) == MaxFromShapes {
				left++
				continue
			}
			seen[key] = len(out)
			out = append(out, s)
		}
	}
	if len(out) == 0 {
		return nil, ErrNoShapes
	}
	if left > 0 {
		last := &out[len(out)-1]
		last.Notes = append(last.Notes, fmt.Sprintf("%d more shapes left out: the lab measures at most %d per run", left, MaxFromShapes))
	}
	return out, nil
}

// MaxFromShapes bounds the shapes one `lab --from` measures.
const MaxFromShapes = 32

// maxAlsoNamed bounds the other processes a shape's note names.
const maxAlsoNamed = 8

// key is what the experiments depend on: the shape without its process
// and notes (which JSON leaves out).
func (s Shape) key() string {
	b, _ := json.Marshal(s)
	return string(b)
}

// alsoFor notes another culprit of the same shape.
func (s *Shape) alsoFor(p report.Process) {
	s.also++
	if s.also <= maxAlsoNamed {
		s.Notes = append(s.Notes, fmt.Sprintf("also the shape of pid %d (%s)", p.PID, p.Comm))
	} else if s.also == maxAlsoNamed+1 {
		s.Notes = append(s.Notes, "and of more processes")
	}
}

// shapeOf is one process's shape for one of its (attrib) patterns.
func shapeOf(p report.Process, pattern string) (Shape, bool) {
	ex := examplesOf(p, pattern)
	s := Shape{Pattern: pattern, Dests: 1, Sources: 1, Options: optionsOf(ex),
		Process: &Process{PID: p.PID, Comm: p.Comm}, TCPTwReuse: -1, TCPTimestamps: -1, AutobindReuse: -1}
	if pattern == ConnectPortExhaustion && allUDP(ex) {
		s.Pattern = UDPAutobind
	}
	if !KnownPattern(s.Pattern) {
		return Shape{}, false
	}
	s.rangeOf(p.Sysctls)
	s.addressesOf(ex)
	if s.Pattern == PortInUse {
		s.Variant = holderOf(ex, s)
	}
	if s.Pattern != UDPAutobind && slices.ContainsFunc(ex, func(r report.Record) bool { return r.Proto == "udp" }) {
		s.Notes = append(s.Notes, "some failures were UDP: the lab measures this pattern with TCP")
	}
	if slices.ContainsFunc(ex, func(r report.Record) bool { return r.Family == "ipv6" }) {
		s.Notes = append(s.Notes, "the process used IPv6 too: the lab measures IPv4, whose port rules are the same")
	}
	return s, true
}

func examplesOf(p report.Process, pattern string) []report.Record {
	var ex []report.Record
	for _, r := range p.Examples {
		if r.Pattern == pattern {
			ex = append(ex, r)
		}
	}
	return ex
}

// optionsOf keeps the options that change port allocation.
func optionsOf(ex []report.Record) []string {
	opts := []string{}
	for _, r := range ex {
		for _, o := range r.Options {
			if (o == OptReuseAddr || o == OptReusePort || o == OptNoPort) && !slices.Contains(opts, o) {
				opts = append(opts, o)
			}
		}
	}
	slices.Sort(opts)
	return opts
}

func allUDP(ex []report.Record) bool {
	return len(ex) > 0 && !slices.ContainsFunc(ex, func(r report.Record) bool { return r.Proto != "udp" })
}

// rangeOf takes the namespace's range and sysctls, the range capped to what
// the lab runs.
func (s *Shape) rangeOf(sys *netns.Sysctls) {
	s.Range = DefaultRange
	if sys == nil {
		s.Notes = append(s.Notes, fmt.Sprintf("the namespace's sysctls are unknown: a %d-port range and the kernel's defaults", DefaultRange))
		return
	}
	n := sys.Ports()
	s.Range = clamp(n, MinRange, MaxRange)
	if s.Range != n {
		s.Notes = append(s.Notes, fmt.Sprintf("the process's range has %d ports; the lab uses %d (its bound)", n, s.Range))
	}
	s.TCPTwReuse = sysctlIn(s, "tcp_tw_reuse", sys.TCPTwReuse, 2)
	s.TCPTimestamps = sysctlIn(s, "tcp_timestamps", sys.TCPTimestamps, 2)
	s.AutobindReuse = sysctlIn(s, "ip_autobind_reuse", sys.AutobindReuse, 1)
}

// sysctlIn keeps a recorded sysctl the kernel would accept (0..most), else
// -1 (the kernel's default) with a note: a report is input, not trusted.
func sysctlIn(s *Shape, name string, v, most int) int {
	if v >= 0 && v <= most {
		return v
	}
	if v != -1 {
		s.Notes = append(s.Notes, fmt.Sprintf("%s=%d is not a value the kernel takes: the lab uses the kernel's default", name, v))
	}
	return -1
}

// addressesOf counts the destinations and source addresses seen; tcp_tw_reuse
// 2 covers loopback only, so toward other destinations it counts as 0.
func (s *Shape) addressesOf(ex []report.Record) {
	dests, srcs := map[string]bool{}, map[string]bool{}
	remote := false
	for _, r := range ex {
		if r.Dest != "" {
			dests[r.Dest] = true
			if a, err := netip.ParseAddrPort(r.Dest); err == nil && !a.Addr().Unmap().IsLoopback() {
				remote = true
			}
		}
		if a, err := netip.ParseAddrPort(r.Addr); err == nil && !a.Addr().IsUnspecified() && s.Pattern == BindIPBeforeConnect {
			srcs[a.Addr().String()] = true
		}
	}
	s.Dests, s.Sources = max(1, len(dests)), max(1, len(srcs))
	if len(dests) == 0 && s.Pattern != PortInUse && s.Pattern != BindPortExhaustion {
		s.Notes = append(s.Notes, "no destination seen in the failures: one assumed")
	}
	if s.Dests > MaxDests || s.Sources > MaxSources {
		s.Notes = append(s.Notes, fmt.Sprintf("capped to %d destinations and %d source addresses", MaxDests, MaxSources))
		s.Dests, s.Sources = min(s.Dests, MaxDests), min(s.Sources, MaxSources)
	}
	if s.TCPTwReuse == 2 && remote {
		s.TCPTwReuse = 0
		s.Notes = append(s.Notes, "tcp_tw_reuse=2 covers loopback only and the destinations are not: the lab uses 0")
	}
}

// holderOf says who held the port: the examples' holders when the kernel
// named them, else a listener when the failing sockets set SO_REUSEADDR
// (which would have shared a TIME_WAIT port).
func holderOf(ex []report.Record, s Shape) string {
	for _, r := range ex {
		if r.Holder == nil {
			continue
		}
		if r.Holder.State == "TIME_WAIT" {
			return HolderTimeWait
		}
		return HolderListener
	}
	if s.has(OptReuseAddr) {
		return HolderListener
	}
	return HolderTimeWait
}
