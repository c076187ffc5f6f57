package bridge

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"vnet/bridge/bridgetest"
)

var (
	offSrcMAC = MAC{0x52, 0x54, 0, 0, 0, 1}
	offDstMAC = MAC{0x52, 0x54, 0, 0, 0, 2}
)

// tsoFrame is a super-frame as a TAP device with TSO hands it over: one
// IPv4 TCP segment of payload, the TCP checksum left to fill (the field
// holds the pseudo-header's sum), cut at mss. It returns header+frame.
func tsoFrame(payload []byte, mss int) []byte {
	f := mergedTCP(true, payload, 0x18)
	copy(f[0:6], offDstMAC[:])
	copy(f[6:12], offSrcMAC[:])
	ip := header.IPv4(f[14:])
	ip.SetChecksum(^ip.CalculateChecksum())
	tcpLen := len(f) - 34
	pseudo := header.PseudoHeaderChecksum(header.TCPProtocolNumber, ip.SourceAddress(), ip.DestinationAddress(), uint16(tcpLen))
	binary.BigEndian.PutUint16(f[34+16:], pseudo)
	h := VnetHdr{Flags: vnetNeedCsum, CsumStart: 34, CsumOffset: 16}
	if mss > 0 {
		h.GSOType, h.GSOSize, h.HdrLen = gsoTCPv4, uint16(mss), 54
	}
	out := make([]byte, VnetHdrLen, VnetHdrLen+len(f))
	h.Put(out)
	return append(out, f...)
}

func offloadSwitch(t *testing.T) (s *Switch, src, plain, off *bridgetest.ChanPort) {
	s = New(Config{})
	t.Cleanup(s.Close)
	src, plain, off = bridgetest.NewOffloadChanPort(16), bridgetest.NewChanPort(256), bridgetest.NewOffloadChanPort(16)
	for name, p := range map[string]Port{"src": src, "plain": plain, "off": off} {
		if err := s.AddPort(name, RoleLocal, p); err != nil {
			t.Fatal(err)
		}
	}
	return s, src, plain, off
}

// TestOffloadSuperFrame floods one 64 KB-class super-frame from an
// offloading port: the offloading output gets it whole, header and all;
// the plain output gets the segments a NIC would have sent, each with
// valid checksums, carrying the payload in order.
func TestOffloadSuperFrame(t *testing.T) {
	_, src, plain, off := offloadSwitch(t)
	payload := make([]byte, 60000)
	for i := range payload {
		payload[i] = byte(rand.Uint32())
	}
	in := tsoFrame(payload, 1448)
	src.Inject(in)

	whole, ok := off.Expect(5 * time.Second)
	if !ok {
		t.Fatal("the offloading port got nothing")
	}
	if !bytes.Equal(whole, in) {
		t.Fatalf("the offloading port got %d bytes, not the %d-byte super-frame as sent", len(whole), len(in))
	}
	var got []byte
	want := (len(payload) + 1447) / 1448
	for i := range want {
		seg, ok := plain.Expect(5 * time.Second)
		if !ok {
			t.Fatalf("the plain port got %d of %d segments", i, want)
		}
		if len(seg) > 1514 {
			t.Fatalf("segment %d: %d bytes", i, len(seg))
		}
		ip := header.IPv4(seg[14:])
		tcp := header.TCP(ip.Payload())
		data := tcp.Payload()
		if !ip.IsChecksumValid() || !tcp.IsChecksumValid(ip.SourceAddress(), ip.DestinationAddress(), checksum.Checksum(data, 0), uint16(len(data))) {
			t.Fatalf("segment %d: bad checksum", i)
		}
		got = append(got, data...)
	}
	if !bytes.Equal(got, payload) {
		t.Fatal("the segments' payload differs from the super-frame's")
	}
	if extra, ok := plain.Expect(100 * time.Millisecond); ok {
		t.Fatalf("an extra frame of %d bytes on the plain port", len(extra))
	}
}

// TestOffloadChecksum: a frame with its checksum left to fill reaches a
// plain port completed, and an offloading port as it was.
func TestOffloadChecksum(t *testing.T) {
	_, src, plain, off := offloadSwitch(t)
	in := tsoFrame([]byte("hello, checksum"), 0)
	src.Inject(in)
	if whole, ok := off.Expect(5 * time.Second); !ok || !bytes.Equal(whole, in) {
		t.Fatalf("offloading port: %x, want %x", whole, in)
	}
	f, ok := plain.Expect(5 * time.Second)
	if !ok {
		t.Fatal("the plain port got nothing")
	}
	if !bytes.Equal(f[:34], in[VnetHdrLen:VnetHdrLen+34]) || !bytes.Equal(f[34+20:], in[VnetHdrLen+34+20:]) {
		t.Fatal("completing the checksum changed more than the checksum")
	}
	ip := header.IPv4(f[14:])
	tcp := header.TCP(ip.Payload())
	if !tcp.IsChecksumValid(ip.SourceAddress(), ip.DestinationAddress(), checksum.Checksum(tcp.Payload(), 0), uint16(len(tcp.Payload()))) {
		t.Fatal("the plain port got a frame with an incomplete checksum")
	}
}

// TestOffloadBadHeaders: headers that describe no valid frame are dropped
// at the port they came in on and counted; nothing goes out.
func TestOffloadBadHeaders(t *testing.T) {
	s, src, plain, off := offloadSwitch(t)
	good := tsoFrame(make([]byte, 3000), 1448)
	bad := func(mut func(h *VnetHdr)) []byte {
		b := append([]byte(nil), good...)
		h := ParseVnetHdr(b)
		mut(&h)
		h.Put(b)
		return b
	}
	plainBig := tsoFrame(make([]byte, 20000), 0)
	clear(plainBig[:VnetHdrLen])
	cases := [][]byte{
		bad(func(h *VnetHdr) { h.GSOType = 3 }),                                 // UDP fragmentation offload: not taken
		bad(func(h *VnetHdr) { h.GSOSize = 0 }),                                 // a super-frame without a segment size
		bad(func(h *VnetHdr) { h.CsumStart = 0xfff0 }),                          // a checksum beyond the frame
		bad(func(h *VnetHdr) { h.Flags = 0x40 }),                                // unknown flag
		plainBig,                                                                // 20 KB and no segmentation asked: beyond MaxFrame
		append(good[:VnetHdrLen:VnetHdrLen], good[VnetHdrLen:VnetHdrLen+20]...), // too short for its checksum
	}
	for _, c := range cases {
		src.Inject(c)
	}
	want := uint64(len(cases))
	deadline := time.Now().Add(5 * time.Second)
	for {
		st, _ := s.PortStats("src")
		if st.Drops["bad-offload"]+st.Drops["runt"] == want {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("drops %v, want %d bad-offload", st.Drops, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, p := range []*bridgetest.ChanPort{plain, off} {
		if f, ok := p.Expect(100 * time.Millisecond); ok {
			t.Fatalf("a bad super-frame went out: %d bytes", len(f))
		}
	}
}

// TestPlainFramesNoAlloc: cutting a super-frame for a plain port does not
// allocate once the pools are warm.
func TestPlainFramesNoAlloc(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector makes sync.Pool drop buffers at random")
	}
	s := New(Config{})
	in := tsoFrame(make([]byte, 60000), 1448)
	var n int
	emit := func(c *frame) { n++; s.putFrame(c) }
	allocs := testing.AllocsPerRun(100, func() {
		f := s.getFrame(true)
		f.n = copy(f.buf[Headroom-VnetHdrLen:], in) - VnetHdrLen
		if !s.plainFrames(f, emit) {
			t.Fatal("plainFrames refused a valid super-frame")
		}
	})
	if allocs > 0 {
		t.Fatalf("%.1f allocations per super-frame", allocs)
	}
	if n == 0 {
		t.Fatal("no segments")
	}
}

// BenchmarkPlainFrames: the cost of software segmentation per 64 KB.
func BenchmarkPlainFrames(b *testing.B) {
	s := New(Config{})
	in := tsoFrame(make([]byte, 65000), 1448)
	emit := func(c *frame) { s.putFrame(c) }
	b.SetBytes(65000)
	b.ReportAllocs()
	for b.Loop() {
		f := s.getFrame(true)
		f.n = copy(f.buf[Headroom-VnetHdrLen:], in) - VnetHdrLen
		s.plainFrames(f, emit)
	}
}
