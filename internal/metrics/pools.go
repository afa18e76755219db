package metrics

import (
	"cmp"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/portsleuth/portsleuth/internal/pools"
	"github.com/portsleuth/portsleuth/internal/term"
)

// MaxPoolNamespaces bounds the namespaces whose pools are exported: the
// fullest first. The pool gauges thus have at most MaxPoolNamespaces x
// --pool-top series each.
const MaxPoolNamespaces = 64

// NoProcessOwner is the owner_comm of ports held by sockets no process has
// open.
const NoProcessOwner = "(no process)"

// Pool is one exported pool: its pressure and its top owner.
type Pool struct {
	Netns uint64
	Kind  string // "bind" or "connect"
	Proto string // "tcp" or "udp"
	Local string
	Dest  string // "" for a bind pool
	Used  int
	Free  int
	Size  int // usable ports: the range less the reserved ones
	// TimeWait counts the TIME_WAIT sockets in the pool.
	TimeWait int
	// Owner is the top owner; OwnerPorts 0 when the pool has none.
	OwnerComm string
	// OwnerContainer, OwnerPodUID and OwnerUnit name the owner's cgroup.
	OwnerContainer string
	OwnerPodUID    string
	OwnerUnit      string
	OwnerPorts     int
	// OwnerPID is the owner's pid (0: none, or sockets no process has open,
	// or a closer that has exited); not exported, it finds OwnerContainer.
	OwnerPID int
}

// fraction is how full the pool is, 0 to 1; a pool with no usable port is
// full.
func (p *Pool) fraction() float64 {
	if p.Size <= 0 {
		return 1
	}
	return float64(p.Used) / float64(p.Size)
}

// PoolScan is what one scan of every namespace gave.
type PoolScan struct {
	Pools []Pool
	// Dropped counts the pools measured but not exported.
	Dropped int
	// Namespaces counts the namespaces by fate: exported (some of their pools
	// are), dropped (beyond the MaxPoolNamespaces fullest), skipped (could not
	// be read: the reason is logged).
	Exported, DroppedNS, Skipped int
	Took                         time.Duration
}

// SelectPools picks what serve exports of a scan: the topN fullest pools of
// each of the MaxPoolNamespaces fullest namespaces. The caller sets Skipped
// and Took.
func SelectPools(nss []pools.Namespace, topN int) PoolScan {
	type nsPools struct {
		pools   []Pool
		fullest float64
		netns   uint64
	}
	all := make([]nsPools, 0, len(nss))
	for i := range nss {
		ps := poolsOf(&nss[i])
		slices.SortFunc(ps, fullestFirst)
		n := nsPools{pools: ps, netns: nss[i].Netns}
		if len(ps) > 0 {
			n.fullest = ps[0].fraction()
		}
		all = append(all, n)
	}
	slices.SortFunc(all, func(a, b nsPools) int {
		return cmp.Or(cmp.Compare(b.fullest, a.fullest), cmp.Compare(a.netns, b.netns))
	})
	var s PoolScan
	for i, n := range all {
		keep := min(len(n.pools), topN)
		if i >= MaxPoolNamespaces {
			keep = 0
			s.DroppedNS++
		} else {
			s.Exported++
		}
		s.Pools = append(s.Pools, n.pools[:keep]...)
		s.Dropped += len(n.pools) - keep
	}
	return s
}

func fullestFirst(a, b Pool) int {
	return cmp.Or(cmp.Compare(b.fraction(), a.fraction()), cmp.Compare(b.Used, a.Used),
		cmp.Compare(a.Kind, b.Kind), cmp.Compare(a.Proto, b.Proto), cmp.Compare(a.Local, b.Local), cmp.Compare(a.Dest, b.Dest))
}

// poolsOf lists a namespace's bind and connect pools.
func poolsOf(ns *pools.Namespace) []Pool {
	out := make([]Pool, 0, len(ns.BindPools)+len(ns.ConnectPools))
	for _, b := range ns.BindPools {
		p := Pool{Netns: ns.Netns, Kind: "bind", Proto: b.Proto, Local: b.Local, Used: b.Used, Free: b.Free,
			Size: b.Used + b.Free, TimeWait: bindTimeWait(ns, b)}
		p.setOwner(b.Owners)
		out = append(out, p)
	}
	for _, c := range ns.ConnectPools {
		p := Pool{Netns: ns.Netns, Kind: "connect", Proto: "tcp", Local: c.Local, Dest: c.Dest,
			Used: c.Size - c.Free, Free: c.Free, Size: c.Size, TimeWait: c.TimeWait}
		p.setOwner(c.Owners)
		out = append(out, p)
	}
	return out
}

// bindTimeWait counts the TIME_WAIT sockets holding ports of a bind pool:
// those of the connect pools from its address (from every address of its
// family, for the wildcard). Only TCP has them; like the pool, only ports of
// the range count (connect pools hold only those).
func bindTimeWait(ns *pools.Namespace, b pools.BindPool) int {
	addr, err := netip.ParseAddr(b.Local)
	if b.Proto != "tcp" || err != nil {
		return 0
	}
	n := 0
	for _, c := range ns.ConnectPools {
		local, err := netip.ParseAddr(c.Local)
		if err == nil && (local == addr || (addr.IsUnspecified() && local.Is4() == addr.Is4())) {
			n += c.TimeWait
		}
	}
	return n
}

// setOwner takes the first of owners (ranked most ports first).
func (p *Pool) setOwner(owners []pools.Owner) {
	if len(owners) == 0 {
		return
	}
	o := owners[0]
	held := o.BindOwner + o.Established + o.TimeWait + o.Other
	if held == 0 {
		return
	}
	p.OwnerPorts = held
	p.OwnerComm = term.Escape(o.Comm)
	switch {
	case o.PID == 0:
		p.OwnerComm = NoProcessOwner
	case !o.Exited:
		p.OwnerPID = o.PID
	}
}

// PoolCollector exports the last pool scan: series of pools no longer among
// the exported ones vanish with the next scan.
type PoolCollector struct {
	mu       sync.Mutex
	pools    []Pool
	duration float64
	scans    map[string]float64 // by result: ok, error
	dropped  float64
	ns       map[string]float64 // namespaces of the last scan, by fate

	used, free, size, timeWait, owner    *prometheus.Desc
	durationDesc, scansDesc, droppedDesc *prometheus.Desc
	nsDesc                               *prometheus.Desc
}

// NewPoolCollector exports nothing until the first scan is published.
func NewPoolCollector() *PoolCollector {
	labels := []string{"netns", "kind", "proto", "local", "dest"}
	bound := " At most 64 namespaces (the fullest) x --pool-top pools (the fullest of each)."
	return &PoolCollector{
		scans: map[string]float64{"ok": 0, "error": 0},
		ns:    map[string]float64{"exported": 0, "dropped": 0, "skipped": 0},
		used: prometheus.NewDesc("portsleuth_port_pool_used",
			"Ports of a port pool that are taken, by network namespace, kind (bind: bind(addr, 0); connect: toward dest from local) and protocol; dest is empty for bind pools."+bound, labels, nil),
		free: prometheus.NewDesc("portsleuth_port_pool_free",
			"Ports of a port pool still free."+bound, labels, nil),
		size: prometheus.NewDesc("portsleuth_port_pool_size",
			"Usable ports of a port pool: ip_local_port_range less ip_local_reserved_ports. used/size is how full it is."+bound, labels, nil),
		timeWait: prometheus.NewDesc("portsleuth_port_pool_time_wait",
			"TIME_WAIT sockets in a port pool."+bound, labels, nil),
		owner: prometheus.NewDesc("portsleuth_port_pool_owner_info",
			"Ports of a pool held by its top owner: process name, and container id, pod UID and systemd unit (from its cgroup; empty when it has none). \"(no process)\": sockets no process has open."+bound,
			append(slices.Clone(labels), "owner_comm", "owner_container", "owner_pod_uid", "owner_unit"), nil),
		durationDesc: prometheus.NewDesc("portsleuth_pool_scan_duration_seconds",
			"How long the last pool scan of every network namespace took.", nil, nil),
		scansDesc: prometheus.NewDesc("portsleuth_pool_scans_total",
			"Pool scans, by result: ok, or error (the socket iterators did not load, or no namespace could be read).", []string{"result"}, nil),
		droppedDesc: prometheus.NewDesc("portsleuth_pool_scan_pools_dropped_total",
			"Pools measured but not exported: beyond --pool-top in their namespace, or in a namespace beyond the 64 fullest.", nil, nil),
		nsDesc: prometheus.NewDesc("portsleuth_pool_scan_namespaces",
			"Network namespaces of the last pool scan, by result: exported, dropped (beyond the 64 fullest), skipped (could not be read, e.g. without CAP_SYS_PTRACE; serve logs why).",
			[]string{"result"}, nil),
	}
}

// Publish replaces the exported pools with one scan's.
func (c *PoolCollector) Publish(s PoolScan) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.pools = s.Pools
	c.dropped += float64(s.Dropped)
	c.duration = s.Took.Seconds()
	c.ns["exported"], c.ns["dropped"], c.ns["skipped"] = float64(s.Exported), float64(s.DroppedNS), float64(s.Skipped)
	c.scans["ok"]++
}

// Failed counts a scan that could measure nothing; the last scan's pools go
// too, since they would be stale. skipped is how many namespaces it could
// not read.
func (c *PoolCollector) Failed(skipped int, took time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.pools = nil
	c.duration = took.Seconds()
	c.ns["exported"], c.ns["dropped"], c.ns["skipped"] = 0, 0, float64(skipped)
	c.scans["error"]++
}

// Describe sends every descriptor.
func (c *PoolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.used, c.free, c.size, c.timeWait, c.owner, c.durationDesc, c.scansDesc, c.droppedDesc, c.nsDesc} {
		ch <- d
	}
}

// Collect sends the last scan.
func (c *PoolCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range c.pools {
		l := []string{strconv.FormatUint(p.Netns, 10), p.Kind, p.Proto, p.Local, p.Dest}
		ch <- prometheus.MustNewConstMetric(c.used, prometheus.GaugeValue, float64(p.Used), l...)
		ch <- prometheus.MustNewConstMetric(c.free, prometheus.GaugeValue, float64(p.Free), l...)
		ch <- prometheus.MustNewConstMetric(c.size, prometheus.GaugeValue, float64(p.Size), l...)
		ch <- prometheus.MustNewConstMetric(c.timeWait, prometheus.GaugeValue, float64(p.TimeWait), l...)
		if p.OwnerPorts > 0 {
			ch <- prometheus.MustNewConstMetric(c.owner, prometheus.GaugeValue, float64(p.OwnerPorts),
				append(l, p.OwnerComm, p.OwnerContainer, p.OwnerPodUID, p.OwnerUnit)...)
		}
	}
	ch <- prometheus.MustNewConstMetric(c.durationDesc, prometheus.GaugeValue, c.duration)
	for result, n := range c.scans {
		ch <- prometheus.MustNewConstMetric(c.scansDesc, prometheus.CounterValue, n, result)
	}
	ch <- prometheus.MustNewConstMetric(c.droppedDesc, prometheus.CounterValue, c.dropped)
	for result, n := range c.ns {
		ch <- prometheus.MustNewConstMetric(c.nsDesc, prometheus.GaugeValue, n, result)
	}
}
