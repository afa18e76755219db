// Package cli is portsleuth's command line: flag parsing, the watch and report
// commands, and exit codes (2 for usage errors, 1 for failures).
package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"github.com/portsleuth/portsleuth/internal/probe"
)

// Version is set at build time with -ldflags "-X ...cli.Version=...".
var Version = "dev"

const usage = `portsleuth catches failed bind() and connect() calls, names the process and
the call pattern behind them, and says what fixes it on this kernel.

Usage:
  portsleuth watch  [--backend B] [--pid N] [--comm NAME] [-o text|json] [--duration D]
  portsleuth report [--backend B] [--pid N] [--comm NAME] [-o text|json|html] [--duration D] [--file PATH] [--force] [--all]
                    [--record FILE | --replay FILE] [--lab] [-- CMD ARGS...]
  portsleuth serve  [--backend B] [--listen ADDR] [--log-format text|json] [--report-interval D]
                    [--pool-interval D] [--pool-top N]
  portsleuth ports  [--netns PID|PATH|all] [-o text|json] [--top N]
  portsleuth lab    [--pattern NAME|all] [--range N] [--from FILE] [--refresh] [--cache-dir DIR] [-o text|json]
  portsleuth doctor
  portsleuth version

Run 'portsleuth COMMAND --help' for a command's flags.
`

// usageError is a bad command line: usage goes to stderr, exit code 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

// Run executes a command line (without the program name) and returns the exit code.
func Run(args []string, stdout, stderr io.Writer) int {
	err := run(args, stdout, stderr)
	var ue usageError
	switch {
	case err == nil:
		return 0
	case errors.Is(err, pflag.ErrHelp):
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "portsleuth: %s\n\n%s", ue.msg, usage)
		return 2
	case errors.Is(err, probe.ErrPrivileges):
		fmt.Fprintf(stderr, "portsleuth: %s\n", err)
		return 1
	default:
		fmt.Fprintf(stderr, "portsleuth: %s\n", err)
		return 1
	}
}

func run(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usageError{"no command given"}
	}
	switch args[0] {
	case "watch":
		return runWatch(args[1:], stdout, stderr)
	case "report":
		return runReport(args[1:], stdout, stderr)
	case "ports":
		return runPorts(args[1:], stdout, stderr)
	case "serve":
		return runServe(args[1:], stdout, stderr)
	case "doctor":
		return runDoctor(args[1:], stdout, stderr)
	case "lab":
		return runLab(args[1:], stdout, stderr)
	case "version", "--version":
		fmt.Fprintf(stdout, "portsleuth %s\n", Version)
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	return usageError{fmt.Sprintf("unknown command %q", args[0])}
}

// common are the flags every tracing command takes.
type common struct {
	backend  string
	pid      int
	comm     string
	output   string
	duration time.Duration
}

func (c *common) register(fs *pflag.FlagSet) {
	fs.StringVar(&c.backend, "backend", "auto", "hooks to use: auto, fentry, kprobe, tracepoint or cgroup")
	fs.IntVar(&c.pid, "pid", 0, "trace only this process (thread-group id)")
	fs.StringVar(&c.comm, "comm", "", "show only processes with this name (at most 15 bytes, as the kernel keeps it)")
	fs.StringVarP(&c.output, "output", "o", "text", "output format: text or json")
	fs.DurationVar(&c.duration, "duration", 0, "stop after this long (e.g. 30s, 5m); 0 runs until interrupted")
}

// validate checks the common flags; outputs are the -o values the command
// writes (text and json when none are given).
func (c *common) validate(outputs ...string) error {
	if len(outputs) == 0 {
		outputs = []string{"text", "json"}
	}
	if !slices.Contains(outputs, c.output) {
		return usageError{fmt.Sprintf("invalid value %q for -o/--output: want %s", c.output, orList(outputs))}
	}
	if c.pid < 0 || c.pid > 1<<22 {
		return usageError{fmt.Sprintf("invalid value %d for --pid", c.pid)}
	}
	if _, err := probe.ParseBackend(c.backend); err != nil {
		return usageError{err.Error()}
	}
	if c.duration < 0 {
		return usageError{fmt.Sprintf("invalid value %s for --duration: must not be negative", c.duration)}
	}
	if len(c.comm) > maxComm {
		return usageError{fmt.Sprintf("invalid value %q for --comm: %d bytes, but the kernel keeps only the first %d of a process name, so it would match nothing", c.comm, len(c.comm), maxComm)}
	}
	return nil
}

// orList spells a list of choices: "a or b", "a, b or c".
func orList(s []string) string {
	if len(s) == 1 {
		return s[0]
	}
	return strings.Join(s[:len(s)-1], ", ") + " or " + s[len(s)-1]
}

// maxComm is the longest process name the kernel keeps (TASK_COMM_LEN - 1).
const maxComm = 15

// checkPID refuses a --pid that names no process now: the kernel filter would
// trace nothing, in silence. Only for live tracing: a replay filters on the
// recorded host's pids.
func (c *common) checkPID() error {
	if c.pid == 0 {
		return nil
	}
	// Signal 0 checks existence only; EPERM still means the process exists.
	if err := unix.Kill(c.pid, 0); errors.Is(err, unix.ESRCH) {
		return usageError{fmt.Sprintf("invalid value %d for --pid: no process %d", c.pid, c.pid)}
	}
	if tgid, ok := threadGroup(c.pid); ok && tgid != c.pid {
		return usageError{fmt.Sprintf("invalid value %d for --pid: it is a thread of process %d; give the process id", c.pid, tgid)}
	}
	return nil
}

// threadGroup reads the process id a task id belongs to.
func threadGroup(tid int) (int, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", tid))
	if err != nil {
		return 0, false
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "Tgid:"); ok {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			return n, err == nil
		}
	}
	return 0, false
}

// parse parses a command's flags, turning pflag errors into usage errors.
func parse(fs *pflag.FlagSet, args []string, stderr io.Writer) error {
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage of portsleuth %s:\n%s", fs.Name(), fs.FlagUsages())
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return err
		}
		return usageError{err.Error()}
	}
	return nil
}
