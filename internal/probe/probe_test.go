package probe

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/portsleuth/portsleuth/gen"
	"github.com/portsleuth/portsleuth/internal/event"
	"github.com/portsleuth/portsleuth/internal/netns"
	"github.com/portsleuth/portsleuth/internal/scenario"
)

func start(t *testing.T) *Tracer {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: loads BPF programs (CAP_BPF, CAP_PERFMON) and creates network namespaces (CAP_SYS_ADMIN)")
	}
	b, err := ParseBackend(cmp.Or(os.Getenv("PORTSLEUTH_TEST_BACKEND"), "auto"))
	if err != nil {
		t.Fatal(err)
	}
	tr, err := Start(Options{PID: uint32(os.Getpid()), Backend: b})
	if err != nil {
		t.Fatalf("starting the tracer: %v", err)
	}
	t.Cleanup(func() { tr.Close() })
	return tr
}

// inNetns runs fn on a locked thread inside a new network namespace with lo up.
func inNetns(t *testing.T, fn func() error) {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the namespace
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			done <- err
			return
		}
		fd, _ := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
		ifr, _ := unix.NewIfreq("lo")
		ifr.SetUint16(unix.IFF_UP | unix.IFF_LOOPBACK | unix.IFF_RUNNING)
		if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
			done <- err
			return
		}
		unix.Close(fd)
		done <- fn()
	}()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

var lo8080 = &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}, Port: 8080}

func holdPort(sa unix.Sockaddr) (int, error) {
	l, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
	if err != nil {
		return -1, err
	}
	if err := unix.Bind(l, sa); err != nil {
		return -1, err
	}
	return l, unix.Listen(l, 8)
}

// The options reported are the ones in effect on the kernel socket.
func TestOptionsFromTheSocket(t *testing.T) {
	tr := start(t)
	inNetns(t, func() error {
		if _, err := holdPort(lo8080); err != nil {
			return err
		}
		s, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
		if err != nil {
			return err
		}
		for _, o := range [][2]int{
			{unix.SOL_SOCKET, unix.SO_REUSEADDR}, {unix.SOL_SOCKET, unix.SO_REUSEPORT},
			{unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT}, {unix.IPPROTO_IP, unix.IP_FREEBIND},
			{unix.IPPROTO_IP, unix.IP_TRANSPARENT},
		} {
			if err := unix.SetsockoptInt(s, o[0], o[1], 1); err != nil {
				return err
			}
		}
		if err := unix.Bind(s, lo8080); !errors.Is(err, unix.EADDRINUSE) {
			return errors.New("bind of a held port did not fail EADDRINUSE")
		}
		return nil
	})
	tr.SetDeadline(time.Now().Add(2 * time.Second))
	e, err := tr.Read()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"SO_REUSEADDR", "SO_REUSEPORT", "IP_BIND_ADDRESS_NO_PORT", "IP_FREEBIND", "IP_TRANSPARENT"}
	if !slices.Equal(e.Options, want) {
		t.Errorf("options %v, want %v", e.Options, want)
	}
	if e.Class != (event.Class{Op: event.Bind, Proto: "tcp", Family: "ipv4", Errno: unix.EADDRINUSE}) {
		t.Errorf("class %+v", e.Class)
	}
	if e.Addr.String() != "127.0.0.1:8080" || e.PID != uint32(os.Getpid()) {
		t.Errorf("event %+v", e)
	}
}

// A storm overflows the ring buffer; every failure is still either delivered
// or counted as lost, and the per-class counter is exact.
func TestRingBufferOverflowIsCounted(t *testing.T) {
	tr := start(t)
	const storm = 30000
	inNetns(t, func() error {
		if _, err := holdPort(lo8080); err != nil {
			return err
		}
		s, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
		if err != nil {
			return err
		}
		for i := 0; i < storm; i++ {
			if err := unix.Bind(s, lo8080); !errors.Is(err, unix.EADDRINUSE) {
				return err
			}
		}
		return nil
	})
	tr.Flush() // the cgroup backend decides a failure once the socket moves on
	delivered := 0
	for {
		tr.SetDeadline(time.Now())
		if _, err := tr.Read(); err != nil {
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatal(err)
			}
			break
		}
		delivered++
	}
	snap, err := tr.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	pid := mine(snap)
	class := event.Class{Op: event.Bind, Proto: "tcp", Family: "ipv4", Errno: unix.EADDRINUSE}
	if got := snap.Failures[pid][class]; got != storm {
		t.Errorf("kernel counted %d failures, want %d", got, storm)
	}
	if snap.Procs[pid].BindsFailed != storm {
		t.Errorf("binds failed %d, want %d", snap.Procs[pid].BindsFailed, storm)
	}
	if snap.Lost == 0 {
		t.Errorf("a %d-event storm into a 1 MiB ring buffer lost nothing: is the buffer bigger?", storm)
	}
	if uint64(delivered)+snap.Lost != storm {
		t.Errorf("delivered %d + lost %d != %d: events vanished without being counted", delivered, snap.Lost, storm)
	}
	t.Logf("storm of %d: %d delivered, %d lost (counted)", storm, delivered, snap.Lost)
}

// The kernel's own record of a netns' sysctls matches what was set in it.
func TestNetnsSysctlsFromKernel(t *testing.T) {
	tr := start(t)
	var inum uint64
	var inside netns.Sysctls // read by the agent in the namespace
	inNetns(t, func() error {
		if err := os.WriteFile("/proc/sys/net/ipv4/ip_local_port_range", []byte("41000 41999"), 0); err != nil {
			return err
		}
		if err := os.WriteFile("/proc/sys/net/ipv4/tcp_tw_reuse", []byte("1"), 0); err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
			return err
		}
		inum = st.Ino
		f, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			return err
		}
		defer f.Close()
		if inside, err = netns.ReadFD(int(f.Fd())); err != nil {
			return err
		}
		s, _ := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
		return ignore(unix.Bind(s, &unix.SockaddrInet4{Addr: [4]byte{192, 0, 2, 1}}), unix.EADDRNOTAVAIL)
	})
	tr.Flush()
	snap, err := tr.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	ns, ok := snap.Netns[inum]
	if !ok {
		t.Fatalf("no sysctls recorded for netns %d: %+v", inum, snap.Netns)
	}
	if ns.PortRange != [2]int{41000, 41999} || ns.TCPTwReuse != 1 || ns.Source != "kernel" {
		t.Errorf("sysctls %+v", ns)
	}
	// The cookie the kernel programs read is the one the agent reads in the
	// namespace (SO_NETNS_COOKIE, 5.14+): it is how the agent tells the
	// namespace from a later one given its number.
	if inside.Cookie != 0 && ns.Cookie != inside.Cookie {
		t.Errorf("kernel cookie %d, the namespace's own %d", ns.Cookie, inside.Cookie)
	}
	if ns.Cookie == 0 {
		t.Errorf("no cookie recorded for netns %d", inum)
	}
}

// The kernel hands a destroyed namespace's inode number to the next
// namespace it makes. A namespace that fails under a number an earlier one
// failed under gets its own sysctls, not the earlier one's: namespaces come
// and go until one takes a number seen before (bounded in count and time).
func TestNetnsReusedNumberGetsItsOwnSysctls(t *testing.T) {
	tr := start(t)
	ranges := map[uint64][2]int{} // inum -> the range its last namespace had
	deadline := time.Now().Add(30 * time.Second)
	for i := 0; i < 400 && time.Now().Before(deadline); i++ {
		lo := 20000 + (i%400)*100
		want := [2]int{lo, lo + 99}
		var inum uint64
		inNetns(t, func() error {
			if err := os.WriteFile("/proc/sys/net/ipv4/ip_local_port_range", []byte(fmt.Sprintf("%d %d", want[0], want[1])), 0); err != nil {
				return err
			}
			var st unix.Stat_t
			if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
				return err
			}
			inum = st.Ino
			s, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
			if err != nil {
				return err
			}
			defer unix.Close(s) // a socket would keep the namespace (and its number)
			return ignore(unix.Bind(s, &unix.SockaddrInet4{Addr: [4]byte{192, 0, 2, 1}}), unix.EADDRNOTAVAIL)
		})
		earlier, reused := ranges[inum]
		ranges[inum] = want
		if !reused {
			continue
		}
		tr.Flush()
		snap, err := tr.Snapshot()
		if err != nil {
			t.Fatal(err)
		}
		if got := snap.Netns[inum].PortRange; got != want {
			t.Fatalf("namespace %d (a number an earlier namespace with range %v failed under) reported range %v, want its own %v",
				inum, earlier, got, want)
		}
		t.Logf("namespace number %d reused after %d namespaces: its own sysctls reported", inum, i+1)
		return
	}
	t.Skipf("no namespace number came back in %d namespaces (another process may take them as they are freed)", len(ranges))
}

func ignore(err error, want unix.Errno) error {
	if errors.Is(err, want) {
		return nil
	}
	return err
}

func TestPrivilegesErrorNamesCapabilities(t *testing.T) {
	for _, c := range []string{"CAP_BPF", "CAP_PERFMON", "root"} {
		if !strings.Contains(ErrPrivileges.Error(), c) {
			t.Errorf("%q does not name %s", ErrPrivileges, c)
		}
	}
}

// Close leaves no program behind: every id the tracer loaded is gone.
func TestCloseDetachesEverything(t *testing.T) {
	tr := start(t)
	var ids []ebpf.ProgramID
	for _, p := range tr.progs {
		info, err := p.Info()
		if err != nil {
			t.Fatal(err)
		}
		id, ok := info.ID()
		if !ok {
			t.Skip("kernel does not report program ids")
		}
		ids = append(ids, id)
	}
	if len(ids) == 0 {
		t.Fatal("tracer holds no programs")
	}
	if err := tr.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	// Links whose release the kernel defers past an RCU grace period drop
	// their program a moment after Close: give that a bounded wait.
	for _, id := range ids {
		gone := false
		for i := 0; i < 50 && !gone; i++ {
			p, err := ebpf.NewProgramFromID(id)
			if gone = err != nil; !gone {
				p.Close()
				time.Sleep(100 * time.Millisecond)
			}
		}
		if !gone {
			t.Errorf("program %d still loaded 5s after Close", id)
		}
	}
}

// Each kind of bind failure is counted under the errno the call returned.
// On the cgroup backend the errno is inferred: this is what checks the
// inference against the kernel's real answers.
func TestBindErrnoPerCause(t *testing.T) {
	tr := start(t)
	want := map[unix.Errno]uint64{}
	var others uint64
	inNetns(t, func() error {
		if _, err := holdPort(lo8080); err != nil {
			return err
		}
		try := func(family int, sa unix.Sockaddr, before func(int) error) error {
			s, err := unix.Socket(family, unix.SOCK_STREAM, 0)
			if err != nil {
				return err
			}
			defer unix.Close(s)
			if before != nil {
				if err := before(s); err != nil {
					return err
				}
			}
			err = unix.Bind(s, sa)
			var errno unix.Errno
			switch {
			case err == nil:
			case errors.As(err, &errno) && errno == unix.EINVAL:
				others++
			case errors.As(err, &errno):
				want[errno]++
			default:
				return err
			}
			return nil
		}
		noPort := func(s int) error { return unix.SetsockoptInt(s, unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1) }
		bindFirst := func(s int) error { return unix.Bind(s, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}) }
		for _, c := range []struct {
			family int
			sa     unix.Sockaddr
			before func(int) error
		}{
			{unix.AF_INET, lo8080, nil}, // held: EADDRINUSE
			{unix.AF_INET, &unix.SockaddrInet4{Addr: [4]byte{192, 0, 2, 1}}, nil},    // not local: EADDRNOTAVAIL
			{unix.AF_INET, &unix.SockaddrInet4{Addr: [4]byte{192, 0, 2, 1}}, noPort}, // not local, no port: EADDRNOTAVAIL
			{unix.AF_INET, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}, noPort}, // ok
			{unix.AF_INET, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}, Port: 8081}, nil},
			{unix.AF_INET, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 2}}, nil},                    // lo's /8 is local: ok        // ok
			{unix.AF_INET, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}, Port: 8082}, bindFirst},  // already bound: EINVAL
			{unix.AF_INET6, &unix.SockaddrInet6{Addr: [16]byte{0x20, 0x01, 0x0d, 0xb8, 15: 1}}, nil}, // not local: EADDRNOTAVAIL
			{unix.AF_INET6, &unix.SockaddrInet6{Addr: [16]byte{15: 1}, Port: 8083}, nil},             // ok
		} {
			if err := try(c.family, c.sa, c.before); err != nil {
				return err
			}
		}
		// A privileged port without CAP_NET_BIND_SERVICE: capabilities are
		// per thread, and this locked thread dies with the test namespace.
		if err := dropCapability(unix.CAP_NET_BIND_SERVICE); err != nil {
			return err
		}
		return try(unix.AF_INET, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}, Port: 80}, nil)
	})
	tr.Flush()
	for {
		tr.SetDeadline(time.Now().Add(300 * time.Millisecond))
		e, err := tr.Read()
		if err != nil {
			break
		}
		t.Logf("event %s %v %v %v", e.Class.Errno, e.Addr, e.Options, e.Source)
	}
	if want[unix.EADDRINUSE] != 1 || want[unix.EADDRNOTAVAIL] != 3 || want[unix.EACCES] != 1 || others != 1 {
		t.Fatalf("the kernel answered %v and %d EINVAL: not the cases this test builds", want, others)
	}
	snap, err := tr.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	pid := mine(snap)
	got := map[unix.Errno]uint64{}
	for c, n := range snap.Failures[pid] {
		if c.Op == event.Bind {
			got[c.Errno] += n
		}
	}
	if !maps.Equal(got, want) {
		t.Errorf("bind failures counted %v, the calls returned %v (backend %s)", got, want, tr.Backend())
	}
	if st := snap.Procs[pid]; st.BindsOther != others || st.BindsOK != 6 {
		t.Errorf("binds ok %d other %d, want 6 ok (the listener, 4 cases, 1 first bind) and %d other", st.BindsOK, st.BindsOther, others)
	}
}

func dropCapability(c uintptr) error {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return err
	}
	data[c/32].Effective &^= 1 << (c % 32)
	return unix.Capset(&hdr, &data[0])
}

// The cgroup backend keeps one entry per socket with a call in flight (or a
// port-0 mark): once the sockets are closed, or listen, nothing is left.
func TestCgroupLeavesNoPendingEntries(t *testing.T) {
	tr := start(t)
	if tr.Backend() != Cgroup {
		t.Skipf("backend %s keeps no pending calls (PORTSLEUTH_TEST_BACKEND=cgroup runs this)", tr.Backend())
	}
	var keep []int
	inNetns(t, func() error {
		l, err := holdPort(lo8080)
		if err != nil {
			return err
		}
		keep = append(keep, l)
		any0 := &unix.SockaddrInet4{}
		for i := 0; i < 20; i++ {
			// bind(0)+connect, closed.
			s, _ := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
			if err := unix.Bind(s, any0); err != nil {
				return err
			}
			if err := unix.Connect(s, lo8080); err != nil {
				return err
			}
			a, _, err := unix.Accept(l)
			if err != nil {
				return err
			}
			unix.Close(a)
			unix.Close(s)
			// A failed bind, closed.
			s, _ = unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
			if err := unix.Bind(s, lo8080); !errors.Is(err, unix.EADDRINUSE) {
				return fmt.Errorf("bind of a held port: %v", err)
			}
			unix.Close(s)
			// bind(0)+listen, kept open.
			s, _ = unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
			if err := unix.Bind(s, any0); err != nil {
				return err
			}
			if err := unix.Listen(s, 1); err != nil {
				return err
			}
			keep = append(keep, s)
		}
		return nil
	})
	defer func() {
		for _, fd := range keep {
			unix.Close(fd)
		}
	}()
	var key uint64
	var p gen.PortsleuthPending
	left := 0
	for it := tr.maps.PendingCalls.Iterate(); it.Next(&key, &p); {
		if p.Id>>32 == uint64(os.Getpid()) {
			left++
		}
	}
	if left != 0 {
		t.Errorf("%d pending entries of this process left", left)
	}
	var c gen.PortsleuthConn
	for it := tr.maps.Conns.Iterate(); it.Next(&key, &c); {
		if c.Id>>32 == uint64(os.Getpid()) {
			t.Errorf("connect of socket %#x still followed: %+v", key, c)
		}
	}
	snap, err := tr.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	st := snap.Procs[mine(snap)]
	if st.BindsFailed != 20 || st.Port0BindsOK != 40 || st.Port0BindConnects != 20 || st.ConnectsOK != 20 {
		t.Errorf("counts %+v: want 20 failed binds, 40 port-0 binds, 20 of them connected, 20 connects ok", st)
	}
}

// A failed bind whose socket then does nothing (kept open, never bound again)
// is decided by the kernel's own sweep, with no help from Go: no Flush or
// Settle here, only reads of the counters.
func TestCgroupKernelSweepsPendingBinds(t *testing.T) {
	tr := start(t)
	if tr.Backend() != Cgroup {
		t.Skipf("backend %s sees bind results (PORTSLEUTH_TEST_BACKEND=cgroup runs this)", tr.Backend())
	}
	var keep []int
	defer func() {
		for _, fd := range keep {
			unix.Close(fd)
		}
	}()
	const failing = 3
	inNetns(t, func() error {
		l, err := holdPort(lo8080)
		if err != nil {
			return err
		}
		keep = append(keep, l)
		for i := 0; i < failing; i++ {
			s, _ := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
			keep = append(keep, s)
			if err := unix.Bind(s, lo8080); !errors.Is(err, unix.EADDRINUSE) {
				return fmt.Errorf("bind of a held port: %v", err)
			}
		}
		return nil
	})
	var st event.ProcStats
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		snap, err := tr.Snapshot()
		if err != nil {
			t.Fatal(err)
		}
		if st = snap.Procs[mine(snap)]; st.BindsFailed == failing {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if st.BindsFailed != failing || st.BindsOK != 1 {
		t.Fatalf("counts %+v: want %d failed binds decided by the kernel's sweep, 1 ok", st, failing)
	}
	var key uint64
	var p gen.PortsleuthPending
	for it := tr.maps.PendingCalls.Iterate(); it.Next(&key, &p); {
		if p.Id>>32 == uint64(os.Getpid()) {
			t.Errorf("a bind of this process is still pending: %+v", p)
		}
	}
}

// mine is this process's key in a snapshot: its pid and the start time the
// kernel recorded.
func mine(s event.Snapshot) event.ProcKey {
	pid := uint32(os.Getpid())
	for k := range s.Failures {
		if k.PID == pid {
			return k
		}
	}
	for k := range s.Procs {
		if k.PID == pid {
			return k
		}
	}
	return event.ProcKey{PID: pid}
}

// A long-running agent sees pids come back: a record of a process that had
// the pid before is another process's, and stays apart from this one.
func TestReusedPidIsAnotherProcess(t *testing.T) {
	tr := start(t)
	prev := gen.PortsleuthPsProcKey{Pid: uint32(os.Getpid()), StartNs: 1}
	stale := gen.PortsleuthPsProcMeta{Flags: uint32(gen.PortsleuthPsMetaFlagPS_META_FILLED)}
	for i, c := range []byte("previous") {
		stale.Comm[i] = int8(c)
	}
	if err := tr.maps.ProcMeta.Put(prev, &stale); err != nil {
		t.Fatal(err)
	}
	if err := tr.maps.FailCounts.Put(gen.PortsleuthPsFailKey{Pid: prev.Pid, StartNs: 1, Err: int32(unix.EADDRINUSE),
		Op: uint8(gen.PortsleuthPsOpPS_OP_BIND), Proto: unix.IPPROTO_TCP, Family: unix.AF_INET}, uint64(7)); err != nil {
		t.Fatal(err)
	}
	inNetns(t, func() error {
		if _, err := holdPort(lo8080); err != nil {
			return err
		}
		s, _ := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
		defer unix.Close(s)
		return ignore(unix.Bind(s, lo8080), unix.EADDRINUSE)
	})
	tr.Flush()
	snap, err := tr.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var me event.ProcKey
	for k := range snap.Failures {
		if k.PID == prev.Pid && k.Start != 1 {
			me = k
		}
	}
	if me.Start == 0 {
		t.Fatalf("no failure of this process apart from the pid's previous owner: %v", snap.Failures)
	}
	if m := snap.Meta[me]; m.Comm == "previous" || m.Comm == "" {
		t.Errorf("meta of this process: %+v; want this process, not the pid's previous owner", m)
	}
	var mineN, prevN uint64
	for _, n := range snap.Failures[me] {
		mineN += n
	}
	for _, n := range snap.Failures[event.ProcKey{PID: prev.Pid, Start: 1}] {
		prevN += n
	}
	if mineN != 1 || prevN != 7 {
		t.Errorf("failures: this process %d, the previous owner %d; want 1 and 7, kept apart", mineN, prevN)
	}
	if snap.Meta[event.ProcKey{PID: prev.Pid, Start: 1}].Comm != "previous" {
		t.Errorf("the previous owner's record was overwritten: %+v", snap.Meta)
	}
}

// Past the failure table's bound nothing is lost: a failure that finds the
// table full is counted by class alone. The table is shrunk to 64 entries
// here; 200 processes fail once each, in a class no other test makes, so
// the processes' counts plus the class-only count must be exactly 200
// whatever else fails on the host meanwhile.
func TestFailuresPastTheTableAreCountedByClass(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: loads BPF programs and forks into a network namespace")
	}
	b, err := ParseBackend(cmp.Or(os.Getenv("PORTSLEUTH_TEST_BACKEND"), "auto"))
	if err != nil {
		t.Fatal(err)
	}
	const table, procs = 64, 200
	tr, err := Start(Options{Backend: b, FailEntries: table})
	if err != nil {
		t.Fatalf("starting the tracer: %v", err)
	}
	defer tr.Close()
	var failed int
	inNetns(t, func() error {
		var err error
		failed, err = scenario.ForkUDP6Failures(procs)
		return err
	})
	if failed != procs {
		t.Fatalf("%d of %d children failed EADDRNOTAVAIL as planned", failed, procs)
	}
	tr.Flush()
	snap, err := tr.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	class := event.Class{Op: event.Bind, Proto: "udp", Family: "ipv6", Errno: unix.EADDRNOTAVAIL, Port0: true}
	var attributed, entries uint64
	for _, classes := range snap.Failures {
		entries += uint64(len(classes))
		attributed += classes[class]
	}
	unattributed := snap.Unattributed[class]
	if attributed+unattributed != procs {
		var bindsFailed uint64
		for _, st := range snap.Procs {
			bindsFailed += st.BindsFailed
		}
		events := 0
		for {
			tr.SetDeadline(time.Now())
			if _, err := tr.Read(); err != nil {
				break
			}
			events++
		}
		t.Errorf("%d failures counted for processes and %d by class alone, want %d in all (by class alone: %v; lost %d; binds failed %d; events %d)",
			attributed, unattributed, procs, snap.Unattributed, snap.Lost, bindsFailed, events)
	}
	if unattributed == 0 || entries > table {
		t.Errorf("%d table entries, %d failures by class alone: the %d-entry table was never full", entries, unattributed, table)
	}
}

// ps_sweep, run the way Go runs it (BPF_PROG_TEST_RUN): it ages a pending
// bind started at or before the cutoff for the kernel's next sweep, and
// leaves a later one alone. The entries are fake sockets of this process,
// stamped now so that the kernel's own sweep (which waits a second) does
// not take them before the test deletes them.
func TestSweepProgramAgesOnlyWhatIsOld(t *testing.T) {
	tr := start(t)
	if tr.Backend() != Cgroup {
		t.Skipf("backend %s keeps no pending calls (PORTSLEUTH_TEST_BACKEND=cgroup runs this)", tr.Backend())
	}
	prog := tr.program("ps_sweep")
	now := coarseNow()
	old, young := uint64(0xffff_dead_0000_0010), uint64(0xffff_dead_0000_0020)
	for k, ts := range map[uint64]uint64{old: now, young: now + uint64(time.Hour)} {
		p := gen.PortsleuthPending{Ts: ts, Id: uint64(os.Getpid()) << 32}
		if err := tr.maps.PendingCalls.Put(k, p); err != nil {
			t.Fatal(err)
		}
		defer tr.maps.PendingCalls.Delete(k)
	}
	run := func(key, cutoff uint64) uint32 {
		ret, err := prog.Run(&ebpf.RunOptions{Context: []uint64{key, cutoff}})
		if err != nil {
			t.Fatalf("test run of ps_sweep: %v", err)
		}
		return ret
	}
	if ret := run(young, now+1); ret != 0 {
		t.Errorf("a bind started after the cutoff was aged (returned %d)", ret)
	}
	if ret := run(old, now+1); ret != 1 {
		t.Errorf("a bind started before the cutoff was not aged (returned %d)", ret)
	}
	if ret := run(0x1234, now+1); ret != 0 {
		t.Errorf("a socket with nothing pending was aged (returned %d)", ret)
	}
	var p gen.PortsleuthPending
	if err := tr.maps.PendingCalls.Lookup(old, &p); err == nil && p.Ts != 0 {
		t.Errorf("the aged bind still has ts %d, want 0", p.Ts)
	}
	if err := tr.maps.PendingCalls.Lookup(young, &p); err != nil || p.Ts != now+uint64(time.Hour) {
		t.Errorf("the young bind changed: %+v, %v", p, err)
	}
}
