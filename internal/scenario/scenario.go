// Package scenario reproduces the incidents portsleuth exists for with real
// sockets inside a throwaway network namespace: a 64-port ephemeral range
// exhausts in milliseconds, and nothing leaves loopback. Tests (and the VM
// harness) run a scenario as a child process and compare what portsleuth
// reports with what the scenario itself observed.
package scenario

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"runtime"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// Env names the environment variable that makes a test binary run a scenario
// instead of its tests.
const Env = "PORTSLEUTH_SCENARIO"

// HoldEnv, when set, makes a scenario keep its sockets after printing its
// result, until its stdin closes; Result.TID names the thread whose network
// namespace holds them.
const HoldEnv = "PORTSLEUTH_SCENARIO_HOLD"

// WaitEnv, when set, makes a scenario wait for a line on stdin before it starts.
const WaitEnv = "PORTSLEUTH_SCENARIO_WAIT"

// PortRange is the ephemeral range every scenario namespace uses.
var PortRange = [2]int{40000, 40063}

// RangeSize is the number of ports in PortRange.
const RangeSize = 64

// Listener ports lie outside PortRange so they never take from the pools.
const (
	ListenPort  = 8080
	ListenPort2 = 8081
)

// Result is what a scenario observed, printed as one JSON line on stdout.
type Result struct {
	Scenario     string `json:"scenario"`
	PID          int    `json:"pid"`
	TID          int    `json:"tid"` // the thread in the scenario's namespace
	BindsOK      int    `json:"binds_ok"`
	BindsFailed  int    `json:"binds_failed"`
	ConnectsOK   int    `json:"connects_ok"`
	ConnectsFail int    `json:"connects_failed"`
	// ConnectsOther counts connects that failed with errors that are not address errors.
	ConnectsOther int            `json:"connects_other"`
	Errors        map[string]int `json:"errors"`
	// Child is the pid of a helper process the scenario ran, if any.
	Child int `json:"child,omitempty"`
	// Extra holds scenario-specific counts.
	Extra map[string]int `json:"extra,omitempty"`
}

// Scenarios lists every scenario by name.
var Scenarios = map[string]func(*Result) error{
	"bind-any-before-connect": bindAnyBeforeConnect,
	"bind-ip-before-connect":  bindIPBeforeConnect,
	"timewait-exhaustion":     timeWaitExhaustion,
	"port-in-use":             portInUse,
	"bind-no-port-fix":        bindNoPortFix,
	"busy-ok":                 busyOK,
	"culprit-beside-busy":     culpritBesideBusy,
	"tuple-conflict":          tupleConflict,
	"ipv6-and-udp":            ipv6AndUDP,
	"bind-storm":              bindStorm,
	"io-uring":                ioUring,
	"listen":                  listenFailures,
	"hold-pools":              holdPools,
	"many-sockets":            manySockets,
	"fan-out":                 fanOut,
	"pid-reuse":               pidReuse,
	"starve":                  starve,
	"crash-loop":              crashLoop,
	"closer-exhaustion":       closerExhaustion,
	"restarted-connect":       restartedConnect,
}

// Names returns the scenario names, sorted.
func Names() []string {
	names := make([]string, 0, len(Scenarios))
	for n := range Scenarios {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Main runs the scenario named by $PORTSLEUTH_SCENARIO and returns the exit code.
func Main(stdout, stderr io.Writer) int {
	name := os.Getenv(Env)
	fn, ok := Scenarios[name]
	if !ok {
		fmt.Fprintf(stderr, "scenario: unknown scenario %q (have %s)\n", name, strings.Join(Names(), ", "))
		return 2
	}
	// Every socket call happens on this thread, which alone enters the new namespace.
	runtime.LockOSThread()
	res := &Result{Scenario: name, PID: os.Getpid(), Errors: map[string]int{}}
	if err := Isolate(); err != nil {
		fmt.Fprintf(stderr, "scenario %s: %v\n", name, err)
		return 1
	}
	if os.Getenv(WaitEnv) != "" {
		// The caller attaches a tracer to this pid, then releases us.
		if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
			fmt.Fprintf(stderr, "scenario %s: waiting for the go line: %v\n", name, err)
			return 1
		}
	}
	if err := fn(res); err != nil {
		fmt.Fprintf(stderr, "scenario %s: %v\n", name, err)
		return 1
	}
	res.TID = unix.Gettid()
	b, _ := json.Marshal(res)
	fmt.Fprintf(stdout, "%s\n", b)
	if os.Getenv(HoldEnv) != "" {
		_, _ = io.Copy(io.Discard, os.Stdin)
	}
	return 0
}

// Isolate moves the calling thread (lock it first) into a new network
// namespace with lo up and the tiny ephemeral range.
func Isolate() error {
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("unshare(CLONE_NEWNET) needs CAP_SYS_ADMIN: %w", err)
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket for ioctl: %w", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("reading lo flags: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("bringing lo up: %w", err)
	}
	return Sysctl("ip_local_port_range", fmt.Sprintf("%d %d", PortRange[0], PortRange[1]))
}

// Sysctl writes net.ipv4.NAME in the calling thread's network namespace.
func Sysctl(name, value string) error {
	if err := writeProc("/proc/sys/net/ipv4/"+name, value); err != nil {
		return fmt.Errorf("setting net.ipv4.%s=%s: %w", name, value, err)
	}
	return nil
}

func sockaddr(ip string, port int) unix.Sockaddr {
	a := netip.MustParseAddr(ip).As4()
	return &unix.SockaddrInet4{Addr: a, Port: port}
}

// bind and connect count every call the way portsleuth's kernel side does.
func (r *Result) bind(fd int, ip string, port int) error {
	return r.bindSA(fd, sockaddr(ip, port))
}

func (r *Result) connect(fd int, ip string, port int) error {
	err := unix.Connect(fd, sockaddr(ip, port))
	switch errnoOf(err) {
	case 0:
		r.ConnectsOK++
	case unix.EADDRNOTAVAIL, unix.EADDRINUSE, unix.EAGAIN, unix.EPERM:
		r.ConnectsFail++
		r.Errors[unix.ErrnoName(errnoOf(err))]++
	default:
		r.ConnectsOther++
	}
	return err
}

func errnoOf(err error) unix.Errno {
	var e unix.Errno
	if errors.As(err, &e) {
		return e
	}
	return 0
}

func (r *Result) listen(ip string, port int) (int, error) {
	fd, err := tcpSocket()
	if err != nil {
		return -1, err
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		return -1, err
	}
	if err := r.bind(fd, ip, port); err != nil {
		return -1, fmt.Errorf("binding listener %s:%d: %w", ip, port, err)
	}
	if err := unix.Listen(fd, 4096); err != nil {
		return -1, fmt.Errorf("listen: %w", err)
	}
	return fd, nil
}

// connectAccepted opens a counted connection from a new socket to
// 127.0.0.1:port and accepts it on the listener lfd.
func (r *Result) connectAccepted(lfd, port int) (client, server int, err error) {
	client, err = tcpSocket()
	if err != nil {
		return -1, -1, err
	}
	if err := r.connect(client, "127.0.0.1", port); err != nil {
		unix.Close(client)
		return -1, -1, err
	}
	server, _, err = unix.Accept4(lfd, unix.SOCK_CLOEXEC)
	if err != nil {
		unix.Close(client)
		return -1, -1, err
	}
	return client, server, nil
}

func tcpSocket() (int, error) {
	return unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
}

// writeProc writes a /proc/sys file, which exists: nothing is created.
func writeProc(path, value string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(value); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
