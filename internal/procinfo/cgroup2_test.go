package procinfo

import (
	"os"
	"path/filepath"
	"testing"
)

func TestCgroup2Mount(t *testing.T) {
	for _, c := range []struct{ name, mountinfo, want string }{
		{"unified", "30 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n", "/sys/fs/cgroup"},
		{"hybrid", "25 23 0:22 / /sys/fs/cgroup ro - tmpfs tmpfs ro\n" +
			"26 25 0:23 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n" +
			"27 25 0:24 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n", "/sys/fs/cgroup/unified"},
		// A bind mount of a sub-cgroup is not the root: skip it.
		{"sub-cgroup only", "40 23 0:26 /system.slice /mnt/x rw - cgroup2 cgroup2 rw\n", ""},
		{"escaped", "30 23 0:26 / /run/my\\040cgroup rw - cgroup2 cgroup2 rw\n", "/run/my cgroup"},
		{"none", "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n", ""},
	} {
		path := filepath.Join(t.TempDir(), "mountinfo")
		if err := os.WriteFile(path, []byte(c.mountinfo), 0o644); err != nil {
			t.Fatal(err)
		}
		got, err := findCgroup2(path)
		if err != nil || got != c.want {
			t.Errorf("%s: got %q, %v; want %q", c.name, got, err, c.want)
		}
	}
}
