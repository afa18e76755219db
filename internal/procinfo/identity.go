package procinfo

import (
	"regexp"
	"strings"
)

// CgroupIdentity is what a cgroup path says about who runs in it: the names a
// fleet pages on, where "pid 4368" means nothing.
type CgroupIdentity struct {
	ContainerID string // 64 hex digits; "" outside a container (and for conmon)
	PodUID      string // Kubernetes pod UID with dashes, as kubectl shows it
	// Unit is the innermost systemd service or scope ("nginx.service",
	// "session-3.scope"); inside a container only a unit of the container's
	// own systemd counts, since the container's scope is named by its id.
	Unit    string
	Runtime string // "docker", "containerd", "crio", "podman", "systemd" or ""
}

// containerScope names one runtime's container (or conmon) cgroup; the
// systemd-driver name ends in .scope, the cgroupfs-driver one does not.
type containerScope struct {
	re      *regexp.Regexp
	runtime string
	conmon  bool // the runtime's monitor for that container, not the container
}

var containerScopes = []containerScope{
	{regexp.MustCompile(`^docker-([0-9a-f]{64})\.scope$`), "docker", false},
	{regexp.MustCompile(`^cri-containerd-([0-9a-f]{64})\.scope$`), "containerd", false},
	{regexp.MustCompile(`^nerdctl-([0-9a-f]{64})\.scope$`), "containerd", false},
	{regexp.MustCompile(`^crio-conmon-([0-9a-f]{64})(?:\.scope)?$`), "crio", true},
	{regexp.MustCompile(`^crio-([0-9a-f]{64})(?:\.scope)?$`), "crio", false},
	{regexp.MustCompile(`^libpod-conmon-([0-9a-f]{64})(?:\.scope)?$`), "podman", true},
	{regexp.MustCompile(`^libpod-([0-9a-f]{64})(?:\.scope)?$`), "podman", false},
}

var (
	bareIDRe = regexp.MustCompile(`^[0-9a-f]{64}$`)
	// Any other "<something>-<id>.scope" or "<something>:<id>": layouts we have
	// no name for still give their id, as ContainerID always did.
	otherIDRe = regexp.MustCompile(`[\-:]([0-9a-f]{64})(?:\.scope)?$`)
	// kubelet's systemd driver: kubepods-burstable-pod<uid>.slice with the
	// UID's dashes turned into underscores; kind and others prefix it
	// (kubelet-kubepods-...). Guaranteed pods have no QoS part.
	podSliceRe = regexp.MustCompile(`^(?:[a-z0-9]+-)*kubepods(?:-(?:burstable|besteffort))?-pod([0-9a-f_]+)\.slice$`)
	// kubelet's cgroupfs driver: /kubepods/burstable/pod<uid>.
	podDirRe = regexp.MustCompile(`^pod([0-9a-f-]+)$`)
)

// Identity reads the container id, pod UID, systemd unit and runtime from a
// cgroup path (docker, containerd/CRI, CRI-O, podman and systemd layouts, with
// either cgroup driver). Fields the path does not carry stay "".
func Identity(cgroup string) CgroupIdentity {
	var id CgroupIdentity
	parts := strings.Split(strings.Trim(cgroup, "/"), "/")
	container := -1 // index of the innermost container cgroup
	for i, p := range parts {
		if uid := podUID(parts[:i], p); uid != "" {
			id.PodUID = uid
		}
		if cid, runtime, conmon, ok := containerOf(parts[:i], p); ok {
			id.Runtime = runtime
			id.ContainerID, container = cid, i
			if conmon {
				id.ContainerID, container = "", -1
			}
		}
	}
	// The unit inside a container's own systemd, else the innermost one.
	for i := len(parts) - 1; i > container; i-- {
		if strings.HasSuffix(parts[i], ".service") || strings.HasSuffix(parts[i], ".scope") {
			id.Unit = parts[i]
			break
		}
	}
	if id.Runtime == "" && id.ContainerID == "" && id.Unit != "" {
		id.Runtime = "systemd"
	}
	return id
}

// containerOf says whether cgroup directory name p (below parents) is a
// container's, or a runtime's conmon for one.
func containerOf(parents []string, p string) (id, runtime string, conmon, ok bool) {
	for _, s := range containerScopes {
		if m := s.re.FindStringSubmatch(p); m != nil {
			return m[1], s.runtime, s.conmon, true
		}
	}
	if bareIDRe.MatchString(p) {
		// /docker/<id> is docker's cgroupfs driver; under kubepods the path
		// does not say which CRI runtime made it.
		if len(parents) > 0 && parents[len(parents)-1] == "docker" {
			return p, "docker", false, true
		}
		return p, "", false, true
	}
	if m := otherIDRe.FindStringSubmatch(p); m != nil {
		return m[1], "", false, true
	}
	return "", "", false, false
}

// podUID reads a Kubernetes pod UID from cgroup directory name p.
func podUID(parents []string, p string) string {
	if m := podSliceRe.FindStringSubmatch(p); m != nil {
		return strings.ReplaceAll(m[1], "_", "-")
	}
	if m := podDirRe.FindStringSubmatch(p); m != nil {
		for _, q := range parents {
			if q == "kubepods" {
				return m[1]
			}
		}
	}
	return ""
}
