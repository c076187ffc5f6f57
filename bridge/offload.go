package bridge

// Offloads: frames that travel through the switch with a virtio-net header.
//
// A TAP device opened with IFF_VNET_HDR and TSO offloads hands over TCP
// segments of up to 64 KB behind one set of headers ("super-frames") and
// leaves checksums for "the hardware" to fill in; it takes them back the
// same way. Such frames cross the switch, and links whose peer understands
// them, whole: one read, one decision, one write per 64 KB instead of per
// 1.5 KB, and they are cut back into Ethernet-sized frames only where a
// port cannot take them (see OffloadPort).
//
// Every pooled buffer keeps a header slot: the VnetHdrLen bytes just before
// the frame (buf[Headroom-VnetHdrLen:Headroom]). The slot is all zero for a
// plain frame whose checksums are complete; that is what every port that
// is not an OffloadPort reads and writes. Fields are little-endian (virtio
// 1.0; the native order of every platform vnet builds for).

import (
	"encoding/binary"
	"errors"
)

const (
	// VnetHdrLen is the size of struct virtio_net_hdr (without num_buffers).
	VnetHdrLen = vnetHdrLen
	// MaxSuperFrame is the largest frame an OffloadPort reads or writes:
	// a 64 KB IP packet behind an Ethernet header and one VLAN tag.
	MaxSuperFrame = 65535 + 18
	// SuperBufSize is the size of a pooled buffer for super-frames.
	SuperBufSize = Headroom + MaxSuperFrame + SealOverhead

	vnetHdrLen    = 10 // struct virtio_net_hdr
	vnetNeedCsum  = 1  // VIRTIO_NET_HDR_F_NEEDS_CSUM
	vnetDataValid = 2  // VIRTIO_NET_HDR_F_DATA_VALID
	gsoTCPv4      = 1  // VIRTIO_NET_HDR_GSO_TCPV4
	gsoTCPv6      = 4  // VIRTIO_NET_HDR_GSO_TCPV6
	gsoECN        = 0x80
)

// ErrNoTAPOffloads is wrapped by OpenTAPOffload's error when the kernel
// refuses the offloads (the caller may fall back to OpenTAP).
var ErrNoTAPOffloads = errors.New("the kernel refuses TAP offloads")

// OffloadPort is a Port that carries the header slot: its Read fills
// bufs[i][offset-VnetHdrLen:offset] with each frame's virtio-net header
// (sizes[i] counts the frame alone, up to MaxSuperFrame; bufs[i] are large
// enough), and its Write takes frames whose slot may say "checksum left
// to fill" or "cut me into segments of this size", and does what the
// header asks or passes it on (to a TAP device, or a link whose peer is an
// OffloadPort too). Offloads is fixed for the port's life; false makes the
// port a plain Port.
//
// The switch hands a plain port only plain frames: it completes checksums
// and cuts super-frames (software GSO, gso.go) on the way out.
type OffloadPort interface {
	Port
	Offloads() bool
}

// VnetHdr is a decoded virtio-net header.
type VnetHdr struct {
	Flags      uint8
	GSOType    uint8
	HdrLen     uint16
	GSOSize    uint16
	CsumStart  uint16
	CsumOffset uint16
}

// ParseVnetHdr decodes b[:VnetHdrLen].
func ParseVnetHdr(b []byte) VnetHdr {
	_ = b[VnetHdrLen-1]
	return VnetHdr{Flags: b[0], GSOType: b[1], HdrLen: binary.LittleEndian.Uint16(b[2:]),
		GSOSize: binary.LittleEndian.Uint16(b[4:]), CsumStart: binary.LittleEndian.Uint16(b[6:]),
		CsumOffset: binary.LittleEndian.Uint16(b[8:])}
}

// Put encodes h into b[:VnetHdrLen].
func (h VnetHdr) Put(b []byte) {
	_ = b[VnetHdrLen-1]
	b[0], b[1] = h.Flags, h.GSOType
	binary.LittleEndian.PutUint16(b[2:], h.HdrLen)
	binary.LittleEndian.PutUint16(b[4:], h.GSOSize)
	binary.LittleEndian.PutUint16(b[6:], h.CsumStart)
	binary.LittleEndian.PutUint16(b[8:], h.CsumOffset)
}

// IsPlainHdr reports whether the header slot b[:VnetHdrLen] asks nothing:
// no checksum to fill, no segmentation (a "data valid" note is no request).
func IsPlainHdr(b []byte) bool {
	_ = b[VnetHdrLen-1]
	return b[0]&^vnetDataValid == 0 && b[1] == 0
}

// ValidVnetHdr reports whether header h can describe a frame of n bytes:
// known flags and segmentation types (TCP over IPv4 or IPv6, ECN or not),
// a checksum field inside the frame, a segment size for a super-frame, and
// no frame beyond MaxFrame that is not a super-frame. Hostile headers
// (from a peer, or a misbehaving kernel) are dropped by this check before
// anything acts on them.
func ValidVnetHdr(h VnetHdr, n int) bool {
	if h.Flags&^(vnetNeedCsum|vnetDataValid) != 0 || n < MinFrame || n > MaxSuperFrame {
		return false
	}
	if h.Flags&vnetNeedCsum != 0 && int(h.CsumStart)+int(h.CsumOffset)+2 > n {
		return false
	}
	switch h.GSOType &^ gsoECN {
	case 0:
		return h.GSOType == 0 && n <= MaxFrame
	case gsoTCPv4, gsoTCPv6:
		return h.GSOSize > 0
	}
	return false
}

// plainFrames turns f (with a non-plain header slot) into plain frames:
// a checksum is completed in place (f itself is emitted); a super-frame
// is cut into segments of GSOSize payload bytes, each in a fresh buffer,
// and f is released. emit is called once per plain frame, in order. It
// reports false, having emitted nothing, for a frame it cannot make plain
// (not TCP over IP, or a checksum field outside the frame).
func (s *Switch) plainFrames(f *frame, emit func(*frame)) bool {
	slot := f.slot()
	h := ParseVnetHdr(slot)
	d := f.data()
	if !ValidVnetHdr(h, len(d)) {
		return false
	}
	gso := h.GSOType &^ gsoECN
	if gso == 0 {
		if h.Flags&vnetNeedCsum != 0 && !completeChecksum(d, int(h.CsumStart), int(h.CsumOffset)) {
			return false
		}
		clear(slot)
		emit(f)
		return true
	}
	var seg segmenter
	if !seg.start(d, int(h.GSOSize), gso == gsoTCPv4) {
		return false
	}
	for seg.pending() {
		c := s.getFrame(false)
		copied, n := seg.next(c.buf[Headroom:])
		if copied < n { // a segment size beyond a frame: cannot be plain
			s.putFrame(c)
			for seg.pending() {
				seg.next(nil)
			}
			// Segments already emitted went out; the rest is lost, as a
			// NIC would lose what it cannot send.
			s.putFrame(f)
			return true
		}
		c.n, c.from = n, f.from
		clear(c.slot())
		emit(c)
	}
	s.putFrame(f)
	return true
}

// completeChecksum finishes a checksum the kernel left for the hardware:
// the 16-bit ones' complement of frame[start:] goes to frame[start+off]
// (the field already holds the pseudo-header's sum).
func completeChecksum(frame []byte, start, off int) bool {
	if start >= len(frame) || start+off+2 > len(frame) {
		return false
	}
	c := ^fold(sum16(0, frame[start:]))
	if c == 0 && off == 6 { // UDP: zero means "no checksum"
		c = 0xffff
	}
	binary.BigEndian.PutUint16(frame[start+off:], c)
	return true
}
