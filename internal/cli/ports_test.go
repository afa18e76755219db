package cli

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/portsleuth/portsleuth/internal/pools"
	"github.com/portsleuth/portsleuth/internal/scenario"
)

// startHolder runs a scenario that keeps its sockets until stop is called.
func startHolder(t *testing.T, name string) (scenario.Result, func()) {
	t.Helper()
	child := exec.Command(os.Args[0])
	child.Env = append(os.Environ(), scenario.Env+"="+name, scenario.HoldEnv+"=1")
	child.Stderr = os.Stderr
	stdin, err := child.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := child.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	stop := func() { stdin.Close(); child.Wait() }
	line, err := bufio.NewReader(stdout).ReadBytes('\n')
	if err != nil {
		stop()
		t.Fatalf("scenario %s: %v", name, err)
	}
	var res scenario.Result
	if err := json.Unmarshal(line, &res); err != nil {
		stop()
		t.Fatal(err)
	}
	return res, stop
}

func portsJSON(t *testing.T, args ...string) []pools.Namespace {
	t.Helper()
	var out, errb bytes.Buffer
	if code := Run(append([]string{"ports", "-o", "json"}, args...), &out, &errb); code != 0 {
		t.Fatalf("ports exit %d: %s", code, errb.String())
	}
	var r struct {
		Namespaces []pools.Namespace `json:"namespaces"`
	}
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	return r.Namespaces
}

// Known numbers in, the same numbers out: 10 established and 20 TIME_WAIT to
// one destination, and 5 bind-before-connect sockets that shrink every pool.
func TestPortsExactPools(t *testing.T) {
	requireRoot(t)
	res, stop := startHolder(t, "hold-pools")
	defer stop()
	nss := portsJSON(t, "--netns", fmt.Sprintf("/proc/%d/task/%d/ns/net", res.PID, res.TID))
	if len(nss) != 1 {
		t.Fatalf("%d namespaces", len(nss))
	}
	ns := nss[0]
	byKey := map[string]pools.ConnectPool{}
	for _, p := range ns.ConnectPools {
		byKey[p.Local+" "+p.Dest] = p
	}
	const n = scenario.RangeSize
	busy := byKey["127.0.0.1 127.0.0.1:8080"]
	if busy.Established != scenario.HoldEstablished || busy.TimeWait != scenario.HoldTimeWait || busy.Other != 0 {
		t.Errorf("pool to :8080 %+v; want %d established, %d TIME_WAIT", busy, scenario.HoldEstablished, scenario.HoldTimeWait)
	}
	if want := n - scenario.HoldBound - scenario.HoldEstablished - scenario.HoldTimeWait; busy.Free != want {
		t.Errorf("pool to :8080 has %d free, want %d: bind()-owned ports leave every pool", busy.Free, want)
	}
	// Who holds the pool: the holder's connections here and its bind()-owned
	// ports elsewhere; the TIME_WAITs under no process (no tracer saw the close).
	owners := map[int]pools.Owner{}
	for _, o := range busy.Owners {
		owners[o.PID] = o
	}
	if o := owners[res.PID]; len(owners) != 2 || o.Sockets != scenario.HoldEstablished ||
		o.Established != scenario.HoldEstablished || o.BindOwner != scenario.HoldBound || o.BindConnected != scenario.HoldBound {
		t.Errorf("owners %+v; want pid %d with %d established here and %d bind()-owned ports that connected elsewhere",
			busy.Owners, res.PID, scenario.HoldEstablished, scenario.HoldBound)
	}
	if o := owners[0]; o.TimeWait != scenario.HoldTimeWait || o.Comm != "" {
		t.Errorf("no-process owner %+v; want the %d TIME_WAITs", o, scenario.HoldTimeWait)
	}
	if busy.BindOwned != scenario.HoldBound || busy.Size != n {
		t.Errorf("pool to :8080: %d bind-owned ports outside it and size %d, want %d and %d", busy.BindOwned, busy.Size, scenario.HoldBound, n)
	}
	if busy.TimeWaitLeft[1] <= 0 || busy.TimeWaitLeft[1] > 60 {
		t.Errorf("TIME_WAIT left %v, want within (0, 60] s", busy.TimeWaitLeft)
	}
	other := byKey["127.0.0.1 127.0.0.1:8081"]
	if other.Established != scenario.HoldBound || other.Free != n-scenario.HoldBound {
		t.Errorf("pool to :8081 %+v; want %d established and %d free", other, scenario.HoldBound, n-scenario.HoldBound)
	}
	if ns.BindOwnedPorts != scenario.HoldBound {
		t.Errorf("bind-owned ports %d, want %d", ns.BindOwnedPorts, scenario.HoldBound)
	}
	for _, bp := range ns.BindPools {
		if bp.Proto == "tcp" && bp.Local == "127.0.0.1" {
			if used := scenario.HoldEstablished + scenario.HoldTimeWait + scenario.HoldBound; bp.Used != used || bp.Free != n-used {
				t.Errorf("bind(127.0.0.1:0) pool %+v; want %d used", bp, used)
			}
		}
	}
	if !strings.HasPrefix(ns.Verdict, "connect pool to 127.0.0.1:8080 from 127.0.0.1 is 55% full: 20 TIME_WAIT, 10 established") {
		t.Errorf("verdict %q", ns.Verdict)
	}
	if ns.PortRange != scenario.PortRange || ns.TCPTwReuse != 0 {
		t.Errorf("sysctls: range %v, tcp_tw_reuse %d", ns.PortRange, ns.TCPTwReuse)
	}
}

func TestPortsAllNamespaces(t *testing.T) {
	requireRoot(t)
	nss := portsJSON(t)
	self, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, ns := range nss {
		if fmt.Sprintf("net:[%d]", ns.Netns) == self {
			found = true
			if len(ns.PIDs) == 0 {
				t.Errorf("our namespace lists no pids")
			}
		}
	}
	if !found {
		t.Errorf("our own namespace %s is not among %d", self, len(nss))
	}
}
