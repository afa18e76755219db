package lab

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/portsleuth/portsleuth/internal/term"
)

// WriteJSON writes the result as the contract's JSON.
func (r *Result) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// WriteText writes one table per pattern. Process names are escaped: a
// name is the process's choice and reaches a terminal.
func (r *Result) WriteText(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "portsleuth lab: kernel %s, %d-port range, %.1f s, each experiment in a new network namespace\n",
		r.Kernel, r.Range, r.Seconds)
	for _, p := range r.Patterns {
		b.WriteString("\n")
		writePattern(&b, p)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func writePattern(b *strings.Builder, p PatternResult) {
	b.WriteString(p.Pattern)
	if p.Variant != "" {
		fmt.Fprintf(b, " (held by: %s)", term.Escape(p.Variant))
	}
	if p.Process != nil {
		fmt.Fprintf(b, " for pid %d (%s)", p.Process.PID, term.Escape(p.Process.Comm))
	}
	fmt.Fprintf(b, ": %s\n", shapeText(p.Shape))
	for _, n := range p.Notes {
		fmt.Fprintf(b, "  note: %s\n", term.Escape(n))
	}
	fmt.Fprintf(b, "  baseline: %s\n", outcome(p.Baseline.Made, p.Baseline.Possible, p.Baseline.FailedCall, p.Baseline.Errno))
	tw := tabwriter.NewWriter(b, 0, 0, 2, ' ', 0)
	for _, r := range p.Remedies {
		out := "-"
		if r.Verdict != Unavailable {
			out = outcome(r.Made, r.Possible, r.FailedCall, r.Errno)
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", term.Escape(r.Remedy), term.Escape(r.Verdict), out, term.Escape(r.Note))
	}
	tw.Flush()
}

func shapeText(s Shape) string {
	parts := []string{fmt.Sprintf("%d ports", s.Range), plural(s.Dests, "destination"), plural(s.Sources, "source address")}
	if len(s.Options) > 0 {
		parts = append(parts, strings.Join(s.Options, ","))
	}
	for _, v := range []struct {
		name string
		val  int
	}{{"tcp_tw_reuse", s.TCPTwReuse}, {"tcp_timestamps", s.TCPTimestamps}, {"ip_autobind_reuse", s.AutobindReuse}} {
		if v.val >= 0 {
			parts = append(parts, fmt.Sprintf("%s=%d", v.name, v.val))
		}
	}
	return strings.Join(parts, ", ")
}

func plural(n int, word string) string {
	if n == 1 {
		return "1 " + word
	}
	if strings.HasSuffix(word, "s") {
		return fmt.Sprintf("%d %ses", n, word)
	}
	return fmt.Sprintf("%d %ss", n, word)
}

// outcome is "64 of 64, then bind() EADDRINUSE" or "256 of 256, no failure".
func outcome(made, possible int, call, errno string) string {
	s := fmt.Sprintf("%d of %d", made, possible)
	switch call {
	case CallNone:
		return s + ", no failure"
	case "":
		return s
	}
	return fmt.Sprintf("%s, then %s() %s", s, call, errno)
}
