package procinfo

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/prometheus/procfs"
)

// The walks over every process go through prometheus/procfs: one reader of
// /proc for the socket owners, the namespaces `ports` scans and comm.

// PIDs lists the processes /proc shows now.
func PIDs() []int {
	procs, err := procfs.AllProcs()
	if err != nil {
		return nil
	}
	pids := make([]int, len(procs))
	for i, p := range procs {
		pids[i] = p.PID
	}
	return pids
}

// Comm names a live process, "" when it is gone.
func Comm(pid int) string {
	c, _ := readComm("/proc/" + strconv.Itoa(pid))
	return c
}

// readComm reads a process's name from its /proc directory: the one place
// comm is read, and the test of whether the process still exists.
func readComm(dir string) (string, error) {
	b, err := os.ReadFile(dir + "/comm")
	if err != nil {
		return "", fmt.Errorf("reading %s/comm: %w", dir, err)
	}
	return strings.TrimSpace(string(b)), nil
}

// Inodes maps socket inodes to the process that has them open.
type Inodes map[uint64]uint32

// Comm names a pid.
func (Inodes) Comm(pid int) string { return Comm(pid) }

// SocketInodes reads every process's fds once: one pass for all namespaces.
func SocketInodes() Inodes {
	m := Inodes{}
	eachSocket(func(pid int, ino uint64) bool {
		m[ino] = uint32(pid)
		return true
	})
	return m
}

// SocketOwner finds a process that has socket inode ino open. It returns pid
// 0 when none has (a TIME_WAIT socket, or gone).
func SocketOwner(ino uint64) (uint32, string) {
	owner := 0
	eachSocket(func(pid int, got uint64) bool {
		if got == ino {
			owner = pid
			return false
		}
		return true
	})
	if owner == 0 {
		return 0, ""
	}
	return uint32(owner), Comm(owner)
}

// eachSocket calls fn for every socket fd of every process until fn says stop.
func eachSocket(fn func(pid int, ino uint64) bool) {
	procs, err := procfs.AllProcs()
	if err != nil {
		return
	}
	for _, p := range procs {
		targets, err := p.FileDescriptorTargets()
		if err != nil {
			continue // gone, or not ours to read
		}
		for _, t := range targets {
			rest, ok := strings.CutPrefix(t, "socket:[")
			if !ok {
				continue
			}
			if ino, err := strconv.ParseUint(strings.TrimSuffix(rest, "]"), 10, 64); err == nil && !fn(p.PID, ino) {
				return
			}
		}
	}
}
