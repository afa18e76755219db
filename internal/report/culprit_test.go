package report

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/portsleuth/portsleuth/internal/attrib"
	"github.com/portsleuth/portsleuth/internal/event"
	"github.com/portsleuth/portsleuth/internal/pools"
	"github.com/portsleuth/portsleuth/internal/procinfo"
)

// Pids above any pid_max (2^22): /proc never has them, so nothing of this
// host leaks into the tests.
const (
	pidSocat  = 90000001
	pidPython = 90000002
	pidBeam   = 90000003
	nsTest    = 4026532177
)

var (
	connectFull = event.Class{Op: event.Connect, Proto: "tcp", Family: "ipv4", Errno: unix.EADDRNOTAVAIL, Port0: true, AnyAddr: true}
	bindAnyFull = event.Class{Op: event.Bind, Proto: "tcp", Family: "ipv4", Errno: unix.EADDRINUSE, Port0: true, AnyAddr: true}
	errGone     = errors.New("gone")
)

// fakeHost stands for /proc: processes are named until they "exit".
type fakeHost struct {
	infos map[uint32]procinfo.Info
	progs map[uint32]procinfo.Program
	mast  map[uint32]uint32
}

func (h *fakeHost) collector() *Collector {
	c := NewOfflineCollector()
	c.Lookup = func(pid uint32) (procinfo.Info, error) {
		if info, ok := h.infos[pid]; ok {
			return info, nil
		}
		return procinfo.Info{}, errGone
	}
	c.Program = func(pid uint32) (procinfo.Program, error) {
		if p, ok := h.progs[pid]; ok {
			return p, nil
		}
		return procinfo.Program{}, errGone
	}
	c.Master = func(pid uint32) (uint32, error) {
		if m, ok := h.mast[pid]; ok {
			return m, nil
		}
		return pid, nil
	}
	return c
}

func (h *fakeHost) exit(pid uint32) {
	delete(h.infos, pid)
	delete(h.progs, pid)
	delete(h.mast, pid)
}

// failing observes n failures of class c by pid, the first with snap as the
// pool snapshot the enricher would have taken, and returns the event.
func failing(c *Collector, snap *event.Snapshot, key event.ProcKey, comm string, class event.Class, n uint64, dest string, ps *pools.Snapshot) {
	e := event.Event{Time: time.Unix(1700000000, 0), PID: key.PID, Start: key.Start, TID: key.PID, Comm: comm, Thread: comm,
		Class: class, Netns: nsTest, Source: "syscall", Options: []string{}}
	if class.Op == event.Connect {
		e.Addr = netip.MustParseAddrPort("0.0.0.0:0")
		e.Dest = netip.MustParseAddrPort(dest)
	} else {
		e.Addr = netip.MustParseAddrPort("0.0.0.0:0")
	}
	c.Observe(&e)
	if ps != nil {
		c.notePressure(c.procs[key], class, ps)
	}
	if snap.Failures[key] == nil {
		snap.Failures[key] = map[event.Class]uint64{}
	}
	snap.Failures[key][class] += n
	snap.Meta[key] = event.ProcMeta{Comm: comm, Netns: nsTest}
}

func emptySnapshot() event.Snapshot {
	return event.Snapshot{Procs: map[event.ProcKey]event.ProcStats{}, Meta: map[event.ProcKey]event.ProcMeta{},
		Failures: map[event.ProcKey]map[event.Class]uint64{}}
}

// crossStarvation is the proxy case: socat bound 48 ports to 127.0.0.1
// before connecting (no failure of its own); python3's plain connects to
// :8080 then found no port; 12 TIME_WAIT no process is known to have closed.
func crossStarvation(t *testing.T) (Report, *pools.Snapshot) {
	t.Helper()
	host := &fakeHost{
		infos: map[uint32]procinfo.Info{
			pidSocat:  {Comm: "socat", Cmdline: "socat TCP-LISTEN:9000 TCP:127.0.0.1:8080,bind=127.0.0.1", Netns: nsTest, Cgroup: "/system.slice/proxy.service"},
			pidPython: {Comm: "python3", Cmdline: "python3 client.py", Netns: nsTest, Cgroup: "/user.slice/session-3.scope"},
		},
		progs: map[uint32]procinfo.Program{pidSocat: {Exe: "/usr/bin/socat", Cgroup: "/system.slice/proxy.service", Comm: "socat"}},
		mast:  map[uint32]uint32{pidSocat: 90000000},
	}
	c := host.collector()
	ps := &pools.Snapshot{Netns: nsTest, ConnectPool: &pools.ConnectPool{
		Local: "127.0.0.1", Dest: "127.0.0.1:8080", Established: 4, TimeWait: 12, BindOwned: 48, Free: 0, Size: 64,
		Owners: []pools.Owner{
			{PID: pidSocat, Comm: "socat", Sockets: 48, BindOwner: 48, BindConnected: 48},
			{PID: 0, Sockets: 12, TimeWait: 12},
			{PID: pidPython, Comm: "python3", Sockets: 4, Established: 4},
		},
	}}
	snap := emptySnapshot()
	python := event.ProcKey{PID: pidPython, Start: 2e9}
	failing(c, &snap, python, "python3", connectFull, 12, "127.0.0.1:8080", ps)
	snap.Procs[python] = event.ProcStats{ConnectsOK: 4, ConnectsFailed: 12}
	snap.Procs[event.ProcKey{PID: pidSocat, Start: 1e9}] = event.ProcStats{BindsOK: 48, Port0BindsOK: 48, Port0BindConnects: 48, ConnectsOK: 48}
	host.exit(pidSocat) // gone by the report: named from what was read at the snapshot
	return Build(snap, c, Filter{}, "replay", time.Unix(0, 0), time.Second), ps
}

func TestCulpritHoldsAnotherProcessPool(t *testing.T) {
	r, ps := crossStarvation(t)
	if len(r.Culprits) != 3 {
		t.Fatalf("want socat, no process and python3 as culprits, got %+v", r.Culprits)
	}
	cu := r.Culprits[0]
	if cu.PID != pidSocat || cu.Comm != "socat" || cu.Cmdline != "socat TCP-LISTEN:9000 TCP:127.0.0.1:8080,bind=127.0.0.1" ||
		cu.Netns != nsTest || cu.Cgroup != "/system.slice/proxy.service" || cu.Unit != "proxy.service" ||
		cu.Master != 90000000 || cu.Program != "/usr/bin/socat" {
		t.Errorf("culprit #1 identity: %+v", cu)
	}
	if cu.PortsHeld != (PortsHeld{BindOwner: 48}) || !slices.Equal(cu.Patterns, []string{"bind-ip-before-connect"}) {
		t.Errorf("culprit #1 holds %+v with patterns %v", cu.PortsHeld, cu.Patterns)
	}
	want := []Victim{{PID: pidPython, StartNs: 2e9, Comm: "python3", Failures: 12, Calls: []Call{{"connect", "EADDRNOTAVAIL", 12}}}}
	if !equalJSON(cu.Victims, want) {
		t.Errorf("victims %+v, want %+v", cu.Victims, want)
	}
	if len(cu.Pools) != 1 || cu.Pools[0] != (HeldPool{Netns: nsTest, Kind: "connect", Local: "127.0.0.1", Dest: "127.0.0.1:8080", Size: 64, PortsHeld: PortsHeld{BindOwner: 48}}) {
		t.Errorf("pools %+v", cu.Pools)
	}
	if nobody := r.Culprits[1]; nobody.PID != 0 || nobody.Comm != "no process" || nobody.PortsHeld != (PortsHeld{TimeWait: 12}) || len(nobody.Victims) != 1 {
		t.Errorf("culprit #2: %+v", nobody)
	}
	// A victim holding part of its own pool is its own (lesser) culprit.
	if self := r.Culprits[2]; self.PID != pidPython || self.PortsHeld != (PortsHeld{Established: 4}) || len(self.Patterns) != 0 ||
		len(self.Victims) != 1 || self.Victims[0].PID != pidPython {
		t.Errorf("culprit #3: %+v", self)
	}
	// The zero-failure culprit is no process entry: it did not fail.
	if len(r.Processes) != 1 || r.Processes[0].PID != pidPython {
		t.Fatalf("processes %+v", r.Processes)
	}
	pat := r.Processes[0].Patterns[0]
	if pat.Pattern != "connect-port-exhaustion" || !equalJSON(pat.Holders, ps.ConnectPool.Owners) {
		t.Errorf("pattern %s holders %+v", pat.Pattern, pat.Holders)
	}

	var buf bytes.Buffer
	if err := r.WriteText(&buf); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(buf.String(), "\n")
	for i, want := range []string{
		"socat (pid 90000001, worker of master pid 90000000, proxy.service) held 48 of the 64 ports of 127.0.0.1 -> 127.0.0.1:8080 through bind() before connect(): python3 (pid 90000002) failed 12 connect() calls EADDRNOTAVAIL",
		"sockets no process has open held 12 of the 64 ports of 127.0.0.1 -> 127.0.0.1:8080 through TIME_WAIT whose closer was not seen: python3 (pid 90000002) failed 12 connect() calls EADDRNOTAVAIL",
		"python3 (pid 90000002, session-3.scope) held 4 of the 64 ports of 127.0.0.1 -> 127.0.0.1:8080 through established connections: python3 (pid 90000002) itself failed 12 connect() calls EADDRNOTAVAIL",
	} {
		if lines[i+1] != want {
			t.Errorf("line %d:\n got %q\nwant %q", i+2, lines[i+1], want)
		}
	}
	if !strings.Contains(buf.String(), "     holders:  pid 90000001 (socat) 48 bind-owned; no process 12 TIME_WAIT; pid 90000002 (python3) 4 established\n") {
		t.Errorf("text lacks the holders:\n%s", buf.String())
	}
}

// The JSON names of the contract.
func TestCulpritJSONNames(t *testing.T) {
	r, _ := crossStarvation(t)
	var buf bytes.Buffer
	if err := r.WriteJSON(&buf); err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Culprits []map[string]json.RawMessage `json:"culprits"`
		Programs []map[string]json.RawMessage `json:"programs"`
		Procs    []struct {
			InCommand *bool                        `json:"in_command"`
			Patterns  []map[string]json.RawMessage `json:"patterns"`
		} `json:"processes"`
	}
	if err := json.Unmarshal(buf.Bytes(), &doc); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"pid", "comm", "cmdline", "netns", "cgroup", "unit", "master", "ports_held", "patterns", "victims", "pools", "program"} {
		if _, ok := doc.Culprits[0][k]; !ok {
			t.Errorf("culprit lacks %q: %s", k, buf.String())
		}
	}
	if got := compact(t, doc.Culprits[0]["ports_held"]); got != `{"bind_owner":48,"established":0,"time_wait":0,"other":0}` {
		t.Errorf("ports_held %s", got)
	}
	if got := compact(t, doc.Culprits[0]["victims"]); !strings.Contains(got, `"pid":90000002`) || !strings.Contains(got, `"failures":12`) || !strings.Contains(got, `"comm":"python3"`) {
		t.Errorf("victims %s", got)
	}
	for _, k := range []string{"program", "comm", "cgroup", "pids", "failures", "errors", "patterns"} {
		if _, ok := doc.Programs[0][k]; !ok {
			t.Errorf("program lacks %q", k)
		}
	}
	if _, ok := doc.Procs[0].Patterns[0]["holders"]; !ok {
		t.Errorf("pattern lacks holders")
	}
	if doc.Procs[0].InCommand != nil {
		t.Errorf("in_command without a traced command")
	}
}

// The Erlang case: the failing process holds its whole pool itself.
func TestCulpritIsTheFailingProcess(t *testing.T) {
	host := &fakeHost{infos: map[uint32]procinfo.Info{pidBeam: {Comm: "beam.smp", Cmdline: "beam.smp -- -root /usr/lib/erlang", Netns: nsTest}}}
	c := host.collector()
	ps := &pools.Snapshot{Netns: nsTest, BindPool: &pools.BindPool{Proto: "tcp", Local: "0.0.0.0", Used: 64, Free: 0,
		Owners: []pools.Owner{{PID: pidBeam, Comm: "beam.smp", Sockets: 64, BindOwner: 64, BindConnected: 64, BindConnectedAny: 64}}}}
	snap := emptySnapshot()
	beam := event.ProcKey{PID: pidBeam, Start: 3e9}
	failing(c, &snap, beam, "beam.smp", bindAnyFull, 10, "", ps)
	snap.Procs[beam] = event.ProcStats{BindsOK: 64, BindsFailed: 10, Port0BindsOK: 64, Port0BindConnects: 64, ConnectsOK: 64}
	r := Build(snap, c, Filter{}, "replay", time.Unix(0, 0), time.Second)
	if len(r.Culprits) != 1 {
		t.Fatalf("culprits %+v", r.Culprits)
	}
	cu := r.Culprits[0]
	if cu.PID != pidBeam || cu.PortsHeld != (PortsHeld{BindOwner: 64}) || !slices.Equal(cu.Patterns, []string{"bind-any-before-connect"}) ||
		len(cu.Victims) != 1 || cu.Victims[0].PID != pidBeam || cu.Victims[0].Failures != 10 || cu.Master != 0 {
		t.Errorf("culprit %+v", cu)
	}
	if got := r.Processes[0].Patterns[0]; got.Pattern != "bind-any-before-connect" || len(got.Holders) != 1 {
		t.Errorf("pattern %+v", got)
	}
	var buf bytes.Buffer
	if err := r.WriteText(&buf); err != nil {
		t.Fatal(err)
	}
	want := "beam.smp (pid 90000003) held 64 of the 64 ports of 0.0.0.0 through bind() before connect(): beam.smp (pid 90000003) itself failed 10 bind() calls EADDRINUSE\n"
	if line := strings.SplitAfter(buf.String(), "\n")[1]; line != want {
		t.Errorf("got %q\nwant %q", line, want)
	}
}

// Sockets no process has open, in two victims' snapshots of one pool, are
// one "no process" culprit, counted once.
func TestCulpritNoProcess(t *testing.T) {
	host := &fakeHost{infos: map[uint32]procinfo.Info{}}
	c := host.collector()
	snapAt := func(tw int) *pools.Snapshot {
		return &pools.Snapshot{Netns: nsTest, ConnectPool: &pools.ConnectPool{Local: "10.0.0.1", Dest: "10.0.0.2:443", TimeWait: tw, Other: 2, Size: 64,
			Owners: []pools.Owner{{PID: 0, Sockets: tw + 2, TimeWait: tw, Other: 2}}}}
	}
	snap := emptySnapshot()
	a, b := event.ProcKey{PID: 90000010, Start: 1}, event.ProcKey{PID: 90000011, Start: 2}
	failing(c, &snap, a, "curl", connectFull, 3, "10.0.0.2:443", snapAt(60))
	failing(c, &snap, b, "wget", connectFull, 5, "10.0.0.2:443", snapAt(62))
	r := Build(snap, c, Filter{}, "replay", time.Unix(0, 0), time.Second)
	if len(r.Culprits) != 1 {
		t.Fatalf("culprits %+v", r.Culprits)
	}
	cu := r.Culprits[0]
	if cu.PID != 0 || cu.Comm != "no process" || cu.Netns != nsTest || cu.PortsHeld != (PortsHeld{TimeWait: 62, Other: 2}) || len(cu.Patterns) != 0 {
		t.Errorf("culprit %+v", cu)
	}
	if len(cu.Victims) != 2 || cu.Victims[0].PID != b.PID || cu.Victims[0].Failures != 5 || cu.Victims[1].Failures != 3 {
		t.Errorf("victims %+v", cu.Victims)
	}
	var buf bytes.Buffer
	if err := r.WriteText(&buf); err != nil {
		t.Fatal(err)
	}
	want := "sockets no process has open held 64 of the 64 ports of 10.0.0.1 -> 10.0.0.2:443 through TIME_WAIT whose closer was not seen (62), sockets in other states (2): wget (pid 90000011) failed 5 connect() calls EADDRNOTAVAIL; curl (pid 90000010) failed 3 connect() calls EADDRNOTAVAIL\n"
	if line := strings.SplitAfter(buf.String(), "\n")[1]; line != want {
		t.Errorf("got %q\nwant %q", line, want)
	}
}

// Bind-before-connect to 4 destinations: the bind owner's ports count once,
// not once per destination's pool.
func TestCulpritPortsHeldNotDoubleCounted(t *testing.T) {
	host := &fakeHost{infos: map[uint32]procinfo.Info{}}
	c := host.collector()
	snap := emptySnapshot()
	for i, dest := range []string{"10.0.0.2:80", "10.0.0.3:80"} {
		ps := &pools.Snapshot{Netns: nsTest, ConnectPool: &pools.ConnectPool{Local: "10.0.0.1", Dest: dest, Established: 16, BindOwned: 48, Size: 64,
			Owners: []pools.Owner{{PID: pidSocat, Comm: "socat", Sockets: 16, BindOwner: 48, BindConnected: 64, Established: 16}}}}
		failing(c, &snap, event.ProcKey{PID: uint32(90000020 + i), Start: 1}, "client", connectFull, 1, dest, ps)
	}
	r := Build(snap, c, Filter{}, "replay", time.Unix(0, 0), time.Second)
	if len(r.Culprits) != 1 || r.Culprits[0].PortsHeld != (PortsHeld{BindOwner: 48, Established: 16}) || len(r.Culprits[0].Pools) != 2 {
		t.Errorf("culprits %+v", r.Culprits)
	}
}

func TestPoolOfBindPool(t *testing.T) {
	got := poolOf(&pools.Snapshot{BindPool: &pools.BindPool{Proto: "tcp", Local: "127.0.0.1", Used: 60, Free: 4, Owners: []pools.Owner{
		{PID: 1, BindOwner: 40, Established: 3}, {PID: 2, BindOwner: 8, TimeWait: 5, Other: 1}}}})
	want := attrib.Pool{Kind: "bind", Local: "127.0.0.1", Size: 64, BindOwned: 48, Established: 3, TimeWait: 5, Other: 1, Free: 4,
		Holders: []attrib.PoolHolder{{PID: 1, Procs: 1, Ports: 43}, {PID: 2, Procs: 1, Ports: 14}}}
	if got == nil || !reflect.DeepEqual(*got, want) {
		t.Errorf("got %+v, want %+v", got, want)
	}
	got = poolOf(&pools.Snapshot{ConnectPool: &pools.ConnectPool{Local: "a", Dest: "b", Established: 1, TimeWait: 2, Other: 3, BindOwned: 4, Free: 5, Size: 15}})
	want = attrib.Pool{Kind: "connect", Local: "a", Dest: "b", Size: 15, BindOwned: 4, Established: 1, TimeWait: 2, Other: 3, Free: 5}
	if got == nil || !reflect.DeepEqual(*got, want) {
		t.Errorf("got %+v, want %+v", got, want)
	}
	if poolOf(nil) != nil {
		t.Errorf("a pool from no snapshot")
	}
}

// Holders are captured once each and bounded.
func TestCollectorBoundsHolders(t *testing.T) {
	lookups := 0
	c := NewOfflineCollector()
	c.Lookup = func(pid uint32) (procinfo.Info, error) { lookups++; return procinfo.Info{Comm: "x"}, nil }
	owners := make([]pools.Owner, maxHolderProcs+10)
	for i := range owners {
		owners[i] = pools.Owner{PID: 100000000 + i, Sockets: 1}
	}
	ps := &pools.Snapshot{BindPool: &pools.BindPool{Owners: owners}}
	p := &procEvents{pressure: map[event.Class]*pools.Snapshot{}}
	c.notePressure(p, bindAnyFull, ps)
	c.notePressure(p, connectFull, ps)
	if len(c.holders) != maxHolderProcs || lookups != maxHolderProcs {
		t.Errorf("%d holders, %d lookups; want %d of each", len(c.holders), lookups, maxHolderProcs)
	}
}

func compact(t *testing.T, raw json.RawMessage) string {
	t.Helper()
	var buf bytes.Buffer
	if err := json.Compact(&buf, raw); err != nil {
		t.Fatal(err)
	}
	return buf.String()
}

func equalJSON(a, b any) bool {
	x, err1 := json.Marshal(a)
	y, err2 := json.Marshal(b)
	return err1 == nil && err2 == nil && bytes.Equal(x, y)
}

// Names in culprit sentences, holders and program entries reach the
// terminal escaped, like every other process string.
func TestCulpritAndProgramTextEscaped(t *testing.T) {
	host := &fakeHost{
		infos: map[uint32]procinfo.Info{pidSocat: {Comm: evilComm, Cmdline: evilCmdline, Cgroup: evilCgroup}},
		progs: map[uint32]procinfo.Program{pidSocat: {Exe: "/bin/" + osc, Cgroup: evilCgroup, Comm: evilComm}},
	}
	c := host.collector()
	ps := &pools.Snapshot{Netns: nsTest, ConnectPool: &pools.ConnectPool{Local: "10.0.0.1", Dest: "10.0.0.2:80", BindOwned: 64, Size: 64,
		Owners: []pools.Owner{{PID: pidSocat, Comm: evilHolder, Sockets: 64, BindOwner: 64, BindConnected: 64}}}}
	snap := emptySnapshot()
	for i := range 2 {
		k := event.ProcKey{PID: uint32(90004000 + i), Start: 1}
		failing(c, &snap, k, brokenComm, connectFull, 1, "10.0.0.2:80", ps)
		snap.Meta[k] = event.ProcMeta{Comm: brokenComm, Cmdline: brokenCmdline, Netns: nsTest}
	}
	r := Build(snap, c, Filter{}, "replay", time.Unix(0, 0), time.Second)
	var buf bytes.Buffer
	if err := r.WriteText(&buf); err != nil {
		t.Fatal(err)
	}
	text := buf.String()
	assertTerminalSafe(t, text)
	for _, want := range []string{
		"\n" + oscEscaped + " (pid 90000001, " + oscEscaped + ".scope) held 64 of the 64 ports",
		`: bad\x9b\xff\x1b (pid 90004000) failed 1 connect() call EADDRNOTAVAIL`,
		"holders:  pid 90000001 (" + oscEscaped + `evil\u202eexe) 64 bind-owned`,
		`1. bad\x9b\xff\x1b: 2 processes, 2 failures`,
		`program:  \xc3(\x9b[2J`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("text lacks %q:\n%s", want, text)
		}
	}
}
