package report

import (
	"errors"
	"net/netip"
	"slices"

	"github.com/portsleuth/portsleuth/internal/attrib"
	"github.com/portsleuth/portsleuth/internal/event"
	"github.com/portsleuth/portsleuth/internal/netns"
	"github.com/portsleuth/portsleuth/internal/pressure"
	"github.com/portsleuth/portsleuth/internal/procinfo"
)

// MaxExamples is how many failing events a process keeps as examples.
const MaxExamples = 5

// Collector keeps what only the event stream tells: examples, the addresses
// and options behind each failure class, and the process's identity and
// namespace sysctls captured at its first failure, while it is still alive.
// Its memory is bounded per process; counts come from the kernel, not from here.
type Collector struct {
	procs  map[event.ProcKey]*procEvents
	netns  map[uint64]*netns.Sysctls
	events uint64
	// Sysctls reads a namespace's sysctls through a thread in it; a test may replace it.
	Sysctls func(pid, tid uint32) (netns.Sysctls, error)
	// Lookup reads /proc for a process; a test may replace it.
	Lookup func(pid uint32) (procinfo.Info, error)
	// Owners finds the process holding a socket inode.
	Owners *Owners
	// Enricher takes pressure snapshots and finds holders; nil reads nothing.
	Enricher *pressure.Enricher
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
// inode (scanning /proc is not cheap), in bounded memory.
type Owners struct {
	// Lookup does the resolving; a test may replace it.
	Lookup func(ino uint64) (uint32, string)
	// Master names the master of a prefork worker; nil reads nothing.
	Master  func(pid uint32) (uint32, error)
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
// master it is a worker of.
func (o *Owners) Fill(e *event.Event) {
	h := e.Holder
	if h == nil {
		return
	}
	if h.PID == 0 && h.SockIno != 0 {
		if o.cache == nil || len(o.cache) >= maxOwners {
			o.cache = map[uint64]socketOwner{}
		}
		so, ok := o.cache[h.SockIno]
		if !ok {
			so.pid, so.comm = o.Lookup(h.SockIno)
			o.cache[h.SockIno] = so
		}
		h.PID, h.Comm = so.pid, so.comm
	}
	if h.PID != 0 && h.Master == 0 && o.Master != nil {
		if o.masters == nil || len(o.masters) >= maxOwners {
			o.masters = map[uint32]uint32{}
		}
		m, ok := o.masters[h.PID]
		if !ok {
			if got, err := o.Master(h.PID); err == nil && got != h.PID {
				m = got
			}
			o.masters[h.PID] = m
		}
		h.Master = m
	}
}

type procEvents struct {
	pressure map[event.Class]*pressure.Snapshot
	info     procinfo.Info
	program  *procinfo.Program // nil when /proc could not say
	netns    uint64
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
func (c *Collector) notePressure(p *procEvents, class event.Class, snap *pressure.Snapshot) {
	p.pressure[class] = snap
	for _, o := range poolOwners(snap) {
		if o.PID <= 0 || o.Exited || len(c.holders) >= maxHolderProcs {
			continue // an exited closer's pid is not its own any more
		}
		pid := uint32(o.PID)
		if _, seen := c.holders[pid]; seen {
			continue
		}
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
		c.holders[pid] = h
	}
}

// Events is how many events the collector has seen.
func (c *Collector) Events() uint64 { return c.events }

// Observe records one failure. It fills in the owner of a port's holder, so
// the caller sees the event as it will be reported.
func (c *Collector) Observe(e *event.Event) {
	c.events++
	c.Owners.Fill(e)
	p := c.procs[e.Proc()]
	if p == nil {
		p = &procEvents{classes: map[event.Class]*classEvidence{}, netns: e.Netns, pressure: map[event.Class]*pressure.Snapshot{}}
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
	if _, seen := c.netns[e.Netns]; !seen {
		c.netns[e.Netns] = nil
		read := c.Sysctls
		if c.Enricher != nil {
			// Through the namespace itself: the failing task may be gone.
			read = func(pid, tid uint32) (netns.Sysctls, error) { return c.Enricher.Sysctls(e.Netns, pid, tid) }
		}
		if s, err := read(e.PID, e.TID); err == nil && s.Netns == e.Netns {
			c.netns[e.Netns] = &s
		}
	}
	p.events++
	if c.Enricher != nil {
		if snap := c.Enricher.Enrich(e); snap != nil {
			c.notePressure(p, e.Class, snap)
		}
		c.Owners.Fill(e) // the master of a holder the enricher found
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
	if e.Holder != nil && len(ce.holders) < attrib.MaxAddrs && !slices.ContainsFunc(ce.holders, func(h event.Holder) bool {
		return h.Local == e.Holder.Local && h.State == e.Holder.State && h.PID == e.Holder.PID
	}) {
		ce.holders = append(ce.holders, *e.Holder)
	}
	for _, o := range e.Options {
		if !slices.Contains(ce.options, o) {
			ce.options = append(ce.options, o)
		}
	}
}

// SysctlsOf returns the sysctls captured for a namespace, or nil.
func (c *Collector) SysctlsOf(ns uint64) *netns.Sysctls { return c.netns[ns] }

func addCapped(list []netip.AddrPort, a netip.AddrPort) []netip.AddrPort {
	if len(list) >= attrib.MaxAddrs || slices.Contains(list, a) {
		return list
	}
	return append(list, a)
}
