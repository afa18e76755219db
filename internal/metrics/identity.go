package metrics

import (
	"github.com/portsleuth/portsleuth/internal/event"
	"github.com/portsleuth/portsleuth/internal/procinfo"
	"github.com/portsleuth/portsleuth/internal/term"
)

// identity is what a failure's container_id, pod_uid and unit labels say:
// the names a fleet pages on. Zero outside containers, pods and units.
type identity struct{ containerID, podUID, unit string }

// identityOf turns a cgroup identity into label values. A unit comes from a
// cgroup directory name, which is any bytes: escaped like a comm, since
// label values must be UTF-8.
func identityOf(id procinfo.CgroupIdentity) identity {
	return identity{containerID: id.ContainerID, podUID: id.PodUID, unit: term.Escape(id.Unit)}
}

// CgroupOf finds the cgroup v2 path (relative to the root) of process k:
// the cgroup the kernel recorded at its first failure (m.CgroupID), else
// where /proc says k is now, if that pid is still k. "" when neither tells.
// The recorded one comes first: it is where the process was when it failed,
// and it still names a process that has exited.
func CgroupOf(k event.ProcKey, m event.ProcMeta) string {
	if p := procinfo.CgroupPathByID(m.CgroupID); p != "" {
		return p
	}
	return liveCgroup(k)
}

// liveCgroup is where /proc says k is now, "" when the pid is another
// process's by now.
func liveCgroup(k event.ProcKey) string { return procinfo.LiveCgroup(k.PID, k.Start) }

// OwnerIdentity is the container_id, pod_uid and unit label values of a
// live process (a pool's owner), all "" when its cgroup says nothing or it
// is gone.
func OwnerIdentity(pid int) (containerID, podUID, unit string) {
	if pid <= 0 {
		return "", "", ""
	}
	id := identityOf(procinfo.Identity(procinfo.LiveCgroup(uint32(pid), 0)))
	return id.containerID, id.podUID, id.unit
}

// identities caches each failing process's identity: it is resolved once,
// not on every update. Its memory is bounded by the kernel's tables: entries
// of processes whose records are gone are pruned.
type identities struct {
	cgroupOf func(event.ProcKey, event.ProcMeta) string
	byProc   map[event.ProcKey]identity
}

func newIdentities(cgroupOf func(event.ProcKey, event.ProcMeta) string) *identities {
	return &identities{cgroupOf: cgroupOf, byProc: map[event.ProcKey]identity{}}
}

// of resolves k's identity. An unresolved path is not cached: the next
// update tries again (the cgroup walk behind a recorded id runs at most once
// a second); ok is false then.
func (ids *identities) of(k event.ProcKey, m event.ProcMeta) (identity, bool) {
	if id, ok := ids.byProc[k]; ok {
		return id, true
	}
	path := ids.cgroupOf(k, m)
	if path == "" {
		return identity{}, false
	}
	id := identityOf(procinfo.Identity(path))
	ids.byProc[k] = id
	return id, true
}

// prune forgets the processes the kernel no longer has a record of.
func (ids *identities) prune(meta map[event.ProcKey]event.ProcMeta) {
	for k := range ids.byProc {
		if _, ok := meta[k]; !ok {
			delete(ids.byProc, k)
		}
	}
}

// forget drops processes whose kernel records were deleted.
func (ids *identities) forget(gone map[event.ProcKey]bool) {
	for k := range gone {
		delete(ids.byProc, k)
	}
}
