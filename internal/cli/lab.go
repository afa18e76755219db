package cli

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/portsleuth/portsleuth/internal/lab"
	"github.com/portsleuth/portsleuth/internal/report"
)

// labFlags are the flags of `portsleuth lab`.
type labFlags struct {
	pattern, from, output, cacheDir string
	rangeN                          int
	refresh, rangeSet               bool
}

func runLab(args []string, stdout, stderr io.Writer) error {
	var f labFlags
	if err := f.parse(args, stderr); err != nil {
		return err
	}
	release, err := lab.Release()
	if err != nil {
		return err
	}
	var res *lab.Result
	if f.from != "" {
		res, err = labFrom(f, release)
	} else {
		res, err = labDefault(f, release, stderr)
	}
	if err != nil {
		return err
	}
	if f.output == "json" {
		return res.WriteJSON(stdout)
	}
	return res.WriteText(stdout)
}

func (f *labFlags) parse(args []string, stderr io.Writer) error {
	fs := pflag.NewFlagSet("lab", pflag.ContinueOnError)
	fs.StringVar(&f.pattern, "pattern", "all", "the pattern to test: all, or one of "+strings.Join(lab.Patterns, ", "))
	fs.IntVar(&f.rangeN, "range", lab.DefaultRange, fmt.Sprintf("ports in the lab's ephemeral range (%d..%d)", lab.MinRange, lab.MaxRange))
	fs.StringVar(&f.from, "from", "", "test the remedies for each culprit's own shape, from a `report -o json` output or a recording")
	fs.BoolVar(&f.refresh, "refresh", false, "run the experiments again instead of printing the cached result")
	fs.StringVarP(&f.output, "output", "o", "text", "output format: text or json")
	fs.StringVar(&f.cacheDir, "cache-dir", "", "where results are kept (default $"+lab.CacheEnv+", else "+lab.DefaultCacheDir+")")
	if err := parse(fs, args, stderr); err != nil {
		return err
	}
	f.rangeSet = fs.Changed("range")
	return f.validate(fs.Args())
}

func (f *labFlags) validate(rest []string) error {
	switch {
	case len(rest) > 0:
		return usageError{fmt.Sprintf("unexpected arguments %q", rest)}
	case f.output != "text" && f.output != "json":
		return usageError{fmt.Sprintf("invalid value %q for -o/--output: want text or json", f.output)}
	case f.pattern != "all" && !lab.KnownPattern(f.pattern):
		return usageError{fmt.Sprintf("invalid value %q for --pattern: want all or one of %s", f.pattern, strings.Join(lab.Patterns, ", "))}
	case f.from != "" && f.rangeSet:
		return usageError{"--from takes each process's own range: drop --range"}
	case f.from != "" && f.refresh:
		return usageError{"--from always measures (a shape is one process's, never cached): drop --refresh"}
	}
	if err := lab.ValidRange(f.rangeN); err != nil {
		return usageError{fmt.Sprintf("invalid value %d for --range: %v", f.rangeN, lab.ErrRange)}
	}
	return nil
}

// labDefault prints the cached result for this kernel and range, or runs
// the lab and keeps its result.
func labDefault(f labFlags, release string, stderr io.Writer) (*lab.Result, error) {
	shapes := lab.DefaultShapes(f.rangeN, f.pattern)
	dir := lab.CacheDir(f.cacheDir)
	if !f.refresh {
		if res, when, ok := lab.Load(dir, release, shapes); ok {
			res.Cached = when.UTC().Format(time.RFC3339)
			fmt.Fprintf(stderr, "portsleuth: cached result from %s (run with --refresh to measure again)\n", when.Local().Format(time.DateTime))
			return res, nil
		}
	}
	res, err := lab.Run(release, f.rangeN, shapes)
	if err != nil {
		return nil, err
	}
	if err := lab.Store(dir, res, shapes); err != nil {
		fmt.Fprintf(stderr, "portsleuth: not cached: %v\n", err)
	}
	return res, nil
}

// labFrom runs the remedies for each culprit's shape; never cached, a
// shape is one process's.
func labFrom(f labFlags, release string) (*lab.Result, error) {
	procs, err := lab.LoadProcesses(f.from)
	if err != nil {
		return nil, err
	}
	shapes, err := lab.ShapesFrom(procs, f.pattern)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", f.from, err)
	}
	rangeN := lab.DefaultRange
	if len(shapes) > 0 {
		rangeN = shapes[0].Range
	}
	return lab.Run(release, rangeN, shapes)
}

// citeLab gives the report's patterns the lab's verdicts for the kernel
// the failures happened on: the cached ones, or, when asked (run) and that
// kernel is this one, a fresh run. A report never runs the lab unasked: a
// host under incident is not the place for surprises.
func citeLab(r *report.Report, run bool, stderr io.Writer) {
	if len(r.Processes) == 0 {
		return
	}
	dir := lab.CacheDir("")
	res, when, ok := lab.Cached(dir, r.Kernel, lab.DefaultRange)
	if !ok {
		res = nil
		if release, err := lab.Release(); run && err == nil && r.Kernel == release {
			f := labFlags{pattern: "all", rangeN: lab.DefaultRange}
			if res, err = labDefault(f, release, stderr); err != nil {
				fmt.Fprintf(stderr, "portsleuth: the remedy lab failed: %v\n", err)
				res = nil
			}
			when = time.Now()
		}
	}
	r.LabNote = lab.Cite(r, res, when)
}
