package outfile

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

const nobody = 65534

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: plants a link owned by another user (uid 65534) in a sticky directory, as an attacker would")
	}
}

func writeAll(t *testing.T, path string, force bool, data string) error {
	t.Helper()
	f, err := Create(path, force)
	if err != nil {
		return err
	}
	defer f.Abort()
	if _, err := f.Write([]byte(data)); err != nil {
		t.Fatal(err)
	}
	return f.Commit()
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// onlyEntries fails unless dir holds exactly names: no temporary file left.
func onlyEntries(t *testing.T, dir string, names ...string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	if strings.Join(got, ",") != strings.Join(names, ",") {
		t.Errorf("%s holds %q, want %q", dir, got, names)
	}
}

// stickyDir is a world-writable /tmp-like directory.
func stickyDir(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "tmp")
	if err := os.Mkdir(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o777|os.ModeSticky); err != nil {
		t.Fatal(err)
	}
	return dir
}

// plantLink makes a symbolic link owned by nobody, as a local user would.
func plantLink(t *testing.T, target, link string) {
	t.Helper()
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(link, nobody, nobody); err != nil {
		t.Fatal(err)
	}
}

func TestSymlinkPlantedInStickyDir(t *testing.T) {
	requireRoot(t)
	victim := filepath.Join(t.TempDir(), "shadow")
	if err := os.WriteFile(victim, []byte("root only\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	dir := stickyDir(t)
	link := filepath.Join(dir, "report.txt")
	plantLink(t, victim, link)

	err := writeAll(t, link, false, "report\n")
	if err == nil || !strings.Contains(err.Error(), "--force") {
		t.Errorf("writing to a planted link: %v, want a refusal naming --force", err)
	}
	if got := readFile(t, victim); got != "root only\n" {
		t.Fatalf("the link's target was written: %q", got)
	}
	onlyEntries(t, dir, "report.txt")

	if err := writeAll(t, link, true, "report\n"); err != nil {
		t.Fatalf("--force: %v", err)
	}
	if got := readFile(t, victim); got != "root only\n" {
		t.Fatalf("--force wrote through the link: %q", got)
	}
	st, err := os.Lstat(link)
	if err != nil || !st.Mode().IsRegular() || st.Mode().Perm() != Mode {
		t.Fatalf("--force left %v (%v), want a regular 0600 file in place of the link", st.Mode(), err)
	}
	if got := readFile(t, link); got != "report\n" {
		t.Errorf("report holds %q", got)
	}
	onlyEntries(t, dir, "report.txt")
}

// A link planted between Create and Commit is not replaced either.
func TestSymlinkPlantedWhileWriting(t *testing.T) {
	requireRoot(t)
	victim := filepath.Join(t.TempDir(), "shadow")
	if err := os.WriteFile(victim, []byte("root only\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	dir := stickyDir(t)
	link := filepath.Join(dir, "report.txt")
	f, err := Create(link, false)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Abort()
	plantLink(t, victim, link)
	f.Write([]byte("report\n"))
	if err := f.Commit(); err == nil || !strings.Contains(err.Error(), "not replaced") {
		t.Errorf("commit over a link planted meanwhile: %v", err)
	}
	if got := readFile(t, victim); got != "root only\n" {
		t.Fatalf("the link's target was written: %q", got)
	}
	if st, err := os.Lstat(link); err != nil || st.Mode()&os.ModeSymlink == 0 {
		t.Errorf("the planted link was replaced without --force: %v %v", st, err)
	}
	onlyEntries(t, dir, "report.txt")
}

func TestDanglingSymlinkTargetNotCreated(t *testing.T) {
	requireRoot(t)
	dir := stickyDir(t)
	target := filepath.Join(t.TempDir(), "created-by-root")
	link := filepath.Join(dir, "out.json")
	plantLink(t, target, link)
	if err := writeAll(t, link, false, "x"); err == nil {
		t.Errorf("writing to a dangling link succeeded")
	}
	if _, err := os.Lstat(target); !os.IsNotExist(err) {
		t.Fatalf("the dangling link's target exists now: %v", err)
	}
	if err := writeAll(t, link, true, "x"); err != nil {
		t.Fatalf("--force: %v", err)
	}
	if _, err := os.Lstat(target); !os.IsNotExist(err) {
		t.Fatalf("--force created the dangling link's target: %v", err)
	}
	onlyEntries(t, dir, "out.json")
}

// Exactly 0600 whatever the umask: 0 would widen a plain create to 0666,
// 0277 would leave it unwritable.
func TestMode0600(t *testing.T) {
	for _, umask := range []int{0, 0o022, 0o277} {
		old := unix.Umask(umask)
		for _, force := range []bool{false, true} {
			path := filepath.Join(t.TempDir(), "report.txt")
			if force {
				os.WriteFile(path, []byte("old"), 0o644)
			}
			if err := writeAll(t, path, force, "secret argv"); err != nil {
				t.Fatal(err)
			}
			st, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if st.Mode().Perm() != 0o600 {
				t.Errorf("umask %#o force=%v: mode %v, want 0600", umask, force, st.Mode().Perm())
			}
		}
		unix.Umask(old)
	}
}

func TestExistingFileRefusedWithoutForce(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "report.txt")
	if err := os.WriteFile(path, []byte("previous report"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Create(path, false)
	if err == nil || !strings.Contains(err.Error(), "--force") || !strings.Contains(err.Error(), path) {
		t.Errorf("Create over an existing file: %v, want an error naming the path and --force", err)
	}
	if got := readFile(t, path); got != "previous report" {
		t.Errorf("existing file changed: %q", got)
	}
	// With force, it is replaced only at Commit.
	f, err := Create(path, true)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte("new report"))
	if got := readFile(t, path); got != "previous report" {
		t.Errorf("existing file changed before Commit: %q", got)
	}
	if err := f.Commit(); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, path); got != "new report" {
		t.Errorf("after Commit: %q", got)
	}
	onlyEntries(t, dir, "report.txt")
}

func TestRefusesDirectoriesAndDevices(t *testing.T) {
	dir := t.TempDir()
	for _, path := range []string{dir, dir + "/", filepath.Join(dir, ".."), "/dev/null", ""} {
		for _, force := range []bool{false, true} {
			if f, err := Create(path, force); err == nil {
				f.Abort()
				t.Errorf("Create(%q, force=%v) succeeded", path, force)
			}
		}
	}
	onlyEntries(t, dir)
}

func TestMissingDirectoryFailsAtCreate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nonexistent", "x.json")
	_, err := Create(path, false)
	if err == nil || !strings.Contains(err.Error(), path) {
		t.Errorf("Create in a missing directory: %v, want an error naming %s", err, path)
	}
}

func TestAbortLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	kept := filepath.Join(dir, "kept.txt")
	os.WriteFile(kept, []byte("kept"), 0o600)
	for _, path := range []string{filepath.Join(dir, "new.txt"), kept} {
		f, err := Create(path, true)
		if err != nil {
			t.Fatal(err)
		}
		f.Write([]byte("partial"))
		f.Abort()
		f.Abort() // idempotent
		if err := f.Commit(); err == nil {
			t.Errorf("Commit after Abort succeeded")
		}
	}
	onlyEntries(t, dir, "kept.txt")
	if got := readFile(t, kept); got != "kept" {
		t.Errorf("aborted write changed the file: %q", got)
	}
	// Abort after Commit keeps the committed file.
	path := filepath.Join(dir, "done.txt")
	f, err := Create(path, false)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte("done"))
	if err := f.Commit(); err != nil {
		t.Fatal(err)
	}
	f.Abort()
	if got := readFile(t, path); got != "done" {
		t.Errorf("Abort after Commit: %q", got)
	}
	onlyEntries(t, dir, "done.txt", "kept.txt")
}

// A link in the directory part of the path, owned by another user in a
// directory that user controls, is not followed: it could send root's file
// into /etc. Root's own links are followed.
func TestDirectoryLinkOfAnotherUserRefused(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: plants a link owned by another user (uid 65534)")
	}
	home := t.TempDir() // not sticky: the user's own directory
	victimDir := t.TempDir()
	link := filepath.Join(home, "out")
	if err := os.Symlink(victimDir, link); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(link, nobody, nobody); err != nil {
		t.Fatal(err)
	}
	if _, err := Create(filepath.Join(link, "r.json"), true); err == nil || !strings.Contains(err.Error(), "owned by uid 65534") {
		t.Fatalf("Create through another user's directory link: %v, want a refusal naming the link's owner", err)
	}
	if ents, _ := os.ReadDir(victimDir); len(ents) != 0 {
		t.Errorf("the link's target got %d entries", len(ents))
	}
	// The same link owned by root is followed.
	if err := os.Lchown(link, 0, 0); err != nil {
		t.Fatal(err)
	}
	f, err := Create(filepath.Join(link, "r.json"), false)
	if err != nil {
		t.Fatalf("Create through root's link: %v", err)
	}
	if _, err := f.Write([]byte("{}\n")); err != nil {
		t.Fatal(err)
	}
	if err := f.Commit(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(victimDir, "r.json")); err != nil {
		t.Errorf("through root's link: %v", err)
	}
}
