package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/portsleuth/portsleuth/internal/event"
	"github.com/portsleuth/portsleuth/internal/pressure"
	"github.com/portsleuth/portsleuth/internal/report"
)

// killGrace is how long a traced command gets to exit after SIGTERM when the
// report ends before it does.
const killGrace = 5 * time.Second

func runReport(args []string, stdout, stderr io.Writer) error {
	var c common
	var file, record, replay string
	var all bool
	fs := pflag.NewFlagSet("report", pflag.ContinueOnError)
	c.register(fs)
	fs.StringVar(&file, "file", "", "write the report here instead of stdout")
	fs.BoolVar(&all, "all", false, "also list processes that made bind()/connect() calls without failures")
	fs.StringVar(&record, "record", "", "also save the raw counters and events (up to 10000) here, for --replay")
	fs.StringVar(&replay, "replay", "", "build the report from a file saved with --record instead of tracing")
	if err := parse(fs, args, stderr); err != nil {
		return err
	}
	if err := c.validate(); err != nil {
		return err
	}
	var argv []string
	if dash := fs.ArgsLenAtDash(); dash >= 0 {
		if dash > 0 {
			return usageError{fmt.Sprintf("unexpected arguments before --: %q", fs.Args()[:dash])}
		}
		argv = fs.Args()
		if len(argv) == 0 {
			return usageError{"no command after --"}
		}
	} else if fs.NArg() > 0 {
		return usageError{fmt.Sprintf("unexpected arguments %q (put a command to trace after --)", fs.Args())}
	}
	if replay != "" && (len(argv) > 0 || record != "") {
		return usageError{"--replay reads a recording: it takes no command and no --record"}
	}
	out, closeOut, err := openOutput(file, stdout)
	if err != nil {
		return err
	}
	defer closeOut()
	filter := report.Filter{PID: uint32(c.pid), Comm: c.comm, All: all}
	if replay != "" {
		return replayReport(replay, filter, c.output, out)
	}

	s, err := startSession(&c, stderr)
	if err != nil {
		return err
	}
	defer s.close()

	ctx, stop := runContext(c.duration)
	defer stop()
	var cmd *tracedCommand
	if len(argv) > 0 {
		// Every probe is attached: from here on the command's calls are seen.
		if cmd, err = startCommand(argv, stdout, stderr); err != nil {
			return err
		}
		var cancel context.CancelFunc
		ctx, cancel = context.WithCancel(ctx)
		defer cancel()
		go func() { <-cmd.done; cancel() }()
	} else if c.output == "text" && file == "" {
		fmt.Fprintf(stderr, "portsleuth: tracing; the report comes at the end (Ctrl-C or --duration)\n")
	}

	col := report.NewCollector()
	col.Enricher = pressure.NewEnricher()
	defer col.Enricher.Close()
	var events []event.Event
	err = s.loop(ctx, func(e event.Event) {
		col.Observe(&e)
		if record != "" && len(events) < report.MaxRecordedEvents {
			events = append(events, e)
		}
	}, func(time.Time) {})
	if cmd != nil {
		cmd.stop()
	}
	if err != nil {
		return err
	}
	snap, err := s.t.Snapshot()
	if err != nil {
		return err
	}
	if record != "" {
		if err := report.NewRecording(snap, events).Save(record); err != nil {
			return err
		}
	}
	r := report.Build(snap, col, filter, string(s.t.Backend()), s.started, time.Since(s.started))
	r.BackendNotes = s.t.Notes()
	r.Inferred = s.t.Backend().Inferred()
	if cmd != nil {
		r.Command = &report.Command{Argv: argv, PID: cmd.c.Process.Pid, ExitCode: cmd.c.ProcessState.ExitCode()}
	}
	return write(r, c.output, out)
}

func write(r report.Report, format string, out io.Writer) error {
	if format == "json" {
		return r.WriteJSON(out)
	}
	return r.WriteText(out)
}

// replayReport rebuilds a report offline: nothing of this host is read.
func replayReport(path string, f report.Filter, format string, out io.Writer) error {
	rec, err := report.LoadRecording(path)
	if err != nil {
		return err
	}
	col := report.NewOfflineCollector()
	for i := range rec.Events {
		col.Observe(&rec.Events[i])
	}
	r := report.Build(rec.Snapshot(), col, f, "replay", time.Time{}, 0)
	return write(r, format, out)
}

type tracedCommand struct {
	c    *exec.Cmd
	done chan struct{}
}

func startCommand(argv []string, stdout, stderr io.Writer) (*tracedCommand, error) {
	c := exec.Command(argv[0], argv[1:]...)
	c.Stdin, c.Stdout, c.Stderr = os.Stdin, stdout, stderr
	if err := c.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", argv[0], err)
	}
	t := &tracedCommand{c: c, done: make(chan struct{})}
	go func() {
		_ = c.Wait() // the exit status is read from ProcessState
		close(t.done)
	}()
	return t, nil
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
