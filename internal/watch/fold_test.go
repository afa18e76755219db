package watch

import (
	"testing"
	"time"

	"github.com/portsleuth/portsleuth/internal/report"
)

func TestFolderCountsEveryRepeat(t *testing.T) {
	f := NewFolder(3, time.Second)
	t0 := time.Unix(1000, 0)
	rec := report.Record{PID: 7, Pattern: "port-in-use", Errno: "EADDRINUSE"}
	other := report.Record{PID: 8, Pattern: "port-in-use", Errno: "EADDRINUSE"}

	var printed, folded uint64
	account := func(rs []report.Record) {
		for _, r := range rs {
			if r.Folded > 0 {
				folded += r.Folded
			} else {
				printed++
			}
		}
	}
	// 1000 repeats over 2.5 s, plus one line of another process.
	for i := 0; i < 1000; i++ {
		account(f.Offer(rec, t0.Add(time.Duration(i)*2500*time.Microsecond)))
	}
	account(f.Offer(other, t0))
	account(f.Flush(t0.Add(10*time.Second), true))

	if printed+folded != 1001 {
		t.Fatalf("printed %d + folded %d != 1001: a repeat was lost", printed, folded)
	}
	// Three windows of rec (3 lines each) and one line of other.
	if printed != 3*3+1 {
		t.Errorf("printed %d lines, want 10", printed)
	}
}

func TestFolderFlushKeepsOpenWindows(t *testing.T) {
	f := NewFolder(1, time.Second)
	t0 := time.Unix(1000, 0)
	rec := report.Record{PID: 1, Pattern: "x", Errno: "E"}
	f.Offer(rec, t0)
	f.Offer(rec, t0.Add(10*time.Millisecond))
	if out := f.Flush(t0.Add(500*time.Millisecond), false); len(out) != 0 {
		t.Fatalf("flushed an open window: %+v", out)
	}
	out := f.Flush(t0.Add(1500*time.Millisecond), false)
	if len(out) != 1 || out[0].Folded != 1 {
		t.Fatalf("want one folded line for 1 repeat, got %+v", out)
	}
}
