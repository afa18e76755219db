package probe

import (
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/portsleuth/portsleuth/gen"
)

// The cgroup backend learns that a bind failed from what happens next to its
// socket (bound again, connected, released). A socket that sees nothing next
// would keep its failure pending forever, so the sweeper decides every call
// pending longer than sweepAge by a test run of ps_sweep, which does the same
// accounting the hooks do, in the kernel.
const (
	sweepEvery = 250 * time.Millisecond
	sweepAge   = time.Second
	port0Bound = 3 // PORT0_BOUND in bpf/cgroup.h: a mark, not a call
)

type sweeper struct {
	prog    *ebpf.Program
	pending *ebpf.Map
	done    chan struct{}
	wg      sync.WaitGroup
}

func startSweeper(prog *ebpf.Program, pending *ebpf.Map) *sweeper {
	s := &sweeper{prog: prog, pending: pending, done: make(chan struct{})}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		tick := time.NewTicker(sweepEvery)
		defer tick.Stop()
		for {
			select {
			case <-s.done:
				return
			case <-tick.C:
				s.sweep(sweepAge)
			}
		}
	}()
	return s
}

func (s *sweeper) stop() {
	close(s.done)
	s.wg.Wait()
}

// sweep decides the calls pending longer than age and says how many calls
// are still pending. The kernel checks the age again, and deleting the entry
// settles any race with a hook.
func (s *sweeper) sweep(age time.Duration) (left int) {
	now := monotonicNow()
	var stale []uint64
	var key uint64
	var p gen.PortsleuthPending
	it := s.pending.Iterate()
	for it.Next(&key, &p) {
		switch {
		case p.Kind == port0Bound:
		case now-p.Ts >= uint64(age):
			stale = append(stale, key)
		default:
			left++
		}
	}
	// An iteration cut short by concurrent deletes is retried next tick.
	for _, k := range stale {
		if ret, err := s.prog.Run(&ebpf.RunOptions{Context: []uint64{k, uint64(age)}}); err != nil || ret == 0 {
			left++ // not decided now (a hook took it first, or the run failed): next time
		}
	}
	return left
}

// monotonicNow is bpf_ktime_get_ns()'s clock.
func monotonicNow() uint64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
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
	deadline := time.Now().Add(sweepAge + sweepEvery)
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
