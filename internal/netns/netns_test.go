package netns

import (
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

func TestCountReserved(t *testing.T) {
	for _, c := range []struct {
		list string
		want int
	}{
		{"", 0},
		{"8080", 0},
		{"40000", 1},
		{"39990-40009,40063,50000-50010", 10 + 1},
		{"40060-40100", 4},
	} {
		got, err := CountReserved(c.list, [2]int{40000, 40063})
		if err != nil || got != c.want {
			t.Errorf("CountReserved(%q) = %d, %v; want %d", c.list, got, err, c.want)
		}
	}
	if _, err := CountReserved("9-1", [2]int{0, 10}); err == nil {
		t.Error("a reversed range must be an error")
	}
}

// Open accepts network namespace files only, and never opens anything else
// for reading: a FIFO would block.
func TestOpenChecksTheNamespaceType(t *testing.T) {
	f, err := Open("/proc/self/ns/net")
	if err != nil {
		t.Fatalf("own netns: %v", err)
	}
	f.Close()
	fifo := filepath.Join(t.TempDir(), "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{"/etc/passwd", "/proc/self/ns/mnt", "/proc/self", fifo} {
		if f, err := Open(path); !errors.Is(err, ErrNotNetns) {
			if f != nil {
				f.Close()
			}
			t.Errorf("Open(%s) = %v; want ErrNotNetns", path, err)
		}
	}
	if _, err := Open("/nonexistent"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Open(/nonexistent) = %v; want ErrNotExist", err)
	}
}

// A namespace's cookie is read in it: the same for every read of one
// namespace, another for another namespace.
func TestCookieNamesTheNamespace(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a network namespace (CAP_SYS_ADMIN)")
	}
	own, err := Open("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	defer own.Close()
	a, err := ReadFD(int(own.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	if a.Cookie == 0 {
		t.Skip("this kernel gives no namespace cookie (SO_NETNS_COOKIE is 5.14+)")
	}
	var other, again Sysctls
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the namespace
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			done <- err
			return
		}
		f, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			done <- err
			return
		}
		defer f.Close()
		if other, err = ReadFD(int(f.Fd())); err == nil {
			again, err = ReadFD(int(f.Fd()))
		}
		done <- err
	}()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if other.Cookie == 0 || other.Cookie == a.Cookie || again.Cookie != other.Cookie {
		t.Errorf("cookies: ours %d, a new namespace's %d then %d; want the new one's nonzero, its own, and stable", a.Cookie, other.Cookie, again.Cookie)
	}
	if !CookieMismatch(other.Cookie, a.Cookie) || CookieMismatch(other.Cookie, other.Cookie) || CookieMismatch(0, a.Cookie) {
		t.Error("CookieMismatch: want true only for two known, different cookies")
	}
}
