package report

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/portsleuth/portsleuth/internal/event"
	"github.com/portsleuth/portsleuth/internal/procinfo"
	"github.com/portsleuth/portsleuth/internal/term"
)

// Program sums the processes of one program: one executable in one cgroup,
// so that 80 short-lived runs of a CLI are one entry. JSON names are a
// contract (see README).
type Program struct {
	// Program is the executable, or argv[0] (else comm) of processes gone
	// before /proc could name it.
	Program     string            `json:"program"`
	Comm        string            `json:"comm"`
	Cgroup      string            `json:"cgroup"`
	ContainerID string            `json:"container_id,omitempty"`
	Unit        string            `json:"unit,omitempty"`
	PIDs        []uint32          `json:"pids"`
	Failures    uint64            `json:"failures"`
	Errors      map[string]uint64 `json:"errors"`
	Patterns    []PatternCount    `json:"patterns"`
	key         string
}

// PatternCount is how many failures of a program carry a pattern.
type PatternCount struct {
	Pattern string `json:"pattern"`
	Count   uint64 `json:"count"`
}

// goneKey groups processes /proc could not name: the kernel's comm, argv[0]
// of its copy of the command line, and the cgroup.
func goneKey(p Process) string {
	if p.Comm == "" && p.Cmdline == "" {
		// Nothing names it: it is a program of its own, not one of every
		// unnamed process.
		return fmt.Sprintf("unnamed:%d:%d", p.PID, p.StartNs)
	}
	return "gone:" + p.Comm + "\x00" + argv0(p.Cmdline) + "\x00" + p.Cgroup
}

func argv0(cmdline string) string {
	first, _, _ := strings.Cut(cmdline, " ")
	return first
}

// assignPrograms sets each process's program. A process gone before /proc
// was read joins a live one with its comm, argv[0] and cgroup, so that
// runs of one program are not split by how long each lived.
//
// A program read without its executable (the process was exiting) counts as
// not read: otherwise one run of a crash loop would be a program of its own.
func assignPrograms(procs []Process, progs map[event.ProcKey]*procinfo.Program) {
	progs = maps.Clone(progs)
	maps.DeleteFunc(progs, func(_ event.ProcKey, p *procinfo.Program) bool { return p == nil || p.Exe == "" })
	alias := map[string]*procinfo.Program{}
	for _, p := range procs {
		if prog := progs[event.ProcKey{PID: p.PID, Start: p.StartNs}]; prog != nil {
			if _, ok := alias[goneKey(p)]; !ok {
				alias[goneKey(p)] = prog
			}
		}
	}
	for i := range procs {
		p := &procs[i]
		prog := progs[event.ProcKey{PID: p.PID, Start: p.StartNs}]
		if prog == nil {
			prog = alias[goneKey(*p)]
		}
		if prog != nil {
			p.programKey, p.programName = prog.Key(), cmp.Or(prog.Exe, prog.Comm, p.Comm)
		} else {
			p.programKey, p.programName = goneKey(*p), cmp.Or(argv0(p.Cmdline), p.Comm)
		}
	}
}

// buildPrograms sums processes by program, most failures first.
func buildPrograms(procs []Process) []Program {
	var progs []*Program
	at := map[string]*Program{}
	seen := map[string]map[uint32]bool{} // a reused pid is one pid of its program
	for _, p := range procs {
		pr := at[p.programKey]
		if pr == nil {
			id := procinfo.Identity(p.Cgroup)
			pr = &Program{Program: p.programName, Comm: p.Comm, Cgroup: p.Cgroup, ContainerID: cmp.Or(p.ContainerID, id.ContainerID),
				Unit: id.Unit, PIDs: []uint32{}, Errors: map[string]uint64{}, Patterns: []PatternCount{}, key: p.programKey}
			at[p.programKey] = pr
			seen[p.programKey] = map[uint32]bool{}
			progs = append(progs, pr)
		}
		if !seen[p.programKey][p.PID] {
			seen[p.programKey][p.PID] = true
			pr.PIDs = append(pr.PIDs, p.PID)
		}
		pr.Failures = satAdd(pr.Failures, p.Failures)
		for e, n := range p.Errors {
			pr.Errors[e] = satAdd(pr.Errors[e], n)
		}
		for _, pat := range p.Patterns {
			i := slices.IndexFunc(pr.Patterns, func(pc PatternCount) bool { return pc.Pattern == pat.Pattern })
			if i < 0 {
				pr.Patterns = append(pr.Patterns, PatternCount{Pattern: pat.Pattern})
				i = len(pr.Patterns) - 1
			}
			pr.Patterns[i].Count = satAdd(pr.Patterns[i].Count, pat.Count)
		}
	}
	out := make([]Program, 0, len(progs))
	for _, pr := range progs {
		slices.Sort(pr.PIDs)
		slices.SortFunc(pr.Patterns, func(a, b PatternCount) int {
			return cmp.Or(cmp.Compare(b.Count, a.Count), strings.Compare(a.Pattern, b.Pattern))
		})
		out = append(out, *pr)
	}
	slices.SortFunc(out, func(a, b Program) int {
		return cmp.Or(cmp.Compare(b.Failures, a.Failures), strings.Compare(a.Program, b.Program), cmp.Compare(a.PIDs[0], b.PIDs[0]))
	})
	return out
}

// textEntries orders the processes for the text: the traced command's tree
// first, the failing runs of one program as one entry, most failures first.
func textEntries(procs []Process) [][]Process {
	ordered := slices.Clone(procs)
	slices.SortStableFunc(ordered, func(a, b Process) int { return cmp.Compare(b2i(outside(a) != ""), b2i(outside(b) != "")) })
	var entries [][]Process
	at := map[string]int{}
	for _, p := range ordered {
		if p.programKey != "" && p.Failures > 0 {
			key := p.programKey + "\x00" + outside(p)
			if i, ok := at[key]; ok {
				entries[i] = append(entries[i], p)
				continue
			}
			at[key] = len(entries)
		}
		entries = append(entries, []Process{p})
	}
	// A program's runs rank by their sum: 80 runs failing once outrank a process failing 3 times.
	slices.SortStableFunc(entries, func(a, b []Process) int {
		return cmp.Or(cmp.Compare(b2i(outside(a[0]) != ""), b2i(outside(b[0]) != "")), cmp.Compare(failuresOf(b), failuresOf(a)))
	})
	return entries
}

func failuresOf(ps []Process) uint64 {
	var n uint64
	for _, p := range ps {
		n = satAdd(n, p.Failures)
	}
	return n
}

// maxPIDsShown bounds the pids a program's entry lists.
const maxPIDsShown = 10

// writeProgramRuns writes several failing processes of one program as one entry.
func writeProgramRuns(b *strings.Builder, n int, ps []Process) {
	esc := term.Escape
	first := ps[0]
	var failures, missed uint64
	errs := map[string]uint64{}
	var binds, connects, listens Counts
	var port0 Port0
	netnses := map[uint64]bool{}
	for _, p := range ps {
		failures, missed = satAdd(failures, p.Failures), satAdd(missed, p.EventsMissed)
		for e, c := range p.Errors {
			errs[e] = satAdd(errs[e], c)
		}
		binds, connects, listens = binds.plus(p.Binds), connects.plus(p.Connects), listens.plus(p.Listens)
		port0 = Port0{satAdd(port0.OK, p.Port0Binds.OK), satAdd(port0.Connected, p.Port0Binds.Connected)}
		netnses[p.Netns] = true
	}
	fmt.Fprintf(b, "\n%d. %s: %d processes, %d failures", n, esc(first.Comm), len(ps), failures)
	writeErrors(b, errs)
	b.WriteString(outside(first) + "\n")
	fmt.Fprintf(b, "   program:  %s\n", esc(first.programName))
	pids := make([]string, 0, maxPIDsShown)
	for i, p := range ps {
		if i == maxPIDsShown {
			break
		}
		pids = append(pids, fmt.Sprint(p.PID))
	}
	more := ""
	if len(ps) > maxPIDsShown {
		more = fmt.Sprintf(" and %d more", len(ps)-maxPIDsShown)
	}
	fmt.Fprintf(b, "   pids:     %s%s\n", strings.Join(pids, ", "), more)
	netns := fmt.Sprint(first.Netns)
	if len(netnses) > 1 {
		netns = fmt.Sprintf("%d namespaces", len(netnses))
	}
	writePlace(b, netns, first.Cgroup, first.ContainerID)
	writeCalls(b, binds, connects, listens, port0)
	writeSysctls(b, first.Sysctls)
	for _, pat := range programPatterns(ps) {
		writePattern(b, pat.entry, fmt.Sprintf(" (pid %d)", pat.pid))
	}
	for _, e := range first.Examples {
		fmt.Fprintf(b, "   e.g. %s\n", e.Text())
	}
	if missed > 0 {
		fmt.Fprintf(b, "   (%d failures counted whose events the ring buffer dropped)\n", missed)
	}
}

type programPattern struct {
	entry PatternEntry
	pid   uint32 // whose evidence, advice and pressure the entry shows
	most  uint64 // that process's count of the pattern
}

// programPatterns sums each pattern over the processes, keeping the words
// of the process with the most failures of it.
func programPatterns(ps []Process) []programPattern {
	var pats []programPattern
	for _, p := range ps {
		for _, pat := range p.Patterns {
			i := slices.IndexFunc(pats, func(pp programPattern) bool { return pp.entry.Pattern == pat.Pattern })
			if i < 0 {
				pats = append(pats, programPattern{entry: pat, pid: p.PID, most: pat.Count})
				continue
			}
			total := satAdd(pats[i].entry.Count, pat.Count)
			if pat.Count > pats[i].most {
				pats[i] = programPattern{entry: pat, pid: p.PID, most: pat.Count}
			}
			pats[i].entry.Count = total
		}
	}
	slices.SortFunc(pats, func(a, b programPattern) int {
		return cmp.Or(cmp.Compare(b.entry.Count, a.entry.Count), strings.Compare(a.entry.Pattern, b.entry.Pattern))
	})
	return pats
}

func (c Counts) plus(o Counts) Counts {
	return Counts{satAdd(c.OK, o.OK), satAdd(c.Failed, o.Failed), satAdd(c.OtherErrors, o.OtherErrors)}
}
