package cli

import (
	"fmt"
	"net/http"
	"sync/atomic"
	"time"
)

// readerStallAfter is how long serve's event reader may go without a pass
// before /healthz calls it stalled. A pass runs every 200 ms when idle; the
// slowest (forgetting processes gone, flushing the culprit log) take well
// under a second on a busy host, so a minute means stuck, not slow.
const readerStallAfter = time.Minute

// heartbeat is when the reader last finished a pass, for /healthz: /metrics
// answers from the HTTP goroutines even while the reader is stuck, so a
// liveness probe on it would never restart a stalled agent.
type heartbeat struct{ unixNano atomic.Int64 }

func (h *heartbeat) beat(now time.Time) { h.unixNano.Store(now.UnixNano()) }

func (h *heartbeat) last() time.Time { return time.Unix(0, h.unixNano.Load()) }

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
