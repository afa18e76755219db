package netns

import (
	"errors"
	"os"
	"path/filepath"
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
