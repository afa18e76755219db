package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/features"
	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"github.com/portsleuth/portsleuth/internal/probe"
	"github.com/portsleuth/portsleuth/internal/procinfo"
)

// runDoctor says what this kernel lets portsleuth do, and which backend auto
// would pick. Exit 0 when some backend can trace.
func runDoctor(args []string, stdout, stderr io.Writer) error {
	fs := pflag.NewFlagSet("doctor", pflag.ContinueOnError)
	if err := parse(fs, args, stderr); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Sprintf("doctor takes no arguments, got %q", fs.Args())}
	}
	line := func(what, verdict string) { fmt.Fprintf(stdout, "%-31s %s\n", what+":", verdict) }

	var uts unix.Utsname
	if err := unix.Uname(&uts); err == nil {
		line("kernel", unix.ByteSliceToString(uts.Release[:]))
	}
	if _, err := os.Stat("/sys/kernel/btf/vmlinux"); err == nil {
		line("BTF", "yes (/sys/kernel/btf/vmlinux): CO-RE programs can load")
	} else {
		line("BTF", "NO: /sys/kernel/btf/vmlinux is missing (CONFIG_DEBUG_INFO_BTF off); portsleuth cannot load")
	}
	privErr := probe.CheckPrivileges()
	if privErr == nil {
		line("privileges", "yes")
	} else {
		line("privileges", "NO: "+privErr.Error())
	}
	line("capabilities", capabilityVerdict())
	line("ring buffer", featureVerdict(features.HaveMapType(ebpf.RingBuf)))
	for _, pt := range []struct {
		name string
		t    ebpf.ProgramType
	}{{"program type tracing", ebpf.Tracing}, {"program type kprobe", ebpf.Kprobe}, {"program type tracepoint", ebpf.TracePoint},
		{"program type cgroup_sock_addr", ebpf.CGroupSockAddr}} {
		line(pt.name, featureVerdict(features.HaveProgramType(pt.t)))
	}
	if root, err := procinfo.Cgroup2Mount(); err != nil {
		line("cgroup v2", "unknown: "+err.Error())
	} else if root == "" {
		line("cgroup v2", "not mounted (the cgroup backend mounts it itself)")
	} else {
		line("cgroup v2", "mounted at "+root+" (the cgroup backend attaches there)")
	}
	if _, err := os.Stat("/sys/bus/event_source/devices/kprobe"); err == nil {
		line("kprobes", "built in (kprobe PMU present)")
	} else {
		line("kprobes", "NOT built into this kernel (no kprobe PMU; CONFIG_KPROBES off)")
	}
	if privErr != nil {
		return fmt.Errorf("cannot try the backends without privileges: %w", privErr)
	}

	var pick probe.Backend
	var works []probe.Backend
	for _, b := range probe.Backends {
		err := probe.Try(b)
		if err == nil {
			works = append(works, b)
			line("backend "+string(b), "works (loaded and attached)")
			if pick == "" {
				pick = b
			}
			continue
		}
		line("backend "+string(b), "no: "+err.Error())
	}
	if pick == "" {
		return errors.New("no backend can trace on this kernel")
	}
	why := ""
	switch pick {
	case probe.Tracepoint:
		why = ": syscall tracepoints put every syscall of every task on the slow path while portsleuth runs"
	case probe.Kprobe:
		why = ": costs only the hooked calls, a little more than fentry"
	case probe.FEntry:
		why = ": costs only the hooked calls"
	case probe.Cgroup:
		why = ": costs only the hooked calls; errnos are inferred"
	}
	line("auto would use", string(pick)+why)
	var serve probe.Backend
	for _, b := range probe.LowOverhead {
		if slices.Contains(works, b) {
			serve = b
			break
		}
	}
	if serve == "" {
		line("serve would use", "nothing by itself: no low-overhead backend works (pass --backend tracepoint)")
	} else {
		line("serve would use", string(serve))
	}
	return nil
}

func featureVerdict(err error) string {
	switch {
	case err == nil:
		return "yes"
	case errors.Is(err, ebpf.ErrNotSupported):
		return "no"
	case errors.Is(err, unix.EPERM):
		return "refused by the kernel (EPERM)"
	default:
		return "unknown (" + err.Error() + ")"
	}
}

// capabilityVerdict says which capabilities the kernel checks for portsleuth
// this process holds, and what each is for; CAP_SYS_ADMIN stands in for the
// BPF ones.
func capabilityVerdict() string {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return "unknown: " + err.Error()
	}
	var parts []string
	for _, c := range []struct {
		bit       uint
		name, use string
	}{
		{unix.CAP_BPF, "CAP_BPF", "every program"},
		{unix.CAP_PERFMON, "CAP_PERFMON", "tracing programs"},
		{unix.CAP_NET_ADMIN, "CAP_NET_ADMIN", "the cgroup backend"},
		{unix.CAP_SYS_ADMIN, "CAP_SYS_ADMIN", "ports in other namespaces, mounting tracefs or cgroup2"},
	} {
		verdict := "no"
		if data[c.bit/32].Effective&(1<<(c.bit%32)) != 0 {
			verdict = "yes"
		}
		parts = append(parts, fmt.Sprintf("%s %s (%s)", c.name, verdict, c.use))
	}
	return strings.Join(parts, ", ")
}
