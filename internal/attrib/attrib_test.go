package attrib

import (
	"net/netip"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/portsleuth/portsleuth/internal/event"
	"github.com/portsleuth/portsleuth/internal/netns"
)

func TestClassify(t *testing.T) {
	connected := event.ProcStats{Port0BindsOK: 64, Port0BindConnects: 64}
	never := event.ProcStats{Port0BindsOK: 64}
	bind := func(errno unix.Errno, port0, any bool) event.Class {
		return event.Class{Op: event.Bind, Proto: "tcp", Family: "ipv4", Errno: errno, Port0: port0, AnyAddr: any}
	}
	conn := func(errno unix.Errno, port0 bool) event.Class {
		return event.Class{Op: event.Connect, Proto: "tcp", Family: "ipv4", Errno: errno, Port0: port0, AnyAddr: port0}
	}
	for _, c := range []struct {
		class event.Class
		stats event.ProcStats
		want  Pattern
	}{
		{bind(unix.EADDRINUSE, true, true), connected, BindAnyBeforeConnect},
		{bind(unix.EADDRINUSE, true, false), connected, BindIPBeforeConnect},
		{bind(unix.EADDRINUSE, true, true), never, BindPortExhaustion},
		{bind(unix.EADDRINUSE, true, false), never, BindPortExhaustion},
		// An explicit port is never exhaustion, whatever the process did before.
		{bind(unix.EADDRINUSE, false, false), connected, PortInUse},
		{bind(unix.EADDRINUSE, false, true), never, PortInUse},
		{bind(unix.EADDRNOTAVAIL, true, false), never, AddressNotLocal},
		{bind(unix.EACCES, false, true), never, PrivilegedPort},
		{bind(unix.EPERM, false, true), never, Denied},
		{conn(unix.EADDRNOTAVAIL, true), never, ConnectPortExhaustion},
		{conn(unix.EADDRNOTAVAIL, false), never, ConnectTupleConflict},
		{conn(unix.EAGAIN, true), never, ConnectPortExhaustion},
		{conn(unix.EPERM, true), never, Denied},
		{conn(unix.EADDRINUSE, false), never, Other},
	} {
		if got := Classify(c.class, c.stats); got != c.want {
			t.Errorf("Classify(%+v, %+v) = %s, want %s", c.class, c.stats, got, c.want)
		}
	}
}

func TestEveryPatternHasAdvice(t *testing.T) {
	for _, p := range Patterns {
		f := &Finding{Pattern: p, Count: 1}
		if f.Advice() == "" || f.Evidence() == "" {
			t.Errorf("%s: empty advice or evidence", p)
		}
	}
}

// Advice must not send anyone to tcp_tw_recycle or promise SO_REUSEADDR fixes bind(0).
func TestAdviceIsTrueOnCurrentKernels(t *testing.T) {
	for _, p := range Patterns {
		a := (&Finding{Pattern: p}).Advice()
		for _, bad := range []string{"set tcp_tw_recycle", "tcp_tw_recycle=1", "SO_REUSEADDR fixes"} {
			if strings.Contains(a, bad) {
				t.Errorf("%s advice says %q: %s", p, bad, a)
			}
		}
	}
}

// connectFinding is 10 failed connect()s to dest from unbound TCP sockets,
// in a 64-port namespace with tcp_tw_reuse as given.
func connectFinding(dest string, twReuse int) *Finding {
	c := event.Class{Op: event.Connect, Proto: "tcp", Family: "ipv4", Errno: unix.EADDRNOTAVAIL, Port0: true, AnyAddr: true}
	return &Finding{
		Pattern: ConnectPortExhaustion, Count: 10,
		Classes: map[event.Class]uint64{c: 10},
		Stats:   event.ProcStats{ConnectsOK: 64, ConnectsFailed: 10},
		Addrs:   []netip.AddrPort{netip.MustParseAddrPort(dest)},
		Sysctls: &netns.Sysctls{PortRange: [2]int{40000, 40063}, TCPTwReuse: twReuse, TCPTimestamps: 1},
	}
}

func connectPool(est, tw, bindOwned int) *Pool {
	return &Pool{Kind: "connect", Local: "127.0.0.1", Dest: "127.0.0.1:8080", Size: 64,
		BindOwned: bindOwned, Established: est, TimeWait: tw, Free: 64 - est - tw - bindOwned}
}

// The advice follows what was measured: a cause the measurement rules out is
// never named, and TIME_WAIT remedies come only with TIME_WAIT.
func TestConnectExhaustionAdviceFollowsMeasurement(t *testing.T) {
	// Claims that blame TIME_WAIT, or send the reader to tcp_tw_reuse as the fix.
	timeWaitClaims := []string{"usually", "TIME_WAIT from", "TIME_WAIT holds", "tcp_tw_reuse=1", "setting it to 1", "tcp_tw_recycle"}
	for _, c := range []struct {
		name   string
		mod    func(f *Finding)
		dest   string
		reuse  int
		want   []string // in the advice
		wantEv []string // in the evidence
		not    []string // nowhere in the advice
	}{
		{
			name: "live connections measured",
			mod:  func(f *Finding) { f.Pool = connectPool(64, 0, 0) },
			want: []string{"64 established, 0 TIME_WAIT: live connections hold the pool, not TIME_WAIT",
				"tcp_tw_reuse would not help", "Reuse connections (keep-alive, pooling)", "more destination ports/addresses or source addresses", "widen net.ipv4.ip_local_port_range"},
			wantEv: []string{"the connect pool to 127.0.0.1:8080 from 127.0.0.1 had 64 established, 0 TIME_WAIT, 0 free of 64 ports"},
			not:    timeWaitClaims,
		},
		{
			name: "live connections by the kernel's counters",
			mod:  func(f *Finding) { f.Stats.ConnectEstBlocked = 640 },
			want: []string{"the kernel found 640 candidate ports taken by live connections and 0 by TIME_WAIT: live connections hold the pool"},
			not:  timeWaitClaims,
		},
		{
			name: "TIME_WAIT measured",
			mod:  func(f *Finding) { f.Pool = connectPool(4, 60, 0) },
			want: []string{"4 established, 60 TIME_WAIT: TIME_WAIT from connections this side closed holds the pool",
				"tcp_tw_reuse is 0 here: setting it to 1 lets connect() reuse a TIME_WAIT port", "keep-alive"},
			not: []string{"usually", "live connections hold"},
		},
		{
			name:  "TIME_WAIT to loopback with tcp_tw_reuse=2",
			mod:   func(f *Finding) { f.Stats.ConnectTWBlocked = 640 },
			reuse: 2,
			want:  []string{"tcp_tw_reuse is 2 here, which covers these loopback destinations"},
			not:   []string{"setting it to 1"},
		},
		{
			name:  "TIME_WAIT elsewhere with tcp_tw_reuse=2",
			mod:   func(f *Finding) { f.Stats.ConnectTWBlocked = 640 },
			dest:  "192.0.2.10:443",
			reuse: 2,
			want:  []string{"tcp_tw_reuse is 2 here (loopback destinations only): setting it to 1"},
		},
		{
			name: "mostly live, some TIME_WAIT",
			mod:  func(f *Finding) { f.Pool = connectPool(50, 14, 0) },
			want: []string{"50 established, 14 TIME_WAIT: live connections hold most of the pool", "For the TIME_WAIT share: tcp_tw_reuse is 0 here"},
			not:  []string{"usually"},
		},
		{
			name: "bind() owners hold most of the range",
			mod:  func(f *Finding) { f.Pool = connectPool(16, 0, 48) },
			want: []string{"48 of the 64 ports are held by bind()/listen() owners for every destination",
				"the fix is on the binders' side", "bind() before connect() should set IP_BIND_ADDRESS_NO_PORT before bind()",
				"a wider range alone only gives the binders more ports", "16 established, 0 TIME_WAIT: live connections hold the rest of the pool",
				"widen net.ipv4.ip_local_port_range once the binders are fixed"},
			wantEv: []string{"had 16 established, 0 TIME_WAIT, 48 held by bind()/listen() owners for every destination, 0 free of 64 ports"},
			not:    timeWaitClaims,
		},
		{
			name: "IP_BIND_ADDRESS_NO_PORT already set",
			mod: func(f *Finding) {
				f.Pool = connectPool(64, 0, 0)
				f.Options = []string{"IP_BIND_ADDRESS_NO_PORT"}
			},
			want: []string{"These sockets already set IP_BIND_ADDRESS_NO_PORT", "the pool to this destination is truly full",
				"What is left: reuse connections (keep-alive, pooling), more destination addresses/ports or source addresses, or widen net.ipv4.ip_local_port_range"},
			not: append([]string{"(IP_BIND_ADDRESS_NO_PORT)", "should set IP_BIND_ADDRESS_NO_PORT"}, timeWaitClaims...),
		},
		{
			name: "nothing measured",
			want: []string{"Live connections, TIME_WAIT from connections this side closed, and ports that bind()/listen() owners hold",
				"If TIME_WAIT holds them: tcp_tw_reuse is 0 here"},
			not: []string{"usually"},
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			dest := c.dest
			if dest == "" {
				dest = "127.0.0.1:8080"
			}
			f := connectFinding(dest, c.reuse)
			if c.mod != nil {
				c.mod(f)
			}
			adv, ev := f.Advice(), f.Evidence()
			for _, w := range c.want {
				if !strings.Contains(adv, w) {
					t.Errorf("advice lacks %q:\n%s", w, adv)
				}
			}
			for _, w := range c.wantEv {
				if !strings.Contains(ev, w) {
					t.Errorf("evidence lacks %q:\n%s", w, ev)
				}
			}
			for _, n := range c.not {
				if strings.Contains(adv, n) {
					t.Errorf("advice says %q:\n%s", n, adv)
				}
			}
			if strings.Contains(ev, "usually") {
				t.Errorf("evidence guesses: %s", ev)
			}
		})
	}
}

// UDP has no TIME_WAIT: its autobind failures get no TCP remedy.
func TestUDPAutobindAdviceNamesNoTimeWait(t *testing.T) {
	c := event.Class{Op: event.Connect, Proto: "udp", Family: "ipv4", Errno: unix.EAGAIN, Port0: true, AnyAddr: true}
	f := &Finding{Pattern: ConnectPortExhaustion, Count: 3, Classes: map[event.Class]uint64{c: 3}}
	adv := f.Advice()
	if strings.Contains(adv, "TIME_WAIT") || strings.Contains(adv, "tcp_tw_reuse") || !strings.Contains(adv, "Reuse sockets") {
		t.Errorf("UDP advice: %s", adv)
	}
}

// An option the failing sockets already set is never recommended: the
// advice says it is set. Every "set OPT" is "already set OPT".
func TestAdviceNeverAsksForAnOptionAlreadySet(t *testing.T) {
	listen := event.Class{Op: event.Listen, Proto: "tcp", Family: "ipv4", Errno: unix.EADDRINUSE}
	for _, p := range Patterns {
		for _, opt := range []string{"IP_BIND_ADDRESS_NO_PORT", "SO_REUSEADDR", "SO_REUSEPORT", "IP_FREEBIND"} {
			for _, classes := range []map[event.Class]uint64{nil, {listen: 1}} {
				f := &Finding{Pattern: p, Count: 1, Classes: classes, Options: []string{opt}}
				a := f.Advice()
				if set, already := strings.Count(a, "set "+opt), strings.Count(a, "already set "+opt); set != already {
					t.Errorf("%s with %s: advice recommends it: %s", p, opt, a)
				}
				for _, bad := range []string{"(" + opt + ")", "port 0 with " + opt, "use " + opt} {
					if strings.Contains(a, bad) {
						t.Errorf("%s with %s: advice says %q: %s", p, opt, bad, a)
					}
				}
			}
		}
	}
	// Without the option the same advice does recommend it, so the test above can fail.
	f := &Finding{Pattern: PortInUse, Count: 1}
	if !strings.Contains(f.Advice(), "set SO_REUSEADDR before bind()") {
		t.Errorf("port-in-use advice without SO_REUSEADDR: %s", f.Advice())
	}
	f = &Finding{Pattern: BindAnyBeforeConnect, Count: 1}
	if !strings.Contains(f.Advice(), "set IP_BIND_ADDRESS_NO_PORT before bind()") {
		t.Errorf("bind-before-connect advice without the option: %s", f.Advice())
	}
}

func TestPortInUseAdviceWithReuseAddrSet(t *testing.T) {
	f := &Finding{Pattern: PortInUse, Count: 3, Options: []string{"SO_REUSEADDR"}}
	a := f.Advice()
	if !strings.Contains(a, "These sockets already set SO_REUSEADDR: it shares a port only with an owner that is not listening and set it too") {
		t.Errorf("advice %s", a)
	}
}

func TestBindPoolInEvidence(t *testing.T) {
	f := &Finding{Pattern: BindAnyBeforeConnect, Count: 10, Stats: event.ProcStats{Port0BindsOK: 64, Port0BindConnects: 64},
		Pool: &Pool{Kind: "bind", Local: "0.0.0.0", Size: 64, BindOwned: 64}}
	want := "at the first failure the bind(0.0.0.0:0) pool had 0 established, 0 TIME_WAIT, 64 held by bind()/listen() owners, 0 free of 64 ports"
	if ev := f.Evidence(); !strings.Contains(ev, want) {
		t.Errorf("evidence %q lacks %q", ev, want)
	}
}

// A holder that was seen rules out the causes it is not: no TIME_WAIT
// guess beside a listener, no source-port warning for a port outside the range.
func TestPortInUseAdviceFollowsHolders(t *testing.T) {
	listener := event.Holder{PID: 42, Comm: "nginx", State: "LISTEN", Local: netip.MustParseAddrPort("127.0.0.1:80")}
	tw := event.Holder{State: "TIME_WAIT", Local: netip.MustParseAddrPort("127.0.0.1:80"), Remote: netip.MustParseAddrPort("127.0.0.1:50000")}
	sys := &netns.Sysctls{PortRange: [2]int{40000, 40063}}
	for _, c := range []struct {
		name      string
		holders   []event.Holder
		port      string
		want, not []string
	}{
		{"listener outside the range", []event.Holder{listener}, "127.0.0.1:80",
			[]string{"The evidence names the holder"}, []string{"earlier run's TIME_WAIT", "source port"}},
		{"TIME_WAIT holder", []event.Holder{tw}, "127.0.0.1:80",
			[]string{"If it is an earlier run's TIME_WAIT, set SO_REUSEADDR before bind()"}, []string{"The evidence names the holder"}},
		{"no holder, port in the range", nil, "127.0.0.1:40010",
			[]string{"If it is an earlier run's TIME_WAIT", "can be taken as a source port"}, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := &Finding{Pattern: PortInUse, Count: 1, Holders: c.holders, Sysctls: sys,
				Addrs: []netip.AddrPort{netip.MustParseAddrPort(c.port)}}
			a := f.Advice()
			for _, w := range c.want {
				if !strings.Contains(a, w) {
					t.Errorf("advice lacks %q: %s", w, a)
				}
			}
			for _, n := range c.not {
				if strings.Contains(a, n) {
					t.Errorf("advice says %q: %s", n, a)
				}
			}
		})
	}
}
