package metrics

import (
	"fmt"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/portsleuth/portsleuth/internal/attrib"
	"github.com/portsleuth/portsleuth/internal/event"
)

// Source is what the collector reads: the tracer.
type Source interface {
	Snapshot() (event.Snapshot, error)
	ProgramStats() (map[string]*ebpf.ProgramStats, error)
}

// MaxComms bounds the comm label: processes beyond the first MaxComms names
// are counted under comm="other".
const MaxComms = 64

// OtherComm is the comm label of the overflow.
const OtherComm = "other"

// UnattributedComm labels failures the kernel counted without a process: its
// per-process table was full.
const UnattributedComm = "(unattributed)"

type failLabels struct{ op, errno, pattern, comm string }

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
	comms     map[string]bool
	readErrs  uint64

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
		comms:    map[string]bool{},
		failuresDesc: prometheus.NewDesc("portsleuth_failures_total",
			"Failed bind/connect/listen calls by operation, errno, call pattern and process name (comm beyond the first 64 names is \"other\").",
			[]string{"op", "errno", "pattern", "comm"}, nil),
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
	for pid, classes := range inc.Failures {
		comm := c.commLabel(cum.Meta[pid].Comm)
		st := cum.Procs[pid]
		for class, n := range classes {
			l := failLabels{string(class.Op), unix.ErrnoName(class.Errno), string(attrib.Classify(class, st)), comm}
			c.failures[l] += float64(n)
		}
	}
	// Failures that came once the kernel's per-process table was full.
	for class, n := range inc.Unattributed {
		l := failLabels{string(class.Op), unix.ErrnoName(class.Errno), string(attrib.Classify(class, event.ProcStats{})), UnattributedComm}
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

// commLabel admits the first MaxComms process names; the rest share "other".
func (c *Collector) commLabel(comm string) string {
	if comm == "" {
		comm = "unknown"
	}
	if c.comms[comm] {
		return comm
	}
	if len(c.comms) >= MaxComms {
		return OtherComm
	}
	c.comms[comm] = true
	return comm
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
		ch <- prometheus.MustNewConstMetric(c.failuresDesc, prometheus.CounterValue, v, l.op, l.errno, l.pattern, l.comm)
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
