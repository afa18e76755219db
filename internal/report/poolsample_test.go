package report

import (
	"errors"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/portsleuth/portsleuth/internal/event"
	"github.com/portsleuth/portsleuth/internal/pools"
)

func scanned(used int) pools.Namespace {
	return pools.Namespace{
		Netns: 7, PortRange: [2]int{40000, 40063},
		BindPools: []pools.BindPool{{Proto: "tcp", Local: "127.0.0.1", Used: used, Free: 64 - used}},
		ConnectPools: []pools.ConnectPool{
			{Local: "127.0.0.1", Dest: "127.0.0.1:8080", Established: used / 2, TimeWait: used - used/2, Free: 64 - used, Size: 64, PercentUsed: float64(used) / 64 * 100},
			{Local: "127.0.0.2", Dest: "127.0.0.1:8080", Established: 1, Free: 63, Size: 64, PercentUsed: 1.0 / 64 * 100},
		},
	}
}

func TestSampleOf(t *testing.T) {
	ns := scanned(40)
	at := t0.Format(time.RFC3339Nano)
	for name, tc := range map[string]struct {
		got, want PoolSample
	}{
		"bind pool": {SampleOf(ns, "bind", "tcp", "127.0.0.1", "", at),
			PoolSample{Time: at, Netns: 7, Kind: "bind", Proto: "tcp", Local: "127.0.0.1", Used: 40, Free: 24, Size: 64}},
		"a bind pool without sockets is free": {SampleOf(ns, "bind", "udp", "127.0.0.1", "", at),
			PoolSample{Time: at, Netns: 7, Kind: "bind", Proto: "udp", Local: "127.0.0.1", Free: 64, Size: 64}},
		"the fullest source": {SampleOf(ns, "connect", "tcp", "", "127.0.0.1:8080", at),
			PoolSample{Time: at, Netns: 7, Kind: "connect", Local: "127.0.0.1", Dest: "127.0.0.1:8080", Used: 40, TimeWait: 20, Established: 20, Free: 24, Size: 64}},
		"a named source": {SampleOf(ns, "connect", "tcp", "127.0.0.2", "127.0.0.1:8080", at),
			PoolSample{Time: at, Netns: 7, Kind: "connect", Local: "127.0.0.2", Dest: "127.0.0.1:8080", Used: 1, Established: 1, Free: 63, Size: 64}},
		"no connection yet": {SampleOf(ns, "connect", "tcp", "", "10.0.0.1:80", at),
			PoolSample{Time: at, Netns: 7, Kind: "connect", Dest: "10.0.0.1:80", Free: 64, Size: 64}},
	} {
		if tc.got != tc.want {
			t.Errorf("%s: got %+v, want %+v", name, tc.got, tc.want)
		}
		if err := CheckPoolSample(tc.got); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// fakeNamespaces serve scans whose use rises by one each time.
type fakeNamespaces struct {
	mu     sync.Mutex
	scans  map[uint64]int
	opened []uint64
	closed int
	broken map[uint64]bool
}

func (f *fakeNamespaces) open(ino uint64, pid, tid uint32) (PoolScan, func(), error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if ino == 666 {
		return nil, nil, errors.New("gone")
	}
	f.opened = append(f.opened, ino)
	scan := func() (pools.Namespace, error) {
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.broken[ino] {
			return pools.Namespace{}, errors.New("namespace went away")
		}
		f.scans[ino]++
		ns := scanned(min(64, f.scans[ino]))
		ns.Netns = ino
		return ns, nil
	}
	return scan, func() { f.mu.Lock(); f.closed++; f.mu.Unlock() }, nil
}

func (f *fakeNamespaces) count(ino uint64) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.scans[ino]
}

func poolBindFailure(ns uint64) event.Event {
	return event.Event{Time: t0, PID: 10, TID: 10, Netns: ns, Addr: netip.MustParseAddrPort("127.0.0.1:5000"),
		Class: event.Class{Op: event.Bind, Proto: "tcp", Family: "ipv4", Errno: unix.EADDRINUSE}}
}

// waitFor polls cond until it holds or a generous deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestPoolSamplerSamplesFromTheFirstFailure(t *testing.T) {
	f := &fakeNamespaces{scans: map[uint64]int{}, broken: map[uint64]bool{}}
	s := &PoolSampler{Open: f.open, Every: 5 * time.Millisecond}
	s.Start()
	bind := poolBindFailure(7)
	for range 100 {
		s.Notice(&bind) // one pool, however many failures
	}
	conn := failure(10, t0, connectClass)
	s.Notice(&conn)
	gone := poolBindFailure(666)
	s.Notice(&gone)
	waitFor(t, "three rounds", func() bool { return f.count(7) >= 4 })
	samples, err := s.Stop()
	if err == nil {
		t.Error("the namespace that could not be opened is not reported")
	}
	if len(f.opened) != 1 || f.closed != 1 {
		t.Errorf("opened %v, closed %d: want netns 7 once, released", f.opened, f.closed)
	}
	var bindUsed []int
	kinds := map[string]int{}
	for _, p := range samples {
		kinds[p.Kind]++
		if p.Kind == "bind" {
			bindUsed = append(bindUsed, p.Used)
		}
		if p.Netns != 7 {
			t.Errorf("sample of netns %d", p.Netns)
		}
	}
	if kinds["bind"] < 3 || kinds["connect"] < 3 {
		t.Fatalf("samples by kind %v", kinds)
	}
	for i := 1; i < len(bindUsed); i++ {
		if bindUsed[i] <= bindUsed[i-1] {
			t.Errorf("used went %v: each scan is a new sample", bindUsed)
		}
	}
}

func TestPoolSamplerBounds(t *testing.T) {
	f := &fakeNamespaces{scans: map[uint64]int{}, broken: map[uint64]bool{}}
	s := &PoolSampler{Open: f.open}
	note := func(ns uint64, port int) poolNote {
		e := poolBindFailure(100 + ns)
		e.Addr = netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, byte(port + 1)}), 5000)
		tg, ok := targetOf(&e)
		if !ok {
			t.Fatalf("no pool for %+v", e)
		}
		return poolNote{target: tg, pid: e.PID, tid: e.TID}
	}
	var nss []*sampledNS
	for ns := range uint64(MaxSampledNamespaces + 3) {
		for port := range MaxSampledPools + 2 {
			s.add(&nss, note(ns, port))
		}
	}
	if len(nss) != MaxSampledNamespaces || len(f.opened) != MaxSampledNamespaces {
		t.Errorf("%d namespaces sampled (%d opened), bound %d", len(nss), len(f.opened), MaxSampledNamespaces)
	}
	for _, ns := range nss {
		if len(ns.targets) != MaxSampledPools {
			t.Errorf("netns %d: %d pools, bound %d", ns.ino, len(ns.targets), MaxSampledPools)
		}
	}
	// Notice hands over no more pools than can be sampled.
	s.Start()
	for ns := range uint64(MaxSampledNamespaces + 3) {
		for port := range MaxSampledPools + 2 {
			e := poolBindFailure(100 + ns)
			e.Addr = netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, byte(port + 1)}), 5000)
			s.Notice(&e)
		}
	}
	s.Stop()
	if len(s.seen) > MaxSampledNamespaces*MaxSampledPools {
		t.Errorf("%d pools handed over", len(s.seen))
	}
}

func TestPoolSamplerDropsANamespaceThatGoes(t *testing.T) {
	f := &fakeNamespaces{scans: map[uint64]int{}, broken: map[uint64]bool{}}
	s := &PoolSampler{Open: f.open, Every: 2 * time.Millisecond}
	s.Start()
	e := poolBindFailure(7)
	s.Notice(&e)
	waitFor(t, "a round", func() bool { return f.count(7) >= 2 })
	f.mu.Lock()
	f.broken[7] = true
	f.mu.Unlock()
	waitFor(t, "the release", func() bool { f.mu.Lock(); defer f.mu.Unlock(); return f.closed == 1 })
	if _, err := s.Stop(); err == nil {
		t.Error("the failed scan is not reported")
	}
	if f.closed != 1 {
		t.Errorf("released %d times", f.closed)
	}
}

func TestCheckPoolSampleRefuses(t *testing.T) {
	good := PoolSample{Time: t0.Format(time.RFC3339Nano), Kind: "bind", Size: 64, Free: 64}
	for name, bad := range map[string]func(*PoolSample){
		"time":  func(s *PoolSample) { s.Time = "yesterday" },
		"kind":  func(s *PoolSample) { s.Kind = "listen" },
		"count": func(s *PoolSample) { s.Used = -1 },
		"size":  func(s *PoolSample) { s.Size = 1 << 20 },
	} {
		s := good
		bad(&s)
		if CheckPoolSample(s) == nil {
			t.Errorf("%s: accepted %+v", name, s)
		}
	}
	if err := CheckPoolSample(good); err != nil {
		t.Error(err)
	}
}

// Pools past the bounds, and a namespace that can't be opened, are counted
// as unsampled, each once; the error is counted and its text kept. A pool
// still queued when sampling stops counts too.
func TestPoolSamplerCountsUnsampledPools(t *testing.T) {
	f := &fakeNamespaces{scans: map[uint64]int{}, broken: map[uint64]bool{}}
	s := &PoolSampler{Open: f.open, Every: time.Hour}
	s.Start()
	const nss, pools = MaxSampledNamespaces + 3, MaxSampledPools + 2
	for ns := range uint64(nss) {
		for port := range pools {
			e := poolBindFailure(100 + ns)
			e.Addr = netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, byte(port + 1)}), 5000)
			s.Notice(&e)
			s.Notice(&e) // a pool is counted once, however often it fails
		}
	}
	gone := poolBindFailure(666)
	s.Notice(&gone)
	waitFor(t, "the pools handed over", func() bool { return len(s.notes) == 0 })
	samples, _ := s.Stop()
	type pool struct {
		netns uint64
		local string
	}
	sampled := map[pool]bool{}
	for _, p := range samples {
		sampled[pool{p.Netns, p.Local}] = true
	}
	l := s.Losses()
	if want := uint64(nss*pools + 1 - len(sampled)); l.PoolsUnsampled != want || len(sampled) == 0 {
		t.Errorf("%d pools sampled, %d unsampled: want %d unsampled of %d", len(sampled), l.PoolsUnsampled, want, nss*pools+1)
	}
	if l.PoolSampleErrors != 0 || l.PoolSamplesDropped != 0 {
		t.Errorf("losses %+v: no error, no sample dropped (netns 666 came past the bounds)", l)
	}

	s = &PoolSampler{Open: f.open, Every: time.Hour}
	s.Start()
	s.Notice(&gone)
	waitFor(t, "the pool handed over", func() bool { return len(s.notes) == 0 })
	s.Stop()
	if l := s.Losses(); l.PoolSampleErrors != 1 || l.PoolsUnsampled != 1 || l.PoolSampleError != "sampling the pools of netns 666: gone" {
		t.Errorf("losses %+v: want the namespace that could not be opened", l)
	}

	// Stopped at once, the sampler samples the pool or counts it, never neither.
	for range 50 {
		s = &PoolSampler{Open: f.open, Every: time.Hour}
		s.Start()
		e := poolBindFailure(7)
		s.Notice(&e)
		samples, _ := s.Stop()
		if l := s.Losses(); uint64(len(samples))+l.PoolsUnsampled != 1 {
			t.Fatalf("%d samples, losses %+v: want the pool sampled or counted", len(samples), l)
		}
	}
}

// A pool whose failures all find the queue full is counted once as
// unsampled, and no longer once a later failure hands it over.
func TestPoolSamplerCountsAFullQueue(t *testing.T) {
	s := &PoolSampler{seen: map[poolTarget]bool{}, missed: map[poolTarget]bool{}, notes: make(chan poolNote)}
	e := poolBindFailure(7)
	s.Notice(&e)
	s.Notice(&e)
	if l := s.Losses(); l.PoolsUnsampled != 1 || s.Dropped() != 2 {
		t.Errorf("unsampled %d, dropped %d: want 1 pool, 2 failures", l.PoolsUnsampled, s.Dropped())
	}
	s.notes = make(chan poolNote, 1)
	s.Notice(&e)
	if l := s.Losses(); l.PoolsUnsampled != 0 || !s.seen[mustTarget(t, &e)] {
		t.Errorf("unsampled %d after the pool was handed over", l.PoolsUnsampled)
	}
}

func mustTarget(t *testing.T, e *event.Event) poolTarget {
	t.Helper()
	tg, ok := targetOf(e)
	if !ok {
		t.Fatalf("no pool for %+v", e)
	}
	return tg
}

// Rounds past MaxSampleRounds, and samples past MaxPoolSamples, count as
// dropped samples, one per pool.
func TestPoolSamplerCountsDroppedSamples(t *testing.T) {
	f := &fakeNamespaces{scans: map[uint64]int{}, broken: map[uint64]bool{}}
	scan, release, err := f.open(7, 10, 10)
	if err != nil {
		t.Fatal(err)
	}
	e1, e2 := poolBindFailure(7), poolBindFailure(7)
	e2.Addr = netip.MustParseAddrPort("127.0.0.2:5000")
	ns := &sampledNS{ino: 7, scan: scan, release: release, targets: []poolTarget{mustTarget(t, &e1), mustTarget(t, &e2)}, rounds: MaxSampleRounds}
	s := &PoolSampler{Now: time.Now}
	s.round([]*sampledNS{ns})
	s.round([]*sampledNS{ns})
	if l := s.Losses(); l.PoolSamplesDropped != 4 || len(s.samples) != 0 {
		t.Errorf("%d samples dropped, %d kept: want 2 rounds of 2 pools dropped", l.PoolSamplesDropped, len(s.samples))
	}
	ns.rounds = 0
	s.samples = make([]PoolSample, MaxPoolSamples-1)
	s.round([]*sampledNS{ns})
	if l := s.Losses(); l.PoolSamplesDropped != 5 || len(s.samples) != MaxPoolSamples {
		t.Errorf("%d samples dropped, %d kept: want one more dropped, the buffer full", l.PoolSamplesDropped, len(s.samples))
	}
}

// The text report has one line on pool sampling losses, only when there are
// some, and the JSON report always has their counts.
func TestPoolSamplingLossesInTheReport(t *testing.T) {
	r := Build(event.Snapshot{}, NewOfflineCollector(), Filter{}, "replay", t0, 0)
	var text, js strings.Builder
	if err := r.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	if err := r.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(text.String(), "pool sampling") {
		t.Errorf("a line on losses there are not:\n%s", text.String())
	}
	for _, want := range []string{`"pool_samples_dropped": 0`, `"pools_unsampled": 0`, `"pool_sample_errors": 0`} {
		if !strings.Contains(js.String(), want) {
			t.Errorf("JSON lacks %s", want)
		}
	}
	r.PoolSamplingLosses = PoolSamplingLosses{PoolSamplesDropped: 3, PoolsUnsampled: 2, PoolSampleErrors: 1, PoolSampleError: "netns 9: \x1b[2J"}
	text.Reset()
	if err := r.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	want := `pool sampling: 3 samples dropped, 2 pools unsampled, 1 namespaces could not be opened or scanned (the first: netns 9: \x1b[2J)` + "\n"
	if !strings.Contains(text.String(), want) {
		t.Errorf("no line %q in:\n%s", want, text.String())
	}
}
