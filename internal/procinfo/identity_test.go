package procinfo

import "testing"

const (
	podUIDDashes = "7c4a8d09-ca37-4f5b-9d8e-2b1c3a4d5e6f"
	podUIDUnders = "7c4a8d09_ca37_4f5b_9d8e_2b1c3a4d5e6f"
	// Static pods' UIDs are a manifest hash: 32 hex digits, no dashes.
	staticPodUID = "e3b0c44298fc1c149afbf4c8996fb924"
)

func TestIdentity(t *testing.T) {
	for _, c := range []struct {
		name, path string
		want       CgroupIdentity
	}{
		// docker
		{"docker cgroupfs", "/docker/" + id, CgroupIdentity{ContainerID: id, Runtime: "docker"}},
		{"docker systemd", "/system.slice/docker-" + id + ".scope", CgroupIdentity{ContainerID: id, Runtime: "docker"}},
		{"docker with its own systemd", "/system.slice/docker-" + id + ".scope/system.slice/nginx.service",
			CgroupIdentity{ContainerID: id, Unit: "nginx.service", Runtime: "docker"}},
		// containerd/CRI, systemd driver
		{"cri burstable", "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + podUIDUnders + ".slice/cri-containerd-" + id + ".scope",
			CgroupIdentity{ContainerID: id, PodUID: podUIDDashes, Runtime: "containerd"}},
		{"cri besteffort", "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + podUIDUnders + ".slice/cri-containerd-" + id + ".scope",
			CgroupIdentity{ContainerID: id, PodUID: podUIDDashes, Runtime: "containerd"}},
		{"cri guaranteed", "/kubepods.slice/kubepods-pod" + podUIDUnders + ".slice/cri-containerd-" + id + ".scope",
			CgroupIdentity{ContainerID: id, PodUID: podUIDDashes, Runtime: "containerd"}},
		{"cri static pod", "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + staticPodUID + ".slice/cri-containerd-" + id + ".scope",
			CgroupIdentity{ContainerID: id, PodUID: staticPodUID, Runtime: "containerd"}},
		{"kind node", "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod" + podUIDUnders + ".slice/cri-containerd-" + id + ".scope",
			CgroupIdentity{ContainerID: id, PodUID: podUIDDashes, Runtime: "containerd"}},
		{"pod slice, no container", "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + podUIDUnders + ".slice",
			CgroupIdentity{PodUID: podUIDDashes}},
		{"nerdctl", "/system.slice/nerdctl-" + id + ".scope", CgroupIdentity{ContainerID: id, Runtime: "containerd"}},
		// kubelet cgroupfs driver: the path does not name the runtime
		{"cgroupfs burstable", "/kubepods/burstable/pod" + podUIDDashes + "/" + id,
			CgroupIdentity{ContainerID: id, PodUID: podUIDDashes}},
		{"cgroupfs guaranteed", "/kubepods/pod" + podUIDDashes + "/" + id,
			CgroupIdentity{ContainerID: id, PodUID: podUIDDashes}},
		{"cgroupfs crio", "/kubepods/besteffort/pod" + podUIDDashes + "/crio-" + id,
			CgroupIdentity{ContainerID: id, PodUID: podUIDDashes, Runtime: "crio"}},
		{"pod-like dir outside kubepods", "/pod" + podUIDDashes, CgroupIdentity{}},
		// CRI-O
		{"crio", "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + podUIDUnders + ".slice/crio-" + id + ".scope",
			CgroupIdentity{ContainerID: id, PodUID: podUIDDashes, Runtime: "crio"}},
		{"crio conmon", "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + podUIDUnders + ".slice/crio-conmon-" + id + ".scope",
			CgroupIdentity{PodUID: podUIDDashes, Unit: "crio-conmon-" + id + ".scope", Runtime: "crio"}},
		// podman
		{"podman", "/machine.slice/libpod-" + id + ".scope", CgroupIdentity{ContainerID: id, Runtime: "podman"}},
		{"podman split", "/machine.slice/libpod-" + id + ".scope/container", CgroupIdentity{ContainerID: id, Runtime: "podman"}},
		{"podman rootless", "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-" + id + ".scope/container",
			CgroupIdentity{ContainerID: id, Runtime: "podman"}},
		{"podman conmon", "/machine.slice/libpod-conmon-" + id + ".scope",
			CgroupIdentity{Unit: "libpod-conmon-" + id + ".scope", Runtime: "podman"}},
		{"podman cgroupfs", "/libpod_parent/libpod-" + id, CgroupIdentity{ContainerID: id, Runtime: "podman"}},
		// systemd
		{"service", "/system.slice/nginx.service", CgroupIdentity{Unit: "nginx.service", Runtime: "systemd"}},
		{"delegated sub-cgroup", "/system.slice/containerd.service/worker", CgroupIdentity{Unit: "containerd.service", Runtime: "systemd"}},
		{"user service", "/user.slice/user-1000.slice/user@1000.service/app.slice/foo.service",
			CgroupIdentity{Unit: "foo.service", Runtime: "systemd"}},
		{"session", "/user.slice/user-1000.slice/session-3.scope", CgroupIdentity{Unit: "session-3.scope", Runtime: "systemd"}},
		{"init", "/init.scope", CgroupIdentity{Unit: "init.scope", Runtime: "systemd"}},
		// nothing to name
		{"root", "/", CgroupIdentity{}},
		{"empty", "", CgroupIdentity{}},
		{"plain slice", "/user.slice", CgroupIdentity{}},
		{"short hex", "/docker/abc123", CgroupIdentity{}},
		{"unknown runtime keeps its id", "/lxc.payload:" + id, CgroupIdentity{ContainerID: id}},
	} {
		if got := Identity(c.path); got != c.want {
			t.Errorf("%s: Identity(%q)\n got %+v\nwant %+v", c.name, c.path, got, c.want)
		}
	}
}
