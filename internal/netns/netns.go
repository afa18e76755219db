// Package netns reads the port-allocation sysctls of a process's network
// namespace. They are per namespace, so a value read in ours can be wrong for
// a containerised culprit: the reading thread enters the target namespace.
package netns

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Sysctls are the values that decide where bind() and connect() find ports.
// A value of -1 means the kernel has no such sysctl.
type Sysctls struct {
	Netns     uint64 `json:"netns"`
	PortRange [2]int `json:"ip_local_port_range"`
	// ReservedPorts is nil when it could not be read (the namespace was gone).
	ReservedPorts *string `json:"ip_local_reserved_ports"`
	// Reserved is how many ports of PortRange ip_local_reserved_ports removes.
	Reserved      int `json:"reserved_in_range"`
	TCPTwReuse    int `json:"tcp_tw_reuse"`
	AutobindReuse int `json:"ip_autobind_reuse"`
	TCPTimestamps int `json:"tcp_timestamps"`
	NonlocalBind  int `json:"ip_nonlocal_bind"`
	MaxTWBuckets  int `json:"tcp_max_tw_buckets"`
	// Source says where the values come from: "procfs" (read in the namespace
	// by the agent) or "kernel" (read from struct net by BPF at the first failure).
	Source string `json:"source"`
	// Cookie is the namespace's cookie (0 when unknown): its inode number
	// (Netns) goes to the next namespace once it is destroyed, its cookie
	// never. A failure's event carries the same value.
	Cookie uint64 `json:"-"`
}

// CookieMismatch says whether a namespace read (cookie got) is another than
// the one a failure happened in (cookie want): one that took its inode
// number after it was destroyed. Without both cookies it can't tell, and
// says no.
func CookieMismatch(got, want uint64) bool {
	return got != 0 && want != 0 && got != want
}

// Ports is the number of ports the kernel may hand out from the range.
func (s Sysctls) Ports() int { return s.PortRange[1] - s.PortRange[0] + 1 - s.Reserved }

// InRange says whether port lies in the ephemeral range.
func (s Sysctls) InRange(port uint16) bool {
	return int(port) >= s.PortRange[0] && int(port) <= s.PortRange[1]
}

// Inode is the namespace inode of /proc/PID/ns/net (what BPF reports as netns).
func Inode(pid int) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &st); err != nil {
		return 0, fmt.Errorf("stat netns of pid %d: %w", pid, err)
	}
	return st.Ino, nil
}

// ReadTask reads the sysctls in the network namespace of thread tid of pid;
// threads of one process can live in different namespaces.
func ReadTask(pid, tid int) (Sysctls, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/task/%d/ns/net", pid, tid))
	if err != nil {
		return Sysctls{}, fmt.Errorf("opening netns of pid %d thread %d: %w", pid, tid, err)
	}
	defer f.Close()
	return ReadFD(int(f.Fd()))
}

// ReadFD reads the sysctls in the network namespace that fd refers to.
func ReadFD(fd int) (Sysctls, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return Sysctls{}, fmt.Errorf("stat netns: %w", err)
	}
	self, err := Inode(os.Getpid())
	if err != nil {
		return Sysctls{}, err
	}
	if st.Ino == self {
		s, err := read()
		s.Netns = st.Ino
		return s, err
	}

	var out Sysctls
	err = Do(fd, func() error {
		var rerr error
		out, rerr = read()
		return rerr
	})
	out.Netns = st.Ino
	return out, err
}

// Do runs fn on a locked OS thread inside the network namespace fd refers
// to, then goes back. A thread that can't go back stays locked and dies with
// its goroutine, so no other goroutine ever runs in the wrong namespace.
// fn runs without setns when the thread is in that namespace already: our
// own namespace can be read without CAP_SYS_ADMIN.
func Do(fd int, fn func() error) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			done <- fmt.Errorf("opening own netns: %w", err)
			return
		}
		defer orig.Close()
		if same(fd, int(orig.Fd())) {
			ferr := fn()
			runtime.UnlockOSThread()
			done <- ferr
			return
		}
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			done <- enterError(fd, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			done <- errors.Join(ferr, fmt.Errorf("returning to own netns: %w", err))
			return
		}
		runtime.UnlockOSThread()
		done <- ferr
	}()
	return <-done
}

// same says whether two namespace files are one namespace.
func same(a, b int) bool {
	var sa, sb unix.Stat_t
	return unix.Fstat(a, &sa) == nil && unix.Fstat(b, &sb) == nil && sa.Dev == sb.Dev && sa.Ino == sb.Ino
}

// ErrNotNetns is a path that is not a network namespace file.
var ErrNotNetns = errors.New("not a network namespace")

// EnterError is a refused setns into another network namespace.
type EnterError struct {
	Netns uint64
	Err   error
}

func (e *EnterError) Error() string {
	if errors.Is(e.Err, unix.EPERM) {
		// setns checks CAP_SYS_ADMIN in the namespace's user namespace and in ours.
		return fmt.Sprintf("entering network namespace %d needs CAP_SYS_ADMIN: %v", e.Netns, e.Err)
	}
	return fmt.Sprintf("entering network namespace %d: %v", e.Netns, e.Err)
}

func (e *EnterError) Unwrap() error { return e.Err }

func enterError(fd int, err error) error {
	var st unix.Stat_t
	unix.Fstat(fd, &st)
	return &EnterError{Netns: st.Ino, Err: err}
}

// Open opens a network namespace file (/proc/PID/ns/net, /run/netns/NAME)
// and checks that it is one: a path to anything else fails with
// ErrNotNetns. It opens with O_PATH first, so a FIFO or a device named by
// mistake is never opened for reading.
func Open(path string) (*os.File, error) {
	pfd, err := unix.Open(path, unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	defer unix.Close(pfd)
	var fs unix.Statfs_t
	if err := unix.Fstatfs(pfd, &fs); err != nil {
		return nil, &os.PathError{Op: "statfs", Path: path, Err: err}
	}
	if fs.Type != unix.NSFS_MAGIC {
		return nil, fmt.Errorf("%s: %w", path, ErrNotNetns)
	}
	// Reopening through the O_PATH descriptor opens the very namespace checked.
	f, err := os.Open(fmt.Sprintf("/proc/self/fd/%d", pfd))
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", path, err)
	}
	typ, err := unix.IoctlRetInt(int(f.Fd()), unix.NS_GET_NSTYPE)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("asking the kernel what namespace %s is: %w", path, err)
	}
	if typ != unix.CLONE_NEWNET {
		f.Close()
		return nil, fmt.Errorf("%s: %w (another kind of namespace)", path, ErrNotNetns)
	}
	return f, nil
}

func read() (Sysctls, error) {
	var s Sysctls
	text, err := sysctl("ip_local_port_range")
	if err != nil {
		return s, err
	}
	f := strings.Fields(text)
	if len(f) != 2 {
		return s, fmt.Errorf("parsing ip_local_port_range %q", text)
	}
	if s.PortRange[0], err = strconv.Atoi(f[0]); err == nil {
		s.PortRange[1], err = strconv.Atoi(f[1])
	}
	if err != nil {
		return s, fmt.Errorf("parsing ip_local_port_range %q: %w", text, err)
	}
	reserved, err := sysctl("ip_local_reserved_ports")
	if err != nil {
		return s, err
	}
	s.ReservedPorts = &reserved
	if s.Reserved, err = CountReserved(reserved, s.PortRange); err != nil {
		return s, err
	}
	s.Source = "procfs"
	s.Cookie = cookie()
	for _, v := range []struct {
		name string
		dst  *int
	}{
		{"tcp_tw_reuse", &s.TCPTwReuse},
		{"ip_autobind_reuse", &s.AutobindReuse},
		{"tcp_timestamps", &s.TCPTimestamps},
		{"ip_nonlocal_bind", &s.NonlocalBind},
		{"tcp_max_tw_buckets", &s.MaxTWBuckets},
	} {
		text, err := sysctl(v.name)
		if errors.Is(err, os.ErrNotExist) {
			*v.dst = -1
			continue
		}
		if err != nil {
			return s, err
		}
		if *v.dst, err = strconv.Atoi(text); err != nil {
			return s, fmt.Errorf("parsing %s %q: %w", v.name, text, err)
		}
	}
	return s, nil
}

// cookie is the cookie of the calling thread's network namespace, as a
// socket made in it reports it (SO_NETNS_COOKIE, Linux 5.14+); 0 when the
// kernel can't say.
func cookie() uint64 {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0
	}
	defer unix.Close(fd)
	c, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	if err != nil {
		return 0
	}
	return c
}

func sysctl(name string) (string, error) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/" + name)
	if err != nil {
		return "", fmt.Errorf("reading net.ipv4.%s: %w", name, err)
	}
	return strings.TrimSpace(string(b)), nil
}

// ReservedSet parses a "8080,9000-9010" list into the set of ports it names.
func ReservedSet(list string) (map[int]bool, error) {
	ranges, err := parseRanges(list)
	if err != nil {
		return nil, err
	}
	set := map[int]bool{}
	for _, r := range ranges {
		for p := r[0]; p <= r[1]; p++ {
			set[p] = true
		}
	}
	return set, nil
}

func parseRanges(list string) ([][2]int, error) {
	var out [][2]int
	for _, part := range strings.Split(list, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		b := a
		if err == nil && isRange {
			b, err = strconv.Atoi(hi)
		}
		if err != nil || b < a || b > 65535 {
			return nil, fmt.Errorf("parsing ip_local_reserved_ports entry %q", part)
		}
		out = append(out, [2]int{a, b})
	}
	return out, nil
}

// CountReserved counts the ports of a "8080,9000-9010" list inside rng.
func CountReserved(list string, rng [2]int) (int, error) {
	ranges, err := parseRanges(list)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, r := range ranges {
		a, b := max(r[0], rng[0]), min(r[1], rng[1])
		if b >= a {
			n += b - a + 1
		}
	}
	return n, nil
}
