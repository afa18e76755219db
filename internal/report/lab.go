package report

import (
	"fmt"
	"strings"

	"github.com/portsleuth/portsleuth/internal/term"
)

// LabCitation is what the remedy lab (`portsleuth lab`) measured on the
// kernel the failures happened on, for one pattern: the fixes its advice
// names, proven or refuted there.
type LabCitation struct {
	Kernel string `json:"kernel"`
	Range  int    `json:"range"`
	// Pattern is the lab's name for it (udp-autobind for UDP's EAGAIN).
	Pattern  string      `json:"pattern"`
	Measured string      `json:"measured"` // RFC 3339
	Remedies []LabRemedy `json:"remedies"`
	// Proven is each measured shape as a sentence with its numbers.
	Proven []string `json:"proven"`
	// Refuted are claims of the advice the lab did not bear out on this
	// kernel: the advice is wrong there on those points.
	Refuted []string `json:"refuted,omitempty"`
}

// LabRemedy is one remedy's verdict, as `lab -o json` gives it.
type LabRemedy struct {
	Remedy   string `json:"remedy"`
	Variant  string `json:"variant,omitempty"`
	Verdict  string `json:"verdict"`
	Baseline int    `json:"baseline"`
	Made     int    `json:"made"`
	Possible int    `json:"possible"`
}

// writeLab writes a pattern's lab lines: the refuted claims first, they
// change what the fix line above means.
func writeLab(b *strings.Builder, c *LabCitation) {
	if c == nil {
		return
	}
	for _, s := range c.Refuted {
		fmt.Fprintf(b, "     LAB REFUTES: %s\n", term.Escape(s))
	}
	for _, s := range c.Proven {
		fmt.Fprintf(b, "     lab:      %s (measured %s)\n", term.Escape(s), term.Escape(c.Measured))
	}
}
