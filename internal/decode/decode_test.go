package decode

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/portsleuth/portsleuth/gen"
	"github.com/portsleuth/portsleuth/internal/event"
)

// kernelChars is a C char array holding s, NUL-padded.
func kernelChars[T ~[16]int8](s string) T {
	var b T
	for i := 0; i < len(s) && i < len(b); i++ {
		b[i] = int8(s[i])
	}
	return b
}

func ip16(s string) [16]uint8 {
	a := netip.MustParseAddr(s)
	if a.Is4() {
		var b [16]uint8
		v4 := a.As4()
		copy(b[:], v4[:])
		return b
	}
	return a.As16()
}

func TestClass(t *testing.T) {
	port0 := uint8(gen.PortsleuthPsFlagPS_F_PORT0)
	anyAddr := uint8(gen.PortsleuthPsFlagPS_F_ANYADDR)
	for _, c := range []struct {
		name string
		key  gen.PortsleuthPsFailKey
		want event.Class
	}{
		{"bind tcp4 wildcard port 0",
			gen.PortsleuthPsFailKey{Op: uint8(gen.PortsleuthPsOpPS_OP_BIND), Proto: unix.IPPROTO_TCP, Family: unix.AF_INET, Err: int32(unix.EADDRINUSE), Flags: port0 | anyAddr},
			event.Class{Op: event.Bind, Proto: "tcp", Family: "ipv4", Errno: unix.EADDRINUSE, Port0: true, AnyAddr: true}},
		{"connect tcp6 unbound",
			gen.PortsleuthPsFailKey{Op: uint8(gen.PortsleuthPsOpPS_OP_CONNECT), Proto: unix.IPPROTO_TCP, Family: unix.AF_INET6, Err: int32(unix.EADDRNOTAVAIL), Flags: port0},
			event.Class{Op: event.Connect, Proto: "tcp", Family: "ipv6", Errno: unix.EADDRNOTAVAIL, Port0: true}},
		{"listen",
			gen.PortsleuthPsFailKey{Op: uint8(gen.PortsleuthPsOpPS_OP_LISTEN), Proto: unix.IPPROTO_TCP, Family: unix.AF_INET, Err: int32(unix.EADDRINUSE)},
			event.Class{Op: event.Listen, Proto: "tcp", Family: "ipv4", Errno: unix.EADDRINUSE}},
		{"udp bind with an address",
			gen.PortsleuthPsFailKey{Op: uint8(gen.PortsleuthPsOpPS_OP_BIND), Proto: unix.IPPROTO_UDP, Family: unix.AF_INET, Err: int32(unix.EADDRINUSE), Flags: anyAddr},
			event.Class{Op: event.Bind, Proto: "udp", Family: "ipv4", Errno: unix.EADDRINUSE, AnyAddr: true}},
		// An op the kernel never sends reads as bind, the first op: the zero value.
		{"unknown op",
			gen.PortsleuthPsFailKey{Op: 0, Proto: unix.IPPROTO_TCP, Family: unix.AF_INET, Err: int32(unix.EADDRNOTAVAIL)},
			event.Class{Op: event.Bind, Proto: "tcp", Family: "ipv4", Errno: unix.EADDRNOTAVAIL}},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := Class(c.key); got != c.want {
				t.Errorf("Class(%+v)\n got %+v\nwant %+v", c.key, got, c.want)
			}
		})
	}
}

func TestOptionNames(t *testing.T) {
	for _, c := range []struct {
		bits uint16
		want string
	}{
		{0, ""},
		{uint16(gen.PortsleuthPsOptPS_OPT_REUSEADDR), "SO_REUSEADDR"},
		{uint16(gen.PortsleuthPsOptPS_OPT_REUSEADDR | gen.PortsleuthPsOptPS_OPT_REUSEPORT), "SO_REUSEADDR,SO_REUSEPORT"},
		{uint16(gen.PortsleuthPsOptPS_OPT_BIND_ADDRESS_NO_PORT), "IP_BIND_ADDRESS_NO_PORT"},
		{uint16(gen.PortsleuthPsOptPS_OPT_FREEBIND | gen.PortsleuthPsOptPS_OPT_TRANSPARENT), "IP_FREEBIND,IP_TRANSPARENT"},
		{uint16(gen.PortsleuthPsOptPS_OPT_V6ONLY), "IPV6_V6ONLY"},
		{63, "SO_REUSEADDR,SO_REUSEPORT,IP_BIND_ADDRESS_NO_PORT,IP_FREEBIND,IP_TRANSPARENT,IPV6_V6ONLY"},
		// Bits above the six known ones are ignored, not an index out of range.
		{0xffc0 | uint16(gen.PortsleuthPsOptPS_OPT_V6ONLY), "IPV6_V6ONLY"},
	} {
		got := OptionNames(c.bits)
		if got == nil {
			t.Errorf("OptionNames(%#x) is nil: JSON would say null, not []", c.bits)
		}
		if strings.Join(got, ",") != c.want {
			t.Errorf("OptionNames(%#x) = %q, want %q", c.bits, got, c.want)
		}
	}
}

func TestCStringAndCmdline(t *testing.T) {
	for _, c := range []struct {
		in   []int8
		want string
	}{
		{[]int8{}, ""},
		{[]int8{'n', 'g', 'i', 'n', 'x', 0, 'x', 'y'}, "nginx"},
		{[]int8{'a', 'b', 'c'}, "abc"},  // no NUL: the whole array
		{[]int8{-61, -87, 0}, "\u00e9"}, // bytes >= 0x80 arrive as negative int8
	} {
		if got := CString(c.in); got != c.want {
			t.Errorf("CString(%v) = %q, want %q", c.in, got, c.want)
		}
	}
	for _, c := range []struct {
		in   string
		want string
	}{
		{"python3\x00-m\x00http.server\x00\x00\x00", "python3 -m http.server"},
		{"sleep\x00", "sleep"},
		{"", ""},
		{"truncated-argv\x00ab", "truncated-argv ab"},
	} {
		in := make([]int8, len(c.in))
		for i := range c.in {
			in[i] = int8(c.in[i])
		}
		if got := Cmdline(in); got != c.want {
			t.Errorf("Cmdline(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

// raw lays r out as the ring buffer hands it over.
func raw(r *gen.PortsleuthPsEvent) []byte {
	return append([]byte(nil), unsafe.Slice((*byte)(unsafe.Pointer(r)), unsafe.Sizeof(*r))...)
}

func TestRaw(t *testing.T) {
	in := gen.PortsleuthPsEvent{TsNs: 1, Pid: 42, Tid: 43, Err: int32(unix.EADDRINUSE), Lport: 8080, Source: 2,
		Comm: kernelChars[[16]int8]("nginx"), Laddr: ip16("127.0.0.1")}
	var out gen.PortsleuthPsEvent
	// A record may come with trailing bytes (ring buffer alignment).
	if err := Raw(append(raw(&in), 0, 0, 0, 0), &out); err != nil {
		t.Fatal(err)
	}
	if out != in {
		t.Errorf("Raw round trip\n got %+v\nwant %+v", out, in)
	}
	short := raw(&in)[:unsafe.Sizeof(in)-1]
	err := Raw(short, &out)
	if err == nil || !strings.Contains(err.Error(), "want") {
		t.Errorf("short record: err %v, want one naming the sizes", err)
	}
}

// Each event kind decodes to the fields the report shows.
func TestEvent(t *testing.T) {
	boot := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	reuse := uint16(gen.PortsleuthPsOptPS_OPT_REUSEADDR)
	for _, c := range []struct {
		name string
		rec  gen.PortsleuthPsEvent
		want event.Event
	}{
		{"bind in use, held by a listener (kernel layer)",
			gen.PortsleuthPsEvent{
				TsNs: uint64(3 * time.Second), Pid: 100, Tid: 101, StartNs: 555, Netns: 4026531840, CgroupId: 7, SockIno: 9000,
				Err: int32(unix.EADDRINUSE), Op: uint8(gen.PortsleuthPsOpPS_OP_BIND), Proto: unix.IPPROTO_TCP, Family: unix.AF_INET,
				Flags: 0, Options: reuse, Lport: 8080, Laddr: ip16("127.0.0.1"),
				Comm: kernelChars[[16]int8]("python3"), Tcomm: kernelChars[[16]int8]("worker-1"),
				Source:      uint8(gen.PortsleuthPsSourcePS_SRC_INET_BIND),
				HolderState: 10, HolderLaddr: ip16("0.0.0.0"), HolderLport: 8080, HolderOptions: uint8(reuse), HolderIno: 777,
			},
			event.Event{
				Time: boot.Add(3 * time.Second), PID: 100, TID: 101, Start: 555, Comm: "python3", Thread: "worker-1",
				Class:   event.Class{Op: event.Bind, Proto: "tcp", Family: "ipv4", Errno: unix.EADDRINUSE},
				Addr:    netip.MustParseAddrPort("127.0.0.1:8080"),
				Options: []string{"SO_REUSEADDR"}, Netns: 4026531840, CgroupID: 7, SockIno: 9000, Source: "inet_bind",
				Holder: &event.Holder{State: "LISTEN", Local: netip.MustParseAddrPort("0.0.0.0:8080"), Options: []string{"SO_REUSEADDR"}, SockIno: 777},
			}},
		{"connect exhausted, TIME_WAIT blocked (kernel layer, IPv6)",
			gen.PortsleuthPsEvent{
				Pid: 200, Tid: 200, Err: int32(unix.EADDRNOTAVAIL), Op: uint8(gen.PortsleuthPsOpPS_OP_CONNECT),
				Proto: unix.IPPROTO_TCP, Family: unix.AF_INET6, Flags: uint16(gen.PortsleuthPsFlagPS_F_PORT0 | gen.PortsleuthPsFlagPS_F_ANYADDR),
				Laddr: ip16("::"), Daddr: ip16("2001:db8::1"), Dport: 443,
				Comm: kernelChars[[16]int8]("curl"), Tcomm: kernelChars[[16]int8]("curl"),
				Source:    uint8(gen.PortsleuthPsSourcePS_SRC_INET6HASH_CONNECT),
				TwBlocked: 60, EstBlocked: 4,
			},
			event.Event{
				Time: boot, PID: 200, TID: 200, Comm: "curl", Thread: "curl",
				Class:   event.Class{Op: event.Connect, Proto: "tcp", Family: "ipv6", Errno: unix.EADDRNOTAVAIL, Port0: true, AnyAddr: true},
				Addr:    netip.MustParseAddrPort("[::]:0"),
				Dest:    netip.MustParseAddrPort("[2001:db8::1]:443"),
				Options: []string{}, Source: "inet6_hash_connect", TWBlocked: 60, EstBlocked: 4,
			}},
		{"cgroup backend: errno inferred, connected UDP holder",
			gen.PortsleuthPsEvent{
				Pid: 300, Tid: 300, Err: int32(unix.EADDRINUSE), Op: uint8(gen.PortsleuthPsOpPS_OP_BIND),
				Proto: unix.IPPROTO_UDP, Family: unix.AF_INET, Lport: 5353, Laddr: ip16("10.0.0.1"),
				Source:      uint8(gen.PortsleuthPsSourcePS_SRC_CGROUP_BIND),
				HolderState: 1, HolderLaddr: ip16("10.0.0.1"), HolderLport: 5353, HolderDaddr: ip16("10.0.0.2"), HolderDport: 53,
			},
			event.Event{
				Time: boot, PID: 300, TID: 300,
				Class:   event.Class{Op: event.Bind, Proto: "udp", Family: "ipv4", Errno: unix.EADDRINUSE},
				Addr:    netip.MustParseAddrPort("10.0.0.1:5353"),
				Options: []string{}, Source: "cgroup_bind", ErrnoInferred: true,
				Holder: &event.Holder{State: "CONNECTED", Local: netip.MustParseAddrPort("10.0.0.1:5353"),
					Remote: netip.MustParseAddrPort("10.0.0.2:53"), Options: []string{}},
			}},
		{"cgroup connect: inferred; a bind's destination stays empty",
			gen.PortsleuthPsEvent{
				Pid: 400, Err: int32(unix.EADDRNOTAVAIL), Op: uint8(gen.PortsleuthPsOpPS_OP_CONNECT), Proto: unix.IPPROTO_TCP, Family: unix.AF_INET,
				Daddr: ip16("127.0.0.1"), Dport: 8081, Source: uint8(gen.PortsleuthPsSourcePS_SRC_CGROUP_CONNECT),
			},
			event.Event{
				Time: boot, PID: 400,
				Class:   event.Class{Op: event.Connect, Proto: "tcp", Family: "ipv4", Errno: unix.EADDRNOTAVAIL},
				Addr:    netip.MustParseAddrPort("0.0.0.0:0"),
				Dest:    netip.MustParseAddrPort("127.0.0.1:8081"),
				Options: []string{}, Source: "cgroup_connect", ErrnoInferred: true,
			}},
		{"bind ignores a destination the record carries; unknown source is empty",
			gen.PortsleuthPsEvent{
				Pid: 500, Err: int32(unix.EADDRINUSE), Op: uint8(gen.PortsleuthPsOpPS_OP_BIND), Proto: unix.IPPROTO_TCP, Family: unix.AF_INET,
				Daddr: ip16("192.0.2.9"), Dport: 99, Source: 200,
			},
			event.Event{
				Time: boot, PID: 500,
				Class:   event.Class{Op: event.Bind, Proto: "tcp", Family: "ipv4", Errno: unix.EADDRINUSE},
				Addr:    netip.MustParseAddrPort("0.0.0.0:0"),
				Options: []string{},
			}},
	} {
		t.Run(c.name, func(t *testing.T) {
			var rec gen.PortsleuthPsEvent
			if err := Raw(raw(&c.rec), &rec); err != nil {
				t.Fatal(err)
			}
			got := Event(&rec, boot)
			if !reflect.DeepEqual(got, c.want) {
				t.Errorf("Event\n got %+v (holder %+v)\nwant %+v (holder %+v)", got, got.Holder, c.want, c.want.Holder)
			}
		})
	}
}

// Task names are interned: a storm of one name costs no allocation per event.
func TestCommInterned(t *testing.T) {
	rec := gen.PortsleuthPsEvent{Comm: kernelChars[[16]int8]("storm"), Tcomm: kernelChars[[16]int8]("storm"), Family: unix.AF_INET}
	boot := time.Now()
	first := Event(&rec, boot)
	allocs := testing.AllocsPerRun(100, func() { _ = Event(&rec, boot) })
	if first.Comm != "storm" || first.Thread != "storm" {
		t.Fatalf("comm %q thread %q", first.Comm, first.Thread)
	}
	if allocs != 0 {
		t.Errorf("decoding a known comm allocates %.0f times per event, want 0", allocs)
	}
}
