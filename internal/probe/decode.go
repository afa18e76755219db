package probe

import (
	"fmt"
	"unsafe"

	"github.com/portsleuth/portsleuth/gen"
)

// decodeRaw copies a ring-buffer record into the generated struct, whose
// layout is the C one (structs.HostLayout): no reflection on the hot path.
func decodeRaw(b []byte, out *gen.PortsleuthPsEvent) error {
	if len(b) < int(unsafe.Sizeof(*out)) {
		return fmt.Errorf("ring buffer record of %d bytes, want %d", len(b), unsafe.Sizeof(*out))
	}
	*out = *(*gen.PortsleuthPsEvent)(unsafe.Pointer(&b[0]))
	return nil
}
