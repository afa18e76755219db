// Package lab proves (or refutes) the fixes portsleuth advises, on the
// running kernel: each call pattern is reproduced in a throwaway network
// namespace with a tiny ephemeral range, then each candidate remedy is
// applied and the connections it allows are counted (issue #12).
package lab

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Verdicts, as the JSON contract spells them.
const (
	Fixes          = "fixes"
	MovesToConnect = "moves-to-connect"
	Partial        = "partial"
	NoEffect       = "no-effect"
	Unavailable    = "unavailable"
)

// verdicts are every verdict the lab gives.
var verdicts = []string{Fixes, MovesToConnect, Partial, NoEffect, Unavailable}

// Range bounds: below 8 ports the counts say little, above 4096 the lab
// stops being cheap enough to run during an incident.
const (
	MinRange     = 8
	MaxRange     = 4096
	DefaultRange = 64
)

// Result is one run of the lab. JSON names are a contract (issue #12).
type Result struct {
	Kernel   string          `json:"kernel"`
	Range    int             `json:"range"`
	Patterns []PatternResult `json:"patterns"`
	// Seconds is how long the run took.
	Seconds float64 `json:"seconds"`
	// Cached is when a result printed from the cache was measured (RFC 3339).
	Cached string `json:"cached,omitempty"`
}

// PatternResult is one pattern's baseline and remedies for one shape.
type PatternResult struct {
	Pattern string `json:"pattern"`
	// Variant tells apart shapes of one pattern (port-in-use: who holds the port).
	Variant string `json:"variant,omitempty"`
	// Process names the culprit whose shape this is (lab --from).
	Process  *Process       `json:"process,omitempty"`
	Shape    Shape          `json:"shape"`
	Baseline Measure        `json:"baseline"`
	Remedies []RemedyResult `json:"remedies"`
	Notes    []string       `json:"notes,omitempty"`
}

// Process is the culprit a --from shape came from.
type Process struct {
	PID  uint32 `json:"pid"`
	Comm string `json:"comm"`
}

// Measure is what one experiment observed.
type Measure struct {
	Made       int    `json:"made"`
	Possible   int    `json:"possible"`
	FailedCall string `json:"failed_call"` // bind, connect, listen or none
	Errno      string `json:"errno"`
}

// RemedyResult is one remedy measured against the baseline.
type RemedyResult struct {
	Remedy     string `json:"remedy"`
	Verdict    string `json:"verdict"`
	Made       int    `json:"made"`
	Possible   int    `json:"possible"`
	FailedCall string `json:"failed_call"`
	Errno      string `json:"errno"`
	Note       string `json:"note"`
}

// Pattern names the lab knows; the first six are attrib's.
const (
	BindAnyBeforeConnect  = "bind-any-before-connect"
	BindIPBeforeConnect   = "bind-ip-before-connect"
	ConnectPortExhaustion = "connect-port-exhaustion"
	ConnectTupleConflict  = "connect-tuple-conflict"
	PortInUse             = "port-in-use"
	BindPortExhaustion    = "bind-port-exhaustion"
	UDPAutobind           = "udp-autobind"
)

// Patterns lists them in the order the lab runs and prints them.
var Patterns = []string{
	BindAnyBeforeConnect, BindIPBeforeConnect, ConnectPortExhaustion,
	ConnectTupleConflict, PortInUse, BindPortExhaustion, UDPAutobind,
}

// KnownPattern says whether the lab can reproduce the pattern.
func KnownPattern(p string) bool {
	for _, q := range Patterns {
		if q == p {
			return true
		}
	}
	return false
}

// ErrRange is a range outside MinRange..MaxRange.
var ErrRange = fmt.Errorf("the range must be %d..%d ports", MinRange, MaxRange)

// ValidRange checks a --range value before anything runs.
func ValidRange(n int) error {
	if n < MinRange || n > MaxRange {
		return fmt.Errorf("%d ports: %w", n, ErrRange)
	}
	return nil
}

// Run measures every shape on this kernel. Experiments run side by side,
// each in its own namespace: most of the time goes to waiting out the
// kernel's TIME_WAIT reuse delay, not to CPU.
func Run(release string, rangeN int, shapes []Shape) (*Result, error) {
	if err := ValidRange(rangeN); err != nil {
		return nil, err
	}
	start := time.Now()
	res := &Result{Kernel: release, Range: rangeN, Patterns: make([]PatternResult, len(shapes))}
	var plans []*plan
	for i, s := range shapes {
		p, err := newPlan(s)
		if err != nil {
			return nil, err
		}
		plans = append(plans, p)
		res.Patterns[i] = PatternResult{Pattern: s.Pattern, Variant: s.Variant, Process: s.Process, Shape: s, Notes: s.Notes}
	}
	if err := runPlans(plans); err != nil {
		return nil, err
	}
	for i, p := range plans {
		p.fill(&res.Patterns[i])
	}
	res.Seconds = time.Since(start).Seconds()
	return res, nil
}

// runPlans runs every experiment of every plan, at most parallel at a time
// so that the sockets held stay well inside the fd limit.
func runPlans(plans []*plan) error {
	var all []*experiment
	for _, p := range plans {
		all = append(all, p.experiments()...)
	}
	sem := make(chan struct{}, parallel(all))
	var wg sync.WaitGroup
	errs := make([]error, len(all))
	for i, e := range all {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			errs[i] = e.run()
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// fdBudget is how many sockets all experiments together may hold: three
// quarters of the open-file limit (Go raises the soft limit to the hard one
// at start), leaving the rest to the process.
func fdBudget() int {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil || lim.Cur > 1<<20 {
		return 16000
	}
	return int(lim.Cur) * 3 / 4
}

func parallel(all []*experiment) int {
	most := 1
	for _, e := range all {
		most = max(most, e.attempts+e.cfg.dests+2)
	}
	return max(1, min(4*runtime.NumCPU()+16, fdBudget()/most))
}
