package lab

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/portsleuth/portsleuth/internal/attrib"
	"github.com/portsleuth/portsleuth/internal/report"
)

// Refuted lists, as sentences, the claims of the pattern's advice
// (attrib.Claims) this result does not bear out: on this kernel the advice
// says something the lab did not show.
func Refuted(p PatternResult) []string {
	var out []string
	for _, c := range attrib.Claims[p.Pattern] {
		if c.Variant != "" && c.Variant != p.Variant {
			continue
		}
		r, ok := remedyOf(p, c.Remedy)
		switch {
		case !ok:
			out = append(out, fmt.Sprintf("the advice relies on %s, which the lab did not measure for %s", c.Remedy, keyOf(p)))
		case !c.Bears(r.Verdict):
			out = append(out, fmt.Sprintf("the advice expects %s to be %s for %s, the lab measured %s (%d made)",
				c.Remedy, strings.Join(c.Verdicts, " or "), keyOf(p), r.Verdict, r.Made))
		}
	}
	return out
}

func remedyOf(p PatternResult, name string) (RemedyResult, bool) {
	i := slices.IndexFunc(p.Remedies, func(r RemedyResult) bool { return r.Remedy == name })
	if i < 0 {
		return RemedyResult{}, false
	}
	return p.Remedies[i], true
}

func keyOf(p PatternResult) string {
	if p.Variant != "" {
		return p.Pattern + " (" + p.Variant + ")"
	}
	return p.Pattern
}

// Cite gives each pattern of the report the lab's verdicts for it, when
// res was measured on the kernel the report's failures happened on. It
// never runs the lab. It returns what the report should say about the lab
// (how to run it, or why it is not cited), "" when every pattern it knows
// got its verdicts.
func Cite(r *report.Report, res *Result, measured time.Time) string {
	switch {
	case r.Kernel == "":
		return "the failures' kernel is not recorded, so no lab result is cited: run `portsleuth lab --from FILE` on a host with that kernel to test the fixes"
	case res == nil:
		return fmt.Sprintf("the remedy lab has not run on %s: `portsleuth lab` tests these fixes there (about 2 s, in throwaway network namespaces; results are cached), or add --lab to this report", r.Kernel)
	case res.Kernel != r.Kernel:
		return fmt.Sprintf("the lab's cached results are for kernel %s, the failures happened on %s: not cited", res.Kernel, r.Kernel)
	}
	for i := range r.Processes {
		p := &r.Processes[i]
		for j := range p.Patterns {
			e := &p.Patterns[j]
			if c := citation(res, measured, labPattern(p, e.Pattern)); c != nil {
				e.Lab = c
			}
		}
	}
	return ""
}

// labPattern is the lab's name for a report pattern: UDP's EAGAIN, which
// attrib files under connect-port-exhaustion, is udp-autobind.
func labPattern(p *report.Process, pattern string) string {
	if pattern != string(attrib.ConnectPortExhaustion) {
		return pattern
	}
	udp := false
	for _, ex := range p.Examples {
		if ex.Pattern != pattern {
			continue
		}
		if ex.Proto != "udp" {
			return pattern
		}
		udp = true
	}
	if udp {
		return attrib.UDPAutobind
	}
	return pattern
}

func citation(res *Result, measured time.Time, pattern string) *report.LabCitation {
	prs := res.ForPattern(pattern)
	if len(prs) == 0 {
		return nil
	}
	c := &report.LabCitation{Kernel: res.Kernel, Range: res.Range, Pattern: pattern, Measured: measured.UTC().Format(time.RFC3339)}
	for _, p := range prs {
		c.Proven = append(c.Proven, Advice(res.Kernel, p))
		c.Refuted = append(c.Refuted, Refuted(p)...)
		for _, r := range p.Remedies {
			c.Remedies = append(c.Remedies, report.LabRemedy{Remedy: r.Remedy, Variant: p.Variant, Verdict: r.Verdict,
				Baseline: p.Baseline.Made, Made: r.Made, Possible: r.Possible})
		}
	}
	return c
}
