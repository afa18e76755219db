package report

import (
	"bytes"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/portsleuth/portsleuth/internal/attrib"
	"github.com/portsleuth/portsleuth/internal/enrichq"
	"github.com/portsleuth/portsleuth/internal/event"
	"github.com/portsleuth/portsleuth/internal/pools"
	"github.com/portsleuth/portsleuth/internal/procinfo"
)

// waitLimit bounds every wait here; none is a timing assertion.
const waitLimit = 10 * time.Second

const pidHolder = 90009999

var portTaken = event.Class{Op: event.Bind, Proto: "tcp", Family: "ipv4", Errno: unix.EADDRINUSE, AnyAddr: true}

// stuckEnricher stands for a namespace scan that takes as long as the test
// wants: each call says it started, then waits to be released.
type stuckEnricher struct {
	started chan uint32
	release chan struct{}
}

func newStuckEnricher() *stuckEnricher {
	return &stuckEnricher{started: make(chan uint32, 1<<12), release: make(chan struct{})}
}

func (s *stuckEnricher) enrich(e *event.Event) *pools.Snapshot {
	s.started <- e.PID
	<-s.release
	e.Holder = &event.Holder{State: "LISTEN", Local: e.Addr, PID: pidHolder, Comm: "nginx"}
	return &pools.Snapshot{Netns: e.Netns, Verdict: "ok"}
}

func (s *stuckEnricher) waitStarted(t *testing.T) {
	t.Helper()
	select {
	case <-s.started:
	case <-time.After(waitLimit):
		t.Fatal("enrichment never started")
	}
}

func queuedCollector(t *testing.T, size int, enrich enrichq.EnrichFunc) *Collector {
	t.Helper()
	host := &fakeHost{infos: map[uint32]procinfo.Info{pidHolder: {Comm: "nginx", Cmdline: "nginx: master process"}}}
	c := host.collector()
	c.Queue = enrichq.NewQueue(size, enrich, c.Attach)
	t.Cleanup(c.Queue.Close)
	return c
}

func bindFailure(pid uint32, at time.Time) event.Event {
	return event.Event{Time: at, PID: pid, Start: 1, TID: pid, Comm: "srv", Thread: "srv", Class: portTaken,
		Netns: nsTest, Addr: netip.MustParseAddrPort("0.0.0.0:8080"), Source: "syscall", Options: []string{}}
}

// The reader does not wait for enrichment: with every scan stuck, a storm
// and a burst of new processes are observed in full, the queue keeps what
// it has room for and counts exactly what it drops; once the scans finish,
// the report names the holder for every process that got one.
func TestObserveDoesNotWaitForEnrichment(t *testing.T) {
	const size, procs, storm = 4, 50, 20000
	stuck := newStuckEnricher()
	c := queuedCollector(t, size, stuck.enrich)
	snap := emptySnapshot()
	t0 := time.Unix(1700000000, 0)
	observe := func(pid uint32, i int) {
		e := bindFailure(pid, t0.Add(time.Duration(i)*time.Millisecond))
		c.Observe(&e)
		k := e.Proc()
		if snap.Failures[k] == nil {
			snap.Failures[k] = map[event.Class]uint64{}
		}
		snap.Failures[k][portTaken]++
		snap.Meta[k] = event.ProcMeta{Comm: "srv", Netns: nsTest}
	}
	first := uint32(90005000)
	observe(first, 0)
	stuck.waitStarted(t) // the worker holds the first: the queue is empty
	for i := 1; i < storm; i++ {
		observe(first, i) // repeats of a kind being enriched take no room
	}
	for n := uint32(1); n < procs; n++ {
		observe(first+n, 0)
	}
	if got := c.Events(); got != storm+procs-1 {
		t.Errorf("observed %d events, want %d", got, storm+procs-1)
	}
	if got := c.Queue.Dropped(); got != procs-1-size {
		t.Errorf("dropped %d, want %d", got, procs-1-size)
	}
	close(stuck.release)
	if !c.Queue.Drain(waitLimit) {
		t.Fatal("enrichment not drained")
	}
	c.Queue.Close()
	c.Seal()

	r := Build(snap, c, Filter{}, "test", t0, time.Second)
	r.EnrichmentDropped = c.Queue.Dropped()
	named := 0
	for _, p := range r.Processes {
		var holders []pools.Owner
		for _, pat := range p.Patterns {
			if pat.Pattern == string(attrib.PortInUse) {
				holders = pat.Holders
			}
		}
		enriched := p.PID <= first+size
		if !enriched {
			if len(holders) != 0 || p.Examples[0].Holder != nil {
				t.Errorf("pid %d was dropped but names holders %+v", p.PID, holders)
			}
			continue
		}
		named++
		if len(holders) != 1 || holders[0].PID != pidHolder {
			t.Errorf("pid %d: holders %+v, want pid %d", p.PID, holders, pidHolder)
		}
		// Every example, even those observed before the scan finished.
		for _, x := range p.Examples {
			if x.Holder == nil || x.Holder.PID != pidHolder {
				t.Errorf("pid %d: example %s has holder %+v", p.PID, x.Time, x.Holder)
			}
		}
	}
	if named != size+1 {
		t.Errorf("%d processes named their holder, want %d", named, size+1)
	}
	var buf bytes.Buffer
	if err := r.WriteText(&buf); err != nil {
		t.Fatal(err)
	}
	if want := "enrichment queue full: 45 first failures of a kind"; !strings.Contains(buf.String(), want) {
		t.Errorf("text lacks %q:\n%s", want, buf.String())
	}
	// Later failures of a kind name the holder at once, before any scan.
	later := bindFailure(first, t0.Add(time.Hour))
	c.Queue.Fill(&later)
	if later.Holder == nil || later.Holder.PID != pidHolder {
		t.Errorf("a later failure's holder: %+v", later.Holder)
	}
}

// A snapshot that comes after Observe still reaches the report, with the
// pool's owners named as /proc had them when it came.
func TestAttachedSnapshotReachesTheReport(t *testing.T) {
	c := queuedCollector(t, 0, func(e *event.Event) *pools.Snapshot {
		return &pools.Snapshot{Netns: e.Netns, Verdict: "connect pool full", ConnectPool: &pools.ConnectPool{
			Local: "127.0.0.1", Dest: e.Dest.String(), Size: 64, Established: 64, PercentUsed: 100,
			Owners: []pools.Owner{{PID: pidHolder, Comm: "filler", Sockets: 64, Established: 64}}}}
	})
	snap := emptySnapshot()
	failing(c, &snap, event.ProcKey{PID: pidPython, Start: 1}, "python3", connectFull, 3, "127.0.0.1:8080", nil)
	if !c.Queue.Drain(waitLimit) {
		t.Fatal("enrichment not drained")
	}
	c.Seal()
	r := Build(snap, c, Filter{}, "test", time.Unix(0, 0), time.Second)
	if len(r.Processes) != 1 || len(r.Processes[0].Patterns) != 1 {
		t.Fatalf("processes %+v", r.Processes)
	}
	pat := r.Processes[0].Patterns[0]
	if pat.Pressure == nil || pat.Pressure.ConnectPool == nil || pat.Pressure.ConnectPool.Dest != "127.0.0.1:8080" {
		t.Errorf("pattern %s: pressure %+v", pat.Pattern, pat.Pressure)
	}
	if len(r.Culprits) != 1 || r.Culprits[0].PID != pidHolder || r.Culprits[0].Cmdline != "nginx: master process" {
		t.Errorf("culprits %+v, want pid %d named from /proc", r.Culprits, pidHolder)
	}
	if r.EnrichmentDropped != 0 {
		t.Errorf("enrichment_dropped %d without a queue count", r.EnrichmentDropped)
	}
}

// After Seal, a late result changes nothing: Build may be reading.
func TestSealedCollectorIgnoresLateResults(t *testing.T) {
	c := NewOfflineCollector()
	e := bindFailure(pidSocat, time.Unix(1700000000, 0))
	c.Observe(&e)
	c.Seal()
	late := e
	late.Holder = &event.Holder{State: "LISTEN", Local: e.Addr, PID: pidHolder}
	c.Attach(enrichq.Result{Event: late, Snapshot: &pools.Snapshot{Verdict: "late"}, HolderFound: true})
	p := c.procs[e.Proc()]
	if p.pressure[portTaken] != nil || p.examples[0].Holder != nil || len(p.classes[portTaken].holders) != 0 {
		t.Errorf("a sealed collector took a late result: %+v", p)
	}
}

// A kernel-named holder whose owner only a /proc walk finds: the reader
// leaves it unnamed, the worker names it, and examples and evidence follow.
func TestAttachNamesTheOwnerOfAKernelHolder(t *testing.T) {
	c := NewOfflineCollector()
	walks := 0
	c.Owners = &Owners{Lookup: func(ino uint64) (uint32, string) { walks++; return pidHolder, "nginx" }}
	c.Queue = enrichq.NewQueue(0, func(*event.Event) *pools.Snapshot { return nil }, c.Attach)
	defer c.Queue.Close()
	e := bindFailure(pidSocat, time.Unix(1700000000, 0))
	e.Holder = &event.Holder{State: "LISTEN", Local: e.Addr, SockIno: 4242}
	c.Observe(&e)
	if e.Holder.PID != 0 {
		t.Fatalf("the reader walked /proc: holder %+v", *e.Holder)
	}
	if !c.Queue.Drain(waitLimit) {
		t.Fatal("enrichment not drained")
	}
	c.Seal()
	p := c.procs[e.Proc()]
	if h := p.examples[0].Holder; h == nil || h.PID != pidHolder || h.Comm != "nginx" {
		t.Errorf("example holder %+v", h)
	}
	if hs := p.classes[portTaken].holders; len(hs) != 1 || hs[0].PID != pidHolder {
		t.Errorf("class holders %+v, want pid %d alone", hs, pidHolder)
	}
	again := bindFailure(pidSocat, time.Unix(1700000001, 0))
	again.Holder = &event.Holder{State: "LISTEN", Local: e.Addr, SockIno: 4242}
	c.Owners.FillCached(&again)
	if again.Holder.PID != pidHolder || walks != 1 {
		t.Errorf("cached owner %+v after %d walks, want pid %d after 1", *again.Holder, walks, pidHolder)
	}
}

// A holder enrichment named already (the enricher looks before its scan)
// needs no walk of its own, and still names the recorded events that carry
// the same socket.
func TestAttachKeepsAnOwnerEnrichmentNamed(t *testing.T) {
	c := NewOfflineCollector()
	walks := 0
	c.Owners = &Owners{Lookup: func(uint64) (uint32, string) { walks++; return 0, "" }}
	named := func(e *event.Event) *pools.Snapshot {
		e.Holder.PID, e.Holder.Comm = pidHolder, "nginx"
		return nil
	}
	c.Queue = enrichq.NewQueue(0, named, c.Attach)
	defer c.Queue.Close()
	e := bindFailure(pidSocat, time.Unix(1700000000, 0))
	e.Holder = &event.Holder{State: "LISTEN", Local: e.Addr, SockIno: 4242}
	c.Observe(&e)
	if !c.Queue.Drain(waitLimit) {
		t.Fatal("enrichment not drained")
	}
	c.Seal()
	if h := c.procs[e.Proc()].examples[0].Holder; h == nil || h.PID != pidHolder {
		t.Errorf("example holder %+v, want pid %d", h, pidHolder)
	}
	recorded := bindFailure(pidSocat, time.Unix(1700000001, 0))
	recorded.Holder = &event.Holder{State: "LISTEN", Local: e.Addr, SockIno: 4242}
	c.Owners.FillCached(&recorded)
	if recorded.Holder.PID != pidHolder || walks != 0 {
		t.Errorf("recorded holder %+v after %d walks, want pid %d without a walk", *recorded.Holder, walks, pidHolder)
	}
}
