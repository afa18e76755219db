package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"github.com/portsleuth/portsleuth/internal/netns"
	"github.com/portsleuth/portsleuth/internal/pools"
	"github.com/portsleuth/portsleuth/internal/pressure"
	"github.com/portsleuth/portsleuth/internal/probe"
	"github.com/portsleuth/portsleuth/internal/procinfo"
	"github.com/portsleuth/portsleuth/internal/term"
)

// runPorts measures the port pools of one or every network namespace.
func runPorts(args []string, stdout, stderr io.Writer) error {
	var target, output string
	var topN int
	fs := pflag.NewFlagSet("ports", pflag.ContinueOnError)
	fs.StringVar(&target, "netns", "all", "a pid, a namespace path (/run/netns/x, /proc/PID/task/TID/ns/net), or all namespaces that have processes")
	fs.StringVarP(&output, "output", "o", "text", "output format: text or json")
	fs.IntVar(&topN, "top", 5, "owners to list per pool and per namespace")
	if err := parse(fs, args, stderr); err != nil {
		return err
	}
	if output != "text" && output != "json" {
		return usageError{fmt.Sprintf("invalid value %q for -o/--output: want text or json", output)}
	}
	if topN < 1 {
		return usageError{fmt.Sprintf("invalid --top %d: must be at least 1", topN)}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Sprintf("ports takes no arguments, got %q", fs.Args())}
	}
	// A bad --netns is a usage error, found before anything loads.
	targets, skipped, err := namespaces(target)
	if err != nil {
		return err
	}
	defer func() {
		for _, t := range targets {
			t.f.Close()
		}
	}()
	if err := probe.CheckPrivileges(); err != nil {
		return err
	}
	sc, err := pressure.NewScanner(nil)
	if err != nil {
		return err
	}
	defer sc.Close()
	nss, failed := scanNamespaces(context.Background(), sc, targets, procinfo.SocketInodes(), topN)
	out := portsOutput{Namespaces: append([]pools.Namespace{}, nss...), Skipped: append(append([]skippedNetns{}, skipped...), failed...)}
	if err := writePortsOutput(stdout, output, out); err != nil {
		return err
	}
	if len(out.Namespaces) == 0 && len(out.Skipped) > 0 {
		return fmt.Errorf("no network namespace could be read (%d skipped; the first: %s)", len(out.Skipped), out.Skipped[0].Reason)
	}
	return nil
}

// portsOutput is what ports prints. JSON names are a contract (see README).
type portsOutput struct {
	Namespaces []pools.Namespace `json:"namespaces"`
	Skipped    []skippedNetns    `json:"skipped"`
}

// skippedNetns is a namespace ports could not read, and why: the reason
// names the capability the kernel wanted when one was missing.
type skippedNetns struct {
	Netns  uint64 `json:"netns"` // 0 when even its id could not be read
	PIDs   []int  `json:"pids"`
	Reason string `json:"reason"`
}

func writePortsOutput(w io.Writer, format string, out portsOutput) error {
	if format == "json" {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(out)
	}
	for _, ns := range out.Namespaces {
		writePorts(w, ns)
	}
	for _, s := range out.Skipped {
		if s.Netns == 0 {
			fmt.Fprintf(w, "pids %s (namespace unknown): skipped: %s\n", pidList(s.PIDs), s.Reason)
			continue
		}
		fmt.Fprintf(w, "netns %d (pids %s): skipped: %s\n", s.Netns, pidList(s.PIDs), s.Reason)
	}
	return nil
}

type nsTarget struct {
	inode uint64
	f     *os.File
	pids  []int
}

// namespaces opens the namespaces to scan: one named, or every one that has
// a process. A --netns that names no process or no network namespace is a
// usage error; a namespace that exists but can't be opened is skipped.
func namespaces(target string) ([]nsTarget, []skippedNetns, error) {
	if target == "all" {
		t, s := allNamespaces()
		return t, s, nil
	}
	path, pids := target, []int{}
	if pid, err := strconv.Atoi(target); err == nil {
		if pid <= 0 {
			return nil, nil, usageError{fmt.Sprintf("invalid value %q for --netns: not a pid", target)}
		}
		path, pids = fmt.Sprintf("/proc/%d/ns/net", pid), []int{pid}
	}
	t, err := openTarget(path, pids)
	switch {
	case err == nil:
		return []nsTarget{t}, nil, nil
	case errors.Is(err, netns.ErrNotNetns):
		return nil, nil, usageError{fmt.Sprintf("invalid value %q for --netns: not a network namespace", target)}
	case errors.Is(err, os.ErrNotExist) && len(pids) == 1:
		return nil, nil, usageError{fmt.Sprintf("invalid value %q for --netns: no process %d", target, pids[0])}
	case errors.Is(err, os.ErrNotExist):
		return nil, nil, usageError{fmt.Sprintf("invalid value %q for --netns: no such file", target)}
	}
	return nil, []skippedNetns{{PIDs: pids, Reason: openReason(path, err)}}, nil
}

func openTarget(path string, pids []int) (nsTarget, error) {
	f, err := netns.Open(path)
	if err != nil {
		return nsTarget{}, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		f.Close()
		return nsTarget{}, fmt.Errorf("stat %s: %w", path, err)
	}
	return nsTarget{inode: st.Ino, f: f, pids: pids}, nil
}

// openReason says why a namespace file could not be opened.
func openReason(path string, err error) string {
	if errors.Is(err, os.ErrPermission) && strings.HasPrefix(path, "/proc/") {
		// ptrace_may_access(PTRACE_MODE_READ_FSCREDS) guards /proc/PID/ns.
		return fmt.Sprintf("opening %s needs ptrace read access: CAP_SYS_PTRACE, or the same user, a dumpable process and every capability it has: %v", path, err)
	}
	return fmt.Sprintf("opening %s: %v", path, err)
}

// allNamespaces opens every network namespace that has a process, one
// target per namespace. Processes whose namespace can't be told are skipped
// together; processes that exit meanwhile are forgotten.
func allNamespaces() ([]nsTarget, []skippedNetns) {
	byInode := map[uint64][]int{}
	var hidden []int
	var hiddenErr error
	for _, pid := range procinfo.PIDs() {
		var st unix.Stat_t
		err := unix.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &st)
		switch {
		case err == nil:
			byInode[st.Ino] = append(byInode[st.Ino], pid)
		case errors.Is(err, unix.EACCES) || errors.Is(err, unix.EPERM):
			hidden = append(hidden, pid)
			hiddenErr = err
		}
	}
	var out []nsTarget
	var skipped []skippedNetns
	for inode, pids := range byInode {
		slices.Sort(pids)
		path := fmt.Sprintf("/proc/%d/ns/net", pids[0])
		t, err := openTarget(path, pids)
		switch {
		case err == nil:
			out = append(out, t)
		case !errors.Is(err, os.ErrNotExist): // else the process went away
			skipped = append(skipped, skippedNetns{Netns: inode, PIDs: pids, Reason: openReason(path, err)})
		}
	}
	slices.SortFunc(out, func(a, b nsTarget) int { return a.pids[0] - b.pids[0] })
	slices.SortFunc(skipped, func(a, b skippedNetns) int { return a.PIDs[0] - b.PIDs[0] })
	if len(hidden) > 0 {
		skipped = append(skipped, skippedNetns{PIDs: hidden, Reason: openReason("/proc/PID/ns/net", hiddenErr)})
	}
	return out, skipped
}

func writePorts(w io.Writer, ns pools.Namespace) {
	var b strings.Builder
	fmt.Fprintf(&b, "netns %d (pids %s): %d sockets, scanned in %.3fs\n", ns.Netns, pidList(ns.PIDs), ns.Sockets, ns.ScanSeconds)
	fmt.Fprintf(&b, "  verdict: %s\n", ns.Verdict)
	fmt.Fprintf(&b, "  range %d-%d, %d reserved, tcp_tw_reuse %d, ip_autobind_reuse %d, tcp_max_tw_buckets %d; %d ports held by bind()/listen() owners\n",
		ns.PortRange[0], ns.PortRange[1], ns.Reserved, ns.TCPTwReuse, ns.AutobindReuse, ns.TCPMaxTWBuckets, ns.BindOwnedPorts)
	for _, p := range ns.BindPools {
		fmt.Fprintf(&b, "  bind(0) %s %-15s %6d used %6d free  %5.1f%%\n", p.Proto, p.Local, p.Used, p.Free, p.PercentUsed)
	}
	for _, p := range ns.ConnectPools {
		fmt.Fprintf(&b, "  connect %s -> %s: %d established, %d TIME_WAIT, %d other, %d free  %5.1f%%",
			p.Local, p.Dest, p.Established, p.TimeWait, p.Other, p.Free, p.PercentUsed)
		if p.TimeWait > 0 && p.TimeWaitLeft[1] > 0 {
			fmt.Fprintf(&b, " (TIME_WAIT ends in %.0f-%.0fs)", p.TimeWaitLeft[0], p.TimeWaitLeft[1])
		}
		for _, o := range p.Owners {
			fmt.Fprintf(&b, "; pid %d %s: %d", o.PID, term.Escape(o.Comm), o.Sockets)
		}
		b.WriteString("\n")
	}
	for _, o := range ns.Top {
		fmt.Fprintf(&b, "  top: pid %d %s holds %d sockets\n", o.PID, term.Escape(o.Comm), o.Sockets)
	}
	io.WriteString(w, b.String())
}

func pidList(pids []int) string {
	if len(pids) == 0 {
		return "none"
	}
	parts := make([]string, 0, 5)
	for i, p := range pids {
		if i == 5 {
			parts = append(parts, fmt.Sprintf("... %d more", len(pids)-5))
			break
		}
		parts = append(parts, strconv.Itoa(p))
	}
	return strings.Join(parts, ",")
}
