package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/pflag"

	"github.com/portsleuth/portsleuth/internal/enrichq"
	"github.com/portsleuth/portsleuth/internal/event"
	"github.com/portsleuth/portsleuth/internal/metrics"
	"github.com/portsleuth/portsleuth/internal/pressure"
	"github.com/portsleuth/portsleuth/internal/probe"
	"github.com/portsleuth/portsleuth/internal/procinfo"
	"github.com/portsleuth/portsleuth/internal/report"
)

// updateEvery is how often serve folds the kernel counters into its totals
// between scrapes, so LRU evictions can't take uncounted increments along.
const updateEvery = 10 * time.Second

// forgetEvery is how often serve deletes the kernel records of processes
// gone (the failure tables never evict).
const forgetEvery = time.Minute

type serveFlags struct {
	common
	listen       string
	logFormat    string
	interval     time.Duration
	poolInterval time.Duration
	poolTop      int
}

func runServe(args []string, stdout, stderr io.Writer) error {
	var f serveFlags
	fs := pflag.NewFlagSet("serve", pflag.ContinueOnError)
	f.common.register(fs)
	fs.StringVar(&f.listen, "listen", "127.0.0.1:9963", "IP:port for /metrics, an IP literal (no host names): 0.0.0.0 listens on IPv4 only, [::] on IPv6 only")
	fs.StringVar(&f.logFormat, "log-format", "text", "culprit log lines: text or json")
	fs.DurationVar(&f.interval, "report-interval", time.Minute, "how often to log each culprit's new failures")
	fs.DurationVar(&f.poolInterval, "pool-interval", 15*time.Second, "how often to measure every namespace's port pools for the portsleuth_port_pool_* gauges (1s to 1h; never more often than a scan takes; 0: off)")
	fs.IntVar(&f.poolTop, "pool-top", 10, "pools exported per namespace, the fullest first (1 to 100), in at most 64 namespaces")
	if err := parse(fs, args, stderr); err != nil {
		return err
	}
	if err := f.validate(); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Sprintf("serve takes no arguments, got %q", fs.Args())}
	}
	if f.logFormat != "text" && f.logFormat != "json" {
		return usageError{fmt.Sprintf("invalid --log-format %q: want text or json", f.logFormat)}
	}
	if f.interval <= 0 {
		return usageError{fmt.Sprintf("invalid --report-interval %s: must be positive", f.interval)}
	}
	if err := validatePoolFlags(f.poolInterval, f.poolTop); err != nil {
		return err
	}
	if err := f.checkPID(); err != nil {
		return err
	}
	// Opened before any program loads: a bad or taken address is a usage
	// error, and nothing was loaded for it.
	ln, err := openListener(f.listen)
	if err != nil {
		return err
	}
	defer ln.Close() // the server closes it too; this covers a failed start

	var log *slog.Logger
	if f.logFormat == "json" {
		log = slog.New(slog.NewJSONHandler(stdout, nil))
	} else {
		log = slog.New(slog.NewTextHandler(stdout, nil))
	}

	t, err := startServeTracer(&f.common)
	if err != nil {
		return err
	}
	s := &session{t: t, started: time.Now()}
	defer s.close()
	// Loading parsed the kernel's BTF: several MiB an agent that runs for
	// weeks should hand back now rather than whenever the scavenger gets to it.
	debug.FreeOSMemory()
	// Program run time for the agent's own cost; counts only while enabled.
	if stats, err := probe.EnableRunTimeStats(); err == nil {
		defer stats.Close()
	} else {
		log.Warn("bpf program run time is not available", "err", err)
	}

	c := newCulpritLog(log, t, report.Filter{PID: uint32(f.pid), Comm: f.comm}, f.interval)
	defer c.close()

	col := metrics.NewCollector(t, string(t.Backend()), len(t.Backend().Inferred()) > 0)
	poolCol := metrics.NewPoolCollector()
	reg := prometheus.NewRegistry()
	reg.MustRegister(metrics.ServeCollectors(col, poolCol, c.queue.Dropped)...)
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelError)}))
	hb := newHeartbeat(time.Now())
	mux.Handle("/healthz", healthHandler(hb.last, readerStallAfter, time.Now))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server stopped", "err", err)
		}
	}()
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	}()
	attrs := []any{"listen", ln.Addr().String(), "backend", string(t.Backend()), "notes", strings.Join(t.Notes(), "; ")}
	if inf := t.Backend().Inferred(); len(inf) > 0 {
		attrs = append(attrs, "inferred", strings.Join(inf, "; "))
	}
	log.Info("serving", attrs...)

	ctx, stop := runContext(f.duration)
	defer stop()
	if f.poolInterval > 0 {
		// Stopped (deferred last, so run first) before the tracer whose map it reads closes.
		defer startPoolSampler(ctx, f.poolInterval, f.poolTop, t, poolCol, log)()
	}

	// Records go only once both readers (col every updateEvery, c every
	// --report-interval) have folded their last increment.
	forgetter := metrics.NewForgetter(2 * max(updateEvery, f.interval))
	lastForget := time.Now()
	lastUpdate, lastReport := time.Now(), time.Now()
	err = s.loop(ctx, func(e event.Event) {
		c.col.Observe(&e) // c.col changes only on this goroutine
	}, func(now time.Time) {
		hb.beat(now)
		if now.Sub(lastUpdate) >= updateEvery {
			lastUpdate = now
			if err := col.Update(); err != nil {
				log.Error("reading counters", "err", err)
			}
		}
		if now.Sub(lastForget) >= forgetEvery {
			lastForget = now
			if err := forgetGone(t, forgetter, now, col, c.deltas); err != nil {
				log.Error("forgetting processes gone", "err", err)
			}
		}
		if now.Sub(lastReport) >= f.interval || ctx.Err() != nil {
			lastReport = now
			if ctx.Err() != nil {
				c.queue.Drain(liveDrainWait) // the last interval's snapshots
			}
			c.flush()
		}
	})
	log.Info("stopped", "backend", string(t.Backend()))
	return err
}

// startPoolSampler scans the port pools beside the reader until ctx ends;
// the function it returns stops it and waits for it.
func startPoolSampler(ctx context.Context, interval time.Duration, top int, t *probe.Tracer, col *metrics.PoolCollector, log *slog.Logger) func() {
	ctx, cancel := context.WithCancel(ctx)
	p := &poolSampler{interval: interval, topN: top, closers: t.Closers(), col: col, log: log}
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.run(ctx)
	}()
	return func() {
		cancel()
		<-done
	}
}

// openListener listens on --listen. The address must be an IP literal with a
// numeric port, so what is exposed is exactly what was asked: an IPv4
// address listens on IPv4 only ("tcp4"), an IPv6 one on IPv6 only ("tcp6",
// which sets IPV6_V6ONLY); plain "tcp" would make 0.0.0.0 also listen on [::].
func openListener(addr string) (net.Listener, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, usageError{fmt.Sprintf("invalid --listen %q: %v", addr, err)}
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return nil, usageError{fmt.Sprintf("invalid --listen %q: port %q is not a number from 0 to 65535", addr, port)}
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return nil, usageError{fmt.Sprintf("invalid --listen %q: %q is not an IP address (e.g. 127.0.0.1:9963, [::1]:9963, or 0.0.0.0:9963 for every IPv4 address)", addr, host)}
	}
	network := "tcp6"
	if ip.Unmap().Is4() {
		network, ip = "tcp4", ip.Unmap()
	}
	ln, err := net.Listen(network, net.JoinHostPort(ip.String(), port))
	if err != nil {
		return nil, usageError{fmt.Sprintf("listening on %s: %v", addr, err)}
	}
	return ln, nil
}

// forgetGone deletes the kernel records of processes gone and folded, and
// what both readers remember of them.
func forgetGone(t *probe.Tracer, f *metrics.Forgetter, now time.Time, col *metrics.Collector, d *metrics.Deltas) error {
	snap, err := t.Snapshot()
	if err != nil {
		return fmt.Errorf("reading counters: %w", err)
	}
	gone := f.Observe(snap, metrics.Alive, now)
	if err := t.Forget(gone); err != nil {
		return err
	}
	col.Forget(gone)
	d.Forget(gone)
	return nil
}

// startServeTracer never picks the syscall tracepoints unless asked: a
// continuous agent must not put every syscall of the host on the slow path.
func startServeTracer(c *common) (*probe.Tracer, error) {
	b, _ := probe.ParseBackend(c.backend)
	t, err := probe.Start(probe.Options{PID: uint32(c.pid), Backend: b, Order: probe.LowOverhead})
	if err != nil && b == probe.Auto && !errors.Is(err, probe.ErrPrivileges) {
		return nil, fmt.Errorf("%w; serve does not fall back to the syscall tracepoints by itself, since they slow every syscall of every task: pass --backend tracepoint to accept that cost", err)
	}
	return t, err
}

// culpritLog writes one line per culprit per interval with its new failures.
type culpritLog struct {
	log    *slog.Logger
	t      *probe.Tracer
	deltas *metrics.Deltas
	// mu guards col against the enrichment worker, which attaches its
	// results to the collector of the interval it finishes in.
	mu       sync.Mutex
	col      *report.Collector
	enricher *pressure.Enricher
	queue    *enrichq.Queue
	dropped  uint64 // the queue's drops already logged
	filter   report.Filter
	interval time.Duration
	since    time.Time
}

func newCulpritLog(log *slog.Logger, t *probe.Tracer, filter report.Filter, interval time.Duration) *culpritLog {
	c := &culpritLog{log: log, t: t, deltas: metrics.NewDeltas(), enricher: pressure.NewEnricher(), filter: filter, interval: interval}
	c.enricher.Closers = t.Closers()
	c.queue = enrichq.NewQueue(0, c.enricher.Enrich, c.attach)
	c.col = c.newCollector()
	return c
}

// attach runs on the enrichment worker.
func (c *culpritLog) attach(r enrichq.Result) {
	c.mu.Lock()
	col := c.col
	c.mu.Unlock()
	col.Attach(r) // a sealed collector ignores it: its interval is over
}

func (c *culpritLog) close() {
	c.queue.Close()
	c.enricher.Close()
}

func (c *culpritLog) flush() {
	snap, err := c.t.Snapshot()
	if err != nil {
		c.log.Error("reading counters", "err", err)
		return
	}
	inc, cum := c.deltas.Next(snap)
	// New failures, classified with the process's whole history.
	window := cum
	window.Failures = inc.Failures
	// Examples and addresses start over each interval: memory stays bounded.
	c.mu.Lock()
	col := c.col
	c.col = c.newCollector()
	c.mu.Unlock()
	col.Seal() // the worker may still hold it: from here on it only reads
	r := report.Build(window, col, c.filter, string(c.t.Backend()), c.since, time.Since(c.since))
	c.logDropped()
	for _, p := range r.Processes {
		if p.Failures == 0 {
			continue
		}
		patterns := make([]string, 0, len(p.Patterns))
		for _, pat := range p.Patterns {
			patterns = append(patterns, fmt.Sprintf("%s=%d", pat.Pattern, pat.Count))
		}
		slices.Sort(patterns)
		// The names a fleet pages on, as portsleuth_failures_total labels them.
		id := procinfo.Identity(p.Cgroup)
		c.log.Info("culprit", "pid", p.PID, "comm", p.Comm, "failures", p.Failures,
			"patterns", strings.Join(patterns, ","), "container_id", id.ContainerID, "pod_uid", id.PodUID, "unit", id.Unit,
			"process", p)
	}
	c.since = time.Now()
}

// logDropped says how much enrichment the queue had no room for since the last flush.
func (c *culpritLog) logDropped() {
	n := c.queue.Dropped()
	if n <= c.dropped {
		return
	}
	c.log.Warn("enrichment queue full", "dropped", n-c.dropped, "dropped_total", n,
		"effect", "culprit lines lack pressure snapshots or holders for these failures; counts stay exact")
	c.dropped = n
}

func (c *culpritLog) newCollector() *report.Collector {
	col := report.NewCollector()
	col.NetnsSysctls, col.PinNetns = c.enricher.Sysctls, c.enricher.Pin
	col.Queue = c.queue
	return col
}
