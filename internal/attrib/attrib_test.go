package attrib

import (
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/portsleuth/portsleuth/internal/event"
)

func TestClassify(t *testing.T) {
	connected := event.ProcStats{Port0BindsOK: 64, Port0BindConnects: 64}
	never := event.ProcStats{Port0BindsOK: 64}
	bind := func(errno unix.Errno, port0, any bool) event.Class {
		return event.Class{Op: event.Bind, Proto: "tcp", Family: "ipv4", Errno: errno, Port0: port0, AnyAddr: any}
	}
	conn := func(errno unix.Errno, port0 bool) event.Class {
		return event.Class{Op: event.Connect, Proto: "tcp", Family: "ipv4", Errno: errno, Port0: port0, AnyAddr: port0}
	}
	for _, c := range []struct {
		class event.Class
		stats event.ProcStats
		want  Pattern
	}{
		{bind(unix.EADDRINUSE, true, true), connected, BindAnyBeforeConnect},
		{bind(unix.EADDRINUSE, true, false), connected, BindIPBeforeConnect},
		{bind(unix.EADDRINUSE, true, true), never, BindPortExhaustion},
		{bind(unix.EADDRINUSE, true, false), never, BindPortExhaustion},
		// An explicit port is never exhaustion, whatever the process did before.
		{bind(unix.EADDRINUSE, false, false), connected, PortInUse},
		{bind(unix.EADDRINUSE, false, true), never, PortInUse},
		{bind(unix.EADDRNOTAVAIL, true, false), never, AddressNotLocal},
		{bind(unix.EACCES, false, true), never, PrivilegedPort},
		{bind(unix.EPERM, false, true), never, Denied},
		{conn(unix.EADDRNOTAVAIL, true), never, ConnectPortExhaustion},
		{conn(unix.EADDRNOTAVAIL, false), never, ConnectTupleConflict},
		{conn(unix.EAGAIN, true), never, ConnectPortExhaustion},
		{conn(unix.EPERM, true), never, Denied},
		{conn(unix.EADDRINUSE, false), never, Other},
	} {
		if got := Classify(c.class, c.stats); got != c.want {
			t.Errorf("Classify(%+v, %+v) = %s, want %s", c.class, c.stats, got, c.want)
		}
	}
}

func TestEveryPatternHasAdvice(t *testing.T) {
	for _, p := range Patterns {
		f := &Finding{Pattern: p, Count: 1}
		if f.Advice() == "" || f.Evidence() == "" {
			t.Errorf("%s: empty advice or evidence", p)
		}
	}
}

// Advice must not send anyone to tcp_tw_recycle or promise SO_REUSEADDR fixes bind(0).
func TestAdviceIsTrueOnCurrentKernels(t *testing.T) {
	for _, p := range Patterns {
		a := (&Finding{Pattern: p}).Advice()
		for _, bad := range []string{"set tcp_tw_recycle", "tcp_tw_recycle=1", "SO_REUSEADDR fixes"} {
			if strings.Contains(a, bad) {
				t.Errorf("%s advice says %q: %s", p, bad, a)
			}
		}
	}
}
