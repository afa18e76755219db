// Package probe loads portsleuth's BPF programs, attaches them, and reads what
// they produce: the ring buffer of failures and the in-kernel counters.
package probe

import (
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"

	"github.com/portsleuth/portsleuth/gen"
	"github.com/portsleuth/portsleuth/internal/decode"
	"github.com/portsleuth/portsleuth/internal/event"
	"github.com/portsleuth/portsleuth/internal/netns"
)

// ErrPrivileges means the caller may not load tracing programs.
var ErrPrivileges = errors.New("portsleuth needs root, or CAP_BPF and CAP_PERFMON, to load its BPF programs")

// Options tune what the programs trace.
type Options struct {
	// PID limits tracing to one process (thread-group id) inside the kernel; 0 traces all.
	PID uint32
	// Backend picks the hooks; Auto tries the backends of Order.
	Backend Backend
	// Order is what Auto tries, first that works wins; nil means Backends.
	Order []Backend
	// Command follows the process tree of the command this process is about
	// to start (report -- CMD): every process forked from it is marked.
	Command bool
	// FailEntries sizes the per-(process, class) failure table; 0 keeps its
	// size (65,536). Tests shrink it to reach its bound cheaply.
	FailEntries uint32
}

// Tracer owns the loaded programs, their links and the ring-buffer reader.
// Links stay referenced here until Close: an unreferenced link is closed by
// its finalizer and the program silently detaches.
type Tracer struct {
	maps    gen.PortsleuthMaps
	progs   []*ebpf.Program
	names   []string // program names, parallel to progs
	links   []link.Link
	rd      *ringbuf.Reader
	epoch   time.Time
	rec     ringbuf.Record
	backend Backend
	notes   []string
	sweeper *sweeper  // cgroup backend only
	tree    bool      // the command tree (ps_fork) is followed
	mount   *ownMount // tracefs or cgroup2, when portsleuth mounted it
}

// Start loads and attaches the programs of one backend. When it returns
// without error, every bind()/connect() from then on is traced.
func Start(opts Options) (*Tracer, error) {
	if err := CheckPrivileges(); err != nil {
		return nil, err
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("raising the memlock limit: %w", err)
	}
	spec, err := gen.LoadPortsleuth()
	if err != nil {
		return nil, fmt.Errorf("reading the embedded bpf object: %w", err)
	}
	if err := configure(spec, opts); err != nil {
		return nil, err
	}
	if opts.Backend != Auto && opts.Backend != "" {
		t, err := startBackend(spec, opts.Backend)
		if err != nil {
			return nil, err
		}
		return t, t.seedTree(opts)
	}
	order := opts.Order
	if order == nil {
		order = Backends
	}
	var skipped []string
	for _, b := range order {
		t, err := startBackend(spec.Copy(), b)
		if err == nil {
			if len(skipped) > 0 {
				t.notes = append([]string{"auto: " + strings.Join(skipped, "; ")}, t.notes...)
			}
			return t, t.seedTree(opts)
		}
		if errors.Is(err, ErrPrivileges) {
			return nil, err
		}
		skipped = append(skipped, fmt.Sprintf("%s: %v", b, err))
	}
	return nil, fmt.Errorf("no backend can trace on this kernel: %s", strings.Join(skipped, "; "))
}

func startBackend(spec *ebpf.CollectionSpec, b Backend) (_ *Tracer, err error) {
	if err := b.supported(); err != nil {
		return nil, err
	}
	cgroupRoot, mnt, err := b.mountFS()
	if err != nil {
		return nil, err
	}
	// A failed start leaves nothing mounted; a started one unmounts in Close.
	defer func() {
		if err != nil {
			mnt.release()
		}
	}()
	hooks := b.hooks(spec, cgroupRoot)
	t := &Tracer{epoch: event.MonotonicEpoch(), backend: b, mount: mnt}
	coll, err := load(spec, hooks, b)
	// An optional hook this kernel can't load must not cost the backend: drop
	// the one the loader names and try again.
	for err != nil {
		if errors.Is(err, unix.EPERM) {
			return nil, err // refused as a whole, not one hook
		}
		i := slices.IndexFunc(hooks, func(h hook) bool {
			return h.optional && strings.Contains(err.Error(), "program "+h.name+":")
		})
		if i < 0 {
			return nil, err
		}
		t.notes = append(t.notes, fmt.Sprintf("without %s: %s", hooks[i].what, firstLine(err.Error())))
		hooks = slices.Delete(slices.Clone(hooks), i, i+1)
		coll, err = load(spec, hooks, b)
	}
	defer coll.Close()
	if err := coll.Assign(&t.maps); err != nil {
		return nil, fmt.Errorf("assigning maps: %w", err)
	}
	for _, h := range hooks {
		prog := coll.DetachProgram(h.name)
		t.progs = append(t.progs, prog)
		t.names = append(t.names, h.name)
		l, err := h.attach(prog)
		if err != nil {
			if h.optional {
				t.notes = append(t.notes, fmt.Sprintf("skipped %s: %v", h.what, err))
				continue
			}
			t.Close()
			if errors.Is(err, unix.EPERM) {
				return nil, refused(b, "attach "+h.what)
			}
			return nil, fmt.Errorf("attaching %s: %w", h.what, err)
		}
		if l != nil {
			t.links = append(t.links, l)
		}
	}
	if b == Cgroup {
		prog := t.program("ps_sweep")
		if prog == nil {
			t.Close()
			return nil, errors.New("the cgroup backend's sweeper program is missing")
		}
		// A session's end decides what is still pending through it.
		if _, err := prog.Run(&ebpf.RunOptions{Context: []uint64{0, 0}}); err != nil {
			t.Close()
			return nil, fmt.Errorf("the kernel cannot test-run the cgroup backend's sweeper (raw_tp BPF_PROG_TEST_RUN): %w", err)
		}
		t.sweeper = &sweeper{prog: prog, pending: t.maps.PendingCalls}
	}
	t.rd, err = ringbuf.NewReader(t.maps.Events)
	if err != nil {
		t.Close()
		return nil, fmt.Errorf("opening the ring buffer: %w", err)
	}
	return t, nil
}

func firstLine(s string) string {
	first, _, _ := strings.Cut(s, "\n")
	return first
}

// load keeps only the programs of hooks and loads them with every map.
func load(spec *ebpf.CollectionSpec, hooks []hook, b Backend) (*ebpf.Collection, error) {
	spec = spec.Copy()
	keep := map[string]bool{}
	for _, h := range hooks {
		keep[h.name] = true
	}
	for name := range spec.Programs {
		if !keep[name] {
			delete(spec.Programs, name)
		}
	}
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("loading %s programs: %+v", b, ve)
		}
		if errors.Is(err, unix.EPERM) {
			return nil, refused(b, "load "+b.programs())
		}
		return nil, fmt.Errorf("loading %s programs: %w", b, err)
	}
	return coll, nil
}

// Backend is the layer the tracer hooks.
func (t *Tracer) Backend() Backend { return t.backend }

// Notes say why this backend was chosen and what it runs without.
func (t *Tracer) Notes() []string { return t.notes }

// forkProgram follows a traced command's process tree.
const forkProgram = "ps_fork"

// seedTree puts this process at the root of the tree ps_fork follows: it
// starts only the traced command. A start of 0 matches any (this pid stays
// ours while we run).
func (t *Tracer) seedTree(opts Options) error {
	if !opts.Command || t.program(forkProgram) == nil {
		return nil
	}
	if err := t.maps.Tree.Put(uint32(os.Getpid()), uint64(0)); err != nil {
		t.Close()
		return fmt.Errorf("seeding the command tree: %w", err)
	}
	t.tree = true
	return nil
}

// configure sets the programs' read-only globals before load.
func configure(spec *ebpf.CollectionSpec, opts Options) error {
	if !opts.Command {
		delete(spec.Programs, forkProgram)
	}
	if opts.FailEntries != 0 {
		spec.Maps["fail_counts"].MaxEntries = opts.FailEntries
	}
	if err := spec.Variables[gen.PortsleuthVarTargetPid].Set(opts.PID); err != nil {
		return fmt.Errorf("setting target_pid: %w", err)
	}
	bits, err := inetFlagBits()
	if err != nil {
		return err
	}
	for name, bit := range bits {
		if err := spec.Variables[name].Set(bit); err != nil {
			return fmt.Errorf("setting %s: %w", name, err)
		}
	}
	return nil
}

// inetFlagBits reads the bit numbers of inet_sock.inet_flags (6.6+) from the
// kernel's BTF; the enum that names them is anonymous and its values moved
// between releases. Kernels before 6.6 have no such enum and need none.
func inetFlagBits() (map[string]uint32, error) {
	want := map[string]string{
		"INET_FLAGS_FREEBIND":             gen.PortsleuthVarInetFlagsFreebindBit,
		"INET_FLAGS_TRANSPARENT":          gen.PortsleuthVarInetFlagsTransparentBit,
		"INET_FLAGS_BIND_ADDRESS_NO_PORT": gen.PortsleuthVarInetFlagsBindNoPortBit,
	}
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		return nil, fmt.Errorf("kernel BTF is required for CO-RE (CONFIG_DEBUG_INFO_BTF, /sys/kernel/btf/vmlinux): %w", err)
	}
	bits := map[string]uint32{}
	for typ, err := range spec.All() {
		if err != nil {
			return nil, fmt.Errorf("reading kernel BTF: %w", err)
		}
		enum, ok := typ.(*btf.Enum)
		if !ok || enum.Name != "" {
			continue
		}
		for _, v := range enum.Values {
			if name, ok := want[v.Name]; ok {
				bits[name] = uint32(v.Value)
			}
		}
		if len(bits) == len(want) {
			break
		}
	}
	return bits, nil
}

// CheckPrivileges reports whether this process may load tracing programs.
func CheckPrivileges() error {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("reading capabilities: %w", err)
	}
	has := func(c uint) bool { return data[c/32].Effective&(1<<(c%32)) != 0 }
	if has(unix.CAP_SYS_ADMIN) || (has(unix.CAP_BPF) && has(unix.CAP_PERFMON)) {
		return nil
	}
	return ErrPrivileges
}

// Read blocks until the next failure arrives, the deadline passes
// (os.ErrDeadlineExceeded) or the tracer is closed (ErrClosed).
func (t *Tracer) Read() (event.Event, error) {
	if err := t.rd.ReadInto(&t.rec); err != nil {
		if errors.Is(err, ringbuf.ErrClosed) {
			return event.Event{}, ErrClosed
		}
		return event.Event{}, err
	}
	var raw gen.PortsleuthPsEvent
	if err := decode.Raw(t.rec.RawSample, &raw); err != nil {
		return event.Event{}, err
	}
	return decode.Event(&raw, t.epoch), nil
}

// ErrClosed is returned by Read after Close.
var ErrClosed = errors.New("tracer closed")

// SetDeadline bounds the next Read; a zero time waits forever.
func (t *Tracer) SetDeadline(d time.Time) { t.rd.SetDeadline(d) }

// Pending is how many bytes wait in the ring buffer.
func (t *Tracer) Pending() int { return t.rd.AvailableBytes() }

// program returns the loaded program called name, or nil.
func (t *Tracer) program(name string) *ebpf.Program {
	if i := slices.Index(t.names, name); i >= 0 {
		return t.progs[i]
	}
	return nil
}

// Close detaches every program and frees the maps.
func (t *Tracer) Close() error {
	var errs []error
	t.sweeper = nil
	if t.rd != nil {
		errs = append(errs, t.rd.Close())
		t.rd = nil
	}
	for _, l := range t.links {
		errs = append(errs, l.Close())
	}
	t.links = nil
	for _, p := range t.progs {
		errs = append(errs, p.Close())
	}
	t.progs = nil
	errs = append(errs, t.maps.Close())
	// Detached first: nothing of ours is left under the mount.
	errs = append(errs, t.mount.release())
	return errors.Join(errs...)
}

// Snapshot reads the in-kernel counters.
func (t *Tracer) Snapshot() (event.Snapshot, error) {
	s := event.Snapshot{
		Procs:        map[event.ProcKey]event.ProcStats{},
		Meta:         map[event.ProcKey]event.ProcMeta{},
		Failures:     map[event.ProcKey]map[event.Class]uint64{},
		Unattributed: map[event.Class]uint64{},
		Netns:        map[uint64]netns.Sysctls{},
	}
	// The failure counts first, then what explains them: the kernel records
	// who failed (proc_meta) before it counts the failure, and the call
	// counters that classify a failure (bind(0) then connect, say) were
	// counted by earlier calls. Read in this order, every failure finds its
	// record and its history; in the other, a failure made between the
	// reads came without either (named "unknown", or classified wrongly).
	var key gen.PortsleuthPsFailKey
	var n uint64
	it := t.maps.FailCounts.Iterate()
	for it.Next(&key, &n) {
		p := event.ProcKey{PID: key.Pid, Start: key.StartNs}
		m := s.Failures[p]
		if m == nil {
			m = map[event.Class]uint64{}
			s.Failures[p] = m
		}
		m[decode.Class(key)] += n
	}
	if err := it.Err(); err != nil {
		return s, fmt.Errorf("reading fail_counts: %w", err)
	}
	it = t.maps.FailOverflow.Iterate()
	for it.Next(&key, &n) {
		s.Unattributed[decode.Class(key)] += n
	}
	if err := it.Err(); err != nil {
		return s, fmt.Errorf("reading fail_overflow: %w", err)
	}
	var pk gen.PortsleuthPsProcKey
	var st gen.PortsleuthPsProcStats
	it = t.maps.ProcStats.Iterate()
	for it.Next(&pk, &st) {
		s.Procs[procKey(pk)] = statsOf(&st)
	}
	// Call counters are an LRU that every process on the host enters: on a
	// busy host an eviction can abort the walk. What was read stands; the
	// failure counts above are read whole.
	if err := it.Err(); err != nil && !errors.Is(err, ebpf.ErrIterationAborted) {
		return s, fmt.Errorf("reading proc_stats: %w", err)
	}
	var meta gen.PortsleuthPsProcMeta
	it = t.maps.ProcMeta.Iterate()
	for it.Next(&pk, &meta) {
		if meta.Flags&uint32(gen.PortsleuthPsMetaFlagPS_META_FILLED) == 0 {
			continue // created, not filled in yet: the next read has it
		}
		s.Meta[procKey(pk)] = event.ProcMeta{
			Comm: decode.CString(meta.Comm[:]), Cmdline: decode.Cmdline(meta.Args[:]),
			Netns: meta.Netns, CgroupID: meta.CgroupId,
			Parent:    event.ProcKey{PID: meta.Ppid, Start: meta.ParentStartNs},
			InCommand: meta.Flags&uint32(gen.PortsleuthPsMetaFlagPS_META_IN_COMMAND) != 0,
		}
	}
	if err := it.Err(); err != nil {
		return s, fmt.Errorf("reading proc_meta: %w", err)
	}
	if t.tree {
		s.Tree = map[event.ProcKey]bool{}
		self := uint32(os.Getpid())
		var tgid uint32
		var start uint64
		it = t.maps.Tree.Iterate()
		for it.Next(&tgid, &start) {
			if tgid != self {
				s.Tree[event.ProcKey{PID: tgid, Start: start}] = true
			}
		}
		if err := it.Err(); err != nil {
			return s, fmt.Errorf("reading the command tree: %w", err)
		}
	}
	var inum uint64
	var ns gen.PortsleuthPsNetns
	it = t.maps.NetnsInfo.Iterate()
	for it.Next(&inum, &ns) {
		s.Netns[inum] = sysctlsOf(inum, &ns)
	}
	if err := it.Err(); err != nil {
		return s, fmt.Errorf("reading netns_info: %w", err)
	}
	var err error
	if s.Lost, err = t.Lost(); err != nil {
		return s, err
	}
	s.Untracked, err = sumPerCPU(t.maps.Untracked, "untracked")
	return s, err
}

// ProcStats reads one process's counters; a process with no calls yet has zeros.
func (t *Tracer) ProcStats(p event.ProcKey) event.ProcStats {
	var st gen.PortsleuthPsProcStats
	if err := t.maps.ProcStats.Lookup(gen.PortsleuthPsProcKey{Pid: p.PID, StartNs: p.Start}, &st); err != nil {
		return event.ProcStats{}
	}
	return statsOf(&st)
}

// Closers is the map of who closed each connection first, for the
// port-pressure iterators to name the owners of TIME_WAIT sockets.
func (t *Tracer) Closers() *ebpf.Map { return t.maps.Closers }

// Lost is how many failures found the ring buffer full so far.
func (t *Tracer) Lost() (uint64, error) { return sumPerCPU(t.maps.Lost, "lost") }

// sumPerCPU reads index 0 of a per-CPU counter array.
func sumPerCPU(m *ebpf.Map, name string) (uint64, error) {
	var perCPU []uint64
	if err := m.Lookup(uint32(0), &perCPU); err != nil {
		return 0, fmt.Errorf("reading %s: %w", name, err)
	}
	var n uint64
	for _, v := range perCPU {
		n += v
	}
	return n, nil
}

func procKey(k gen.PortsleuthPsProcKey) event.ProcKey {
	return event.ProcKey{PID: k.Pid, Start: k.StartNs}
}

func statsOf(st *gen.PortsleuthPsProcStats) event.ProcStats {
	return event.ProcStats{
		BindsOK: st.BindsOk, BindsFailed: st.BindsFailed, BindsOther: st.BindsOther,
		ConnectsOK: st.ConnectsOk, ConnectsFailed: st.ConnectsFailed, ConnectsOther: st.ConnectsOther,
		Port0BindsOK: st.Port0BindsOk, Port0BindConnects: st.Port0BindConnects,
		ConnectTWBlocked: st.ConnectTwBlocked, ConnectEstBlocked: st.ConnectEstBlocked,
		ListensOK: st.ListensOk, ListensFailed: st.ListensFailed,
	}
}

func sysctlsOf(inum uint64, ns *gen.PortsleuthPsNetns) netns.Sysctls {
	autobind := int(ns.IpAutobindReuse)
	if ns.IpAutobindReuse == 0xff {
		autobind = -1
	}
	return netns.Sysctls{
		Netns:         inum,
		PortRange:     [2]int{int(ns.PortLo), int(ns.PortHi)},
		TCPTwReuse:    int(ns.TcpTwReuse),
		AutobindReuse: autobind,
		TCPTimestamps: int(ns.TcpTimestamps),
		NonlocalBind:  int(ns.IpNonlocalBind),
		MaxTWBuckets:  -1, // not read by BPF
		Source:        "kernel",
		Cookie:        ns.Cookie,
	}
}

// ProgramStats reads each program's run time and count. They stay zero unless
// BPF stats are enabled (ebpf.EnableStats, or kernel.bpf_stats_enabled=1).
func (t *Tracer) ProgramStats() (map[string]event.ProgramStats, error) {
	return programStats(t.progs, t.names)
}

func programStats(progs []*ebpf.Program, names []string) (map[string]event.ProgramStats, error) {
	out := make(map[string]event.ProgramStats, len(progs))
	for i, p := range progs {
		st, err := p.Stats()
		if err != nil {
			return nil, fmt.Errorf("reading stats of %s: %w", names[i], err)
		}
		out[names[i]] = event.ProgramStats{Runtime: st.Runtime, RunCount: st.RunCount}
	}
	return out, nil
}

// EnableRunTimeStats has the kernel count every BPF program's run time and
// runs until the returned Closer is closed (it costs a clock read per run).
func EnableRunTimeStats() (io.Closer, error) {
	c, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		return nil, fmt.Errorf("enabling BPF run-time statistics: %w", err)
	}
	return c, nil
}

// Forget deletes the kernel's records of processes that are gone and whose
// counts the caller has folded in: the failure tables never evict, so a
// long-running agent makes room this way.
func (t *Tracer) Forget(gone map[event.ProcKey]bool) error {
	if len(gone) == 0 {
		return nil
	}
	var key gen.PortsleuthPsFailKey
	var n uint64
	var keys []gen.PortsleuthPsFailKey
	it := t.maps.FailCounts.Iterate()
	for it.Next(&key, &n) {
		if gone[event.ProcKey{PID: key.Pid, Start: key.StartNs}] {
			keys = append(keys, key)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("reading fail_counts: %w", err)
	}
	var errs []error
	for _, k := range keys {
		if err := t.maps.FailCounts.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, err)
		}
	}
	for p := range gone {
		k := gen.PortsleuthPsProcKey{Pid: p.PID, StartNs: p.Start}
		for _, m := range []*ebpf.Map{t.maps.ProcMeta, t.maps.ProcStats} {
			if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				errs = append(errs, err)
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("forgetting processes: %w", err)
	}
	return nil
}
