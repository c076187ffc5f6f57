package bridge

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// mergedTCP builds an Ethernet frame with one TCP segment of payload behind
// IPv4 or IPv6 headers, as GRO or TSO hands it over.
func mergedTCP(v4 bool, payload []byte, flags uint8) []byte {
	eth := make([]byte, 14)
	var ip []byte
	src4, dst4 := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	src6, dst6 := netip.MustParseAddr("fd00::1"), netip.MustParseAddr("fd00::2")
	tcp := make([]byte, 20)
	binary.BigEndian.PutUint16(tcp[0:], 40000)
	binary.BigEndian.PutUint16(tcp[2:], 80)
	binary.BigEndian.PutUint32(tcp[4:], 0xfffff000) // wraps while cut
	tcp[12] = 5 << 4
	tcp[13] = flags
	if v4 {
		binary.BigEndian.PutUint16(eth[12:], 0x0800)
		ip = make([]byte, 20)
		ip[0] = 0x45
		binary.BigEndian.PutUint16(ip[2:], uint16(20+20+len(payload)))
		binary.BigEndian.PutUint16(ip[4:], 0xfffe)
		ip[8], ip[9] = 64, 6
		copy(ip[12:], src4.AsSlice())
		copy(ip[16:], dst4.AsSlice())
	} else {
		binary.BigEndian.PutUint16(eth[12:], 0x86dd)
		ip = make([]byte, 40)
		ip[0] = 0x60
		binary.BigEndian.PutUint16(ip[4:], uint16(20+len(payload)))
		ip[6], ip[7] = 6, 64
		copy(ip[8:], src6.AsSlice())
		copy(ip[24:], dst6.AsSlice())
	}
	return append(append(append(eth, ip...), tcp...), payload...)
}

// TestSegmenter cuts merged TCP segments and checks every frame with
// gVisor's header parsers: lengths, checksums, sequence numbers, flags,
// IPv4 IDs, and the payload put back together.
func TestSegmenter(t *testing.T) {
	for _, v4 := range []bool{true, false} {
		for _, size := range []int{1, 1448, 1449, 10000, 65000} {
			payload := make([]byte, size)
			for i := range payload {
				payload[i] = byte(rand.Uint32())
			}
			frame := mergedTCP(v4, payload, 0x80|0x18|0x01) // CWR, PSH+ACK, FIN
			var s segmenter
			if !s.start(frame, 1448, v4) {
				t.Fatalf("v4=%v: start refused the frame", v4)
			}
			var got []byte
			seq := uint32(0xfffff000)
			for i := 0; s.pending(); i++ {
				buf := make([]byte, 2000)
				c, n := s.next(buf)
				if c != n {
					t.Fatalf("segment %d: copied %d of %d", i, c, n)
				}
				seg := buf[:n]
				var tcp header.TCP
				var src, dst tcpip.Address
				if v4 {
					ip := header.IPv4(seg[14:])
					if !ip.IsChecksumValid() || int(ip.TotalLength()) != n-14 || ip.ID() != uint16(0xfffe+i) {
						t.Fatalf("segment %d: IPv4 header %x", i, seg[14:34])
					}
					tcp, src, dst = header.TCP(ip.Payload()), ip.SourceAddress(), ip.DestinationAddress()
				} else {
					ip := header.IPv6(seg[14:])
					if int(ip.PayloadLength()) != n-14-40 {
						t.Fatalf("segment %d: IPv6 payload length %d, frame %d", i, ip.PayloadLength(), n)
					}
					tcp, src, dst = header.TCP(ip.Payload()), ip.SourceAddress(), ip.DestinationAddress()
				}
				data := tcp.Payload()
				if len(data) > 1448 {
					t.Fatalf("segment %d: %d bytes of payload, mss 1448", i, len(data))
				}
				if !tcp.IsChecksumValid(src, dst, checksum.Checksum(data, 0), uint16(len(data))) {
					t.Fatalf("v4=%v size %d segment %d: bad TCP checksum", v4, size, i)
				}
				if tcp.SequenceNumber() != seq {
					t.Fatalf("segment %d: seq %#x, want %#x", i, tcp.SequenceNumber(), seq)
				}
				last := !s.pending()
				if f := tcp.Flags(); (f&header.TCPFlagFin != 0) != last || (f&header.TCPFlagPsh != 0) != last ||
					(f&header.TCPFlagCwr != 0) != (i == 0) || f&header.TCPFlagAck == 0 {
					t.Fatalf("segment %d (last %v): flags %v", i, last, f)
				}
				seq += uint32(len(data))
				got = append(got, data...)
			}
			if !bytes.Equal(got, payload) {
				t.Fatalf("v4=%v size %d: the segments' payload differs from the merged frame's", v4, size)
			}
		}
	}
}

// TestSegmenterRefuses: frames it must not cut.
func TestSegmenterRefuses(t *testing.T) {
	var s segmenter
	good := mergedTCP(true, make([]byte, 3000), 0x10)
	udp := append([]byte(nil), good...)
	udp[14+9] = 17
	for name, c := range map[string]struct {
		frame []byte
		mss   int
		v4    bool
	}{
		"udp": {udp, 1448, true}, "short": {good[:40], 1448, true}, "mss 0": {good, 0, true},
		"v6 flag on v4": {good, 1448, false}, "runt": {good[:10], 1448, true},
	} {
		if s.start(c.frame, c.mss, c.v4) {
			t.Errorf("%s: start accepted it", name)
		}
	}
}

// FuzzSegmenter: any frame and mss, no panic; every segment fits its
// claimed length.
func FuzzSegmenter(f *testing.F) {
	f.Add(mergedTCP(true, make([]byte, 5000), 0x18), 1448, true)
	f.Add(mergedTCP(false, make([]byte, 5000), 0x18), 1448, false)
	f.Fuzz(func(t *testing.T, frame []byte, mss int, v4 bool) {
		if mss > 1<<16 || mss < -1 {
			return
		}
		var s segmenter
		if !s.start(frame, mss, v4) {
			return
		}
		for i := 0; s.pending(); i++ {
			if i > len(frame) {
				t.Fatal("no end to the segments")
			}
			buf := make([]byte, 4096)
			if c, n := s.next(buf); c > n || c > len(buf) {
				t.Fatalf("copied %d, length %d", c, n)
			}
		}
	})
}

// sum16Bytes is the plain definition sum16 must agree with.
func sum16Bytes(sum uint32, b []byte) uint32 {
	for len(b) >= 2 {
		sum += uint32(b[0])<<8 | uint32(b[1])
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	return sum
}

func TestSum16MatchesDefinition(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	b := make([]byte, 70000)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	for range 2000 {
		off, n := r.IntN(64), r.IntN(2100)
		if r.IntN(20) == 0 {
			n = r.IntN(len(b) - 64)
		}
		init := r.Uint32() >> r.IntN(32)
		got, want := fold(sum16(init, b[off:off+n])), fold(sum16Bytes(init, b[off:off+n]))
		if got != want {
			t.Fatalf("sum16(%#x, %d bytes at %d) folds to %#04x, want %#04x", init, n, off, got, want)
		}
	}
	for _, fill := range []byte{0x00, 0xff} { // the all-ones and all-zeros edges
		for _, n := range []int{0, 1, 2, 3, 64, 65535} {
			c := bytes.Repeat([]byte{fill}, n)
			if got, want := fold(sum16(0xffff, c)), fold(sum16Bytes(0xffff, c)); got != want {
				t.Fatalf("%d bytes of %#x: %#04x, want %#04x", n, fill, got, want)
			}
		}
	}
}

// BenchmarkChecksum64K is completeChecksum's work on a 64 KB super-frame,
// with sum16 and with the byte-pair loop it replaced.
func BenchmarkChecksum64K(b *testing.B) {
	buf := make([]byte, 65535)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	for _, c := range []struct {
		name string
		sum  func(uint32, []byte) uint32
	}{{"sum16", sum16}, {"bytepairs", sum16Bytes}} {
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(int64(len(buf)))
			for b.Loop() {
				_ = fold(c.sum(0, buf))
			}
		})
	}
}
