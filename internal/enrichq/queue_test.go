package enrichq

import (
	"net/netip"
	"runtime"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/portsleuth/portsleuth/internal/event"
	"github.com/portsleuth/portsleuth/internal/pools"
)

// waitLimit bounds every wait in these tests; none is a timing assertion.
const waitLimit = 10 * time.Second

var portInUse = event.Class{Op: event.Bind, Proto: "tcp", Family: "ipv4", Errno: unix.EADDRINUSE, AnyAddr: true}

// failure is the first failure of its kind for each distinct pid.
func failure(pid uint32) event.Event {
	return event.Event{PID: pid, Start: 1, TID: pid, Comm: "srv", Class: portInUse, Netns: 4026531840,
		Addr: netip.MustParseAddrPort("0.0.0.0:8080")}
}

// gate is an enrichment stand-in that blocks until released, and says
// when each call starts.
type gate struct {
	started chan uint32
	release chan struct{}
	once    sync.Once
}

func newGate() *gate {
	return &gate{started: make(chan uint32, 1<<16), release: make(chan struct{})}
}

func (g *gate) enrich(e *event.Event) *pools.Snapshot {
	g.started <- e.PID
	<-g.release
	e.Holder = &event.Holder{State: "LISTEN", Local: e.Addr, PID: 7, Comm: "holder"}
	return &pools.Snapshot{Netns: e.Netns, Verdict: "ok"}
}

func (g *gate) open() { g.once.Do(func() { close(g.release) }) }

func (g *gate) waitStarted(t *testing.T) uint32 {
	t.Helper()
	select {
	case pid := <-g.started:
		return pid
	case <-time.After(waitLimit):
		t.Fatal("enrichment never started")
		return 0
	}
}

// results collects what the worker delivers.
type results struct {
	mu  sync.Mutex
	got []Result
}

func (r *results) deliver(res Result) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, res)
}

func (r *results) all() []Result {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Result(nil), r.got...)
}

func stopped(t *testing.T, q *Queue) {
	t.Helper()
	select {
	case <-q.done:
	case <-time.After(waitLimit):
		t.Fatal("the worker goroutine did not return")
	}
}

// While enrichment is stuck, Submit still returns at once: exactly the
// queue's room is taken, every other first failure is dropped and counted.
func TestQueueSubmitNeverWaitsAndCountsDrops(t *testing.T) {
	const size, n = 8, 500
	g := newGate()
	var res results
	q := NewQueue(size, g.enrich, res.deliver)
	defer q.Close()
	defer g.open()

	if !q.Submit(failure(1)) {
		t.Fatal("the first failure was refused")
	}
	g.waitStarted(t) // the worker holds it: the queue is empty again
	accepted := 0
	for pid := uint32(2); pid < 2+n; pid++ {
		if q.Submit(failure(pid)) {
			accepted++
		}
	}
	if accepted != size || q.Dropped() != n-size {
		t.Errorf("accepted %d, dropped %d; want %d and %d", accepted, q.Dropped(), size, n-size)
	}
	if q.Drain(0) {
		t.Error("Drain said idle while enrichment was stuck")
	}
	g.open()
	if !q.Drain(waitLimit) {
		t.Fatal("not drained")
	}
	got := res.all()
	if len(got) != size+1 {
		t.Fatalf("%d results, want %d", len(got), size+1)
	}
	for _, r := range got {
		if r.Snapshot == nil || !r.HolderFound || r.Event.Holder == nil || r.Event.Holder.PID != 7 {
			t.Errorf("result %+v: want a snapshot and the holder found", r)
		}
	}
}

// A storm of one kind takes one slot: repeats are not queued nor counted as drops.
func TestQueueLetsThroughTheFirstOfEachKind(t *testing.T) {
	g := newGate()
	g.open()
	var res results
	q := NewQueue(4, g.enrich, res.deliver)
	defer q.Close()
	for range 10000 {
		if !q.Submit(failure(1)) {
			t.Fatal("a repeat was refused")
		}
	}
	other := failure(1)
	other.Netns++ // the same process failing alike in another namespace is a new kind
	q.Submit(other)
	if !q.Drain(waitLimit) {
		t.Fatal("not drained")
	}
	if got := len(res.all()); got != 2 || q.Dropped() != 0 {
		t.Errorf("%d results, %d dropped; want 2 and 0", got, q.Dropped())
	}
}

// Close with work queued: the enrichment in progress is delivered, what
// waited is dropped and counted, the worker returns, nothing comes after.
func TestQueueCloseWithPendingWork(t *testing.T) {
	const size = 4
	g := newGate()
	var res results
	q := NewQueue(size, g.enrich, res.deliver)
	q.Submit(failure(1))
	g.waitStarted(t)
	for pid := uint32(2); pid < 2+size; pid++ {
		if !q.Submit(failure(pid)) {
			t.Fatalf("pid %d refused with room left", pid)
		}
	}
	closed := make(chan struct{})
	go func() { q.Close(); close(closed) }()
	// Released only once Close has begun, so the queued work is still queued.
	for deadline := time.Now().Add(waitLimit); !q.stopped.Load(); runtime.Gosched() {
		if time.Now().After(deadline) {
			t.Fatal("Close never began")
		}
	}
	g.open()
	select {
	case <-closed:
	case <-time.After(waitLimit):
		t.Fatal("Close did not return")
	}
	stopped(t, q)
	if got := res.all(); len(got) != 1 || got[0].Event.PID != 1 {
		t.Errorf("results %+v, want only pid 1's", got)
	}
	if q.Dropped() != size {
		t.Errorf("dropped %d, want the %d still queued", q.Dropped(), size)
	}
	if q.Submit(failure(100)) || q.Dropped() != size+1 {
		t.Errorf("a submit after Close was taken, or not counted (dropped %d)", q.Dropped())
	}
	if !q.Drain(waitLimit) {
		t.Error("a closed queue is not idle")
	}
	q.Close() // twice is fine
	if got := len(res.all()); got != 1 {
		t.Errorf("%d results after Close, want 1", got)
	}
}

// An idle queue closes at once and leaves no goroutine.
func TestQueueCloseIdle(t *testing.T) {
	q := NewQueue(0, func(*event.Event) *pools.Snapshot { return nil }, func(Result) {})
	if cap(q.jobs) != QueueLen {
		t.Errorf("room for %d, want QueueLen %d", cap(q.jobs), QueueLen)
	}
	if !q.Drain(0) {
		t.Error("a new queue is not idle")
	}
	q.Close()
	stopped(t, q)
}

// Later failures of a kind name the holder its first one found; a new
// process's first failure does not take it, it waits for a scan of its own.
func TestQueueFillNamesHoldersFound(t *testing.T) {
	g := newGate()
	g.open()
	var res results
	q := NewQueue(4, g.enrich, res.deliver)
	defer q.Close()
	first := failure(1)
	q.Fill(&first)
	if first.Holder != nil {
		t.Fatalf("holder %+v before any enrichment", first.Holder)
	}
	q.Submit(first)
	if !q.Drain(waitLimit) {
		t.Fatal("not drained")
	}
	later := failure(1)
	q.Fill(&later)
	if later.Holder == nil || later.Holder.PID != 7 {
		t.Errorf("a later failure's holder: %+v, want pid 7", later.Holder)
	}
	other := failure(2)
	q.Fill(&other)
	if other.Holder != nil {
		t.Errorf("another process's first failure took a cached holder: %+v", other.Holder)
	}
	connect := failure(1)
	connect.Class = event.Class{Op: event.Connect, Proto: "tcp", Family: "ipv4", Errno: unix.EADDRNOTAVAIL, Port0: true}
	q.Submit(connect)
	q.Drain(waitLimit)
	q.Fill(&connect)
	if connect.Holder != nil {
		t.Errorf("a connect failure got a holder: %+v", connect.Holder)
	}
}

// The worker gets a holder of its own: filling it leaves the caller's alone.
func TestQueueSubmitCopiesTheHolder(t *testing.T) {
	var res results
	q := NewQueue(4, func(e *event.Event) *pools.Snapshot { e.Holder.PID = 9; return nil }, res.deliver)
	defer q.Close()
	e := failure(1)
	e.Holder = &event.Holder{State: "LISTEN", SockIno: 42}
	q.Submit(e)
	if !q.Drain(waitLimit) {
		t.Fatal("not drained")
	}
	if e.Holder.PID != 0 {
		t.Errorf("the caller's holder changed: %+v", *e.Holder)
	}
	if got := res.all(); len(got) != 1 || got[0].Event.Holder.PID != 9 || got[0].HolderFound {
		t.Errorf("results %+v, want the worker's holder filled and not counted as found", got)
	}
}
