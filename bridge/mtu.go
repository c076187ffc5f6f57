package bridge

import (
	"encoding/binary"
	"math/bits"
)

// Path MTU across links that do not split frames.
//
// A datagram link whose splitting is off (vnet host --fragment=false)
// carries a frame only if it fits one datagram of its path: its
// FrameLimit. The switch's writer toward such a port does what a router
// in front of a smaller link does, so the VMs' own path-MTU discovery
// works and nothing disappears silently:
//
//   - a TCP SYN (or SYN-ACK) whose MSS option asks for more than fits gets
//     its MSS lowered to limit - 14 - IP header - 20, the TCP checksum
//     fixed incrementally (RFC 1624);
//   - an IPv4 packet too big with DF set is dropped ("too-big") and
//     answered, to the port it came from, with ICMP "fragmentation needed"
//     (type 3 code 4) carrying the next-hop MTU; an IPv6 packet too big is
//     answered with ICMPv6 "packet too big" (type 2). The answer comes from
//     the packet's destination address (a VM takes such errors from anyone:
//     they quote the packet that caused them), with the Ethernet addresses
//     swapped;
//   - anything else too big is dropped and counted: IPv4 without DF too
//     (vnet does not fragment IP; a VM that clears DF asked for a network
//     that does, which is rare and would then need an IP MTU that fits);
//     non-IP frames.
//
// IPv6 requires every link to carry 1280-byte packets (RFC 8200 section
// 5): a link must split those itself when its path cannot. So frames of
// up to MinIPv6Frame bytes are always passed to the link, which splits
// them if it has to, and IPv6's limit is never below that: a packet too
// big learns an MTU the link really carries.

// LimitPort is a Port that cannot carry every frame whole.
type LimitPort interface {
	Port
	// FrameLimit is the largest frame (Ethernet header included) the port
	// carries whole now; 0 means no limit. The writer asks once per batch.
	FrameLimit() int
}

const (
	ipv6MinMTU = 1280
	// MinIPv6Frame is the largest frame every port takes, split by the
	// port if it must: IPv6's minimum MTU plus the Ethernet header.
	MinIPv6Frame = 14 + ipv6MinMTU

	etherIPv4  = 0x0800
	etherIPv6  = 0x86dd
	protoICMP  = 1
	protoTCP   = 6
	protoICMP6 = 58
	tcpFlagSYN = 0x02
)

// clampMSS lowers the MSS option of a TCP SYN in Ethernet frame d to what
// a frame of at most limit bytes carries (IPv6: at least MinIPv6Frame),
// fixing the TCP checksum incrementally. d must be plain (its checksum
// complete). It reports whether it changed d. Anything it cannot parse it
// leaves alone.
func clampMSS(d []byte, limit int) bool {
	if len(d) < 14+20 {
		return false
	}
	var tcp, ipHdr int
	switch binary.BigEndian.Uint16(d[12:14]) {
	case etherIPv4:
		ihl := int(d[14]&0x0f) * 4
		if d[14]>>4 != 4 || ihl < 20 || d[14+9] != protoTCP || binary.BigEndian.Uint16(d[14+6:])&0x1fff != 0 {
			return false
		}
		tcp, ipHdr = 14+ihl, 20
	case etherIPv6:
		// Only TCP right behind the fixed header: SYNs carry no extension
		// headers in practice.
		if len(d) < 14+40 || d[14]>>4 != 6 || d[14+6] != protoTCP {
			return false
		}
		tcp, ipHdr = 14+40, 40
		limit = max(limit, MinIPv6Frame)
	default:
		return false
	}
	if len(d) < tcp+20 || d[tcp+13]&tcpFlagSYN == 0 {
		return false
	}
	off := int(d[tcp+12]>>4) * 4
	if off < 20 || tcp+off > len(d) {
		return false
	}
	mss := limit - 14 - ipHdr - 20
	if mss < 64 {
		return false
	}
	opts := d[tcp+20 : tcp+off]
	for i := 0; i < len(opts); {
		switch opts[i] {
		case 0: // end of options
			return false
		case 1: // no-op
			i++
			continue
		}
		if i+1 >= len(opts) {
			return false
		}
		l := int(opts[i+1])
		if l < 2 || i+l > len(opts) {
			return false
		}
		if opts[i] == 2 && l == 4 {
			old := binary.BigEndian.Uint16(opts[i+2:])
			if int(old) <= mss {
				return false
			}
			binary.BigEndian.PutUint16(opts[i+2:], uint16(mss))
			// The value sits at an odd offset from the header's start
			// after an odd number of no-ops: its bytes then fall into the
			// sum's words swapped.
			updateChecksum(d[tcp+16:tcp+18], old, uint16(mss), (20+i+2)&1 == 1)
			return true
		}
		i += l
	}
	return false
}

// updateChecksum fixes the ones' complement checksum in field after a
// 16-bit word changed from old to new (RFC 1624, equation 3); odd: the word
// lies at an odd offset.
func updateChecksum(field []byte, old, new uint16, odd bool) {
	if odd {
		old, new = bits.ReverseBytes16(old), bits.ReverseBytes16(new)
	}
	hc := binary.BigEndian.Uint16(field)
	binary.BigEndian.PutUint16(field, ^fold(uint32(^hc)+uint32(^old)+uint32(new)))
}

// fitsLimit decides for plain frame d whether it may go to a port whose
// frame limit is limit (> 0): true for frames that fit (TCP SYNs clamped
// on the way) and for IPv6 frames of up to MinIPv6Frame bytes.
func fitsLimit(d []byte, limit int) bool {
	if len(d) <= limit || len(d) <= MinIPv6Frame && len(d) >= 14 && binary.BigEndian.Uint16(d[12:14]) == etherIPv6 {
		clampMSS(d, limit)
		return true
	}
	return false
}

// tooBigAnswer writes into out the Ethernet frame a router would send back
// for frame d, which does not fit a link of frame limit limit: ICMP
// "fragmentation needed" for IPv4 with DF, ICMPv6 "packet too big" for
// IPv6. It returns the answer's length, or 0 when d deserves none (not IP,
// IPv4 without DF or a later fragment, from no unicast source, to a group,
// itself an ICMP error, malformed, or out too short).
func tooBigAnswer(out, d []byte, limit int) int {
	if len(d) < 14+20 || d[6]&1 != 0 || d[0]&1 != 0 {
		return 0
	}
	switch binary.BigEndian.Uint16(d[12:14]) {
	case etherIPv4:
		return fragNeeded4(out, d, limit-14)
	case etherIPv6:
		return packetTooBig6(out, d, max(limit, MinIPv6Frame)-14)
	}
	return 0
}

func fragNeeded4(out, d []byte, mtu int) int {
	ip := d[14:]
	ihl := int(ip[0]&0x0f) * 4
	if ip[0]>>4 != 4 || ihl < 20 || ihl > len(ip) {
		return 0
	}
	frag := binary.BigEndian.Uint16(ip[6:8])
	if frag&0x4000 == 0 || frag&0x1fff != 0 { // no DF, or not the first fragment
		return 0
	}
	src, dst := ip[12:16], ip[16:20]
	if src[0] == 0 || src[0] >= 224 || dst[0] >= 224 || src[0] == 127 {
		return 0 // unspecified, loopback, multicast, broadcast, reserved
	}
	if ip[9] == protoICMP {
		if len(ip) < ihl+1 {
			return 0
		}
		switch ip[ihl] { // never an error about an error (RFC 1122 3.2.2)
		case 3, 4, 5, 11, 12:
			return 0
		}
	}
	quote := min(len(ip), ihl+8)
	n := 14 + 20 + 8 + quote
	if len(out) < n || mtu < 68 || mtu > 0xffff {
		return 0
	}
	copy(out[0:6], d[6:12])
	copy(out[6:12], d[0:6])
	binary.BigEndian.PutUint16(out[12:14], etherIPv4)
	h := out[14:34]
	h[0], h[1] = 0x45, 0xc0 // internetwork control, as Linux sends its ICMP errors
	binary.BigEndian.PutUint16(h[2:], uint16(20+8+quote))
	clear(h[4:8])
	h[8], h[9] = 64, protoICMP
	clear(h[10:12])
	copy(h[12:16], dst)
	copy(h[16:20], src)
	binary.BigEndian.PutUint16(h[10:], ^fold(sum16(0, h)))
	m := out[34:n]
	m[0], m[1] = 3, 4
	clear(m[2:6])
	binary.BigEndian.PutUint16(m[6:], uint16(mtu))
	copy(m[8:], ip[:quote])
	binary.BigEndian.PutUint16(m[2:], ^fold(sum16(0, m)))
	return n
}

func packetTooBig6(out, d []byte, mtu int) int {
	ip := d[14:]
	if len(ip) < 40 || ip[0]>>4 != 6 {
		return 0
	}
	src, dst := ip[8:24], ip[24:40]
	if src[0] == 0xff || isZero16(src) || isLoopback16(src) {
		return 0
	}
	if ip[6] == protoICMP6 && len(ip) > 40 && ip[40] < 128 {
		return 0 // an error about an error (RFC 4443 2.4)
	}
	// As much of the packet as an answer of IPv6's minimum MTU holds.
	quote := min(len(ip), ipv6MinMTU-40-8)
	n := 14 + 40 + 8 + quote
	if len(out) < n {
		return 0
	}
	copy(out[0:6], d[6:12])
	copy(out[6:12], d[0:6])
	binary.BigEndian.PutUint16(out[12:14], etherIPv6)
	h := out[14:54]
	h[0], h[1], h[2], h[3] = 0x60, 0, 0, 0
	binary.BigEndian.PutUint16(h[4:], uint16(8+quote))
	h[6], h[7] = protoICMP6, 64
	copy(h[8:24], dst)
	copy(h[24:40], src)
	m := out[54:n]
	m[0], m[1] = 2, 0
	clear(m[2:4])
	binary.BigEndian.PutUint32(m[4:], uint32(mtu))
	copy(m[8:], ip[:quote])
	// Pseudo-header: source, destination, upper-layer length, next header.
	sum := sum16(0, h[8:40])
	sum += uint32(len(m)>>16) + uint32(len(m)&0xffff) + protoICMP6
	binary.BigEndian.PutUint16(m[2:], ^fold(sum16(sum, m)))
	return n
}

func isZero16(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func isLoopback16(b []byte) bool { return isZero16(b[:15]) && b[15] == 1 }

// tooBig drops frame f, too big for port p, counts it, and sends the
// answer a router would back to the port f came from.
func (s *Switch) tooBig(p *portState, f *frame, limit int) {
	p.c.drops[DropTooBig].Add(1)
	if from := f.from; from != nil && !from.removed.Load() {
		c := s.getFrame(false)
		if n := tooBigAnswer(c.buf[Headroom:], f.data(), limit); n > 0 {
			c.n = n
			clear(c.slot())
			s.enqueue(from, c)
		} else {
			s.putFrame(c)
		}
	}
	s.putFrame(f)
}
