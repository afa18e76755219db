package probe

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

const tracefsDir = "/sys/kernel/tracing"

// ensureTracefs mounts tracefs where the kernel expects it when neither it nor
// debugfs is mounted: attaching a tracepoint needs its id from there. Minimal
// hosts and containers often boot without it. The mount it made, if any, is
// returned for Close to undo; the directory is the kernel's, not ours.
func ensureTracefs() (*ownMount, error) {
	for _, p := range []string{tracefsDir + "/events", "/sys/kernel/debug/tracing/events"} {
		if _, err := os.Stat(p); err == nil {
			return nil, nil
		}
	}
	m, err := mountOwn("tracefs", tracefsDir, "tracefs", nil)
	if err != nil {
		if errors.Is(err, unix.EPERM) {
			return nil, fmt.Errorf("tracefs is not mounted and mounting it at %s needs CAP_SYS_ADMIN: %w", tracefsDir, err)
		}
		return nil, fmt.Errorf("tracefs is not mounted and mounting it at %s failed: %w", tracefsDir, err)
	}
	return m, nil
}
