package pressure

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// nsHandles keeps open handles (fds on nsfs inodes) on the network
// namespaces failures happened in, keyed by the inode the kernel reports as
// an event's netns. A namespace outlives the task that failed in it while any
// other task, socket or mount holds it; entering it through the failing
// task's /proc entry loses it the moment that task exits (crash loops,
// thread-per-request clients, short-lived CLIs).
//
// A cached handle also keeps the namespace alive, so the cache is small and
// entries not used for handleIdle are closed: we must not pin the namespaces
// of containers long gone (their veths and addresses go with them).
type nsHandles struct {
	mu      sync.Mutex
	self    uint64   // the namespace we run in: always served by selfF
	selfF   *os.File // nil when our own could not be opened
	max     int
	entries map[uint64]*nsEntry
	// members is the last /proc scan: namespace inode -> a pid living in it.
	members   map[uint64]int
	scannedAt time.Time
	scans     int // how many /proc scans ran; tests read it
	now       func() time.Time

	// pinned are handles the ring-buffer reader took (pin) on namespaces it
	// saw failures in, while the failing task still lived. They have a lock
	// of their own: the reader must never wait for a /proc scan under mu.
	pinMu  sync.Mutex
	pinned map[uint64]*nsEntry
}

type nsEntry struct {
	f    *os.File
	used time.Time
}

const (
	// maxHandles bounds the namespaces kept open (each pins one namespace).
	maxHandles = 64
	// handleIdle is how long an unused handle stays open.
	handleIdle = time.Minute
	// scanEvery is the least time between two /proc scans for a member.
	scanEvery = 100 * time.Millisecond
	// maxScanPIDs bounds the /proc entries one scan looks at.
	maxScanPIDs = 1 << 16
)

var errNoMember = errors.New("no live member and no handle")

func newNSHandles(limit int) *nsHandles {
	h := &nsHandles{max: max(1, limit), entries: map[uint64]*nsEntry{}, members: map[uint64]int{}, now: time.Now,
		pinned: map[uint64]*nsEntry{}}
	if f, err := os.Open("/proc/self/ns/net"); err == nil {
		if ino, err := inodeOf(f); err == nil {
			h.self, h.selfF = ino, f
		} else {
			f.Close()
		}
	}
	return h
}

// open returns a new fd (the caller closes it) on network namespace ino,
// taken in order from: our own, a cached handle, thread tid of pid, process
// pid, any live process found in it by a /proc scan. ino 0 (unknown) takes
// the task's namespace as it is now, uncached.
func (h *nsHandles) open(ino uint64, pid, tid uint32) (*os.File, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if ino == 0 {
		if f := openTaskNS(0, pid, tid); f != nil {
			return f, nil
		}
		return nil, fmt.Errorf("opening the network namespace of pid %d: %w", pid, errNoMember)
	}
	if ino == h.self && h.selfF != nil {
		return dupFile(h.selfF)
	}
	now := h.now()
	h.expire(now)
	if e, ok := h.entries[ino]; ok {
		e.used = now
		return dupFile(e.f)
	}
	f := h.unpin(ino)
	if f == nil {
		f = openTaskNS(ino, pid, tid)
	}
	if f == nil {
		f = h.fromMembers(ino, now)
	}
	if f == nil {
		return nil, fmt.Errorf("opening network namespace %d: %w", ino, errNoMember)
	}
	h.put(ino, f, now)
	return dupFile(f)
}

// pin opens namespace ino through the task that failed in it, unless a
// handle on it is already held: the reader calls it for each failure, while
// that task most likely lives. Enrichment runs later, and the kernel hands a
// destroyed namespace's inode number to the next namespace it makes: without
// the pin, a short-lived task's namespace could be gone and its number taken
// by another's by then, and that other namespace's sysctls would be read.
// Only the task's own /proc entries are tried: the reader never scans /proc.
func (h *nsHandles) pin(ino uint64, pid, tid uint32) {
	if ino == 0 || ino == h.self {
		return
	}
	now := h.now()
	h.pinMu.Lock()
	defer h.pinMu.Unlock()
	if e, ok := h.pinned[ino]; ok {
		e.used = now
		return
	}
	if h.mu.TryLock() { // busy: the worker may be scanning /proc; pin anyway
		_, cached := h.entries[ino]
		h.mu.Unlock()
		if cached {
			return
		}
	}
	for k, e := range h.pinned { // idle pins go, as idle handles do
		if now.Sub(e.used) > handleIdle {
			e.f.Close()
			delete(h.pinned, k)
		}
	}
	if len(h.pinned) >= h.max {
		return // bounded: past it, enrichment opens namespaces as before
	}
	if f := openTaskNS(ino, pid, tid); f != nil {
		h.pinned[ino] = &nsEntry{f: f, used: now}
	}
}

// unpin hands a pinned handle over to the cache (nil when there is none).
func (h *nsHandles) unpin(ino uint64) *os.File {
	h.pinMu.Lock()
	defer h.pinMu.Unlock()
	e, ok := h.pinned[ino]
	if !ok {
		return nil
	}
	delete(h.pinned, ino)
	return e.f
}

// openTaskNS opens the namespace of thread tid of pid, else of pid's main
// thread, when it is ino (any when ino is 0): a reused pid or a thread that
// moved to another namespace must not be taken for the failing one.
func openTaskNS(ino uint64, pid, tid uint32) *os.File {
	if pid == 0 {
		return nil
	}
	paths := []string{fmt.Sprintf("/proc/%d/task/%d/ns/net", pid, tid), fmt.Sprintf("/proc/%d/ns/net", pid)}
	if tid == 0 || tid == pid {
		paths = paths[1:]
	}
	for _, p := range paths {
		if f := openIf(p, ino); f != nil {
			return f
		}
	}
	return nil
}

func openIf(path string, ino uint64) *os.File {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	if got, err := inodeOf(f); err != nil || (ino != 0 && got != ino) {
		f.Close()
		return nil
	}
	return f
}

// fromMembers opens ino through a process the last scan saw in it, scanning
// again when that one is gone and the last scan is older than scanEvery.
func (h *nsHandles) fromMembers(ino uint64, now time.Time) *os.File {
	if pid, ok := h.members[ino]; ok {
		if f := openIf(fmt.Sprintf("/proc/%d/ns/net", pid), ino); f != nil {
			return f
		}
	}
	if now.Sub(h.scannedAt) < scanEvery {
		return nil
	}
	h.scan(now)
	if pid, ok := h.members[ino]; ok {
		return openIf(fmt.Sprintf("/proc/%d/ns/net", pid), ino)
	}
	return nil
}

// scan records one live process per network namespace.
func (h *nsHandles) scan(now time.Time) {
	h.scans++
	h.scannedAt = now
	h.members = map[uint64]int{}
	d, err := os.Open("/proc")
	if err != nil {
		return
	}
	defer d.Close()
	names, _ := d.Readdirnames(maxScanPIDs)
	for _, name := range names {
		pid, err := strconv.Atoi(name)
		if err != nil {
			continue
		}
		var st unix.Stat_t
		if unix.Stat("/proc/"+name+"/ns/net", &st) != nil {
			continue
		}
		if _, ok := h.members[st.Ino]; !ok {
			h.members[st.Ino] = pid
		}
	}
}

// put caches f for ino, closing the least recently used handle when full.
func (h *nsHandles) put(ino uint64, f *os.File, now time.Time) {
	if len(h.entries) >= h.max {
		var oldest uint64
		for k, e := range h.entries {
			if oldest == 0 || e.used.Before(h.entries[oldest].used) {
				oldest = k
			}
		}
		h.drop(oldest)
	}
	h.entries[ino] = &nsEntry{f: f, used: now}
}

func (h *nsHandles) expire(now time.Time) {
	for ino, e := range h.entries {
		if now.Sub(e.used) > handleIdle {
			h.drop(ino)
		}
	}
}

func (h *nsHandles) drop(ino uint64) {
	if e, ok := h.entries[ino]; ok {
		e.f.Close()
		delete(h.entries, ino)
	}
}

// Close closes every handle.
func (h *nsHandles) Close() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	for ino := range h.entries {
		h.drop(ino)
	}
	h.pinMu.Lock()
	for ino, e := range h.pinned {
		e.f.Close()
		delete(h.pinned, ino)
	}
	h.pinMu.Unlock()
	if h.selfF != nil {
		err := h.selfF.Close()
		h.selfF = nil
		return err
	}
	return nil
}

func inodeOf(f *os.File) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return 0, fmt.Errorf("stat %s: %w", f.Name(), err)
	}
	return st.Ino, nil
}

// dupFile gives the caller its own fd, so evicting or expiring the cached
// one never closes a namespace under a scan that is using it.
func dupFile(f *os.File) (*os.File, error) {
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("duplicating the handle on %s: %w", f.Name(), err)
	}
	return os.NewFile(uintptr(fd), f.Name()), nil
}
