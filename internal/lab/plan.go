package lab

import (
	"fmt"
	"strconv"
)

// config is what one experiment's namespace and sockets get.
type config struct {
	rangeN, dests, sources int
	reuseAddr, reusePort   bool
	noPort                 bool // IP_BIND_ADDRESS_NO_PORT before bind
	fixedPort              bool // bind a fixed source port (tuple conflict)
	linger0                bool // close with SO_LINGER {1, 0}: RST, no TIME_WAIT
	socketRange            bool // IP_LOCAL_PORT_RANGE wider than the namespace's
	keepalive              bool // reuse connections instead of making new ones
	sysctls                []sysctl
}

type sysctl struct{ name, value string }

func (c *config) set(name string, value int) {
	for i := range c.sysctls {
		if c.sysctls[i].name == name {
			c.sysctls[i].value = strconv.Itoa(value)
			return
		}
	}
	c.sysctls = append(c.sysctls, sysctl{name, strconv.Itoa(value)})
}

func (c *config) get(name string) (int, bool) {
	for _, s := range c.sysctls {
		if s.name == name {
			n, err := strconv.Atoi(s.value)
			return n, err == nil
		}
	}
	return 0, false
}

// remedy changes a shape's config; apply returns a note, or ok false when
// the remedy is already in the shape (nothing to prove).
type remedy struct {
	name  string
	apply func(c *config, s Shape) (note string, ok bool)
}

func flag(set func(c *config) *bool, note string) func(*config, Shape) (string, bool) {
	return func(c *config, _ Shape) (string, bool) {
		p := set(c)
		if *p {
			return "", false
		}
		*p = true
		return note, true
	}
}

var (
	noPort = remedy{"ip_bind_address_no_port", func(c *config, _ Shape) (string, bool) {
		if c.noPort && !c.fixedPort {
			return "", false
		}
		c.noPort, c.fixedPort = true, false
		return "IP_BIND_ADDRESS_NO_PORT before bind(addr, 0): the port is picked at connect() per destination", true
	}}
	reuseAddr = remedy{"so_reuseaddr", flag(func(c *config) *bool { return &c.reuseAddr }, "SO_REUSEADDR before bind()")}
	autobind  = remedy{"so_reuseaddr+ip_autobind_reuse", func(c *config, _ Shape) (string, bool) {
		if v, _ := c.get("ip_autobind_reuse"); c.reuseAddr && v == 1 {
			return "", false
		}
		c.reuseAddr = true
		c.set("ip_autobind_reuse", 1)
		return "SO_REUSEADDR and net.ipv4.ip_autobind_reuse=1", true
	}}
	twReuse = remedy{"tcp_tw_reuse", func(c *config, _ Shape) (string, bool) {
		if v, ok := c.get("tcp_tw_reuse"); ok && v == 1 {
			return "", false
		}
		c.set("tcp_tw_reuse", 1)
		c.set("tcp_timestamps", 1)
		return "net.ipv4.tcp_tw_reuse=1, tcp_timestamps=1; a failed connect() is retried for up to " + retryWindow.String() + " (the kernel reuses a TIME_WAIT port only after about 1 s)", true
	}}
	twReuseNoTS = remedy{"tcp_tw_reuse-no-timestamps", func(c *config, _ Shape) (string, bool) {
		c.set("tcp_tw_reuse", 1)
		c.set("tcp_timestamps", 0)
		return "net.ipv4.tcp_tw_reuse=1, tcp_timestamps=0; retried for up to " + retryWindow.String(), true
	}}
	twRecycle = remedy{"tcp_tw_recycle", func(c *config, _ Shape) (string, bool) {
		c.set("tcp_tw_recycle", 1)
		return "net.ipv4.tcp_tw_recycle=1", true
	}}
	finTimeout = remedy{"tcp_fin_timeout", func(c *config, _ Shape) (string, bool) {
		c.set("tcp_fin_timeout", 1)
		return "net.ipv4.tcp_fin_timeout=1 (it bounds FIN_WAIT2, not TIME_WAIT)", true
	}}
	wider = remedy{"wider-range", func(c *config, _ Shape) (string, bool) {
		c.rangeN *= 2
		return fmt.Sprintf("ip_local_port_range of %d ports", c.rangeN), true
	}}
	moreSources = remedy{"more-sources", func(c *config, s Shape) (string, bool) {
		c.sources *= 2
		note := fmt.Sprintf("%d source addresses", c.sources)
		if s.Pattern == ConnectPortExhaustion {
			// Without bind() every connection leaves from one address.
			c.noPort = true
			note += ", bound with IP_BIND_ADDRESS_NO_PORT"
		}
		return note, true
	}}
	moreDests = remedy{"more-destinations", func(c *config, _ Shape) (string, bool) {
		c.dests *= 2
		return fmt.Sprintf("%d destinations", c.dests), true
	}}
	reusePort = remedy{"so_reuseport", flag(func(c *config) *bool { return &c.reusePort }, "SO_REUSEPORT before bind()")}
	linger0   = remedy{"so_linger0", flag(func(c *config) *bool { return &c.linger0 }, "SO_LINGER {1, 0} before close(): RST instead of FIN, no TIME_WAIT")}
	sockRange = remedy{"ip_local_port_range", flag(func(c *config) *bool { return &c.socketRange }, "per-socket IP_LOCAL_PORT_RANGE asking for 1024-65535 (the kernel keeps a socket within the namespace's range)")}
	keepalive = remedy{"keepalive", flag(func(c *config) *bool { return &c.keepalive }, "one connection per destination, reused (keep-alive, pooling): the control")}
)

// knownRemedy says whether name is a remedy some pattern of the lab applies.
func knownRemedy(name string) bool {
	for _, p := range patterns {
		for _, r := range p.remedies {
			if r.name == name {
				return true
			}
		}
	}
	return false
}

// pattern is how the lab reproduces one pattern.
type pattern struct {
	run      func(*experiment) error
	remedies []remedy
	// enough is the count that shows the trap gone: the 4-tuple space of
	// the shape, or a demand well beyond the range.
	enough func(s Shape) int
	// possible is the theory for one config; 0 = no limit but the demand.
	possible func(c config) int
	// churn: the demand is a rate (connections closed and made again), so a
	// remedy that only raises the ceiling postpones the failure, it never
	// fixes it: partial, whatever the count.
	churn bool
}

var patterns = map[string]pattern{
	BindAnyBeforeConnect: {
		run:      (*experiment).bindConnect,
		remedies: []remedy{noPort, reuseAddr, autobind, reusePort, wider, moreDests, sockRange, twRecycle, keepalive},
		enough:   func(s Shape) int { return s.Range * s.Dests },
		possible: func(c config) int {
			if c.noPort || c.reuseAddr && autobindOn(c) {
				return c.rangeN * c.dests
			}
			return c.rangeN
		},
	},
	BindIPBeforeConnect: {
		run:      (*experiment).bindConnect,
		remedies: []remedy{noPort, reuseAddr, autobind, wider, moreSources, moreDests, twRecycle, keepalive},
		enough:   func(s Shape) int { return s.Range * s.Dests * s.Sources },
		possible: func(c config) int {
			if c.noPort || c.reuseAddr && autobindOn(c) {
				return c.rangeN * c.dests * c.sources
			}
			return c.rangeN * c.sources
		},
	},
	ConnectPortExhaustion: {
		churn:    true,
		run:      (*experiment).connectClose,
		remedies: []remedy{twReuse, twReuseNoTS, twRecycle, finTimeout, reuseAddr, linger0, wider, moreSources, moreDests, sockRange, keepalive},
		// Two rounds of the pool: the second needs TIME_WAIT reused.
		enough: func(s Shape) int { return 2 * s.Range * s.Dests * s.Sources },
		possible: func(c config) int {
			if v, _ := c.get("tcp_tw_reuse"); c.linger0 || v == 1 {
				return 0
			}
			return c.rangeN * c.dests * c.sources
		},
	},
	ConnectTupleConflict: {
		run:      (*experiment).bindConnect,
		remedies: []remedy{noPort, reusePort, moreDests, keepalive},
		enough:   func(s Shape) int { return s.Range * s.Dests },
		possible: func(c config) int {
			if c.fixedPort {
				return c.dests
			}
			return c.rangeN * c.dests
		},
	},
	PortInUse: {
		run:      (*experiment).restartServer,
		remedies: []remedy{reuseAddr, reusePort, linger0},
		enough:   func(Shape) int { return 1 },
		possible: func(config) int { return 1 },
	},
	BindPortExhaustion: {
		run:      (*experiment).bindOnly,
		remedies: []remedy{noPort, reuseAddr, autobind, wider, moreSources},
		enough:   func(s Shape) int { return 4 * s.Range * s.Sources },
		possible: func(c config) int {
			// A bind() with IP_BIND_ADDRESS_NO_PORT reserves no port.
			if c.noPort || c.reuseAddr && autobindOn(c) {
				return 0
			}
			return c.rangeN * c.sources
		},
	},
	UDPAutobind: {
		run:      (*experiment).udpConnect,
		remedies: []remedy{reuseAddr, wider, moreSources, moreDests, keepalive},
		enough:   func(s Shape) int { return 4 * s.Range * s.Sources },
		possible: func(c config) int {
			if c.reuseAddr { // UDP autobind shares ports among SO_REUSEADDR sockets
				return 0
			}
			return c.rangeN * c.sources
		},
	},
}

// movedToConnect: the baseline failed in bind() or listen(), the remedy in
// connect(), without even doubling the count. Where ports are shared
// (ip_autobind_reuse) the exact count varies with which shared port the
// kernel picks, so "the same count" is read as "not twice as many".
func movedToConnect(base, m Measure) bool {
	return (base.FailedCall == CallBind || base.FailedCall == CallListen) && m.FailedCall == CallConnect &&
		m.Made >= base.Made && m.Made < 2*max(base.Made, 1)
}

func autobindOn(c config) bool { v, _ := c.get("ip_autobind_reuse"); return v == 1 }

// maxAttempts bounds one experiment's sockets, whatever the shape.
const maxAttempts = 8192

// plan is one shape's baseline and remedy experiments.
type plan struct {
	shape    Shape
	enough   int
	base     *experiment
	remedies []*experiment
}

func newPlan(s Shape) (*plan, error) {
	pat, ok := patterns[s.Pattern]
	if !ok {
		return nil, fmt.Errorf("no lab for pattern %q", s.Pattern)
	}
	if err := ValidRange(s.Range); err != nil {
		return nil, err
	}
	s.Dests, s.Sources = clamp(s.Dests, 1, MaxDests), clamp(s.Sources, 1, MaxSources)
	p := &plan{shape: s, enough: min(pat.enough(s), maxAttempts)}
	c := baseConfig(s)
	p.base = p.experiment(pat, "", c)
	for _, r := range pat.remedies {
		rc := c.clone()
		note, ok := r.apply(&rc, s)
		if !ok {
			continue
		}
		e := p.experiment(pat, r.name, rc)
		e.note = note
		p.remedies = append(p.remedies, e)
	}
	return p, nil
}

// Bounds on a shape's destinations and source addresses.
const (
	MaxDests   = 16
	MaxSources = 16
)

func clamp(v, lo, hi int) int { return max(lo, min(v, hi)) }

func baseConfig(s Shape) config {
	c := config{
		rangeN: s.Range, dests: s.Dests, sources: s.Sources,
		reuseAddr: s.has(OptReuseAddr), reusePort: s.has(OptReusePort), noPort: s.has(OptNoPort),
		fixedPort: s.Pattern == ConnectTupleConflict,
	}
	for _, v := range []struct {
		name string
		val  int
	}{{"tcp_tw_reuse", s.TCPTwReuse}, {"tcp_timestamps", s.TCPTimestamps}, {"ip_autobind_reuse", s.AutobindReuse}} {
		if v.val >= 0 {
			c.set(v.name, v.val)
		}
	}
	return c
}

func (c config) clone() config {
	c.sysctls = append([]sysctl(nil), c.sysctls...)
	return c
}

func (p *plan) experiment(pat pattern, name string, c config) *experiment {
	e := &experiment{remedy: name, pattern: p.shape.Pattern, variant: p.shape.Variant, cfg: c, work: pat.run}
	if !c.keepalive { // reused connections need no new ports
		e.m.Possible = pat.possible(c)
	}
	// One attempt past what the theory allows shows which call fails there.
	e.attempts = p.enough
	if e.m.Possible > 0 && e.m.Possible >= p.enough {
		e.attempts = e.m.Possible + 1
	}
	if e.m.Possible == 0 {
		e.m.Possible = p.enough
	}
	e.attempts = min(e.attempts, maxAttempts)
	return e
}

func (p *plan) experiments() []*experiment { return append([]*experiment{p.base}, p.remedies...) }

// fill writes the measured baseline and remedies, with their verdicts.
func (p *plan) fill(pr *PatternResult) {
	pr.Shape = p.shape
	pr.Baseline = p.base.m
	for _, e := range p.remedies {
		r := RemedyResult{Remedy: e.remedy, Made: e.m.Made, Possible: e.m.Possible, FailedCall: e.m.FailedCall, Errno: e.m.Errno}
		r.Verdict, r.Note = verdict(p.base.m, e, p.enough, patterns[p.shape.Pattern].churn)
		pr.Remedies = append(pr.Remedies, r)
	}
	if p.base.m.FailedCall == CallNone {
		pr.Notes = append(pr.Notes, "the baseline did not fail: with these options and sysctls the lab's workload does not reproduce the failure, so no remedy can show an effect (live connections or a faster rate may be the cause)")
	}
	if p.base.unavailable != "" {
		pr.Notes = append(pr.Notes, "baseline: "+p.base.unavailable)
	}
}

// verdict compares a remedy with the baseline (issue #12's rules).
func verdict(base Measure, e *experiment, enough int, churn bool) (string, string) {
	m, note := e.m, e.note
	join := func(s string) string {
		if note == "" {
			return s
		}
		return note + "; " + s
	}
	switch {
	case e.unavailable != "":
		return Unavailable, e.unavailable
	case base.FailedCall == CallNone:
		// Nothing failed to begin with: no remedy can show it fixes anything.
		return NoEffect, join("the baseline did not fail, so this shape shows no remedy's effect")
	case m.FailedCall == CallNone || !churn && m.Made >= enough && m.Made > base.Made:
		return Fixes, join(fmt.Sprintf("%d made, the shape needs %d", m.Made, enough))
	case m.Made == base.Made && m.FailedCall == base.FailedCall:
		return NoEffect, note
	case movedToConnect(base, m):
		if m.Made == base.Made {
			return MovesToConnect, note
		}
		return MovesToConnect, join(fmt.Sprintf("%d made before connect() failed (baseline %d): shared ports collide at connect()", m.Made, base.Made))
	case m.Made > base.Made && churn:
		return Partial, join(fmt.Sprintf("new ceiling %d (baseline %d): closed connections refill the pool with TIME_WAIT at the rate they are made, so a higher ceiling only postpones the failure", m.Made, base.Made))
	case m.Made > base.Made:
		return Partial, join(fmt.Sprintf("new ceiling %d (baseline %d, the shape needs %d)", m.Made, base.Made, enough))
	case m.Made < base.Made:
		return NoEffect, join(fmt.Sprintf("worse: %d made, baseline %d", m.Made, base.Made))
	}
	return NoEffect, join(fmt.Sprintf("same count, fails in %s instead of %s", m.FailedCall, base.FailedCall))
}
