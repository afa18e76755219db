package pools

import (
	"fmt"
	"time"

	"github.com/portsleuth/portsleuth/internal/event"
	"github.com/portsleuth/portsleuth/internal/term"
)

// Snapshot is the pressure around one failure, taken when it happened: the
// namespace's verdict and the pool the failing call drew from.
type Snapshot struct {
	Taken       string       `json:"taken"`
	Netns       uint64       `json:"netns"`
	Sockets     int          `json:"sockets"`
	Verdict     string       `json:"verdict"`
	BindPool    *BindPool    `json:"bind_pool,omitempty"`
	ConnectPool *ConnectPool `json:"connect_pool,omitempty"`
}

// SnapshotFor picks from ns what matters to e: the bind(0) pool of the
// address a bind or listen wanted, or the fullest connect pool to e's
// destination (the kernel picks the source address of an unbound socket).
func SnapshotFor(ns Namespace, e *event.Event) *Snapshot {
	s := &Snapshot{Taken: time.Now().UTC().Format(time.RFC3339), Netns: ns.Netns, Sockets: ns.Sockets, Verdict: ns.Verdict}
	if e.Class.Op == event.Connect {
		for i := range ns.ConnectPools {
			p := &ns.ConnectPools[i]
			if p.Dest == e.Dest.String() && (s.ConnectPool == nil || p.PercentUsed > s.ConnectPool.PercentUsed) {
				s.ConnectPool = p
			}
		}
		return s
	}
	for i := range ns.BindPools {
		p := &ns.BindPools[i]
		if p.Proto == e.Class.Proto && p.Local == e.Addr.Addr().String() {
			s.BindPool = p
		}
	}
	return s
}

// Text is the one-line form, escaped (term.Escape) though its strings are
// addresses today: a Snapshot can be decoded from JSON, and text trusts no decoded string.
func (s *Snapshot) Text() string {
	return term.Escape(s.text())
}

func (s *Snapshot) text() string {
	switch {
	case s.ConnectPool != nil:
		p := s.ConnectPool
		held := ""
		if p.BindOwned > 0 {
			held = fmt.Sprintf("%d held by bind()/listen() owners for every destination, ", p.BindOwned)
		}
		return fmt.Sprintf("at the first failure, the connect pool to %s from %s was %.0f%% full (%d established, %d TIME_WAIT, %s%d free); namespace: %s",
			p.Dest, p.Local, p.PercentUsed, p.Established, p.TimeWait, held, p.Free, s.Verdict)
	case s.BindPool != nil:
		p := s.BindPool
		return fmt.Sprintf("at the first failure, the bind(%s:0) pool (%s) was %.0f%% used (%d free); namespace: %s",
			p.Local, p.Proto, p.PercentUsed, p.Free, s.Verdict)
	}
	return "at the first failure: " + s.Verdict
}
