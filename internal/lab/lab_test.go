package lab

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the lab needs root: unshare(CLONE_NEWNET) and sysctl writes in the new namespace need CAP_SYS_ADMIN")
	}
}

// kernel is major*1000+minor of a release such as "6.18.44-fc" (0 if unparsable).
func kernel(release string) int {
	f := strings.FieldsFunc(release, func(r rune) bool { return r < '0' || r > '9' })
	if len(f) < 2 {
		return 0
	}
	major, _ := strconv.Atoi(f[0])
	minor, _ := strconv.Atoi(f[1])
	return major*1000 + minor
}

// want is one expected measurement; since/before, when set, bound the
// kernels it holds for (major*1000+minor), otherwise every kernel the VM
// matrix runs (6.1, 6.12) and the host's. ifRange ties it to whether the
// kernel has the per-socket IP_LOCAL_PORT_RANGE: upstream since 6.3, and
// backported to some stable kernels (Debian's 6.1.0-57 has it), so the
// test asks the kernel rather than its version.
type want struct {
	key, remedy, verdict string
	since                int
	before               int
	ifRange              feature
	why                  string
}

type feature int

const (
	any feature = iota
	has
	lacks
)

// expectations are the verdicts the advice relies on. Where kernels differ,
// a row per kernel range says so.
var expectations = []want{
	{key: "bind-any-before-connect", remedy: "ip_bind_address_no_port", verdict: Fixes},
	{key: "bind-any-before-connect", remedy: "so_reuseaddr", verdict: NoEffect, why: "port-0 bind not relaxed since 4.6"},
	{key: "bind-any-before-connect", remedy: "so_reuseaddr+ip_autobind_reuse", verdict: MovesToConnect},
	{key: "bind-any-before-connect", remedy: "so_reuseport", verdict: NoEffect},
	{key: "bind-any-before-connect", remedy: "wider-range", verdict: Partial},
	{key: "bind-any-before-connect", remedy: "more-destinations", verdict: NoEffect},
	{key: "bind-any-before-connect", remedy: "ip_local_port_range", verdict: NoEffect, ifRange: has, why: "IP_LOCAL_PORT_RANGE narrows the namespace's range, never widens it"},
	{key: "bind-any-before-connect", remedy: "ip_local_port_range", verdict: Unavailable, ifRange: lacks, why: "IP_LOCAL_PORT_RANGE came in 6.3"},
	{key: "bind-any-before-connect", remedy: "tcp_tw_recycle", verdict: Unavailable, why: "removed in 4.12"},
	{key: "bind-any-before-connect", remedy: "keepalive", verdict: Fixes},
	{key: "bind-ip-before-connect", remedy: "ip_bind_address_no_port", verdict: Fixes},
	{key: "bind-ip-before-connect", remedy: "so_reuseaddr", verdict: NoEffect},
	{key: "bind-ip-before-connect", remedy: "so_reuseaddr+ip_autobind_reuse", verdict: MovesToConnect},
	{key: "bind-ip-before-connect", remedy: "wider-range", verdict: Partial},
	{key: "bind-ip-before-connect", remedy: "more-sources", verdict: Partial, why: "each local address has its own pool"},
	{key: "bind-ip-before-connect", remedy: "more-destinations", verdict: NoEffect},
	{key: "bind-ip-before-connect", remedy: "keepalive", verdict: Fixes},
	{key: "connect-port-exhaustion", remedy: "tcp_tw_reuse", verdict: Fixes},
	{key: "connect-port-exhaustion", remedy: "tcp_tw_reuse-no-timestamps", verdict: NoEffect, why: "TIME_WAIT reuse needs timestamps"},
	{key: "connect-port-exhaustion", remedy: "tcp_tw_recycle", verdict: Unavailable},
	{key: "connect-port-exhaustion", remedy: "tcp_fin_timeout", verdict: NoEffect, why: "it does not shorten TIME_WAIT"},
	{key: "connect-port-exhaustion", remedy: "so_reuseaddr", verdict: NoEffect},
	{key: "connect-port-exhaustion", remedy: "so_linger0", verdict: Fixes},
	{key: "connect-port-exhaustion", remedy: "wider-range", verdict: Partial, why: "a higher ceiling only postpones a TIME_WAIT churn"},
	{key: "connect-port-exhaustion", remedy: "more-sources", verdict: Partial, why: "a higher ceiling only postpones a TIME_WAIT churn"},
	{key: "connect-port-exhaustion", remedy: "more-destinations", verdict: Partial, why: "a higher ceiling only postpones a TIME_WAIT churn"},
	{key: "connect-port-exhaustion", remedy: "ip_local_port_range", verdict: NoEffect, ifRange: has},
	{key: "connect-port-exhaustion", remedy: "ip_local_port_range", verdict: Unavailable, ifRange: lacks},
	{key: "connect-port-exhaustion", remedy: "keepalive", verdict: Fixes},
	{key: "connect-tuple-conflict", remedy: "ip_bind_address_no_port", verdict: Fixes},
	{key: "connect-tuple-conflict", remedy: "so_reuseport", verdict: NoEffect},
	{key: "connect-tuple-conflict", remedy: "more-destinations", verdict: Partial},
	{key: "connect-tuple-conflict", remedy: "keepalive", verdict: Fixes},
	{key: "port-in-use/time-wait", remedy: "so_reuseaddr", verdict: Fixes},
	{key: "port-in-use/time-wait", remedy: "so_reuseport", verdict: Fixes},
	{key: "port-in-use/time-wait", remedy: "so_linger0", verdict: Fixes},
	{key: "port-in-use/listener", remedy: "so_reuseaddr", verdict: NoEffect, why: "SO_REUSEADDR never shares with a listener"},
	{key: "port-in-use/listener", remedy: "so_reuseport", verdict: Fixes},
	{key: "port-in-use/listener", remedy: "so_linger0", verdict: NoEffect},
	{key: "bind-port-exhaustion", remedy: "ip_bind_address_no_port", verdict: Fixes, why: "the bind() reserves no port"},
	{key: "bind-port-exhaustion", remedy: "so_reuseaddr", verdict: NoEffect},
	{key: "bind-port-exhaustion", remedy: "so_reuseaddr+ip_autobind_reuse", verdict: Fixes, why: "bound-only SO_REUSEADDR sockets share ports"},
	{key: "bind-port-exhaustion", remedy: "wider-range", verdict: Partial},
	{key: "bind-port-exhaustion", remedy: "more-sources", verdict: Partial},
	{key: "udp-autobind", remedy: "so_reuseaddr", verdict: Fixes, why: "UDP autobind shares ports among SO_REUSEADDR sockets"},
	{key: "udp-autobind", remedy: "wider-range", verdict: Partial},
	{key: "udp-autobind", remedy: "more-sources", verdict: Partial},
	{key: "udp-autobind", remedy: "more-destinations", verdict: NoEffect},
	{key: "udp-autobind", remedy: "keepalive", verdict: Fixes},
}

// baselines are where each pattern fails with 64 ports.
var baselines = map[string]Measure{
	"bind-any-before-connect": {Made: 64, FailedCall: CallBind, Errno: "EADDRINUSE"},
	"bind-ip-before-connect":  {Made: 64, FailedCall: CallBind, Errno: "EADDRINUSE"},
	"connect-port-exhaustion": {Made: 64, FailedCall: CallConnect, Errno: "EADDRNOTAVAIL"},
	"connect-tuple-conflict":  {Made: 1, FailedCall: CallConnect, Errno: "EADDRNOTAVAIL"},
	"port-in-use/time-wait":   {Made: 0, FailedCall: CallBind, Errno: "EADDRINUSE"},
	"port-in-use/listener":    {Made: 0, FailedCall: CallBind, Errno: "EADDRINUSE"},
	"bind-port-exhaustion":    {Made: 64, FailedCall: CallBind, Errno: "EADDRINUSE"},
	"udp-autobind":            {Made: 64, FailedCall: CallConnect, Errno: "EAGAIN"},
}

func (w want) holds(k int, socketRange bool) bool {
	switch {
	case w.ifRange == has && !socketRange, w.ifRange == lacks && socketRange:
		return false
	}
	return (w.since == 0 || k >= w.since) && (w.before == 0 || k < w.before)
}

// hasSocketRange says whether the kernel keeps a per-socket
// IP_LOCAL_PORT_RANGE: set it, read it back.
func hasSocketRange(t *testing.T) bool {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	const want = 40000 | 40100<<16
	if unix.SetsockoptInt(fd, unix.SOL_IP, unix.IP_LOCAL_PORT_RANGE, want) != nil {
		return false
	}
	got, err := unix.GetsockoptInt(fd, unix.SOL_IP, unix.IP_LOCAL_PORT_RANGE)
	return err == nil && uint32(got) == want
}

func testKey(p PatternResult) string {
	if p.Variant != "" {
		return p.Pattern + "/" + p.Variant
	}
	return p.Pattern
}

// The default lab on this kernel gives the verdicts the advice relies on,
// in under a few seconds, and leaves no socket or namespace behind.
func TestDefaultLabVerdicts(t *testing.T) {
	requireRoot(t)
	release, err := Release()
	if err != nil {
		t.Fatal(err)
	}
	k := kernel(release)
	fdsBefore := openFDs(t)
	start := time.Now()
	res, err := Run(release, DefaultRange, DefaultShapes(DefaultRange, "all"))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("default lab on %s: %s (want under 5 s; not asserted)", release, time.Since(start).Round(time.Millisecond))
	got := map[string]PatternResult{}
	for _, p := range res.Patterns {
		got[testKey(p)] = p
	}
	checkBaselines(t, release, got)
	checkVerdicts(t, release, k, got)
	checkClaims(t, release, got)
	if after := openFDs(t); after != fdsBefore {
		t.Errorf("open fds: %d before the lab, %d after", fdsBefore, after)
	}
	checkNoForeignNetns(t)
}

func checkBaselines(t *testing.T, release string, got map[string]PatternResult) {
	t.Helper()
	for key, want := range baselines {
		b := got[key].Baseline
		if b.Made != want.Made || b.FailedCall != want.FailedCall || b.Errno != want.Errno {
			t.Errorf("kernel %s: %s baseline: want %d made then %s %s, got %d then %s %s",
				release, key, want.Made, want.FailedCall, want.Errno, b.Made, b.FailedCall, b.Errno)
		}
	}
}

func checkVerdicts(t *testing.T, release string, k int, got map[string]PatternResult) {
	t.Helper()
	socketRange := hasSocketRange(t)
	t.Logf("kernel %s: per-socket IP_LOCAL_PORT_RANGE %v", release, socketRange)
	for _, w := range expectations {
		if !w.holds(k, socketRange) {
			continue
		}
		r, ok := findRemedy(got[w.key], w.remedy)
		if !ok {
			t.Errorf("kernel %s: %s on %s: not measured", release, w.remedy, w.key)
			continue
		}
		if r.Verdict != w.verdict {
			why := ""
			if w.why != "" {
				why = " (" + w.why + ")"
			}
			t.Errorf("kernel %s: %s on %s: want %s%s, got %s (%d made, then %s %s; %s)",
				release, w.remedy, w.key, w.verdict, why, r.Verdict, r.Made, r.FailedCall, r.Errno, r.Note)
		}
	}
}

func findRemedy(p PatternResult, name string) (RemedyResult, bool) {
	for _, r := range p.Remedies {
		if r.Remedy == name {
			return r, true
		}
	}
	return RemedyResult{}, false
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// checkNoForeignNetns: every thread of ours is back in our namespace, i.e.
// each experiment's thread exited with its namespace. Threads exit shortly
// after their goroutine returns: poll, with a bound.
func checkNoForeignNetns(t *testing.T) {
	t.Helper()
	own, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	var foreign []string
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if foreign = foreignThreads(own); len(foreign) == 0 {
			return
		}
	}
	t.Errorf("threads still in another network namespace after the lab: %v", foreign)
}

func foreignThreads(own string) []string {
	tasks, _ := filepath.Glob("/proc/self/task/*/ns/net")
	var out []string
	for _, p := range tasks {
		if ns, err := os.Readlink(p); err == nil && ns != own {
			out = append(out, fmt.Sprintf("%s=%s", filepath.Base(filepath.Dir(filepath.Dir(p))), ns))
		}
	}
	return out
}
