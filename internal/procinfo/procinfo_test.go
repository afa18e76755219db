package procinfo

import (
	"os"
	"strings"
	"testing"
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
}
