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
)

// Backends lists the concrete backends in the order auto tries them.
var Backends = []Backend{FEntry, Kprobe, Tracepoint}

// ParseBackend checks a --backend value.
func ParseBackend(s string) (Backend, error) {
	switch b := Backend(s); b {
	case Auto, FEntry, Kprobe, Tracepoint:
		return b, nil
	}
	return "", fmt.Errorf("unknown backend %q: want auto, fentry, kprobe or tracepoint", s)
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
func (b Backend) hooks(spec *ebpf.CollectionSpec) []hook {
	var hs []hook
	for name, p := range spec.Programs {
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
		}
		hs = append(hs, h)
	}
	sort.Slice(hs, func(i, j int) bool { return hs[i].name < hs[j].name })
	return hs
}

func backendOf(p *ebpf.ProgramSpec) Backend {
	switch p.Type {
	case ebpf.TracePoint:
		return Tracepoint
	case ebpf.Tracing:
		return FEntry
	case ebpf.Kprobe:
		return Kprobe
	}
	return ""
}

// supported asks the feature API first; only its "yes" or "inconclusive"
// leads to the real load and attach that has the last word.
func (b Backend) supported() error {
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
