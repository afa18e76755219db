package deploy

import (
	"bufio"
	"bytes"
	"debug/elf"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
)

// containerfileStages returns the FROM lines of the Containerfile, and the
// final stage's ENTRYPOINT as JSON.
func containerfileStages(t *testing.T) (froms []string, entrypoint []string) {
	t.Helper()
	sc := bufio.NewScanner(bytes.NewReader(readFile(t, Containerfile)))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case strings.HasPrefix(line, "FROM "):
			froms = append(froms, strings.Fields(line)[1])
		case strings.HasPrefix(line, "ENTRYPOINT "):
			entrypoint = nil
			if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "ENTRYPOINT ")), &entrypoint); err != nil {
				t.Fatalf("ENTRYPOINT is not exec form: %v", err)
			}
		}
	}
	return froms, entrypoint
}

func TestContainerfile(t *testing.T) {
	froms, entrypoint := containerfileStages(t)
	if len(froms) == 0 || froms[len(froms)-1] != "scratch" {
		t.Errorf("final stage FROM %v, want scratch", froms)
	}
	if !regexp.MustCompile(`CGO_ENABLED=0 go build`).Match(readFile(t, Containerfile)) {
		t.Error("the binary is not built with CGO_ENABLED=0: scratch has no libc")
	}
	c := agentContainer(t, loadManifests(t).ds)
	if len(entrypoint) != 1 || len(c.Command) != 1 || c.Command[0] != entrypoint[0] {
		t.Errorf("DaemonSet command %q, image ENTRYPOINT %q: want the same binary", c.Command, entrypoint)
	}
	// The builder's Go is the one go.mod asks for.
	gomod, err := os.ReadFile("../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^go (\S+)$`).FindSubmatch(gomod)
	if m == nil {
		t.Fatal("no go directive in go.mod")
	}
	if want := "golang:" + string(m[1]) + "-"; !strings.Contains(froms[0], want) {
		t.Errorf("build stage FROM %s, want %s* (go.mod's go %s)", froms[0], want, m[1])
	}
}

// The image's build command makes a binary that needs nothing from the
// image: no interpreter, no shared library.
func TestStaticBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds portsleuth")
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	out := filepath.Join(t.TempDir(), "portsleuth")
	cmd := exec.Command(goBin, "build", "-trimpath", "-ldflags=-s -w", "-o", out, "./cmd/portsleuth")
	cmd.Dir = ".."
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("CGO_ENABLED=0 go build: %v\n%s", err, b)
	}
	f, err := elf.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Errorf("the binary has a %s segment: it is not static", p.Type)
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		t.Errorf("the binary needs %v", libs)
	}
}
