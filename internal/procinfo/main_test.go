package procinfo

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"testing"
	"time"
)

// helperEnv makes the test binary act as a process for the tests to inspect
// instead of running tests: "parent" starts a "child" copy of itself (same
// executable) and prints its pid; both live until stdin closes.
const helperEnv = "PORTSLEUTH_PROCINFO_HELPER"

// helperLifetime bounds a helper whose test died without cleaning up.
const helperLifetime = 60 * time.Second

func TestMain(m *testing.M) {
	switch os.Getenv(helperEnv) {
	case "":
		os.Exit(m.Run())
	case "parent":
		os.Exit(helperParent())
	default:
		waitForStdin()
		os.Exit(0)
	}
}

func helperParent() int {
	child := exec.Command("/proc/self/exe")
	child.Env = append(os.Environ(), helperEnv+"=child")
	child.Stdin = os.Stdin // the test closing its pipe ends both
	if err := child.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "starting child:", err)
		return 1
	}
	fmt.Println(child.Process.Pid)
	waitForStdin()
	_ = child.Process.Kill()
	_ = child.Wait()
	return 0
}

func waitForStdin() {
	done := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(helperLifetime):
	}
}
