// Package report turns what the tracer saw into output: one record per failure
// (watch, and the examples of a report) and the per-process culprit report.
package report

import (
	"fmt"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/portsleuth/portsleuth/internal/attrib"
	"github.com/portsleuth/portsleuth/internal/event"
	"github.com/portsleuth/portsleuth/internal/pools"
	"github.com/portsleuth/portsleuth/internal/term"
)

// Record is one failed call as `watch -o json` prints it. The field names are
// a contract (see README).
type Record struct {
	Time    string   `json:"time"`
	PID     uint32   `json:"pid"`
	TID     uint32   `json:"tid"`
	Comm    string   `json:"comm"`
	Thread  string   `json:"thread"`
	Op      string   `json:"op"`
	Proto   string   `json:"proto"`
	Family  string   `json:"family"`
	Addr    string   `json:"addr"`
	Dest    string   `json:"dest,omitempty"`
	Errno   string   `json:"errno"`
	Pattern string   `json:"pattern"`
	Options []string `json:"options"`
	Netns   uint64   `json:"netns"`
	SockIno uint64   `json:"socket_inode"`
	Source  string   `json:"source"`
	// ErrnoInferred: the backend saw no return value and inferred the errno.
	ErrnoInferred bool `json:"errno_inferred,omitempty"`
	// Kernel layer, connect: candidate ports taken by TIME_WAIT / by live connections.
	TWBlocked  uint32 `json:"tw_blocked,omitempty"`
	EstBlocked uint32 `json:"est_blocked,omitempty"`
	// Holder (kernel layer, EADDRINUSE) is the socket holding the port.
	Holder *event.Holder `json:"holder,omitempty"`
	// Pressure is the snapshot of the first failure of its kind; watch prints
	// it on a line of its own ({"type":"enrichment"}) and leaves this empty.
	Pressure *pools.Snapshot `json:"pressure,omitempty"`
	// Folded is set on a line that stands for N repeats watch did not print.
	Folded uint64 `json:"folded,omitempty"`
}

// NewRecord renders an event with its pattern.
func NewRecord(e event.Event, p attrib.Pattern) Record {
	r := Record{
		Time:          e.Time.UTC().Format(time.RFC3339Nano),
		PID:           e.PID,
		TID:           e.TID,
		Comm:          e.Comm,
		Thread:        e.Thread,
		Op:            string(e.Class.Op),
		Proto:         e.Class.Proto,
		Family:        e.Class.Family,
		Addr:          e.Addr.String(),
		Errno:         unix.ErrnoName(e.Class.Errno),
		Pattern:       string(p),
		Options:       e.Options,
		Netns:         e.Netns,
		SockIno:       e.SockIno,
		Source:        e.Source,
		ErrnoInferred: e.ErrnoInferred,
		TWBlocked:     e.TWBlocked,
		EstBlocked:    e.EstBlocked,
		Holder:        e.Holder,
	}
	if r.Errno == "" {
		r.Errno = fmt.Sprintf("errno %d", int(e.Class.Errno))
	}
	if e.Class.Op == event.Connect {
		r.Dest = e.Dest.String()
		if e.Addr.Port() == 0 && !e.Addr.Addr().IsUnspecified() {
			r.Addr = e.Addr.Addr().String() + ":0"
		}
	}
	if r.Options == nil {
		r.Options = []string{}
	}
	return r
}

// Text is the one-line form of a record. The line is escaped whole (term.Escape):
// the names are the process's choice, and a replayed recording chooses every field.
func (r Record) Text() string {
	var b strings.Builder
	t, err := time.Parse(time.RFC3339Nano, r.Time)
	if err == nil {
		b.WriteString(t.Local().Format("15:04:05.000"))
	} else {
		b.WriteString(r.Time)
	}
	fmt.Fprintf(&b, " pid=%d %s", r.PID, r.Comm)
	if r.Thread != "" && r.Thread != r.Comm {
		fmt.Fprintf(&b, "/%s", r.Thread)
	}
	fmt.Fprintf(&b, " %s %s/%s %s", r.Op, r.Proto, r.Family, r.Addr)
	if r.Dest != "" {
		fmt.Fprintf(&b, " -> %s", r.Dest)
	}
	fmt.Fprintf(&b, " %s", r.Errno)
	if r.ErrnoInferred {
		b.WriteString("(inferred)")
	}
	fmt.Fprintf(&b, " %s", r.Pattern)
	if len(r.Options) > 0 {
		fmt.Fprintf(&b, " [%s]", strings.Join(r.Options, ","))
	}
	if r.Holder != nil {
		fmt.Fprintf(&b, " held by %s", attrib.DescribeHolder(*r.Holder))
	}
	if r.Folded > 0 {
		fmt.Fprintf(&b, " ... %d more like this in the last second", r.Folded)
	}
	line := term.Escape(b.String())
	if r.Pressure != nil {
		line += "\n    pressure: " + r.Pressure.Text()
	}
	return line
}
