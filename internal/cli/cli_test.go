package cli

import (
	"bytes"
	"strings"
	"testing"
)

func TestUsageErrorsExit2(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"frobnicate"},
		{"watch", "--bogus"},
		{"watch", "-o", "yaml"},
		{"watch", "--pid", "-3"},
		{"watch", "--duration", "soon"},
		{"watch", "stray"},
		{"report", "extra"},
		{"report", "--"},
		{"report", "--replay", "x.json", "--", "true"},
		{"ports", "-o", "xml"},
		{"ports", "--top", "0"},
		{"ports", "stray"},
	} {
		var out, errb bytes.Buffer
		if code := Run(args, &out, &errb); code != 2 {
			t.Errorf("portsleuth %q: exit %d, want 2 (stderr %q)", args, code, errb.String())
		}
		if !strings.Contains(errb.String(), "Usage:") {
			t.Errorf("portsleuth %q: no usage on stderr: %q", args, errb.String())
		}
		if out.Len() != 0 {
			t.Errorf("portsleuth %q wrote to stdout: %q", args, out.String())
		}
	}
}

func TestHelpAndVersionExit0(t *testing.T) {
	for _, args := range [][]string{{"help"}, {"version"}, {"watch", "--help"}, {"report", "-h"}} {
		var out, errb bytes.Buffer
		if code := Run(args, &out, &errb); code != 0 {
			t.Errorf("portsleuth %q: exit %d", args, code)
		}
	}
}

func TestReplayNeedsNoPrivileges(t *testing.T) {
	var out, errb bytes.Buffer
	code := Run([]string{"report", "--replay", "../../testdata/recordings/port-in-use.json", "-o", "json"}, &out, &errb)
	if code != 0 || !strings.Contains(out.String(), `"pattern": "port-in-use"`) {
		t.Errorf("exit %d, stdout %s, stderr %s", code, out.String(), errb.String())
	}
}
