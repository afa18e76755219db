package metrics

import (
	"errors"
	"io/fs"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/portsleuth/portsleuth/internal/event"
	"github.com/portsleuth/portsleuth/internal/procinfo"
)

// Forgetter picks the processes whose kernel records serve may delete. The
// failure tables never evict, so a long-running agent must drop the records
// of processes long gone; but only once every reader (the metrics, the
// culprit log) has folded their last increment, or that increment is lost.
// A record may go when its process is gone and its counts have not changed
// for grace: pass at least the longest interval between two reads of any
// reader (serve passes twice that).
//
// Memory is bounded by the kernel tables: a process absent from a snapshot is
// dropped from the Forgetter too.
type Forgetter struct {
	grace time.Duration
	seen  map[event.ProcKey]quiet
}

// quiet is what a process's counts were and since when they have not moved.
type quiet struct {
	counts counts
	since  time.Time
}

// counts fingerprints a process's records. The kernel counters only grow
// while their entry lives, so any increment changes the sum or the stats.
type counts struct {
	stats event.ProcStats
	fails uint64
	meta  bool
}

// NewForgetter returns a Forgetter that waits grace after a process's last
// change.
func NewForgetter(grace time.Duration) *Forgetter {
	return &Forgetter{grace: grace, seen: map[event.ProcKey]quiet{}}
}

// Observe takes the next snapshot, read at now, and returns the processes
// that may be forgotten: gone (alive says false) and unchanged for at least
// grace. alive is asked only about processes quiet that long, so a host with
// many processes costs a /proc read per quiet record, not per record.
func (f *Forgetter) Observe(snap event.Snapshot, alive func(event.ProcKey) bool, now time.Time) (gone map[event.ProcKey]bool) {
	cur := countsOf(snap)
	seen := make(map[event.ProcKey]quiet, len(cur))
	gone = map[event.ProcKey]bool{}
	for k, c := range cur {
		q, ok := f.seen[k]
		if !ok || q.counts != c {
			q = quiet{counts: c, since: now}
		}
		seen[k] = q
		if now.Sub(q.since) >= f.grace && !alive(k) {
			gone[k] = true
		}
	}
	f.seen = seen
	return gone
}

// countsOf fingerprints every process that has a record in snap.
func countsOf(snap event.Snapshot) map[event.ProcKey]counts {
	cur := make(map[event.ProcKey]counts, len(snap.Meta))
	for k, st := range snap.Procs {
		c := cur[k]
		c.stats = st
		cur[k] = c
	}
	for k := range snap.Meta {
		c := cur[k]
		c.meta = true
		cur[k] = c
	}
	for k, classes := range snap.Failures {
		c := cur[k]
		for _, n := range classes {
			c.fails += n
		}
		cur[k] = c
	}
	return cur
}

// initialPidNS says whether this process sees the host's pids (the kernel
// records them as the initial pid namespace numbers them): /proc/self/status
// lists one NSpid only there.
var initialPidNS = sync.OnceValue(func() bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "NSpid:"); ok {
			return len(strings.Fields(rest)) == 1
		}
	}
	return true // kernels before 4.1 have no NSpid line
})

// Alive says whether the process k still runs: its pid exists and started
// when k did. A pid that is gone, or reused by a later process, is not alive.
// When /proc can't tell (any other error), the process counts as alive: a
// record kept a little longer costs less than counts lost.
func Alive(k event.ProcKey) bool {
	if !initialPidNS() {
		// The kernel's pids are not the ones our /proc shows: never forget.
		return true
	}
	st, err := procinfo.StartTime(k.PID)
	if err != nil {
		return !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, syscall.ESRCH)
	}
	return procinfo.SameStart(k.Start, st)
}
