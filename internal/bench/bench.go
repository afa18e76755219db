// Package bench measures what portsleuth costs: the slowdown of bind/connect
// loops and of unrelated syscalls with the agent attached, per backend; a
// storm of failing binds (exact count, agent CPU, events/s); launch time and
// RSS. Every figure is measured side by side in one run and printed in one
// table with its goal. It reports; it asserts nothing.
package bench

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/portsleuth/portsleuth/internal/event"
	"github.com/portsleuth/portsleuth/internal/outfile"
	"github.com/portsleuth/portsleuth/internal/pressure"
	"github.com/portsleuth/portsleuth/internal/probe"
	"github.com/portsleuth/portsleuth/internal/procinfo"
	"github.com/portsleuth/portsleuth/internal/scenario"
)

// StormEnv makes the bench binary act as the storm child.
const StormEnv = "PORTSLEUTH_BENCH_STORM"

// Options size the run.
type Options struct {
	Loops     int // iterations of each bind/connect loop
	Syscalls  int // getppid calls per measurement
	Rounds    int // baseline/agent pairs in ABBA order; the fastest of each side is kept
	StormSize int
	// StormProfile, if set, receives a CPU profile of the agent during the storm.
	StormProfile string
	// Only runs just the storm (with launch and RSS), skipping the loops.
	StormOnly bool
	// BPFOnly prints only the first table: BPF time per program and backend.
	BPFOnly bool
}

// row is one line of the table.
type row struct{ what, value, goal, verdict string }

// Run measures everything and writes the table.
func Run(w io.Writer, o Options) error {
	if os.Geteuid() != 0 {
		return errors.New("bench needs root (BPF and network namespaces)")
	}
	var rows []row
	add := func(what, value, goal string, ok bool) { rows = append(rows, verdictRow(what, value, goal, ok)) }

	// Loops run on one locked thread inside a fresh namespace; the agent
	// traces host-wide, as it would in production.
	lp, err := newLooper()
	if err != nil {
		return err
	}
	defer lp.close()

	available := []probe.Backend{}
	for _, b := range probe.Backends {
		if err := probe.Try(b); err != nil {
			add("backend "+string(b), "does not load here: "+firstLine(err.Error()), "", true)
			continue
		}
		available = append(available, b)
	}
	if len(available) == 0 {
		return errors.New("no backend loads on this kernel")
	}
	// serve's default: the first low-overhead backend that loads; else what
	// serve runs on only when asked (--backend tracepoint).
	serveDefault := available[0]
	for _, b := range probe.LowOverhead {
		if slices.Contains(available, b) {
			serveDefault = b
			break
		}
	}

	loops := []struct {
		name    string
		fn      func(int) (time.Duration, error)
		n       int
		goal    float64 // wall-clock slowdown, percent
		bpfGoal float64 // BPF ns per iteration, serve's default backend
	}{
		{"connect+close loop", lp.connectClose, o.Loops, 3, 400},
		{"bind+connect loop", lp.bindConnect, o.Loops, 3, 1000},
		{"getppid loop (unrelated syscalls)", lp.getppid, o.Syscalls, 1, 0},
	}

	// First what the programs themselves cost, from the kernel's run-time
	// statistics: the steady figure on a noisy machine.
	var bpfRows []row
	for _, b := range available {
		if o.StormOnly {
			break
		}
		for _, l := range loops[:2] {
			for _, floor := range []bool{false, true} {
				if floor && b != serveDefault {
					continue
				}
				prof, err := programProfile(b, floor, l.fn, l.n)
				if err != nil {
					return fmt.Errorf("program profile on %s: %w", b, err)
				}
				for _, p := range prof {
					what := fmt.Sprintf("  %s", p.name)
					v := fmt.Sprintf("%.0f ns (%.1f runs)", p.nsPerLoop, p.runsPerLoop)
					goal, ok := "", true
					if p.total {
						what = fmt.Sprintf("%s, %s: all programs", l.name, b)
						v = fmt.Sprintf("%.0f ns = +%.1f%% of the loop", p.nsPerLoop, p.shareOfRest)
						if b == serveDefault && !floor {
							goal, ok = fmt.Sprintf("<= %.0f ns", l.bpfGoal), p.nsPerLoop <= l.bpfGoal
						}
						if floor {
							what = fmt.Sprintf("%s, %s: empty programs (the statistics' own cost)", l.name, b)
						}
					} else if floor {
						continue // the total says it
					}
					bpfRows = append(bpfRows, verdictRow(what, v, goal, ok))
				}
			}
		}
	}

	if o.BPFOnly {
		fmt.Fprintf(w, "portsleuth bench (%s, %d CPUs; loops %d iterations)\n\n", kernelRelease(), runtime.NumCPU(), o.Loops)
		table(w, bpfRows)
		return nil
	}
	for _, b := range available {
		if o.StormOnly {
			break
		}
		lowOverhead := b == serveDefault
		for _, l := range loops {
			base, with, slow, err := sideBySide(func() (io.Closer, error) { return probe.Start(probe.Options{Backend: b}) }, o.Rounds, func() (time.Duration, error) { return l.fn(l.n) })
			if err != nil {
				return fmt.Errorf("%s on %s: %w", l.name, b, err)
			}
			value := fmt.Sprintf("%+.1f%% (%.0f -> %.0f ns/op)", slow, perOp(base, l.n), perOp(with, l.n))
			goal := ""
			if lowOverhead {
				goal = fmt.Sprintf("<= %.0f%%", l.goal)
			}
			add(fmt.Sprintf("%s, %s", l.name, b), value, goal, slow <= l.goal)
			if !lowOverhead || l.bpfGoal == 0 {
				continue
			}
			// The same hooks with empty programs: this design's floor.
			base, with, slow, err = sideBySide(func() (io.Closer, error) { return probe.StartFloor(b) }, o.Rounds, func() (time.Duration, error) { return l.fn(l.n) })
			if err != nil {
				return fmt.Errorf("%s on %s's floor: %w", l.name, b, err)
			}
			add(fmt.Sprintf("  the same, empty programs on %s's hooks (floor)", b),
				fmt.Sprintf("%+.1f%% (%.0f -> %.0f ns/op)", slow, perOp(base, l.n), perOp(with, l.n)), "", true)
		}
	}

	// Launch -> attached, and the storm, on serve's default backend.
	var launches []time.Duration
	for i := 0; i < 3; i++ {
		start := time.Now()
		t, err := probe.Start(probe.Options{Backend: serveDefault})
		if err != nil {
			return err
		}
		launches = append(launches, time.Since(start))
		t.Close()
	}
	launch := median(launches)
	add("launch -> probes attached, "+string(serveDefault), launch.Round(time.Millisecond).String(), "< 250ms", launch < 250*time.Millisecond)

	st, err := storm(serveDefault, o.StormSize, o.StormProfile)
	if err != nil {
		return fmt.Errorf("storm: %w", err)
	}
	add(fmt.Sprintf("storm %d failing binds, %s: kernel count", o.StormSize, serveDefault),
		fmt.Sprintf("%d (true count %d)", st.counted, o.StormSize), "== true count", st.counted == uint64(o.StormSize))
	add("storm: events delivered + lost", fmt.Sprintf("%d + %d = %d", st.delivered, st.lost, st.delivered+st.lost),
		"== true count (0 unaccounted)", st.delivered+st.lost == uint64(o.StormSize))
	add("storm: events/s reaching userspace", fmt.Sprintf("%.0f/s over %s", float64(st.delivered)/st.wall.Seconds(), st.wall.Round(time.Millisecond)), "", true)
	add("storm: agent CPU", fmt.Sprintf("%.1f%% of a core", st.cpuPct), "< 10%", st.cpuPct < 10)
	add("agent RSS after the storm", fmt.Sprintf("%.1f MiB", float64(st.rss)/(1<<20)), "< 40 MiB", st.rss < 40<<20)

	if !o.StormOnly {
		ps, err := portsScan()
		if err != nil {
			return fmt.Errorf("ports scan: %w", err)
		}
		add(fmt.Sprintf("ports: scan a namespace of %d sockets", ps.sockets), fmt.Sprintf("%s, RSS +%.1f MiB", ps.wall.Round(time.Millisecond), float64(ps.rssGrowth)/(1<<20)), "", true)
	}

	fmt.Fprintf(w, "portsleuth bench (%s, %d CPUs; loops %d iterations, %d syscalls)\n\n", kernelRelease(), runtime.NumCPU(), o.Loops, o.Syscalls)
	if len(bpfRows) > 0 {
		fmt.Fprintf(w, "BPF time per loop iteration, by program (kernel run-time statistics, which add a clock read per run: upper bounds)\n")
		table(w, bpfRows)
		fmt.Fprintln(w)
	}
	fmt.Fprintf(w, "Wall clock and agent (loop thread CPU time, fastest of %d ABBA pairs)\n", o.Rounds)
	table(w, rows)
	return nil
}

func table(w io.Writer, rows []row) {
	fmt.Fprintf(w, "%-62s %-42s %-28s %s\n", "measurement", "value", "goal", "")
	for _, r := range rows {
		fmt.Fprintf(w, "%-62s %-42s %-28s %s\n", r.what, r.value, r.goal, r.verdict)
	}
}

func verdictRow(what, value, goal string, ok bool) row {
	v := "ok"
	if !ok {
		v = "MISSES GOAL"
	}
	if goal == "" {
		v = ""
	}
	return row{what, value, goal, v}
}

func perOp(d time.Duration, n int) float64 { return float64(d.Nanoseconds()) / float64(n) }

// sideBySide measures pairs of runs without and with the agent, in ABBA
// order so neither side always goes first, and returns the fastest run of
// each side and the slowdown between them in percent. On a shared machine
// interference only ever adds time, so the minimum is the stable estimate.
func sideBySide(start func() (io.Closer, error), rounds int, measure func() (time.Duration, error)) (time.Duration, time.Duration, float64, error) {
	var base, with []time.Duration
	attached := func() (time.Duration, error) {
		c, err := start()
		if err != nil {
			return 0, err
		}
		stop := func() {}
		if t, ok := c.(*probe.Tracer); ok {
			stop = drain(t)
		}
		d, err := measure()
		stop() // before Close: the drain reads the ring buffer
		return d, errors.Join(err, c.Close())
	}
	for i := 0; i < rounds; i++ {
		var a, w time.Duration
		var err error
		if i%2 == 0 {
			if a, err = measure(); err == nil {
				w, err = attached()
			}
		} else {
			if w, err = attached(); err == nil {
				a, err = measure()
			}
		}
		if err != nil {
			return 0, 0, 0, err
		}
		base, with = append(base, a), append(with, w)
	}
	b0, w0 := slices.Min(base), slices.Min(with)
	return b0, w0, 100 * (float64(w0) - float64(b0)) / float64(b0), nil
}

// drain consumes the ring buffer like watch/serve do, until stopped.
func drain(t *probe.Tracer) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			t.SetDeadline(time.Now().Add(50 * time.Millisecond))
			_, _ = t.Read()
		}
	}()
	return func() { cancel(); wg.Wait() }
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

type stormResult struct {
	counted, delivered, lost uint64
	wall                     time.Duration
	cpuPct                   float64
	rss                      uint64
}

// storm runs StormSize failing binds in a child process while this process
// is the agent, and measures what the agent saw and what it cost.
func storm(b probe.Backend, n int, profile string) (stormResult, error) {
	var res stormResult
	t, err := probe.Start(probe.Options{Backend: b})
	if err != nil {
		return res, err
	}
	defer t.Close()
	var delivered uint64
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		// The reading pattern of watch/report/serve: renew the deadline
		// when the buffer runs dry or every 64 events.
		for n := 0; ; n++ {
			if ctx.Err() != nil {
				t.SetDeadline(time.Now())
			} else if n%64 == 0 {
				t.SetDeadline(time.Now().Add(200 * time.Millisecond))
			}
			_, err := t.Read()
			if err == nil {
				delivered++
				continue
			}
			if ctx.Err() != nil && errors.Is(err, os.ErrDeadlineExceeded) {
				return
			}
			n = -1
		}
	}()
	exe, err := os.Executable()
	if err != nil {
		cancel()
		wg.Wait()
		return res, err
	}
	child := exec.Command(exe)
	child.Env = append(os.Environ(), StormEnv+"="+strconv.Itoa(n))
	child.Stderr = os.Stderr
	if profile != "" {
		f, err := outfile.Create(profile, true)
		if err != nil {
			return res, err
		}
		defer func() {
			if err := f.Commit(); err != nil {
				fmt.Fprintf(os.Stderr, "bench: writing the profile: %v\n", err)
			}
		}()
		if err := pprof.StartCPUProfile(f); err != nil {
			return res, err
		}
		defer pprof.StopCPUProfile()
	}
	cpu0 := cpuTime()
	start := time.Now()
	if err := child.Run(); err != nil {
		cancel()
		wg.Wait()
		return res, fmt.Errorf("storm child: %w", err)
	}
	res.wall = time.Since(start)
	t.Settle() // the cgroup backend may decide the last failures after the child exits
	cancel()
	wg.Wait()
	res.cpuPct = 100 * (cpuTime() - cpu0).Seconds() / time.Since(start).Seconds()
	snap, err := t.Snapshot()
	if err != nil {
		return res, err
	}
	for _, st := range snap.Procs {
		res.counted += st.BindsFailed
	}
	res.delivered, res.lost = delivered, snap.Lost
	res.rss = rss()
	return res, nil
}

type scanResult struct {
	sockets   int
	wall      time.Duration
	rssGrowth uint64
}

// portsScan times `ports` on a namespace that a child fills with 100k sockets.
func portsScan() (scanResult, error) {
	var res scanResult
	exe, err := os.Executable()
	if err != nil {
		return res, err
	}
	child := exec.Command(exe)
	child.Env = append(os.Environ(), scenario.Env+"=many-sockets", scenario.HoldEnv+"=1")
	child.Stderr = os.Stderr
	stdin, err := child.StdinPipe()
	if err != nil {
		return res, err
	}
	stdout, err := child.StdoutPipe()
	if err != nil {
		return res, err
	}
	if err := child.Start(); err != nil {
		return res, err
	}
	defer func() { stdin.Close(); child.Wait() }()
	var sr scenario.Result
	if err := json.NewDecoder(stdout).Decode(&sr); err != nil {
		return res, fmt.Errorf("many-sockets scenario: %w", err)
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/task/%d/ns/net", sr.PID, sr.TID))
	if err != nil {
		return res, err
	}
	defer f.Close()
	sc, err := pressure.NewScanner(nil)
	if err != nil {
		return res, err
	}
	defer sc.Close()
	rss0 := rss()
	start := time.Now()
	ns, err := sc.Scan(int(f.Fd()), procinfo.SocketInodes(), 5)
	res.wall = time.Since(start)
	if err != nil {
		return res, err
	}
	res.sockets = ns.Sockets
	if r := rss(); r > rss0 {
		res.rssGrowth = r - rss0
	}
	return res, nil
}

// StormMain is the storm child: n failing binds of a held port, in its own namespace.
func StormMain(n int) error {
	runtime.LockOSThread()
	if err := scenario.Isolate(); err != nil {
		return err
	}
	sa := &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}, Port: scenario.ListenPort}
	l, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
	if err != nil {
		return err
	}
	if err := unix.Bind(l, sa); err != nil {
		return err
	}
	if err := unix.Listen(l, 1); err != nil {
		return err
	}
	s, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
	if err != nil {
		return err
	}
	for i := 0; i < n; i++ {
		if err := unix.Bind(s, sa); !errors.Is(err, unix.EADDRINUSE) {
			return fmt.Errorf("bind %d: want EADDRINUSE, got %v", i, err)
		}
	}
	return nil
}

func cpuTime() time.Duration {
	var ru unix.Rusage
	_ = unix.Getrusage(unix.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func rss() uint64 {
	b, _ := os.ReadFile("/proc/self/status")
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

func kernelRelease() string {
	var u unix.Utsname
	_ = unix.Uname(&u)
	return "Linux " + unix.ByteSliceToString(u.Release[:])
}

func firstLine(s string) string {
	first, _, _ := strings.Cut(s, "\n")
	return first
}

type progCost struct {
	name                   string
	nsPerLoop, runsPerLoop float64
	total                  bool    // the sum over programs
	shareOfRest            float64 // the total only: percent added to the loop's own time
}

// programProfile runs a loop once with the agent attached and the kernel's
// BPF run-time statistics on, and splits the BPF time per iteration by
// program: the profile that explains the loop slowdown. The statistics add
// a clock read per run, so these are upper bounds.
func programProfile(b probe.Backend, floor bool, loop func(int) (time.Duration, error), n int) ([]progCost, error) {
	stats, err := probe.EnableRunTimeStats()
	if err != nil {
		return nil, err
	}
	defer stats.Close()
	var attached interface {
		ProgramStats() (map[string]event.ProgramStats, error)
		Close() error
	}
	stop := func() {}
	if floor {
		attached, err = probe.StartFloor(b)
	} else {
		var t *probe.Tracer
		if t, err = probe.Start(probe.Options{Backend: b}); err == nil {
			attached, stop = t, drain(t)
		}
	}
	if err != nil {
		return nil, err
	}
	defer attached.Close()
	d, err := loop(n)
	stop()
	if err != nil {
		return nil, err
	}
	ps, err := attached.ProgramStats()
	if err != nil {
		return nil, err
	}
	var out []progCost
	var total float64
	for name, st := range ps {
		if st.RunCount*100 < uint64(n) { // not run, or rarely
			continue
		}
		c := progCost{name: name, nsPerLoop: float64(st.Runtime.Nanoseconds()) / float64(n), runsPerLoop: float64(st.RunCount) / float64(n)}
		total += c.nsPerLoop
		out = append(out, c)
	}
	slices.SortFunc(out, func(a, b progCost) int { return cmp.Compare(b.nsPerLoop, a.nsPerLoop) })
	// What the programs alone add to the loop: its time without them.
	rest := float64(d.Nanoseconds())/float64(n) - total
	return append(out, progCost{name: "all programs", nsPerLoop: total, total: true, shareOfRest: 100 * total / rest}), nil
}
