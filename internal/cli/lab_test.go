package cli

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// Bad flags and values are usage errors (exit 2) that say what is wrong,
// before any namespace is made.
func TestLabBadFlags(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"lab", "--range", "7"}, "--range"},
		{[]string{"lab", "--range", "5000"}, "--range"},
		{[]string{"lab", "--range", "many"}, "range"},
		{[]string{"lab", "--pattern", "nope"}, "--pattern"},
		{[]string{"lab", "-o", "xml"}, "--output"},
		{[]string{"lab", "--from", "x.json", "--range", "64"}, "--from"},
		{[]string{"lab", "--from", "x.json", "--refresh"}, "--refresh"},
		{[]string{"lab", "extra"}, "unexpected arguments"},
		{[]string{"lab", "--bogus"}, "bogus"},
	} {
		code, _, stderr := runCLI(c.args...)
		if code != 2 || !strings.Contains(stderr, c.want) {
			t.Errorf("%q: want exit 2 naming %s, got %d: %s", c.args, c.want, code, stderr)
		}
	}
}

// labContract is the JSON contract of issue #12, decoded strictly.
type labContract struct {
	Kernel   string `json:"kernel"`
	Range    int    `json:"range"`
	Patterns []struct {
		Pattern  string `json:"pattern"`
		Baseline struct {
			Made       int    `json:"made"`
			Possible   int    `json:"possible"`
			FailedCall string `json:"failed_call"`
			Errno      string `json:"errno"`
		} `json:"baseline"`
		Remedies []struct {
			Remedy     string `json:"remedy"`
			Verdict    string `json:"verdict"`
			Made       int    `json:"made"`
			FailedCall string `json:"failed_call"`
			Errno      string `json:"errno"`
			Note       string `json:"note"`
		} `json:"remedies"`
	} `json:"patterns"`
}

func decodeLab(t *testing.T, out string) labContract {
	t.Helper()
	var c labContract
	if err := json.Unmarshal([]byte(out), &c); err != nil {
		t.Fatalf("lab -o json: %v\n%s", err, out)
	}
	// Every contract field is present by name, not just decodable.
	var raw map[string]any
	json.Unmarshal([]byte(out), &raw)
	for _, k := range []string{"kernel", "range", "patterns"} {
		if _, ok := raw[k]; !ok {
			t.Errorf("lab -o json lacks %q", k)
		}
	}
	return c
}

var verdicts = []string{"fixes", "moves-to-connect", "partial", "no-effect", "unavailable"}

func requireLabRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the lab needs root: it makes network namespaces")
	}
}

// -o json decodes into the contract; a second run prints the cached
// result and says so; --refresh measures again.
func TestLabJSONAndCache(t *testing.T) {
	requireLabRoot(t)
	dir := t.TempDir()
	t.Setenv("PORTSLEUTH_LAB_CACHE", dir)
	code, out, stderr := runCLI("lab", "--pattern", "port-in-use", "-o", "json")
	if code != 0 {
		t.Fatalf("lab: exit %d: %s", code, stderr)
	}
	c := decodeLab(t, out)
	if c.Kernel == "" || c.Range != 64 || len(c.Patterns) != 2 {
		t.Fatalf("lab -o json: %+v", c)
	}
	for _, p := range c.Patterns {
		if p.Pattern != "port-in-use" || p.Baseline.FailedCall != "bind" || p.Baseline.Errno != "EADDRINUSE" {
			t.Errorf("pattern %+v", p)
		}
		for _, r := range p.Remedies {
			if !slices.Contains(verdicts, r.Verdict) {
				t.Errorf("%s: verdict %q is not in the contract", r.Remedy, r.Verdict)
			}
		}
	}
	if files, _ := filepath.Glob(filepath.Join(dir, "*.json")); len(files) != 1 {
		t.Errorf("cache files: %v", files)
	}
	code, out2, stderr := runCLI("lab", "--pattern", "port-in-use")
	if code != 0 || !strings.Contains(stderr, "cached result") || !strings.Contains(out2, "port-in-use") {
		t.Errorf("second run: exit %d, stderr %q, stdout %q", code, stderr, out2)
	}
	code, _, stderr = runCLI("lab", "--pattern", "port-in-use", "--refresh")
	if code != 0 || strings.Contains(stderr, "cached result") {
		t.Errorf("--refresh: exit %d, stderr %q", code, stderr)
	}
}

// lab --from runs each seed incident's culprit shape and names the process.
func TestLabFromSeedRecordings(t *testing.T) {
	requireLabRoot(t)
	for name, pattern := range map[string]string{
		"bind-any-before-connect": "bind-any-before-connect",
		"bind-ip-before-connect":  "bind-ip-before-connect",
		"timewait-exhaustion":     "connect-port-exhaustion",
		"port-in-use":             "port-in-use",
		"tuple-conflict":          "connect-tuple-conflict",
	} {
		rec := filepath.Join("../../testdata/recordings", name+".json")
		// The recording, and the report made of it.
		rep := filepath.Join(t.TempDir(), name+".report.json")
		if code, _, stderr := runCLI("report", "--replay", rec, "-o", "json", "--file", rep); code != 0 {
			t.Fatalf("%s: report: exit %d: %s", name, code, stderr)
		}
		for _, path := range []string{rec, rep} {
			code, out, stderr := runCLI("lab", "--from", path, "-o", "json")
			if code != 0 {
				t.Errorf("%s: exit %d: %s", path, code, stderr)
				continue
			}
			c := decodeLab(t, out)
			if len(c.Patterns) == 0 || c.Patterns[0].Pattern != pattern || len(c.Patterns[0].Remedies) == 0 {
				t.Errorf("%s: want a %s shape with remedies, got %+v", path, pattern, c.Patterns)
				continue
			}
			// The lab reproduces the incident before it tries a remedy.
			if b := c.Patterns[0].Baseline; b.FailedCall == "none" {
				t.Errorf("%s: the %s shape's baseline did not fail (%d made): the incident is not reproduced", path, pattern, b.Made)
			}
			if !strings.Contains(out, `"pid"`) {
				t.Errorf("%s: the culprit is not named: %s", path, out)
			}
		}
	}
}

// A process name reaches the terminal escaped.
func TestLabFromEscapesNames(t *testing.T) {
	requireLabRoot(t)
	b, err := os.ReadFile("../../testdata/recordings/tuple-conflict.json")
	if err != nil {
		t.Fatal(err)
	}
	evil := bytes.ReplaceAll(b, []byte(`"cli.test"`), []byte(`"\u001b]0;x\u0007"`))
	path := filepath.Join(t.TempDir(), "evil.json")
	if err := os.WriteFile(path, evil, 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, stderr := runCLI("lab", "--from", path)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if strings.ContainsRune(out, 0x1b) || !strings.Contains(out, `\x1b]0;x\x07`) {
		t.Errorf("name not escaped: %q", out)
	}
}

// withKernel copies a seed recording, stamped with this host's kernel as
// if it had been recorded here.
func withKernel(t *testing.T, name, release string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "testdata", "recordings", name+".json"))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	m["kernel"], _ = json.Marshal(release)
	out, _ := json.Marshal(m)
	path := filepath.Join(t.TempDir(), name+".json")
	if err := os.WriteFile(path, out, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// A report cites the lab only for the kernel the failures happened on and
// only once the lab has run there; --lab runs it, and later reports cite
// the cached verdicts, with no claim of the advice refuted on this kernel.
func TestReportCitesTheLab(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("report --lab runs the lab: unshare(CLONE_NEWNET) needs CAP_SYS_ADMIN (run as root)")
	}
	t.Setenv("PORTSLEUTH_LAB_CACHE", t.TempDir())
	release := labRelease(t)
	rec := withKernel(t, "bind-any-before-connect", release)

	// An old recording names no kernel: nothing cited, and the report says why.
	code, out, stderr := runCLI("report", "--replay", filepath.Join("..", "..", "testdata", "recordings", "bind-any-before-connect.json"))
	if code != 0 || !strings.Contains(out, "remedy lab: the failures' kernel is not recorded") {
		t.Fatalf("old recording: exit %d\n%s%s", code, out, stderr)
	}
	// No lab run yet on this kernel: the report says how to run it, runs nothing.
	code, out, stderr = runCLI("report", "--replay", rec)
	if code != 0 || !strings.Contains(out, "remedy lab: the remedy lab has not run on "+release) || strings.Contains(out, "     lab: ") {
		t.Fatalf("before the lab: exit %d\n%s%s", code, out, stderr)
	}
	for _, args := range [][]string{{"--lab"}, {}} { // runs the lab, then cites its cache
		code, out, stderr = runCLI(append([]string{"report", "--replay", rec, "-o", "json"}, args...)...)
		if code != 0 {
			t.Fatalf("%q: exit %d: %s", args, code, stderr)
		}
		var r struct {
			Kernel    string `json:"kernel"`
			LabNote   string `json:"lab_note"`
			Processes []struct {
				Patterns []struct {
					Pattern string `json:"pattern"`
					Lab     *struct {
						Kernel   string   `json:"kernel"`
						Proven   []string `json:"proven"`
						Refuted  []string `json:"refuted"`
						Remedies []struct {
							Remedy, Verdict string
						} `json:"remedies"`
					} `json:"lab"`
				} `json:"patterns"`
			} `json:"processes"`
		}
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			t.Fatal(err)
		}
		if r.Kernel != release || r.LabNote != "" || len(r.Processes) == 0 {
			t.Fatalf("%q: kernel %q, lab note %q, %d processes", args, r.Kernel, r.LabNote, len(r.Processes))
		}
		pat := r.Processes[0].Patterns[0]
		if pat.Lab == nil || pat.Lab.Kernel != release || len(pat.Lab.Proven) == 0 || len(pat.Lab.Refuted) != 0 {
			t.Fatalf("%q: %s: lab citation %+v", args, pat.Pattern, pat.Lab)
		}
		i := slices.IndexFunc(pat.Lab.Remedies, func(x struct{ Remedy, Verdict string }) bool { return x.Remedy == "ip_bind_address_no_port" })
		if i < 0 || pat.Lab.Remedies[i].Verdict != "fixes" {
			t.Errorf("%q: ip_bind_address_no_port not cited as a fix: %+v", args, pat.Lab.Remedies)
		}
	}
	code, out, _ = runCLI("report", "--replay", rec)
	if code != 0 || !strings.Contains(out, "     lab:      proven on "+release) || strings.Contains(out, "LAB REFUTES") {
		t.Errorf("text report after the lab:\n%s", out)
	}
}

func labRelease(t *testing.T) string {
	t.Helper()
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		t.Fatal(err)
	}
	return unix.ByteSliceToString(u.Release[:])
}
