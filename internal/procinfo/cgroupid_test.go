package procinfo

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// cgroupRootForTest is the cgroup2 mount, or skips when the test can't make
// cgroups in it.
func cgroupRootForTest(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("making cgroups needs root")
	}
	root, err := Cgroup2Mount()
	if err != nil || root == "" {
		t.Skipf("no cgroup2 hierarchy mounted (%v)", err)
	}
	return root
}

// makeCgroups makes each of paths (relative, nested) under a fresh
// /portsleuth-test-<rand> cgroup, removes them all when the test ends, and
// returns their paths relative to root in the order given.
func makeCgroups(t *testing.T, root string, paths ...string) []string {
	t.Helper()
	var b [6]byte
	_, _ = rand.Read(b[:])
	top := "/portsleuth-test-" + hex.EncodeToString(b[:])
	var made []string // every directory created, parents first
	t.Cleanup(func() {
		for _, d := range slices.Backward(made) {
			if err := rmdirCgroup(root + d); err != nil {
				t.Errorf("removing cgroup %s: %v", d, err)
			}
		}
	})
	mkdir := func(dir string) {
		if slices.Contains(made, dir) {
			return
		}
		if err := os.Mkdir(root+dir, 0o755); err != nil {
			t.Fatalf("making cgroup %s: %v", dir, err)
		}
		made = append(made, dir)
	}
	mkdir(top)
	var rels []string
	for _, p := range paths {
		dir := top
		for _, part := range strings.Split(strings.Trim(p, "/"), "/") {
			dir += "/" + part
			mkdir(dir)
		}
		rels = append(rels, dir)
	}
	return rels
}

// rmdirCgroup removes a cgroup, waiting (bounded) for exited members to leave.
func rmdirCgroup(dir string) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := unix.Rmdir(dir)
		if err == nil || errors.Is(err, unix.ENOENT) {
			return nil
		}
		if !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// moveToCgroup moves pid into cgroup rel, and back to the root when the test
// ends so the cgroup can be removed.
func moveToCgroup(t *testing.T, root, rel string, pid uint32) {
	t.Helper()
	write := func(dir string) error {
		return os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(int(pid))), 0o644)
	}
	if err := write(root + rel); err != nil {
		t.Fatalf("moving %d to %s: %v", pid, rel, err)
	}
	t.Cleanup(func() { _ = write(root) })
}

func cgroupID(t *testing.T, dir string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

const (
	nginxCgroup = "/system.slice/nginx.service"
	podCgroup   = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + podUIDUnders + ".slice/cri-containerd-" + id + ".scope"
)

// Real nested cgroups, each found by the id the kernel gave it: the walk must
// not stop at the interface files beside a child directory.
func TestCgroupPathByIDNested(t *testing.T) {
	root := cgroupRootForTest(t)
	rels := makeCgroups(t, root, nginxCgroup, podCgroup)
	idx := &cgroupIndex{mount: Cgroup2Mount, now: time.Now}
	for _, rel := range rels {
		if got := idx.path(cgroupID(t, root+rel)); got != rel {
			t.Errorf("path(id of %s) = %q", rel, got)
		}
	}
	if got := idx.path(cgroupID(t, root)); got != "/" {
		t.Errorf("path(id of the root) = %q, want /", got)
	}
	// The package's shared cache may have walked within the last second,
	// before these cgroups existed: it answers once its next walk is due.
	want := rels[1]
	deadline := time.Now().Add(3 * time.Second)
	for CgroupPathByID(cgroupID(t, root+want)) != want {
		if time.Now().After(deadline) {
			t.Fatalf("CgroupPathByID never found %s", want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// A process moved into a container-shaped cgroup is named by it, through
// /proc and through the cgroup id.
func TestIdentityOfRealProcess(t *testing.T) {
	root := cgroupRootForTest(t)
	rels := makeCgroups(t, root, podCgroup, nginxCgroup)
	for _, c := range []struct {
		rel  string
		want CgroupIdentity
	}{
		{rels[0], CgroupIdentity{ContainerID: id, PodUID: podUIDDashes, Runtime: "containerd"}},
		{rels[1], CgroupIdentity{Unit: "nginx.service", Runtime: "systemd"}},
	} {
		cmd := exec.Command("/bin/sleep", "60")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		pid := uint32(cmd.Process.Pid)
		moveToCgroup(t, root, c.rel, pid)
		info, err := Lookup(pid)
		if err != nil {
			t.Fatal(err)
		}
		if info.Cgroup != c.rel || info.ContainerID != c.want.ContainerID {
			t.Errorf("Lookup(%d) = %+v; want cgroup %s, container %q", pid, info, c.rel, c.want.ContainerID)
		}
		if got := Identity(info.Cgroup); got != c.want {
			t.Errorf("Identity(%s) = %+v, want %+v", info.Cgroup, got, c.want)
		}
		idx := &cgroupIndex{mount: Cgroup2Mount, now: time.Now}
		if got := idx.path(cgroupID(t, root+c.rel)); got != info.Cgroup {
			t.Errorf("path by id = %q, /proc says %q", got, info.Cgroup)
		}
	}
}

// A miss walks again at most once a second, keeps the cgroups it already
// knew, and concurrent callers share one cache.
func TestCgroupIndexRefresh(t *testing.T) {
	root := cgroupRootForTest(t)
	var mu sync.Mutex
	now := time.Unix(1000, 0)
	walks := 0
	idx := &cgroupIndex{
		mount: func() (string, error) { walks++; return Cgroup2Mount() },
		now:   func() time.Time { mu.Lock(); defer mu.Unlock(); return now },
	}
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }

	first := makeCgroups(t, root, "/a.slice")[0]
	firstID := cgroupID(t, root+first)
	if got := idx.path(firstID); got != first {
		t.Fatalf("path(%d) = %q, want %q", firstID, got, first)
	}
	second := makeCgroups(t, root, "/b.slice")[0]
	secondID := cgroupID(t, root+second)
	advance(500 * time.Millisecond)
	if got := idx.path(secondID); got != "" || walks != 1 {
		t.Errorf("within a second of a walk: path = %q after %d walks; want \"\" after 1", got, walks)
	}
	advance(600 * time.Millisecond)
	var wg sync.WaitGroup
	results := make([]string, 8)
	for i := range results {
		wg.Go(func() { results[i] = idx.path(secondID) })
	}
	wg.Wait()
	for i, got := range results {
		if got != second {
			t.Errorf("caller %d: path = %q, want %q", i, got, second)
		}
	}
	if walks != 2 {
		t.Errorf("%d walks for 8 concurrent misses of one id, want 1 more", walks-1)
	}
	// A removed cgroup keeps its name: its processes' events may come later.
	if err := rmdirCgroup(root + first); err != nil {
		t.Fatal(err)
	}
	advance(2 * time.Second)
	_ = idx.path(1 << 62) // a miss that walks again
	if got := idx.path(firstID); got != first {
		t.Errorf("removed cgroup: path = %q, want %q", got, first)
	}
	if got := idx.path(0); got != "" {
		t.Errorf("path(0) = %q", got)
	}
}

// The walk is bounded.
func TestWalkCgroupsLimit(t *testing.T) {
	root := cgroupRootForTest(t)
	makeCgroups(t, root, "/x/y/z")
	if got := len(walkCgroups(root, 3)); got != 3 {
		t.Errorf("walkCgroups(limit 3) found %d", got)
	}
	all := walkCgroups(root, maxCgroups)
	if len(all) < 4 {
		t.Errorf("walkCgroups found %d cgroups, want at least 4", len(all))
	}
	if _, err := os.Stat(filepath.Join(root, "nonexistent")); err == nil {
		t.Fatal("unexpected cgroup")
	}
	if got := walkCgroups(filepath.Join(root, "nonexistent"), 10); len(got) != 0 {
		t.Errorf("walk of a missing root = %v", got)
	}
}
