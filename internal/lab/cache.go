package lab

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/portsleuth/portsleuth/internal/outfile"
)

// Cache locations: the flag wins over the environment, which wins over the default.
const (
	DefaultCacheDir = "/var/cache/portsleuth/lab"
	CacheEnv        = "PORTSLEUTH_LAB_CACHE"
)

// maxCacheBytes bounds a cache file we read: ours are a few kB.
const maxCacheBytes = 4 << 20

// CacheDir is where results are kept.
func CacheDir(flag string) string {
	if flag != "" {
		return flag
	}
	if d := os.Getenv(CacheEnv); d != "" {
		return d
	}
	return DefaultCacheDir
}

// Release is the running kernel's release, as uname -r prints it.
func Release() (string, error) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "", fmt.Errorf("uname: %w", err)
	}
	return unix.ByteSliceToString(u.Release[:]), nil
}

// cacheFile holds one result and when it was measured.
type cacheFile struct {
	Measured time.Time `json:"measured"`
	Result   *Result   `json:"result"`
}

// cacheVersion changes whenever the experiments or the verdict rules do:
// results an older lab measured are then measured again, not cited.
const cacheVersion = "2"

// cachePath is <dir>/<release>-<hash of the shapes>.json: the shapes carry
// the range and every sysctl the experiments start from.
func cachePath(dir, release string, shapes []Shape) string {
	b, _ := json.Marshal(shapes)
	sum := sha256.Sum256(append([]byte(cacheVersion+"\n"), b...))
	rel := strings.Map(func(r rune) rune {
		if r == '/' || r < 0x20 {
			return '_'
		}
		return r
	}, release)
	return filepath.Join(dir, rel+"-"+hex.EncodeToString(sum[:8])+".json")
}

// Store keeps a result for later runs and for reports: a 0600 file,
// never written through a link (outfile).
func Store(dir string, r *Result, shapes []Shape) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("creating the lab cache: %w", err)
	}
	f, err := outfile.Create(cachePath(dir, r.Kernel, shapes), true)
	if err != nil {
		return fmt.Errorf("lab cache: %w", err)
	}
	defer f.Abort()
	if err := json.NewEncoder(f).Encode(cacheFile{Measured: time.Now().UTC(), Result: r}); err != nil {
		return fmt.Errorf("writing the lab cache: %w", err)
	}
	return f.Commit()
}

// Load returns the stored result for these shapes on this release.
func Load(dir, release string, shapes []Shape) (*Result, time.Time, bool) {
	c, err := readCache(cachePath(dir, release, shapes))
	if err != nil || c.Result == nil || c.Result.Kernel != release {
		return nil, time.Time{}, false
	}
	return c.Result, c.Measured, true
}

// Cached is the default lab's result with an n-port range on this release,
// for a report to cite; it never runs the lab.
func Cached(dir, release string, n int) (*Result, time.Time, bool) {
	return Load(dir, release, DefaultShapes(n, "all"))
}

// readCache reads a regular file without following a link, and no more
// than maxCacheBytes of it.
func readCache(path string) (cacheFile, error) {
	var c cacheFile
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return c, err
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return c, err
	}
	if !fi.Mode().IsRegular() {
		return c, errors.New("not a regular file")
	}
	// Only what we wrote: a result someone else could write (a shared
	// --cache-dir) would put their words into our reports.
	if st, ok := fi.Sys().(*syscall.Stat_t); !ok || int(st.Uid) != os.Geteuid() || fi.Mode().Perm()&0o022 != 0 {
		return c, errors.New("not ours alone: another user owns it or may write it")
	}
	b, err := io.ReadAll(io.LimitReader(f, maxCacheBytes+1))
	if err != nil {
		return c, err
	}
	if len(b) > maxCacheBytes {
		return c, errors.New("too large")
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return c, err
	}
	return c, c.Result.check()
}

// check refuses a result with names the lab does not use: reports cite them.
func (r *Result) check() error {
	if r == nil {
		return errors.New("no result")
	}
	for _, p := range r.Patterns {
		if !KnownPattern(p.Pattern) {
			return fmt.Errorf("unknown pattern %q", p.Pattern)
		}
		for _, rr := range p.Remedies {
			if !slices.Contains(verdicts, rr.Verdict) || !knownRemedy(rr.Remedy) {
				return fmt.Errorf("unknown remedy %q or verdict %q", rr.Remedy, rr.Verdict)
			}
		}
	}
	return nil
}
