package lab

import "slices"

// Shape is how a program makes the calls of one pattern: what the lab
// reproduces as the baseline before it tries the remedies.
type Shape struct {
	Pattern string `json:"pattern"`
	Variant string `json:"variant,omitempty"`
	// Range is the ephemeral range's size in ports.
	Range int `json:"range"`
	// Dests are the destinations (listener ports), Sources the local
	// addresses the program binds.
	Dests   int `json:"destinations"`
	Sources int `json:"sources"`
	// Options are the socket options the program sets, as decode spells them.
	Options []string `json:"options"`
	// Sysctls the baseline namespace gets; -1 keeps the kernel's default.
	TCPTwReuse    int `json:"tcp_tw_reuse"`
	TCPTimestamps int `json:"tcp_timestamps"`
	AutobindReuse int `json:"ip_autobind_reuse"`
	// Process and Notes describe where the shape came from (lab --from).
	Process *Process `json:"-"`
	Notes   []string `json:"-"`
	also    int      // other culprits of this shape (lab --from)
}

// Socket option names as decode.OptionNames spells them.
const (
	OptReuseAddr = "SO_REUSEADDR"
	OptReusePort = "SO_REUSEPORT"
	OptNoPort    = "IP_BIND_ADDRESS_NO_PORT"
)

func (s Shape) has(opt string) bool { return slices.Contains(s.Options, opt) }

// Port-in-use variants: who holds the port the server wants.
const (
	HolderTimeWait = "time-wait" // the server's own earlier run, restarted
	HolderListener = "listener"  // another server listening on it
)

// DefaultShapes are the shapes of the incidents the patterns are named
// after, with an n-port range; pattern "" or "all" selects them all.
func DefaultShapes(n int, pattern string) []Shape {
	base := func(p string) Shape {
		return Shape{Pattern: p, Range: n, Dests: 1, Sources: 1, Options: []string{}, TCPTwReuse: -1, TCPTimestamps: -1, AutobindReuse: -1}
	}
	// Four destinations: where IP_BIND_ADDRESS_NO_PORT shows its worth.
	bindAny := base(BindAnyBeforeConnect)
	bindAny.Dests = 4
	bindIP := base(BindIPBeforeConnect)
	bindIP.Dests = 4
	tw := base(ConnectPortExhaustion)
	// The namespace default (2) reuses TIME_WAIT toward loopback, which is
	// all the lab talks to: 0 stands for a real, remote destination.
	tw.TCPTwReuse = 0
	tw.Notes = []string{"baseline tcp_tw_reuse=0: the default (2) covers loopback destinations only, and the lab's are loopback"}
	tuple := base(ConnectTupleConflict)
	tuple.Options = []string{OptReuseAddr}
	piuTW := base(PortInUse)
	piuTW.Variant = HolderTimeWait
	piuL := base(PortInUse)
	piuL.Variant = HolderListener
	all := []Shape{bindAny, bindIP, tw, tuple, piuTW, piuL, base(BindPortExhaustion), base(UDPAutobind)}
	if pattern == "" || pattern == "all" {
		return all
	}
	var out []Shape
	for _, s := range all {
		if s.Pattern == pattern {
			out = append(out, s)
		}
	}
	return out
}
