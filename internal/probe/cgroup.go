package probe

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// cgroupMountDir is where portsleuth mounts cgroup2 when the host has none.
const cgroupMountDir = "/run/portsleuth/cgroup2"

// cgroup2Root finds the cgroup v2 hierarchy's root, mounting it when no
// cgroup2 file system is mounted (minimal hosts, the test VMs). Attached
// there, the sock_addr hooks run for every process of this cgroup namespace.
func cgroup2Root() (string, error) {
	root, err := findCgroup2("/proc/self/mountinfo")
	if err != nil || root != "" {
		return root, err
	}
	if err := os.MkdirAll(cgroupMountDir, 0o755); err != nil {
		return "", fmt.Errorf("no cgroup2 file system is mounted and creating %s failed: %w", cgroupMountDir, err)
	}
	if err := unix.Mount("cgroup2", cgroupMountDir, "cgroup2", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		if errors.Is(err, unix.EPERM) {
			return "", fmt.Errorf("no cgroup2 file system is mounted and mounting one at %s needs CAP_SYS_ADMIN: %w", cgroupMountDir, err)
		}
		return "", fmt.Errorf("no cgroup2 file system is mounted and mounting one at %s failed: %w", cgroupMountDir, err)
	}
	return cgroupMountDir, nil
}

// FindCgroup2 says where the cgroup v2 root is mounted, "" if nowhere.
func FindCgroup2() (string, error) { return findCgroup2("/proc/self/mountinfo") }

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
