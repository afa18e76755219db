package cli

import (
	"fmt"
	"net/http"
	"sync/atomic"
	"time"
)

// readerStallAfter is how long serve's event reader may go without a pass
// before /healthz calls it stalled. A pass starts every 200 ms when idle and
// every 64 events in a storm; its work (reading the counters, forgetting
// processes gone, flushing the culprit log) is bounded by the kernel's
// tables, so a minute means stuck, not slow.
const readerStallAfter = time.Minute

// heartbeat is when the reader last started a pass, for /healthz: /metrics
// answers from the HTTP goroutines even while the reader is stuck, so a
// liveness probe on it would never restart a stalled agent. It keeps an
// offset from base, so the clock it is read against is the monotonic one: a
// wall-clock step neither fakes a stall nor hides one.
type heartbeat struct {
	base  time.Time
	since atomic.Int64 // nanoseconds from base to the last beat
}

func newHeartbeat(now time.Time) *heartbeat { return &heartbeat{base: now} }

func (h *heartbeat) beat(now time.Time) { h.since.Store(int64(now.Sub(h.base))) }

func (h *heartbeat) last() time.Time { return h.base.Add(time.Duration(h.since.Load())) }

// healthHandler answers 200 "ok" while the reader's last pass is at most
// limit old, else 503 saying how old it is.
func healthHandler(last func() time.Time, limit time.Duration, now func() time.Time) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		if age := now().Sub(last()); age > limit {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, "stalled: the event reader's last pass was %s ago (limit %s)\n", age.Round(time.Second), limit)
			return
		}
		fmt.Fprintln(w, "ok")
	})
}
