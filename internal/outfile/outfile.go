// Package outfile creates the files a root agent writes (reports,
// recordings) so that a path planted by another user can't redirect them:
// the data goes to a fresh 0600 temporary file beside the target, opened
// without following links, and only a finished file replaces the target.
package outfile

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Mode is the mode of every file this package writes: reports hold command
// lines, which can hold secrets.
const Mode = 0o600

// tempAttempts bounds the retries when a random temporary name is taken.
const tempAttempts = 16

// File is an output file being written. Nothing is visible at its path until
// Commit; Abort throws it away.
type File struct {
	path  string   // the target, as given
	base  string   // the target's name within dir
	dir   *os.File // the target's directory, held open so every step acts on the same one
	tmp   string   // the temporary file's name within dir
	f     *os.File
	force bool
	done  bool
}

// Create checks path and prepares its temporary file now, so that a bad path
// fails before any work starts. It refuses a directory, anything that is not
// a regular file or a symbolic link, and an existing target unless force.
// An existing file is left untouched until Commit.
func Create(path string, force bool) (*File, error) {
	dirName, base, err := split(path)
	if err != nil {
		return nil, err
	}
	dir, err := openDir(dirName)
	if err != nil {
		return nil, fmt.Errorf("opening directory of %s: %w", path, err)
	}
	o := &File{path: path, base: base, dir: dir, force: force}
	if err := o.checkTarget(); err != nil {
		dir.Close()
		return nil, err
	}
	if err := o.createTemp(); err != nil {
		dir.Close()
		return nil, err
	}
	return o, nil
}

// split refuses names that can only mean a directory and splits the rest.
func split(path string) (dir, base string, err error) {
	if path == "" {
		return "", "", errors.New("empty output path")
	}
	if strings.HasSuffix(path, "/") {
		return "", "", fmt.Errorf("%s: is a directory name, want a file", path)
	}
	clean := filepath.Clean(path)
	base = filepath.Base(clean)
	if base == "." || base == ".." || base == "/" {
		return "", "", fmt.Errorf("%s: is a directory name, want a file", path)
	}
	return filepath.Dir(clean), base, nil
}

// checkTarget looks at what the target name holds now, without following it.
func (o *File) checkTarget() error {
	var st unix.Stat_t
	err := unix.Fstatat(int(o.dir.Fd()), o.base, &st, unix.AT_SYMLINK_NOFOLLOW)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("checking %s: %w", o.path, err)
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		return fmt.Errorf("%s is a directory: want a file path", o.path)
	case unix.S_IFREG:
		if !o.force {
			return fmt.Errorf("%s exists: pass --force to replace it", o.path)
		}
	case unix.S_IFLNK:
		if !o.force {
			return fmt.Errorf("%s is a symbolic link: output is never written through a link; pass --force to replace the link itself", o.path)
		}
	default:
		// Replacing a device or a FIFO (say /dev/null) with a file would break the host.
		return fmt.Errorf("%s exists and is not a regular file: refusing to replace it", o.path)
	}
	return nil
}

// createTemp makes a new, empty 0600 file beside the target. O_EXCL and
// O_NOFOLLOW: whatever sits at the name already, nothing is opened through it.
func (o *File) createTemp() error {
	for range tempAttempts {
		name, err := tempName(o.base)
		if err != nil {
			return err
		}
		fd, err := unix.Openat(int(o.dir.Fd()), name,
			unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, Mode)
		if errors.Is(err, unix.EEXIST) {
			continue
		}
		if err != nil {
			return fmt.Errorf("creating a temporary file beside %s: %w", o.path, err)
		}
		o.tmp, o.f = name, os.NewFile(uintptr(fd), filepath.Join(o.dir.Name(), name))
		// The umask may only have narrowed the mode; make it exactly 0600.
		if err := o.f.Chmod(Mode); err != nil {
			o.Abort()
			return fmt.Errorf("setting the mode of %s: %w", o.f.Name(), err)
		}
		return nil
	}
	return fmt.Errorf("creating a temporary file beside %s: %d random names taken", o.path, tempAttempts)
}

func tempName(base string) (string, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("naming a temporary file: %w", err)
	}
	// Leading dot: hidden from a plain ls while it is being written.
	return "." + base + ".tmp-" + hex.EncodeToString(b[:]), nil
}

// Path is the target path as given to Create.
func (o *File) Path() string { return o.path }

// Write writes to the temporary file.
func (o *File) Write(p []byte) (int, error) {
	if o.done {
		return 0, fmt.Errorf("writing %s: %w", o.path, os.ErrClosed)
	}
	return o.f.Write(p)
}

// Commit makes the written file durable and moves it onto the target.
// Without force it never replaces anything, even a file or link that appeared
// at the target after Create. With force it replaces the target name itself:
// a symbolic link is replaced, its target never touched.
func (o *File) Commit() error {
	if o.done {
		return fmt.Errorf("committing %s: %w", o.path, os.ErrClosed)
	}
	err := o.commit()
	o.Abort() // removes the temporary file if it is still there
	return err
}

func (o *File) commit() error {
	if err := o.f.Sync(); err != nil {
		return fmt.Errorf("writing %s: %w", o.path, err)
	}
	if err := o.sameTemp(); err != nil {
		return err
	}
	if err := o.f.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", o.path, err)
	}
	o.f = nil
	if o.force {
		// Checked again: a device could have been put there since Create.
		if err := o.checkTarget(); err != nil {
			return err
		}
		if err := unix.Renameat(int(o.dir.Fd()), o.tmp, int(o.dir.Fd()), o.base); err != nil {
			return fmt.Errorf("replacing %s: %w", o.path, err)
		}
		o.tmp = ""
	} else if err := o.renameNoReplace(); err != nil {
		return err
	}
	// The rename itself must survive a crash too.
	if err := o.dir.Sync(); err != nil {
		return fmt.Errorf("syncing the directory of %s: %w", o.path, err)
	}
	return nil
}

// sameTemp checks that the temporary name still holds the file we wrote: in
// a world-writable directory without the sticky bit anyone may swap it.
func (o *File) sameTemp() error {
	var ours, there unix.Stat_t
	if err := unix.Fstat(int(o.f.Fd()), &ours); err != nil {
		return fmt.Errorf("checking the temporary file of %s: %w", o.path, err)
	}
	if err := unix.Fstatat(int(o.dir.Fd()), o.tmp, &there, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("checking the temporary file of %s: %w", o.path, err)
	}
	if there.Dev != ours.Dev || there.Ino != ours.Ino {
		o.tmp = "" // not ours to remove
		return fmt.Errorf("the temporary file of %s was replaced by someone else: not committed", o.path)
	}
	return nil
}

// renameNoReplace moves the file onto the target only if the target name is
// free. Where renameat2 has no RENAME_NOREPLACE, link() gives the same
// guarantee: it fails on an existing name (Abort then removes the temporary name).
func (o *File) renameNoReplace() error {
	dfd := int(o.dir.Fd())
	err := unix.Renameat2(dfd, o.tmp, dfd, o.base, unix.RENAME_NOREPLACE)
	if err == nil {
		o.tmp = ""
		return nil
	}
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
		err = unix.Linkat(dfd, o.tmp, dfd, o.base, 0)
	}
	if errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("%s appeared while the output was written: not replaced (pass --force to replace it)", o.path)
	}
	if err != nil {
		return fmt.Errorf("creating %s: %w", o.path, err)
	}
	return nil
}

// Abort removes the temporary file; the target stays as it was. It may be
// called any number of times, and after Commit.
func (o *File) Abort() {
	if o.done {
		return
	}
	o.done = true
	if o.f != nil {
		o.f.Close()
		o.f = nil
	}
	if o.tmp != "" {
		_ = unix.Unlinkat(int(o.dir.Fd()), o.tmp, 0)
		o.tmp = ""
	}
	o.dir.Close()
}

// openDir opens the output's directory without following a symbolic link
// that someone else controls: every link on the way must belong to root or
// to us (a user's link in a directory they own could otherwise send root's
// file anywhere). The resolved path is then opened with no link followed
// at all, so a link planted after the check fails the open.
func openDir(dir string) (*os.File, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	resolved, err := resolveTrusted(abs)
	if err != nil {
		return nil, err
	}
	fd, err := unix.Openat2(unix.AT_FDCWD, resolved, &unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_DIRECTORY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_NO_SYMLINKS,
	})
	if errors.Is(err, unix.ENOSYS) {
		// Before 5.6: the check above is what stands.
		fd, err = unix.Open(resolved, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	}
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: resolved, Err: err}
	}
	return os.NewFile(uintptr(fd), resolved), nil
}

// maxLinks bounds the links one path may go through, as the kernel does.
const maxLinks = 40

// resolveTrusted resolves an absolute path one component at a time and
// refuses a symbolic link owned by anyone but root or this process's user.
func resolveTrusted(path string) (string, error) {
	out := "/"
	rest := strings.Split(path, "/")
	for links := 0; len(rest) > 0; {
		name := rest[0]
		rest = rest[1:]
		switch name {
		case "", ".":
			continue
		case "..":
			out = filepath.Dir(out)
			continue
		}
		next := filepath.Join(out, name)
		var st unix.Stat_t
		if err := unix.Lstat(next, &st); err != nil {
			return "", &os.PathError{Op: "lstat", Path: next, Err: err}
		}
		if st.Mode&unix.S_IFMT != unix.S_IFLNK {
			out = next
			continue
		}
		if st.Uid != 0 && int(st.Uid) != os.Geteuid() {
			return "", fmt.Errorf("%s is a symbolic link owned by uid %d: portsleuth does not write through links others control", next, st.Uid)
		}
		if links++; links > maxLinks {
			return "", &os.PathError{Op: "resolve", Path: path, Err: unix.ELOOP}
		}
		target, err := os.Readlink(next)
		if err != nil {
			return "", err
		}
		if filepath.IsAbs(target) {
			out = "/"
		}
		rest = append(strings.Split(target, "/"), rest...)
	}
	return out, nil
}
