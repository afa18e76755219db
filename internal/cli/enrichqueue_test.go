package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/portsleuth/portsleuth/internal/event"
	"github.com/portsleuth/portsleuth/internal/pools"
	"github.com/portsleuth/portsleuth/internal/report"
	"github.com/portsleuth/portsleuth/internal/scenario"
)

// watchPortInUse runs watch on the port-in-use scenario, which holds its
// namespace and listener until watch has ended, and returns watch's stdout.
func watchPortInUse(t *testing.T, format string) (string, int) {
	t.Helper()
	requireRoot(t)
	child, release, childOut := startWaitingScenario(t, "port-in-use", scenario.HoldEnv+"=1")
	defer child.Process.Kill()

	var out bytes.Buffer
	stderr := &signalWriter{ready: make(chan struct{})}
	done := make(chan int)
	go func() {
		done <- Run([]string{"watch", "-o", format, "--backend", testBackend(), "--pid", strconv.Itoa(child.Process.Pid), "--duration", "3s"}, &out, stderr)
	}()
	select {
	case <-stderr.ready:
	case code := <-done:
		t.Fatalf("watch exited %d before attaching: %s", code, stderr.String())
	}
	release.Write([]byte("go\n"))
	if code := <-done; code != 0 {
		t.Fatalf("watch exit %d: %s", code, stderr.String())
	}
	release.Close() // the scenario lets its sockets and namespace go
	if err := child.Wait(); err != nil {
		t.Fatalf("scenario: %v\n%s", err, childOut.String())
	}
	return out.String(), child.Process.Pid
}

// Each failure's line comes at once; what enrichment finds for the first
// one follows on a line of its own: {"type":"enrichment"} with the holder
// (the scenario's own listener) and the pressure snapshot.
func TestWatchJSONEnrichmentFollows(t *testing.T) {
	out, pid := watchPortInUse(t, "json")
	var failures, enrichments int
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var kind struct {
			Type string `json:"type"`
		}
		if err := json.Unmarshal([]byte(line), &kind); err != nil {
			t.Fatalf("not JSON: %q", line)
		}
		if kind.Type != "enrichment" {
			var r report.Record
			json.Unmarshal([]byte(line), &r)
			if r.PID != uint32(pid) || r.Errno != "EADDRINUSE" || r.Pressure != nil {
				t.Errorf("record %+v: want pid %d EADDRINUSE, no pressure inline", r, pid)
			}
			failures++
			continue
		}
		var en struct {
			PID      uint32          `json:"pid"`
			Op       string          `json:"op"`
			Errno    string          `json:"errno"`
			Addr     string          `json:"addr"`
			Holder   *event.Holder   `json:"holder"`
			Pressure *pools.Snapshot `json:"pressure"`
		}
		json.Unmarshal([]byte(line), &en)
		enrichments++
		if en.PID != uint32(pid) || en.Op != "bind" || en.Errno != "EADDRINUSE" || en.Addr != "127.0.0.1:8080" || en.Pressure == nil {
			t.Errorf("enrichment line %s", line)
		}
		if kernelLayer(report.Report{Backend: testBackend()}) {
			continue // the kernel named the holder on the failure's own line
		}
		if en.Holder == nil || en.Holder.PID != uint32(pid) || en.Holder.State != "LISTEN" {
			t.Errorf("enrichment holder %+v, want pid %d LISTEN", en.Holder, pid)
		}
	}
	if failures != scenario.PortInUseAttempts || enrichments != 1 {
		t.Errorf("%d failure lines and %d enrichment lines, want %d and 1:\n%s", failures, enrichments, scenario.PortInUseAttempts, out)
	}
}

// The text form: the holder and the pressure each on an indented line that
// says which process and failure they belong to.
func TestWatchTextEnrichmentFollows(t *testing.T) {
	out, pid := watchPortInUse(t, "text")
	t.Logf("watch printed:\n%s", out)
	about := fmt.Sprintf("(pid %d ", pid)
	if !strings.Contains(out, "    pressure "+about) || !strings.Contains(out, ", bind EADDRINUSE): at the first failure") {
		t.Errorf("no pressure line for pid %d:\n%s", pid, out)
	}
	if !strings.Contains(out, "    holder "+about) || !strings.Contains(out, fmt.Sprintf("held by pid %d (", pid)) {
		if !kernelLayer(report.Report{Backend: testBackend()}) {
			t.Errorf("no holder line for pid %d:\n%s", pid, out)
		}
	}
	if n := strings.Count(out, " bind tcp/ipv4 127.0.0.1:8080 EADDRINUSE"); n != scenario.PortInUseAttempts {
		t.Errorf("%d failure lines, want %d:\n%s", n, scenario.PortInUseAttempts, out)
	}
}
