package report

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"

	"github.com/portsleuth/portsleuth/internal/attrib"
	"github.com/portsleuth/portsleuth/internal/event"
	"github.com/portsleuth/portsleuth/internal/netns"
	"github.com/portsleuth/portsleuth/internal/pools"
	"github.com/portsleuth/portsleuth/internal/procinfo"
)

// Names a process can give itself: retitle the window and clear the screen
// (OSC ended by BEL, then CSI 2J), the C1 form of CSI, a bidi override.
const (
	osc        = "\x1b]0;OWNED\x07\x1b[2J"
	oscEscaped = `\x1b]0;OWNED\x07\x1b[2J`
	c1         = "x\u009b2Jy"
	bidi       = "evil\u202eexe"
)

// The hostile strings of process 1 (valid UTF-8, so JSON can carry them exactly).
var (
	evilComm    = osc
	evilThread  = c1 + bidi
	evilCmdline = "/bin/evil " + osc + "\n--flag\r\t" + c1 + " " + bidi
	evilCgroup  = "/system.slice/" + osc + ".scope"
	evilHolder  = osc + bidi
	evilArgv    = []string{"sh", "-c", osc}
	evilOption  = "SO_" + osc // only a crafted recording has this
)

// Process 2 has names that are not UTF-8 at all, with raw C1 bytes: text only.
const (
	brokenComm    = "bad\x9b\xff\x1b"
	brokenCmdline = "\xc3(\x9b[2J \x1b[31mred"
)

func evilEvent() event.Event {
	return event.Event{
		Time: time.Unix(1700000000, 0), PID: 1, TID: 2, Comm: evilComm, Thread: evilThread,
		Class:   event.Class{Op: event.Bind, Proto: "tcp", Family: "ipv4", Errno: unix.EADDRINUSE},
		Addr:    netip.MustParseAddrPort("127.0.0.1:80"),
		Options: []string{"SO_REUSEADDR", evilOption},
		Netns:   1, Source: "syscall",
		Holder: &event.Holder{State: "LISTEN", Local: netip.MustParseAddrPort("0.0.0.0:80"),
			Options: []string{}, PID: 7, Comm: evilHolder},
	}
}

// evilReport builds a report offline, as a replay does, from hostile names.
func evilReport(t *testing.T) Report {
	t.Helper()
	inUse := event.Class{Op: event.Bind, Proto: "tcp", Family: "ipv4", Errno: unix.EADDRINUSE}
	snap := event.Snapshot{
		Procs: map[event.ProcKey]event.ProcStats{{PID: 1}: {BindsFailed: 1}, {PID: 2}: {BindsFailed: 2}},
		Meta: map[event.ProcKey]event.ProcMeta{
			{PID: 1}: {Comm: evilComm, Cmdline: evilCmdline, Netns: 1},
			{PID: 2}: {Comm: brokenComm, Cmdline: brokenCmdline, Netns: 1},
		},
		Failures: map[event.ProcKey]map[event.Class]uint64{{PID: 1}: {inUse: 1}, {PID: 2}: {inUse: 2}},
		Netns:    map[uint64]netns.Sysctls{1: {Netns: 1, PortRange: [2]int{32768, 60999}, Source: osc}},
	}
	infos := map[uint32]procinfo.Info{
		1: {Comm: evilComm, Cmdline: evilCmdline, Cgroup: evilCgroup, ContainerID: "\x1b[2J0123456789abcdef"},
		2: {Comm: brokenComm, Cmdline: brokenCmdline, Cgroup: "/x\xff\x9b/y", ContainerID: "\xff\x9b\x1b[2J"},
	}
	c := NewOfflineCollector()
	c.Lookup = func(pid uint32) (procinfo.Info, error) { return infos[pid], nil }
	e := evilEvent()
	c.Observe(&e)
	r := Build(snap, c, Filter{}, "replay", time.Unix(0, 0), time.Second)
	r.Command = &Command{Argv: evilArgv, PID: 1}
	if len(r.Processes) != 2 {
		t.Fatalf("want 2 processes, got %+v", r.Processes)
	}
	return r
}

// assertTerminalSafe fails on any byte or character a terminal could act on.
func assertTerminalSafe(t *testing.T, text string) {
	t.Helper()
	for i := 0; i < len(text); i++ {
		if c := text[i]; (c < 0x20 && c != '\n') || c == 0x7f || c == 0x9b {
			t.Errorf("byte %#02x at %d in text output: %q", c, i, text)
		}
	}
	if !utf8.ValidString(text) {
		t.Errorf("text output is not UTF-8: %q", text)
	}
	for _, r := range text {
		if (r >= 0x80 && r <= 0x9f) || r == '\u202e' {
			t.Errorf("%U in text output: %q", r, text)
		}
	}
}

func TestWriteTextEscapesProcessStrings(t *testing.T) {
	var buf bytes.Buffer
	if err := evilReport(t).WriteText(&buf); err != nil {
		t.Fatal(err)
	}
	text := buf.String()
	assertTerminalSafe(t, text)
	// Still named, visibly: the escapes stand in for the bytes.
	for _, want := range []string{
		"pid 1 " + oscEscaped + ":",
		`cmdline:  /bin/evil ` + oscEscaped + `\n--flag\r\tx\u009b2Jy evil\u202eexe`,
		`cgroup: /system.slice/` + oscEscaped + `.scope`,
		`container: \x1b[2J01234567`,
		`command: sh -c ` + oscEscaped + ` (pid 1`,
		`(from ` + oscEscaped + `)`,
		`pid 7 (` + oscEscaped + `evil\u202eexe)`,
		`pid 2 bad\x9b\xff\x1b:`,
		`cmdline:  \xc3(\x9b[2J \x1b[31mred`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("text output lacks %q:\n%s", want, text)
		}
	}
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, "--flag") {
			t.Errorf("a command line's newline started a line of its own:\n%s", text)
		}
	}
}

func TestWriteJSONKeepsProcessStringsExact(t *testing.T) {
	var buf bytes.Buffer
	if err := evilReport(t).WriteJSON(&buf); err != nil {
		t.Fatal(err)
	}
	if bytes.IndexByte(buf.Bytes(), 0x1b) >= 0 {
		t.Errorf("raw ESC in JSON output (encoding/json should escape it)")
	}
	if !bytes.Contains(buf.Bytes(), []byte(`\u001b]0;OWNED\u0007\u001b[2J`)) {
		t.Errorf("JSON output lacks the comm as encoding/json writes it:\n%s", buf.String())
	}
	var got Report
	if err := json.Unmarshal(buf.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(got.Processes, func(p Process) bool { return p.PID == 1 })
	if i < 0 {
		t.Fatalf("pid 1 missing from %+v", got.Processes)
	}
	p := got.Processes[i]
	if p.Comm != evilComm || p.Cmdline != evilCmdline || p.Cgroup != evilCgroup {
		t.Errorf("process strings changed: comm %q cmdline %q cgroup %q", p.Comm, p.Cmdline, p.Cgroup)
	}
	if !slices.Equal(got.Command.Argv, evilArgv) {
		t.Errorf("argv %q, want %q", got.Command.Argv, evilArgv)
	}
	if len(p.Examples) != 1 {
		t.Fatalf("want 1 example, got %+v", p.Examples)
	}
	ex := p.Examples[0]
	if ex.Comm != evilComm || ex.Thread != evilThread || ex.Holder == nil || ex.Holder.Comm != evilHolder {
		t.Errorf("example strings changed: %+v (holder %+v)", ex, ex.Holder)
	}
	if !slices.Contains(ex.Options, evilOption) {
		t.Errorf("options %q lack %q", ex.Options, evilOption)
	}
}

func TestRecordTextEscapesProcessStrings(t *testing.T) {
	rec := NewRecord(evilEvent(), attrib.PortInUse)
	rec.Pressure = &pools.Snapshot{Verdict: osc}
	rec.Folded = 3
	text := rec.Text()
	assertTerminalSafe(t, text)
	if n := strings.Count(text, "\n"); n != 1 {
		t.Errorf("want the record line and its pressure line, got %d newlines: %q", n, text)
	}
	for _, want := range []string{
		"pid=1 " + oscEscaped + `/x\u009b2Jyevil\u202eexe bind`,
		`[SO_REUSEADDR,SO_` + oscEscaped + `]`,
		`held by pid 7 (` + oscEscaped + `evil\u202eexe): LISTEN 0.0.0.0:80`,
		"\n    pressure: at the first failure: " + oscEscaped,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("record text lacks %q: %q", want, text)
		}
	}
	if rec.Comm != evilComm || rec.Thread != evilThread {
		t.Errorf("Text changed the record: %q %q", rec.Comm, rec.Thread)
	}
}
