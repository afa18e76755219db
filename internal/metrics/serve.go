package metrics

import (
	"regexp"
	"slices"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// NewEnrichmentDropped exports the enrichment queue's drops (dropped reads them).
func NewEnrichmentDropped(dropped func() uint64) prometheus.Collector {
	return prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "portsleuth_enrichment_dropped_total",
		Help: "First failures of a kind (process, class) that got no pressure snapshot or holder lookup: the enrichment queue was full. Failure counts stay exact.",
	}, func() float64 { return float64(dropped()) })
}

// ServeCollectors lists every collector serve registers: the failure
// counters, the pool gauges, the enrichment queue's drops and the agent's
// own process and Go runtime. Names reads the same list.
func ServeCollectors(failures *Collector, pools *PoolCollector, enrichmentDropped func() uint64) []prometheus.Collector {
	return []prometheus.Collector{failures, pools, NewEnrichmentDropped(enrichmentDropped),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), collectors.NewGoCollector()}
}

// fqNameRe reads a metric name out of Desc.String(), the only place the
// client library shows it.
var fqNameRe = regexp.MustCompile(`^Desc\{fqName: ("[^"]*")`)

// Names lists every metric family name serve exports, sorted: what
// dashboards and alert rules may query. It is read from the Describe of
// serve's own collectors, so it cannot drift from what serve registers.
func Names() []string {
	ch := make(chan *prometheus.Desc)
	go func() {
		for _, c := range ServeCollectors(NewCollector(nil, "", false), NewPoolCollector(), func() uint64 { return 0 }) {
			c.Describe(ch)
		}
		close(ch)
	}()
	seen := map[string]bool{}
	for d := range ch {
		m := fqNameRe.FindStringSubmatch(d.String())
		if m == nil {
			continue
		}
		if name, err := strconv.Unquote(m[1]); err == nil && name != "" {
			seen[name] = true
		}
	}
	names := make([]string, 0, len(seen))
	for n := range seen {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}
