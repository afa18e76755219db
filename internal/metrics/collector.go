package metrics

import (
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/portsleuth/portsleuth/internal/attrib"
	"github.com/portsleuth/portsleuth/internal/event"
	"github.com/portsleuth/portsleuth/internal/term"
)

// Source is what the collector reads: the tracer.
type Source interface {
	Snapshot() (event.Snapshot, error)
	ProgramStats() (map[string]event.ProgramStats, error)
}

// MaxComms bounds the comm label: at most MaxComms slots hold their own label
// at once; a process that fails while all are held counts under
// comm="other", with empty identity labels. A slot is a process name in one
// identity (container_id, pod_uid, unit): the same program in two pods takes
// two slots, so its series never mix pods, and a pod churn only cycles slots
// (each retires after CommIdle) instead of adding series without end.
// portsleuth_failures_total thus has at most (MaxComms + 2) x ops x errnos x
// patterns series (the 2: "other" and "(unattributed)").
const MaxComms = 64

// CommIdle is how long a comm keeps its label without failing. Past it the
// label frees its slot for a name that fails now, and its series are no
// longer exported: Prometheus marks them stale. Should the name take a slot
// again, its series start over from zero, which rate() and increase() read as
// a counter reset. Counts never move between series.
const CommIdle = 10 * time.Minute

// OtherComm is the comm label of the overflow.
const OtherComm = "other"

// UnattributedComm labels failures the kernel counted without a process: its
// per-process table was full.
const UnattributedComm = "(unattributed)"

type failLabels struct {
	op, errno, pattern string
	slot
}

// slot is what holds one of the MaxComms label slots: a name in an identity.
type slot struct {
	comm string
	identity
}

type callLabels struct{ op, result string }

// Collector keeps monotonic totals of the kernel's counters and exposes them.
type Collector struct {
	src      Source
	backend  string
	inferred bool

	mu        sync.Mutex
	deltas    *Deltas
	failures  map[failLabels]float64
	calls     map[callLabels]float64
	blocked   map[string]float64
	lost      uint64
	untracked uint64
	comms     map[slot]time.Time // slot -> its last failure
	ids       *identities
	held      map[event.ProcKey]*heldFailures
	readErrs  uint64

	// CommIdle and Now decide when a comm label frees its slot; tests shrink
	// the one and fake the other. IdentityWait is how long a process's
	// failures wait for its cgroup to be named before they count without it.
	CommIdle     time.Duration
	IdentityWait time.Duration
	Now          func() time.Time
	// CgroupOf finds a failing process's cgroup path (CgroupOf by default);
	// set it before the first Update. Tests name their own paths.
	CgroupOf func(event.ProcKey, event.ProcMeta) string

	failuresDesc, callsDesc, lostDesc, blockedDesc, untrackedDesc *prometheus.Desc
	runtimeDesc, runsDesc, backendDesc, errDesc                   *prometheus.Desc
}

// NewCollector exposes src, which runs on backend; inferred says the backend
// infers errnos instead of seeing them.
func NewCollector(src Source, backend string, inferred bool) *Collector {
	return &Collector{
		src:      src,
		backend:  backend,
		inferred: inferred,
		deltas:   NewDeltas(),
		failures: map[failLabels]float64{},
		calls:    map[callLabels]float64{},
		blocked:  map[string]float64{},
		comms:    map[slot]time.Time{},
		held:     map[event.ProcKey]*heldFailures{},
		CommIdle: CommIdle,
		// Three walks of the cgroup tree (at most one a second): a cgroup
		// made just before the failure is named by then.
		IdentityWait: 3 * time.Second,
		Now:          time.Now,
		CgroupOf:     CgroupOf,
		failuresDesc: prometheus.NewDesc("portsleuth_failures_total",
			"Failed bind/connect/listen calls by operation, errno, call pattern, process name and the container, pod and systemd unit its cgroup names (at most 64 name+identity pairs that failed in the last 10 minutes get their own labels; others are comm=\"other\").",
			[]string{"op", "errno", "pattern", "comm", "container_id", "pod_uid", "unit"}, nil),
		callsDesc: prometheus.NewDesc("portsleuth_calls_total",
			"bind/connect/listen calls seen, by result: ok, failed (address errors) or other_error.",
			[]string{"op", "result"}, nil),
		lostDesc: prometheus.NewDesc("portsleuth_lost_events_total",
			"Failures whose event found the ring buffer full. They are still in portsleuth_failures_total.", nil, nil),
		blockedDesc: prometheus.NewDesc("portsleuth_connect_candidates_blocked_total",
			"Kernel backends: candidate source ports connect() found taken, by what held them (time_wait or established).",
			[]string{"by"}, nil),
		runtimeDesc: prometheus.NewDesc("portsleuth_bpf_program_run_seconds_total",
			"Time the kernel spent in each portsleuth BPF program (needs kernel.bpf_stats_enabled, which serve turns on).",
			[]string{"program"}, nil),
		runsDesc: prometheus.NewDesc("portsleuth_bpf_program_runs_total",
			"Times each portsleuth BPF program ran.", []string{"program"}, nil),
		untrackedDesc: prometheus.NewDesc("portsleuth_untracked_calls_total",
			"cgroup backend: calls not followed to their outcome because its pending table was full; they are in no other count.", nil, nil),
		backendDesc: prometheus.NewDesc("portsleuth_backend_info",
			"The backend portsleuth traces with; errno is \"inferred\" where the backend sees no return value (cgroup).", []string{"backend", "errno"}, nil),
		errDesc: prometheus.NewDesc("portsleuth_read_errors_total",
			"Failed reads of the kernel counters.", nil, nil),
	}
}

// Update folds the counters' increments into the totals. serve calls it on a
// timer too, so an evicted kernel entry can't take uncounted increments with it.
func (c *Collector) Update() error {
	snap, err := c.src.Snapshot()
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		c.readErrs++
		return fmt.Errorf("reading counters: %w", err)
	}
	inc, cum := c.deltas.Next(snap)
	now := c.Now()
	if c.ids == nil {
		c.ids = newIdentities(c.CgroupOf)
	}
	c.hold(inc, cum)
	ready := c.identified(now, false)
	c.retireComms(ready, now)
	for pid, s := range ready {
		c.count(pid, c.slotLabel(s, now))
	}
	c.ids.prune(cum.Meta)
	// Failures that came once the kernel's per-process table was full.
	for class, n := range inc.Unattributed {
		l := failLabels{string(class.Op), unix.ErrnoName(class.Errno), string(attrib.Classify(class, event.ProcStats{})), slot{comm: UnattributedComm}}
		c.failures[l] += float64(n)
	}
	for _, st := range inc.Procs {
		c.calls[callLabels{"bind", "ok"}] += float64(st.BindsOK)
		c.calls[callLabels{"bind", "failed"}] += float64(st.BindsFailed)
		c.calls[callLabels{"bind", "other_error"}] += float64(st.BindsOther)
		c.calls[callLabels{"connect", "ok"}] += float64(st.ConnectsOK)
		c.calls[callLabels{"connect", "failed"}] += float64(st.ConnectsFailed)
		c.calls[callLabels{"connect", "other_error"}] += float64(st.ConnectsOther)
		c.calls[callLabels{"listen", "ok"}] += float64(st.ListensOK)
		c.calls[callLabels{"listen", "failed"}] += float64(st.ListensFailed)
		c.blocked["time_wait"] += float64(st.ConnectTWBlocked)
		c.blocked["established"] += float64(st.ConnectEstBlocked)
	}
	c.lost = snap.Lost
	c.untracked = snap.Untracked
	return nil
}

// commName is the label value of a process name: label values must be UTF-8
// (prometheus.MustNewConstMetric panics otherwise), and a comm is any bytes.
func commName(comm string) string {
	if comm == "" {
		return "unknown"
	}
	return term.Escape(comm)
}

// heldFailures are a process's failure counts until its identity is known:
// the cgroup it failed in may be newer than the last walk of the cgroup tree
// (at most one a second), and counts never move between series once counted.
type heldFailures struct {
	meta event.ProcMeta
	// recorded: the kernel's record of who the process is (meta) was in
	// the snapshot. The kernel makes it before it counts the failure and a
	// snapshot reads the counts first, but a record it could not make (its
	// table full) or a reader of another order would miss it: the count
	// waits for it, up to IdentityWait.
	recorded bool
	since    time.Time
	counts   map[heldKey]float64
}

type heldKey struct{ op, errno, pattern string }

// hold adds inc's failures to the held counts of their processes.
func (c *Collector) hold(inc, cum event.Snapshot) {
	for pid, classes := range inc.Failures {
		h := c.held[pid]
		if h == nil {
			h = &heldFailures{since: c.Now(), counts: map[heldKey]float64{}}
			c.held[pid] = h
		}
		h.meta, h.recorded = cum.Meta[pid]
		st := cum.Procs[pid]
		for class, n := range classes {
			h.counts[heldKey{string(class.Op), unix.ErrnoName(class.Errno), string(attrib.Classify(class, st))}] += float64(n)
		}
	}
	for pid, h := range c.held {
		if !h.recorded {
			h.meta, h.recorded = cum.Meta[pid]
		}
	}
}

// identified names the slot (name and identity) of each held process whose
// identity is known, or will not be: the kernel's record of it names no
// cgroup, or it has been waited for long enough (always, with all). A
// process without a record yet waits: its name comes from that record too.
func (c *Collector) identified(now time.Time, all bool) map[event.ProcKey]slot {
	ready := make(map[event.ProcKey]slot, len(c.held))
	for pid, h := range c.held {
		waited := all || now.Sub(h.since) >= c.IdentityWait
		if !h.recorded && !waited {
			continue
		}
		id, ok := c.ids.of(pid, h.meta)
		if ok || waited || h.meta.CgroupID == 0 {
			ready[pid] = slot{commName(h.meta.Comm), id}
		}
	}
	return ready
}

// count moves a process's held failures into the series of slot s.
func (c *Collector) count(pid event.ProcKey, s slot) {
	for k, n := range c.held[pid].counts {
		c.failures[failLabels{k.op, k.errno, k.pattern, s}] += n
	}
	delete(c.held, pid)
}

// retireComms first marks the labelled slots failing now as busy at now,
// so a slot failing again is never retired on the very update it fails in;
// then it frees the slots idle longer than CommIdle and drops their series.
func (c *Collector) retireComms(failing map[event.ProcKey]slot, now time.Time) {
	for _, s := range failing {
		if _, ok := c.comms[s]; ok {
			c.comms[s] = now
		}
	}
	for s, last := range c.comms {
		if now.Sub(last) <= c.CommIdle {
			continue
		}
		delete(c.comms, s)
		for l := range c.failures {
			if l.slot == s {
				delete(c.failures, l)
			}
		}
	}
}

// slotLabel gives a slot its own labels while one of the MaxComms slots is
// free or already its own; otherwise it counts under comm="other" without
// identity. retireComms has already freed the idle slots. A process named
// like a shared label counts under "other": it must never own, and retire,
// a series that other names feed.
func (c *Collector) slotLabel(s slot, now time.Time) slot {
	if _, ok := c.comms[s]; ok {
		return s
	}
	if len(c.comms) >= MaxComms || s.comm == OtherComm || s.comm == UnattributedComm {
		return slot{comm: OtherComm}
	}
	c.comms[s] = now
	return s
}

// Forget drops what the totals' increments remember of processes whose
// kernel records were deleted (see Deltas.Forget).
func (c *Collector) Forget(gone map[event.ProcKey]bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.deltas.Forget(gone)
	// A gone process's held failures count now, with what is known.
	if c.ids != nil {
		ready := c.identified(c.Now(), true)
		for pid, s := range ready {
			if gone[pid] {
				c.count(pid, c.slotLabel(s, c.Now()))
			}
		}
		c.ids.forget(gone)
	}
}

// Describe sends every descriptor.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.failuresDesc, c.callsDesc, c.lostDesc, c.blockedDesc, c.untrackedDesc,
		c.runtimeDesc, c.runsDesc, c.backendDesc, c.errDesc} {
		ch <- d
	}
}

// Collect reads the kernel once more and sends the totals.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	_ = c.Update() // a read error is exported below
	c.mu.Lock()
	defer c.mu.Unlock()
	for l, v := range c.failures {
		ch <- prometheus.MustNewConstMetric(c.failuresDesc, prometheus.CounterValue, v, l.op, l.errno, l.pattern, l.comm,
			l.containerID, l.podUID, l.unit)
	}
	for l, v := range c.calls {
		ch <- prometheus.MustNewConstMetric(c.callsDesc, prometheus.CounterValue, v, l.op, l.result)
	}
	for by, v := range c.blocked {
		ch <- prometheus.MustNewConstMetric(c.blockedDesc, prometheus.CounterValue, v, by)
	}
	ch <- prometheus.MustNewConstMetric(c.lostDesc, prometheus.CounterValue, float64(c.lost))
	ch <- prometheus.MustNewConstMetric(c.untrackedDesc, prometheus.CounterValue, float64(c.untracked))
	errno := "observed"
	if c.inferred {
		errno = "inferred"
	}
	ch <- prometheus.MustNewConstMetric(c.backendDesc, prometheus.GaugeValue, 1, c.backend, errno)
	ch <- prometheus.MustNewConstMetric(c.errDesc, prometheus.CounterValue, float64(c.readErrs))
	if stats, err := c.src.ProgramStats(); err == nil {
		for name, st := range stats {
			ch <- prometheus.MustNewConstMetric(c.runtimeDesc, prometheus.CounterValue, st.Runtime.Seconds(), name)
			ch <- prometheus.MustNewConstMetric(c.runsDesc, prometheus.CounterValue, float64(st.RunCount), name)
		}
	}
}
