// Package procinfo names a process from /proc: its command line, its cgroup
// and what that path says (container, pod, systemd unit), the program it runs,
// the master of a prefork worker, and when it started.
package procinfo

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// Info is what /proc says about a process.
type Info struct {
	Comm        string
	Cmdline     string
	Cgroup      string
	ContainerID string
	// Netns is the inode of its network namespace (what BPF reports), 0 if unreadable.
	Netns uint64
	// PPID is its parent's pid, 0 if unreadable: read while the process lives,
	// since a parent that exits hands its children to a reaper.
	PPID uint32
}

// Lookup reads /proc/PID; fields a vanished process can't give stay empty.
func Lookup(pid uint32) (Info, error) {
	var info Info
	dir := fmt.Sprintf("/proc/%d", pid)
	comm, err := readComm(dir)
	if err != nil {
		return info, err
	}
	info.Comm = comm
	if b, err := os.ReadFile(dir + "/cmdline"); err == nil {
		info.Cmdline = strings.TrimSpace(string(bytes.ReplaceAll(b, []byte{0}, []byte{' '})))
	}
	if f, err := os.Open(dir + "/cgroup"); err == nil {
		info.Cgroup = CgroupPath(f)
		f.Close()
	}
	info.ContainerID = ContainerID(info.Cgroup)
	var st unix.Stat_t
	if unix.Stat(dir+"/ns/net", &st) == nil {
		info.Netns = st.Ino
	}
	if f, err := readStat(pid); err == nil {
		info.PPID = f.ppid
	}
	return info, nil
}

// LiveCgroup is the cgroup path /proc gives process pid now; "" when it is
// gone, or, with start (ns since boot, as BPF reads it) not 0, when the pid
// now belongs to another process.
func LiveCgroup(pid uint32, start uint64) string {
	f, err := os.Open(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return ""
	}
	defer f.Close()
	path := CgroupPath(f)
	if st, err := StartTime(pid); err != nil || (start != 0 && !SameStart(start, st)) {
		return "" // gone or reused while we read
	}
	return path
}

// CgroupPath picks the process's cgroup path from /proc/PID/cgroup content:
// the unified (v2) hierarchy, else the systemd one, else the first.
func CgroupPath(r interface{ Read([]byte) (int, error) }) string {
	var first, systemd string
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		id, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		ctrl, path, ok := strings.Cut(rest, ":")
		if !ok {
			continue
		}
		if id == "0" && ctrl == "" {
			return path
		}
		if ctrl == "name=systemd" {
			systemd = path
		}
		if first == "" {
			first = path
		}
	}
	if systemd != "" {
		return systemd
	}
	return first
}

// ContainerID extracts a container id from a cgroup path, or "".
func ContainerID(cgroup string) string { return Identity(cgroup).ContainerID }

// Cgroup2Mount says where the root of the unified hierarchy is mounted
// (/sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid hosts), "" if nowhere.
func Cgroup2Mount() (string, error) { return findCgroup2("/proc/self/mountinfo") }

// findCgroup2 returns the mount point of the cgroup2 root in a mountinfo
// file, or "" when none is mounted.
func findCgroup2(mountinfo string) (string, error) {
	f, err := os.Open(mountinfo)
	if err != nil {
		return "", fmt.Errorf("reading mounts: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id parent major:minor root mountpoint options... - fstype source superoptions
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		fields, fs := strings.Fields(pre), strings.Fields(post)
		if len(fields) < 5 || len(fs) < 1 || fs[0] != "cgroup2" || fields[3] != "/" {
			continue
		}
		return unescapeMount(fields[4]), nil
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("reading mounts: %w", err)
	}
	return "", nil
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v byte
			if _, err := fmt.Sscanf(s[i+1:i+4], "%03o", &v); err == nil {
				b.WriteByte(v)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
