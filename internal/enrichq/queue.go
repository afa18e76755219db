// Package enrichq runs enrichment beside the ring-buffer reader: a bounded
// queue and one worker, so that scanning a namespace never stalls the reader.
package enrichq

import (
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/portsleuth/portsleuth/internal/event"
	"github.com/portsleuth/portsleuth/internal/pools"
)

// HolderKey is a port some socket holds, as a failure names it.
type HolderKey struct {
	Netns uint64
	Proto string
	Addr  string
	Port  uint16
}

// WantsHolder says whether e is a failure for a named port some socket holds.
func WantsHolder(e *event.Event) bool {
	return e.Class.Errno == unix.EADDRINUSE && !e.Class.Port0 && e.Class.Op != event.Connect
}

// HolderKeyOf is the port e failed for.
func HolderKeyOf(e *event.Event) HolderKey {
	return HolderKey{e.Netns, e.Class.Proto, e.Addr.Addr().String(), e.Addr.Port()}
}

// maxSeen bounds the queue's memory of kinds and holders; it starts over when full.
const maxSeen = 4096

// QueueLen is how many failures may wait for enrichment. Only the first
// failure of each (process, class, namespace, holder socket) waits, so 1024
// covers a burst of that many distinct culprits; beyond it, enrichment is
// dropped and counted rather than the ring-buffer reader made to wait.
const QueueLen = 1024

// closeWait bounds how long Close waits for the enrichment in progress.
const closeWait = 10 * time.Second

// EnrichFunc enriches one failure: (*pressure.Enricher).Enrich, or a stand-in in tests.
type EnrichFunc func(e *event.Event) *pools.Snapshot

// Result is one failure after enrichment.
type Result struct {
	// Event is the failure, with the holder enrichment found. The worker
	// made it a copy of its own: the receiver may change it.
	Event event.Event
	// Snapshot is nil when the failure was not its class's first or the
	// namespace could not be read.
	Snapshot *pools.Snapshot
	// HolderFound says Event.Holder was found by enrichment, not decoded.
	HolderFound bool
}

// Queue runs enrichment beside the ring-buffer reader: Submit never blocks,
// one worker goroutine enriches and hands each result to deliver. It lets
// through only the first failure of each (process, class, namespace,
// holder socket), so a storm of one kind costs one slot, not the queue.
type Queue struct {
	enrich  EnrichFunc
	deliver func(Result)
	jobs    chan event.Event
	done    chan struct{} // closed when the worker has returned

	mu      sync.Mutex
	closed  bool
	seen    map[queueKey]struct{}
	holders map[HolderKey]event.Holder
	pending int
	idle    chan struct{} // closed while nothing is pending

	dropped   atomic.Uint64
	finished  atomic.Uint64 // failures the worker is done with
	stopped   atomic.Bool   // Close called: queued work is dropped
	abandoned atomic.Bool   // Close gave up waiting: deliver nothing more
}

type queueKey struct {
	proc      event.ProcKey
	class     event.Class
	netns     uint64
	holderIno uint64
}

// NewQueue starts the worker with room for size failures (QueueLen if size
// <= 0). deliver runs on the worker goroutine for every failure enriched.
func NewQueue(size int, enrich EnrichFunc, deliver func(Result)) *Queue {
	if size <= 0 {
		size = QueueLen
	}
	idle := make(chan struct{})
	close(idle)
	q := &Queue{enrich: enrich, deliver: deliver, jobs: make(chan event.Event, size), done: make(chan struct{}),
		seen: map[queueKey]struct{}{}, holders: map[HolderKey]event.Holder{}, idle: idle}
	go q.run()
	return q
}

func keyOf(e *event.Event) queueKey {
	k := queueKey{proc: e.Proc(), class: e.Class, netns: e.Netns}
	if e.Holder != nil {
		k.holderIno = e.Holder.SockIno
	}
	return k
}

// Fill gives a port-in-use failure whose kind was submitted before the
// holder enrichment found for it, without waiting: a first failure waits
// for its own scan instead, so a holder that changed is not named stale.
func (q *Queue) Fill(e *event.Event) {
	if e.Holder != nil || !WantsHolder(e) {
		return
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if _, seen := q.seen[keyOf(e)]; !seen {
		return
	}
	if h, ok := q.holders[HolderKeyOf(e)]; ok {
		e.Holder = &h
	}
}

// Submit hands e to the worker unless a failure of its kind went before.
// It never blocks: false means the queue was full (or closed) and the
// enrichment is dropped and counted. The kind counts as seen either way, so
// one drop stands for one kind of failure, not for every repeat of it.
func (q *Queue) Submit(e event.Event) bool {
	k := keyOf(&e)
	q.mu.Lock()
	defer q.mu.Unlock()
	if _, seen := q.seen[k]; seen {
		return true
	}
	if len(q.seen) >= maxSeen {
		clear(q.seen)
	}
	q.seen[k] = struct{}{}
	if q.closed {
		q.dropped.Add(1)
		return false
	}
	if e.Holder != nil {
		h := *e.Holder // the caller keeps its own; the worker may fill this one
		e.Holder = &h
	}
	select {
	case q.jobs <- e:
		if q.pending == 0 {
			q.idle = make(chan struct{})
		}
		q.pending++
		return true
	default:
		q.dropped.Add(1)
		return false
	}
}

// Finished is how many failures the worker is done with: a caller that
// waits can tell a slow worker from a stuck one.
func (q *Queue) Finished() uint64 { return q.finished.Load() }

// Dropped is how many failures went without enrichment: refused when the
// queue was full or closed, or still queued at Close.
func (q *Queue) Dropped() uint64 { return q.dropped.Load() }

// Drain waits up to timeout for every submitted failure to be enriched and
// delivered; false when some were still pending.
func (q *Queue) Drain(timeout time.Duration) bool {
	q.mu.Lock()
	idle := q.idle
	q.mu.Unlock()
	select {
	case <-idle:
		return true // already: a timer of 0 must not win the race
	default:
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-idle:
		return true
	case <-t.C:
		return false
	}
}

// Close stops the queue: what is still queued is dropped and counted, the
// enrichment in progress finishes, and Close waits for it up to closeWait.
// Nothing is delivered after Close returns. Drain first to keep the queued work.
func (q *Queue) Close() {
	q.mu.Lock()
	if !q.closed {
		q.closed = true
		q.stopped.Store(true)
		close(q.jobs)
	}
	q.mu.Unlock()
	t := time.NewTimer(closeWait)
	defer t.Stop()
	select {
	case <-q.done:
	case <-t.C:
		q.abandoned.Store(true) // an enrichment that hangs must not hang the agent's exit
	}
}

func (q *Queue) run() {
	defer close(q.done)
	for e := range q.jobs {
		if q.stopped.Load() {
			q.dropped.Add(1)
		} else {
			q.process(e)
		}
		q.finish()
	}
}

func (q *Queue) process(e event.Event) {
	had := e.Holder != nil
	snap := q.enrich(&e)
	found := !had && e.Holder != nil
	if found {
		q.remember(&e)
	}
	if q.abandoned.Load() {
		return
	}
	q.deliver(Result{Event: e, Snapshot: snap, HolderFound: found})
}

// remember keeps the holder found for e's port for Fill.
func (q *Queue) remember(e *event.Event) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.holders) >= maxSeen {
		clear(q.holders)
	}
	q.holders[HolderKeyOf(e)] = *e.Holder
}

func (q *Queue) finish() {
	q.finished.Add(1)
	q.mu.Lock()
	defer q.mu.Unlock()
	q.pending--
	if q.pending == 0 {
		close(q.idle)
	}
}
