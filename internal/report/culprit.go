package report

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	"github.com/portsleuth/portsleuth/internal/attrib"
	"github.com/portsleuth/portsleuth/internal/event"
	"github.com/portsleuth/portsleuth/internal/pools"
	"github.com/portsleuth/portsleuth/internal/procinfo"
	"github.com/portsleuth/portsleuth/internal/term"
)

// Culprit is a process that held ports of a pool failing processes drew
// from, whether or not it failed itself. JSON names are a contract (see README).
type Culprit struct {
	// PID 0 stands for sockets no process has open (among them TIME_WAIT
	// sockets whose closer was not seen).
	PID uint32 `json:"pid"`
	// StartNs and Exited: a process that closed connections (its TIME_WAITs)
	// and is gone; its pid may name another process since.
	StartNs     uint64 `json:"start_ns,omitempty"`
	Exited      bool   `json:"exited,omitempty"`
	Comm        string `json:"comm"`
	Cmdline     string `json:"cmdline"`
	Netns       uint64 `json:"netns"`
	Cgroup      string `json:"cgroup"`
	ContainerID string `json:"container_id,omitempty"`
	Unit        string `json:"unit,omitempty"`
	// Master is the prefork master it is a worker of (what to restart or
	// fix: a killed worker is respawned); 0 when it is its own master.
	Master uint32 `json:"master"`
	// Program is its executable, when /proc could say.
	Program string `json:"program,omitempty"`
	// PortsHeld are its ports in the victims' pool where it held the most,
	// summed over namespaces: ports of different pools are often the same ports.
	PortsHeld PortsHeld `json:"ports_held"`
	// Patterns are what its held sockets show, e.g. bind-ip-before-connect
	// for ports bind() gave that then connected; empty when it only holds
	// connections or TIME_WAIT.
	Patterns []string   `json:"patterns"`
	Pools    []HeldPool `json:"pools"`
	Victims  []Victim   `json:"victims"`
	// group puts the processes of one program in one sentence of the text.
	group string
}

// PortsHeld counts ports by how they are held: bind_owner through a
// bind()/listen() owner (taken from every destination), the rest by the
// state of sockets in the pool's 4-tuple space.
type PortsHeld struct {
	BindOwner   int `json:"bind_owner"`
	Established int `json:"established"`
	TimeWait    int `json:"time_wait"`
	Other       int `json:"other"`
}

// Total is the ports held.
func (h PortsHeld) Total() int { return h.BindOwner + h.Established + h.TimeWait + h.Other }

func (h PortsHeld) plus(o PortsHeld) PortsHeld {
	return PortsHeld{h.BindOwner + o.BindOwner, h.Established + o.Established, h.TimeWait + o.TimeWait, h.Other + o.Other}
}

// HeldPool is a culprit's share of one pool a victim drew from, at most as
// measured at any of the victims' first failures.
type HeldPool struct {
	Netns     uint64    `json:"netns"`
	Kind      string    `json:"kind"` // "bind" (the bind(local, 0) pool) or "connect"
	Local     string    `json:"local"`
	Dest      string    `json:"dest,omitempty"`
	Size      int       `json:"size"`
	PortsHeld PortsHeld `json:"ports_held"`
}

// Victim is a process that failed for lack of a port in a culprit's pool.
type Victim struct {
	PID      uint32 `json:"pid"`
	StartNs  uint64 `json:"start_ns"`
	Comm     string `json:"comm"`
	Failures uint64 `json:"failures"`
	Calls    []Call `json:"calls"`
}

// Call counts failed calls of one kind.
type Call struct {
	Op    string `json:"op"`
	Errno string `json:"errno"`
	Count uint64 `json:"count"`
}

// poolUse is one lack-of-port pattern of one failing process, with the pool
// snapshot taken at its first failure.
type poolUse struct {
	victim   event.ProcKey
	comm     string
	failures uint64
	calls    []Call
	snap     *pools.Snapshot
}

// noProcess names the culprit entry of sockets no process has open.
const noProcess = "no process"

// lackOfPort says whether a pattern's failures found no free port, so that
// whoever held the pool is to blame.
func lackOfPort(p attrib.Pattern) bool {
	switch p {
	case attrib.BindAnyBeforeConnect, attrib.BindIPBeforeConnect, attrib.BindPortExhaustion, attrib.ConnectPortExhaustion:
		return true
	}
	return false
}

// poolOwners are who held a snapshot's pool.
func poolOwners(s *pools.Snapshot) []pools.Owner {
	switch {
	case s == nil:
		return nil
	case s.ConnectPool != nil:
		return s.ConnectPool.Owners
	case s.BindPool != nil:
		return s.BindPool.Owners
	}
	return nil
}

// poolOf is what a snapshot measured in the pool, for the advice.
func poolOf(s *pools.Snapshot) *attrib.Pool {
	switch {
	case s == nil:
		return nil
	case s.ConnectPool != nil:
		p := s.ConnectPool
		return &attrib.Pool{Kind: "connect", Local: p.Local, Dest: p.Dest, Size: p.Size, BindOwned: p.BindOwned,
			Established: p.Established, TimeWait: p.TimeWait, Other: p.Other, Free: p.Free,
			Holders: poolHolders(p.Owners)}
	case s.BindPool != nil:
		p := s.BindPool
		pool := &attrib.Pool{Kind: "bind", Local: p.Local, Size: p.Used + p.Free, Free: p.Free, Holders: poolHolders(p.Owners)}
		for _, o := range p.Owners {
			pool.BindOwned += o.BindOwner
			pool.Established += o.Established
			pool.TimeWait += o.TimeWait
			pool.Other += o.Other
		}
		return pool
	}
	return nil
}

// poolHolders sums a pool's owners by process name, most ports first; the
// sockets of no process stay apart.
func poolHolders(owners []pools.Owner) []attrib.PoolHolder {
	var hs []attrib.PoolHolder
	for _, o := range owners {
		ports := o.BindOwner + o.Established + o.TimeWait + o.Other
		if ports == 0 {
			continue
		}
		comm := o.Comm
		if o.PID == 0 {
			comm = ""
		}
		// By name; a process without one (or no process) stays apart.
		i := slices.IndexFunc(hs, func(h attrib.PoolHolder) bool { return h.Comm == comm && (comm != "" || h.PID == o.PID) })
		if i < 0 {
			hs = append(hs, attrib.PoolHolder{Comm: comm, PID: o.PID})
			i = len(hs) - 1
		}
		h := &hs[i]
		h.Ports += ports
		if o.PID != 0 {
			if h.Procs++; h.Procs > 1 {
				h.PID = 0
			}
		}
	}
	slices.SortStableFunc(hs, func(x, y attrib.PoolHolder) int { return cmp.Compare(y.Ports, x.Ports) })
	return hs
}

// heldPoolOf describes a snapshot's pool, without holdings.
func heldPoolOf(s *pools.Snapshot) (HeldPool, bool) {
	switch {
	case s.ConnectPool != nil:
		p := s.ConnectPool
		return HeldPool{Netns: s.Netns, Kind: "connect", Local: p.Local, Dest: p.Dest, Size: p.Size}, true
	case s.BindPool != nil:
		p := s.BindPool
		return HeldPool{Netns: s.Netns, Kind: "bind", Local: p.Local, Size: p.Used + p.Free}, true
	}
	return HeldPool{}, false
}

type poolKey struct {
	netns             uint64
	kind, local, dest string
}

func (h HeldPool) key() poolKey { return poolKey{h.Netns, h.Kind, h.Local, h.Dest} }

// heldBy is how an owner holds a pool. An owner listed by a scan that did
// not split its sockets by how they hold ports counts them as "other".
func heldBy(o pools.Owner) PortsHeld {
	h := PortsHeld{BindOwner: o.BindOwner, Established: o.Established, TimeWait: o.TimeWait, Other: o.Other}
	if h.Total() == 0 {
		h.Other = o.Sockets
	}
	return h
}

// callsOf sums a finding's failure classes by call and errno.
func callsOf(classes map[event.Class]uint64) []Call {
	var calls []Call
	for _, class := range sortedClasses(classes) {
		op, errno := string(class.Op), errnoName(class.Errno)
		i := slices.IndexFunc(calls, func(c Call) bool { return c.Op == op && c.Errno == errno })
		if i < 0 {
			calls = append(calls, Call{Op: op, Errno: errno})
			i = len(calls) - 1
		}
		calls[i].Count = satAdd(calls[i].Count, classes[class])
	}
	return calls
}

// culpritAcc gathers one owner's holdings over every victim's snapshot.
type culpritAcc struct {
	pid                   int
	start                 uint64 // an exited closer's start time; 0 for a live process
	comm                  string
	pools                 map[poolKey]*HeldPool
	bindConn, bindConnAny int
	victims               map[event.ProcKey]*Victim
}

// buildCulprits names who held the pools the failing processes drew from,
// most ports first. procs name culprits that failed themselves and whose
// identity the collector did not capture.
func buildCulprits(uses []poolUse, c *Collector, procs []Process) []Culprit {
	accs := map[event.ProcKey]*culpritAcc{}
	for _, u := range uses {
		pool, ok := heldPoolOf(u.snap)
		if !ok {
			continue
		}
		for _, o := range poolOwners(u.snap) {
			held := heldBy(o)
			if held.Total() == 0 {
				continue
			}
			k := event.ProcKey{PID: uint32(o.PID), Start: o.Start}
			a := accs[k]
			if a == nil {
				a = &culpritAcc{pid: o.PID, start: o.Start, comm: o.Comm, pools: map[poolKey]*HeldPool{}, victims: map[event.ProcKey]*Victim{}}
				accs[k] = a
			}
			a.hold(pool, held)
			a.bindConn, a.bindConnAny = max(a.bindConn, o.BindConnected), max(a.bindConnAny, o.BindConnectedAny)
			a.victim(u)
		}
	}
	byPID := map[uint32]*Process{}
	for i := range procs {
		byPID[procs[i].PID] = &procs[i]
	}
	culprits := make([]Culprit, 0, len(accs))
	for _, a := range accs {
		culprits = append(culprits, a.culprit(c, byPID))
	}
	// A program's processes rank together, by what they held between them:
	// 60 socat processes holding a port each starve more than one process
	// holding four.
	byProgram := map[string]int{}
	for _, cu := range culprits {
		byProgram[cu.group] += cu.PortsHeld.Total()
	}
	slices.SortFunc(culprits, func(x, y Culprit) int {
		return cmp.Or(cmp.Compare(byProgram[y.group], byProgram[x.group]),
			cmp.Compare(y.PortsHeld.Total(), x.PortsHeld.Total()), cmp.Compare(x.PID, y.PID))
	})
	return culprits
}

// hold keeps, per pool, the largest holding any snapshot measured.
func (a *culpritAcc) hold(pool HeldPool, held PortsHeld) {
	p := a.pools[pool.key()]
	if p == nil {
		p = &pool
		a.pools[pool.key()] = p
	}
	p.Size = max(p.Size, pool.Size)
	if held.Total() > p.PortsHeld.Total() {
		p.PortsHeld = held
	}
}

func (a *culpritAcc) victim(u poolUse) {
	v := a.victims[u.victim]
	if v == nil {
		v = &Victim{PID: u.victim.PID, StartNs: u.victim.Start, Comm: u.comm, Calls: []Call{}}
		a.victims[u.victim] = v
	}
	v.Failures = satAdd(v.Failures, u.failures)
	for _, call := range u.calls {
		i := slices.IndexFunc(v.Calls, func(c Call) bool { return c.Op == call.Op && c.Errno == call.Errno })
		if i < 0 {
			v.Calls = append(v.Calls, Call{Op: call.Op, Errno: call.Errno})
			i = len(v.Calls) - 1
		}
		v.Calls[i].Count = satAdd(v.Calls[i].Count, call.Count)
	}
}

func (a *culpritAcc) culprit(c *Collector, procs map[uint32]*Process) Culprit {
	cu := Culprit{PID: uint32(a.pid), StartNs: a.start, Exited: a.start != 0, Comm: a.comm,
		Patterns: []string{}, Pools: []HeldPool{}, Victims: []Victim{}}
	// Per namespace the pool it held most of: pools of one namespace share the range's ports.
	most := map[uint64]PortsHeld{}
	for _, p := range a.pools {
		cu.Pools = append(cu.Pools, *p)
		if p.PortsHeld.Total() > most[p.Netns].Total() {
			most[p.Netns] = p.PortsHeld
		}
	}
	for _, h := range most {
		cu.PortsHeld = cu.PortsHeld.plus(h)
	}
	slices.SortFunc(cu.Pools, func(x, y HeldPool) int {
		return cmp.Or(cmp.Compare(y.PortsHeld.Total(), x.PortsHeld.Total()), cmp.Compare(x.Netns, y.Netns),
			strings.Compare(x.Kind, y.Kind), strings.Compare(x.Local, y.Local), strings.Compare(x.Dest, y.Dest))
	})
	if a.bindConnAny > 0 {
		cu.Patterns = append(cu.Patterns, string(attrib.BindAnyBeforeConnect))
	}
	if a.bindConn > a.bindConnAny {
		cu.Patterns = append(cu.Patterns, string(attrib.BindIPBeforeConnect))
	}
	for _, v := range a.victims {
		cu.Victims = append(cu.Victims, *v)
	}
	slices.SortFunc(cu.Victims, func(x, y Victim) int {
		return cmp.Or(cmp.Compare(y.Failures, x.Failures), cmp.Compare(x.PID, y.PID), cmp.Compare(x.StartNs, y.StartNs))
	})
	cu.identify(c, procs)
	return cu
}

// identify names the culprit: from what the collector read while it ran,
// else from its own entry among the failing processes.
func (cu *Culprit) identify(c *Collector, procs map[uint32]*Process) {
	cu.group = fmt.Sprintf("pid:%d", cu.PID)
	if cu.Exited {
		// Gone: what its pid names now is another process. Its closes group by name.
		cu.group = "exited:" + cu.Comm
		if len(cu.Pools) > 0 {
			cu.Netns = cu.Pools[0].Netns
		}
		return
	}
	if cu.PID == 0 {
		cu.Comm = noProcess
		if len(cu.Pools) > 0 {
			cu.Netns = cu.Pools[0].Netns
		}
		return
	}
	if h := c.holders[cu.PID]; h != nil {
		cu.Comm = cmp.Or(h.info.Comm, cu.Comm)
		cu.Cmdline, cu.Netns, cu.Cgroup = h.info.Cmdline, h.info.Netns, h.info.Cgroup
		if h.master != cu.PID {
			cu.Master = h.master
		}
		if h.program != nil {
			cu.Program = h.program.Exe
			cu.group = h.program.Key()
		}
	} else if p := procs[cu.PID]; p != nil {
		cu.Comm, cu.Cmdline, cu.Netns, cu.Cgroup = cmp.Or(p.Comm, cu.Comm), p.Cmdline, p.Netns, p.Cgroup
	}
	if cu.Netns == 0 && len(cu.Pools) > 0 {
		cu.Netns = cu.Pools[0].Netns // its sockets are there
	}
	id := procinfo.Identity(cu.Cgroup)
	cu.ContainerID, cu.Unit = id.ContainerID, id.Unit
}

// writeCulprits says who starved whom, one sentence per culprit program.
func writeCulprits(b *strings.Builder, culprits []Culprit) {
	for _, s := range (Report{Culprits: culprits}).Headline() {
		b.WriteString(term.Escape(s) + "\n")
	}
}

// culpritSentence reads e.g. "socat (pid 812, 60 processes of /usr/bin/socat)
// held 60 of the 64 ports of 127.0.0.1 through bind() before connect():
// python3 (pid 900) failed 12 connect() calls EADDRNOTAVAIL". Unescaped.
func culpritSentence(g []Culprit) string {
	held := map[poolKey]*HeldPool{}
	var order []poolKey
	for _, cu := range g {
		for _, p := range cu.Pools {
			h := held[p.key()]
			if h == nil {
				h = &HeldPool{Netns: p.Netns, Kind: p.Kind, Local: p.Local, Dest: p.Dest}
				held[p.key()] = h
				order = append(order, p.key())
			}
			h.Size = max(h.Size, p.Size)
			h.PortsHeld = h.PortsHeld.plus(p.PortsHeld)
		}
	}
	var main *HeldPool
	for _, k := range order {
		if main == nil || held[k].PortsHeld.Total() > main.PortsHeld.Total() {
			main = held[k]
		}
	}
	var s strings.Builder
	s.WriteString(culpritName(g))
	if main == nil {
		s.WriteString(" held ports")
	} else {
		where := main.Local
		if main.Kind == "connect" {
			where = main.Local + " -> " + main.Dest
		}
		fmt.Fprintf(&s, " held %d of the %d ports of %s through %s", main.PortsHeld.Total(), main.Size, where,
			heldHow(main.PortsHeld, g[0].PID == 0, len(g[0].Patterns) > 0))
		if len(order) > 1 {
			fmt.Fprintf(&s, " (and ports of %d other pools)", len(order)-1)
		}
	}
	s.WriteString(": " + victimsText(g))
	return s.String()
}

// culpritName names a culprit, or the processes of one program.
func culpritName(g []Culprit) string {
	first := g[0]
	if first.PID == 0 {
		return "sockets no process has open"
	}
	var s strings.Builder
	fmt.Fprintf(&s, "%s (pid %d", first.Comm, first.PID)
	if first.Exited {
		s.WriteString(", exited")
	}
	if len(g) > 1 {
		fmt.Fprintf(&s, ", %d processes of %s", len(g), cmp.Or(first.Program, first.Comm))
	}
	if m := sharedMaster(g); m != 0 && m != first.PID {
		what := "worker"
		if len(g) > 1 {
			what = "workers"
		}
		fmt.Fprintf(&s, ", %s of master pid %d", what, m)
	}
	if first.Unit != "" {
		s.WriteString(", " + first.Unit)
	}
	if first.ContainerID != "" {
		fmt.Fprintf(&s, ", container %.12s", first.ContainerID)
	}
	s.WriteString(")")
	return s.String()
}

// sharedMaster is the master every culprit of g is a worker of, 0 if none.
func sharedMaster(g []Culprit) uint32 {
	m := g[0].Master
	for _, cu := range g[1:] {
		if cu.Master != m {
			return 0
		}
	}
	return m
}

// heldHow says how ports were held: "bind() before connect()", or a list
// with counts when they were held in several ways.
func heldHow(h PortsHeld, nobody, bindConnect bool) string {
	bind := "bind()/listen()"
	if bindConnect {
		bind = "bind() before connect()"
	}
	tw := "TIME_WAIT after closing connections"
	if nobody {
		tw = "TIME_WAIT whose closer was not seen"
	}
	var parts []string
	var counts []int
	for _, p := range []struct {
		n    int
		what string
	}{{h.BindOwner, bind}, {h.Established, "established connections"}, {h.TimeWait, tw}, {h.Other, "sockets in other states"}} {
		if p.n > 0 {
			parts = append(parts, p.what)
			counts = append(counts, p.n)
		}
	}
	if len(parts) == 1 {
		return parts[0]
	}
	for i := range parts {
		parts[i] = fmt.Sprintf("%s (%d)", parts[i], counts[i])
	}
	return strings.Join(parts, ", ")
}

// maxVictimsNamed bounds the victims a sentence names; the rest are summed.
const maxVictimsNamed = 3

// victimsText names who failed, merging the victims of a group's culprits.
func victimsText(g []Culprit) string {
	self := map[uint32]bool{}
	merged := map[event.ProcKey]Victim{}
	for _, cu := range g {
		self[cu.PID] = cu.PID != 0
		for _, v := range cu.Victims {
			k := event.ProcKey{PID: v.PID, Start: v.StartNs}
			if v.Failures > merged[k].Failures {
				merged[k] = v
			}
		}
	}
	victims := make([]Victim, 0, len(merged))
	for _, v := range merged {
		victims = append(victims, v)
	}
	slices.SortFunc(victims, func(x, y Victim) int {
		return cmp.Or(cmp.Compare(y.Failures, x.Failures), cmp.Compare(x.PID, y.PID), cmp.Compare(x.StartNs, y.StartNs))
	})
	var parts []string
	var rest, restFailures uint64
	for i, v := range victims {
		if i >= maxVictimsNamed {
			rest++
			restFailures = satAdd(restFailures, v.Failures)
			continue
		}
		who := fmt.Sprintf("%s (pid %d)", v.Comm, v.PID)
		if self[v.PID] {
			who += " itself"
		}
		parts = append(parts, who+" failed "+callsText(v.Calls))
	}
	if rest > 0 {
		parts = append(parts, fmt.Sprintf("and %d more processes failed %d calls", rest, restFailures))
	}
	if len(parts) == 0 {
		return "no failure recorded"
	}
	return strings.Join(parts, "; ")
}

// callsText reads e.g. "12 connect() calls EADDRNOTAVAIL and 3 bind() calls EADDRINUSE".
func callsText(calls []Call) string {
	parts := make([]string, 0, len(calls))
	for _, c := range calls {
		noun := "calls"
		if c.Count == 1 {
			noun = "call"
		}
		parts = append(parts, fmt.Sprintf("%d %s() %s %s", c.Count, c.Op, noun, c.Errno))
	}
	return strings.Join(parts, " and ")
}

// maxHoldersShown bounds the holders a pattern's text names.
const maxHoldersShown = 5

// holdersText names a pool's owners, e.g. "pid 812 (socat) 48 bind-owned".
func holdersText(owners []pools.Owner) string {
	// Processes of one name together: 60 socat processes are one line, not 60.
	type group struct {
		first pools.Owner
		procs int
		held  PortsHeld
	}
	var groups []*group
	at := map[string]*group{}
	for _, o := range owners {
		key := fmt.Sprintf("pid:%d:%d", o.PID, o.Start)
		if o.PID != 0 && o.Comm != "" {
			key = "comm:" + o.Comm
		}
		g := at[key]
		if g == nil {
			g = &group{first: o}
			at[key] = g
			groups = append(groups, g)
		}
		g.procs++
		h := heldBy(o)
		g.held.BindOwner += h.BindOwner
		g.held.Established += h.Established
		g.held.TimeWait += h.TimeWait
		g.held.Other += h.Other
	}
	slices.SortStableFunc(groups, func(x, y *group) int { return cmp.Compare(y.held.Total(), x.held.Total()) })
	var parts []string
	for i, g := range groups {
		if i == maxHoldersShown {
			parts = append(parts, fmt.Sprintf("and %d more", len(groups)-i))
			break
		}
		o := g.first
		who := noProcess
		switch {
		case o.PID != 0 && g.procs > 1:
			who = fmt.Sprintf("%s (%d processes)", term.Escape(o.Comm), g.procs)
		case o.PID != 0 && o.Master != 0:
			who = fmt.Sprintf("pid %d (%s, a worker of pid %d)", o.PID, term.Escape(o.Comm), o.Master)
		case o.PID != 0:
			who = fmt.Sprintf("pid %d (%s)", o.PID, term.Escape(o.Comm))
		}
		var what []string
		for _, f := range []struct {
			n    int
			name string
		}{{g.held.BindOwner, "bind-owned"}, {g.held.Established, "established"}, {g.held.TimeWait, "TIME_WAIT"}, {g.held.Other, "other"}} {
			if f.n > 0 {
				what = append(what, fmt.Sprintf("%d %s", f.n, f.name))
			}
		}
		parts = append(parts, who+" "+strings.Join(what, ", "))
	}
	return strings.Join(parts, "; ")
}
