package cli

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/portsleuth/portsleuth/internal/metrics"
	"github.com/portsleuth/portsleuth/internal/pools"
	"github.com/portsleuth/portsleuth/internal/pressure"
	"github.com/portsleuth/portsleuth/internal/procinfo"
)

// Bounds of serve's --pool-interval and --pool-top.
const (
	minPoolInterval = time.Second
	maxPoolInterval = time.Hour
	maxPoolTop      = 100
)

// scanNamespaces measures each target with sc, topN owners per list; a
// namespace that can't be read is skipped with the reason. ports and serve's
// pool gauges share it. It stops early, skipping nothing, when ctx ends.
func scanNamespaces(ctx context.Context, sc *pressure.Scanner, targets []nsTarget, owners procinfo.Inodes, topN int) ([]pools.Namespace, []skippedNetns) {
	var out []pools.Namespace
	var skipped []skippedNetns
	for _, t := range targets {
		if ctx.Err() != nil {
			break
		}
		ns, err := sc.Scan(int(t.f.Fd()), owners, topN)
		if err != nil {
			skipped = append(skipped, skippedNetns{Netns: t.inode, PIDs: t.pids, Reason: err.Error()})
			continue
		}
		ns.PIDs = t.pids
		out = append(out, ns)
	}
	return out, skipped
}

// poolSampler exports the pressure of every namespace's port pools, scanned
// with the iterators ports uses. It runs beside the ring-buffer reader.
type poolSampler struct {
	interval time.Duration
	topN     int
	closers  pressure.Closers // the tracer's: TIME_WAIT sockets get the process that closed them
	col      *metrics.PoolCollector
	log      *slog.Logger

	sc      *pressure.Scanner
	lastErr string // logged once until the error changes
}

// run scans until ctx ends. The next scan starts max(interval, the last
// scan's duration) after the last one ended, so scanning never takes more
// than half the time, however many sockets the host has.
func (p *poolSampler) run(ctx context.Context) {
	defer func() {
		if p.sc != nil {
			p.sc.Close()
		}
	}()
	for {
		took := p.scan(ctx)
		t := time.NewTimer(max(p.interval, took))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// scan measures every namespace once and publishes the result. A scan that
// could measure nothing is counted as an error, and the reason logged (once
// until it changes), never fatal; namespaces it could not read are counted
// and logged the same way.
func (p *poolSampler) scan(ctx context.Context) time.Duration {
	start := time.Now()
	res, skipped, err := p.measure(ctx)
	took := time.Since(start)
	if ctx.Err() != nil {
		return took // cut short by shutdown: not a result
	}
	if err == nil && len(skipped) > 0 && res.Exported == 0 {
		err = fmt.Errorf("no network namespace could be read (%d skipped; the first: %s)", len(skipped), skipped[0].Reason)
	}
	if err != nil {
		p.col.Failed(len(skipped), took)
		p.logOnce("pool scan failed; retrying every --pool-interval", err.Error())
		return took
	}
	res.Skipped, res.Took = len(skipped), took
	p.col.Publish(res)
	if len(skipped) > 0 {
		p.logOnce("pool scan skipped network namespaces it could not read; their pools are not exported",
			fmt.Sprintf("%d skipped; the first: %s", len(skipped), skipped[0].Reason))
	} else {
		p.lastErr = ""
	}
	return took
}

// logOnce logs a scan problem when it differs from the last one logged: a
// problem that lasts would otherwise log every --pool-interval.
func (p *poolSampler) logOnce(msg, err string) {
	if err == p.lastErr {
		return
	}
	p.lastErr = err
	p.log.Warn(msg, "err", err)
}

// measure scans every namespace that has a process and picks the pools to
// export; skipped lists the namespaces it could not read.
func (p *poolSampler) measure(ctx context.Context) (metrics.PoolScan, []skippedNetns, error) {
	if p.sc == nil {
		sc, err := pressure.NewScanner(p.closers)
		if err != nil {
			return metrics.PoolScan{}, nil, err
		}
		p.sc = sc
	}
	targets, skipped := allNamespaces()
	owners := procinfo.SocketInodes()
	// One owner per pool is all the gauges name.
	nss, failed := scanNamespaces(ctx, p.sc, targets, owners, 1)
	for _, t := range targets {
		t.f.Close()
	}
	res := metrics.SelectPools(nss, p.topN)
	for i := range res.Pools {
		if pid := res.Pools[i].OwnerPID; pid != 0 {
			p := &res.Pools[i]
			p.OwnerContainer, p.OwnerPodUID, p.OwnerUnit = metrics.OwnerIdentity(pid)
		}
	}
	return res, append(skipped, failed...), nil
}

// validatePoolFlags checks --pool-interval (0 turns the gauges off) and --pool-top.
func validatePoolFlags(interval time.Duration, top int) error {
	if interval != 0 && (interval < minPoolInterval || interval > maxPoolInterval) {
		return usageError{fmt.Sprintf("invalid --pool-interval %s: want 0 (off) or from %s to %s", interval, minPoolInterval, maxPoolInterval)}
	}
	if top < 1 || top > maxPoolTop {
		return usageError{fmt.Sprintf("invalid --pool-top %d: want 1 to %d", top, maxPoolTop)}
	}
	return nil
}
