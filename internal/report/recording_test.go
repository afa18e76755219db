package report

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/portsleuth/portsleuth/internal/event"
)

// loadErr loads path and returns its error, failing if it loaded.
func loadErr(t *testing.T, path string) string {
	t.Helper()
	_, err := LoadRecording(path)
	if err == nil {
		t.Fatalf("%s loaded", path)
	}
	if strings.Contains(err.Error(), "\n") {
		t.Errorf("error is more than one line: %q", err)
	}
	return err.Error()
}

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "rec.json")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadRecordingRefusesNonRegular(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{"/dev/zero", fifo, t.TempDir()} {
		done := make(chan error, 1)
		go func() { _, err := LoadRecording(path); done <- err }()
		select {
		case err := <-done:
			if err == nil || !strings.Contains(err.Error(), "not a regular file") {
				t.Errorf("%s: got %v, want \"not a regular file\"", path, err)
			}
		case <-time.After(10 * time.Second):
			// A bound on a hang, not a timing assertion: an open or read
			// that blocks never returns at all.
			t.Fatalf("%s: LoadRecording blocked", path)
		}
	}
}

func TestLoadRecordingSizeLimit(t *testing.T) {
	p := writeFile(t, "")
	// Sparse: no need to write 256 MiB to pass the limit.
	if err := os.Truncate(p, MaxRecordingBytes+1); err != nil {
		t.Fatal(err)
	}
	if msg := loadErr(t, p); !strings.Contains(msg, "the limit is") {
		t.Errorf("got %q", msg)
	}
}

// A file that grows after fstat is still cut at the limit while reading.
func TestLimitReaderFailsPastLimit(t *testing.T) {
	body := `{"schema": 2, "procs": [], "failures": [], "events": []}`
	_, err := decodeRecording(&limitReader{r: strings.NewReader(body), n: 20})
	if err != errTooLarge {
		t.Fatalf("got %v, want %v", err, errTooLarge)
	}
	if _, err := decodeRecording(&limitReader{r: strings.NewReader(body), n: int64(len(body))}); err != nil {
		t.Fatalf("exactly at the limit: %v", err)
	}
}

func TestLoadRecordingRejects(t *testing.T) {
	rep, err := json.Marshal(Report{Schema: Schema, Backend: "tracepoint", Processes: []Process{}})
	if err != nil {
		t.Fatal(err)
	}
	const ok = `"procs": [], "failures": [], "events": []`
	fail := func(class string) string {
		return `{"schema": 2, "procs": null, "failures": [{"pid": 7, "start_ns": 1, "class": ` + class + `, "count": 1}], "events": null}`
	}
	netnsRec := func(lo, hi, reserved int) string {
		return fmt.Sprintf(`{"schema": 2, %s, "netns": {"5": {"netns": 5, "ip_local_port_range": [%d, %d], "reserved_in_range": %d}}}`, ok, lo, hi, reserved)
	}
	for name, c := range map[string]struct{ body, want string }{
		"empty file":      {"", "truncated JSON"},
		"null":            {"null", "a recording is a JSON object, found null"},
		"empty object":    {"{}", `no "schema" field`},
		"array":           {"[]", "found an array"},
		"no events":       {`{"schema": 2, "procs": [], "failures": []}`, `no "events" field`},
		"schema 999":      {`{"schema": 999, ` + ok + `}`, "schema 999: this portsleuth reads schema 2"},
		"schema last":     {`{` + ok + `, "schema": 1}`, "schema 1: this portsleuth reads schema 2"},
		"no schema":       {`{` + ok + `}`, `no "schema" field`},
		"report":          {string(rep), reportHint},
		"unknown field":   {`{"schema": 2, ` + ok + `, "extra": 1}`, `unknown field "extra"`},
		"unknown nested":  {`{"schema": 2, "procs": [{"pid": 1, "start_ns": 0, "colour": 1}], "failures": [], "events": []}`, `unknown field "colour"`},
		"duplicate field": {`{"schema": 2, ` + ok + `, "procs": []}`, `"procs" appears twice`},
		"trailing data":   {`{"schema": 2, ` + ok + `} {}`, "trailing data"},
		"truncated":       {`{"schema": 2, "procs": [`, "truncated JSON"},
		"procs object":    {`{"schema": 2, "procs": {}, "failures": [], "events": []}`, "want an array, found an object"},
		"pid 0 proc":      {`{"schema": 2, "procs": [{"pid": 0, "start_ns": 1}], "failures": [], "events": []}`, "pid 0 out of range"},
		"pid 0 failure":   {`{"schema": 2, "procs": [], "failures": [{"pid": 0, "start_ns": 1, "class": {"op": "bind", "proto": "tcp", "family": "ipv4", "errno": 98}, "count": 1}], "events": []}`, "pid 0 out of range"},
		"errno 0":         {fail(`{"op": "bind", "proto": "tcp", "family": "ipv4", "errno": 0}`), "errno 0 out of range"},
		"errno 4096":      {fail(`{"op": "bind", "proto": "tcp", "family": "ipv4", "errno": 4096}`), "errno 4096 out of range"},
		"errno negative":  {fail(`{"op": "bind", "proto": "tcp", "family": "ipv4", "errno": -1}`), "cannot unmarshal"},
		"bad op":          {fail(`{"op": "accept", "proto": "tcp", "family": "ipv4", "errno": 98}`), `op "accept"`},
		"bad proto":       {fail(`{"op": "bind", "proto": "sctp", "family": "ipv4", "errno": 98}`), `proto "sctp"`},
		"bad family":      {fail(`{"op": "bind", "proto": "tcp", "family": "unix", "errno": 98}`), `family "unix"`},
		"count negative":  {`{"schema": 2, "procs": [], "failures": [{"pid": 1, "start_ns": 1, "class": {"op": "bind", "proto": "tcp", "family": "ipv4", "errno": 98}, "count": -1}], "events": []}`, "cannot unmarshal"},
		"inverted range":  {netnsRec(65535, 32768, 0), "ip_local_port_range 65535-32768"},
		"port 0 range":    {netnsRec(0, 100, 0), "ip_local_port_range 0-100"},
		"port 70000":      {netnsRec(1024, 70000, 0), "ip_local_port_range 1024-70000"},
		"too reserved":    {netnsRec(40000, 40063, 65), "reserved_in_range 65 out of range 0..64"},
		"netns key":       {`{"schema": 2, ` + ok + `, "netns": {"x": {}}}`, `key "x" is not a namespace inode`},
	} {
		t.Run(name, func(t *testing.T) {
			msg := loadErr(t, writeFile(t, c.body))
			if !strings.Contains(msg, c.want) {
				t.Errorf("got %q, want it to say %q", msg, c.want)
			}
		})
	}
}

func TestLoadRecordingEventCap(t *testing.T) {
	var b strings.Builder
	b.WriteString(`{"schema": 2, "procs": [], "failures": [], "events": [`)
	for i := range MaxRecordedEvents + 1 {
		if i > 0 {
			b.WriteString(",")
		}
		b.WriteString(`{"pid": 1, "class": {"op": "bind", "proto": "tcp", "family": "ipv4", "errno": 98}}`)
	}
	b.WriteString("]}")
	if msg := loadErr(t, writeFile(t, b.String())); !strings.Contains(msg, "more than 10000 entries") {
		t.Errorf("got %q", msg)
	}
}

// Every recording in testdata still loads, and a loaded recording re-encodes
// to one that loads the same.
func TestLoadRecordingTestdata(t *testing.T) {
	paths, err := filepath.Glob(filepath.Join(recordings, "*.json"))
	if err != nil || len(paths) == 0 {
		t.Fatalf("no recordings: %v", err)
	}
	for _, p := range paths {
		rec, err := LoadRecording(p)
		if err != nil {
			t.Errorf("%v", err)
			continue
		}
		out := filepath.Join(t.TempDir(), "again.json")
		var buf bytes.Buffer
		if err := rec.Encode(&buf); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(out, buf.Bytes(), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadRecording(out); err != nil {
			t.Errorf("re-encoded %s: %v", p, err)
		}
	}
}

// Counts are any uint64; their sums stay at 2^64-1 instead of wrapping.
func TestCountsSaturate(t *testing.T) {
	class := `{"op": "bind", "proto": "tcp", "family": "ipv4", "errno": 98, "port0": false, "any_addr": false}`
	other := `{"op": "bind", "proto": "tcp", "family": "ipv4", "errno": 99, "port0": false, "any_addr": false}`
	body := `{"schema": 2, "procs": [{"pid": 9, "start_ns": 5, "meta": {"comm": "big"}}],
	 "failures": [
	  {"pid": 9, "start_ns": 5, "class": ` + class + `, "count": 18446744073709551615},
	  {"pid": 9, "start_ns": 5, "class": ` + class + `, "count": 2},
	  {"pid": 9, "start_ns": 5, "class": ` + other + `, "count": 3}],
	 "unattributed": [{"class": ` + class + `, "count": 18446744073709551615}, {"class": ` + class + `, "count": 2}],
	 "events": []}`
	rec, err := LoadRecording(writeFile(t, body))
	if err != nil {
		t.Fatal(err)
	}
	snap := rec.Snapshot()
	k := event.ProcKey{PID: 9, Start: 5}
	var c event.Class
	if err := json.Unmarshal([]byte(class), &c); err != nil {
		t.Fatal(err)
	}
	if got := snap.Failures[k][c]; got != math.MaxUint64 {
		t.Errorf("snapshot failures %d, want 2^64-1", got)
	}
	if got := snap.Unattributed[c]; got != math.MaxUint64 {
		t.Errorf("snapshot unattributed %d, want 2^64-1", got)
	}
	r := Build(snap, NewOfflineCollector(), Filter{}, "replay", time.Unix(0, 0), 0)
	if len(r.Processes) != 1 {
		t.Fatalf("%d processes, want 1", len(r.Processes))
	}
	p := r.Processes[0]
	if p.Failures != math.MaxUint64 {
		t.Errorf("process failures %d, want 2^64-1", p.Failures)
	}
	for e, n := range p.Errors {
		if e == errnoName(98) && n != math.MaxUint64 {
			t.Errorf("errors[%s] %d, want 2^64-1", e, n)
		}
	}
	for _, pe := range p.Patterns {
		if pe.Count < 3 {
			t.Errorf("pattern %s count %d wrapped", pe.Pattern, pe.Count)
		}
	}
}

// largeRecording writes a recording of about size bytes straight to disk
// (so the test's own memory stays out of the measurement): procs with stats
// and command lines, four failure classes each.
// largeRecording writes a recording of about size bytes (0: the most
// entries a recording may have), with classes failures per process, and
// returns its path and how many procs and failures it holds.
func largeRecording(t *testing.T, size int64, classes int) (string, int, int) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "large.json")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	w := bufio.NewWriter(f)
	cmdline := "/usr/bin/worker --config /etc/worker/" + strings.Repeat("x", 80)
	// Sized first, from one proc's share, so the file is a single pass.
	per := int64(len(cmdline)) + int64(classes)*150 + 300
	n := int(size / per)
	if size == 0 {
		n = MaxRecordEntries / classes
	}
	fmt.Fprint(w, `{"schema": 2, "procs": [`)
	for i := range n {
		sep := map[bool]string{true: ",", false: ""}[i > 0]
		fmt.Fprintf(w, `%s{"pid": %d, "start_ns": %d, "stats": {"binds_ok": 1, "binds_failed": 4, "connects_ok": 2}, "meta": {"comm": "worker", "cmdline": %q, "netns": 4026531840, "cgroup_id": 1}}`,
			sep, i%pidMax+1, i, cmdline)
	}
	fmt.Fprint(w, `], "failures": [`)
	for i := range n {
		for e := range classes {
			sep := map[bool]string{true: ",", false: ""}[i > 0 || e > 0]
			fmt.Fprintf(w, `%s{"pid": %d, "start_ns": %d, "class": {"op": "bind", "proto": "tcp", "family": "ipv4", "errno": %d, "port0": false, "any_addr": true}, "count": 3}`,
				sep, i%pidMax+1, i, 98+e)
		}
	}
	fmt.Fprint(w, `], "netns": {"4026531840": {"netns": 4026531840, "ip_local_port_range": [32768, 60999], "reserved_in_range": 0}}, "lost": 0, "events": []}`)
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return p, n, n * classes
}

// vmHWM is the process's peak resident set, in bytes.
func vmHWM(t *testing.T) uint64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmHWM in /proc/self/status")
	return 0
}

// A 200 MB recording replays in memory bounded by the tables it keeps, not
// by the file's text (which used to be read whole: 1.2 GB peak).
func TestLoadRecordingLargeMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("writes a 200 MB recording")
	}
	// A 200 MB file holds more entries than any recording portsleuth writes:
	// refused once past the bound, with the memory of the bound.
	path, n, failures := largeRecording(t, 200<<20, 4)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	base := resetHWM(t)
	if _, err := LoadRecording(path); err == nil || !strings.Contains(err.Error(), "more than") {
		t.Fatalf("a %d MB recording of %d procs: %v, want refused past the entry bound", fi.Size()>>20, n, err)
	}
	refused := vmHWM(t)
	t.Logf("recording %d MB (%d procs, %d failures): refused; peak RSS %d MB before, %d MB after", fi.Size()>>20, n, failures, base>>20, refused>>20)
	if refused > 400<<20 {
		t.Errorf("refusing it peaked at %d MB RSS", refused>>20)
	}

	// The largest recording portsleuth writes loads and replays.
	path, n, failures = largeRecording(t, 0, 1)
	fi, _ = os.Stat(path)
	base = resetHWM(t)
	rec, err := LoadRecording(path)
	if err != nil {
		t.Fatal(err)
	}
	loaded := vmHWM(t)
	r := Build(rec.Snapshot(), NewOfflineCollector(), Filter{}, "replay", time.Unix(0, 0), 0)
	peak := vmHWM(t)
	if len(rec.Procs) != n || len(rec.Failures) != failures || len(r.Processes) != n {
		t.Fatalf("loaded %d procs, %d failures, built %d processes; want %d, %d, %d",
			len(rec.Procs), len(rec.Failures), len(r.Processes), n, failures, n)
	}
	t.Logf("recording %d MB (%d procs, %d failures): peak RSS %d MB before, %d MB after LoadRecording, %d MB after Snapshot+Build",
		fi.Size()>>20, n, failures, base>>20, loaded>>20, peak>>20)
	if loaded > 600<<20 {
		t.Errorf("LoadRecording peaked at %d MB RSS", loaded>>20)
	}
}

// resetHWM frees what it can and resets the peak RSS (writing 5 to
// clear_refs), so the next vmHWM is what came after; it returns the RSS now.
func resetHWM(t *testing.T) uint64 {
	t.Helper()
	runtime.GC()
	debug.FreeOSMemory()
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		t.Skipf("cannot reset the peak RSS: %v", err)
	}
	return vmHWM(t)
}

// One giant string in one entry is refused as soon as the entry passes
// maxEntryBytes: the decoder would otherwise hold it whole (and its copy).
func TestLoadRecordingEntryBound(t *testing.T) {
	var b strings.Builder
	b.WriteString(`{"schema": 2, "procs": [], "failures": [], "events": [{"pid": 1, "comm": "`)
	b.WriteString(strings.Repeat("x", 8*maxEntryBytes))
	b.WriteString(`", "class": {"op": "bind", "proto": "tcp", "family": "ipv4", "errno": 98}}]}`)
	if msg := loadErr(t, writeFile(t, b.String())); !strings.Contains(msg, "an entry is larger than") {
		t.Errorf("got %q", msg)
	}
}
