package lab

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"
	"time"

	"golang.org/x/sys/unix"

	"github.com/portsleuth/portsleuth/internal/netns"
	"github.com/portsleuth/portsleuth/internal/report"
)

// maxReportBytes bounds a report read by --from, as a recording is bounded.
const maxReportBytes = report.MaxRecordingBytes

// LoadProcesses reads the culprits of a `report -o json` output or of a
// recording (detected by its keys), replaying a recording offline.
func LoadProcesses(path string) ([]report.Process, error) {
	b, err := readBounded(path)
	if err != nil {
		return nil, err
	}
	var keys map[string]json.RawMessage
	if err := json.Unmarshal(b, &keys); err != nil {
		return nil, fmt.Errorf("reading %s: not a report or a recording: %w", path, err)
	}
	switch {
	case keys["processes"] != nil:
		var r report.Report
		if err := json.Unmarshal(b, &r); err != nil {
			return nil, fmt.Errorf("reading report %s: %w", path, err)
		}
		return r.Processes, nil
	case keys["procs"] != nil || keys["events"] != nil:
		return replay(path)
	}
	return nil, fmt.Errorf("reading %s: neither a report (no \"processes\") nor a recording (no \"procs\")", path)
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

// readBounded reads a regular file (a FIFO would block) of bounded size.
func readBounded(path string) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("reading %s: not a regular file", path)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxReportBytes+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	if len(b) > maxReportBytes {
		return nil, fmt.Errorf("reading %s: larger than %d bytes", path, maxReportBytes)
	}
	return b, nil
}

// ErrNoShapes is a report with no failure the lab can reproduce.
var ErrNoShapes = errors.New("no culprit with a pattern the lab reproduces")

// ShapesFrom derives each culprit's shape for each of its patterns the lab
// knows; pattern "" or "all" keeps them all.
func ShapesFrom(procs []report.Process, pattern string) ([]Shape, error) {
	var out []Shape
	for _, p := range procs {
		for _, pe := range p.Patterns {
			s, ok := shapeOf(p, pe.Pattern)
			if ok && (pattern == "" || pattern == "all" || s.Pattern == pattern) {
				out = append(out, s)
			}
		}
	}
	if len(out) == 0 {
		return nil, ErrNoShapes
	}
	return out, nil
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
	s.TCPTwReuse, s.TCPTimestamps, s.AutobindReuse = sys.TCPTwReuse, sys.TCPTimestamps, sys.AutobindReuse
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
