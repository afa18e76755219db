// Package pressure measures the port pools the kernel allocates from, per
// network namespace (the model and its arithmetic are internal/pools): it
// reads the socket tables with BPF iterators (iter/tcp, iter/udp), hands the
// records to a pools.Aggregate as they stream in, and enriches failures with
// what a scan of their namespace tells.
package pressure

import (
	"errors"
	"fmt"
	"io"
	"math"
	"net/netip"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"

	"github.com/portsleuth/portsleuth/gen"
	"github.com/portsleuth/portsleuth/internal/decode"
	"github.com/portsleuth/portsleuth/internal/event"
	"github.com/portsleuth/portsleuth/internal/netns"
	"github.com/portsleuth/portsleuth/internal/pools"
	"github.com/portsleuth/portsleuth/internal/procinfo"
)

// Scanner holds the loaded iterators; one serves every namespace.
type Scanner struct {
	objs gen.PortsObjects
	tcp  *link.Iter
	udp  *link.Iter
	hz   float64
}

// Closers is a tracer's map of who closed each connection first
// (probe.Tracer.Closers): named here so that the layers above pass it on
// without knowing BPF types.
type Closers = *ebpf.Map

// NewScanner loads and attaches the iterators. closers, when not nil, is a
// tracer's map of who closed each connection first: TIME_WAIT sockets are
// then counted for those processes (without it they have no owner).
func NewScanner(closers Closers) (*Scanner, error) {
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

// Scan measures the namespace nsFD refers to. owners maps socket inodes to
// the pid that has them open (from Inodes); topN bounds every owner list.
func (s *Scanner) Scan(nsFD int, owners procinfo.Inodes, topN int) (pools.Namespace, error) {
	return s.ScanFor(nsFD, owners, topN, nil)
}

// ScanFor is Scan that also fills q with the owners of a port.
func (s *Scanner) ScanFor(nsFD int, owners procinfo.Inodes, topN int, q *pools.HolderQuery) (pools.Namespace, error) {
	start := time.Now()
	sys, err := netns.ReadFD(nsFD)
	if err != nil {
		return pools.Namespace{}, err
	}
	reserved := map[int]bool{}
	if sys.ReservedPorts != nil {
		if reserved, err = netns.ReservedSet(*sys.ReservedPorts); err != nil {
			return pools.Namespace{}, err
		}
	}
	a := pools.New(sys, reserved, owners)
	a.Query = q
	// The iterators walk the namespace of the thread that opens them.
	err = netns.Do(nsFD, func() error {
		for _, it := range []*link.Iter{s.tcp, s.udp} {
			if err := read(it, a); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return pools.Namespace{}, err
	}
	ns := a.Result(topN, s.hz)
	ns.Netns, ns.Cookie = sys.Netns, sys.Cookie
	ns.ScanSeconds = time.Since(start).Seconds()
	return ns, nil
}

const recSize = int(unsafe.Sizeof(gen.PortsPsSock{}))

// read streams one iterator's records into the aggregate, a buffer at a time.
func read(it *link.Iter, a *pools.Aggregate) error {
	rd, err := it.Open()
	if err != nil {
		return fmt.Errorf("opening the socket iterator: %w", err)
	}
	defer rd.Close()
	buf := make([]byte, 1024*recSize)
	have := 0
	var sock pools.Sock
	for {
		n, err := rd.Read(buf[have:])
		have += n
		whole := have / recSize * recSize
		for off := 0; off < whole; off += recSize {
			sockOf((*gen.PortsPsSock)(unsafe.Pointer(&buf[off])), &sock)
			a.Add(&sock)
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

// sockOf decodes an iterator record (struct ps_sock).
func sockOf(r *gen.PortsPsSock, s *pools.Sock) {
	proto := "tcp"
	if r.Proto == unix.IPPROTO_UDP {
		proto = "udp"
	}
	*s = pools.Sock{
		Ino: r.Ino, TWJiffies: r.TwJiffies,
		Local: addrOf(r.Family, r.Laddr), Remote: addrOf(r.Family, r.Raddr),
		LPort: r.Lport, RPort: r.Rport,
		Proto: proto, State: event.StateName(proto, r.State),
		BindOwner: r.BindOwner != 0,
		Options:   decode.OptionNames(uint16(r.Options)),
	}
	if r.CloserPid != 0 {
		s.CloserPID, s.CloserStart, s.CloserComm = int(r.CloserPid), r.CloserStartNs, decode.CString(r.CloserComm[:])
	}
}

func addrOf(family uint8, b [16]uint8) netip.Addr {
	if family == unix.AF_INET {
		return netip.AddrFrom4([4]byte(b[:4]))
	}
	return netip.AddrFrom16(b).Unmap()
}

// kernelHZ is CONFIG_HZ, to turn TIME_WAIT jiffies into seconds: the coarse
// clocks advance once per tick, so their resolution is 1/HZ. 0 if unknown.
func kernelHZ() float64 {
	var ts unix.Timespec
	if err := unix.ClockGetres(unix.CLOCK_MONOTONIC_COARSE, &ts); err != nil || ts.Nano() <= 0 {
		return 0
	}
	return math.Round(1e9 / float64(ts.Nano()))
}
