package cli

import (
	"testing"
)

// A blocking connect() that a signal interrupts is restarted by the kernel
// (SA_RESTART): the program makes one call, which succeeds, and the report
// counts one, never an extra error for the interrupted attempt (the syscall
// layer sees that attempt end with -ERESTARTSYS).
func TestRestartedConnectCountedOnce(t *testing.T) {
	r, res := traceScenario(t, "restarted-connect", "--all")
	if res.Extra["signalled"] != 1 || res.ConnectsOK != 2 || res.ConnectsOther != 0 || res.ConnectsFail != 0 {
		t.Fatalf("the scenario itself: %+v", res)
	}
	p := findProcess(r, res.PID)
	if p == nil {
		t.Fatalf("pid %d is not in the --all report", res.PID)
	}
	if p.Connects.OK != uint64(res.ConnectsOK) || p.Connects.Failed != 0 || p.Connects.OtherErrors != 0 {
		t.Errorf("connects %+v: want %d ok and nothing else, as the program saw", p.Connects, res.ConnectsOK)
	}
}
