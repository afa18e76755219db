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
}

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
	if len(f.Options) > 0 {
		fmt.Fprintf(&b, "; options on the failing sockets: %s", strings.Join(f.Options, ", "))
	}
	return b.String()
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

// Advice is the fix, as true on this kernel and namespace as the agent can tell.
func (f *Finding) Advice() string {
	s := f.Sysctls
	switch f.Pattern {
	case BindAnyBeforeConnect, BindIPBeforeConnect:
		a := "Don't bind() before connect(). If the source address must be chosen, set IP_BIND_ADDRESS_NO_PORT before bind(): the port is then picked at connect() time from the pool of that destination (the 4-tuple), instead of reserving a port that must be free for every destination. "
		if f.hasOption("SO_REUSEADDR") {
			a += "These sockets already set SO_REUSEADDR and still fail: since Linux 4.6 it does not relax bind() to port 0. "
		} else {
			a += "SO_REUSEADDR does not help: since Linux 4.6 it does not relax bind() to port 0. "
		}
		a += "net.ipv4.ip_autobind_reuse=1 only moves the failure to connect() (EADDRNOTAVAIL)"
		if s != nil && s.AutobindReuse == 1 {
			a += " and is already 1 here"
		}
		a += "; tcp_tw_recycle no longer exists (removed in 4.12)."
		if f.Pattern == BindIPBeforeConnect {
			a += " Each local address has its own port pool, so more source addresses only add range-sized pools; IP_BIND_ADDRESS_NO_PORT multiplies them by destinations."
		}
		return a
	case BindPortExhaustion:
		a := "Every port of the ephemeral range already has an owner on this address. Close idle sockets, let the kernel pick the port at connect() (don't bind, or set IP_BIND_ADDRESS_NO_PORT), or widen net.ipv4.ip_local_port_range. SO_REUSEADDR does not relax bind() to port 0 since Linux 4.6; ip_autobind_reuse=1 shares ports only with non-listening SO_REUSEADDR owners."
		if f.bindOp() != "bind" {
			a += " A listen() without bind() takes its port from the same range: bind the listener to an explicit port outside it."
		}
		return a
	case PortInUse:
		a := ""
		if f.bindOp() != "bind" {
			a = "listen() re-checks the port: two sockets that shared it with SO_REUSEADDR cannot both listen (use SO_REUSEPORT for that). "
		}
		return a + "Not exhaustion: another socket holds the port (find it with `ss -tanp 'sport = :PORT'`). If it is an earlier run's TIME_WAIT, set SO_REUSEADDR before bind(); to serve one port from several sockets, set SO_REUSEPORT on all of them (same user). A service port inside ip_local_port_range can be taken as a source port by outgoing connections: move it out or add it to net.ipv4.ip_local_reserved_ports."
	case ConnectPortExhaustion:
		a := "No free local port toward this destination: every port of the range is in use for this (source, destination address, destination port), usually by TIME_WAIT from client-side close. Reuse connections (keep-alive, pooling); spread over more destination ports/addresses or source addresses (IP_BIND_ADDRESS_NO_PORT); widen net.ipv4.ip_local_port_range. "
		switch {
		case s == nil:
			a += "net.ipv4.tcp_tw_reuse=1 lets connect() reuse a TIME_WAIT port after 1 s when TCP timestamps are on."
		case s.TCPTwReuse == 1:
			a += "tcp_tw_reuse is already 1 here, so the TIME_WAIT reuse that helps is on: the pool is truly full."
		default:
			a += fmt.Sprintf("tcp_tw_reuse is %d here: setting it to 1 lets connect() reuse a TIME_WAIT port after 1 s when TCP timestamps are on (tcp_timestamps=%d).", s.TCPTwReuse, s.TCPTimestamps)
		}
		a += " tcp_tw_recycle no longer exists (removed in 4.12). For UDP, EAGAIN means autobind found no port: reuse sockets."
		return a
	case ConnectTupleConflict:
		return "The socket was bound to a fixed local port and the 4-tuple to this destination is taken (a live connection, or TIME_WAIT without timestamps). Don't fix source ports: bind port 0 with IP_BIND_ADDRESS_NO_PORT, or don't bind at all."
	case AddressNotLocal:
		return "The address is not on any interface of this network namespace. Bind an address that is, or, for an address that arrives later (VIP failover, IPv6 still in DAD), set IP_FREEBIND on the socket or net.ipv4.ip_nonlocal_bind=1."
	case PrivilegedPort:
		return "Ports below net.ipv4.ip_unprivileged_port_start need CAP_NET_BIND_SERVICE: grant it, or use a higher port."
	case Denied:
		return "A cgroup BPF program or a security module refused the call: check the cgroup's sock_addr programs (bpftool cgroup tree) and the LSM policy."
	}
	return "Not a port-allocation failure portsleuth has a pattern for; see the errno."
}
