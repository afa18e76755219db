package probe

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/portsleuth/portsleuth/internal/procinfo"
)

// cgroupMountDir is where portsleuth mounts cgroup2 when the host has none.
const cgroupMountDir = "/run/portsleuth/cgroup2"

// cgroup2Root finds the cgroup v2 hierarchy's root, mounting it when no
// cgroup2 file system is mounted (minimal hosts, the test VMs). Attached
// there, the sock_addr hooks run for every process of this cgroup namespace.
// The mount it made, if any, is returned for Close to undo.
func cgroup2Root() (string, *ownMount, error) {
	root, err := procinfo.Cgroup2Mount()
	if err != nil || root != "" {
		return root, nil, err
	}
	created, err := mkdirAll(cgroupMountDir)
	if err != nil {
		return "", nil, fmt.Errorf("no cgroup2 file system is mounted and creating %s failed: %w", cgroupMountDir, err)
	}
	m, err := mountOwn("cgroup2", cgroupMountDir, "cgroup2", created)
	if err != nil {
		removeDirs(created)
		if errors.Is(err, unix.EPERM) {
			return "", nil, fmt.Errorf("no cgroup2 file system is mounted and mounting one at %s needs CAP_SYS_ADMIN: %w", cgroupMountDir, err)
		}
		return "", nil, fmt.Errorf("no cgroup2 file system is mounted and mounting one at %s failed: %w", cgroupMountDir, err)
	}
	return cgroupMountDir, m, nil
}

// mkdirAll is os.MkdirAll that returns the directories it created, deepest
// first, so that only those are removed again.
func mkdirAll(dir string) ([]string, error) {
	var missing []string
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Lstat(d); !errors.Is(err, os.ErrNotExist) || d == filepath.Dir(d) {
			break
		}
		missing = append(missing, d)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	return missing, nil
}

func removeDirs(dirs []string) error {
	var errs []error
	for _, d := range dirs {
		if err := os.Remove(d); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("removing %s: %w", d, err))
		}
	}
	return errors.Join(errs...)
}

// ownMount is a file system portsleuth mounted itself, and the directories
// it created for it: what Close undoes, and nothing else.
type ownMount struct {
	dir     string
	id      uint64 // the mount's id; 0 when the kernel can't tell (before 5.8)
	created []string
	done    bool
}

// mountOwn mounts fstype at dir and remembers which mount it made.
func mountOwn(source, dir, fstype string, created []string) (*ownMount, error) {
	if err := unix.Mount(source, dir, fstype, unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return nil, err
	}
	id, _ := mountID(dir)
	return &ownMount{dir: dir, id: id, created: created}, nil
}

// release unmounts the mount and removes the directories made for it. A
// mount that is no longer the one portsleuth made is left alone: another
// mount covering it, or one that took its place after someone else
// unmounted ours.
func (m *ownMount) release() error {
	if m == nil || m.done {
		return nil
	}
	m.done = true
	id, err := mountID(m.dir)
	if err != nil {
		return fmt.Errorf("checking the mount at %s: %w", m.dir, err)
	}
	switch {
	case m.id == 0 || id == m.id:
		if err := unmount(m.dir); err != nil {
			return err
		}
	case isMountPoint(m.dir):
		return nil
	}
	return removeDirs(m.created)
}

func unmount(dir string) error {
	err := unix.Unmount(dir, unix.UMOUNT_NOFOLLOW)
	if errors.Is(err, unix.EBUSY) {
		// Something still holds a file below it: take it out of the tree
		// now; the kernel frees it when the last user goes.
		err = unix.Unmount(dir, unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW)
	}
	if err != nil {
		return fmt.Errorf("unmounting %s: %w", dir, err)
	}
	return nil
}

// isMountPoint says whether a mount sits at dir.
func isMountPoint(dir string) bool {
	id, err := mountID(dir)
	parent, perr := mountID(filepath.Dir(dir))
	return err == nil && perr == nil && id != parent
}

// mountID is the id of the mount dir resolves to (the top one when stacked).
func mountID(dir string) (uint64, error) {
	var stx unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, dir, unix.AT_SYMLINK_NOFOLLOW|unix.AT_STATX_DONT_SYNC, unix.STATX_MNT_ID, &stx); err != nil {
		return 0, err
	}
	if stx.Mask&unix.STATX_MNT_ID == 0 {
		return 0, nil
	}
	return stx.Mnt_id, nil
}
