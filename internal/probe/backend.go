package probe

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// Backend names a family of hooks.
type Backend string

const (
	Auto Backend = "auto"
	// FEntry hooks kernel functions with fentry/fexit: costs only the hooked calls.
	FEntry Backend = "fentry"
	// Kprobe hooks the same functions with kprobe/kretprobe where fentry is refused.
	Kprobe Backend = "kprobe"
	// Tracepoint hooks syscalls:sys_{enter,exit}_{bind,connect}; enabling any
	// syscall tracepoint puts every syscall of every task on the slow path.
	Tracepoint Backend = "tracepoint"
	// Cgroup hooks the cgroup v2 root's sock_addr hooks and tp_btf
	// inet_sock_set_state: it costs only the calls it hooks, but sees no
	// return value, so the errno of a failure is inferred.
	Cgroup Backend = "cgroup"
)

// Backends lists the concrete backends in the order auto tries them: the
// syscall tracepoints see exact errnos and listen(), so an interactive
// session prefers them to the cgroup hooks.
var Backends = []Backend{FEntry, Kprobe, Tracepoint, Cgroup}

// LowOverhead lists the backends a continuous agent may pick by itself, in
// order: none of them taxes syscalls it does not trace.
var LowOverhead = []Backend{FEntry, Kprobe, Cgroup}

// Inferred says what a backend works out instead of seeing, for reports.
func (b Backend) Inferred() []string {
	if b != Cgroup {
		return nil
	}
	return []string{
		"errno of failed bind() and connect() calls: inferred (a bind that never reached post_bind failed; a connect failed when its socket went SYN_SENT -> CLOSE inside the call without entering the established hash)",
		"not seen: listen() failures, UDP connect() autobind failures (EAGAIN), TCP connects that fail before any port work (no route: not counted at all), binds refused by another cgroup BPF program",
	}
}

// ParseBackend checks a --backend value.
func ParseBackend(s string) (Backend, error) {
	switch b := Backend(s); b {
	case Auto, FEntry, Kprobe, Tracepoint, Cgroup:
		return b, nil
	}
	return "", fmt.Errorf("unknown backend %q: want auto, fentry, kprobe, tracepoint or cgroup", s)
}

// Hooks whose loss costs detail, not correctness: they explain why connect()
// found no port, per candidate port, and who holds a port bind() wanted.
var optionalHooks = map[string]bool{
	"__inet_check_established":  true,
	"__inet6_check_established": true,
	"tcp_twsk_unique":           true,
	"inet_bind_conflict":        true,
}

type hook struct {
	name     string // program name in the object
	what     string // for messages: "fexit/inet_bind"
	optional bool
	attach   func(*ebpf.Program) (link.Link, error)
}

// hooks lists the programs of backend b in the object, in a stable order.
// cgroupRoot is where the cgroup backend attaches.
func (b Backend) hooks(spec *ebpf.CollectionSpec, cgroupRoot string) []hook {
	var hs []hook
	for name, p := range spec.Programs {
		if name == forkProgram {
			// Present only when asked for (configure drops it otherwise).
			hs = append(hs, hook{name: name, what: p.SectionName, optional: true, attach: attachRawTp})
			continue
		}
		if name == closerProgram {
			// The cgroup backend's own state-change program records closers.
			if b != Cgroup {
				hs = append(hs, hook{name: name, what: p.SectionName, optional: true, attach: attachRawTp})
			}
			continue
		}
		if backendOf(p) != b {
			continue
		}
		h := hook{name: name, what: p.SectionName, optional: optionalHooks[p.AttachTo]}
		switch b {
		case Tracepoint:
			group, tp, _ := strings.Cut(strings.TrimPrefix(p.SectionName, "tracepoint/"), "/")
			h.attach = func(prog *ebpf.Program) (link.Link, error) {
				l, err := link.Tracepoint(group, tp, prog, nil)
				if errors.Is(err, os.ErrNotExist) {
					return nil, fmt.Errorf("tracepoint %s:%s does not exist on this kernel (CONFIG_FTRACE_SYSCALLS off?): %w", group, tp, err)
				}
				return l, err
			}
		case FEntry:
			at := p.AttachType
			h.attach = func(prog *ebpf.Program) (link.Link, error) {
				return link.AttachTracing(link.TracingOptions{Program: prog, AttachType: at})
			}
		case Kprobe:
			fn, ret := p.AttachTo, strings.HasPrefix(p.SectionName, "kretprobe/")
			h.attach = func(prog *ebpf.Program) (link.Link, error) {
				if ret {
					return link.Kretprobe(fn, prog, nil)
				}
				return link.Kprobe(fn, prog, nil)
			}
		case Cgroup:
			h.attach = cgroupAttach(p, cgroupRoot)
		}
		hs = append(hs, h)
	}
	sort.Slice(hs, func(i, j int) bool { return hs[i].name < hs[j].name })
	return hs
}

// closerProgram records who closed a connection first (its TIME_WAIT's
// owner) for the backends whose own hooks see no state change.
const closerProgram = "ps_closer"

func attachRawTp(prog *ebpf.Program) (link.Link, error) {
	return link.AttachTracing(link.TracingOptions{Program: prog, AttachType: ebpf.AttachTraceRawTp})
}

func backendOf(p *ebpf.ProgramSpec) Backend {
	switch p.Type {
	case ebpf.TracePoint:
		return Tracepoint
	case ebpf.Tracing:
		if p.AttachType == ebpf.AttachTraceRawTp {
			return Cgroup // tp_btf/inet_sock_set_state
		}
		return FEntry
	case ebpf.Kprobe:
		return Kprobe
	case ebpf.CGroupSockAddr, ebpf.CGroupSock, ebpf.RawTracepoint:
		return Cgroup
	}
	return ""
}

// cgroupAttach attaches one program of the cgroup backend. The sweeper
// (raw_tp, run by Go) is never attached.
func cgroupAttach(p *ebpf.ProgramSpec, root string) func(*ebpf.Program) (link.Link, error) {
	switch p.Type {
	case ebpf.RawTracepoint:
		return func(*ebpf.Program) (link.Link, error) { return nil, nil }
	case ebpf.Tracing:
		return attachRawTp
	}
	at := p.AttachType
	return func(prog *ebpf.Program) (link.Link, error) {
		return link.AttachCgroup(link.CgroupOptions{Path: root, Attach: at, Program: prog})
	}
}

// supported checks the capabilities the kernel will want, then asks the
// feature API; only its "yes" or "inconclusive" leads to the real load and
// attach that has the last word.
func (b Backend) supported() error {
	if err := b.checkCapabilities(); err != nil {
		return err
	}
	var pt ebpf.ProgramType
	switch b {
	case FEntry:
		pt = ebpf.Tracing
	case Kprobe:
		if _, err := os.Stat("/sys/bus/event_source/devices/kprobe"); err != nil {
			return errors.New("kprobes are not built into this kernel (no kprobe PMU; CONFIG_KPROBES off?)")
		}
		pt = ebpf.Kprobe
	case Tracepoint:
		pt = ebpf.TracePoint
	case Cgroup:
		pt = ebpf.CGroupSockAddr
	default:
		return fmt.Errorf("unknown backend %q", b)
	}
	err := features.HaveProgramType(pt)
	if errors.Is(err, ebpf.ErrNotSupported) {
		return fmt.Errorf("program type %s not supported by this kernel: %w", pt, err)
	}
	// nil, or inconclusive: the load below decides.
	return nil
}

// Try loads and attaches backend b for real, then detaches: the only honest
// answer to "does it work here".
func Try(b Backend) error {
	t, err := Start(Options{Backend: b})
	if err != nil {
		return err
	}
	return t.Close()
}

// mountFS makes sure the file system b attaches through is mounted: tracefs
// for the tracepoints, cgroup2 for the cgroup hooks. It returns the cgroup2
// root, and the mount portsleuth made itself, if any (nil otherwise).
func (b Backend) mountFS() (cgroupRoot string, m *ownMount, err error) {
	switch b {
	case Tracepoint:
		m, err = ensureTracefs()
	case Cgroup:
		cgroupRoot, m, err = cgroup2Root()
	}
	return cgroupRoot, m, err
}

// capability is one bit of the kernel's capability sets.
type capability struct {
	bit  uint
	name string
}

var (
	capBPF      = capability{unix.CAP_BPF, "CAP_BPF"}
	capPerfmon  = capability{unix.CAP_PERFMON, "CAP_PERFMON"}
	capNetAdmin = capability{unix.CAP_NET_ADMIN, "CAP_NET_ADMIN"}
	capSysAdmin = capability{unix.CAP_SYS_ADMIN, "CAP_SYS_ADMIN"}
)

// capabilities lists what the kernel checks to load and attach b's programs
// (kernel/bpf/syscall.c, bpf_prog_load): CAP_BPF for every program and map,
// CAP_PERFMON for the tracing types (tracepoint, kprobe, fentry, tp_btf,
// raw_tp), CAP_NET_ADMIN for cgroup sock_addr programs.
func (b Backend) capabilities() []capability {
	caps := []capability{capBPF, capPerfmon}
	if b == Cgroup {
		caps = append(caps, capNetAdmin)
	}
	return caps
}

// checkCapabilities fails with a PrivilegeError when this thread lacks a
// capability the kernel will check for b, before anything is loaded.
func (b Backend) checkCapabilities() error {
	lack, err := missingCapabilities(b.capabilities())
	if err != nil || len(lack) == 0 {
		return err
	}
	return &PrivilegeError{Step: "load " + b.programs(), Needed: names(b.capabilities()), Missing: lack, Err: unix.EPERM}
}

// programs names b's programs for messages.
func (b Backend) programs() string {
	if b == Cgroup {
		return "the cgroup backend's programs (cgroup sock_addr, tp_btf)"
	}
	return "the " + string(b) + " backend's tracing programs"
}

// missingCapabilities lists the capabilities of want that this thread's
// effective set lacks. CAP_SYS_ADMIN stands in for each of them, as the
// kernel's bpf_token_capable() lets it.
func missingCapabilities(want []capability) ([]string, error) {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return nil, fmt.Errorf("reading capabilities: %w", err)
	}
	has := func(c capability) bool { return data[c.bit/32].Effective&(1<<(c.bit%32)) != 0 }
	if has(capSysAdmin) {
		return nil, nil
	}
	var lack []string
	for _, c := range want {
		if !has(c) {
			lack = append(lack, c.name)
		}
	}
	return lack, nil
}

func names(caps []capability) []string {
	out := make([]string, len(caps))
	for i, c := range caps {
		out[i] = c.name
	}
	return out
}

// PrivilegeError is a step the kernel refuses for want of capabilities. It
// matches ErrPrivileges and names the capabilities that step needs.
type PrivilegeError struct {
	Step    string   // what was refused: "load the cgroup backend's programs"
	Needed  []string // every capability the kernel checks for the step
	Missing []string // the ones this process lacks
	Err     error    // the kernel's answer
}

func (e *PrivilegeError) Error() string {
	return fmt.Sprintf("cannot %s: the kernel wants %s (or root), and this process lacks %s: %s",
		e.Step, joinAnd(e.Needed), joinAnd(e.Missing), firstLine(e.Err.Error()))
}

// Is makes errors.Is(err, ErrPrivileges) hold, which callers map to exit 1.
func (e *PrivilegeError) Is(target error) bool { return target == ErrPrivileges }

func (e *PrivilegeError) Unwrap() error { return e.Err }

func joinAnd(s []string) string {
	if len(s) < 2 {
		return strings.Join(s, "")
	}
	return strings.Join(s[:len(s)-1], ", ") + " and " + s[len(s)-1]
}

// refused explains an EPERM from the kernel while b's programs were loaded or
// attached (step: "load ...", "attach ..."): missing capabilities when this
// process lacks one the kernel checks, otherwise what else refuses holders
// of every one of them. The library's text for EPERM ("MEMLOCK may be too
// low") would mislead, so only the errno is kept.
func refused(b Backend, step string) error {
	want := b.capabilities()
	lack, err := missingCapabilities(want)
	if err == nil && len(lack) > 0 {
		return &PrivilegeError{Step: step, Needed: names(want), Missing: lack, Err: unix.EPERM}
	}
	return fmt.Errorf("the kernel refused to %s although this process has %s: kernel lockdown, a security module (SELinux, AppArmor, BPF LSM) or a user namespace without the host's capabilities: %w",
		step, joinAnd(names(want)), unix.EPERM)
}
