// Package bridge is vnet's userspace layer-2 switch.
//
// A Switch connects Ports: VM-facing ports (TAP devices, QEMU sockets,
// in-process netstack VMs) and links to other daemons (the star link to the
// proxy, fast-path links between hosts). It forwards each Ethernet frame by,
// in order:
//
//  1. forwarding rules (VNET style: src and dst match -> link or port; the most
//     specific rules win and all rules tied at the top score fire),
//  2. the MAC table (learned from source addresses on VM ports and star
//     links; announced by the peer of a fast-path link, or at the proxy
//     pinned to the star link of the host that reports the VM),
//  3. flooding on the star: every VM port and star link except the one the
//     frame came in on. Floods never cross fast-path links, so the overlay
//     stays a tree for broadcast traffic and cannot loop.
//
// Stages and ownership. Each port has one reader goroutine (routineRead) that
// reads a batch into pooled buffers, decides each frame's outputs and hands
// the buffer to the output port's bounded queue; and one writer goroutine
// (routineWrite) that drains its queue in batches and writes them. A buffer
// has exactly one owner at a time: a flooded frame is copied for every output
// but the first. A full queue drops the frame and counts it, so one slow port
// never stalls the switch. Nothing on this path allocates.
package bridge

import (
	"fmt"
	"net"
	"strings"
)

// MAC is an Ethernet address.
type MAC [6]byte

// Broadcast is ff:ff:ff:ff:ff:ff.
var Broadcast = MAC{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// IsMulticast reports whether m is a group address (broadcast included).
func (m MAC) IsMulticast() bool { return m[0]&1 == 1 }

// IsZero reports whether m is 00:00:00:00:00:00.
func (m MAC) IsZero() bool { return m == MAC{} }

func (m MAC) String() string { return net.HardwareAddr(m[:]).String() }

// ParseMAC parses a 6-byte MAC in colon, dash or dot form, any case.
func ParseMAC(s string) (MAC, error) {
	hw, err := net.ParseMAC(strings.TrimSpace(s))
	if err != nil || len(hw) != 6 {
		return MAC{}, fmt.Errorf("malformed MAC %q (want 6 bytes like 52:54:00:12:34:56)", s)
	}
	var m MAC
	copy(m[:], hw)
	return m, nil
}

// Role says what a port is for; it decides where floods go.
type Role uint8

const (
	// RoleLocal is a VM-facing port: TAP, QEMU socket, netstack VM, LAN.
	RoleLocal Role = iota
	// RoleStar is a link of the resilient star (host <-> proxy).
	RoleStar
	// RoleFast is a fast-path link between two hosts; it carries no floods.
	RoleFast
)

func (r Role) String() string {
	switch r {
	case RoleLocal:
		return "local"
	case RoleStar:
		return "star"
	case RoleFast:
		return "fast"
	}
	return fmt.Sprintf("role(%d)", uint8(r))
}

// frame is one pooled buffer: Headroom bytes (whose last VnetHdrLen are
// the header slot, offload.go), then the frame of length n. buf is BufSize
// bytes, or SuperBufSize for frames of an OffloadPort.
type frame struct {
	buf  []byte
	n    int
	from *portState // the port it came in on (nil for frames the switch made)
	// unsealer is set while the payload is still sealed end to end
	// (sealed.go); meta goes with it.
	unsealer Unsealer
	meta     [SealMetaLen]byte
}

func (f *frame) data() []byte { return f.buf[Headroom : Headroom+f.n] }

// slot is the frame's virtio-net header slot.
func (f *frame) slot() []byte { return f.buf[Headroom-VnetHdrLen : Headroom] }

func (f *frame) super() bool { return len(f.buf) > BufSize }
