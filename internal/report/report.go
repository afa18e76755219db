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
	"github.com/portsleuth/portsleuth/internal/pools"
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
	// EnrichmentDropped counts failures, each the first of its kind by its
	// process, that got no pressure snapshot or holder lookup because the
	// enrichment queue was full. Counts stay exact.
	EnrichmentDropped uint64 `json:"enrichment_dropped"`
	UntrackedCalls    uint64 `json:"untracked_calls,omitempty"`
	// Unattributed are failures counted by class alone: they came after the
	// kernel's per-process table was full. Counted, never dropped.
	Unattributed []Unattributed `json:"unattributed,omitempty"`
	Command      *Command       `json:"command,omitempty"`
	// Culprits hold the port pools the failing processes drew from, whether
	// or not they failed themselves: ranked by ports held, most first.
	Culprits []Culprit `json:"culprits"`
	// Programs sum the processes by program, most failures first.
	Programs  []Program `json:"programs"`
	Processes []Process `json:"processes"`
	// Kernel is the release the failures happened on (uname -r); empty for
	// a recording that does not say.
	Kernel string `json:"kernel,omitempty"`
	// LabNote says why no pattern cites the remedy lab, and how to run it;
	// empty when the lab's results for this kernel are cited.
	LabNote string `json:"lab_note,omitempty"`
	// Timeline is when the listed processes' failures came, per second
	// (coarser for long reports); PoolSamples how full the pools they drew
	// from were meanwhile, sampled about once a second from each pool's
	// first failure on (empty in a replay of a recording without them).
	Timeline    Timeline     `json:"timeline"`
	PoolSamples []PoolSample `json:"pool_samples"`
	// PoolSamplingLosses (its fields inline: pool_samples_dropped,
	// pools_unsampled, pool_sample_errors, pool_sample_error) counts what
	// pool sampling missed; zero in a replay.
	PoolSamplingLosses
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
	// InCommand says whether it is of the traced command's process tree;
	// absent when no command was traced.
	InCommand *bool `json:"in_command,omitempty"`
	// programKey groups it with the other runs of its program, programName
	// names that program; set by Build, so empty in a decoded report.
	programKey, programName string
}

// PatternEntry is one pattern of one process.
type PatternEntry struct {
	Pattern  string `json:"pattern"`
	Count    uint64 `json:"count"`
	Evidence string `json:"evidence"`
	Advice   string `json:"advice"`
	// Pressure is the namespace's port pressure at this pattern's first failure.
	Pressure *pools.Snapshot `json:"pressure,omitempty"`
	// Holders (failures for lack of a port) are who held the pool then.
	Holders []pools.Owner `json:"holders,omitempty"`
	// Lab is the remedy lab's verdicts for this pattern on the kernel the
	// failures happened on; absent when it has not run there.
	Lab *LabCitation `json:"lab,omitempty"`
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
	// Command is the pid of the command `report -- CMD` ran (0: none): its
	// process tree is marked and listed first. CommandStart is its start
	// time as procinfo.StartTime read it, 0 if unknown.
	Command      uint32
	CommandStart uint64
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
		Culprits:        []Culprit{},
		Programs:        []Program{},
		Processes:       []Process{},
	}
	var uses []poolUse
	progs := map[event.ProcKey]*procinfo.Program{}
	ppids := map[event.ProcKey]uint32{}
	add := func(key event.ProcKey, st event.ProcStats, fails map[event.Class]uint64) {
		b := buildProcess(key, st, fails, snap.Meta[key], snap.Netns, c)
		if !f.match(key.PID, b.p.Comm) {
			return
		}
		r.Processes = append(r.Processes, b.p)
		uses = append(uses, b.uses...)
		progs[key], ppids[key] = b.program, b.ppid
	}
	for key, st := range snap.Procs {
		fails := snap.Failures[key]
		if len(fails) == 0 && !f.All {
			continue
		}
		add(key, st, fails)
	}
	// A process evicted from proc_stats still has its failure counts.
	for key, fails := range snap.Failures {
		if _, ok := snap.Procs[key]; !ok {
			add(key, event.ProcStats{}, fails)
		}
	}
	slices.SortFunc(r.Processes, func(a, b Process) int {
		return cmp.Or(cmp.Compare(b.Failures, a.Failures), cmp.Compare(a.PID, b.PID), cmp.Compare(a.StartNs, b.StartNs))
	})
	if f.Command != 0 {
		t := newCommandTree(f, snap.Meta, c, ppids)
		for i := range r.Processes {
			k := event.ProcKey{PID: r.Processes[i].PID, Start: r.Processes[i].StartNs}
			// The kernel followed the command's forks; the parent chain
			// covers a replay and a kernel that could not.
			in := snap.Tree[k] || snap.Meta[k].InCommand || t.contains(k)
			r.Processes[i].InCommand = &in
		}
	}
	assignPrograms(r.Processes, progs)
	r.Programs = buildPrograms(r.Processes)
	r.Culprits = buildCulprits(uses, c, r.Processes)
	r.Timeline, r.PoolSamples = buildTimeline(c, snap, r.Processes), c.samples()
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

// commandTree tells the processes of a traced command's tree.
type commandTree struct {
	f     Filter
	meta  map[event.ProcKey]event.ProcMeta
	byPID map[uint32]event.ProcKey // for parents known by pid alone
	c     *Collector
	ppids map[event.ProcKey]uint32
}

func newCommandTree(f Filter, meta map[event.ProcKey]event.ProcMeta, c *Collector, ppids map[event.ProcKey]uint32) *commandTree {
	t := &commandTree{f: f, meta: meta, byPID: map[uint32]event.ProcKey{}, c: c, ppids: ppids}
	for k := range meta {
		if old, ok := t.byPID[k.PID]; !ok || k.Start > old.Start {
			t.byPID[k.PID] = k // the latest process of a reused pid
		}
	}
	return t
}

// contains says whether k is the command or its parent chain reaches it.
func (t *commandTree) contains(k event.ProcKey) bool {
	for range maxAncestors {
		if t.isCommand(k) {
			return true
		}
		parent, ok := t.parent(k)
		if !ok || parent.PID <= 1 {
			return false
		}
		k = parent
	}
	return false
}

func (t *commandTree) isCommand(k event.ProcKey) bool {
	if k.PID != t.f.Command {
		return false
	}
	return t.f.CommandStart == 0 || k.Start == 0 || procinfo.SameStart(k.Start, t.f.CommandStart)
}

// parent is k's parent: as the kernel recorded it at k's first failure, else
// as /proc said while k ran.
func (t *commandTree) parent(k event.ProcKey) (event.ProcKey, bool) {
	if k.Start == 0 {
		if full, ok := t.byPID[k.PID]; ok {
			k = full
		}
	}
	if m, ok := t.meta[k]; ok && m.Parent.PID != 0 {
		return m.Parent, true
	}
	if ppid := t.ppids[k]; ppid != 0 {
		return event.ProcKey{PID: ppid}, true
	}
	if pe := t.c.procs[k]; pe != nil && pe.info.PPID != 0 {
		return event.ProcKey{PID: pe.info.PPID}, true
	}
	if ppid, ok := t.c.parents[k.PID]; ok {
		return event.ProcKey{PID: ppid}, true
	}
	return event.ProcKey{}, false
}

// builtProcess is a process of the report with what Build needs beyond its JSON.
type builtProcess struct {
	p       Process
	uses    []poolUse
	program *procinfo.Program // nil when /proc never said
	ppid    uint32            // its parent as /proc said, 0 if unknown
}

func buildProcess(key event.ProcKey, st event.ProcStats, fails map[event.Class]uint64, meta event.ProcMeta, kernelNetns map[uint64]netns.Sysctls, c *Collector) builtProcess {
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
		// No event reached us (or only counters were kept): ask /proc now,
		// or take what a pressure snapshot named while it ran.
		pe = &procEvents{netns: meta.Netns, classes: map[event.Class]*classEvidence{}}
		if info, alive := c.lookup(key); alive {
			pe.info, pe.program = info, c.program(pid)
		} else if h := c.holders[pid]; h != nil {
			pe.info, pe.program = h.info, h.program
		}
	}
	if pe.info.Comm != "" && p.Comm == "" {
		p.Comm = pe.info.Comm
	}
	if p.Netns == 0 {
		p.Netns = cmp.Or(pe.netns, pe.info.Netns)
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
	if p.Sysctls != nil && p.Netns == pe.netns && netns.CookieMismatch(p.Sysctls.Cookie, pe.cookie) {
		// Read in a later namespace the kernel gave this one's number to
		// once it was destroyed: none is better than another's.
		p.Sysctls = nil
	}

	findings := map[attrib.Pattern]*attrib.Finding{}
	snaps := map[attrib.Pattern]*pools.Snapshot{}
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
	var uses []poolUse
	for _, fd := range findings {
		slices.Sort(fd.Options)
		snap := snaps[fd.Pattern]
		if lackOfPort(fd.Pattern) {
			fd.Pool = poolOf(snap) // a named port's holder is in Holders, not a pool
		}
		entry := PatternEntry{
			Pattern: string(fd.Pattern), Count: fd.Count, Evidence: fd.Evidence(), Advice: fd.Advice(),
		}
		if lackOfPort(fd.Pattern) {
			entry.Pressure = snap // a named port's story is its holder, not a pool
		}
		if fd.Pattern == attrib.PortInUse {
			entry.Holders = portHolders(fd.Holders)
		}
		if lackOfPort(fd.Pattern) && snap != nil {
			entry.Holders = poolOwners(snap)
			uses = append(uses, poolUse{victim: key, comm: p.Comm, failures: fd.Count, calls: callsOf(fd.Classes), snap: snap})
		}
		p.Patterns = append(p.Patterns, entry)
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
	return builtProcess{p: p, uses: uses, program: pe.program, ppid: pe.info.PPID}
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
	// Who starved whom comes first: the process that fails is often not the cause.
	writeCulprits(&b, r.Culprits)
	if r.LostEvents > 0 {
		fmt.Fprintf(&b, "ring buffer full: %d events dropped (counts below are exact; examples may be missing)\n", r.LostEvents)
	}
	if r.EnrichmentDropped > 0 {
		fmt.Fprintf(&b, "enrichment queue full: %d first failures of a kind got no pressure snapshot or holder lookup (counts below are exact)\n", r.EnrichmentDropped)
	}
	if r.UntrackedCalls > 0 {
		fmt.Fprintf(&b, "pending table full: %d calls not followed to their outcome (missing from the counts below)\n", r.UntrackedCalls)
	}
	b.WriteString(r.PoolSamplingLosses.text())
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
	} else if r.LabNote != "" {
		fmt.Fprintf(&b, "remedy lab: %s\n", esc(r.LabNote))
	}
	for i, entry := range textEntries(r.Processes) {
		if len(entry) == 1 {
			writeProcess(&b, i+1, entry[0])
		} else {
			writeProgramRuns(&b, i+1, entry)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// outside labels a process that is not of the traced command's tree.
func outside(p Process) string {
	if p.InCommand != nil && !*p.InCommand {
		return " (outside the traced command)"
	}
	return ""
}

func writeProcess(b *strings.Builder, n int, p Process) {
	esc := term.Escape
	fmt.Fprintf(b, "\n%d. pid %d %s: %d failures", n, p.PID, cmp.Or(esc(p.Comm), "(name unknown)"), p.Failures)
	writeErrors(b, p.Errors)
	b.WriteString(outside(p) + "\n")
	if p.Cmdline != "" {
		fmt.Fprintf(b, "   cmdline:  %s\n", esc(p.Cmdline))
	}
	writePlace(b, fmt.Sprint(p.Netns), p.Cgroup, p.ContainerID)
	writeCalls(b, p.Binds, p.Connects, p.Listens, p.Port0Binds)
	writeSysctls(b, p.Sysctls)
	for _, pat := range p.Patterns {
		writePattern(b, pat, "")
	}
	for _, e := range p.Examples {
		fmt.Fprintf(b, "   e.g. %s\n", e.Text())
	}
	if p.EventsMissed > 0 {
		fmt.Fprintf(b, "   (%d failures counted whose events the ring buffer dropped)\n", p.EventsMissed)
	}
}

func writeErrors(b *strings.Builder, errs map[string]uint64) {
	for _, name := range slices.Sorted(maps.Keys(errs)) {
		fmt.Fprintf(b, ", %s %d", term.Escape(name), errs[name])
	}
}

func writePlace(b *strings.Builder, netns, cgroup, containerID string) {
	esc := term.Escape
	fmt.Fprintf(b, "   netns:    %s", netns)
	if cgroup != "" {
		fmt.Fprintf(b, "   cgroup: %s", esc(cgroup))
	}
	if containerID != "" {
		// Cut first (%.12s counts runes), then escape: an escape is never cut in half.
		fmt.Fprintf(b, "   container: %s", esc(fmt.Sprintf("%.12s", containerID)))
	}
	b.WriteString("\n")
}

func writeCalls(b *strings.Builder, binds, connects, listens Counts, port0 Port0) {
	fmt.Fprintf(b, "   binds:    %d ok, %d failed, %d other errors; %d bound port 0, %d of them connected\n",
		binds.OK, binds.Failed, binds.OtherErrors, port0.OK, port0.Connected)
	fmt.Fprintf(b, "   connects: %d ok, %d failed, %d other errors\n", connects.OK, connects.Failed, connects.OtherErrors)
	if listens.Failed > 0 {
		fmt.Fprintf(b, "   listens:  %d ok, %d failed\n", listens.OK, listens.Failed)
	}
}

func writeSysctls(b *strings.Builder, s *netns.Sysctls) {
	if s == nil {
		return
	}
	reserved := "unknown"
	if s.ReservedPorts != nil {
		reserved = fmt.Sprintf("%q", *s.ReservedPorts)
	}
	fmt.Fprintf(b, "   sysctls:  ip_local_port_range %d-%d (%d ports), reserved %s, tcp_tw_reuse %d, ip_autobind_reuse %d (from %s)\n",
		s.PortRange[0], s.PortRange[1], s.Ports(), reserved, s.TCPTwReuse, s.AutobindReuse, term.Escape(s.Source))
}

// writePattern writes one pattern; from names the process whose evidence it
// is, when the entry stands for several.
func writePattern(b *strings.Builder, pat PatternEntry, from string) {
	esc := term.Escape
	fmt.Fprintf(b, "   pattern %s (%d)\n", esc(pat.Pattern), pat.Count)
	fmt.Fprintf(b, "     evidence%s: %s\n", from, esc(pat.Evidence))
	fmt.Fprintf(b, "     fix:      %s\n", esc(pat.Advice))
	if ps := pat.Pressure; ps != nil {
		fmt.Fprintf(b, "     pressure: %s\n", ps.Text())
	}
	if len(pat.Holders) > 0 {
		fmt.Fprintf(b, "     holders:  %s\n", holdersText(pat.Holders))
	}
	writeLab(b, pat.Lab)
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

// portHolders lists the processes holding the port a bind() or listen()
// wanted, one entry each, with the master of a prefork worker.
func portHolders(hs []event.Holder) []pools.Owner {
	var out []pools.Owner
	for _, h := range hs {
		if i := slices.IndexFunc(out, func(o pools.Owner) bool { return o.PID == int(h.PID) }); i >= 0 {
			out[i].Sockets++
			continue
		}
		o := pools.Owner{PID: int(h.PID), Comm: h.Comm, Sockets: 1, Master: int(h.Master)}
		switch h.State {
		case "TIME_WAIT":
			o.TimeWait = 1
		case "ESTABLISHED":
			o.Established = 1
		default:
			o.BindOwner = 1
		}
		out = append(out, o)
	}
	return out
}
