package cli

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/portsleuth/portsleuth/internal/scenario"
)

// The report's culprit fields, decoded on their own: the JSON names are the contract.
type culpritJSON struct {
	Culprits []struct {
		PID       int    `json:"pid"`
		Comm      string `json:"comm"`
		Netns     uint64 `json:"netns"`
		PortsHeld struct {
			BindOwner   int `json:"bind_owner"`
			Established int `json:"established"`
			TimeWait    int `json:"time_wait"`
			Other       int `json:"other"`
		} `json:"ports_held"`
		Patterns []string `json:"patterns"`
		Victims  []struct {
			PID      int    `json:"pid"`
			Failures uint64 `json:"failures"`
		} `json:"victims"`
	} `json:"culprits"`
	Processes []struct {
		PID      int  `json:"pid"`
		InCmd    bool `json:"in_command"`
		Patterns []struct {
			Pattern string `json:"pattern"`
			Holders []struct {
				PID       int `json:"pid"`
				BindOwner int `json:"bind_owner"`
			} `json:"holders"`
		} `json:"patterns"`
		Examples []struct {
			Holder *struct {
				PID int `json:"pid"`
			} `json:"holder"`
		} `json:"examples"`
	} `json:"processes"`
}

// Cross-process starvation: a process whose bind(ip:0)+connect sockets hold
// most of the range is the culprit of another process's failed connects,
// with zero failures of its own.
func TestCulpritStarvesAnotherProcess(t *testing.T) {
	r, res, raw := traceScenarioRaw(t, "starve")
	victim := checkCulprit(t, r, res, "connect-port-exhaustion", "EADDRNOTAVAIL", scenario.StarveTries-(scenario.RangeSize-scenario.StarveHeld))
	_ = victim
	var c culpritJSON
	if err := json.Unmarshal(raw, &c); err != nil {
		t.Fatal(err)
	}
	culprit := res.Extra["culprit"]
	// The report covers the host: look at the culprits of this victim, in
	// its namespace, only (another test run's scenario may rank first).
	mine := c.Culprits[:0]
	for _, cu := range c.Culprits {
		if cu.Netns != uint64(res.Extra["netns"]) {
			continue
		}
		for _, v := range cu.Victims {
			if v.PID == res.PID {
				mine = append(mine, cu)
				break
			}
		}
	}
	if len(mine) == 0 {
		t.Fatalf("no culprit in netns %d names pid %d as its victim", res.Extra["netns"], res.PID)
	}
	top := mine[0]
	if top.PID != culprit || top.PortsHeld.BindOwner != scenario.StarveHeld || top.Netns != uint64(res.Extra["netns"]) {
		t.Errorf("first culprit pid %d holding %+v in netns %d; want pid %d holding %d bind()-owned ports in %d",
			top.PID, top.PortsHeld, top.Netns, culprit, scenario.StarveHeld, res.Extra["netns"])
	}
	if len(top.Patterns) != 1 || top.Patterns[0] != "bind-ip-before-connect" {
		t.Errorf("culprit patterns %v, want [bind-ip-before-connect] (seen on its successful binds)", top.Patterns)
	}
	found := false
	for _, v := range top.Victims {
		found = found || v.PID == res.PID && v.Failures == uint64(res.ConnectsFail)
	}
	if !found {
		t.Errorf("victims %+v, want pid %d with %d failures", top.Victims, res.PID, res.ConnectsFail)
	}
	for _, p := range c.Processes {
		if p.PID != res.PID {
			continue
		}
		if !p.InCmd {
			t.Errorf("the traced command's process is not marked in_command")
		}
		named := false
		for _, h := range p.Patterns[0].Holders {
			named = named || h.PID == culprit && h.BindOwner == scenario.StarveHeld
		}
		if !named {
			t.Errorf("the victim's pattern holders %+v do not name pid %d", p.Patterns[0].Holders, culprit)
		}
	}
}

// A server that fails bind() and exits at once, again and again: each run is
// told who holds its port, although each was gone a moment after failing.
func TestCrashLoopNamesTheHolder(t *testing.T) {
	r, res, raw := traceScenarioRaw(t, "crash-loop")
	if res.Extra["failed"] != scenario.CrashLoopRuns {
		t.Fatalf("the scenario saw %d failed starts, want %d", res.Extra["failed"], scenario.CrashLoopRuns)
	}
	var c culpritJSON
	if err := json.Unmarshal(raw, &c); err != nil {
		t.Fatal(err)
	}
	holder := res.Extra["holder"]
	runs := 0
	for i, p := range r.Processes {
		if p.Netns != uint64(res.Extra["netns"]) || int(p.PID) == holder {
			continue // the report covers the host
		}
		if p.Failures != 1 || p.Errors["EADDRINUSE"] != 1 {
			t.Errorf("pid %d: %d failures %v, want 1 EADDRINUSE", p.PID, p.Failures, p.Errors)
		}
		runs++
		named := false
		for _, e := range c.Processes[i].Examples {
			named = named || e.Holder != nil && e.Holder.PID == holder
		}
		if !named {
			t.Errorf("pid %d (gone at once) was not told its holder, pid %d: %+v", p.PID, holder, p.Examples)
		}
		if !c.Processes[i].InCmd {
			t.Errorf("pid %d is a child of the traced command but not marked in_command", p.PID)
		}
	}
	if runs != scenario.CrashLoopRuns {
		t.Errorf("%d failed starts in the report, want %d", runs, scenario.CrashLoopRuns)
	}
}

// TIME_WAIT sockets have no owner: they are counted for the process that
// closed the connections, although it has exited (the image-server incident:
// short-lived clients that close first starve the next ones).
func TestTimeWaitCountedForTheCloser(t *testing.T) {
	r, res, raw := traceScenarioRaw(t, "closer-exhaustion")
	tw := res.Extra["time_wait"]
	held := tw
	for k, n := range res.Extra {
		if strings.HasPrefix(k, "state_") {
			// A closed connection not yet TIME_WAIT holds its port too: an
			// orphan whose FIN_WAIT2 the kernel keeps as a timewait socket
			// (/proc/net/tcp says 05; portsleuth counts it as TIME_WAIT).
			held += n
		}
	}
	free := scenario.RangeSize - held
	if free >= scenario.StarveTries {
		t.Fatalf("the closer left %d TIME_WAITs of %d connections: too few for the victim to fail", tw, scenario.CloserConnections)
	}
	checkCulprit(t, r, res, "connect-port-exhaustion", "EADDRNOTAVAIL", scenario.StarveTries-free)
	var c struct {
		Culprits []struct {
			PID       int    `json:"pid"`
			Netns     uint64 `json:"netns"`
			Exited    bool   `json:"exited"`
			PortsHeld struct {
				TimeWait int `json:"time_wait"`
				Other    int `json:"other"`
			} `json:"ports_held"`
			Victims []struct {
				PID int `json:"pid"`
			} `json:"victims"`
		} `json:"culprits"`
	}
	if err := json.Unmarshal(raw, &c); err != nil {
		t.Fatal(err)
	}
	// The report covers the host: the closer is the one in the scenario's namespace.
	for _, cu := range c.Culprits {
		if cu.PID != res.Extra["closer"] || cu.Netns != uint64(res.Extra["netns"]) {
			continue
		}
		if !cu.Exited || cu.PortsHeld.TimeWait < tw || cu.PortsHeld.TimeWait+cu.PortsHeld.Other != held ||
			len(cu.Victims) == 0 || cu.Victims[0].PID != res.PID {
			t.Errorf("the closer %+v; want exited, holding %d TIME_WAIT (%d ports in all), victim pid %d (scenario: %v)",
				cu, tw, held, res.PID, res.Extra)
		}
		return
	}
	t.Errorf("the closer, pid %d, is not among the culprits", res.Extra["closer"])
}
