package pools

import (
	"net/netip"
	"os"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/portsleuth/portsleuth/internal/event"
	"github.com/portsleuth/portsleuth/internal/netns"
	"github.com/portsleuth/portsleuth/internal/procinfo"
)

// Pids above the kernel's PID_MAX_LIMIT (4194304) name no process: their
// comm is empty, and a closer with such a pid has exited.
const (
	pidListener = 5000001
	pidClient   = 5000003
	pidCloser   = 5000004
)

// pidBinder is this process, so that one owner's comm is resolved from /proc.
var pidBinder = os.Getpid()

// world is a synthetic namespace: its sysctls, reserved ports, socket
// owners (inode -> pid) and sockets.
type world struct {
	sys      netns.Sysctls
	reserved map[int]bool
	owners   procinfo.Inodes
	socks    []Sock
	nextIno  uint64
}

// newWorld has the scenarios' range, 40000-40063, less the reserved ports.
func newWorld(reserved ...int) *world {
	w := &world{
		sys:      netns.Sysctls{PortRange: [2]int{40000, 40063}, Reserved: len(reserved), TCPTwReuse: 2, MaxTWBuckets: 4096},
		reserved: map[int]bool{},
		owners:   procinfo.Inodes{},
		nextIno:  1000,
	}
	for _, p := range reserved {
		w.reserved[p] = true
	}
	return w
}

// sock adds n sockets of pid (0: no process has it open, as a TIME_WAIT)
// from local:lport upwards; peer is empty for unconnected sockets.
func (w *world) sock(pid int, proto, state, local string, lport uint16, peer string, bindOwner bool, n int) {
	for i := range n {
		s := Sock{Proto: proto, State: state, Local: netip.MustParseAddr(local), LPort: lport + uint16(i), BindOwner: bindOwner, Options: []string{}}
		if peer != "" {
			ap := netip.MustParseAddrPort(peer)
			s.Remote, s.RPort = ap.Addr(), ap.Port()
		}
		if pid != 0 {
			w.nextIno++
			s.Ino = w.nextIno
			w.owners[s.Ino] = uint32(pid)
		}
		w.socks = append(w.socks, s)
	}
}

// timeWait adds n TIME_WAIT sockets closed by an exited process, with
// 1000, 2000... jiffies left.
func (w *world) timeWait(local string, lport uint16, peer string, n int) {
	ap := netip.MustParseAddrPort(peer)
	for i := range n {
		w.socks = append(w.socks, Sock{Proto: "tcp", State: "TIME_WAIT", Local: netip.MustParseAddr(local), LPort: lport + uint16(i),
			Remote: ap.Addr(), RPort: ap.Port(), TWJiffies: uint64(1000 * (i + 1)),
			CloserPID: pidCloser, CloserStart: 1, CloserComm: "closer"})
	}
}

func (w *world) result(topN int, q *HolderQuery) Namespace {
	a := New(w.sys, w.reserved, w.owners)
	a.Query = q
	for i := range w.socks {
		a.Add(&w.socks[i])
	}
	return a.Result(topN, 1000)
}

// mixed is one namespace with every kind of holder, 63 usable ports
// (40063 reserved):
//   - a listener on 0.0.0.0:8080 (outside the range);
//   - this process: 10 sockets bind(127.0.0.1:0) then connect to :8080, and
//     one UDP socket on 0.0.0.0:40030;
//   - a client: 5 plain connects to :8080, 3 to :9090, and one socket bound
//     to 127.0.0.1:50000 (outside the range) connected to :8080;
//   - 4 TIME_WAITs to :8080 closed by an exited process.
func mixed() *world {
	w := newWorld(40063)
	w.sock(pidListener, "tcp", "LISTEN", "0.0.0.0", 8080, "", true, 1)
	w.sock(pidBinder, "tcp", "ESTABLISHED", "127.0.0.1", 40000, "127.0.0.1:8080", true, 10)
	w.sock(pidClient, "tcp", "ESTABLISHED", "127.0.0.1", 40010, "127.0.0.1:8080", false, 5)
	w.timeWait("127.0.0.1", 40015, "127.0.0.1:8080", 4)
	w.sock(pidClient, "tcp", "ESTABLISHED", "127.0.0.1", 40020, "127.0.0.1:9090", false, 3)
	w.sock(pidClient, "tcp", "ESTABLISHED", "127.0.0.1", 50000, "127.0.0.1:8080", true, 1)
	w.sock(pidBinder, "udp", "UNCONNECTED", "0.0.0.0", 40030, "", false, 1)
	return w
}

func TestPoolsMixedNamespace(t *testing.T) {
	ns := mixed().result(5, nil)
	comm := ownComm(t)
	closer := Owner{PID: pidCloser, Start: 1, Exited: true, Comm: "closer", Sockets: 4, TimeWait: 4}

	if ns.Sockets != 25 || ns.BindOwnedPorts != 10 || ns.Reserved != 1 || ns.PortRange != [2]int{40000, 40063} ||
		ns.TCPTwReuse != 2 || ns.TCPMaxTWBuckets != 4096 {
		t.Errorf("namespace: %d sockets, %d bind-owned ports, reserved %d, range %v, tw_reuse %d, max_tw %d; want 25, 10 (the listener and :50000 are outside the range), 1, 40000-40063, 2, 4096",
			ns.Sockets, ns.BindOwnedPorts, ns.Reserved, ns.PortRange, ns.TCPTwReuse, ns.TCPMaxTWBuckets)
	}

	// Bind pools: 22 of the 63 usable TCP ports have an owner on 127.0.0.1
	// (10 + 5 + 4 TIME_WAIT + 3); the wildcard pool needs a port free on
	// every address, so it is as full. The UDP socket is in the UDP pool only.
	tcpOwners := []Owner{
		{PID: pidBinder, Comm: comm, Sockets: 10, BindOwner: 10, BindConnected: 10},
		{PID: pidClient, Sockets: 8, Established: 8},
		closer,
	}
	wantBind := []BindPool{
		{Proto: "tcp", Local: "0.0.0.0", Used: 22, Free: 41, PercentUsed: 34.9, Owners: tcpOwners},
		{Proto: "tcp", Local: "127.0.0.1", Used: 22, Free: 41, PercentUsed: 34.9, Owners: tcpOwners},
		{Proto: "udp", Local: "0.0.0.0", Used: 1, Free: 62, PercentUsed: 1.6,
			Owners: []Owner{{PID: pidBinder, Comm: comm, Sockets: 1, Other: 1}}},
	}
	if !reflect.DeepEqual(ns.BindPools, wantBind) {
		t.Errorf("bind pools\n got %+v\nwant %+v", ns.BindPools, wantBind)
	}

	// Connect pools, fullest first. To :8080: 15 established (10 of them
	// bind-owned) and 4 TIME_WAIT; free = 63 - 10 bind-owned - 9 others = 44.
	// To :9090: its 3 sockets, and the 10 bind-owned ports, which connect()
	// skips for every destination: free = 63 - 10 - 3 = 50.
	wantConnect := []ConnectPool{
		{Local: "127.0.0.1", Dest: "127.0.0.1:8080", Established: 15, TimeWait: 4, BindOwned: 0, Free: 44, Size: 63, PercentUsed: 30.2,
			TimeWaitLeft: [2]float64{1, 4},
			Owners: []Owner{
				{PID: pidBinder, Comm: comm, Sockets: 10, Established: 10, BindConnected: 10},
				{PID: pidClient, Sockets: 5, Established: 5},
				closer,
			}},
		{Local: "127.0.0.1", Dest: "127.0.0.1:9090", Established: 3, BindOwned: 10, Free: 50, Size: 63, PercentUsed: 20.6,
			Owners: []Owner{
				{PID: pidBinder, Comm: comm, BindOwner: 10, BindConnected: 10},
				{PID: pidClient, Sockets: 3, Established: 3},
			}},
	}
	if !reflect.DeepEqual(ns.ConnectPools, wantConnect) {
		t.Errorf("connect pools\n got %+v\nwant %+v", ns.ConnectPools, wantConnect)
	}

	// Top: sockets each process has open (TIME_WAITs have no process).
	wantTop := []Owner{{PID: pidBinder, Comm: comm, Sockets: 11}, {PID: pidClient, Sockets: 9}, {PID: pidListener, Sockets: 1}}
	if !reflect.DeepEqual(ns.Top, wantTop) {
		t.Errorf("top\n got %+v\nwant %+v", ns.Top, wantTop)
	}
	want := "no pool is under pressure; fullest: bind(0.0.0.0:0) pool (tcp) is 35% used: 22 of 63 ports have an owner"
	if ns.Verdict != want {
		t.Errorf("verdict\n got %q\nwant %q", ns.Verdict, want)
	}
}

// topN bounds every owner list, keeping those that hold the most.
func TestPoolsTopN(t *testing.T) {
	ns := mixed().result(1, nil)
	if len(ns.Top) != 1 || ns.Top[0].PID != pidBinder {
		t.Errorf("top %+v, want only pid %d", ns.Top, pidBinder)
	}
	for _, p := range ns.BindPools {
		if len(p.Owners) != 1 || p.Owners[0].PID != pidBinder {
			t.Errorf("bind pool %s %s owners %+v, want only pid %d", p.Proto, p.Local, p.Owners, pidBinder)
		}
	}
	for _, p := range ns.ConnectPools {
		if len(p.Owners) != 1 || p.Owners[0].PID != pidBinder {
			t.Errorf("connect pool to %s owners %+v, want only pid %d", p.Dest, p.Owners, pidBinder)
		}
	}
}

// TIME_WAIT alone fills a connect pool: every port of the range to one
// destination, none free, and the verdict says so.
func TestPoolsTimeWaitExhaustion(t *testing.T) {
	w := newWorld()
	w.timeWait("127.0.0.1", 40000, "127.0.0.1:8080", 64)
	ns := w.result(5, nil)
	if len(ns.ConnectPools) != 1 {
		t.Fatalf("connect pools %+v, want one", ns.ConnectPools)
	}
	cp := ns.ConnectPools[0]
	if cp.TimeWait != 64 || cp.Established != 0 || cp.Free != 0 || cp.Size != 64 || cp.PercentUsed != 100 || cp.BindOwned != 0 ||
		cp.TimeWaitLeft != [2]float64{1, 64} {
		t.Errorf("pool %+v; want 64 TIME_WAIT, 0 free of 64, 100%%, 1-64 s left", cp)
	}
	if len(cp.Owners) != 1 || cp.Owners[0].PID != pidCloser || !cp.Owners[0].Exited || cp.Owners[0].TimeWait != 64 {
		t.Errorf("owners %+v; want the exited closer with 64 TIME_WAIT", cp.Owners)
	}
	if ns.BindOwnedPorts != 0 || len(ns.Top) != 0 {
		t.Errorf("bind-owned %d top %+v; TIME_WAITs have no owner and no process", ns.BindOwnedPorts, ns.Top)
	}
	want := "connect pool to 127.0.0.1:8080 from 127.0.0.1 is 100% full: 64 TIME_WAIT, 0 established, 0 free"
	if ns.Verdict != want {
		t.Errorf("verdict\n got %q\nwant %q", ns.Verdict, want)
	}
}

// The seed's shape: bind-before-connect to 4 destinations, 16 connections
// each. Each pool holds 16 of its own and loses the other 48 bind-owned
// ports, which connect() skips for every destination: all 4 are full.
func TestPoolsBindOwnersTakeEveryDestination(t *testing.T) {
	w := newWorld()
	for i, dest := range []string{"127.0.0.1:8080", "127.0.0.1:8081", "127.0.0.2:8080", "127.0.0.2:8081"} {
		w.sock(pidBinder, "tcp", "ESTABLISHED", "127.0.0.1", uint16(40000+16*i), dest, true, 16)
	}
	ns := w.result(5, nil)
	if ns.BindOwnedPorts != 64 || len(ns.ConnectPools) != 4 {
		t.Fatalf("bind-owned %d, %d connect pools; want 64, 4", ns.BindOwnedPorts, len(ns.ConnectPools))
	}
	for _, cp := range ns.ConnectPools {
		if cp.Established != 16 || cp.BindOwned != 48 || cp.Free != 0 || cp.PercentUsed != 100 {
			t.Errorf("pool to %s: %+v; want 16 established, 48 bind-owned, 0 free, 100%%", cp.Dest, cp)
		}
		if len(cp.Owners) != 1 || cp.Owners[0] != (Owner{PID: pidBinder, Comm: ownComm(t), Sockets: 16, Established: 16, BindOwner: 48, BindConnected: 64}) {
			t.Errorf("pool to %s owners %+v; want this process, 16 established here and 48 bind-owned elsewhere", cp.Dest, cp.Owners)
		}
	}
	// Sorted by fullness, then by source and destination.
	if ns.ConnectPools[0].Dest != "127.0.0.1:8080" || ns.ConnectPools[3].Dest != "127.0.0.2:8081" {
		t.Errorf("connect pools not in (local, dest) order at equal fullness: %+v", ns.ConnectPools)
	}
	want := "connect pool to 127.0.0.1:8080 from 127.0.0.1 is 100% full: 0 TIME_WAIT, 16 established, 48 held by bind()/listen() owners for every destination, 0 free"
	if ns.Verdict != want {
		t.Errorf("verdict\n got %q\nwant %q", ns.Verdict, want)
	}
}

// A bind(addr, 0) needs the port free on addr and on the wildcard; a
// wildcard bind needs it free on every address of its family. Families and
// protocols are separate pools.
func TestPoolsBindWildcardAndProtocols(t *testing.T) {
	w := newWorld()
	w.sock(pidClient, "tcp", "LISTEN", "0.0.0.0", 40000, "", true, 1)
	w.sock(pidClient, "tcp", "LISTEN", "10.0.0.2", 40001, "", true, 2)
	w.sock(pidClient, "tcp", "LISTEN", "10.0.0.1", 40010, "", true, 1)
	w.sock(pidClient, "udp", "UNCONNECTED", "10.0.0.1", 40020, "", false, 5)
	w.sock(pidClient, "tcp", "LISTEN", "::1", 40030, "", true, 3)
	ns := w.result(5, nil)
	used := map[string]int{}
	for _, p := range ns.BindPools {
		used[p.Proto+" "+p.Local] = p.Used
		if p.Used+p.Free != 64 {
			t.Errorf("%s %s: used %d + free %d, want the 64 ports of the range", p.Proto, p.Local, p.Used, p.Free)
		}
	}
	want := map[string]int{
		"tcp 0.0.0.0":  4, // every IPv4 owner
		"tcp 10.0.0.1": 2, // its own and the wildcard's
		"tcp 10.0.0.2": 3,
		"tcp ::":       3,
		"tcp ::1":      3,
		"udp 0.0.0.0":  5,
		"udp 10.0.0.1": 5,
	}
	if !reflect.DeepEqual(used, want) {
		t.Errorf("used ports per pool %v, want %v", used, want)
	}
	if ns.BindOwnedPorts != 7 || len(ns.ConnectPools) != 0 {
		t.Errorf("bind-owned %d, connect pools %+v; want 7 (TCP only), none (nothing connected)", ns.BindOwnedPorts, ns.ConnectPools)
	}
}

// Reserved ports are no one's to take: a range of 64 with 4 reserved offers
// 60, and an owner of a reserved port does not shrink any pool.
func TestPoolsReservedPorts(t *testing.T) {
	w := newWorld(40000, 40001, 40002, 40003)
	w.sock(pidClient, "tcp", "ESTABLISHED", "127.0.0.1", 40000, "127.0.0.1:8080", true, 1) // on a reserved port: bound explicitly
	w.sock(pidClient, "tcp", "ESTABLISHED", "127.0.0.1", 40010, "127.0.0.1:8080", false, 6)
	ns := w.result(5, nil)
	if ns.BindOwnedPorts != 0 {
		t.Errorf("bind-owned %d, want 0: the only bind-owned port is reserved", ns.BindOwnedPorts)
	}
	cp := ns.ConnectPools[0]
	if cp.Size != 60 || cp.Free != 54 || cp.PercentUsed != 10 || cp.Established != 7 {
		t.Errorf("pool %+v; want size 60, 6 taken (the reserved port's socket is not), 54 free, 10%%", cp)
	}
	for _, p := range ns.BindPools {
		if p.Proto == "tcp" && (p.Used != 6 || p.Free != 54) {
			t.Errorf("bind pool %s: used %d free %d, want 6 and 54", p.Local, p.Used, p.Free)
		}
	}
}

// A holder query collects the sockets that own one port: equal and
// wildcard addresses, one protocol, at most MaxHolders.
func TestPoolsHolderQuery(t *testing.T) {
	w := mixed()
	q := &HolderQuery{Proto: "tcp", Addr: netip.MustParseAddr("127.0.0.1"), Port: 8080}
	w.result(5, q)
	if len(q.Found) != 1 {
		t.Fatalf("holders %+v, want the wildcard listener", q.Found)
	}
	h := q.Found[0]
	if h.State != "LISTEN" || h.Local.String() != "0.0.0.0:8080" || h.PID != pidListener || h.SockIno == 0 || h.Remote.IsValid() {
		t.Errorf("holder %+v; want pid %d LISTEN 0.0.0.0:8080", h, pidListener)
	}

	q = &HolderQuery{Proto: "tcp", Addr: netip.MustParseAddr("127.0.0.1"), Port: 40000}
	w.result(5, q)
	if len(q.Found) != 1 || q.Found[0].Remote.String() != "127.0.0.1:8080" || q.Found[0].Comm != ownComm(t) {
		t.Errorf("holders of 127.0.0.1:40000 %+v; want this process's connection to 127.0.0.1:8080", q.Found)
	}
	q = &HolderQuery{Proto: "udp", Addr: netip.MustParseAddr("127.0.0.1"), Port: 8080}
	if w.result(5, q); len(q.Found) != 0 {
		t.Errorf("a UDP query found TCP holders: %+v", q.Found)
	}

	crowd := newWorld()
	crowd.sock(pidClient, "tcp", "ESTABLISHED", "127.0.0.1", 40000, "127.0.0.1:8080", false, 1)
	for range 20 {
		crowd.sock(pidClient, "tcp", "ESTABLISHED", "127.0.0.1", 40000, "127.0.0.1:9090", false, 1)
	}
	q = &HolderQuery{Proto: "tcp", Addr: netip.IPv4Unspecified(), Port: 40000}
	if crowd.result(5, q); len(q.Found) != MaxHolders {
		t.Errorf("%d holders kept of 21, want %d", len(q.Found), MaxHolders)
	}
}

// A failure's snapshot takes the pool its call drew from.
func TestSnapshotForPicksThePool(t *testing.T) {
	ns := mixed().result(5, nil)
	conn := &event.Event{Class: event.Class{Op: event.Connect, Proto: "tcp", Family: "ipv4", Errno: unix.EADDRNOTAVAIL},
		Dest: netip.MustParseAddrPort("127.0.0.1:9090")}
	s := SnapshotFor(ns, conn)
	if s.ConnectPool == nil || s.ConnectPool.Dest != "127.0.0.1:9090" || s.BindPool != nil || s.Sockets != 25 {
		t.Errorf("connect snapshot %+v; want the pool to 127.0.0.1:9090", s)
	}
	want := "at the first failure, the connect pool to 127.0.0.1:9090 from 127.0.0.1 was 21% full (3 established, 0 TIME_WAIT, 10 held by bind()/listen() owners for every destination, 50 free); namespace: " + ns.Verdict
	if got := s.Text(); got != want {
		t.Errorf("text\n got %q\nwant %q", got, want)
	}

	bind := &event.Event{Class: event.Class{Op: event.Bind, Proto: "udp", Family: "ipv4", Errno: unix.EADDRINUSE},
		Addr: netip.MustParseAddrPort("0.0.0.0:0")}
	s = SnapshotFor(ns, bind)
	if s.BindPool == nil || s.BindPool.Proto != "udp" || s.BindPool.Local != "0.0.0.0" || s.ConnectPool != nil {
		t.Errorf("bind snapshot %+v; want the UDP pool of 0.0.0.0", s)
	}
	if got := s.Text(); !strings.HasPrefix(got, "at the first failure, the bind(0.0.0.0:0) pool (udp) was 2% used (62 free)") {
		t.Errorf("text %q", got)
	}

	none := SnapshotFor(ns, &event.Event{Class: event.Class{Op: event.Connect}, Dest: netip.MustParseAddrPort("192.0.2.1:1")})
	if none.ConnectPool != nil || none.Text() != "at the first failure: "+ns.Verdict {
		t.Errorf("snapshot for a destination with no pool: %+v %q", none, none.Text())
	}
}

// ownComm is this process's name as /proc gives it.
func ownComm(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/comm")
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}
