package report

import (
	"errors"
	"net/netip"
	"slices"
	"sync"

	"github.com/portsleuth/portsleuth/internal/attrib"
	"github.com/portsleuth/portsleuth/internal/enrichq"
	"github.com/portsleuth/portsleuth/internal/event"
	"github.com/portsleuth/portsleuth/internal/netns"
	"github.com/portsleuth/portsleuth/internal/pools"
	"github.com/portsleuth/portsleuth/internal/procinfo"
)

// MaxExamples is how many failing events a process keeps as examples.
const MaxExamples = 5

// Collector keeps what only the event stream tells: examples, the addresses
// and options behind each failure class, and the process's identity and
// namespace sysctls captured at its first failure, while it is still alive.
// Its memory is bounded per process; counts come from the kernel, not from here.
//
// Observe runs on the ring-buffer reader and reads only the failing
// process's /proc entry; what is slow (pressure snapshots, holders, socket
// owners, namespace sysctls) comes later through Queue and Attach, which
// may run on another goroutine.
type Collector struct {
	// mu guards what Observe and Attach both touch; slow reads happen
	// outside it, so the reader waits for a merge at most, never a scan.
	mu     sync.Mutex
	sealed bool
	procs  map[event.ProcKey]*procEvents
	netns  map[uint64]*netns.Sysctls
	events uint64
	// Sysctls reads a namespace's sysctls through a thread in it; a test may replace it.
	Sysctls func(pid, tid uint32) (netns.Sysctls, error)
	// Lookup reads /proc for a process; a test may replace it.
	Lookup func(pid uint32) (procinfo.Info, error)
	// Owners finds the process holding a socket inode.
	Owners *Owners
	// NetnsSysctls reads namespace ino's sysctls through a handle on the
	// namespace itself (pressure.Enricher.Sysctls): the failing task (pid,
	// tid) may be gone. Nil reads them through the failing task (Sysctls).
	NetnsSysctls func(ino uint64, pid, tid uint32) (netns.Sysctls, error)
	// PinNetns, when set, is told of every failure as it is read, so that the
	// namespace it happened in is held for the enrichment that comes later.
	PinNetns func(ino uint64, pid, tid uint32)
	// Queue, when set, gets each failure after Observe for enrichment, and
	// names the holders already found; its results come back through Attach.
	// Without it, Observe reads the namespace's sysctls itself.
	Queue *enrichq.Queue
	// CgroupPath resolves a cgroup id for a process /proc no longer shows; nil offline.
	CgroupPath func(id uint64) string
	// Program and Master read a process's program and the master of a
	// prefork worker; a test may replace them.
	Program func(pid uint32) (procinfo.Program, error)
	Master  func(pid uint32) (uint32, error)
	// holders are the processes pressure snapshots named as pool owners,
	// read when the snapshot came: they may be gone by the report.
	holders map[uint32]*holderProc
	// parents maps a pid to its parent's, read while both lived: a traced
	// command's tree is followed through it after its members exit.
	parents map[uint32]uint32
	// tl is when the failures came; poolSamples how full their pools were
	// meanwhile (AddPoolSamples).
	tl          *timeline
	poolSamples []PoolSample
}

// holderProc is a pool owner as /proc named it when a snapshot counted it.
type holderProc struct {
	info    procinfo.Info
	master  uint32
	program *procinfo.Program
}

// maxHolderProcs and maxParents bound what the collector keeps about
// processes other than the failing ones; past them, later ones go unnamed.
const (
	maxHolderProcs = 1024
	maxParents     = 4096
	maxAncestors   = 64
)

// Owners resolves socket inodes to the process that has them open, once per
// inode (scanning /proc is not cheap), in bounded memory. It is safe for
// concurrent use: the reader asks FillCached, the enrichment worker Fill.
type Owners struct {
	// Lookup does the resolving; a test may replace it.
	Lookup func(ino uint64) (uint32, string)
	// Master names the master of a prefork worker; nil reads nothing.
	Master  func(pid uint32) (uint32, error)
	mu      sync.Mutex // held for the maps only, never across a lookup
	cache   map[uint64]socketOwner
	masters map[uint32]uint32
}

type socketOwner struct {
	pid  uint32
	comm string
}

// maxOwners bounds the cache; it starts over when full.
const maxOwners = 4096

// NewOwners resolves through /proc.
func NewOwners() *Owners { return &Owners{Lookup: procinfo.SocketOwner, Master: procinfo.Master} }

// Fill names the process behind e's port holder, if there is one, and the
// master it is a worker of. It may walk /proc: not for the reader.
func (o *Owners) Fill(e *event.Event) { o.fill(e.Holder, true) }

// FillCached names what an earlier Fill found, reading nothing.
func (o *Owners) FillCached(e *event.Event) { o.fill(e.Holder, false) }

func (o *Owners) fill(h *event.Holder, look bool) {
	if h == nil {
		return
	}
	switch so, ok := o.owner(h.SockIno); {
	case h.SockIno == 0:
	case h.PID != 0 && !ok:
		// Named already (enrichment looks first): kept, so the events
		// recorded with this holder are named from the cache.
		o.keepOwner(h.SockIno, socketOwner{h.PID, h.Comm})
	case h.PID == 0 && (ok || look):
		if !ok {
			so.pid, so.comm = o.Lookup(h.SockIno)
			o.keepOwner(h.SockIno, so)
		}
		h.PID, h.Comm = so.pid, so.comm
	case h.PID == 0:
		return
	}
	if h.PID != 0 && h.Master == 0 && o.Master != nil {
		m, ok := o.master(h.PID)
		if !ok && !look {
			return
		}
		if !ok {
			if got, err := o.Master(h.PID); err == nil && got != h.PID {
				m = got
			}
			o.keepMaster(h.PID, m)
		}
		h.Master = m
	}
}

func (o *Owners) owner(ino uint64) (socketOwner, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	so, ok := o.cache[ino]
	return so, ok
}

func (o *Owners) keepOwner(ino uint64, so socketOwner) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.cache == nil || len(o.cache) >= maxOwners {
		o.cache = map[uint64]socketOwner{}
	}
	o.cache[ino] = so
}

func (o *Owners) master(pid uint32) (uint32, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	m, ok := o.masters[pid]
	return m, ok
}

func (o *Owners) keepMaster(pid, m uint32) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.masters == nil || len(o.masters) >= maxOwners {
		o.masters = map[uint32]uint32{}
	}
	o.masters[pid] = m
}

type procEvents struct {
	pressure map[event.Class]*pools.Snapshot
	info     procinfo.Info
	program  *procinfo.Program // nil when /proc could not say
	netns    uint64
	cookie   uint64 // the namespace's cookie, from the first event (0: unknown)
	events   uint64
	examples []event.Event
	classes  map[event.Class]*classEvidence
}

type classEvidence struct {
	addrs, locals []netip.AddrPort
	options       []string
	holders       []event.Holder
}

// NewCollector returns an empty collector reading the live system.
func NewCollector() *Collector {
	return &Collector{
		procs:      map[event.ProcKey]*procEvents{},
		netns:      map[uint64]*netns.Sysctls{},
		Sysctls:    func(pid, tid uint32) (netns.Sysctls, error) { return netns.ReadTask(int(pid), int(tid)) },
		Lookup:     procinfo.Lookup,
		Owners:     NewOwners(),
		CgroupPath: procinfo.CgroupPathByID,
		Program:    procinfo.ProgramOf,
		Master:     procinfo.Master,
		holders:    map[uint32]*holderProc{},
		parents:    map[uint32]uint32{},
		tl:         newTimeline(),
	}
}

// NewOfflineCollector returns a collector for recorded events: it reads
// nothing from this host, so processes and namespaces are what was recorded.
func NewOfflineCollector() *Collector {
	c := NewCollector()
	c.Sysctls = func(uint32, uint32) (netns.Sysctls, error) { return netns.Sysctls{}, errOffline }
	c.Lookup = func(uint32) (procinfo.Info, error) { return procinfo.Info{}, errOffline }
	c.Owners = &Owners{Lookup: func(uint64) (uint32, string) { return 0, "" }}
	c.CgroupPath = nil
	c.Program = func(uint32) (procinfo.Program, error) { return procinfo.Program{}, errOffline }
	c.Master = func(pid uint32) (uint32, error) { return pid, errOffline }
	return c
}

var errOffline = errors.New("offline: not reading this host")

// lookup reads /proc for process k, and nothing if the pid now belongs to
// another process (a reused pid; a start time of 0 is unknown, e.g. recorded
// before start times were kept).
func (c *Collector) lookup(k event.ProcKey) (procinfo.Info, bool) {
	info, err := c.Lookup(k.PID)
	if err != nil {
		return procinfo.Info{}, false
	}
	if k.Start != 0 {
		if st, err := procinfo.StartTime(k.PID); err == nil && !procinfo.SameStart(k.Start, st) {
			return procinfo.Info{}, false
		}
	}
	return info, true
}

// program reads the program of a process lookup found alive, nil if it can't.
func (c *Collector) program(pid uint32) *procinfo.Program {
	prog, err := c.Program(pid)
	if err != nil {
		return nil
	}
	return &prog
}

// noteAncestors remembers pid's parent chain, stopping where it is known.
func (c *Collector) noteAncestors(pid, ppid uint32) {
	for range maxAncestors {
		if ppid == 0 || len(c.parents) >= maxParents {
			return
		}
		if _, known := c.parents[pid]; known {
			return
		}
		c.parents[pid] = ppid
		if _, known := c.parents[ppid]; known || ppid <= 1 {
			return
		}
		info, err := c.Lookup(ppid)
		if err != nil {
			return
		}
		pid, ppid = ppid, info.PPID
	}
}

// notePressure keeps the snapshot of a class's first failure and names the
// pool's owners now, while they still run.
func (c *Collector) notePressure(p *procEvents, class event.Class, snap *pools.Snapshot) {
	c.keepPressure(p, class, snap, c.readOwners(c.newOwners(snap)))
}

// newOwners lists the pool owners of snap not named yet, within the bound.
// The caller holds c.mu when another goroutine may Observe.
func (c *Collector) newOwners(snap *pools.Snapshot) []pools.Owner {
	var out []pools.Owner
	for _, o := range poolOwners(snap) {
		if o.PID <= 0 || o.Exited || len(c.holders)+len(out) >= maxHolderProcs {
			continue // an exited closer's pid is not its own any more
		}
		if _, seen := c.holders[uint32(o.PID)]; !seen && !slices.ContainsFunc(out, func(n pools.Owner) bool { return n.PID == o.PID }) {
			out = append(out, o)
		}
	}
	return out
}

// readOwners reads /proc for each owner; it touches no collector state.
func (c *Collector) readOwners(owners []pools.Owner) map[uint32]*holderProc {
	out := make(map[uint32]*holderProc, len(owners))
	for _, o := range owners {
		pid := uint32(o.PID)
		h := &holderProc{master: pid}
		if info, err := c.Lookup(pid); err == nil {
			h.info = info
			if m, err := c.Master(pid); err == nil && m != 0 {
				h.master = m
			}
			h.program = c.program(pid)
		}
		if h.info.Comm == "" {
			h.info.Comm = o.Comm
		}
		out[pid] = h
	}
	return out
}

// keepPressure stores a snapshot and the owners read for it.
func (c *Collector) keepPressure(p *procEvents, class event.Class, snap *pools.Snapshot, owners map[uint32]*holderProc) {
	if p.pressure[class] == nil {
		p.pressure[class] = snap
	}
	for pid, h := range owners {
		if _, seen := c.holders[pid]; !seen && len(c.holders) < maxHolderProcs {
			c.holders[pid] = h
		}
	}
}

// Events is how many events the collector has seen.
func (c *Collector) Events() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.events
}

// Observe records one failure and hands it to Queue. It fills in the
// holder and its owner as far as they are known already, so the caller sees
// the event as it will be reported; what enrichment finds later, Attach adds.
func (c *Collector) Observe(e *event.Event) {
	if c.PinNetns != nil {
		c.PinNetns(e.Netns, e.PID, e.TID)
	}
	if c.Queue != nil {
		c.Queue.Fill(e)
		c.Owners.FillCached(e)
	} else {
		c.Owners.Fill(e)
	}
	c.observe(e)
	if c.Queue != nil {
		c.Queue.Submit(*e) // after observe: the result finds the process recorded
	}
}

func (c *Collector) observe(e *event.Event) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.events++
	p := c.procs[e.Proc()]
	if p == nil {
		p = &procEvents{classes: map[event.Class]*classEvidence{}, netns: e.Netns, cookie: e.NetnsCookie, pressure: map[event.Class]*pools.Snapshot{}}
		var alive bool
		if p.info, alive = c.lookup(e.Proc()); alive {
			p.program = c.program(e.PID)
			c.noteAncestors(e.PID, p.info.PPID)
		}
		if p.info.Comm == "" {
			p.info.Comm = e.Comm
		}
		c.procs[e.Proc()] = p
	}
	if _, seen := c.netns[e.Netns]; !seen && c.Queue == nil {
		c.netns[e.Netns] = nil
		if s, err := c.readSysctls(e); err == nil {
			c.netns[e.Netns] = &s
		}
	}
	p.events++
	if e.Time.IsZero() {
		c.tl.unplotted++ // no time to plot it at
	} else {
		c.tl.add(e.Time, seriesKey{e.Proc(), e.Class})
	}
	if len(p.examples) < MaxExamples {
		p.examples = append(p.examples, *e)
	}
	ce := p.classes[e.Class]
	if ce == nil {
		ce = &classEvidence{}
		p.classes[e.Class] = ce
	}
	target := e.Addr
	if e.Class.Op == event.Connect {
		target = e.Dest
		if e.Addr.Port() != 0 {
			ce.locals = addCapped(ce.locals, e.Addr)
		}
	}
	ce.addrs = addCapped(ce.addrs, target)
	if e.Holder != nil {
		ce.addHolder(*e.Holder)
	}
	for _, o := range e.Options {
		if !slices.Contains(ce.options, o) {
			ce.options = append(ce.options, o)
		}
	}
}

// readSysctls reads the sysctls of e's namespace: through the namespace
// itself when NetnsSysctls is set (the failing task may be gone).
func (c *Collector) readSysctls(e *event.Event) (netns.Sysctls, error) {
	var s netns.Sysctls
	var err error
	if c.NetnsSysctls != nil {
		s, err = c.NetnsSysctls(e.Netns, e.PID, e.TID)
	} else {
		s, err = c.Sysctls(e.PID, e.TID)
	}
	if err == nil && s.Netns != e.Netns {
		err = errors.New("the task moved to another network namespace")
	}
	if err == nil && netns.CookieMismatch(s.Cookie, e.NetnsCookie) {
		err = errors.New("the namespace is gone: its number names a newer one")
	}
	return s, err
}

func (ce *classEvidence) addHolder(h event.Holder) {
	if len(ce.holders) < attrib.MaxAddrs && !slices.ContainsFunc(ce.holders, func(o event.Holder) bool {
		return o.Local == h.Local && o.State == h.State && o.PID == h.PID
	}) {
		ce.holders = append(ce.holders, h)
	}
}

// AddPoolSamples adds pool samples taken while tracing (or recorded) to
// the report, at most MaxPoolSamples in all.
func (c *Collector) AddPoolSamples(s []PoolSample) {
	c.mu.Lock()
	defer c.mu.Unlock()
	room := max(0, MaxPoolSamples-len(c.poolSamples))
	c.poolSamples = append(c.poolSamples, s[:min(room, len(s))]...)
}

// SysctlsOf returns the sysctls captured for a namespace, or nil.
func (c *Collector) SysctlsOf(ns uint64) *netns.Sysctls {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.netns[ns]
}

func addCapped(list []netip.AddrPort, a netip.AddrPort) []netip.AddrPort {
	if len(list) >= attrib.MaxAddrs || slices.Contains(list, a) {
		return list
	}
	return append(list, a)
}

// Attach merges what enrichment found for a failure Observe recorded: the
// namespace's sysctls, the pressure snapshot and its pool's owners, the
// holder and its owner. It runs on the enrichment worker: every slow read
// happens before the lock is taken, so Observe never waits for one.
func (c *Collector) Attach(r enrichq.Result) {
	e := &r.Event
	c.Owners.Fill(e)
	var sys *netns.Sysctls
	if c.claimNetns(e.Netns) {
		if s, err := c.readSysctls(e); err == nil {
			sys = &s
		}
	}
	var owners map[uint32]*holderProc
	if r.Snapshot != nil {
		c.mu.Lock()
		fresh := c.newOwners(r.Snapshot)
		c.mu.Unlock()
		owners = c.readOwners(fresh)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sealed {
		return
	}
	if sys != nil {
		c.netns[e.Netns] = sys
	}
	p := c.procs[e.Proc()]
	if p == nil {
		return // observed by an earlier collector (serve's previous interval)
	}
	if r.Snapshot != nil {
		c.keepPressure(p, e.Class, r.Snapshot, owners)
	}
	if e.Holder != nil {
		p.nameHolder(*e.Holder, e)
	}
}

// claimNetns says whether the caller is the one to read ns's sysctls.
func (c *Collector) claimNetns(ns uint64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, seen := c.netns[ns]; seen || c.sealed {
		return false
	}
	c.netns[ns] = nil // read, or tried: a failed read is not retried
	return true
}

// Seal stops Attach from changing the collector, so Build can read it while
// the enrichment worker still runs; what comes after is dropped.
func (c *Collector) Seal() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sealed = true
}

// nameHolder gives holder h, found or named by enrichment for failure e, to
// the examples and the class evidence that lack it: those of e's port
// observed before it was known, and those naming the same socket without
// its owner.
func (p *procEvents) nameHolder(h event.Holder, e *event.Event) {
	for i := range p.examples {
		x := &p.examples[i]
		switch {
		case x.Holder == nil && x.Class == e.Class && x.Netns == e.Netns && x.Addr == e.Addr:
			named := h
			x.Holder = &named
		case x.Holder != nil && x.Holder.PID == 0 && h.PID != 0 && h.SockIno != 0 && x.Holder.SockIno == h.SockIno:
			named := *x.Holder
			named.PID, named.Comm, named.Master = h.PID, h.Comm, h.Master
			x.Holder = &named
		}
	}
	ce := p.classes[e.Class]
	if ce == nil {
		return
	}
	if h.PID != 0 && h.SockIno != 0 {
		ce.holders = slices.DeleteFunc(ce.holders, func(o event.Holder) bool { return o.PID == 0 && o.SockIno == h.SockIno })
	}
	ce.addHolder(h)
}
