package probe

import (
	"encoding/binary"
	"fmt"

	"github.com/portsleuth/portsleuth/gen"
)

func decodeRaw(b []byte, out *gen.PortsleuthPsEvent) error {
	if _, err := binary.Decode(b, binary.NativeEndian, out); err != nil {
		return fmt.Errorf("decoding a %d-byte ring buffer record: %w", len(b), err)
	}
	return nil
}
