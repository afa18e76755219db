package metrics

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/portsleuth/portsleuth/internal/pools"
)

// timeWaitNS is a 64-port namespace whose connect pool to 127.0.0.1:8080 is
// full of TIME_WAIT, plus a nearly empty UDP bind pool.
func timeWaitNS(netns uint64) pools.Namespace {
	return pools.Namespace{
		Netns: netns,
		BindPools: []pools.BindPool{
			{Proto: "tcp", Local: "0.0.0.0", Used: 64, Free: 0, PercentUsed: 100},
			{Proto: "tcp", Local: "127.0.0.1", Used: 64, Free: 0, PercentUsed: 100},
			{Proto: "udp", Local: "0.0.0.0", Used: 1, Free: 63, PercentUsed: 1.6,
				Owners: []pools.Owner{{PID: 42, Comm: "dns", Sockets: 1, Other: 1}}},
		},
		ConnectPools: []pools.ConnectPool{
			{Local: "127.0.0.1", Dest: "127.0.0.1:8080", TimeWait: 60, Established: 4, Free: 0, Size: 64, PercentUsed: 100,
				Owners: []pools.Owner{{PID: 7, Comm: "client", Sockets: 64, TimeWait: 60, Established: 4}}},
			{Local: "::1", Dest: "[::1]:8080", TimeWait: 5, Free: 59, Size: 64, PercentUsed: 7.8,
				Owners: []pools.Owner{{PID: 0, Sockets: 5, TimeWait: 5}}},
		},
	}
}

func find(ps []Pool, kind, proto, local, dest string) *Pool {
	for i := range ps {
		if p := &ps[i]; p.Kind == kind && p.Proto == proto && p.Local == local && p.Dest == dest {
			return p
		}
	}
	return nil
}

func TestSelectPoolsValues(t *testing.T) {
	sc := SelectPools([]pools.Namespace{timeWaitNS(1)}, 10)
	ps := sc.Pools
	if len(ps) != 5 || sc.Dropped != 0 || sc.Exported != 1 || sc.DroppedNS != 0 {
		t.Fatalf("got %+v; want 5 pools, none dropped, one namespace", sc)
	}
	c := find(ps, "connect", "tcp", "127.0.0.1", "127.0.0.1:8080")
	if c == nil || c.Used != 64 || c.Free != 0 || c.Size != 64 || c.TimeWait != 60 ||
		c.OwnerComm != "client" || c.OwnerPorts != 64 || c.OwnerPID != 7 {
		t.Errorf("connect pool: %+v", c)
	}
	// A bind pool's TIME_WAIT: those of its address; the wildcard's: every
	// address of its family (not ::1's).
	if b := find(ps, "bind", "tcp", "127.0.0.1", ""); b == nil || b.TimeWait != 60 || b.Size != 64 {
		t.Errorf("bind 127.0.0.1: %+v", b)
	}
	if b := find(ps, "bind", "tcp", "0.0.0.0", ""); b == nil || b.TimeWait != 60 {
		t.Errorf("bind 0.0.0.0: %+v", b)
	}
	if b := find(ps, "bind", "udp", "0.0.0.0", ""); b == nil || b.TimeWait != 0 || b.OwnerComm != "dns" || b.OwnerPorts != 1 {
		t.Errorf("bind udp: %+v", b)
	}
	if v6 := find(ps, "connect", "tcp", "::1", "[::1]:8080"); v6 == nil || v6.OwnerComm != NoProcessOwner || v6.OwnerPID != 0 || v6.Used != 5 {
		t.Errorf("a pool held by sockets of no process: %+v", v6)
	}
	// Fullest first.
	if ps[0].Used != 64 || ps[len(ps)-1].Local != "0.0.0.0" || ps[len(ps)-1].Proto != "udp" {
		t.Errorf("order: %+v", ps)
	}
}

// The series bound: topN pools per namespace, MaxPoolNamespaces namespaces,
// the fullest of each; the rest counted as dropped.
func TestSelectPoolsBound(t *testing.T) {
	var nss []pools.Namespace
	for i := range MaxPoolNamespaces + 6 {
		ns := timeWaitNS(uint64(1000 + i))
		if i%2 == 1 {
			// Odd namespaces are calm: nothing above 10%.
			ns.BindPools = ns.BindPools[2:]
			ns.ConnectPools = ns.ConnectPools[1:]
		}
		nss = append(nss, ns)
	}
	sc := SelectPools(nss, 1)
	ps, dropped := sc.Pools, sc.Dropped
	if len(ps) != MaxPoolNamespaces || sc.Exported != MaxPoolNamespaces || sc.DroppedNS != 6 {
		t.Fatalf("%d pools exported, namespaces %d exported, %d dropped; want %d (one per namespace), %d, 6",
			len(ps), sc.Exported, sc.DroppedNS, MaxPoolNamespaces, MaxPoolNamespaces)
	}
	total := 0
	for _, ns := range nss {
		total += len(ns.BindPools) + len(ns.ConnectPools)
	}
	if dropped != total-len(ps) {
		t.Errorf("dropped %d, want %d", dropped, total-len(ps))
	}
	perNS := map[uint64]int{}
	for _, p := range ps {
		perNS[p.Netns]++
		if perNS[p.Netns] > 1 {
			t.Errorf("netns %d exported more than --pool-top 1", p.Netns)
		}
	}
	// Every full namespace made it: the fullest come first.
	for i := 0; i < len(nss); i += 2 {
		if perNS[nss[i].Netns] != 1 {
			t.Errorf("full netns %d was dropped for a calm one", nss[i].Netns)
		}
	}
}

func gatherPools(t *testing.T, c *PoolCollector) map[string][]string {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(c); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gathering: %v", err)
	}
	out := map[string][]string{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var l []string
			for _, lp := range m.GetLabel() {
				l = append(l, lp.GetName()+"="+lp.GetValue())
			}
			v := m.GetGauge().GetValue() + m.GetCounter().GetValue()
			out[mf.GetName()] = append(out[mf.GetName()], fmt.Sprintf("%s %v", strings.Join(l, ","), v))
		}
		slices.Sort(out[mf.GetName()])
	}
	return out
}

// A pool that leaves the exported set stops being exported at the next scan.
func TestPoolCollectorExportsLastScan(t *testing.T) {
	c := NewPoolCollector()
	sc := SelectPools([]pools.Namespace{timeWaitNS(9)}, 3)
	owned := find(sc.Pools, "connect", "tcp", "127.0.0.1", "127.0.0.1:8080")
	owned.OwnerContainer, owned.OwnerPodUID, owned.OwnerUnit = hexA, "5c4b3a29-1807-4f6e-8d7c-6b5a49382716", "app.service"
	sc.Skipped, sc.Took = 1, 250*time.Millisecond
	c.Publish(sc)
	got := gatherPools(t, c)
	if len(got["portsleuth_port_pool_used"]) != 3 || len(got["portsleuth_port_pool_time_wait"]) != 3 {
		t.Fatalf("first scan: %v", got)
	}
	owner := got["portsleuth_port_pool_owner_info"]
	want := "dest=127.0.0.1:8080,kind=connect,local=127.0.0.1,netns=9,owner_comm=client,owner_container=" + hexA + ",owner_pod_uid=5c4b3a29-1807-4f6e-8d7c-6b5a49382716,owner_unit=app.service,proto=tcp 64"
	if !slices.Contains(owner, want) {
		t.Errorf("owner_info %v lacks %q", owner, want)
	}
	if d := got["portsleuth_pool_scan_duration_seconds"]; len(d) != 1 || d[0] != " 0.25" {
		t.Errorf("duration %v", d)
	}
	if d := got["portsleuth_pool_scan_pools_dropped_total"]; len(d) != 1 || d[0] != " 2" {
		t.Errorf("dropped %v", d)
	}
	if n := got["portsleuth_pool_scan_namespaces"]; !slices.Equal(n, []string{"result=dropped 0", "result=exported 1", "result=skipped 1"}) {
		t.Errorf("namespaces %v", n)
	}

	calm := timeWaitNS(9)
	calm.BindPools, calm.ConnectPools = calm.BindPools[2:], nil
	c.Publish(SelectPools([]pools.Namespace{calm}, 3))
	got = gatherPools(t, c)
	if u := got["portsleuth_port_pool_used"]; len(u) != 1 || !strings.Contains(u[0], "proto=udp") {
		t.Errorf("after the second scan: used %v, want only the udp pool", u)
	}
	if o := got["portsleuth_port_pool_owner_info"]; len(o) != 1 || !strings.Contains(o[0], "owner_comm=dns") {
		t.Errorf("after the second scan: owners %v, want only dns's", o)
	}

	// A scan that measured nothing leaves no stale pool behind.
	c.Failed(3, time.Second)
	got = gatherPools(t, c)
	if u := got["portsleuth_port_pool_used"]; len(u) != 0 {
		t.Errorf("after a failed scan: used %v, want none", u)
	}
	if s := got["portsleuth_pool_scans_total"]; !slices.Equal(s, []string{"result=error 1", "result=ok 2"}) {
		t.Errorf("scans %v", s)
	}
}

func TestNames(t *testing.T) {
	names := Names()
	if !slices.IsSorted(names) {
		t.Errorf("not sorted: %v", names)
	}
	for _, want := range []string{
		"portsleuth_failures_total", "portsleuth_calls_total", "portsleuth_lost_events_total",
		"portsleuth_connect_candidates_blocked_total", "portsleuth_bpf_program_run_seconds_total",
		"portsleuth_bpf_program_runs_total", "portsleuth_untracked_calls_total", "portsleuth_backend_info",
		"portsleuth_read_errors_total", "portsleuth_enrichment_dropped_total",
		"portsleuth_port_pool_used", "portsleuth_port_pool_free", "portsleuth_port_pool_size",
		"portsleuth_port_pool_time_wait", "portsleuth_port_pool_owner_info",
		"portsleuth_pool_scan_duration_seconds", "portsleuth_pool_scans_total", "portsleuth_pool_scan_pools_dropped_total",
		"portsleuth_pool_scan_namespaces",
		"process_cpu_seconds_total", "process_resident_memory_bytes", "go_goroutines",
	} {
		if _, ok := slices.BinarySearch(names, want); !ok {
			t.Errorf("Names() lacks %s", want)
		}
	}
	if len(slices.Compact(slices.Clone(names))) != len(names) {
		t.Errorf("duplicates in %v", names)
	}
}
