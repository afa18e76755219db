package cli

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/spf13/pflag"

	"github.com/portsleuth/portsleuth/internal/event"
	"github.com/portsleuth/portsleuth/internal/pressure"
	"github.com/portsleuth/portsleuth/internal/report"
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
	err = s.loop(ctx,
		func(e event.Event) {
			if c.comm != "" && e.Comm != c.comm {
				return
			}
			owners.Fill(&e)
			snap := enricher.Enrich(&e)
			owners.Fill(&e) // the master of a holder the enricher found
			rec := report.NewRecord(e, s.classify(e))
			rec.Pressure = snap
			w.print(w.folder.Offer(rec, e.Time))
			if s.t.Pending() == 0 {
				w.out.Flush()
			}
		},
		func(now time.Time) {
			w.print(w.folder.Flush(now, ctx.Err() != nil))
			w.reportLost(now)
			w.out.Flush()
		})
	if err != nil {
		return err
	}
	return w.out.Flush()
}

type watcher struct {
	out    *bufio.Writer
	json   bool
	folder *watch.Folder
	s      *session
	lost   uint64
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

// reportLost shows drops as soon as they happen: nothing is silently lost.
func (w *watcher) reportLost(now time.Time) {
	n, err := w.s.t.Lost()
	if err != nil || n <= w.lost {
		return
	}
	delta := n - w.lost
	w.lost = n
	if w.json {
		b, _ := json.Marshal(map[string]any{"time": now.UTC().Format(time.RFC3339Nano), "lost_events": delta, "lost_total": n})
		w.out.Write(append(b, '\n'))
		return
	}
	fmt.Fprintf(w.out, "%s ring buffer full: %d events dropped (%d in total); `portsleuth report` counts stay exact\n",
		now.Format("15:04:05.000"), delta, n)
}
