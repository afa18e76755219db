package procinfo

import (
	"io/fs"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

const (
	// A miss walks the hierarchy again at most this often, so a storm of
	// events from unknown cgroups costs one walk a second, not one per event.
	cgroupRewalkEvery = time.Second
	// Bounds the cache and the walk: a node with more cgroups than this is
	// named partially rather than exhausting memory.
	maxCgroups = 1 << 16
)

var defaultCgroups = &cgroupIndex{mount: Cgroup2Mount, now: time.Now}

// CgroupPathByID finds the cgroup v2 directory whose id (its kernfs inode
// number, what bpf_get_current_cgroup_id returns) is id: for a process that is
// gone before /proc could name its cgroup. "" when not found. It answers from
// a cached walk of the hierarchy (as ebpf_exporter does) and is safe for
// concurrent use.
func CgroupPathByID(id uint64) string { return defaultCgroups.path(id) }

// cgroupIndex maps cgroup ids to paths relative to the cgroup2 root. Ids of
// removed cgroups stay until the cache is full: kernfs never reuses a 64-bit
// id, and a crash-looping unit's scope is often gone before its events are
// named.
type cgroupIndex struct {
	mount func() (string, error)
	now   func() time.Time

	mu     sync.RWMutex
	paths  map[uint64]string
	walked time.Time
}

func (c *cgroupIndex) path(id uint64) string {
	if id == 0 {
		return ""
	}
	c.mu.RLock()
	p, ok := c.paths[id]
	c.mu.RUnlock()
	if ok {
		return p
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if p, ok := c.paths[id]; ok {
		return p // another caller's walk found it while we waited
	}
	now := c.now()
	if !c.walked.IsZero() && now.Sub(c.walked) < cgroupRewalkEvery {
		return ""
	}
	c.walked = now
	c.refresh()
	return c.paths[id]
}

// refresh merges a fresh walk into the cache, starting over when the merge
// would pass the bound.
func (c *cgroupIndex) refresh() {
	root, _ := c.mount()
	if root == "" {
		return
	}
	fresh := walkCgroups(root, maxCgroups)
	if c.paths == nil || len(c.paths)+len(fresh) > maxCgroups {
		c.paths = fresh
		return
	}
	for id, p := range fresh {
		c.paths[id] = p
	}
}

// walkCgroups maps the id of every directory under root (at most limit of
// them) to its path relative to root, "/" for root itself.
func walkCgroups(root string, limit int) map[uint64]string {
	paths := make(map[uint64]string)
	_ = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			// An unreadable directory (removed mid-walk, or denied) is
			// skipped; its siblings are still walked.
			if d != nil && d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if !d.IsDir() {
			return nil // interface files: returning SkipDir here would skip their siblings
		}
		info, err := d.Info()
		if err != nil {
			return filepath.SkipDir
		}
		st, ok := info.Sys().(*syscall.Stat_t)
		if !ok {
			return nil
		}
		rel := strings.TrimPrefix(path, root)
		if !strings.HasPrefix(rel, "/") {
			rel = "/" + rel
		}
		paths[st.Ino] = rel
		if len(paths) >= limit {
			return filepath.SkipAll
		}
		return nil
	})
	return paths
}
