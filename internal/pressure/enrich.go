package pressure

import (
	"fmt"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/portsleuth/portsleuth/internal/event"
	"github.com/portsleuth/portsleuth/internal/procinfo"
)

// Enricher adds to failures what only a look at the namespace tells, once
// per (process, failure class): a pressure snapshot taken at that first
// failure, and, for a port in use that the kernel layer did not name (the
// tracepoint backend), the sockets holding it.
type Enricher struct {
	mu       sync.Mutex
	sc       *Scanner
	scErr    error
	seen     map[seenKey]bool
	holders  map[holderKey][]event.Holder
	owners   Inodes
	ownersAt time.Time
}

type seenKey struct {
	pid   uint32
	class event.Class
}

type holderKey struct {
	netns uint64
	proto string
	addr  string
	port  uint16
}

// ownersTTL is how long one pass over /proc/*/fd serves.
const ownersTTL = 100 * time.Millisecond

// maxSeen bounds the enricher's memory; it starts over when full.
const maxSeen = 4096

// NewEnricher loads the iterators on first use.
func NewEnricher() *Enricher {
	return &Enricher{seen: map[seenKey]bool{}, holders: map[holderKey][]event.Holder{}}
}

// Close releases the iterators.
func (en *Enricher) Close() error {
	if en.sc != nil {
		return en.sc.Close()
	}
	return nil
}

// Enrich returns a snapshot for the first failure of e's class by e's
// process (nil otherwise, or when the namespace is gone), and fills e.Holder
// for a port in use when it is empty.
func (en *Enricher) Enrich(e *event.Event) *Snapshot {
	en.mu.Lock()
	defer en.mu.Unlock()
	k := seenKey{e.PID, e.Class}
	portInUse := e.Class.Errno == unix.EADDRINUSE && !e.Class.Port0 && e.Class.Op != event.Connect
	hk := holderKey{e.Netns, e.Class.Proto, e.Addr.Addr().String(), e.Addr.Port()}
	if portInUse && e.Holder == nil {
		if hs, ok := en.holders[hk]; ok && len(hs) > 0 {
			h := hs[0]
			e.Holder = &h
		}
	}
	if en.seen[k] {
		return nil
	}
	if len(en.seen) >= maxSeen {
		en.seen, en.holders = map[seenKey]bool{}, map[holderKey][]event.Holder{}
	}
	en.seen[k] = true
	if en.sc == nil && en.scErr == nil {
		en.sc, en.scErr = NewScanner()
	}
	if en.scErr != nil {
		return nil
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/task/%d/ns/net", e.PID, e.TID))
	if err != nil {
		return nil // gone already: the report says so by having no snapshot
	}
	defer f.Close()
	// The failing process may be seconds old: a stale map would miss it.
	if time.Since(en.ownersAt) > ownersTTL {
		en.owners, en.ownersAt = ScanInodes(), time.Now()
	}
	var q *HolderQuery
	if portInUse {
		q = &HolderQuery{Proto: e.Class.Proto, Addr: e.Addr.Addr(), Port: e.Addr.Port()}
	}
	ns, err := en.sc.ScanFor(int(f.Fd()), en.owners, 3, q)
	if err != nil || ns.Netns != e.Netns {
		return nil
	}
	if q != nil {
		for i := range q.Found {
			if h := &q.Found[i]; h.PID == 0 && h.SockIno != 0 {
				pid, comm := procinfo.SocketOwner(h.SockIno)
				h.PID, h.Comm = pid, comm
			}
		}
		en.holders[hk] = q.Found
		if e.Holder == nil && len(q.Found) > 0 {
			h := q.Found[0]
			e.Holder = &h
		}
	}
	return SnapshotFor(ns, e)
}
