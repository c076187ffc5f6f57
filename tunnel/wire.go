package tunnel

import (
	"encoding/binary"
	"fmt"

	"vnet/bridge"
)

// Wire format of a stream link (inside TLS). Every message is a 4-byte
// header followed by its payload:
//
//	 0               1               2               3
//	+---------------+---------------+---------------+---------------+
//	|     type      |      payload length, 24 bits, big-endian      |
//	+---------------+---------------+---------------+---------------+
//	|                     payload (length bytes)                    |
//
// Version history: 1 (this one).
const (
	WireVersion = 1
	HeaderLen   = 4

	// MsgFrame carries one Ethernet frame, 14..bridge.MaxFrame bytes.
	MsgFrame byte = 1
	// MsgControl carries one JSON control message, up to MaxControl bytes.
	// The first message each way is the Hello.
	MsgControl byte = 2
	// MsgPing carries 8 bytes: the sender's monotonic clock in nanoseconds.
	MsgPing byte = 3
	// MsgPong echoes a ping's 8 bytes back.
	MsgPong byte = 4
	// MsgFrameGSO carries a super-frame: its virtio-net header
	// (bridge.VnetHdrLen bytes, little-endian) then the frame, up to
	// bridge.MaxSuperFrame bytes. Sent only on links where both sides
	// offered it (Hello.Offload).
	MsgFrameGSO byte = 5

	// MaxControl bounds a control message.
	MaxControl = 1 << 20
)

// PutHeader writes a message header into b[:HeaderLen].
func PutHeader(b []byte, typ byte, n int) {
	binary.BigEndian.PutUint32(b, uint32(typ)<<24|uint32(n))
}

// ParseHeader decodes and validates a header.
func ParseHeader(b []byte) (typ byte, n int, err error) {
	if len(b) < HeaderLen {
		return 0, 0, fmt.Errorf("short header: %d bytes", len(b))
	}
	v := binary.BigEndian.Uint32(b)
	typ, n = byte(v>>24), int(v&0xffffff)
	switch typ {
	case MsgFrame:
		if n < bridge.MinFrame || n > bridge.MaxFrame {
			return typ, n, fmt.Errorf("frame of %d bytes (allowed %d..%d)", n, bridge.MinFrame, bridge.MaxFrame)
		}
	case MsgFrameGSO:
		if n < bridge.VnetHdrLen+bridge.MinFrame || n > bridge.VnetHdrLen+bridge.MaxSuperFrame {
			return typ, n, fmt.Errorf("super-frame of %d bytes (allowed %d..%d)", n, bridge.VnetHdrLen+bridge.MinFrame, bridge.VnetHdrLen+bridge.MaxSuperFrame)
		}
	case MsgControl:
		if n == 0 || n > MaxControl {
			return typ, n, fmt.Errorf("control message of %d bytes (allowed 1..%d)", n, MaxControl)
		}
	case MsgPing, MsgPong:
		if n != 8 {
			return typ, n, fmt.Errorf("keepalive of %d bytes (want 8)", n)
		}
	default:
		return typ, n, fmt.Errorf("unknown message type %d", typ)
	}
	return typ, n, nil
}
