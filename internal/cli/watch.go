package cli

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/spf13/pflag"

	"github.com/portsleuth/portsleuth/internal/attrib"
	"github.com/portsleuth/portsleuth/internal/enrichq"
	"github.com/portsleuth/portsleuth/internal/event"
	"github.com/portsleuth/portsleuth/internal/pools"
	"github.com/portsleuth/portsleuth/internal/pressure"
	"github.com/portsleuth/portsleuth/internal/report"
	"github.com/portsleuth/portsleuth/internal/term"
	"github.com/portsleuth/portsleuth/internal/watch"
)

// foldBurst is how many lines per second one (pid, pattern, errno) may print.
const foldBurst = 5

func runWatch(args []string, stdout, stderr io.Writer) error {
	var c common
	fs := pflag.NewFlagSet("watch", pflag.ContinueOnError)
	c.register(fs)
	if err := parse(fs, args, stderr); err != nil {
		return err
	}
	if err := c.validate(); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Sprintf("watch takes no arguments, got %q", fs.Args())}
	}
	if err := c.checkPID(); err != nil {
		return err
	}

	s, err := startSession(&c, false, stderr)
	if err != nil {
		return err
	}
	defer s.close()

	ctx, stop := runContext(c.duration)
	defer stop()
	// On stderr in every format: stdout carries only records.
	fmt.Fprintf(stderr, "portsleuth: watching failed bind()/connect(); Ctrl-C to stop\n")

	w := &watcher{out: bufio.NewWriter(stdout), json: c.output == "json", folder: watch.NewFolder(foldBurst, time.Second), s: s}
	owners := report.NewOwners()
	enricher := pressure.NewEnricher()
	enricher.Closers = s.t.Closers()
	defer enricher.Close()
	w.queue = enrichq.NewQueue(0, enricher.Enrich, func(r enrichq.Result) { w.enriched(r, owners) })
	defer w.queue.Close() // before the enricher's Close: defers run last first
	err = s.loop(ctx,
		func(e event.Event) {
			if c.comm != "" && e.Comm != c.comm {
				return
			}
			// Only what is known already: the holder and the pressure
			// snapshot found later follow on lines of their own.
			enricher.Pin(e.Netns, e.PID, e.TID) // held for the snapshot taken later
			w.queue.Fill(&e)
			owners.FillCached(&e)
			rec := report.NewRecord(e, s.classify(e))
			w.mu.Lock()
			w.print(w.folder.Offer(rec, e.Time))
			if s.t.Pending() == 0 {
				w.out.Flush()
			}
			w.mu.Unlock()
			w.queue.Submit(e)
		},
		func(now time.Time) {
			if ctx.Err() != nil {
				// The last failures' snapshots, before the last notices.
				w.queue.Drain(liveDrainWait)
			}
			w.mu.Lock()
			defer w.mu.Unlock()
			w.print(w.folder.Flush(now, ctx.Err() != nil))
			w.reportLost(now)
			w.reportDropped(now)
			w.out.Flush()
		})
	if err != nil {
		return err
	}
	w.queue.Close()
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.out.Flush()
}

type watcher struct {
	// mu serializes output: the reader prints failures, the enrichment
	// worker prints what it found for them.
	mu      sync.Mutex
	out     *bufio.Writer
	json    bool
	folder  *watch.Folder
	s       *session
	queue   *enrichq.Queue
	lost    uint64
	dropped uint64
}

func (w *watcher) print(recs []report.Record) {
	for _, r := range recs {
		if w.json {
			b, _ := json.Marshal(r)
			w.out.Write(append(b, '\n'))
		} else {
			fmt.Fprintln(w.out, r.Text())
		}
	}
}

// enrichment is a `watch -o json` line of its own ("type": "enrichment"):
// what enrichment found for the failure of that process, op and errno
// printed before it. The field names are a contract (see README).
type enrichment struct {
	Type     string          `json:"type"`
	Time     string          `json:"time"`
	PID      uint32          `json:"pid"`
	Comm     string          `json:"comm"`
	Op       string          `json:"op"`
	Errno    string          `json:"errno"`
	Addr     string          `json:"addr"`
	Dest     string          `json:"dest,omitempty"`
	Holder   *event.Holder   `json:"holder,omitempty"`
	Pressure *pools.Snapshot `json:"pressure,omitempty"`
}

// enriched runs on the enrichment worker: it prints the pressure snapshot
// and the holder found for a failure already printed, each on its own line.
func (w *watcher) enriched(r enrichq.Result, owners *report.Owners) {
	e := &r.Event
	unnamed := e.Holder != nil && e.Holder.PID == 0
	owners.Fill(e)
	var holder *event.Holder
	if e.Holder != nil && (r.HolderFound || unnamed && e.Holder.PID != 0) {
		holder = e.Holder
	}
	if holder == nil && r.Snapshot == nil {
		return
	}
	rec := report.NewRecord(*e, "")
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.json {
		b, _ := json.Marshal(enrichment{Type: "enrichment", Time: rec.Time, PID: rec.PID, Comm: rec.Comm, Op: rec.Op,
			Errno: rec.Errno, Addr: rec.Addr, Dest: rec.Dest, Holder: holder, Pressure: r.Snapshot})
		w.out.Write(append(b, '\n'))
	} else {
		// The same words as the failure's own line: escaped, the names are the process's choice.
		about := term.Escape(fmt.Sprintf("pid %d %s, %s %s", rec.PID, rec.Comm, rec.Op, rec.Errno))
		if holder != nil {
			fmt.Fprintf(w.out, "    holder (%s): held by %s\n", about, term.Escape(attrib.DescribeHolder(*holder)))
		}
		if r.Snapshot != nil {
			fmt.Fprintf(w.out, "    pressure (%s): %s\n", about, r.Snapshot.Text())
		}
	}
	w.out.Flush()
}

// reportLost shows drops as soon as they happen: nothing is silently lost.
func (w *watcher) reportLost(now time.Time) {
	n, err := w.s.t.Lost()
	if err != nil {
		return
	}
	w.notice(now, &w.lost, n, "lost_events", "lost_total",
		"ring buffer full: %d events dropped (%d in total); `portsleuth report` counts stay exact")
}

// reportDropped shows the enrichment the queue had no room for, like reportLost.
func (w *watcher) reportDropped(now time.Time) {
	w.notice(now, &w.dropped, w.queue.Dropped(), "enrichment_dropped", "enrichment_dropped_total",
		"enrichment queue full: %d failures shown without their pressure snapshot or holder (%d in total)")
}

// notice prints one line when a drop counter grew past *seen: the new drops
// and the total, as JSON keys or as text (format takes both, in that order).
func (w *watcher) notice(now time.Time, seen *uint64, n uint64, deltaKey, totalKey, format string) {
	if n <= *seen {
		return
	}
	delta := n - *seen
	*seen = n
	if w.json {
		b, _ := json.Marshal(map[string]any{"time": now.UTC().Format(time.RFC3339Nano), deltaKey: delta, totalKey: n})
		w.out.Write(append(b, '\n'))
		return
	}
	fmt.Fprintf(w.out, "%s "+format+"\n", now.Format("15:04:05.000"), delta, n)
}
