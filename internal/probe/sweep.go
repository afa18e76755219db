package probe

import (
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/portsleuth/portsleuth/gen"
)

// The cgroup backend learns that a bind failed from what happens next to its
// socket (bound again, released). A socket that sees nothing next would keep
// its failure pending forever, so the kernel sweeps: a bpf_timer armed by
// the first pending bind decides, every sweepEvery, each bind pending longer
// than sweepAge (bpf/cgroup.h, sweep_fire), with no help from here. What Go
// keeps is the end of a session: waiting for those decisions, or aging the
// binds still pending (ps_sweep) when the traced calls are known to have
// returned, so that the kernel's next sweep decides them.
const (
	sweepAge   = time.Duration(gen.PortsleuthPsSweepNsPS_SWEEP_AGE_NS)
	sweepEvery = time.Duration(gen.PortsleuthPsSweepNsPS_SWEEP_EVERY_NS)
)

type sweeper struct {
	prog    *ebpf.Program
	pending *ebpf.Map
}

// pendingSince lists the binds pending since cutoff (coarse monotonic ns) or
// earlier.
func (s *sweeper) pendingSince(cutoff uint64) []uint64 {
	var keys []uint64
	var key uint64
	var p gen.PortsleuthPending
	for it := s.pending.Iterate(); it.Next(&key, &p); {
		if p.Ts <= cutoff {
			keys = append(keys, key)
		}
	}
	return keys
}

// waitDecided polls until none of the binds pending since cutoff is left,
// or the deadline passes.
func (s *sweeper) waitDecided(cutoff uint64, deadline time.Time) {
	for len(s.pendingSince(cutoff)) > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
}

// coarseNow is bpf_ktime_get_coarse_ns()'s clock, which stamps pending binds.
func coarseNow() uint64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC_COARSE, &ts)
	return uint64(ts.Nano())
}

// Settle waits, up to sweepAge and two sweeps, until every call pending when
// it was called has been decided by its own hooks or by the kernel's sweep.
// A session calls it before its last report so that a failure seen only by
// what happened (or did not) afterwards is in it.
func (t *Tracer) Settle() {
	if t.sweeper == nil {
		return
	}
	t.sweeper.waitDecided(coarseNow(), time.Now().Add(sweepAge+2*sweepEvery))
}

// Flush decides every call still pending, whatever its age: call it once the
// traced calls are known to have returned (the traced command exited, the
// test's calls came back), so that a report taken then misses no failure.
// A call still running when Flush decides it would be counted as failed. It
// ages those binds and waits for the kernel's next sweep (up to two).
// Backends that see return values have nothing pending.
func (t *Tracer) Flush() {
	if t.sweeper == nil {
		return
	}
	cutoff := coarseNow()
	for _, k := range t.sweeper.pendingSince(cutoff) {
		// A bind decided meanwhile is simply not found.
		_, _ = t.sweeper.prog.Run(&ebpf.RunOptions{Context: []uint64{k, cutoff}})
	}
	t.sweeper.waitDecided(cutoff, time.Now().Add(2*sweepEvery+100*time.Millisecond))
}
