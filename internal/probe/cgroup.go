package probe

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/portsleuth/portsleuth/internal/procinfo"
)

// cgroupMountDir is where portsleuth mounts cgroup2 when the host has none.
const cgroupMountDir = "/run/portsleuth/cgroup2"

// cgroup2Root finds the cgroup v2 hierarchy's root, mounting it when no
// cgroup2 file system is mounted (minimal hosts, the test VMs). Attached
// there, the sock_addr hooks run for every process of this cgroup namespace.
func cgroup2Root() (string, error) {
	root, err := procinfo.Cgroup2Mount()
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
