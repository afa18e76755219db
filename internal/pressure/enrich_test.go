package pressure

import (
	"fmt"
	"net/netip"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/portsleuth/portsleuth/internal/event"
	"github.com/portsleuth/portsleuth/internal/netns"
	"github.com/portsleuth/portsleuth/internal/pools"
	"github.com/portsleuth/portsleuth/internal/procinfo"
)

func newEnricher(t *testing.T) *Enricher {
	t.Helper()
	en := NewEnricher()
	t.Cleanup(func() { en.Close() })
	return en
}

// A crash-looping server: each new instance fails bind() on the port a
// long-lived process listens on and exits at once. The holder and the
// snapshot come from the namespace the event names, not from the gone task.
func TestEnrichHolderAfterFailingProcessExited(t *testing.T) {
	needRoot(t)
	const addr = "0.0.0.0:8080"
	srv := startHolder(t, listenEnv+"="+addr)
	en := newEnricher(t)
	for instance := range 2 {
		f := failIn(t, srv.pid, "bind", addr)
		if f.errno != unix.EADDRINUSE {
			t.Fatalf("instance %d: bind failed with %v, want EADDRINUSE", instance, f.errno)
		}
		e := event.Event{
			Time: time.Now(), PID: f.pid, TID: f.tid, Netns: srv.netns,
			Class: event.Class{Op: event.Bind, Proto: "tcp", Family: "ipv4", Errno: unix.EADDRINUSE, AnyAddr: true},
			Addr:  netip.MustParseAddrPort(addr),
		}
		snap := en.Enrich(&e)
		if snap == nil {
			t.Fatalf("instance %d: no snapshot", instance)
		}
		if snap.Netns != srv.netns || snap.BindPool == nil || snap.BindPool.Local != "0.0.0.0" {
			t.Errorf("instance %d: snapshot %+v, want the bind pool of 0.0.0.0 in netns %d", instance, snap, srv.netns)
		}
		h := e.Holder
		if h == nil {
			t.Fatalf("instance %d: no holder", instance)
		}
		if h.PID != uint32(srv.pid) || h.State != "LISTEN" || h.Local.String() != addr {
			t.Errorf("instance %d: holder %+v, want pid %d LISTEN on %s", instance, *h, srv.pid, addr)
		}
	}
}

// A short-lived client fails connect() in a namespace whose 64-port pool a
// live process filled; the snapshot taken after the client exited shows the
// pool full and who holds it.
func TestEnrichSnapshotAfterFailingProcessExited(t *testing.T) {
	needRoot(t)
	const dest = "127.0.0.1:8080"
	filler := startHolder(t, rangeEnv+"=40000 40063", listenEnv+"="+dest, fillEnv+"="+dest)
	if filler.filled != 64 {
		t.Fatalf("filled %d connections, want 64", filler.filled)
	}
	f := failIn(t, filler.pid, "connect", dest)
	if f.errno != unix.EADDRNOTAVAIL {
		t.Fatalf("connect failed with %v, want EADDRNOTAVAIL", f.errno)
	}
	e := event.Event{
		Time: time.Now(), PID: f.pid, TID: f.tid, Netns: filler.netns,
		Class: event.Class{Op: event.Connect, Proto: "tcp", Family: "ipv4", Errno: unix.EADDRNOTAVAIL, Port0: true, AnyAddr: true},
		Dest:  netip.MustParseAddrPort(dest),
	}
	snap := snapshotOnce(t, &e)
	p := snap.ConnectPool
	if p == nil {
		t.Fatalf("snapshot %+v has no connect pool", snap)
	}
	if p.Dest != dest || p.Local != "127.0.0.1" || p.Established != 64 || p.TimeWait != 0 || p.Free != 0 || p.PercentUsed != 100 {
		t.Errorf("pool %+v, want 64 established to %s from 127.0.0.1, 0 free, 100%%", *p, dest)
	}
	if len(p.Owners) != 1 || p.Owners[0].PID != filler.pid || p.Owners[0].Sockets != 64 {
		t.Errorf("owners %+v, want pid %d with 64 sockets", p.Owners, filler.pid)
	}
	if snap.Netns != filler.netns {
		t.Errorf("snapshot of netns %d, want %d", snap.Netns, filler.netns)
	}
	if e.Holder != nil {
		t.Errorf("holder %+v on a connect failure", *e.Holder)
	}
	sys, err := newEnricher(t).Sysctls(e.Netns, e.PID, e.TID)
	if err != nil || sys.Netns != filler.netns || sys.PortRange != [2]int{40000, 40063} {
		t.Errorf("sysctls %+v (%v), want netns %d range 40000-40063", sys, err, filler.netns)
	}
}

// The kernel gives a destroyed namespace's inode number to the next one it
// makes: a namespace found under a failure's number but with another cookie
// is not the failure's, and is not measured.
func TestEnrichRefusesAnotherNamespaceUnderTheNumber(t *testing.T) {
	needRoot(t)
	const dest = "127.0.0.1:8080"
	filler := startHolder(t, rangeEnv+"=40000 40063", listenEnv+"="+dest, fillEnv+"="+dest)
	f, err := os.Open(fmt.Sprintf("/proc/%d/ns/net", filler.pid))
	if err != nil {
		t.Fatal(err)
	}
	sys, err := netns.ReadFD(int(f.Fd()))
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	if sys.Cookie == 0 {
		t.Skip("this kernel gives no namespace cookie (SO_NETNS_COOKIE is 5.14+)")
	}
	fail := failIn(t, filler.pid, "connect", dest)
	for _, tc := range []struct {
		cookie uint64
		want   bool
	}{{sys.Cookie, true}, {0, true}, {sys.Cookie + 1, false}} {
		e := event.Event{
			Time: time.Now(), PID: fail.pid, TID: fail.tid, Netns: filler.netns, NetnsCookie: tc.cookie,
			Class: event.Class{Op: event.Connect, Proto: "tcp", Family: "ipv4", Errno: unix.EADDRNOTAVAIL, Port0: true, AnyAddr: true},
			Dest:  netip.MustParseAddrPort(dest),
		}
		if snap := newEnricher(t).Enrich(&e); (snap != nil) != tc.want {
			t.Errorf("event cookie %d (the namespace's is %d): snapshot %v, want one: %v", tc.cookie, sys.Cookie, snap != nil, tc.want)
		}
	}
	// Nor is a holder found there before handed to a failure under the same
	// number in another namespace.
	en := newEnricher(t)
	for i, cookie := range []uint64{sys.Cookie, sys.Cookie + 1} {
		f := failIn(t, filler.pid, "bind", dest)
		e := event.Event{
			Time: time.Now(), PID: f.pid, TID: f.tid, Netns: filler.netns, NetnsCookie: cookie,
			Class: event.Class{Op: event.Bind, Proto: "tcp", Family: "ipv4", Errno: unix.EADDRINUSE},
			Addr:  netip.MustParseAddrPort(dest),
		}
		snap := en.Enrich(&e)
		if right := i == 0; (snap != nil) != right || (e.Holder != nil) != right {
			t.Errorf("bind in use, event cookie %d (the namespace's is %d): snapshot %v, holder %+v; want both only for the right cookie",
				cookie, sys.Cookie, snap != nil, e.Holder)
		}
	}
}

// A holder the kernel named by its socket is given its process before the
// namespace scan, and whether or not the scan succeeds: here the event names
// a namespace that does not exist, and the holder is still named.
func TestEnrichNamesTheKernelsHolderFirst(t *testing.T) {
	needRoot(t)
	const addr = "127.0.0.1:8080"
	srv := startHolder(t, listenEnv+"="+addr)
	var ino uint64
	for i, pid := range procinfo.SocketInodes() {
		if int(pid) == srv.pid {
			ino = i // the holder has one socket: its listener
		}
	}
	if ino == 0 {
		t.Fatalf("pid %d holds no socket", srv.pid)
	}
	e := event.Event{
		Time: time.Now(), PID: 1 << 22, TID: 1 << 22, Netns: 1,
		Class:  event.Class{Op: event.Bind, Proto: "tcp", Family: "ipv4", Errno: unix.EADDRINUSE},
		Addr:   netip.MustParseAddrPort(addr),
		Holder: &event.Holder{State: "LISTEN", Local: netip.MustParseAddrPort(addr), SockIno: ino},
	}
	if snap := newEnricher(t).Enrich(&e); snap != nil {
		t.Errorf("a snapshot of namespace 1: %+v", snap)
	}
	if e.Holder.PID != uint32(srv.pid) || e.Holder.Comm == "" {
		t.Errorf("holder %+v, want pid %d named", *e.Holder, srv.pid)
	}
}

// snapshotOnce enriches e once with a fresh enricher and requires a snapshot.
func snapshotOnce(t *testing.T, e *event.Event) *pools.Snapshot {
	t.Helper()
	snap := newEnricher(t).Enrich(e)
	if snap == nil {
		t.Fatal("no snapshot")
	}
	return snap
}

// Once per (pid, class): a second failure of the same process gets the
// holder found the first time, and no second snapshot.
func TestEnrichOncePerProcessAndClass(t *testing.T) {
	needRoot(t)
	const addr = "0.0.0.0:8080"
	srv := startHolder(t, listenEnv+"="+addr)
	f := failIn(t, srv.pid, "bind", addr)
	en := newEnricher(t)
	mk := func() event.Event {
		return event.Event{PID: f.pid, TID: f.tid, Netns: srv.netns, Addr: netip.MustParseAddrPort(addr),
			Class: event.Class{Op: event.Bind, Proto: "tcp", Family: "ipv4", Errno: unix.EADDRINUSE, AnyAddr: true}}
	}
	first, second := mk(), mk()
	if en.Enrich(&first) == nil || first.Holder == nil {
		t.Fatalf("first failure: no snapshot or holder (%+v)", first.Holder)
	}
	if snap := en.Enrich(&second); snap != nil {
		t.Errorf("second failure got a snapshot: %+v", snap)
	}
	if second.Holder == nil || second.Holder.PID != uint32(srv.pid) {
		t.Errorf("second failure: holder %+v, want the cached one", second.Holder)
	}
}
