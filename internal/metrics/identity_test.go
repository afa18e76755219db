package metrics

import (
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/portsleuth/portsleuth/internal/event"
)

const (
	hexA = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	hexB = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
)

// podPath is a kubelet (systemd driver) container cgroup of pod uid.
func podPath(uid, container string) string {
	u := uid
	for i := range len(u) {
		if u[i] == '-' {
			u = u[:i] + "_" + u[i+1:]
		}
	}
	return "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + u + ".slice/cri-containerd-" + container + ".scope"
}

// failureSeries gathers portsleuth_failures_total as a scrape does: labels
// of each series -> its value.
func failureSeries(t *testing.T, c *Collector) map[string]float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(c); err != nil {
		t.Fatalf("registering: %v", err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gathering: %v", err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "portsleuth_failures_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			l := map[string]string{}
			for _, lp := range m.GetLabel() {
				l[lp.GetName()] = lp.GetValue()
			}
			out[fmt.Sprintf("%s/%s/%s/%s", l["comm"], l["container_id"], l["pod_uid"], l["unit"])] += m.GetCounter().GetValue()
		}
	}
	return out
}

// withCgroups makes the collector find pid's cgroup in paths.
func withCgroups(c *Collector, paths map[uint32]string) *int {
	lookups := 0
	c.CgroupOf = func(k event.ProcKey, _ event.ProcMeta) string {
		lookups++
		return paths[k.PID]
	}
	return &lookups
}

func TestFailuresCarryIdentity(t *testing.T) {
	src := newFakeSource()
	c, _ := newTestCollector(src)
	uid := "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
	lookups := withCgroups(c, map[uint32]string{
		1: podPath(uid, hexA),
		2: "/system.slice/docker-" + hexB + ".scope",
		3: "/system.slice/foo.service",
		4: "/",
		5: "/system.slice/bad\xff.service",
	})
	for pid := uint32(1); pid <= 5; pid++ {
		src.fail(pid, "app", bindInUse, uint64(pid))
	}
	got := failureSeries(t, c)
	want := map[string]float64{
		"app/" + hexA + "/" + uid + "/": 1,
		"app/" + hexB + "//":            2,
		"app///foo.service":             3,
		"app///":                        4,
		`app///bad\xff.service`:         5,
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("series:\n got %v\nwant %v", got, want)
	}
	// Each process's identity is resolved once, not per update.
	src.fail(1, "app", bindInUse, 1)
	before := *lookups
	failureSeries(t, c)
	if *lookups != before {
		t.Errorf("identity looked up again for a known process: %d lookups, had %d", *lookups, before)
	}
}

// A process whose recorded cgroup can't be named yet (made after the last
// walk of the cgroup tree) has its failures held, not counted nameless: they
// count under its identity once it is known, or without one after
// IdentityWait. With no cgroup recorded they count at once.
func TestIdentityWaitedFor(t *testing.T) {
	src := newFakeSource()
	c, clock := newTestCollector(src)
	paths := map[uint32]string{}
	withCgroups(c, paths)
	withCgroupID := func(pid uint32) {
		k := event.ProcKey{PID: pid, Start: uint64(pid) * 1000}
		m := src.snap.Meta[k]
		m.CgroupID = 99
		src.snap.Meta[k] = m
	}
	src.fail(7, "late", bindInUse, 1)
	withCgroupID(7)
	src.fail(8, "never", bindInUse, 1)
	withCgroupID(8)
	src.fail(9, "nocg", bindInUse, 4)
	if got := failureSeries(t, c); got["late///"] != 0 || got["never///"] != 0 || got["nocg///"] != 4 {
		t.Fatalf("first update: %v: want late and never held, nocg counted", got)
	}
	paths[7] = "/system.slice/late.service"
	src.fail(7, "late", bindInUse, 2)
	withCgroupID(7)
	if got := failureSeries(t, c); got["late///late.service"] != 3 || got["late///"] != 0 || got["never///"] != 0 {
		t.Errorf("once named: %v: want all 3 of late under its unit, never still held", got)
	}
	clock.t = clock.t.Add(c.IdentityWait)
	if got := failureSeries(t, c); got["never///"] != 1 {
		t.Errorf("after the wait: %v: want never counted without identity", got)
	}
}

// A failure read before the kernel's record of who made it (a snapshot
// between the two) waits for that record: counted at once it would be
// "unknown", without identity, and the rest of the process's failures in
// another series. Without a record for IdentityWait it counts as it is.
func TestFailureWaitsForItsRecord(t *testing.T) {
	src := newFakeSource()
	c, clock := newTestCollector(src)
	paths := map[uint32]string{7: podPath("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0", hexA)}
	withCgroups(c, paths)
	k := event.ProcKey{PID: 7, Start: 7000}
	src.fail(7, "tw", bindInUse, 7)
	meta := src.snap.Meta[k]
	meta.CgroupID = 99
	delete(src.snap.Meta, k)
	if got := failureSeries(t, c); len(got) != 0 {
		t.Fatalf("without its record: %v: want the failures held", got)
	}
	src.snap.Meta[k] = meta
	src.fail(7, "tw", bindInUse, 3)
	src.snap.Meta[k] = meta
	want := "tw/" + hexA + "/0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0/"
	if got := failureSeries(t, c); len(got) != 1 || got[want] != 10 {
		t.Errorf("once recorded: %v: want all 10 under %s", got, want)
	}
	// A process the kernel could not record (its table full) counts after
	// the wait, under what /proc says.
	paths[8] = "/system.slice/full.service"
	src.fail(8, "x", bindInUse, 2)
	delete(src.snap.Meta, event.ProcKey{PID: 8, Start: 8000})
	if got := failureSeries(t, c); got["unknown///full.service"] != 0 {
		t.Fatalf("before the wait: %v: want pid 8 held", got)
	}
	clock.t = clock.t.Add(c.IdentityWait)
	if got := failureSeries(t, c); got["unknown///full.service"] != 2 {
		t.Errorf("after the wait: %v: want pid 8 counted as unknown in full.service", got)
	}
}

// A slot is a name in one identity: pods that come and go with the same
// program cycle the slots (each retires when idle) instead of adding series
// for ever, and past MaxComms slots the overflow carries no identity.
func TestPodChurnStaysBounded(t *testing.T) {
	src := newFakeSource()
	c, clock := newTestCollector(src)
	c.CommIdle = time.Minute
	paths := map[uint32]string{}
	withCgroups(c, paths)
	pid := uint32(1000)
	for wave := range 5 {
		for i := range MaxComms + 3 {
			pid++
			paths[pid] = podPath(fmt.Sprintf("00000000-0000-0000-0000-%012d", wave*1000+i), hexA)
			src.fail(pid, "java", bindInUse, 1)
		}
		got := failureSeries(t, c)
		if want := float64(3 * (wave + 1)); len(got) != MaxComms+1 || got["other///"] != want {
			t.Fatalf("wave %d: %d series (other %v), want %d pods plus other=%v", wave, len(got), got["other///"], MaxComms, want)
		}
		if len(c.comms) > MaxComms {
			t.Fatalf("wave %d: %d slots held", wave, len(c.comms))
		}
		// The wave's pods go away; their slots retire before the next.
		clock.t = clock.t.Add(2 * time.Minute)
		// serve deletes their kernel records once they exited.
		src.snap.Failures, src.snap.Meta, src.snap.Procs = map[event.ProcKey]map[event.Class]uint64{}, map[event.ProcKey]event.ProcMeta{}, map[event.ProcKey]event.ProcStats{}
	}
	if len(c.ids.byProc) > MaxComms+3 {
		t.Errorf("identity cache holds %d processes after the kernel forgot them", len(c.ids.byProc))
	}
}
