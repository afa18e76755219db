package probe

import (
	"cmp"
	"errors"
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/portsleuth/portsleuth/internal/event"
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
	pid := uint32(os.Getpid())
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
		s, _ := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
		return ignore(unix.Bind(s, &unix.SockaddrInet4{Addr: [4]byte{192, 0, 2, 1}}), unix.EADDRNOTAVAIL)
	})
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
	for _, id := range ids {
		if p, err := ebpf.NewProgramFromID(id); err == nil {
			p.Close()
			t.Errorf("program %d still loaded after Close", id)
		}
	}
}
