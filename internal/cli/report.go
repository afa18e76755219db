package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"github.com/portsleuth/portsleuth/internal/enrichq"
	"github.com/portsleuth/portsleuth/internal/event"
	"github.com/portsleuth/portsleuth/internal/htmlreport"
	"github.com/portsleuth/portsleuth/internal/lab"
	"github.com/portsleuth/portsleuth/internal/netns"
	"github.com/portsleuth/portsleuth/internal/outfile"
	"github.com/portsleuth/portsleuth/internal/pools"
	"github.com/portsleuth/portsleuth/internal/pressure"
	"github.com/portsleuth/portsleuth/internal/procinfo"
	"github.com/portsleuth/portsleuth/internal/report"
)

// killGrace is how long a traced command gets to exit after SIGTERM when the
// report ends before it does.
const killGrace = 5 * time.Second

// reportFlags are report's own flags besides the common ones.
type reportFlags struct {
	common
	file, record, replay string
	all, force, lab      bool
	argv                 []string
}

func runReport(args []string, stdout, stderr io.Writer) error {
	var f reportFlags
	if err := f.parse(args, stderr); err != nil {
		return err
	}
	if f.output == "html" && (f.file == "" || f.file == "-") && isTerminal(stdout) {
		return usageError{"-o html writes a page for a browser, not a terminal: give --file F.html (or redirect stdout)"}
	}
	outs, err := createOutputs(f.file, f.record, f.force, stdout)
	if err != nil {
		return err
	}
	// Until every output is committed, the old files stay as they were.
	defer outs.abort()
	filter := report.Filter{PID: uint32(f.pid), Comm: f.comm, All: f.all}
	var r report.Report
	if f.replay != "" {
		r, err = replayReport(f.replay, filter)
	} else {
		r, err = traceReport(&f, filter, outs.record, stdout, stderr)
	}
	if err != nil {
		return err
	}
	citeLab(&r, f.lab, stderr)
	if err := write(r, f.output, outs.report); err != nil {
		return fmt.Errorf("writing the report: %w", err)
	}
	return outs.commit()
}

// parse reads and checks every flag and path that can be checked before
// anything is created or loaded.
func (f *reportFlags) parse(args []string, stderr io.Writer) error {
	fs := pflag.NewFlagSet("report", pflag.ContinueOnError)
	f.register(fs)
	fs.StringVar(&f.file, "file", "", "write the report here instead of stdout (a new 0600 file; never written through a symbolic link)")
	fs.BoolVar(&f.all, "all", false, "also list processes that made bind()/connect() calls without failures")
	fs.StringVar(&f.record, "record", "", "also save the raw counters and events (up to 10000) here, for --replay (a new 0600 file)")
	fs.StringVar(&f.replay, "replay", "", "build the report from a file saved with --record instead of tracing")
	fs.BoolVar(&f.force, "force", false, "replace an existing --file or --record (the name is replaced once the report is complete; a symbolic link is replaced, not followed)")
	fs.Lookup("output").Usage = "output format: text, json or html (a self-contained page: give --file F.html)"
	fs.BoolVar(&f.lab, "lab", false, "cite the remedy lab: run it first if it has no results for this kernel yet (about 2 s, in throwaway network namespaces; without --lab a report only cites cached results)")
	if err := parse(fs, args, stderr); err != nil {
		return err
	}
	if err := f.validate("text", "json", "html"); err != nil {
		return err
	}
	if dash := fs.ArgsLenAtDash(); dash >= 0 {
		if dash > 0 {
			return usageError{fmt.Sprintf("unexpected arguments before --: %q", fs.Args()[:dash])}
		}
		f.argv = fs.Args()
		if len(f.argv) == 0 {
			return usageError{"no command after --"}
		}
	} else if fs.NArg() > 0 {
		return usageError{fmt.Sprintf("unexpected arguments %q (put a command to trace after --)", fs.Args())}
	}
	if f.replay != "" && (len(f.argv) > 0 || f.record != "") {
		return usageError{"--replay reads a recording: it takes no command and no --record"}
	}
	if f.record == "-" {
		return usageError{"--record needs a file path (stdout carries the report)"}
	}
	if f.replay == "" {
		if err := f.checkPID(); err != nil {
			return err
		}
	}
	if f.file != "" && f.file != "-" && f.record != "" && sameTarget(f.file, f.record) {
		return usageError{fmt.Sprintf("--file %s and --record %s name the same file: give them different paths", f.file, f.record)}
	}
	return nil
}

// isTerminal says whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// sameTarget says whether two output paths would land on one file: the same
// name after cleaning, the same name in the same directory reached two ways,
// or two names of one existing file (hard or symbolic links).
func sameTarget(a, b string) bool {
	ca, cb := filepath.Clean(a), filepath.Clean(b)
	if ca == cb {
		return true
	}
	if filepath.Base(ca) == filepath.Base(cb) && sameFile(filepath.Dir(ca), filepath.Dir(cb), os.Stat) {
		return true
	}
	return sameFile(ca, cb, os.Stat) || sameFile(ca, cb, os.Lstat)
}

func sameFile(a, b string, stat func(string) (os.FileInfo, error)) bool {
	sa, err := stat(a)
	if err != nil {
		return false
	}
	sb, err := stat(b)
	return err == nil && os.SameFile(sa, sb)
}

// outputs are report's files. They are created before anything is traced or
// read, so a bad path fails first, and committed only once the report is
// complete: an error leaves whatever was at their paths untouched.
type outputs struct {
	report io.Writer
	record io.Writer // nil without --record
	files  []*outfile.File
}

func createOutputs(file, record string, force bool, stdout io.Writer) (*outputs, error) {
	o := &outputs{report: stdout}
	if file != "" && file != "-" {
		f, err := outfile.Create(file, force)
		if err != nil {
			return nil, fmt.Errorf("report file: %w", err)
		}
		o.report = f
		o.files = append(o.files, f)
	}
	if record != "" {
		f, err := outfile.Create(record, force)
		if err != nil {
			o.abort()
			return nil, fmt.Errorf("recording: %w", err)
		}
		o.record = f
		o.files = append(o.files, f)
	}
	return o, nil
}

func (o *outputs) commit() error {
	for _, f := range o.files {
		if err := f.Commit(); err != nil {
			return err
		}
	}
	return nil
}

// abort throws away what was not committed; safe after commit.
func (o *outputs) abort() {
	for _, f := range o.files {
		f.Abort()
	}
}

// traceReport traces until the duration, a signal or the command ends, and
// writes the recording to record when it is not nil.
func traceReport(f *reportFlags, filter report.Filter, record io.Writer, stdout, stderr io.Writer) (report.Report, error) {
	s, err := startSession(&f.common, len(f.argv) > 0, stderr)
	if err != nil {
		return report.Report{}, err
	}
	defer s.close()

	ctx, stop := runContext(f.duration)
	defer stop()
	var cmd *tracedCommand
	if len(f.argv) > 0 {
		// Every probe is attached: from here on the command's calls are seen.
		if cmd, err = startCommand(f.argv, stdout, stderr); err != nil {
			return report.Report{}, err
		}
		// Its tree is marked in the report; a command already reaped leaves
		// its start unknown (0), and then its pid alone identifies it.
		filter.Command = uint32(cmd.c.Process.Pid)
		filter.CommandStart, _ = procinfo.StartTime(filter.Command)
		var cancel context.CancelFunc
		ctx, cancel = context.WithCancel(ctx)
		defer cancel()
		go func() { <-cmd.done; cancel() }()
	} else if f.output == "text" && f.file == "" {
		fmt.Fprintf(stderr, "portsleuth: tracing; the report comes at the end (Ctrl-C or --duration)\n")
	}

	col := report.NewCollector()
	enricher := pressure.NewEnricher()
	enricher.Closers = s.t.Closers()
	defer enricher.Close()
	col.NetnsSysctls, col.PinNetns = enricher.Sysctls, enricher.Pin
	col.Queue = enrichq.NewQueue(0, enricher.Enrich, col.Attach)
	defer col.Queue.Close() // before the enricher's Close: defers run last first
	scans := &poolScans{enricher: enricher}
	sampler := &report.PoolSampler{Open: scans.open, Every: poolSampleEvery}
	sampler.Start()
	var events []event.Event
	err = s.loop(ctx, func(e event.Event) {
		col.Observe(&e)
		sampler.Notice(&e)
		if record != nil && len(events) < report.MaxRecordedEvents {
			events = append(events, e)
		}
	}, func(time.Time) {})
	if cmd != nil {
		cmd.stop()
	}
	samples, serr := sampler.Stop()
	col.AddPoolSamples(samples)
	if serr != nil {
		fmt.Fprintf(stderr, "portsleuth: %v\n", serr)
	}
	if err != nil {
		return report.Report{}, err
	}
	snap, err := s.t.Snapshot()
	if err != nil {
		return report.Report{}, err
	}
	finishEnrichment(col, events) // after the counters: they match the events read
	release, err := lab.Release()
	if err != nil {
		return report.Report{}, err
	}
	if record != nil {
		rec := report.NewRecording(snap, events)
		rec.PoolSamples, rec.Kernel = samples, release
		if err := rec.Encode(record); err != nil {
			return report.Report{}, fmt.Errorf("writing the recording: %w", err)
		}
	}
	r := report.Build(snap, col, filter, string(s.t.Backend()), s.started, time.Since(s.started))
	r.EnrichmentDropped = col.Queue.Dropped()
	r.PoolSamplingLosses = sampler.Losses()
	r.BackendNotes = s.t.Notes()
	r.Inferred = s.t.Backend().Inferred()
	r.Kernel = release
	if cmd != nil {
		r.Command = &report.Command{Argv: f.argv, PID: cmd.c.Process.Pid, ExitCode: cmd.c.ProcessState.ExitCode()}
	}
	return r, nil
}

// A report waits for the enrichment still queued when tracing ends, so that
// a short `report -- CMD` gets its snapshots and holders even where a
// namespace scan takes seconds (a loaded or emulated machine): as long as
// the worker finishes something every drainWait, up to drainMax in all.
// What is left then is dropped and counted.
const (
	drainWait = 10 * time.Second
	drainMax  = time.Minute
)

// liveDrainWait is the same bound for watch and serve when they stop: an
// agent told to stop must not linger (a pod's grace period).
const liveDrainWait = 2 * time.Second

// finishEnrichment lets the queued enrichment land in col (what is still
// queued once the worker stalls, or after drainMax, is dropped and counted),
// then stops it, and names
// in the recorded events the holders it found for their ports.
func finishEnrichment(col *report.Collector, recorded []event.Event) {
	deadline := time.Now().Add(drainMax)
	for done := col.Queue.Finished(); !col.Queue.Drain(drainWait) && time.Now().Before(deadline); {
		now := col.Queue.Finished()
		if now == done {
			break // stuck, not slow
		}
		done = now
	}
	col.Queue.Close()
	col.Seal()
	for i := range recorded {
		col.Queue.Fill(&recorded[i])
		col.Owners.FillCached(&recorded[i])
	}
}

// replayStarted stands in the text header for the start time a recording
// does not keep.
const replayStarted = "unknown (replay of a recording)"

func write(r report.Report, format string, out io.Writer) error {
	switch format {
	case "json":
		return r.WriteJSON(out)
	case "html":
		return htmlreport.Write(out, &r)
	}
	if r.Started == "" {
		r.Started = replayStarted
	}
	return r.WriteText(out)
}

// replayReport rebuilds a report offline: nothing of this host is read.
func replayReport(path string, f report.Filter) (report.Report, error) {
	rec, err := report.LoadRecording(path)
	if err != nil {
		return report.Report{}, err
	}
	col := report.NewOfflineCollector()
	for i := range rec.Events {
		col.Observe(&rec.Events[i])
	}
	col.AddPoolSamples(rec.PoolSamples)
	r := report.Build(rec.Snapshot(), col, f, "replay", time.Time{}, 0)
	r.Kernel = rec.Kernel
	// A recording keeps no start time: say so (empty in JSON) rather than
	// print the zero time as a date.
	r.Started = ""
	return r, nil
}

type tracedCommand struct {
	c    *exec.Cmd
	done chan struct{}
}

// startCommand starts the traced command so that it dies with the agent,
// even when the agent is SIGKILLed: a parent-death signal, not adoption by init.
func startCommand(argv []string, stdout, stderr io.Writer) (*tracedCommand, error) {
	c := exec.Command(argv[0], argv[1:]...)
	c.Stdin, c.Stdout, c.Stderr = os.Stdin, stdout, stderr
	c.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	t := &tracedCommand{c: c, done: make(chan struct{})}
	started := make(chan error, 1)
	go t.run(started)
	if err := <-started; err != nil {
		return nil, fmt.Errorf("starting %s: %w", argv[0], err)
	}
	return t, nil
}

// run starts and reaps the command on one OS thread held for its lifetime.
// The kernel sends the parent-death signal when the thread that forked the
// child exits, not the process, and Go ends a thread when a goroutine locked
// to it returns (the namespace-entering code does so on purpose). Locked
// here, this thread runs nothing else and cannot exit before Wait returns.
func (t *tracedCommand) run(started chan<- error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := t.c.Start(); err != nil {
		started <- err
		return
	}
	started <- nil
	_ = t.c.Wait() // the exit status is read from ProcessState
	close(t.done)
}

// stop ends the command if the report ended first (duration or signal).
func (t *tracedCommand) stop() {
	select {
	case <-t.done:
		return
	default:
	}
	if err := t.c.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		_ = t.c.Process.Kill()
	}
	select {
	case <-t.done:
	case <-time.After(killGrace):
		_ = t.c.Process.Kill()
		<-t.done
	}
}

// poolSampleEvery is how often the pools of a report's failures are sampled.
const poolSampleEvery = time.Second

// poolScans opens the namespaces the pool sampler asks for and scans them
// with the enricher's Scanner: one load of the iterators per report.
type poolScans struct{ enricher *pressure.Enricher }

func (p *poolScans) open(ino uint64, pid, tid uint32) (report.PoolScan, func(), error) {
	sc, err := p.enricher.Scanner()
	if err != nil {
		return nil, nil, err
	}
	f, err := openNetnsOf(ino, pid, tid)
	if err != nil {
		return nil, nil, err
	}
	scan := func() (pools.Namespace, error) {
		// Only the counts are wanted: no owners are named.
		return sc.Scan(int(f.Fd()), nil, 1)
	}
	return scan, func() { f.Close() }, nil
}

// openNetnsOf opens network namespace ino through our own, the failing
// thread's or its process's: the handle keeps it for the sampling, however
// short the task lived after. 0 (unknown) takes the thread's.
func openNetnsOf(ino uint64, pid, tid uint32) (*os.File, error) {
	for _, path := range []string{"/proc/self/ns/net", fmt.Sprintf("/proc/%d/task/%d/ns/net", pid, tid), fmt.Sprintf("/proc/%d/ns/net", pid)} {
		f, err := netns.Open(path)
		if err != nil {
			continue
		}
		var st unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &st); err == nil && (st.Ino == ino || (ino == 0 && path != "/proc/self/ns/net")) {
			return f, nil
		}
		f.Close()
	}
	return nil, fmt.Errorf("no handle on network namespace %d: pid %d is gone", ino, pid)
}
