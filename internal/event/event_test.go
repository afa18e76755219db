package event

import (
	"testing"

	"golang.org/x/sys/unix"
)

// States are named as ss names them; UDP's two states by their UDP meaning.
func TestStateName(t *testing.T) {
	for _, c := range []struct {
		proto string
		state uint8
		want  string
	}{
		{"tcp", 1, "ESTABLISHED"},
		{"tcp", 2, "SYN_SENT"},
		{"tcp", 6, "TIME_WAIT"},
		{"tcp", 7, "CLOSE"},
		{"tcp", 10, "LISTEN"},
		{"tcp", 12, "NEW_SYN_RECV"},
		{"udp", 1, "CONNECTED"},
		{"udp", 7, "UNCONNECTED"},
		{"udp", 10, "LISTEN"}, // not a UDP state: the TCP name, as ss prints it
		{"tcp", 0, "state 0"},
		{"tcp", 13, "state 13"},
		{"tcp", 255, "state 255"},
	} {
		if got := StateName(c.proto, c.state); got != c.want {
			t.Errorf("StateName(%s, %d) = %q, want %q", c.proto, c.state, got, c.want)
		}
	}
}

// A pid reused by a later process is another process.
func TestProcKey(t *testing.T) {
	a := Event{PID: 7, Start: 1000, TID: 8}
	b := Event{PID: 7, Start: 2000, TID: 7}
	if a.Proc() != (ProcKey{PID: 7, Start: 1000}) {
		t.Errorf("Proc() = %+v", a.Proc())
	}
	if a.Proc() == b.Proc() {
		t.Errorf("two processes on pid 7 share a key")
	}
	thread := Event{PID: 7, Start: 1000, TID: 9}
	if thread.Proc() != a.Proc() {
		t.Errorf("two threads of one process have different keys")
	}
}

// Failures counts the calls that failed for lack of an address or port, not
// the other errors.
func TestProcStatsFailures(t *testing.T) {
	s := ProcStats{BindsOK: 100, BindsFailed: 3, BindsOther: 50, ConnectsOK: 9, ConnectsFailed: 4, ConnectsOther: 70,
		ListensOK: 1, ListensFailed: 2, Port0BindsOK: 8, ConnectTWBlocked: 64}
	if got := s.Failures(); got != 9 {
		t.Errorf("Failures() = %d, want 3+4+2", got)
	}
	if (ProcStats{}).Failures() != 0 {
		t.Errorf("zero stats have failures")
	}
}

// A Class is a map key: classes differing in any field are distinct.
func TestClassIsAKey(t *testing.T) {
	base := Class{Op: Bind, Proto: "tcp", Family: "ipv4", Errno: unix.EADDRINUSE}
	variants := []Class{base}
	for _, f := range []func(*Class){
		func(c *Class) { c.Op = Connect },
		func(c *Class) { c.Proto = "udp" },
		func(c *Class) { c.Family = "ipv6" },
		func(c *Class) { c.Errno = unix.EADDRNOTAVAIL },
		func(c *Class) { c.Port0 = true },
		func(c *Class) { c.AnyAddr = true },
	} {
		c := base
		f(&c)
		variants = append(variants, c)
	}
	m := map[Class]uint64{}
	for i, c := range variants {
		m[c] += uint64(i + 1)
	}
	if len(m) != len(variants) {
		t.Errorf("%d classes collapse to %d keys", len(variants), len(m))
	}
}
