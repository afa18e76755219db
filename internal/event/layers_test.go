package event

import (
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// The data path reads one way: kernel programs -> load/attach/read (probe,
// pressure: the only packages that import cilium/ebpf) -> decode -> classify
// -> collect/enrich -> render/export. The layers from classification up must
// build, and be testable, with no BPF anywhere below them.
func TestPureLayersKnowNoBPF(t *testing.T) {
	pure := []string{"event", "attrib", "pools", "enrichq", "report", "watch", "metrics", "netns", "procinfo", "term", "lab", "htmlreport"}
	goTool := filepath.Join(runtime.GOROOT(), "bin", "go")
	for _, p := range pure {
		out, err := exec.Command(goTool, "list", "-deps", "github.com/portsleuth/portsleuth/internal/"+p).CombinedOutput()
		if err != nil {
			t.Fatalf("go list -deps %s: %v\n%s", p, err, out)
		}
		for _, dep := range strings.Fields(string(out)) {
			if strings.HasPrefix(dep, "github.com/cilium/ebpf") || dep == "github.com/portsleuth/portsleuth/gen" ||
				dep == "github.com/portsleuth/portsleuth/internal/probe" || dep == "github.com/portsleuth/portsleuth/internal/pressure" ||
				dep == "github.com/portsleuth/portsleuth/internal/decode" {
				t.Errorf("internal/%s depends on %s: a pure layer must know no BPF", p, dep)
			}
		}
	}
}
