package report

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/portsleuth/portsleuth/internal/event"
	"github.com/portsleuth/portsleuth/internal/procinfo"
)

// 80 runs of curl, half still alive when /proc was read and half gone
// before (named from the kernel's record and cgroup id), one read without
// its executable as it exited, are one program; a lone wget stays apart.
func TestProgramsGroupRunsOfOneCLI(t *testing.T) {
	const cgroup, cgroupID = "/user.slice/user-0.slice/session-3.scope", 77
	host := &fakeHost{infos: map[uint32]procinfo.Info{}, progs: map[uint32]procinfo.Program{}}
	snap := emptySnapshot()
	var curls []event.ProcKey
	for i := range 80 {
		k := event.ProcKey{PID: uint32(90001000 + i), Start: uint64(1e9 + i)}
		curls = append(curls, k)
		if i%2 == 0 {
			host.infos[k.PID] = procinfo.Info{Comm: "curl", Cmdline: "curl -s http://10.0.0.2/", Cgroup: cgroup, Netns: nsTest}
			host.progs[k.PID] = procinfo.Program{Exe: "/usr/bin/curl", Cgroup: cgroup, Comm: "curl"}
		}
		if i == 2 { // read as it exited: its comm, not yet its executable
			host.progs[k.PID] = procinfo.Program{Cgroup: cgroup, Comm: "curl"}
		}
	}
	c := host.collector()
	c.CgroupPath = func(id uint64) string {
		if id == cgroupID {
			return cgroup
		}
		return ""
	}
	for _, k := range curls {
		failing(c, &snap, k, "curl", connectFull, 1, "10.0.0.2:80", nil)
		m := snap.Meta[k]
		m.Cmdline, m.CgroupID = "curl -s http://10.0.0.2/", cgroupID
		snap.Meta[k] = m
		snap.Procs[k] = event.ProcStats{ConnectsFailed: 1}
	}
	wget := event.ProcKey{PID: 90002000, Start: 5e9}
	failing(c, &snap, wget, "wget", connectFull, 3, "10.0.0.2:80", nil)

	r := Build(snap, c, Filter{}, "replay", time.Unix(0, 0), time.Second)
	if len(r.Processes) != 81 {
		t.Fatalf("want one process entry per pid (81), got %d", len(r.Processes))
	}
	if len(r.Programs) != 2 {
		t.Fatalf("want curl and wget, got %+v", r.Programs)
	}
	curl := r.Programs[0]
	wantPIDs := make([]uint32, 0, 80)
	for _, k := range curls {
		wantPIDs = append(wantPIDs, k.PID)
	}
	if curl.Program != "/usr/bin/curl" || curl.Comm != "curl" || curl.Cgroup != cgroup || curl.Unit != "session-3.scope" ||
		curl.Failures != 80 || curl.Errors["EADDRNOTAVAIL"] != 80 || !slices.Equal(curl.PIDs, wantPIDs) ||
		!slices.Equal(curl.Patterns, []PatternCount{{"connect-port-exhaustion", 80}}) {
		t.Errorf("curl program: %+v", curl)
	}
	if w := r.Programs[1]; w.Program != "wget" || w.Failures != 3 || !slices.Equal(w.PIDs, []uint32{wget.PID}) {
		t.Errorf("wget program: %+v", w)
	}

	var buf bytes.Buffer
	if err := r.WriteText(&buf); err != nil {
		t.Fatal(err)
	}
	text := buf.String()
	for _, want := range []string{
		"\n2. pid 90002000 wget: 3 failures, EADDRNOTAVAIL 3\n",
		"\n1. curl: 80 processes, 80 failures, EADDRNOTAVAIL 80\n   program:  /usr/bin/curl\n" +
			"   pids:     90001000, 90001001, 90001002, 90001003, 90001004, 90001005, 90001006, 90001007, 90001008, 90001009 and 70 more\n" +
			"   netns:    4026532177   cgroup: /user.slice/user-0.slice/session-3.scope\n" +
			"   binds:    0 ok, 0 failed, 0 other errors; 0 bound port 0, 0 of them connected\n" +
			"   connects: 0 ok, 80 failed, 0 other errors\n" +
			"   pattern connect-port-exhaustion (80)\n     evidence (pid 90001000): ",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("text lacks %q:\n%s", want, text)
		}
	}
	if strings.Contains(text, "pid 90001001 curl") || strings.Contains(text, "\n3. ") {
		t.Errorf("the runs of curl are listed one by one:\n%s", text)
	}
}

// A process is in the traced command's tree when its parents lead to the
// command, even through a middle process that is gone: by the parents the
// kernel recorded, or by those /proc showed while they ran.
func TestInCommandThroughGoneParents(t *testing.T) {
	const cmd = 90003000
	cmdKey := event.ProcKey{PID: cmd, Start: 1e9}
	middle := event.ProcKey{PID: 90003001, Start: 2e9} // gone; the kernel recorded it and its parent
	leaf := event.ProcKey{PID: 90003002, Start: 3e9}
	viaProc := event.ProcKey{PID: 90003003, Start: 4e9}  // its parent 90003004 exits before the report
	outsider := event.ProcKey{PID: 90003005, Start: 5e9} // a child of init
	reused := event.ProcKey{PID: 90003006, Start: 6e9}   // child of an earlier process that had the command's pid

	host := &fakeHost{infos: map[uint32]procinfo.Info{
		viaProc.PID:  {Comm: "worker", PPID: 90003004},
		90003004:     {Comm: "sh", PPID: cmd},
		cmd:          {Comm: "make", PPID: 4242},
		4242:         {Comm: "bash", PPID: 1},
		outsider.PID: {Comm: "cron", PPID: 1},
	}}
	c := host.collector()
	snap := emptySnapshot()
	failing(c, &snap, cmdKey, "make", connectFull, 1, "10.0.0.2:80", nil)
	failing(c, &snap, middle, "sh", connectFull, 1, "10.0.0.2:80", nil)
	failing(c, &snap, leaf, "curl", connectFull, 2, "10.0.0.2:80", nil)
	failing(c, &snap, viaProc, "worker", connectFull, 1, "10.0.0.2:80", nil)
	failing(c, &snap, outsider, "cron", connectFull, 9, "10.0.0.2:80", nil)
	failing(c, &snap, reused, "old", connectFull, 1, "10.0.0.2:80", nil)
	setParent := func(k, parent event.ProcKey) {
		m := snap.Meta[k]
		m.Parent = parent
		snap.Meta[k] = m
	}
	setParent(leaf, middle)
	setParent(middle, cmdKey)
	setParent(reused, event.ProcKey{PID: cmd, Start: 1e6})
	for _, pid := range []uint32{viaProc.PID, 90003004, cmd, outsider.PID} {
		host.exit(pid) // everyone is gone when the report is built
	}

	r := Build(snap, c, Filter{Command: cmd, CommandStart: 1e9}, "replay", time.Unix(0, 0), time.Second)
	want := map[uint32]bool{cmd: true, middle.PID: true, leaf.PID: true, viaProc.PID: true, outsider.PID: false, reused.PID: false}
	for _, p := range r.Processes {
		if p.InCommand == nil || *p.InCommand != want[p.PID] {
			t.Errorf("pid %d (%s): in_command %v, want %v", p.PID, p.Comm, fmtBool(p.InCommand), want[p.PID])
		}
	}
	var buf bytes.Buffer
	if err := r.WriteText(&buf); err != nil {
		t.Fatal(err)
	}
	text := buf.String()
	// The command's tree first, though cron failed most.
	var order []string
	for _, line := range strings.Split(text, "\n") {
		if len(line) > 0 && line[0] >= '1' && line[0] <= '9' {
			order = append(order, line)
		}
	}
	wantOrder := []string{
		"1. pid 90003002 curl: 2 failures, EADDRNOTAVAIL 2",
		"2. pid 90003000 make: 1 failures, EADDRNOTAVAIL 1",
		"3. pid 90003001 sh: 1 failures, EADDRNOTAVAIL 1",
		"4. pid 90003003 worker: 1 failures, EADDRNOTAVAIL 1",
		"5. pid 90003005 cron: 9 failures, EADDRNOTAVAIL 9 (outside the traced command)",
		"6. pid 90003006 old: 1 failures, EADDRNOTAVAIL 1 (outside the traced command)",
	}
	if !slices.Equal(order, wantOrder) {
		t.Errorf("entries:\n%s\nwant:\n%s", strings.Join(order, "\n"), strings.Join(wantOrder, "\n"))
	}
}

func fmtBool(b *bool) string {
	if b == nil {
		return "absent"
	}
	return fmt.Sprint(*b)
}

// childOf polls /proc for a child of ppid running comm, with a bounded deadline.
func childOf(t *testing.T, ppid int, comm string) uint32 {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		dirs, _ := os.ReadDir("/proc")
		for _, d := range dirs {
			pid, err := strconv.Atoi(d.Name())
			if err != nil {
				continue
			}
			if info, err := procinfo.Lookup(uint32(pid)); err == nil && info.PPID == uint32(ppid) && info.Comm == comm {
				return uint32(pid)
			}
		}
		runtime.Gosched()
	}
	t.Fatalf("no %s child of %d appeared", comm, ppid)
	return 0
}

// A real tree: the command (sh) runs sh, which runs sleep. The middle sh is
// killed and the command exits before the report, so sleep's parent is now
// a reaper: the chain the collector read at sleep's first failure still
// puts it in the command's tree.
func TestInCommandLiveTree(t *testing.T) {
	cmd := exec.Command("sh", "-c", "sh -c 'sleep 600; true' & wait")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	cmdStart, err := procinfo.StartTime(uint32(cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	middle := childOf(t, cmd.Process.Pid, "sh")
	sleep := childOf(t, int(middle), "sleep")
	t.Cleanup(func() { _ = syscall.Kill(int(sleep), syscall.SIGKILL) })
	sleepStart, err := procinfo.StartTime(sleep)
	if err != nil {
		t.Fatal(err)
	}
	selfStart, err := procinfo.StartTime(uint32(os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}

	c := NewCollector()
	snap := emptySnapshot()
	sleepKey := event.ProcKey{PID: sleep, Start: sleepStart}
	selfKey := event.ProcKey{PID: uint32(os.Getpid()), Start: selfStart}
	failing(c, &snap, sleepKey, "sleep", connectFull, 2, "10.0.0.2:80", nil)
	failing(c, &snap, selfKey, "report.test", connectFull, 5, "10.0.0.2:80", nil)

	if err := syscall.Kill(int(middle), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait() // the command's wait returns once the middle sh is gone
	if info, err := procinfo.Lookup(sleep); err != nil || info.PPID == middle {
		t.Fatalf("sleep should outlive its parent: %+v, %v", info, err)
	}

	r := Build(snap, c, Filter{Command: uint32(cmd.Process.Pid), CommandStart: cmdStart}, "test", time.Unix(0, 0), time.Second)
	got := map[uint32]string{}
	for _, p := range r.Processes {
		got[p.PID] = fmtBool(p.InCommand)
	}
	if got[sleep] != "true" || got[uint32(os.Getpid())] != "false" {
		t.Errorf("in_command: %v (sleep %d, self %d)", got, sleep, os.Getpid())
	}
}
