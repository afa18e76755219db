// Package attrib attributes a failed bind()/connect() to a call pattern and
// explains it: the evidence behind the pattern and the fix that is true on
// current kernels (facts in shared/KERNEL.md, sections 1, 2 and 6).
package attrib

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/portsleuth/portsleuth/internal/event"
	"github.com/portsleuth/portsleuth/internal/netns"
	"github.com/portsleuth/portsleuth/internal/term"
)

// Pattern is a stable id, used in JSON and in the docs.
type Pattern string

const (
	BindAnyBeforeConnect  Pattern = "bind-any-before-connect"
	BindIPBeforeConnect   Pattern = "bind-ip-before-connect"
	BindPortExhaustion    Pattern = "bind-port-exhaustion"
	PortInUse             Pattern = "port-in-use"
	ConnectPortExhaustion Pattern = "connect-port-exhaustion"
	ConnectTupleConflict  Pattern = "connect-tuple-conflict"
	AddressNotLocal       Pattern = "address-not-local"
	PrivilegedPort        Pattern = "privileged-port"
	Denied                Pattern = "denied"
	Other                 Pattern = "other"
)

// Patterns lists every pattern, in the order the docs present them.
var Patterns = []Pattern{
	BindAnyBeforeConnect, BindIPBeforeConnect, BindPortExhaustion, PortInUse,
	ConnectPortExhaustion, ConnectTupleConflict, AddressNotLocal, PrivilegedPort, Denied, Other,
}

// Classify names the pattern of a failure of class c by a process whose
// counters are st. Only port-0 bind failures depend on the process: whether
// its port-0 binds go on to connect() (the bind-before-connect trap) or not.
func Classify(c event.Class, st event.ProcStats) Pattern {
	switch c.Op {
	case event.Bind:
		switch c.Errno {
		case unix.EADDRINUSE:
			switch {
			case !c.Port0:
				return PortInUse
			case st.Port0BindConnects == 0:
				return BindPortExhaustion
			case c.AnyAddr:
				return BindAnyBeforeConnect
			default:
				return BindIPBeforeConnect
			}
		case unix.EADDRNOTAVAIL:
			return AddressNotLocal
		case unix.EACCES:
			return PrivilegedPort
		case unix.EPERM:
			return Denied
		}
	case event.Listen:
		// listen() on an unbound socket picks a port like bind(0) does.
		if c.Errno == unix.EADDRINUSE {
			if c.Port0 {
				return BindPortExhaustion
			}
			return PortInUse
		}
	case event.Connect:
		switch c.Errno {
		case unix.EADDRNOTAVAIL:
			if c.Port0 {
				return ConnectPortExhaustion
			}
			return ConnectTupleConflict
		case unix.EAGAIN: // UDP autobind found no port
			return ConnectPortExhaustion
		case unix.EPERM:
			return Denied
		}
	}
	return Other
}

// Pool is what a pressure snapshot measured, at the first failure, in the
// port pool the failing calls drew from: the advice names only causes it
// did not rule out.
type Pool struct {
	Kind  string // "bind" (the bind(addr, 0) pool) or "connect" (one destination's pool)
	Local string
	Dest  string // connect only
	// Size is the range's usable ports; BindOwned of them are held by
	// bind()/listen() owners (for every destination).
	Size, BindOwned                    int
	Established, TimeWait, Other, Free int
	// Holders name who held the pool, by process name, most ports first.
	Holders []PoolHolder
}

// PoolHolder is the processes of one name holding ports of a pool.
type PoolHolder struct {
	Comm  string
	PID   int // when one process holds them; 0 for several, or for none (Comm "")
	Procs int
	Ports int
}

// maxPoolHolders is how many names the evidence gives.
const maxPoolHolders = 4

// Finding is everything known about one pattern of one process.
type Finding struct {
	Pattern Pattern
	Count   uint64
	Classes map[event.Class]uint64
	Stats   event.ProcStats
	// Addrs are distinct requested (bind) or destination (connect) addresses
	// seen in events, Locals the bound local addresses of connects; both capped.
	Addrs, Locals []netip.AddrPort
	Options       []string // socket options seen on the failing sockets
	Sysctls       *netns.Sysctls
	// Holders (kernel layer) are sockets found holding the wanted port.
	Holders []event.Holder
	// Pool is the measured pool at the first failure; nil when none was taken.
	Pool *Pool
}

// DescribeHolder says who holds a port, e.g. "pid 42 (nginx): LISTEN 0.0.0.0:80 [SO_REUSEADDR]".
// The holder's name is escaped (term.Escape): this prose reaches terminals, in
// Evidence too; the holder's own JSON field keeps the name exact.
func DescribeHolder(h event.Holder) string {
	var b strings.Builder
	switch {
	case h.PID != 0 && h.Master != 0:
		fmt.Fprintf(&b, "pid %d (%s, a worker of pid %d): ", h.PID, term.Escape(h.Comm), h.Master)
	case h.PID != 0:
		fmt.Fprintf(&b, "pid %d (%s): ", h.PID, term.Escape(h.Comm))
	case h.State == "TIME_WAIT":
		b.WriteString("no process (TIME_WAIT): ")
	default:
		b.WriteString("a socket no process has open: ")
	}
	fmt.Fprintf(&b, "%s %s", h.State, h.Local)
	if h.Remote.IsValid() && h.Remote.Port() != 0 {
		fmt.Fprintf(&b, " -> %s", h.Remote)
	}
	if len(h.Options) > 0 {
		fmt.Fprintf(&b, " [%s]", strings.Join(h.Options, ","))
	}
	return b.String()
}

// SharingVerdict says whether socket options would have let a new socket
// share the port with this holder (TCP rules, shared/KERNEL.md section 1).
func SharingVerdict(h event.Holder) string {
	reuse := slices.Contains(h.Options, "SO_REUSEADDR")
	reuseport := slices.Contains(h.Options, "SO_REUSEPORT")
	switch {
	case h.State == "LISTEN" && reuseport:
		return "SO_REUSEPORT on the new socket too (same user) would share it; SO_REUSEADDR never shares with a listener"
	case h.State == "LISTEN":
		return "no option shares a port with a listener that lacks SO_REUSEPORT"
	case reuse:
		return "SO_REUSEADDR on the new socket would have shared it (the holder is not listening and set it)"
	case h.State == "TIME_WAIT":
		return "SO_REUSEADDR would not help: the TIME_WAIT's socket did not set it; it must be set on both"
	default:
		return "SO_REUSEADDR would not help: the holder did not set it; it must be set on both"
	}
}

// Evidence says, with exact counts, why the failures carry this pattern.
func (f *Finding) Evidence() string {
	var b strings.Builder
	st := f.Stats
	switch f.Pattern {
	case BindAnyBeforeConnect, BindIPBeforeConnect:
		fmt.Fprintf(&b, "%d of %d sockets this process bound to port 0 went on to connect(); %d %s failed EADDRINUSE",
			st.Port0BindConnects, st.Port0BindsOK, f.Count, f.calls("bind", f.Addrs))
		f.rangeNote(&b)
	case BindPortExhaustion:
		fmt.Fprintf(&b, "%d %s failed EADDRINUSE; none of the %d sockets this process bound to port 0 went on to connect()",
			f.Count, f.calls(f.bindOp(), f.Addrs), st.Port0BindsOK)
		f.rangeNote(&b)
	case PortInUse:
		fmt.Fprintf(&b, "%d %s failed EADDRINUSE: the port is held by another socket", f.Count, f.calls(f.bindOp(), f.Addrs))
		for _, h := range f.Holders {
			fmt.Fprintf(&b, "; held by %s: %s", DescribeHolder(h), SharingVerdict(h))
		}
		if f.Sysctls != nil {
			for _, a := range f.Addrs {
				if f.Sysctls.InRange(a.Port()) {
					fmt.Fprintf(&b, "; port %d lies inside ip_local_port_range %d-%d, so outgoing connections can take it",
						a.Port(), f.Sysctls.PortRange[0], f.Sysctls.PortRange[1])
					break
				}
			}
		}
	case ConnectPortExhaustion:
		errs := "EADDRNOTAVAIL"
		switch {
		case f.hasErrno(unix.EAGAIN) && f.hasErrno(unix.EADDRNOTAVAIL):
			errs = "EADDRNOTAVAIL or EAGAIN (UDP autobind)"
		case f.hasErrno(unix.EAGAIN):
			errs = "EAGAIN (UDP autobind)"
		}
		fmt.Fprintf(&b, "%d %s from sockets without a bound port failed %s; %d connect() calls of this process found a port",
			f.Count, f.calls("connect", f.Addrs), errs, st.ConnectsOK)
		f.rangeNote(&b)
		if s := f.Sysctls; s != nil && s.TCPTwReuse >= 0 {
			fmt.Fprintf(&b, "; tcp_tw_reuse=%d, tcp_timestamps=%d", s.TCPTwReuse, s.TCPTimestamps)
		}
		if st.ConnectTWBlocked+st.ConnectEstBlocked > 0 {
			fmt.Fprintf(&b, "; the kernel found %d candidate ports taken by TIME_WAIT and %d by live connections",
				st.ConnectTWBlocked, st.ConnectEstBlocked)
		}
	case ConnectTupleConflict:
		fmt.Fprintf(&b, "%d %s from sockets bound to a fixed local port (%s) failed EADDRNOTAVAIL: that 4-tuple already exists",
			f.Count, f.calls("connect", f.Addrs), joinAddrs(f.Locals))
	case AddressNotLocal:
		fmt.Fprintf(&b, "%d %s failed EADDRNOTAVAIL: the address is not configured in this network namespace", f.Count, f.calls("bind", f.Addrs))
		if s := f.Sysctls; s != nil && s.NonlocalBind >= 0 {
			fmt.Fprintf(&b, "; ip_nonlocal_bind=%d", s.NonlocalBind)
		}
	case PrivilegedPort:
		fmt.Fprintf(&b, "%d %s failed EACCES", f.Count, f.calls("bind", f.Addrs))
	case Denied:
		fmt.Fprintf(&b, "%d calls failed EPERM", f.Count)
	default:
		fmt.Fprintf(&b, "%d calls failed:", f.Count)
		byCall := map[string]uint64{}
		for c, n := range f.Classes {
			byCall[fmt.Sprintf("%s %s", c.Op, unix.ErrnoName(c.Errno))] += n
		}
		for _, k := range slices.Sorted(maps.Keys(byCall)) {
			fmt.Fprintf(&b, " %s x%d", k, byCall[k])
		}
	}
	f.poolNote(&b)
	if len(f.Options) > 0 {
		fmt.Fprintf(&b, "; options on the failing sockets: %s", strings.Join(f.Options, ", "))
	}
	return b.String()
}

// poolNote gives the pool measured at the first failure, each port counted
// as what holds it: bind()/listen() owners apart from the 4-tuple space.
func (f *Finding) poolNote(b *strings.Builder) {
	p := f.Pool
	if p == nil {
		return
	}
	defer f.holdersNote(b)
	var parts []string
	held := "held by bind()/listen() owners"
	switch p.Kind {
	case "connect":
		fmt.Fprintf(b, "; at the first failure the connect pool to %s from %s had", p.Dest, p.Local)
		held += " for every destination"
	case "bind":
		fmt.Fprintf(b, "; at the first failure the bind(%s:0) pool had", p.Local)
	default:
		return
	}
	parts = append(parts, fmt.Sprintf("%d established", p.Established), fmt.Sprintf("%d TIME_WAIT", p.TimeWait))
	if p.Other > 0 {
		parts = append(parts, fmt.Sprintf("%d in other states", p.Other))
	}
	if p.BindOwned > 0 {
		parts = append(parts, fmt.Sprintf("%d %s", p.BindOwned, held))
	}
	parts = append(parts, fmt.Sprintf("%d free", p.Free))
	fmt.Fprintf(b, " %s", strings.Join(parts, ", "))
	if p.Size > 0 {
		fmt.Fprintf(b, " of %d ports", p.Size)
	}
}

// bindOp names the calls behind a bind-side finding: bind, listen or both.
func (f *Finding) bindOp() string {
	var bind, listen bool
	for c := range f.Classes {
		bind = bind || c.Op == event.Bind
		listen = listen || c.Op == event.Listen
	}
	switch {
	case listen && bind:
		return "bind()/listen"
	case listen:
		return "listen"
	}
	return "bind"
}

func (f *Finding) hasErrno(e unix.Errno) bool {
	for c := range f.Classes {
		if c.Errno == e {
			return true
		}
	}
	return false
}

func (f *Finding) hasOption(name string) bool { return slices.Contains(f.Options, name) }

func (f *Finding) calls(op string, addrs []netip.AddrPort) string {
	word := op + "() calls"
	if f.Count == 1 {
		word = op + "() call"
	}
	if len(addrs) == 0 {
		return word
	}
	prep := "to"
	if op != "connect" {
		prep = "of"
	}
	return fmt.Sprintf("%s %s %s", word, prep, joinAddrs(addrs))
}

func (f *Finding) rangeNote(b *strings.Builder) {
	if s := f.Sysctls; s != nil {
		fmt.Fprintf(b, "; ip_local_port_range %d-%d gives %d ports", s.PortRange[0], s.PortRange[1], s.Ports())
		if s.Reserved > 0 {
			fmt.Fprintf(b, " after %d reserved", s.Reserved)
		}
	}
}

// MaxAddrs caps the addresses a finding lists.
const MaxAddrs = 8

func joinAddrs(addrs []netip.AddrPort) string {
	if len(addrs) == 0 {
		return "none recorded"
	}
	parts := make([]string, len(addrs))
	for i, a := range addrs {
		parts[i] = a.String()
	}
	s := strings.Join(parts, ", ")
	if len(addrs) >= MaxAddrs {
		s += ", ..."
	}
	return s
}

// Socket option names as decode.OptionNames spells them.
const (
	optNoPort    = "IP_BIND_ADDRESS_NO_PORT"
	optReuseAddr = "SO_REUSEADDR"
	optReusePort = "SO_REUSEPORT"
	optFreebind  = "IP_FREEBIND"
)

// Advice is the fix, as true on this kernel and namespace as the agent can
// tell: it names no cause the measurement ruled out and never asks for an
// option the failing sockets already set (it says so, and what is left).
func (f *Finding) Advice() string {
	switch f.Pattern {
	case BindAnyBeforeConnect, BindIPBeforeConnect:
		return f.bindBeforeConnectAdvice()
	case BindPortExhaustion:
		return f.bindExhaustionAdvice()
	case PortInUse:
		return f.portInUseAdvice()
	case ConnectPortExhaustion:
		return f.connectExhaustionAdvice()
	case ConnectTupleConflict:
		return f.tupleConflictAdvice()
	case AddressNotLocal:
		return f.addressNotLocalAdvice()
	case PrivilegedPort:
		return "Ports below net.ipv4.ip_unprivileged_port_start need CAP_NET_BIND_SERVICE: grant it, or use a higher port."
	case Denied:
		return "A cgroup BPF program or a security module refused the call: check the cgroup's sock_addr programs (bpftool cgroup tree) and the LSM policy."
	}
	return "Not a port-allocation failure portsleuth has a pattern for; see the errno."
}

func (f *Finding) bindBeforeConnectAdvice() string {
	a := "Don't bind() before connect(). "
	if f.hasOption(optNoPort) {
		// With the option in effect bind() reserves no port, so it was set
		// too late for the failing bind()s (or on other sockets of the pattern).
		a += "IP_BIND_ADDRESS_NO_PORT was seen on these sockets, yet their bind() still looked for a port: it only takes effect when set before bind(); set it first, and the port is then picked at connect() time from the pool of that destination (the 4-tuple). "
	} else {
		a += "If the source address must be chosen, set IP_BIND_ADDRESS_NO_PORT before bind(): the port is then picked at connect() time from the pool of that destination (the 4-tuple), instead of reserving a port that must be free for every destination. "
	}
	if f.hasOption(optReuseAddr) {
		a += "These sockets already set SO_REUSEADDR and still fail: since Linux 4.6 it does not relax bind() to port 0. "
	} else {
		a += "SO_REUSEADDR does not help: since Linux 4.6 it does not relax bind() to port 0. "
	}
	a += "net.ipv4.ip_autobind_reuse=1 only moves the failure to connect() (EADDRNOTAVAIL)"
	if s := f.Sysctls; s != nil && s.AutobindReuse == 1 {
		a += " and is already 1 here"
	}
	a += "; tcp_tw_recycle no longer exists (removed in 4.12)."
	if f.Pattern == BindIPBeforeConnect {
		a += " Each local address has its own port pool, so more source addresses only add range-sized pools; IP_BIND_ADDRESS_NO_PORT multiplies them by destinations."
	}
	return a
}

func (f *Finding) bindExhaustionAdvice() string {
	a := "Every port of the ephemeral range already has an owner on this address. Close idle sockets, let the kernel pick the port at connect() (don't bind"
	if !f.hasOption(optNoPort) {
		a += ", or set IP_BIND_ADDRESS_NO_PORT"
	}
	a += "), or widen net.ipv4.ip_local_port_range. "
	if f.hasOption(optReuseAddr) {
		a += "These sockets already set SO_REUSEADDR: it does not relax bind() to port 0 since Linux 4.6"
	} else {
		a += "SO_REUSEADDR does not relax bind() to port 0 since Linux 4.6"
	}
	a += "; ip_autobind_reuse=1 shares ports only with non-listening SO_REUSEADDR owners."
	if f.bindOp() != "bind" {
		a += " A listen() without bind() takes its port from the same range: bind the listener to an explicit port outside it."
	}
	return a
}

func (f *Finding) portInUseAdvice() string {
	a := ""
	if f.bindOp() != "bind" {
		a = "listen() re-checks the port: two sockets that shared it with SO_REUSEADDR cannot both listen"
		if !f.hasOption(optReusePort) {
			a += " (use SO_REUSEPORT for that)"
		}
		a += ". "
	}
	a += "Not exhaustion: another socket holds the port (find it with `ss -tanp 'sport = :PORT'`). "
	switch {
	case f.hasOption(optReuseAddr):
		a += "These sockets already set SO_REUSEADDR: it shares a port only with an owner that is not listening and set it too (an earlier run's TIME_WAIT included), so the holder is listening or lacks it. "
	case len(f.Holders) > 0 && !f.timeWaitHolder():
		// The holders were seen: none is an earlier run's TIME_WAIT.
		a += "The evidence names the holder and whether an option would share its port with it; otherwise stop it or use another port. "
	default:
		a += "If it is an earlier run's TIME_WAIT, set SO_REUSEADDR before bind(). "
	}
	if f.hasOption(optReusePort) {
		a += "These sockets already set SO_REUSEPORT: it shares only with owners that set it too, under the same user. "
	} else {
		a += "To serve one port from several sockets, set SO_REUSEPORT on all of them (same user). "
	}
	if f.outsideRange() {
		return strings.TrimSpace(a)
	}
	return a + "A service port inside ip_local_port_range can be taken as a source port by outgoing connections: move it out or add it to net.ipv4.ip_local_reserved_ports."
}

func (f *Finding) timeWaitHolder() bool {
	return slices.ContainsFunc(f.Holders, func(h event.Holder) bool { return h.State == "TIME_WAIT" })
}

// outsideRange says whether every wanted port is known to lie outside
// ip_local_port_range, where no outgoing connection takes it.
func (f *Finding) outsideRange() bool {
	if f.Sysctls == nil || len(f.Addrs) == 0 {
		return false
	}
	return !slices.ContainsFunc(f.Addrs, func(a netip.AddrPort) bool { return f.Sysctls.InRange(a.Port()) })
}

func (f *Finding) tupleConflictAdvice() string {
	a := "The socket was bound to a fixed local port and the 4-tuple to this destination is taken (a live connection, or TIME_WAIT without timestamps). "
	if f.hasOption(optNoPort) {
		return a + "These sockets already set IP_BIND_ADDRESS_NO_PORT, but it defers only a port-0 bind: don't fix source ports: bind port 0 (keeping the option), or don't bind at all."
	}
	return a + "Don't fix source ports: bind port 0 with IP_BIND_ADDRESS_NO_PORT, or don't bind at all."
}

func (f *Finding) addressNotLocalAdvice() string {
	a := "The address is not on any interface of this network namespace. Bind an address that is"
	nonlocal := f.Sysctls != nil && f.Sysctls.NonlocalBind == 1
	switch {
	case f.hasOption(optFreebind):
		return a + ". These sockets already set IP_FREEBIND and bind() still refused the address: it is not one a socket may bind here (check it, and the interface of an IPv6 link-local address)."
	case nonlocal:
		return a + ", or, for an address that arrives later (VIP failover, IPv6 still in DAD), set IP_FREEBIND on the socket: net.ipv4.ip_nonlocal_bind is already 1 here, and covers IPv4 only (IPv6 has net.ipv6.ip_nonlocal_bind)."
	}
	return a + ", or, for an address that arrives later (VIP failover, IPv6 still in DAD), set IP_FREEBIND on the socket or net.ipv4.ip_nonlocal_bind=1."
}

// connectMeasure is what is known of the pool a failing connect() drew from.
type connectMeasure struct {
	known bool // a pool snapshot or the kernel's candidate counters say something
	// tw and live count what held the 4-tuple space, from the kernel's
	// counters when it has them (taken at the failures), else the snapshot.
	tw, live uint64
	twSeen   bool   // any measurement saw TIME_WAIT
	what     string // the numbers behind tw and live, as the reader sees them
	// bindOwned of size ports are skipped for every destination (snapshot only).
	bindOwned, size int
}

func (f *Finding) connectMeasure() connectMeasure {
	var m connectMeasure
	p := f.Pool
	if p != nil && p.Kind != "connect" {
		p = nil
	}
	if p != nil {
		m.bindOwned, m.size = p.BindOwned, p.Size
		m.twSeen = p.TimeWait > 0
	}
	st := f.Stats
	switch {
	case st.ConnectTWBlocked+st.ConnectEstBlocked > 0:
		m.tw, m.live = st.ConnectTWBlocked, st.ConnectEstBlocked
		m.what = fmt.Sprintf("the kernel found %d candidate ports taken by live connections and %d by TIME_WAIT", m.live, m.tw)
	case p != nil:
		m.tw, m.live = uint64(p.TimeWait), uint64(p.Established+p.Other)
		m.what = fmt.Sprintf("%d established, %d TIME_WAIT", p.Established, p.TimeWait)
		if p.Other > 0 {
			m.what += fmt.Sprintf(", %d in other states", p.Other)
		}
	}
	m.twSeen = m.twSeen || m.tw > 0
	m.known = m.tw+m.live > 0 || m.bindOwned > 0
	return m
}

func (f *Finding) connectExhaustionAdvice() string {
	if f.udpOnly() {
		return "UDP autobind found no free port: UDP connect() checks no 4-tuple, so every port of the range already has a UDP owner on this address. Reuse sockets (one socket for many sendto()), close idle ones, use more source addresses, or widen net.ipv4.ip_local_port_range. UDP sockets that all set SO_REUSEADDR share ports, so autobind finds one; but a reply reaches the right socket only while no two sockets sharing a port talk to the same peer address and port."
	}
	m := f.connectMeasure()
	var b strings.Builder
	b.WriteString("No free local port toward this destination: every usable port of the range is taken for this (source, destination address, destination port). ")
	bindersFirst := m.bindOwned > 0 && uint64(m.bindOwned) >= m.tw+m.live
	if bindersFirst {
		b.WriteString(bindersAdvice(m))
	}
	pool := "the pool"
	if m.bindOwned > 0 {
		pool = "the rest of the pool"
	}
	switch {
	case !m.known:
		b.WriteString("Live connections, TIME_WAIT from connections this side closed, and ports that bind()/listen() owners hold for every destination all take from it (the pressure snapshot, or `ss -tan`, tells which). ")
		b.WriteString(f.remedies(m))
		b.WriteString("If TIME_WAIT holds them: " + f.twReuse() + " tcp_tw_recycle no longer exists (removed in 4.12). ")
	case !m.twSeen:
		if m.live > 0 {
			fmt.Fprintf(&b, "%s: live connections hold %s, not TIME_WAIT, so tcp_tw_reuse would not help. ", m.what, pool)
			b.WriteString(f.remedies(m))
		}
	case m.tw >= m.live:
		fmt.Fprintf(&b, "%s: TIME_WAIT from connections this side closed holds %s. Let the peer close first where the protocol allows. ", m.what, pool)
		b.WriteString(f.remedies(m))
		b.WriteString(f.twReuse() + " tcp_tw_recycle no longer exists (removed in 4.12). ")
	default:
		fmt.Fprintf(&b, "%s: live connections hold most of %s. ", m.what, pool)
		b.WriteString(f.remedies(m))
		b.WriteString("For the TIME_WAIT share: " + f.twReuse() + " ")
	}
	if m.bindOwned > 0 && !bindersFirst {
		b.WriteString(bindersAdvice(m))
	}
	if f.hasErrno(unix.EAGAIN) {
		b.WriteString("For UDP, EAGAIN means autobind found no port: reuse sockets.")
	}
	return strings.TrimSpace(b.String())
}

// remedies are the fixes for a full connect pool, less an option already
// set; a wider range is no fix while bind()/listen() owners take the ports.
func (f *Finding) remedies(m connectMeasure) string {
	widen := "widen net.ipv4.ip_local_port_range"
	if m.bindOwned > 0 {
		widen = "widen net.ipv4.ip_local_port_range once the binders are fixed"
	}
	if f.hasOption(optNoPort) {
		return "These sockets already set IP_BIND_ADDRESS_NO_PORT (the recommended pattern), so the pool to this destination is truly full. What is left: reuse connections (keep-alive, pooling), more destination addresses/ports or source addresses, or " + widen + ". "
	}
	return "Reuse connections (keep-alive, pooling); spread over more destination ports/addresses or source addresses (IP_BIND_ADDRESS_NO_PORT); " + widen + ". "
}

// bindersAdvice points at the processes whose bind()/listen() ownership
// takes ports from every destination: a wider range only feeds them.
func bindersAdvice(m connectMeasure) string {
	held := fmt.Sprintf("%d ports of the range are", m.bindOwned)
	if m.size > 0 {
		held = fmt.Sprintf("%d of the %d ports are", m.bindOwned, m.size)
	}
	return held + " held by bind()/listen() owners for every destination: connect() skips them whatever the destination, so the fix is on the binders' side: processes that bind() before connect() should set IP_BIND_ADDRESS_NO_PORT before bind() (or not bind), and services should listen on ports outside ip_local_port_range; a wider range alone only gives the binders more ports. "
}

// twReuse says what tcp_tw_reuse can still do here for TIME_WAIT.
func (f *Finding) twReuse() string {
	s := f.Sysctls
	switch {
	case s == nil || s.TCPTwReuse < 0:
		return "net.ipv4.tcp_tw_reuse=1 lets connect() reuse a TIME_WAIT port after 1 s when TCP timestamps are on."
	case s.TCPTwReuse == 0 || (s.TCPTwReuse == 2 && !f.loopbackOnly()):
		loop := ""
		if s.TCPTwReuse == 2 {
			loop = " (loopback destinations only)"
		}
		return fmt.Sprintf("tcp_tw_reuse is %d here%s: setting it to 1 lets connect() reuse a TIME_WAIT port after 1 s when TCP timestamps are on (tcp_timestamps=%d).",
			s.TCPTwReuse, loop, s.TCPTimestamps)
	case s.TCPTimestamps == 0:
		return fmt.Sprintf("tcp_tw_reuse is already %d here, but tcp_timestamps=0 and the reuse needs timestamps: set net.ipv4.tcp_timestamps=1.", s.TCPTwReuse)
	case s.TCPTwReuse == 2:
		return "tcp_tw_reuse is 2 here, which covers these loopback destinations: the TIME_WAIT reuse that helps is on, so the pool is truly full."
	}
	return "tcp_tw_reuse is already 1 here, so the TIME_WAIT reuse that helps is on: the pool is truly full."
}

// loopbackOnly says whether every destination recorded is a loopback address.
func (f *Finding) loopbackOnly() bool {
	for _, a := range f.Addrs {
		if !a.Addr().Unmap().IsLoopback() {
			return false
		}
	}
	return len(f.Addrs) > 0
}

// udpOnly says whether every failure was UDP's (autobind EAGAIN): no TIME_WAIT there.
func (f *Finding) udpOnly() bool {
	for c := range f.Classes {
		if c.Proto != "udp" {
			return false
		}
	}
	return len(f.Classes) > 0
}

// holdersNote names who held the pool: the processes to look at first.
func (f *Finding) holdersNote(b *strings.Builder) {
	hs := f.Pool.Holders
	if len(hs) == 0 {
		return
	}
	b.WriteString("; held by ")
	for i, h := range hs {
		if i == maxPoolHolders {
			fmt.Fprintf(b, " and %d more", len(hs)-i)
			break
		}
		if i > 0 {
			b.WriteString(", ")
		}
		switch {
		case h.Comm == "" && h.PID == 0:
			fmt.Fprintf(b, "no process (%d ports)", h.Ports)
		case h.Procs > 1:
			fmt.Fprintf(b, "%s (%d processes, %d ports)", term.Escape(h.Comm), h.Procs, h.Ports)
		default:
			fmt.Fprintf(b, "%s (pid %d, %d ports)", term.Escape(h.Comm), h.PID, h.Ports)
		}
	}
}
