// Package watch keeps the live view readable under a storm: beyond a few lines
// per second for the same (pid, pattern, errno), repeats are folded into one
// "... N more" record per second instead of flooding the terminal.
package watch

import (
	"time"

	"github.com/portsleuth/portsleuth/internal/report"
)

// Folder decides which records to print now and which to fold.
type Folder struct {
	burst  int
	window time.Duration
	keys   map[key]*window
}

type key struct {
	pid     uint32
	pattern string
	errno   string
}

type window struct {
	start   time.Time
	printed int
	folded  uint64
	last    report.Record
}

// NewFolder prints up to burst records per key per window and folds the rest.
func NewFolder(burst int, every time.Duration) *Folder {
	return &Folder{burst: burst, window: every, keys: map[key]*window{}}
}

// Offer takes a record seen at time at and returns what to print now, in
// order: possibly the folded line of the key's previous window, then r itself
// unless r is folded.
func (f *Folder) Offer(r report.Record, at time.Time) []report.Record {
	k := key{r.PID, r.Pattern, r.Errno}
	w := f.keys[k]
	var out []report.Record
	if w != nil && at.Sub(w.start) >= f.window {
		if w.folded > 0 {
			out = append(out, w.foldedRecord())
		}
		w = nil
	}
	if w == nil {
		w = &window{start: at}
		f.keys[k] = w
	}
	if w.printed < f.burst {
		w.printed++
		return append(out, r)
	}
	w.folded++
	w.last = r
	return out
}

// Flush returns the folded lines of windows that have ended by at (all of
// them when final) and forgets those windows.
func (f *Folder) Flush(at time.Time, final bool) []report.Record {
	var out []report.Record
	for k, w := range f.keys {
		if !final && at.Sub(w.start) < f.window {
			continue
		}
		if w.folded > 0 {
			out = append(out, w.foldedRecord())
		}
		delete(f.keys, k)
	}
	return out
}

func (w *window) foldedRecord() report.Record {
	r := w.last
	r.Folded = w.folded
	return r
}
