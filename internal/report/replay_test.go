package report

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite the golden reports in testdata/recordings")

const recordings = "../../testdata/recordings"

func replay(t *testing.T, name string) Report {
	t.Helper()
	rec, err := LoadRecording(filepath.Join(recordings, name+".json"))
	if err != nil {
		t.Fatal(err)
	}
	c := NewOfflineCollector()
	for i := range rec.Events {
		c.Observe(&rec.Events[i])
	}
	return Build(rec.Snapshot(), c, Filter{}, "replay", time.Unix(0, 0), 0)
}

// The classifier on recorded sessions: the first culprit's patterns, exactly.
func TestReplayPatterns(t *testing.T) {
	for name, want := range map[string]map[string]uint64{
		// Recorded from the integration scenarios on 6.18.
		"bind-any-before-connect": {"bind-any-before-connect": 10},
		"bind-ip-before-connect":  {"bind-ip-before-connect": 20},
		"timewait-exhaustion":     {"connect-port-exhaustion": 10},
		"port-in-use":             {"port-in-use": 3},
		"tuple-conflict":          {"connect-tuple-conflict": 1},
		"ipv6-and-udp":            {"port-in-use": 2, "address-not-local": 1},
		"culprit-beside-busy":     {"bind-any-before-connect": 10},
		// Written by hand for what the scenarios don't reach.
		"edge-bind-exhaustion-no-connect":   {"bind-port-exhaustion": 40},
		"edge-udp-autobind-and-tw-reuse-on": {"connect-port-exhaustion": 7},
		"edge-storm-lost-events":            {"bind-any-before-connect": 100000},
		"edge-privileged-and-denied":        {"denied": 5},
	} {
		t.Run(name, func(t *testing.T) {
			r := replay(t, name)
			if len(r.Processes) == 0 {
				t.Fatal("no culprit")
			}
			got := map[string]uint64{}
			for _, p := range r.Processes[0].Patterns {
				got[p.Pattern] = p.Count
			}
			if len(got) != len(want) {
				t.Fatalf("patterns %v, want %v", got, want)
			}
			for p, n := range want {
				if got[p] != n {
					t.Errorf("pattern %s: %d, want %d (all: %v)", p, got[p], n, got)
				}
			}
		})
	}
}

func TestReplayNoFailuresNoCulprit(t *testing.T) {
	if r := replay(t, "bind-no-port-fix"); len(r.Processes) != 0 {
		t.Errorf("the IP_BIND_ADDRESS_NO_PORT fix produced culprits: %+v", r.Processes)
	}
}

func TestReplayDetails(t *testing.T) {
	r := replay(t, "edge-storm-lost-events")
	p := r.Processes[0]
	if r.LostEvents != 99997 || p.EventsMissed != 100000-3 || p.Failures != 100000 {
		t.Errorf("lost %d, missed %d, failures %d", r.LostEvents, p.EventsMissed, p.Failures)
	}
	ev := p.Patterns[0].Evidence
	if !strings.Contains(ev, "64 of 64 sockets") || !strings.Contains(ev, "after 100 reserved") {
		t.Errorf("evidence %q", ev)
	}
	adv := p.Patterns[0].Advice
	if !strings.Contains(adv, "already set SO_REUSEADDR and still fail") || !strings.Contains(adv, "is already 1 here") {
		t.Errorf("advice must use the namespace and the options seen: %q", adv)
	}

	r = replay(t, "edge-privileged-and-denied")
	if len(r.Processes) != 2 || r.Processes[0].PID != 4401 || r.Processes[1].PID != 4400 {
		t.Fatalf("ranking: %+v", r.Processes)
	}
	if p := r.Processes[1]; p.Patterns[0].Pattern != "privileged-port" || p.Errors["EACCES"] != 2 {
		t.Errorf("webd: %+v", p)
	}
	// No event came from the client: it is still named, from the kernel's record.
	if p := r.Processes[0]; p.Comm != "client" || len(p.Examples) != 0 || p.EventsMissed != 5 {
		t.Errorf("client: %+v", p)
	}

	r = replay(t, "edge-udp-autobind-and-tw-reuse-on")
	pat := r.Processes[0].Patterns[0]
	if !strings.Contains(pat.Evidence, "EADDRNOTAVAIL or EAGAIN (UDP autobind)") || !strings.Contains(pat.Evidence, "[2001:db8::5]:443") {
		t.Errorf("evidence %q", pat.Evidence)
	}
	if !strings.Contains(pat.Advice, "tcp_tw_reuse is already 1 here") {
		t.Errorf("advice %q", pat.Advice)
	}
}

// The whole text report of every recording, against a reviewed golden copy.
func TestReplayGolden(t *testing.T) {
	time.Local = time.UTC // text times are local
	files, _ := filepath.Glob(filepath.Join(recordings, "*.json"))
	if len(files) == 0 {
		t.Fatal("no recordings")
	}
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".json")
		t.Run(name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := replay(t, name).WriteText(&buf); err != nil {
				t.Fatal(err)
			}
			golden := filepath.Join(recordings, name+".golden.txt")
			if *update {
				if err := os.WriteFile(golden, buf.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test ./internal/report -update)", err)
			}
			if !bytes.Equal(buf.Bytes(), want) {
				t.Errorf("text report differs from %s:\n%s", golden, buf.String())
			}
		})
	}
}

// Recordings of the fields only some backends fill: inferred errnos and the
// cgroup sources with the holders enrichment named (a crash loop on the
// cgroup backend), listen() failures (the tracepoint backend).
func TestReplayInferredHoldersAndListen(t *testing.T) {
	r := replay(t, "cgroup-crash-loop")
	if len(r.Processes) == 0 || len(r.Processes[0].Examples) == 0 {
		t.Fatalf("no examples: %+v", r.Processes)
	}
	for _, p := range r.Processes {
		for _, e := range p.Examples {
			if !e.ErrnoInferred || e.Source != "cgroup_bind" || e.Holder == nil || e.Holder.PID == 0 || e.Holder.State != "LISTEN" {
				t.Errorf("example %+v: want an inferred cgroup_bind failure naming its LISTEN holder's pid", e)
			}
		}
	}
	var text bytes.Buffer
	if err := r.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(text.String(), "EADDRINUSE(inferred)") {
		t.Errorf("the text report does not say the errno was inferred:\n%s", text.String())
	}

	r = replay(t, "listen")
	listens := 0
	for _, p := range r.Processes {
		for _, e := range p.Examples {
			if e.Op == "listen" {
				listens++
				if e.Errno != "EADDRINUSE" {
					t.Errorf("listen example %+v: want EADDRINUSE", e)
				}
			}
		}
	}
	if listens == 0 {
		t.Errorf("no listen() failure among the examples: %+v", r.Processes)
	}
}
