package procinfo

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Inodes maps socket inodes to the process that has them open.
type Inodes map[uint64]uint32

// Comm names a pid.
func (Inodes) Comm(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return strings.TrimSpace(string(b))
}

// SocketInodes reads every process's fds once: one pass for all namespaces.
func SocketInodes() Inodes {
	m := Inodes{}
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		pid, err := strconv.ParseUint(p.Name(), 10, 32)
		if err != nil {
			continue
		}
		dir := "/proc/" + p.Name() + "/fd/"
		fds, _ := os.ReadDir(dir)
		for _, fd := range fds {
			link, err := os.Readlink(dir + fd.Name())
			if err != nil || !strings.HasPrefix(link, "socket:[") {
				continue
			}
			if ino, err := strconv.ParseUint(strings.TrimSuffix(link[len("socket:["):], "]"), 10, 64); err == nil {
				m[ino] = uint32(pid)
			}
		}
	}
	return m
}
