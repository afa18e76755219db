package pools

import (
	"cmp"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/portsleuth/portsleuth/internal/event"
	"github.com/portsleuth/portsleuth/internal/netns"
	"github.com/portsleuth/portsleuth/internal/procinfo"
)

// ports is a set of port numbers.
type ports [65536 / 64]uint64

func (p *ports) add(port uint16)      { p[port/64] |= 1 << (port % 64) }
func (p *ports) has(port uint16) bool { return p[port/64]&(1<<(port%64)) != 0 }
func (p *ports) union(q *ports) (u ports) {
	for i := range p {
		u[i] = p[i] | q[i]
	}
	return u
}

type poolKey struct {
	local, dest netip.Addr
	dport       uint16
}

type connPool struct {
	est, tw, other int
	notOwned       int // sockets whose port no bind() owner holds
	twMin, twMax   uint64
	owners         map[ownerKey]*holding // pid 0: sockets no process has open
}

// ownerKey is a process holding sockets: a live one by pid (start 0), a
// closer that has exited by pid and start time, so a pid reused since is
// another owner.
type ownerKey struct {
	pid   int
	start uint64
}

// holding is how one process holds ports of one pool.
type holding struct {
	sockets               int
	bindOwner             int // sockets with a bind()/listen()-owned port
	est, tw, other        int // its other sockets, by state
	bindConn, bindConnAny int // bind-owned sockets that connected (to the wildcard)
}

func (h *holding) add(state string, bindOwned, connected, wildcard bool) {
	h.sockets++
	switch {
	case bindOwned:
		h.bindOwner++
		if connected {
			h.bindConn++
			if wildcard {
				h.bindConnAny++
			}
		}
	case state == "ESTABLISHED":
		h.est++
	case state == "TIME_WAIT":
		h.tw++
	default:
		h.other++
	}
}

func holdingOf(m map[ownerKey]*holding, k ownerKey) *holding {
	h := m[k]
	if h == nil {
		h = &holding{}
		m[k] = h
	}
	return h
}

// Sock is one socket as a scan of a namespace's socket tables reads it.
type Sock struct {
	Ino       uint64 // socket inode; 0 for TIME_WAIT and request sockets
	TWJiffies uint64 // TIME_WAIT: jiffies until it goes
	Local     netip.Addr
	Remote    netip.Addr
	LPort     uint16
	RPort     uint16
	Proto     string // "tcp" or "udp"
	State     string // as event.StateName names it
	// BindOwner: the port's bind bucket has a bind()/listen() owner, so
	// connect() skips the port for every destination.
	BindOwner bool
	Options   []string // SO_REUSEADDR, SO_REUSEPORT
	// The process that closed a TIME_WAIT's connection, if the tracer saw it.
	CloserPID   int
	CloserStart uint64
	CloserComm  string
}

// Aggregate sums a namespace's sockets into its pools as they stream in.
type Aggregate struct {
	sys      netns.Sysctls
	reserved map[int]bool
	owners   procinfo.Inodes

	sockets   int
	bindOwned ports
	// Ports with any owner, per protocol and local address (the wildcard included).
	bound map[string]map[netip.Addr]*ports
	pools map[poolKey]*connPool
	procs map[int]int
	// Query, when set, collects the owners of one port.
	Query *HolderQuery
	// held: per protocol and local address, who holds the range's ports;
	// bindOwners: per process, its bind()-owned TCP sockets in the range.
	held       map[string]map[netip.Addr]map[ownerKey]*holding
	bindOwners map[ownerKey]*holding
	// closerComm names the exited processes that closed TIME_WAIT connections.
	closerComm map[ownerKey]string
	// closerLive remembers whether a closer is still the process its pid names.
	closerLive map[ownerKey]bool
}

// New starts an aggregate for a namespace with these sysctls and reserved
// ports; owners maps socket inodes to the pid that has them open.
func New(sys netns.Sysctls, reserved map[int]bool, owners procinfo.Inodes) *Aggregate {
	return &Aggregate{
		sys: sys, reserved: reserved, owners: owners,
		bound: map[string]map[netip.Addr]*ports{"tcp": {}, "udp": {}},
		pools: map[poolKey]*connPool{},
		procs: map[int]int{},
		held:  map[string]map[netip.Addr]map[ownerKey]*holding{"tcp": {}, "udp": {}},

		bindOwners: map[ownerKey]*holding{},
		closerComm: map[ownerKey]string{},
		closerLive: map[ownerKey]bool{},
	}
}

func (a *Aggregate) inRange(port uint16) bool {
	return int(port) >= a.sys.PortRange[0] && int(port) <= a.sys.PortRange[1]
}

// Add counts one socket.
func (a *Aggregate) Add(r *Sock) {
	a.sockets++
	pid := 0
	if r.Ino != 0 {
		pid = int(a.owners[r.Ino])
		if pid != 0 {
			a.procs[pid]++
		}
	}
	who := ownerKey{pid: pid}
	if r.Ino == 0 && r.CloserPID != 0 {
		// A TIME_WAIT is the closing process's doing.
		who = a.closer(r.CloserPID, r.CloserStart, r.CloserComm)
	}
	proto, local := r.Proto, r.Local
	if q := a.Query; q != nil && q.Proto == proto && q.Port == r.LPort && overlaps(q.Addr, local) && len(q.Found) < MaxHolders {
		h := event.Holder{
			State:   r.State,
			Local:   netip.AddrPortFrom(local, r.LPort),
			Options: r.Options,
			SockIno: r.Ino,
			PID:     uint32(pid),
		}
		if r.RPort != 0 {
			h.Remote = netip.AddrPortFrom(r.Remote, r.RPort)
		}
		if pid != 0 {
			h.Comm = a.owners.Comm(pid)
		}
		q.Found = append(q.Found, h)
	}
	set := a.bound[proto][local]
	if set == nil {
		set = &ports{}
		a.bound[proto][local] = set
	}
	set.add(r.LPort)
	state := r.State
	connected := r.RPort != 0 && state != "LISTEN"
	if a.inRange(r.LPort) {
		byAddr := a.held[proto][local]
		if byAddr == nil {
			byAddr = map[ownerKey]*holding{}
			a.held[proto][local] = byAddr
		}
		holdingOf(byAddr, who).add(state, r.BindOwner, connected, local.IsUnspecified())
		if proto == "tcp" && r.BindOwner {
			holdingOf(a.bindOwners, who).add(state, true, connected, local.IsUnspecified())
		}
	}
	if proto != "tcp" {
		return
	}
	if r.BindOwner {
		a.bindOwned.add(r.LPort)
	}
	// The connect() 4-tuple space: connected and closing sockets with a peer.
	if state == "LISTEN" || r.RPort == 0 || !a.inRange(r.LPort) {
		return
	}
	k := poolKey{local, r.Remote, r.RPort}
	p := a.pools[k]
	if p == nil {
		p = &connPool{owners: map[ownerKey]*holding{}, twMin: math.MaxUint64}
		a.pools[k] = p
	}
	switch state {
	case "ESTABLISHED":
		p.est++
	case "TIME_WAIT":
		p.tw++
		p.twMin = min(p.twMin, r.TWJiffies)
		p.twMax = max(p.twMax, r.TWJiffies)
	default:
		p.other++
	}
	if !r.BindOwner {
		p.notOwned++
	}
	// Every socket of the 4-tuple space by state; bind-owned ones noted apart.
	h := holdingOf(p.owners, who)
	h.add(state, false, true, false)
	if r.BindOwner {
		h.bindOwner++
	}
}

// bindPoolOwners lists who holds the ports bind(addr, 0) needs free: owners
// on addr and on its wildcard, or, for the wildcard, on every address of its family.
func (a *Aggregate) bindPoolOwners(proto string, addr netip.Addr, n int, comm func(ownerKey) string) []Owner {
	sum := map[ownerKey]*holding{}
	for local, byPID := range a.held[proto] {
		if local != addr && local != wildcardOf(addr) && !(addr.IsUnspecified() && local.Is4() == addr.Is4()) {
			continue
		}
		for k, h := range byPID {
			s := holdingOf(sum, k)
			s.sockets += h.sockets
			s.bindOwner += h.bindOwner
			s.est += h.est
			s.tw += h.tw
			s.other += h.other
			s.bindConn += h.bindConn
			s.bindConnAny += h.bindConnAny
		}
	}
	return ownersOf(sum, n, comm)
}

// connectPoolOwners lists who holds a connect pool: its own sockets, by
// process, and the bind()-owned ports the processes hold elsewhere in the
// range, which connect() skips for every destination.
func (a *Aggregate) connectPoolOwners(p *connPool, n int, comm func(ownerKey) string) []Owner {
	sum := map[ownerKey]*holding{}
	for k, h := range p.owners {
		c := *h
		c.bindOwner = 0 // only those outside this pool: set below
		sum[k] = &c
	}
	for k, h := range a.bindOwners {
		s := holdingOf(sum, k)
		// Its bind-owned ports outside this pool; those inside are in the states above.
		s.bindOwner = h.bindOwner
		if in := p.owners[k]; in != nil {
			s.bindOwner -= in.bindOwner
		}
		s.bindConn, s.bindConnAny = h.bindConn, h.bindConnAny
	}
	return ownersOf(sum, n, comm)
}

// ownersOf ranks holdings by ports held, most first, and keeps n.
func ownersOf(m map[ownerKey]*holding, n int, comm func(ownerKey) string) []Owner {
	owners := make([]Owner, 0, len(m))
	for k, h := range m {
		if h.sockets == 0 && h.bindOwner == 0 {
			continue
		}
		owners = append(owners, Owner{PID: k.pid, Start: k.start, Exited: k.start != 0, Sockets: h.sockets, BindOwner: h.bindOwner,
			Established: h.est, TimeWait: h.tw, Other: h.other,
			BindConnected: h.bindConn, BindConnectedAny: h.bindConnAny,
			Comm: comm(k)})
	}
	held := func(o Owner) int { return o.BindOwner + o.Established + o.TimeWait + o.Other }
	slices.SortFunc(owners, func(x, y Owner) int {
		return cmp.Or(cmp.Compare(held(y), held(x)), cmp.Compare(y.Sockets, x.Sockets), cmp.Compare(x.PID, y.PID), cmp.Compare(x.Start, y.Start))
	})
	if len(owners) > n {
		owners = owners[:n]
	}
	return owners
}

// closer is the owner a TIME_WAIT is counted for: the live process its pid
// names if that is still the closer, else the exited closer itself.
func (a *Aggregate) closer(pid int, start uint64, comm string) ownerKey {
	k := ownerKey{pid, start}
	live, seen := a.closerLive[k]
	if !seen {
		st, err := procinfo.StartTime(uint32(pid))
		live = err == nil && procinfo.SameStart(start, st)
		a.closerLive[k] = live
	}
	if live {
		return ownerKey{pid: pid}
	}
	a.closerComm[k] = comm
	return k
}

// overlaps says whether an owner on b takes the port from a bind() to a:
// equal addresses, or a wildcard on either side (of either family: a [::]
// socket without IPV6_V6ONLY covers IPv4 too).
func overlaps(a, b netip.Addr) bool {
	return a == b || a.IsUnspecified() || b.IsUnspecified()
}

func wildcardOf(addr netip.Addr) netip.Addr {
	if addr.Is4() {
		return netip.IPv4Unspecified()
	}
	return netip.IPv6Unspecified()
}

func orEmpty(p *ports) *ports {
	if p == nil {
		return &ports{}
	}
	return p
}

// usable counts the range's ports that are neither reserved nor in set.
func (a *Aggregate) usable(set *ports) int {
	n := 0
	for port := a.sys.PortRange[0]; port <= a.sys.PortRange[1]; port++ {
		if !a.reserved[port] && (set == nil || !set.has(uint16(port))) {
			n++
		}
	}
	return n
}

func percent(used, total int) float64 {
	if total <= 0 {
		return 100
	}
	return math.Round(1000*float64(used)/float64(total)) / 10
}

// Result is the namespace's pools, topN owners each at most; hz turns
// TIME_WAIT jiffies into seconds (0: unknown).
func (a *Aggregate) Result(topN int, hz float64) Namespace {
	ns := Namespace{
		PortRange:       a.sys.PortRange,
		Reserved:        a.sys.Reserved,
		TCPTwReuse:      a.sys.TCPTwReuse,
		AutobindReuse:   a.sys.AutobindReuse,
		TCPMaxTWBuckets: a.sys.MaxTWBuckets,
		Sockets:         a.sockets,
		BindPools:       []BindPool{},
		ConnectPools:    []ConnectPool{},
	}
	capacity := a.usable(nil)
	ns.BindOwnedPorts = capacity - a.usable(&a.bindOwned)
	comm := func(k ownerKey) string {
		if c, ok := a.closerComm[k]; ok {
			return c
		}
		if k.pid == 0 {
			return ""
		}
		return a.owners.Comm(k.pid)
	}

	for _, proto := range []string{"tcp", "udp"} {
		byAddr := a.bound[proto]
		// A wildcard owner takes its port on every address of its family, and
		// a wildcard bind needs the port free on all of them.
		everyAddr := map[netip.Addr]*ports{}
		listed := map[netip.Addr]bool{}
		for addr, set := range byAddr {
			w := wildcardOf(addr)
			u := set.union(orEmpty(everyAddr[w]))
			everyAddr[w] = &u
			listed[addr], listed[w] = true, true
		}
		addrs := make([]netip.Addr, 0, len(listed))
		for addr := range listed {
			addrs = append(addrs, addr)
		}
		slices.SortFunc(addrs, func(x, y netip.Addr) int { return x.Compare(y) })
		for _, addr := range addrs {
			set := everyAddr[addr]
			if !addr.IsUnspecified() {
				u := byAddr[addr].union(orEmpty(byAddr[wildcardOf(addr)]))
				set = &u
			}
			free := a.usable(set)
			ns.BindPools = append(ns.BindPools, BindPool{Proto: proto, Local: addr.String(),
				Used: capacity - free, Free: free, PercentUsed: percent(capacity-free, capacity),
				Owners: a.bindPoolOwners(proto, addr, topN, comm)})
		}
	}

	for k, p := range a.pools {
		free := max(0, capacity-ns.BindOwnedPorts-p.notOwned)
		inPool := p.est + p.tw + p.other - p.notOwned // bind-owned ports in this 4-tuple space
		cp := ConnectPool{
			Local: k.local.String(), Dest: netip.AddrPortFrom(k.dest, k.dport).String(),
			Established: p.est, TimeWait: p.tw, Other: p.other, Free: free, Size: capacity,
			BindOwned:   max(0, ns.BindOwnedPorts-inPool),
			PercentUsed: percent(capacity-free, capacity),
			Owners:      a.connectPoolOwners(p, topN, comm),
		}
		if p.tw > 0 && hz > 0 {
			cp.TimeWaitLeft = [2]float64{math.Round(10*float64(p.twMin)/hz) / 10, math.Round(10*float64(p.twMax)/hz) / 10}
		}
		ns.ConnectPools = append(ns.ConnectPools, cp)
	}
	slices.SortFunc(ns.ConnectPools, func(x, y ConnectPool) int {
		return cmp.Or(cmp.Compare(y.PercentUsed, x.PercentUsed), strings.Compare(x.Local+x.Dest, y.Local+y.Dest))
	})
	ns.Top = top(a.procs, topN, func(pid int) string { return comm(ownerKey{pid: pid}) })
	ns.Verdict = verdict(ns)
	return ns
}

// verdict names the fullest pool in one line.
func verdict(ns Namespace) string {
	best, what := -1.0, ""
	for _, p := range ns.ConnectPools {
		if p.PercentUsed > best {
			best = p.PercentUsed
			// Ports that bind()/listen() owners hold are named apart: they are
			// gone for every destination, and a wider range would not fix them.
			held := ""
			if p.BindOwned > 0 {
				held = fmt.Sprintf("%s held by bind()/listen() owners for every destination, ", thousands(p.BindOwned))
			}
			what = fmt.Sprintf("connect pool to %s from %s is %.0f%% full: %s TIME_WAIT, %s established, %s%d free",
				p.Dest, p.Local, p.PercentUsed, thousands(p.TimeWait), thousands(p.Established), held, p.Free)
		}
	}
	for _, p := range ns.BindPools {
		if p.PercentUsed > best {
			best = p.PercentUsed
			what = fmt.Sprintf("bind(%s:0) pool (%s) is %.0f%% used: %s of %s ports have an owner",
				p.Local, p.Proto, p.PercentUsed, thousands(p.Used), thousands(p.Used+p.Free))
		}
	}
	if what == "" {
		return "no sockets"
	}
	if best < 50 {
		return "no pool is under pressure; fullest: " + what
	}
	return what
}

func thousands(n int) string {
	s := strconv.Itoa(n)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}
