package report

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/portsleuth/portsleuth/internal/event"
	"github.com/portsleuth/portsleuth/internal/pools"
	"github.com/portsleuth/portsleuth/internal/term"
)

// PoolSample is one measurement of a pool a failure drew from: the bind(local, 0)
// pool of a failing bind() or listen(), the connect pool of a failing
// connect(). JSON names are a contract (see README).
type PoolSample struct {
	Time  string `json:"time"` // RFC 3339 with nanoseconds, UTC
	Netns uint64 `json:"netns"`
	Kind  string `json:"kind"` // "bind" or "connect"
	Proto string `json:"proto,omitempty"`
	Local string `json:"local"`
	Dest  string `json:"dest,omitempty"`
	// Used is Size less Free. TimeWait and Established break a connect
	// pool's down; a bind pool's ports are held by bind() owners, and both are 0.
	Used        int `json:"used"`
	TimeWait    int `json:"time_wait"`
	Established int `json:"established"`
	Free        int `json:"free"`
	Size        int `json:"size"`
}

// Sampling bounds: namespaces sampled, pools per namespace, rounds per
// namespace (an hour at one a second), and so samples in all.
const (
	MaxSampledNamespaces = 8
	MaxSampledPools      = 4
	MaxSampleRounds      = 3600
	MaxPoolSamples       = MaxSampledNamespaces * MaxSampledPools * MaxSampleRounds
)

// PoolSamplingLosses is what pool sampling could not do; nothing is lost
// silently. JSON names are a contract (see README).
type PoolSamplingLosses struct {
	// PoolSamplesDropped counts samples of sampled pools not taken or not
	// kept: one per pool for each round past MaxSampleRounds, and each
	// sample past MaxPoolSamples.
	PoolSamplesDropped uint64 `json:"pool_samples_dropped"`
	// PoolsUnsampled counts pools a failure drew from that were never
	// sampled: past MaxSampledPools of their namespace or past
	// MaxSampledNamespaces namespaces (such a namespace counts by its
	// pools), whose every failure came while the sampler's queue was full,
	// or whose namespace could not be opened. Past maxMissedPools pools
	// missed for a full queue, each further failure of such a pool counts.
	PoolsUnsampled uint64 `json:"pools_unsampled"`
	// PoolSampleErrors counts namespaces that could not be opened or
	// scanned (a namespace whose scan fails is no longer sampled);
	// PoolSampleError is the first of these errors.
	PoolSampleErrors uint64 `json:"pool_sample_errors"`
	PoolSampleError  string `json:"pool_sample_error,omitempty"`
}

// text is the report's line on the losses; empty when there are none.
func (l PoolSamplingLosses) text() string {
	if l.PoolSamplesDropped == 0 && l.PoolsUnsampled == 0 && l.PoolSampleErrors == 0 {
		return ""
	}
	first := ""
	if l.PoolSampleError != "" {
		first = " (the first: " + term.Escape(l.PoolSampleError) + ")"
	}
	return fmt.Sprintf("pool sampling: %d samples dropped, %d pools unsampled, %d namespaces could not be opened or scanned%s\n",
		l.PoolSamplesDropped, l.PoolsUnsampled, l.PoolSampleErrors, first)
}

// PoolScan measures one network namespace's pools.
type PoolScan func() (pools.Namespace, error)

// PoolSampler samples, from its first failure on, each pool a failure drew
// from, once every Every at most (never more often than a round of scans
// takes), on a goroutine of its own: Notice, on the ring-buffer reader,
// only looks up a map and sends on a buffered channel.
type PoolSampler struct {
	// Open finds network namespace ino, through the failing task (pid,
	// tid) if need be, and returns how to scan it and how to let it go.
	Open  func(ino uint64, pid, tid uint32) (PoolScan, func(), error)
	Every time.Duration
	// Now is the clock; a test may replace it.
	Now func() time.Time

	seen map[poolTarget]bool // the reader's alone, as are missed and missedPast
	// missed are pools past the bounds, or whose notes found the queue
	// full, not handed over (yet).
	missed     map[poolTarget]bool
	missedPast uint64
	notes      chan poolNote
	dropped    atomic.Uint64
	stop       chan struct{}
	done       chan struct{}
	mu         sync.Mutex
	samples    []PoolSample
	errs       []error
	losses     PoolSamplingLosses // all but the reader's counts
}

// poolTarget is a pool to sample, comparable and built without allocating:
// Notice runs for every event of a storm.
type poolTarget struct {
	netns       uint64
	kind, proto string
	local       netip.Addr // invalid for a connect: the fullest source
	dest        netip.AddrPort
}

func (t poolTarget) localString() string {
	if !t.local.IsValid() {
		return ""
	}
	return t.local.String()
}

func (t poolTarget) destString() string {
	if !t.dest.IsValid() {
		return ""
	}
	return t.dest.String()
}

type poolNote struct {
	target   poolTarget
	pid, tid uint32
}

// maxErrs bounds the scan errors kept for the report; maxMissedPools the
// pools the reader remembers as missed (each is counted once).
const (
	maxErrs        = 8
	maxMissedPools = 4096
)

// Start starts the sampler's goroutine; Stop ends it.
func (s *PoolSampler) Start() {
	if s.Every <= 0 {
		s.Every = time.Second
	}
	if s.Now == nil {
		s.Now = time.Now
	}
	s.seen, s.missed = map[poolTarget]bool{}, map[poolTarget]bool{}
	s.notes = make(chan poolNote, 64)
	s.stop, s.done = make(chan struct{}), make(chan struct{})
	go s.run()
}

// Notice hands the pool of failure e to the sampler, once per pool. It
// never blocks: with the channel full the pool is not marked, so a later
// failure of it tries again; until then it counts as missed.
func (s *PoolSampler) Notice(e *event.Event) {
	t, ok := targetOf(e)
	if !ok || s.seen[t] {
		return
	}
	if len(s.seen) >= MaxSampledNamespaces*MaxSampledPools {
		s.miss(t)
		return
	}
	select {
	case s.notes <- poolNote{t, e.PID, e.TID}:
		s.seen[t] = true
		delete(s.missed, t)
	default:
		s.dropped.Add(1)
		s.miss(t)
	}
}

// miss remembers pool t as not handed over, in a bounded set.
func (s *PoolSampler) miss(t poolTarget) {
	switch {
	case s.missed[t]:
	case len(s.missed) < maxMissedPools:
		s.missed[t] = true
	default:
		s.missedPast++
	}
}

// Losses is what sampling could not do. Call it after Stop, on the
// goroutine that called Notice.
func (s *PoolSampler) Losses() PoolSamplingLosses {
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.losses
	l.PoolsUnsampled += uint64(len(s.missed)) + s.missedPast
	return l
}

// Stop ends sampling and returns the samples taken, oldest first, and the
// errors that ended sampling a namespace.
func (s *PoolSampler) Stop() ([]PoolSample, error) {
	close(s.stop)
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.samples, errors.Join(s.errs...)
}

// targetOf is the pool failure e drew from.
func targetOf(e *event.Event) (poolTarget, bool) {
	t := poolTarget{netns: e.Netns, proto: e.Class.Proto}
	if e.Class.Op == event.Connect {
		if !e.Dest.IsValid() {
			return poolTarget{}, false
		}
		t.kind, t.dest = "connect", e.Dest
		if a := e.Addr.Addr(); a.IsValid() && !a.IsUnspecified() {
			t.local = a
		}
		return t, true
	}
	if !e.Addr.Addr().IsValid() {
		return poolTarget{}, false
	}
	t.kind, t.local = "bind", e.Addr.Addr()
	return t, true
}

// sampledNS is one namespace being sampled.
type sampledNS struct {
	ino     uint64
	scan    PoolScan
	release func()
	targets []poolTarget
	rounds  int
}

func (s *PoolSampler) run() {
	defer close(s.done)
	var nss []*sampledNS
	defer func() {
		for _, ns := range nss {
			ns.release()
		}
	}()
	timer := time.NewTimer(s.Every)
	defer timer.Stop()
	for {
		select {
		case <-s.stop:
			s.dropNotes()
			return
		case n := <-s.notes:
			// The first sample is taken at the first failure.
			if ns := s.add(&nss, n); ns != nil {
				s.sample(ns, []poolTarget{n.target})
			}
		case <-timer.C:
			began := s.Now()
			nss = s.round(nss)
			timer.Reset(max(s.Every, s.Now().Sub(began)))
		}
	}
}

// dropNotes counts the pools handed over but not yet taken when sampling
// stops: Notice is not called after Stop, so the queue ends.
func (s *PoolSampler) dropNotes() {
	for {
		select {
		case <-s.notes:
			s.unsampled()
		default:
			return
		}
	}
}

// add finds or opens n's namespace and adds n's pool to it; nil when the
// namespace can't be sampled.
func (s *PoolSampler) add(nss *[]*sampledNS, n poolNote) *sampledNS {
	for _, ns := range *nss {
		if ns.ino == n.target.netns {
			if len(ns.targets) >= MaxSampledPools || ns.rounds >= MaxSampleRounds {
				s.unsampled()
				return nil
			}
			ns.targets = append(ns.targets, n.target)
			return ns
		}
	}
	if len(*nss) >= MaxSampledNamespaces {
		s.unsampled()
		return nil
	}
	scan, release, err := s.Open(n.target.netns, n.pid, n.tid)
	if err != nil {
		s.unsampled()
		s.noteErr(fmt.Errorf("sampling the pools of netns %d: %w", n.target.netns, err))
		return nil
	}
	ns := &sampledNS{ino: n.target.netns, scan: scan, release: release, targets: []poolTarget{n.target}}
	*nss = append(*nss, ns)
	return ns
}

// round samples every namespace once, and drops those that can't be scanned.
func (s *PoolSampler) round(nss []*sampledNS) []*sampledNS {
	kept := nss[:0]
	for _, ns := range nss {
		if ns.rounds >= MaxSampleRounds {
			s.dropSamples(len(ns.targets))
			kept = append(kept, ns)
			continue
		}
		if !s.sample(ns, ns.targets) {
			ns.release()
			continue
		}
		kept = append(kept, ns)
	}
	return kept
}

// sample scans ns and keeps a sample of each target; false when the scan failed.
func (s *PoolSampler) sample(ns *sampledNS, targets []poolTarget) bool {
	got, err := ns.scan()
	if err != nil {
		s.noteErr(fmt.Errorf("sampling the pools of netns %d: %w", ns.ino, err))
		return false
	}
	ns.rounds++
	at := s.Now().UTC().Format(time.RFC3339Nano)
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, t := range targets {
		if len(s.samples) >= MaxPoolSamples {
			s.losses.PoolSamplesDropped++
			continue
		}
		s.samples = append(s.samples, SampleOf(got, t.kind, t.proto, t.localString(), t.destString(), at))
	}
	return true
}

func (s *PoolSampler) noteErr(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.losses.PoolSampleErrors == 0 {
		s.losses.PoolSampleError = err.Error()
	}
	s.losses.PoolSampleErrors++
	if len(s.errs) < maxErrs {
		s.errs = append(s.errs, err)
	}
}

// unsampled counts a pool handed over that will not be sampled.
func (s *PoolSampler) unsampled() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.losses.PoolsUnsampled++
}

// dropSamples counts n samples not taken.
func (s *PoolSampler) dropSamples(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.losses.PoolSamplesDropped += uint64(n)
}

// Dropped counts pools not handed to the sampler because its queue was full.
func (s *PoolSampler) Dropped() uint64 { return s.dropped.Load() }

// SampleOf measures one pool in a scan of its namespace: the bind pool of
// (proto, local), or the connect pool to dest from local (the fullest
// source when local is empty). A pool the scan does not list has no socket:
// all its ports but those bind() owners hold are free.
func SampleOf(ns pools.Namespace, kind, proto, local, dest, at string) PoolSample {
	size := max(0, ns.PortRange[1]-ns.PortRange[0]+1-ns.Reserved)
	s := PoolSample{Time: at, Netns: ns.Netns, Kind: kind, Proto: proto, Local: local, Dest: dest, Size: size, Free: size}
	if kind == "bind" {
		for _, p := range ns.BindPools {
			if p.Proto == proto && p.Local == local {
				s.Used, s.Free, s.Size = p.Used, p.Free, p.Used+p.Free
			}
		}
		return s
	}
	s.Proto = ""
	var best *pools.ConnectPool
	for i := range ns.ConnectPools {
		p := &ns.ConnectPools[i]
		if p.Dest == dest && (local == "" || p.Local == local) && (best == nil || p.PercentUsed > best.PercentUsed) {
			best = p
		}
	}
	if best == nil {
		s.Free = max(0, size-ns.BindOwnedPorts)
		s.Used = size - s.Free
		return s
	}
	s.Local, s.Size, s.Free = best.Local, best.Size, best.Free
	s.Used, s.TimeWait, s.Established = best.Size-best.Free, best.TimeWait, best.Established
	return s
}

// CheckPoolSample validates a sample read from a recording.
func CheckPoolSample(s PoolSample) error {
	if _, err := time.Parse(time.RFC3339Nano, s.Time); err != nil {
		return fmt.Errorf("time %q is not RFC 3339", s.Time)
	}
	if s.Kind != "bind" && s.Kind != "connect" {
		return fmt.Errorf("kind %q is not bind or connect", s.Kind)
	}
	for _, n := range []int{s.Used, s.TimeWait, s.Established, s.Free, s.Size} {
		if n < 0 || n > 65536 {
			return fmt.Errorf("count %d out of range 0..65536", n)
		}
	}
	return nil
}
