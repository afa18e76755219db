package pressure

import (
	"errors"
	"sync"
	"time"

	"github.com/cilium/ebpf"

	"github.com/portsleuth/portsleuth/internal/enrichq"
	"github.com/portsleuth/portsleuth/internal/event"
	"github.com/portsleuth/portsleuth/internal/netns"
	"github.com/portsleuth/portsleuth/internal/pools"
	"github.com/portsleuth/portsleuth/internal/procinfo"
)

// Enricher adds to failures what only a look at the namespace tells, once
// per (process, failure class): a pressure snapshot taken at that first
// failure, and, for a port in use that the kernel layer did not name (the
// tracepoint backend), the sockets holding it. It finds the namespace from
// the event's netns inode, not from the failing task, which is often gone.
type Enricher struct {
	// Closers, set before the first Enrich, is the tracer's map of who closed
	// each connection first: TIME_WAIT sockets then have an owner.
	Closers *ebpf.Map

	mu       sync.Mutex
	scMu     sync.Mutex // guards sc and scErr: Scanner is called from other goroutines
	sc       *Scanner
	scErr    error
	handles  *nsHandles
	seen     map[seenKey]bool
	holders  map[enrichq.HolderKey]foundHolders
	owners   procinfo.Inodes
	ownersAt time.Time
	// recent keeps each namespace's last scan for rescanTTL: a fan-out of
	// short-lived processes failing alike costs one scan, not one each.
	recent map[uint64]recentScan
}

type recentScan struct {
	ns pools.Namespace
	at time.Time
}

// rescanTTL is how long one scan of a namespace serves other processes' first failures.
const rescanTTL = 250 * time.Millisecond

type seenKey struct {
	proc  event.ProcKey
	class event.Class
}

// snapshotOwners is how many owners of each pool a snapshot names: enough
// for a proxy's or a prefork server's processes to be blamed each (60 socat
// processes holding one port each), bounded for a report's size.
const snapshotOwners = 64

// ownersTTL is how long one pass over /proc/*/fd serves.
const ownersTTL = 100 * time.Millisecond

// maxSeen bounds the enricher's memory; it starts over when full.
const maxSeen = 4096

// NewEnricher loads the iterators on first use.
func NewEnricher() *Enricher {
	return &Enricher{seen: map[seenKey]bool{}, holders: map[enrichq.HolderKey]foundHolders{}, handles: newNSHandles(maxHandles),
		recent: map[uint64]recentScan{}}
}

// Close releases the iterators and the namespace handles.
func (en *Enricher) Close() error {
	en.mu.Lock()
	defer en.mu.Unlock()
	err := en.handles.Close()
	en.scMu.Lock()
	defer en.scMu.Unlock()
	if en.sc != nil {
		err = errors.Join(err, en.sc.Close())
		en.sc = nil
	}
	return err
}

// Enrich returns a snapshot for the first failure of e's class by e's
// process (nil otherwise, or when the namespace is gone), and fills e.Holder
// for a port in use when it is empty. It may walk /proc and scan a namespace
// (~0.3 s per 100k sockets): call it through a Queue, never from the reader.
func (en *Enricher) Enrich(e *event.Event) *pools.Snapshot {
	en.mu.Lock()
	defer en.mu.Unlock()
	en.nameHolder(e)
	portInUse := enrichq.WantsHolder(e)
	hk := enrichq.HolderKeyOf(e)
	k := seenKey{e.Proc(), e.Class}
	if en.seen[k] {
		if portInUse && e.Holder == nil {
			e.Holder = firstHolder(en.holdersFor(hk, e.NetnsCookie))
		}
		return nil
	}
	if len(en.seen) >= maxSeen {
		en.seen, en.holders = map[seenKey]bool{}, map[enrichq.HolderKey]foundHolders{}
	}
	en.seen[k] = true
	var q *pools.HolderQuery
	if portInUse && e.Holder == nil {
		q = &pools.HolderQuery{Proto: e.Class.Proto, Addr: e.Addr.Addr(), Port: e.Addr.Port()}
	}
	if r, fresh := en.recent[e.Netns]; fresh && e.Netns != 0 && time.Since(r.at) < rescanTTL &&
		!netns.CookieMismatch(r.ns.Cookie, e.NetnsCookie) && (q == nil || len(en.holdersFor(hk, e.NetnsCookie)) > 0) {
		if q != nil {
			e.Holder = firstHolder(en.holdersFor(hk, e.NetnsCookie))
		}
		return pools.SnapshotFor(r.ns, e)
	}
	ns, ok := en.scan(e, q)
	if ok && e.Netns != 0 {
		if len(en.recent) >= maxHandles {
			clear(en.recent)
		}
		en.recent[e.Netns] = recentScan{ns, time.Now()}
	}
	if q != nil {
		if ok {
			en.holders[hk] = foundHolders{cookie: ns.Cookie, holders: q.Found}
		}
		// A holder from an earlier failure beats none when this scan failed.
		e.Holder = firstHolder(en.holdersFor(hk, e.NetnsCookie))
	}
	if !ok {
		return nil
	}
	return pools.SnapshotFor(ns, e)
}

// scan measures e's namespace, entered through a handle found from e.Netns,
// and answers q; false when the namespace is gone or cannot be read.
func (en *Enricher) scan(e *event.Event, q *pools.HolderQuery) (pools.Namespace, bool) {
	sc, err := en.Scanner()
	if err != nil {
		return pools.Namespace{}, false
	}
	f, err := en.handles.open(e.Netns, e.PID, e.TID)
	if err != nil {
		return pools.Namespace{}, false // gone already: the report says so by having no snapshot
	}
	defer f.Close()
	ns, err := sc.ScanFor(int(f.Fd()), en.socketOwners(), snapshotOwners, q)
	// A namespace under the failure's number can be another: the kernel
	// gives a destroyed namespace's number to the next one it makes.
	// Measuring that one would describe the wrong pools.
	if err != nil || (e.Netns != 0 && ns.Netns != e.Netns) || netns.CookieMismatch(ns.Cookie, e.NetnsCookie) {
		return pools.Namespace{}, false
	}
	if q != nil {
		for i := range q.Found {
			if h := &q.Found[i]; h.PID == 0 && h.SockIno != 0 {
				h.PID, h.Comm = procinfo.SocketOwner(h.SockIno)
			}
		}
	}
	return ns, true
}

// Pin keeps namespace ino open from the moment a failure in it is read, for
// the enrichment that comes later (see nsHandles.pin). Cheap when the
// namespace is already held: the ring-buffer reader calls it per failure.
func (en *Enricher) Pin(ino uint64, pid, tid uint32) { en.handles.pin(ino, pid, tid) }

// Scanner is the enricher's scanner, loaded on first use. A report's pool
// sampler scans with it too: a second load of the iterators, at the first
// failure, would compete with this one's for the CPU just when the first
// snapshot must be taken (on one slow CPU the snapshot then came after the
// culprit had closed its connections). Scans may run side by side: each
// opens iterators of its own.
func (en *Enricher) Scanner() (*Scanner, error) {
	en.scMu.Lock()
	defer en.scMu.Unlock()
	if en.sc == nil && en.scErr == nil {
		en.sc, en.scErr = NewScanner(en.Closers)
	}
	return en.sc, en.scErr
}

// Sysctls reads the port sysctls of namespace ino through the same handles
// as Enrich, so they can be read after the failing task (pid, tid) exited.
func (en *Enricher) Sysctls(ino uint64, pid, tid uint32) (netns.Sysctls, error) {
	f, err := en.handles.open(ino, pid, tid)
	if err != nil {
		return netns.Sysctls{}, err
	}
	defer f.Close()
	return netns.ReadFD(int(f.Fd()))
}

// nameHolder names the process behind a holder the kernel gave by its socket
// (the kernel-function backends), before anything slow: the namespace scan
// can take seconds on a loaded or emulated machine, and by then a crash
// loop's holder may be restarted, or its test over. The fd walk is the one
// the scan uses next.
func (en *Enricher) nameHolder(e *event.Event) {
	h := e.Holder
	if h == nil || h.PID != 0 || h.SockIno == 0 {
		return
	}
	if pid, ok := en.socketOwners()[h.SockIno]; ok {
		h.PID, h.Comm = pid, procinfo.Comm(int(pid))
	}
}

// socketOwners maps socket inodes to their processes, read again when the
// last pass over /proc/*/fd is older than ownersTTL: the failing process may
// be seconds old, and a stale map would miss it.
func (en *Enricher) socketOwners() procinfo.Inodes {
	if time.Since(en.ownersAt) > ownersTTL {
		en.owners, en.ownersAt = procinfo.SocketInodes(), time.Now()
	}
	return en.owners
}

// foundHolders are the holders of a port a scan found, and the cookie of the
// namespace it scanned: the key names the namespace by its inode number only,
// which a later namespace can be given.
type foundHolders struct {
	cookie  uint64
	holders []event.Holder
}

// holdersFor is what a scan found for hk, unless it scanned another namespace
// than the one whose cookie is cookie.
func (en *Enricher) holdersFor(hk enrichq.HolderKey, cookie uint64) []event.Holder {
	f := en.holders[hk]
	if netns.CookieMismatch(f.cookie, cookie) {
		return nil
	}
	return f.holders
}

func firstHolder(hs []event.Holder) *event.Holder {
	if len(hs) == 0 {
		return nil
	}
	h := hs[0]
	return &h
}
