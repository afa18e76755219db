// Package pressure measures the port pools the kernel allocates from, per
// network namespace: the bind(0) pool of each local address, and the connect()
// pool of each (source, destination address, destination port), with who
// holds the ports. It reads the socket tables with BPF iterators (iter/tcp,
// iter/udp) and aggregates the records as they stream in.
package pressure

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"

	"github.com/portsleuth/portsleuth/gen"
	"github.com/portsleuth/portsleuth/internal/event"
	"github.com/portsleuth/portsleuth/internal/netns"
)

// Namespace is the port pressure of one network namespace. JSON names are a
// contract (see README).
type Namespace struct {
	Netns           uint64        `json:"netns"`
	PIDs            []int         `json:"pids"`
	PortRange       [2]int        `json:"port_range"`
	Reserved        int           `json:"reserved"`
	TCPTwReuse      int           `json:"tcp_tw_reuse"`
	AutobindReuse   int           `json:"ip_autobind_reuse"`
	TCPMaxTWBuckets int           `json:"tcp_max_tw_buckets"`
	Sockets         int           `json:"sockets"`
	BindOwnedPorts  int           `json:"bind_owned_ports"`
	BindPools       []BindPool    `json:"bind_pools"`
	ConnectPools    []ConnectPool `json:"connect_pools"`
	Top             []Owner       `json:"top"`
	Verdict         string        `json:"verdict"`
	ScanSeconds     float64       `json:"scan_seconds"`
}

// BindPool is what bind(addr, 0) can still get: ports of the range with no
// owner on this address (or on the wildcard).
type BindPool struct {
	Proto       string  `json:"proto"`
	Local       string  `json:"local"`
	Used        int     `json:"used"`
	Free        int     `json:"free"`
	PercentUsed float64 `json:"percent_used"`
	// Owners hold the used ports, most first.
	Owners []Owner `json:"owners,omitempty"`
}

// ConnectPool is what connect() can still get toward one destination from one
// source address: the range, less reserved ports, less every port a bind() or
// listen() owner holds (those are skipped for every destination), less the
// sockets already in this 4-tuple space.
type ConnectPool struct {
	Local       string `json:"local"`
	Dest        string `json:"dest"`
	Established int    `json:"established"`
	TimeWait    int    `json:"time_wait"`
	Other       int    `json:"other"`
	// BindOwned counts the range's ports held by bind()/listen() owners
	// outside this 4-tuple space: connect() skips them for every destination.
	BindOwned int `json:"bind_owned"`
	Free      int `json:"free"`
	// Size is the range's ports less the reserved ones.
	Size        int     `json:"size"`
	PercentUsed float64 `json:"percent_used"`
	// TimeWaitLeft is the least and most time (seconds) a TIME_WAIT here has left.
	TimeWaitLeft [2]float64 `json:"time_wait_left_seconds"`
	Owners       []Owner    `json:"owners"`
}

// Owner is a process holding sockets. In a pool's owner list the counts say
// how it holds that pool's ports: BindOwner counts ports of the range it holds
// through a bind()/listen() owner (taken from every destination), the rest
// its other sockets in the pool by state. A TIME_WAIT socket has no process:
// it is counted for the process that closed the connection, when the tracer
// saw that close. PID 0 stands for sockets no process has open.
type Owner struct {
	PID         int    `json:"pid"`
	Comm        string `json:"comm"`
	Sockets     int    `json:"sockets"`
	BindOwner   int    `json:"bind_owner,omitempty"`
	Established int    `json:"established,omitempty"`
	TimeWait    int    `json:"time_wait,omitempty"`
	Other       int    `json:"other,omitempty"`
	// BindConnected counts its sockets that bind() gave a port and that then
	// connected (the bind-before-connect trap); BindConnectedAny those of them
	// bound to the wildcard address.
	BindConnected    int `json:"bind_connected,omitempty"`
	BindConnectedAny int `json:"bind_connected_any,omitempty"`
	// Master is the process it is a prefork worker of, when the report named one.
	Master int `json:"master,omitempty"`
	// Exited: it closed the connections of its TIME_WAITs and is gone (its
	// pid may belong to another process now); Start tells it apart.
	Exited bool   `json:"exited,omitempty"`
	Start  uint64 `json:"start_ns,omitempty"`
}

// Scanner holds the loaded iterators; one serves every namespace.
type Scanner struct {
	objs gen.PortsObjects
	tcp  *link.Iter
	udp  *link.Iter
	hz   float64
}

// NewScanner loads and attaches the iterators. closers, when not nil, is a
// tracer's map of who closed each connection first: TIME_WAIT sockets are
// then counted for those processes (without it they have no owner).
func NewScanner(closers *ebpf.Map) (*Scanner, error) {
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("raising the memlock limit: %w", err)
	}
	s := &Scanner{hz: kernelHZ()}
	var opts *ebpf.CollectionOptions
	if closers != nil {
		opts = &ebpf.CollectionOptions{MapReplacements: map[string]*ebpf.Map{"closers": closers}}
	}
	if err := gen.LoadPortsObjects(&s.objs, opts); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("loading the socket iterators: %+v", ve)
		}
		if errors.Is(err, unix.EPERM) {
			// BPF_PROG_LOAD checks CAP_BPF, and CAP_PERFMON for tracing programs such as iterators.
			return nil, fmt.Errorf("the kernel refused to load the socket iterators: they need CAP_BPF and CAP_PERFMON (or root): %w", unix.EPERM)
		}
		return nil, fmt.Errorf("loading the socket iterators (BPF iterators need 5.9+): %w", err)
	}
	var err error
	if s.tcp, err = link.AttachIter(link.IterOptions{Program: s.objs.PortsTcp}); err == nil {
		s.udp, err = link.AttachIter(link.IterOptions{Program: s.objs.PortsUdp})
	}
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("attaching the socket iterators: %w", err)
	}
	return s, nil
}

// Close releases the iterators.
func (s *Scanner) Close() error {
	var errs []error
	for _, l := range []*link.Iter{s.tcp, s.udp} {
		if l != nil {
			errs = append(errs, l.Close())
		}
	}
	errs = append(errs, s.objs.Close())
	return errors.Join(errs...)
}

// HolderQuery asks a scan for the sockets that own one port.
type HolderQuery struct {
	Proto string
	Addr  netip.Addr // the address a bind() wanted; overlaps equal and wildcard owners
	Port  uint16
	Found []event.Holder
}

// maxHolders bounds the holders a query keeps.
const maxHolders = 8

// Scan measures the namespace nsFD refers to. owners maps socket inodes to
// the pid that has them open (from Inodes); topN bounds every owner list.
func (s *Scanner) Scan(nsFD int, owners Inodes, topN int) (Namespace, error) {
	return s.ScanFor(nsFD, owners, topN, nil)
}

// ScanFor is Scan that also fills q with the owners of a port.
func (s *Scanner) ScanFor(nsFD int, owners Inodes, topN int, q *HolderQuery) (Namespace, error) {
	start := time.Now()
	sys, err := netns.ReadFD(nsFD)
	if err != nil {
		return Namespace{}, err
	}
	reserved := map[int]bool{}
	if sys.ReservedPorts != nil {
		if reserved, err = netns.ReservedSet(*sys.ReservedPorts); err != nil {
			return Namespace{}, err
		}
	}
	a := newAggregate(sys, reserved, owners)
	a.query = q
	// The iterators walk the namespace of the thread that opens them.
	err = netns.Do(nsFD, func() error {
		for _, it := range []*link.Iter{s.tcp, s.udp} {
			if err := a.read(it); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return Namespace{}, err
	}
	ns := a.result(topN, s.hz)
	ns.Netns = sys.Netns
	ns.ScanSeconds = time.Since(start).Seconds()
	return ns, nil
}

const recSize = int(unsafe.Sizeof(gen.PortsPsSock{}))

// read streams one iterator's records into the aggregate, a buffer at a time.
func (a *aggregate) read(it *link.Iter) error {
	rd, err := it.Open()
	if err != nil {
		return fmt.Errorf("opening the socket iterator: %w", err)
	}
	defer rd.Close()
	buf := make([]byte, 1024*recSize)
	have := 0
	for {
		n, err := rd.Read(buf[have:])
		have += n
		whole := have / recSize * recSize
		for off := 0; off < whole; off += recSize {
			a.add((*gen.PortsPsSock)(unsafe.Pointer(&buf[off])))
		}
		copy(buf, buf[whole:have])
		have -= whole
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("reading the socket iterator: %w", err)
		}
	}
}

func addrOf(family uint8, b [16]uint8) netip.Addr {
	if family == unix.AF_INET {
		return netip.AddrFrom4([4]byte(b[:4]))
	}
	return netip.AddrFrom16(b).Unmap()
}

func stateOf(r *gen.PortsPsSock) string {
	proto := "tcp"
	if r.Proto == unix.IPPROTO_UDP {
		proto = "udp"
	}
	return event.StateName(proto, r.State)
}

func top(counts map[int]int, n int, comm func(int) string) []Owner {
	owners := make([]Owner, 0, len(counts))
	for pid, c := range counts {
		owners = append(owners, Owner{PID: pid, Sockets: c})
	}
	slices.SortFunc(owners, func(a, b Owner) int { return cmp.Or(cmp.Compare(b.Sockets, a.Sockets), cmp.Compare(a.PID, b.PID)) })
	if len(owners) > n {
		owners = owners[:n]
	}
	for i := range owners {
		owners[i].Comm = comm(owners[i].PID)
	}
	return owners
}
