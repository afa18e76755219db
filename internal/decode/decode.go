// Package decode turns the kernel's records (the types bpf2go generates from
// bpf/common.h) into portsleuth's data model, internal/event. It is the one
// place Go reads the C layout and the C enums; the layers above know no BPF.
package decode

import (
	"bytes"
	"fmt"
	"net/netip"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/portsleuth/portsleuth/gen"
	"github.com/portsleuth/portsleuth/internal/event"
)

var optionNames = []struct {
	bit  gen.PortsleuthPsOpt
	name string
}{
	{gen.PortsleuthPsOptPS_OPT_REUSEADDR, "SO_REUSEADDR"},
	{gen.PortsleuthPsOptPS_OPT_REUSEPORT, "SO_REUSEPORT"},
	{gen.PortsleuthPsOptPS_OPT_BIND_ADDRESS_NO_PORT, "IP_BIND_ADDRESS_NO_PORT"},
	{gen.PortsleuthPsOptPS_OPT_FREEBIND, "IP_FREEBIND"},
	{gen.PortsleuthPsOptPS_OPT_TRANSPARENT, "IP_TRANSPARENT"},
	{gen.PortsleuthPsOptPS_OPT_V6ONLY, "IPV6_V6ONLY"},
}

// optionSets holds the names of every combination of the six option bits,
// built once: decoding an event allocates no option slice. Shared: read-only.
var optionSets = func() [64][]string {
	var sets [64][]string
	for bits := range sets {
		sets[bits] = []string{}
		for _, o := range optionNames {
			if bits&int(o.bit) != 0 {
				sets[bits] = append(sets[bits], o.name)
			}
		}
	}
	return sets
}()

// OptionNames turns option bits into socket option names. The slice is
// shared: callers must not modify it.
func OptionNames(bits uint16) []string {
	return optionSets[bits&63]
}

var sourceNames = map[gen.PortsleuthPsSource]string{
	gen.PortsleuthPsSourcePS_SRC_SYSCALL:           "syscall",
	gen.PortsleuthPsSourcePS_SRC_INET_BIND:         "inet_bind",
	gen.PortsleuthPsSourcePS_SRC_INET6BIND:         "inet6_bind",
	gen.PortsleuthPsSourcePS_SRC_INET_HASH_CONNECT: "inet_hash_connect",
	gen.PortsleuthPsSourcePS_SRC_INET6HASH_CONNECT: "inet6_hash_connect",
	gen.PortsleuthPsSourcePS_SRC_INET_CSK_GET_PORT: "inet_csk_get_port",
	gen.PortsleuthPsSourcePS_SRC_CGROUP_BIND:       "cgroup_bind",
	gen.PortsleuthPsSourcePS_SRC_CGROUP_CONNECT:    "cgroup_connect",
}

func opOf(op uint8) event.Op {
	switch gen.PortsleuthPsOp(op) {
	case gen.PortsleuthPsOpPS_OP_CONNECT:
		return event.Connect
	case gen.PortsleuthPsOpPS_OP_LISTEN:
		return event.Listen
	}
	return event.Bind
}

func protoOf(p uint8) string {
	if p == unix.IPPROTO_UDP {
		return "udp"
	}
	return "tcp"
}

func familyOf(f uint8) string {
	if f == unix.AF_INET6 {
		return "ipv6"
	}
	return "ipv4"
}

func addrOf(family uint8, b [16]uint8, port uint16) netip.AddrPort {
	if family == unix.AF_INET {
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[:4])), port)
	}
	return netip.AddrPortFrom(netip.AddrFrom16(b), port)
}

// Class decodes a kernel failure key.
func Class(k gen.PortsleuthPsFailKey) event.Class {
	return event.Class{
		Op:      opOf(k.Op),
		Proto:   protoOf(k.Proto),
		Family:  familyOf(k.Family),
		Errno:   unix.Errno(k.Err),
		Port0:   k.Flags&uint8(gen.PortsleuthPsFlagPS_F_PORT0) != 0,
		AnyAddr: k.Flags&uint8(gen.PortsleuthPsFlagPS_F_ANYADDR) != 0,
	}
}

// CString converts a NUL-terminated kernel char array.
func CString(b []int8) string {
	u := unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(b))), len(b))
	if i := bytes.IndexByte(u, 0); i >= 0 {
		u = u[:i]
	}
	return string(u)
}

// commCache interns task names: a storm repeats the same few, and each
// would otherwise cost two allocations per event.
type commCache struct {
	mu sync.Mutex
	m  map[[16]int8]string
}

var comms = commCache{m: map[[16]int8]string{}}

func (c *commCache) get(b [16]int8) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s, ok := c.m[b]; ok {
		return s
	}
	if len(c.m) >= 4096 {
		c.m = map[[16]int8]string{}
	}
	s := CString(b[:])
	c.m[b] = s
	return s
}

// Cmdline converts the NUL-separated start of a command line.
func Cmdline(b []int8) string {
	u := bytes.TrimRight(bytesOf(b), "\x00")
	return string(bytes.ReplaceAll(u, []byte{0}, []byte{' '}))
}

func bytesOf(b []int8) []byte {
	u := make([]byte, len(b))
	for i, c := range b {
		u[i] = byte(c)
	}
	return u
}

// Event turns a ring-buffer record into an event.Event; boot maps the kernel's
// CLOCK_MONOTONIC timestamps to wall time.
func Event(r *gen.PortsleuthPsEvent, boot time.Time) event.Event {
	e := event.Event{
		Time:   boot.Add(time.Duration(r.TsNs)),
		PID:    r.Pid,
		Start:  r.StartNs,
		TID:    r.Tid,
		Comm:   comms.get(r.Comm),
		Thread: comms.get(r.Tcomm),
		Class: Class(gen.PortsleuthPsFailKey{
			Err: r.Err, Op: r.Op, Proto: r.Proto, Family: r.Family, Flags: uint8(r.Flags),
		}),
		Addr:        addrOf(r.Family, r.Laddr, r.Lport),
		Options:     OptionNames(r.Options),
		Netns:       r.Netns,
		NetnsCookie: r.NetnsCookie,
		CgroupID:    r.CgroupId,
		SockIno:     r.SockIno,
		Source:      sourceNames[gen.PortsleuthPsSource(r.Source)],
		ErrnoInferred: r.Source == uint8(gen.PortsleuthPsSourcePS_SRC_CGROUP_BIND) ||
			r.Source == uint8(gen.PortsleuthPsSourcePS_SRC_CGROUP_CONNECT),
		TWBlocked:  r.TwBlocked,
		EstBlocked: r.EstBlocked,
	}
	if e.Class.Op == event.Connect {
		e.Dest = addrOf(r.Family, r.Daddr, r.Dport)
	}
	if r.HolderState != 0 {
		e.Holder = &event.Holder{
			State:   event.StateName(e.Class.Proto, r.HolderState),
			Local:   addrOf(r.Family, r.HolderLaddr, r.HolderLport),
			Options: OptionNames(uint16(r.HolderOptions)),
			SockIno: r.HolderIno,
		}
		if r.HolderDport != 0 {
			e.Holder.Remote = addrOf(r.Family, r.HolderDaddr, r.HolderDport)
		}
	}
	return e
}

// Raw copies a ring-buffer record into the generated struct, whose layout is
// the C one (structs.HostLayout): no reflection on the hot path.
func Raw(b []byte, out *gen.PortsleuthPsEvent) error {
	if len(b) < int(unsafe.Sizeof(*out)) {
		return fmt.Errorf("ring buffer record of %d bytes, want %d", len(b), unsafe.Sizeof(*out))
	}
	*out = *(*gen.PortsleuthPsEvent)(unsafe.Pointer(&b[0]))
	return nil
}
