package procinfo

import (
	"bufio"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

const id = "4e3f1c5b2a8d9e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7081"

func TestContainerID(t *testing.T) {
	for path, want := range map[string]string{
		"/system.slice/docker-" + id + ".scope":                                                        id,
		"/kubepods.slice/kubepods-burstable.slice/kubepods-pod1.slice/cri-containerd-" + id + ".scope": id,
		"/docker/" + id: id,
		"/machine.slice/libpod-" + id + ".scope/container": id,
		"/user.slice/user-0.slice/session-1.scope":         "",
		"/": "",
	} {
		if got := ContainerID(path); got != want {
			t.Errorf("ContainerID(%q) = %q, want %q", path, got, want)
		}
	}
}

func TestCgroupPath(t *testing.T) {
	hybrid := "12:pids:/user.slice\n1:name=systemd:/user.slice/session-3.scope\n0::/user.slice/session-3.scope\n"
	if got := CgroupPath(strings.NewReader(hybrid)); got != "/user.slice/session-3.scope" {
		t.Errorf("hybrid: got %q", got)
	}
	v1 := "5:cpu:/a\n1:name=systemd:/b\n"
	if got := CgroupPath(strings.NewReader(v1)); got != "/b" {
		t.Errorf("v1: got %q", got)
	}
}

func TestLookupSelf(t *testing.T) {
	info, err := Lookup(uint32(os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	if info.Comm == "" || !strings.Contains(info.Cmdline, "procinfo") {
		t.Errorf("Lookup(self) = %+v", info)
	}
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/ns/net", &st); err != nil {
		t.Fatal(err)
	}
	if info.Netns != st.Ino || info.PPID != uint32(os.Getppid()) {
		t.Errorf("Lookup(self): netns %d ppid %d, want %d and %d", info.Netns, info.PPID, st.Ino, os.Getppid())
	}
}

// The cgroup found by id is the one /proc names for this process.
func TestCgroupPathByID(t *testing.T) {
	root, _ := Cgroup2Mount()
	if root == "" {
		t.Skip("no cgroup v2 hierarchy mounted")
	}
	f, err := os.Open("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var v2 string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "0::"); ok {
			v2 = rest
		}
	}
	if v2 == "" {
		t.Skip("this process is in no cgroup v2")
	}
	var st unix.Stat_t
	if err := unix.Stat(root+v2, &st); err != nil {
		t.Skipf("cgroup %s not visible under %s: %v", v2, root, err)
	}
	if got := CgroupPathByID(st.Ino); got != v2 {
		t.Errorf("CgroupPathByID(%d) = %q, want %q", st.Ino, got, v2)
	}
}
