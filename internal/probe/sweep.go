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
// the first pending bind decides every bind pending longer than sweepAge
// (bpf/cgroup.h, sweep_fire), with no help from here. What Go keeps is the
// end of a session: deciding the calls still pending when it must report
// now, by test runs of ps_sweep, which does the same accounting.
const sweepAge = time.Second

type sweeper struct {
	prog    *ebpf.Program
	pending *ebpf.Map
}

// sweep decides the calls pending longer than age and says how many calls
// are still pending. The kernel checks the age again, and deleting the entry
// settles any race with a hook or the kernel's sweep.
func (s *sweeper) sweep(age time.Duration) (left int) {
	cutoff := coarseNow() - uint64(age)
	var stale []uint64
	var key uint64
	var p gen.PortsleuthPending
	it := s.pending.Iterate()
	for it.Next(&key, &p) {
		if p.Ts <= cutoff {
			stale = append(stale, key)
		} else {
			left++
		}
	}
	// An iteration cut short by concurrent deletes is retried by the caller.
	for _, k := range stale {
		if ret, err := s.prog.Run(&ebpf.RunOptions{Context: []uint64{k, cutoff}}); err != nil || ret == 0 {
			left++ // not decided now (a hook took it first, or the run failed): next time
		}
	}
	return left
}

// coarseNow is bpf_ktime_get_coarse_ns()'s clock, which stamps pending binds.
func coarseNow() uint64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC_COARSE, &ts)
	return uint64(ts.Nano())
}

// Settle waits, up to about a second, until every call pending when it was
// called has been decided by its own hooks or by the sweep age. A session
// calls it before its last report so that a failure seen only by what
// happened (or did not) afterwards is in it.
func (t *Tracer) Settle() {
	if t.sweeper == nil {
		return
	}
	deadline := time.Now().Add(sweepAge + 250*time.Millisecond)
	for t.sweeper.sweep(sweepAge) > 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
}

// Flush decides every call still pending, whatever its age: call it once the
// traced calls are known to have returned (the traced command exited, the
// test's calls came back), so that a report taken then misses no failure.
// A call still running when Flush decides it would be counted as failed.
// Backends that see return values have nothing pending.
func (t *Tracer) Flush() {
	if t.sweeper != nil {
		t.sweeper.sweep(0)
	}
}
