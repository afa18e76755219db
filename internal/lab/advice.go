package lab

import (
	"fmt"
	"strings"
)

// ForPattern returns the results of one pattern (every variant).
func (r *Result) ForPattern(pattern string) []PatternResult {
	var out []PatternResult
	for _, p := range r.Patterns {
		if p.Pattern == pattern {
			out = append(out, p)
		}
	}
	return out
}

// Advice is one pattern's result as a sentence a report can cite, e.g.
// "proven on 6.18.0 (lab, 64 ports, 4 destinations): ip_bind_address_no_port
// fixes (64 -> 256 of 256); so_reuseaddr no effect (64)". Pure: it reads
// only p.
func Advice(release string, p PatternResult) string {
	var b strings.Builder
	fmt.Fprintf(&b, "proven on %s (lab, %d ports", release, p.Shape.Range)
	if p.Shape.Dests > 1 {
		fmt.Fprintf(&b, ", %d destinations", p.Shape.Dests)
	}
	if p.Shape.Sources > 1 {
		fmt.Fprintf(&b, ", %d source addresses", p.Shape.Sources)
	}
	if p.Variant != "" {
		fmt.Fprintf(&b, ", port held by %s", p.Variant)
	}
	fmt.Fprintf(&b, "): baseline %s", baselineText(p.Baseline))
	for _, r := range p.Remedies {
		fmt.Fprintf(&b, "; %s %s", r.Remedy, remedyText(p.Baseline, r))
	}
	return b.String()
}

func baselineText(m Measure) string {
	if m.FailedCall == CallNone {
		return fmt.Sprintf("%d, no failure", m.Made)
	}
	return fmt.Sprintf("%d, then %s() %s", m.Made, m.FailedCall, m.Errno)
}

func remedyText(base Measure, r RemedyResult) string {
	switch r.Verdict {
	case Fixes:
		return fmt.Sprintf("fixes (%d -> %d of %d)", base.Made, r.Made, r.Possible)
	case Partial:
		return fmt.Sprintf("partial (%d -> %d, then %s() %s)", base.Made, r.Made, r.FailedCall, r.Errno)
	case MovesToConnect:
		return fmt.Sprintf("moves the failure to connect() (%s after %d)", r.Errno, r.Made)
	case Unavailable:
		return "unavailable (" + r.Note + ")"
	}
	return fmt.Sprintf("no effect (%d)", r.Made)
}
