package procinfo

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Program is what makes runs of a process "the same program": 80 short-lived
// runs of one CLI share it while their pids all differ.
type Program struct {
	Exe    string // /proc/PID/exe target, without " (deleted)" so an upgraded binary stays one program
	Cgroup string
	Comm   string
}

// Key groups processes by executable and cgroup; a process whose executable
// cannot be read (a kernel thread) falls back to its comm.
func (p Program) Key() string {
	if p.Exe == "" {
		return "comm:" + p.Comm + "\x00" + p.Cgroup
	}
	return p.Exe + "\x00" + p.Cgroup
}

// ProgramOf reads the program a live process runs. Only a process that is
// gone is an error; an unreadable exe or cgroup stays "".
func ProgramOf(pid uint32) (Program, error) {
	dir := fmt.Sprintf("/proc/%d", pid)
	comm, err := readComm(dir)
	if err != nil {
		return Program{}, err
	}
	p := Program{Comm: comm, Cgroup: cgroupOf(pid)}
	if exe, err := os.Readlink(dir + "/exe"); err == nil {
		p.Exe = strings.TrimSuffix(exe, " (deleted)")
	}
	return p, nil
}

// cgroupOf is the cgroup path /proc names for pid, "" when unreadable.
func cgroupOf(pid uint32) string {
	f, err := os.Open(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return ""
	}
	defer f.Close()
	return CgroupPath(f)
}

// maxAncestors bounds the parent walk against a pid reused into a loop.
const maxAncestors = 64

// Master names the process that owns a prefork worker (nginx, apache,
// postgres, gunicorn): the topmost ancestor reached through parents with the
// same executable and cgroup, since killing a worker only gets it respawned.
// A process that is no worker is its own master, and so is one whose
// executable can't be read (gone, or guarded by ptrace access rules): then the
// error says why and the pid comes back unchanged.
func Master(pid uint32) (uint32, error) {
	if pid <= 1 {
		return pid, nil // init has no master, and its exe may be guarded
	}
	self, err := identityOf(pid)
	if err != nil {
		return pid, err
	}
	master := pid
	for range maxAncestors {
		ppid, err := parentOf(master)
		if err != nil || ppid <= 1 {
			break
		}
		parent, err := identityOf(ppid)
		if err != nil || parent != self {
			break
		}
		master = ppid
	}
	return master, nil
}

// procIdentity compares processes by executable file, not path: a path can
// differ across mount namespaces, the file cannot.
type procIdentity struct {
	dev, ino uint64
	cgroup   string
}

func identityOf(pid uint32) (procIdentity, error) {
	var st unix.Stat_t
	exe := fmt.Sprintf("/proc/%d/exe", pid)
	if err := unix.Stat(exe, &st); err != nil {
		return procIdentity{}, fmt.Errorf("reading %s: %w", exe, err)
	}
	return procIdentity{dev: st.Dev, ino: st.Ino, cgroup: cgroupOf(pid)}, nil
}

func parentOf(pid uint32) (uint32, error) {
	f, err := readStat(pid)
	if err != nil {
		return 0, err
	}
	return f.ppid, nil
}

// statFields are the parts of /proc/PID/stat we use.
type statFields struct {
	ppid       uint32
	startTicks uint64 // field 22: clock ticks since boot
}

func readStat(pid uint32) (statFields, error) {
	path := fmt.Sprintf("/proc/%d/stat", pid)
	b, err := os.ReadFile(path)
	if err != nil {
		return statFields{}, fmt.Errorf("reading %s: %w", path, err)
	}
	f, err := parseStat(b)
	if err != nil {
		return statFields{}, fmt.Errorf("parsing %s: %w", path, err)
	}
	return f, nil
}

// parseStat parses /proc/PID/stat. The comm (field 2) may hold spaces and
// parentheses, so fields are counted from its last ')'.
func parseStat(b []byte) (statFields, error) {
	end := bytes.LastIndexByte(b, ')')
	if end < 0 {
		return statFields{}, errors.New("no comm field")
	}
	// After the comm: field 3 (state) is rest[0], field N is rest[N-3].
	rest := strings.Fields(string(b[end+1:]))
	if len(rest) < 22-3+1 {
		return statFields{}, fmt.Errorf("%d fields after comm, want at least 20", len(rest))
	}
	ppid, err := strconv.ParseUint(rest[4-3], 10, 32)
	if err != nil {
		return statFields{}, fmt.Errorf("ppid: %w", err)
	}
	start, err := strconv.ParseUint(rest[22-3], 10, 64)
	if err != nil {
		return statFields{}, fmt.Errorf("start time: %w", err)
	}
	return statFields{ppid: uint32(ppid), startTicks: start}, nil
}

// StartTime is when pid started, in nanoseconds on CLOCK_MONOTONIC: the clock
// of the kernel's task->start_time, which BPF reads. /proc gives it only in
// clock ticks (10 ms at USER_HZ=100), and on CLOCK_BOOTTIME (task->
// start_boottime), which runs ahead of CLOCK_MONOTONIC by the time the host
// spent suspended; that offset is taken away as it is now, so a process
// started before a suspend comes out late by that suspend. Compare with a BPF
// start time through SameStart, never with ==.
func StartTime(pid uint32) (uint64, error) {
	f, err := readStat(pid)
	if err != nil {
		return 0, err
	}
	ns := f.startTicks * (1e9 / clockTicks)
	suspended, err := suspendedNs()
	if err != nil {
		return 0, err
	}
	if ns < suspended {
		return 0, nil
	}
	return ns - suspended, nil
}

// SameStart says whether a task->start_time read by BPF (bpfNs) is the start
// StartTime reported (procNs): /proc truncates to a clock tick, so bpfNs lies
// in [procNs, procNs+tick), give or take the microseconds between the two
// clock reads that measure the suspend offset.
func SameStart(bpfNs, procNs uint64) bool {
	const slack = uint64(1e6) // 1 ms: well above the clock-read jitter, well below a tick
	tick := uint64(1e9 / clockTicks)
	return bpfNs+slack >= procNs && bpfNs < procNs+tick+slack
}

// suspendedNs is CLOCK_BOOTTIME - CLOCK_MONOTONIC: the time spent suspended.
// The boot clock is read between two monotonic reads and set against their
// midpoint, and of a few tries the one with the shortest gap counts: a task
// preempted between two reads (a loaded VM) would otherwise add the pause to
// the offset, and a live process would look started earlier than BPF says:
// not itself, to SameStart.
func suspendedNs() (uint64, error) {
	var best, bestGap int64 = 0, -1
	for try := 0; try < 4; try++ {
		var mono1, boot, mono2 unix.Timespec
		if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &mono1); err != nil {
			return 0, fmt.Errorf("reading CLOCK_MONOTONIC: %w", err)
		}
		if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &boot); err != nil {
			return 0, fmt.Errorf("reading CLOCK_BOOTTIME: %w", err)
		}
		if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &mono2); err != nil {
			return 0, fmt.Errorf("reading CLOCK_MONOTONIC: %w", err)
		}
		gap := mono2.Nano() - mono1.Nano()
		if bestGap < 0 || gap < bestGap {
			best, bestGap = boot.Nano()-(mono1.Nano()+gap/2), gap
		}
		if gap < 10_000 { // 10 µs: as good as it gets
			break
		}
	}
	if best < 0 {
		return 0, nil
	}
	return uint64(best), nil
}

// clockTicks is sysconf(_SC_CLK_TCK), the unit of /proc/PID/stat times,
// which the kernel hands every process in its auxiliary vector.
var clockTicks = readClockTicks()

func readClockTicks() uint64 {
	const atClkTck = 17 // AT_CLKTCK
	b, err := os.ReadFile("/proc/self/auxv")
	if err != nil {
		return 100 // USER_HZ on every architecture Linux runs BPF on
	}
	word := strconv.IntSize / 8 // auxv entries are pairs of native words
	read := func(b []byte) uint64 {
		if word == 4 {
			return uint64(binary.NativeEndian.Uint32(b))
		}
		return binary.NativeEndian.Uint64(b)
	}
	for ; len(b) >= 2*word; b = b[2*word:] {
		if read(b) == atClkTck {
			if v := read(b[word:]); v > 0 && v <= 1e9 {
				return v
			}
		}
	}
	return 100
}
