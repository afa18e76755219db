package report

import (
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/portsleuth/portsleuth/internal/attrib"
	"github.com/portsleuth/portsleuth/internal/event"
	"github.com/portsleuth/portsleuth/internal/netns"
	"github.com/portsleuth/portsleuth/internal/pressure"
	"github.com/portsleuth/portsleuth/internal/procinfo"
	"github.com/portsleuth/portsleuth/internal/term"
)

// Schema is the version of the JSON report; fields are only ever added.
const Schema = 1

// Report is the culprit report. JSON names are a contract (see README).
type Report struct {
	Schema       int      `json:"schema"`
	Backend      string   `json:"backend"`
	BackendNotes []string `json:"backend_notes,omitempty"`
	// Inferred lists what the backend works out instead of seeing.
	Inferred        []string `json:"inferred,omitempty"`
	Started         string   `json:"started"`
	DurationSeconds float64  `json:"duration_seconds"`
	LostEvents      uint64   `json:"lost_events"`
	UntrackedCalls  uint64   `json:"untracked_calls,omitempty"`
	// Unattributed are failures counted by class alone: they came after the
	// kernel's per-process table was full. Counted, never dropped.
	Unattributed []Unattributed `json:"unattributed,omitempty"`
	Command      *Command       `json:"command,omitempty"`
	Processes    []Process      `json:"processes"`
}

// Unattributed is the count of one failure class no process could be given.
type Unattributed struct {
	Op      string `json:"op"`
	Errno   string `json:"errno"`
	Pattern string `json:"pattern"`
	Count   uint64 `json:"count"`
}

// Command is the traced command of `report -- CMD`.
type Command struct {
	Argv     []string `json:"argv"`
	PID      int      `json:"pid"`
	ExitCode int      `json:"exit_code"`
}

// Process is one culprit.
type Process struct {
	PID uint32 `json:"pid"`
	// StartNs is the process's start time (ns since boot): with the pid, its identity.
	StartNs     uint64            `json:"start_ns"`
	Comm        string            `json:"comm"`
	Cmdline     string            `json:"cmdline"`
	Netns       uint64            `json:"netns"`
	Cgroup      string            `json:"cgroup"`
	ContainerID string            `json:"container_id,omitempty"`
	Failures    uint64            `json:"failures"`
	Errors      map[string]uint64 `json:"errors"`
	Patterns    []PatternEntry    `json:"patterns"`
	Binds       Counts            `json:"binds"`
	Connects    Counts            `json:"connects"`
	Listens     Counts            `json:"listens"`
	Port0Binds  Port0             `json:"port0_binds"`
	Sysctls     *netns.Sysctls    `json:"sysctls,omitempty"`
	// EventsMissed counts failures that are in the counts but whose event the
	// ring buffer dropped: they are missing only from examples and addresses.
	EventsMissed uint64   `json:"events_missed"`
	Examples     []Record `json:"examples"`
}

// PatternEntry is one pattern of one process.
type PatternEntry struct {
	Pattern  string `json:"pattern"`
	Count    uint64 `json:"count"`
	Evidence string `json:"evidence"`
	Advice   string `json:"advice"`
	// Pressure is the namespace's port pressure at this pattern's first failure.
	Pressure *pressure.Snapshot `json:"pressure,omitempty"`
}

// Counts are a process's calls of one kind.
type Counts struct {
	OK          uint64 `json:"ok"`
	Failed      uint64 `json:"failed"`
	OtherErrors uint64 `json:"other_errors"`
}

// Port0 says how many sockets a port-0 bind gave a port, and how many of them connected.
type Port0 struct {
	OK        uint64 `json:"ok"`
	Connected uint64 `json:"connected"`
}

// Filter selects processes.
type Filter struct {
	PID  uint32
	Comm string
	// All includes processes that made bind/connect calls but had no failure.
	All bool
}

func (f Filter) match(pid uint32, comm string) bool {
	return (f.PID == 0 || f.PID == pid) && (f.Comm == "" || f.Comm == comm)
}

// Build assembles the report from the kernel's counters and the collector.
func Build(snap event.Snapshot, c *Collector, f Filter, backend string, started time.Time, dur time.Duration) Report {
	r := Report{
		Schema:          Schema,
		Backend:         backend,
		Started:         started.UTC().Format(time.RFC3339),
		DurationSeconds: dur.Seconds(),
		LostEvents:      snap.Lost,
		UntrackedCalls:  snap.Untracked,
		Processes:       []Process{},
	}
	for key, st := range snap.Procs {
		fails := snap.Failures[key]
		if len(fails) == 0 && !f.All {
			continue
		}
		p := buildProcess(key, st, fails, snap.Meta[key], snap.Netns, c)
		if f.match(key.PID, p.Comm) {
			r.Processes = append(r.Processes, p)
		}
	}
	// A process evicted from proc_stats still has its failure counts.
	for key, fails := range snap.Failures {
		if _, ok := snap.Procs[key]; ok {
			continue
		}
		p := buildProcess(key, event.ProcStats{}, fails, snap.Meta[key], snap.Netns, c)
		if f.match(key.PID, p.Comm) {
			r.Processes = append(r.Processes, p)
		}
	}
	slices.SortFunc(r.Processes, func(a, b Process) int {
		return cmp.Or(cmp.Compare(b.Failures, a.Failures), cmp.Compare(a.PID, b.PID), cmp.Compare(a.StartNs, b.StartNs))
	})
	if f.PID == 0 && f.Comm == "" {
		for _, class := range sortedClasses(snap.Unattributed) {
			r.Unattributed = append(r.Unattributed, Unattributed{
				Op: string(class.Op), Errno: errnoName(class.Errno),
				Pattern: string(attrib.Classify(class, event.ProcStats{})), Count: snap.Unattributed[class],
			})
		}
	}
	return r
}

func buildProcess(key event.ProcKey, st event.ProcStats, fails map[event.Class]uint64, meta event.ProcMeta, kernelNetns map[uint64]netns.Sysctls, c *Collector) Process {
	pid := key.PID
	p := Process{
		PID:        pid,
		StartNs:    key.Start,
		Comm:       meta.Comm,
		Cmdline:    meta.Cmdline,
		Netns:      meta.Netns,
		Errors:     map[string]uint64{},
		Patterns:   []PatternEntry{},
		Binds:      Counts{st.BindsOK, st.BindsFailed, st.BindsOther},
		Connects:   Counts{st.ConnectsOK, st.ConnectsFailed, st.ConnectsOther},
		Listens:    Counts{OK: st.ListensOK, Failed: st.ListensFailed},
		Port0Binds: Port0{st.Port0BindsOK, st.Port0BindConnects},
		Examples:   []Record{},
	}
	pe := c.procs[key]
	if pe == nil {
		// No event reached us (or only counters were kept): ask /proc now.
		pe = &procEvents{netns: meta.Netns, classes: map[event.Class]*classEvidence{}}
		pe.info = c.lookup(key)
	}
	if pe.info.Comm != "" && p.Comm == "" {
		p.Comm = pe.info.Comm
	}
	if p.Netns == 0 {
		p.Netns = pe.netns
	}
	if pe.info.Cmdline != "" {
		p.Cmdline = pe.info.Cmdline // /proc has it whole; the kernel's copy is truncated
	}
	p.Cgroup, p.ContainerID = pe.info.Cgroup, pe.info.ContainerID
	if p.Cgroup == "" && meta.CgroupID != 0 && c.CgroupPath != nil {
		// Gone before /proc could say: the kernel's cgroup id still can.
		p.Cgroup = c.CgroupPath(meta.CgroupID)
		p.ContainerID = procinfo.ContainerID(p.Cgroup)
	}
	p.Sysctls = c.netns[p.Netns]
	if p.Sysctls == nil {
		if s, ok := kernelNetns[p.Netns]; ok {
			p.Sysctls = &s
		}
	}

	findings := map[attrib.Pattern]*attrib.Finding{}
	snaps := map[attrib.Pattern]*pressure.Snapshot{}
	for _, class := range sortedClasses(fails) {
		n := fails[class]
		p.Failures = satAdd(p.Failures, n)
		e := errnoName(class.Errno)
		p.Errors[e] = satAdd(p.Errors[e], n)
		pat := attrib.Classify(class, st)
		fd := findings[pat]
		if fd == nil {
			fd = &attrib.Finding{Pattern: pat, Classes: map[event.Class]uint64{}, Stats: st, Sysctls: p.Sysctls}
			findings[pat] = fd
		}
		fd.Count = satAdd(fd.Count, n)
		fd.Classes[class] = satAdd(fd.Classes[class], n)
		if snap := pe.pressure[class]; snap != nil && snaps[pat] == nil {
			snaps[pat] = snap
		}
		if ce := pe.classes[class]; ce != nil {
			for _, a := range ce.addrs {
				fd.Addrs = addCapped(fd.Addrs, a)
			}
			for _, a := range ce.locals {
				fd.Locals = addCapped(fd.Locals, a)
			}
			for _, o := range ce.options {
				if !slices.Contains(fd.Options, o) {
					fd.Options = append(fd.Options, o)
				}
			}
			fd.Holders = append(fd.Holders, ce.holders...)
		}
	}
	for _, fd := range findings {
		slices.Sort(fd.Options)
		p.Patterns = append(p.Patterns, PatternEntry{
			Pattern: string(fd.Pattern), Count: fd.Count, Evidence: fd.Evidence(), Advice: fd.Advice(),
			Pressure: snaps[fd.Pattern],
		})
	}
	slices.SortFunc(p.Patterns, func(a, b PatternEntry) int {
		return cmp.Or(cmp.Compare(b.Count, a.Count), strings.Compare(a.Pattern, b.Pattern))
	})
	if p.Failures > pe.events {
		p.EventsMissed = p.Failures - pe.events
	}
	for _, e := range pe.examples {
		p.Examples = append(p.Examples, NewRecord(e, attrib.Classify(e.Class, st)))
	}
	return p
}

func errnoName(e unix.Errno) string {
	if n := unix.ErrnoName(e); n != "" {
		return n
	}
	return fmt.Sprintf("errno %d", int(e))
}

// WriteJSON writes the report as one indented JSON document.
func (r Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// WriteText writes the report for a person. Every string that comes from the
// traced processes (or from a recording) goes through term.Escape, so that no
// name, command line or path can drive the reader's terminal.
func (r Report) WriteText(w io.Writer) error {
	esc := term.Escape
	var b strings.Builder
	fmt.Fprintf(&b, "portsleuth report: started %s, %.1fs, backend %s\n", esc(r.Started), r.DurationSeconds, esc(r.Backend))
	if r.LostEvents > 0 {
		fmt.Fprintf(&b, "ring buffer full: %d events dropped (counts below are exact; examples may be missing)\n", r.LostEvents)
	}
	if r.UntrackedCalls > 0 {
		fmt.Fprintf(&b, "pending table full: %d calls not followed to their outcome (missing from the counts below)\n", r.UntrackedCalls)
	}
	for _, u := range r.Unattributed {
		fmt.Fprintf(&b, "failure table full: %d more %s() failures %s (%s) counted without a process\n", u.Count, u.Op, u.Errno, u.Pattern)
	}
	for _, s := range r.Inferred {
		fmt.Fprintf(&b, "backend %s: %s\n", esc(r.Backend), esc(s))
	}
	if r.Command != nil {
		fmt.Fprintf(&b, "command: %s (pid %d, exit code %d)\n", esc(strings.Join(r.Command.Argv, " ")), r.Command.PID, r.Command.ExitCode)
	}
	if len(r.Processes) == 0 {
		b.WriteString("\nno failed bind() or connect() calls\n")
	}
	for i, p := range r.Processes {
		fmt.Fprintf(&b, "\n%d. pid %d %s: %d failures", i+1, p.PID, esc(p.Comm), p.Failures)
		for _, name := range slices.Sorted(maps.Keys(p.Errors)) {
			fmt.Fprintf(&b, ", %s %d", esc(name), p.Errors[name])
		}
		b.WriteString("\n")
		if p.Cmdline != "" {
			fmt.Fprintf(&b, "   cmdline:  %s\n", esc(p.Cmdline))
		}
		fmt.Fprintf(&b, "   netns:    %d", p.Netns)
		if p.Cgroup != "" {
			fmt.Fprintf(&b, "   cgroup: %s", esc(p.Cgroup))
		}
		if p.ContainerID != "" {
			// Cut first (%.12s counts runes), then escape: an escape is never cut in half.
			fmt.Fprintf(&b, "   container: %s", esc(fmt.Sprintf("%.12s", p.ContainerID)))
		}
		b.WriteString("\n")
		fmt.Fprintf(&b, "   binds:    %d ok, %d failed, %d other errors; %d bound port 0, %d of them connected\n",
			p.Binds.OK, p.Binds.Failed, p.Binds.OtherErrors, p.Port0Binds.OK, p.Port0Binds.Connected)
		fmt.Fprintf(&b, "   connects: %d ok, %d failed, %d other errors\n", p.Connects.OK, p.Connects.Failed, p.Connects.OtherErrors)
		if p.Listens.Failed > 0 {
			fmt.Fprintf(&b, "   listens:  %d ok, %d failed\n", p.Listens.OK, p.Listens.Failed)
		}
		if s := p.Sysctls; s != nil {
			reserved := "unknown"
			if s.ReservedPorts != nil {
				reserved = fmt.Sprintf("%q", *s.ReservedPorts)
			}
			fmt.Fprintf(&b, "   sysctls:  ip_local_port_range %d-%d (%d ports), reserved %s, tcp_tw_reuse %d, ip_autobind_reuse %d (from %s)\n",
				s.PortRange[0], s.PortRange[1], s.Ports(), reserved, s.TCPTwReuse, s.AutobindReuse, esc(s.Source))
		}
		for _, pat := range p.Patterns {
			fmt.Fprintf(&b, "   pattern %s (%d)\n", esc(pat.Pattern), pat.Count)
			fmt.Fprintf(&b, "     evidence: %s\n", esc(pat.Evidence))
			fmt.Fprintf(&b, "     fix:      %s\n", esc(pat.Advice))
			if ps := pat.Pressure; ps != nil {
				fmt.Fprintf(&b, "     pressure: %s\n", ps.Text())
			}
		}
		for _, e := range p.Examples {
			fmt.Fprintf(&b, "   e.g. %s\n", e.Text())
		}
		if p.EventsMissed > 0 {
			fmt.Fprintf(&b, "   (%d failures counted whose events the ring buffer dropped)\n", p.EventsMissed)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// sortedClasses orders failure classes so every output is deterministic.
func sortedClasses(m map[event.Class]uint64) []event.Class {
	classes := make([]event.Class, 0, len(m))
	for c := range m {
		classes = append(classes, c)
	}
	slices.SortFunc(classes, func(a, b event.Class) int {
		return cmp.Or(strings.Compare(string(a.Op), string(b.Op)), strings.Compare(a.Proto, b.Proto),
			strings.Compare(a.Family, b.Family), cmp.Compare(a.Errno, b.Errno),
			cmp.Compare(b2i(a.Port0), b2i(b.Port0)), cmp.Compare(b2i(a.AnyAddr), b2i(b.AnyAddr)))
	})
	return classes
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}
