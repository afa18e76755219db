package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/portsleuth/portsleuth/internal/attrib"
	"github.com/portsleuth/portsleuth/internal/event"
	"github.com/portsleuth/portsleuth/internal/probe"
)

// tick is how often a session wakes without events: folded lines, drop
// notices and the end of the session are noticed within one tick.
const tick = 200 * time.Millisecond

// session is one run of the tracer.
type session struct {
	t       *probe.Tracer
	started time.Time
	settled bool
}

// startSession attaches the tracer and says on stderr which backend runs and why.
// command says a command will be started, whose process tree is followed.
func startSession(c *common, command bool, stderr io.Writer) (*session, error) {
	b, _ := probe.ParseBackend(c.backend) // validated with the flags
	t, err := probe.Start(probe.Options{PID: uint32(c.pid), Backend: b, Command: command})
	if err != nil {
		return nil, err
	}
	msg := "portsleuth: backend " + string(t.Backend())
	if notes := t.Notes(); len(notes) > 0 {
		msg += " (" + strings.Join(notes, "; ") + ")"
	}
	fmt.Fprintln(stderr, msg)
	for _, inf := range t.Backend().Inferred() {
		fmt.Fprintf(stderr, "portsleuth: backend %s: %s\n", t.Backend(), inf)
	}
	return &session{t: t, started: time.Now()}, nil
}

// loop delivers failures to onEvent until ctx ends, then drains what the
// ring buffer still holds. onTick runs at least once per tick.
func (s *session) loop(ctx context.Context, onEvent func(event.Event), onTick func(now time.Time)) error {
	lastTick := time.Now()
	for n := 0; ; n++ {
		done := ctx.Err() != nil
		// The deadline only matters when the ring buffer runs dry; renew it
		// every few events, not on each one (a storm delivers 100k+/s).
		if done {
			if !s.settled {
				// The cgroup backend decides some failures only later.
				s.t.Settle()
				s.settled = true
			}
			// Past deadline: Read returns what is queued, then ErrDeadlineExceeded.
			s.t.SetDeadline(time.Now())
		} else if n%64 == 0 {
			s.t.SetDeadline(time.Now().Add(tick))
		}
		e, err := s.t.Read()
		switch {
		case err == nil:
			onEvent(e)
			if n%64 != 0 {
				continue
			}
		case errors.Is(err, os.ErrDeadlineExceeded):
			if done {
				onTick(time.Now())
				return nil
			}
			n = -1 // renew the deadline before the next read
		default:
			return fmt.Errorf("reading events: %w", err)
		}
		if now := time.Now(); now.Sub(lastTick) >= tick {
			lastTick = now
			onTick(now)
		}
	}
}

// classify attributes a live event. Only a port-0 bind failure depends on the
// process's history, so only then are its counters read.
func (s *session) classify(e event.Event) attrib.Pattern {
	var st event.ProcStats
	if e.Class.Op == event.Bind && e.Class.Port0 {
		st = s.t.ProcStats(e.Proc())
	}
	return attrib.Classify(e.Class, st)
}

func (s *session) close() error { return s.t.Close() }

// runContext ends on SIGINT or SIGTERM, or once d has passed (0: never).
func runContext(d time.Duration) (context.Context, context.CancelFunc) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	if d <= 0 {
		return ctx, stop
	}
	timed, cancel := context.WithTimeout(ctx, d)
	return timed, func() { cancel(); stop() }
}
