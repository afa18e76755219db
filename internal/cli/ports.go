package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"github.com/portsleuth/portsleuth/internal/pressure"
	"github.com/portsleuth/portsleuth/internal/probe"
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
	if err := probe.CheckPrivileges(); err != nil {
		return err
	}
	targets, err := namespaces(target)
	if err != nil {
		return err
	}
	defer func() {
		for _, t := range targets {
			t.f.Close()
		}
	}()
	sc, err := pressure.NewScanner()
	if err != nil {
		return err
	}
	defer sc.Close()
	owners := pressure.ScanInodes()
	out := struct {
		Namespaces []pressure.Namespace `json:"namespaces"`
	}{Namespaces: []pressure.Namespace{}}
	for _, t := range targets {
		ns, err := sc.Scan(int(t.f.Fd()), owners, topN)
		if err != nil {
			return fmt.Errorf("netns %d: %w", t.inode, err)
		}
		ns.PIDs = t.pids
		out.Namespaces = append(out.Namespaces, ns)
	}
	if output == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(out)
	}
	for _, ns := range out.Namespaces {
		writePorts(stdout, ns)
	}
	return nil
}

type nsTarget struct {
	inode uint64
	f     *os.File
	pids  []int
}

// namespaces opens the namespaces to scan: one named, or every one that has a process.
func namespaces(target string) ([]nsTarget, error) {
	open := func(path string, pids []int) (nsTarget, error) {
		f, err := os.Open(path)
		if err != nil {
			return nsTarget{}, fmt.Errorf("opening network namespace %s: %w", path, err)
		}
		var st unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &st); err != nil {
			f.Close()
			return nsTarget{}, err
		}
		return nsTarget{inode: st.Ino, f: f, pids: pids}, nil
	}
	if target != "all" {
		if pid, err := strconv.Atoi(target); err == nil {
			t, err := open(fmt.Sprintf("/proc/%d/ns/net", pid), []int{pid})
			return []nsTarget{t}, err
		}
		t, err := open(target, []int{})
		return []nsTarget{t}, err
	}
	byInode := map[uint64][]int{}
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		var st unix.Stat_t
		if unix.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &st) == nil {
			byInode[st.Ino] = append(byInode[st.Ino], pid)
		}
	}
	var out []nsTarget
	for _, pids := range byInode {
		slices.Sort(pids)
		t, err := open(fmt.Sprintf("/proc/%d/ns/net", pids[0]), pids)
		if err != nil {
			continue // the process went away
		}
		out = append(out, t)
	}
	slices.SortFunc(out, func(a, b nsTarget) int { return a.pids[0] - b.pids[0] })
	return out, nil
}

func writePorts(w io.Writer, ns pressure.Namespace) {
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
			fmt.Fprintf(&b, "; pid %d %s: %d", o.PID, o.Comm, o.Sockets)
		}
		b.WriteString("\n")
	}
	for _, o := range ns.Top {
		fmt.Fprintf(&b, "  top: pid %d %s holds %d sockets\n", o.PID, o.Comm, o.Sockets)
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
