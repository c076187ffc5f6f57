package bridge

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

var (
	mtuSrcMAC = MAC{0x52, 0x54, 0, 0, 0, 1}
	mtuDstMAC = MAC{0x52, 0x54, 0, 0, 0, 2}
	mtuSrc4   = []byte{10, 88, 0, 11}
	mtuDst4   = []byte{10, 88, 0, 21}
	mtuSrc6   = []byte{0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x11}
	mtuDst6   = []byte{0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x21}
)

func mtuEther(typ uint16) []byte {
	b := make([]byte, 14)
	copy(b, mtuDstMAC[:])
	copy(b[6:], mtuSrcMAC[:])
	binary.BigEndian.PutUint16(b[12:], typ)
	return b
}

// ipv4Packet is an Ethernet frame with an IPv4 header (checksummed by
// gvisor) around l4 of protocol proto.
func ipv4Packet(proto uint8, df bool, fragOff uint16, l4 []byte) []byte {
	ip := header.IPv4(make([]byte, 20))
	var flags uint8
	if df {
		flags = header.IPv4FlagDontFragment
	}
	ip.Encode(&header.IPv4Fields{TotalLength: uint16(20 + len(l4)), ID: 7, Flags: flags, FragmentOffset: fragOff,
		TTL: 64, Protocol: proto, SrcAddr: tcpip.AddrFrom4Slice(mtuSrc4), DstAddr: tcpip.AddrFrom4Slice(mtuDst4)})
	ip.SetChecksum(^ip.CalculateChecksum())
	return append(append(mtuEther(etherIPv4), ip...), l4...)
}

func ipv6Packet(proto uint8, l4 []byte) []byte {
	ip := header.IPv6(make([]byte, 40))
	ip.Encode(&header.IPv6Fields{PayloadLength: uint16(len(l4)), TransportProtocol: tcpip.TransportProtocolNumber(proto),
		HopLimit: 64, SrcAddr: tcpip.AddrFrom16Slice(mtuSrc6), DstAddr: tcpip.AddrFrom16Slice(mtuDst6)})
	return append(append(mtuEther(etherIPv6), ip...), l4...)
}

// tcpSegment is a TCP header with opts (padded to 4 bytes) and payload;
// its checksum is left for tcpFinish.
func tcpSegment(flags header.TCPFlags, opts []byte, payload int) []byte {
	for len(opts)%4 != 0 {
		opts = append(opts, 0)
	}
	t := header.TCP(make([]byte, 20+len(opts)+payload))
	t.Encode(&header.TCPFields{SrcPort: 40000, DstPort: 9000, SeqNum: 1, DataOffset: uint8(20 + len(opts)),
		Flags: flags, WindowSize: 65535})
	copy(t[20:], opts)
	for i := range payload {
		t[20+len(opts)+i] = byte(i)
	}
	return t
}

// tcpFinish fills in the TCP checksum of frame f (from gvisor's code).
func tcpFinish(f []byte) []byte {
	src, dst, t := l3Addrs(f)
	t.SetChecksum(0)
	xsum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, src, dst, uint16(len(t)))
	t.SetChecksum(^checksum.Checksum(t, xsum))
	return f
}

func l3Addrs(f []byte) (src, dst tcpip.Address, l4 header.TCP) {
	if binary.BigEndian.Uint16(f[12:]) == etherIPv4 {
		ip := header.IPv4(f[14:])
		return ip.SourceAddress(), ip.DestinationAddress(), header.TCP(ip.Payload())
	}
	ip := header.IPv6(f[14:])
	return ip.SourceAddress(), ip.DestinationAddress(), header.TCP(f[14+40:])
}

func tcpValid(f []byte) bool {
	src, dst, t := l3Addrs(f)
	payload := t[t.DataOffset():]
	return t.IsChecksumValid(src, dst, checksum.Checksum(payload, 0), uint16(len(payload)))
}

func mssOpt(mss uint16) []byte { return []byte{2, 4, byte(mss >> 8), byte(mss)} }

func synMSS(f []byte) int {
	_, _, t := l3Addrs(f)
	return int(header.ParseSynOptions(t.Options(), t.Flags().Contains(header.TCPFlagAck)).MSS)
}

func TestClampMSS(t *testing.T) {
	ts := []byte{8, 10, 1, 2, 3, 4, 0, 0, 0, 0} // timestamps
	syn := header.TCPFlagSyn
	cases := []struct {
		name    string
		frame   []byte
		limit   int
		changed bool
		mss     int
	}{
		{"v4 syn", ipv4Packet(6, true, 0, tcpSegment(syn, append(mssOpt(1460), ts...), 0)), 1198, true, 1198 - 54},
		{"v4 syn-ack", ipv4Packet(6, true, 0, tcpSegment(syn|header.TCPFlagAck, mssOpt(1460), 0)), 1198, true, 1144},
		{"v4 mss at odd offset", ipv4Packet(6, true, 0, tcpSegment(syn, append([]byte{1}, mssOpt(1460)...), 0)), 1198, true, 1144},
		{"v4 mss after timestamps", ipv4Packet(6, true, 0, tcpSegment(syn, append(append([]byte{1}, ts...), mssOpt(8960)...), 0)), 1514, true, 1460},
		{"v4 mss already small", ipv4Packet(6, true, 0, tcpSegment(syn, mssOpt(1000), 0)), 1198, false, 1000},
		{"v4 ack not clamped", ipv4Packet(6, true, 0, tcpSegment(header.TCPFlagAck, mssOpt(1460), 10)), 1198, false, 0},
		{"v4 udp", ipv4Packet(17, true, 0, make([]byte, 40)), 1198, false, 0},
		{"v4 later fragment", ipv4Packet(6, true, 100, tcpSegment(syn, mssOpt(1460), 0)), 1198, false, 0},
		{"v4 no mss option", ipv4Packet(6, true, 0, tcpSegment(syn, ts, 0)), 1198, false, 0},
		{"v4 end of options first", ipv4Packet(6, true, 0, tcpSegment(syn, append([]byte{0, 0, 0, 0}, mssOpt(1460)...), 0)), 1198, false, 0},
		{"v6 syn floor 1280", ipv6Packet(6, tcpSegment(syn, mssOpt(1440), 0)), 1198, true, 1294 - 74},
		{"v6 syn big link", ipv6Packet(6, tcpSegment(syn, mssOpt(8940), 0)), 1414, true, 1414 - 74},
	}
	for _, c := range cases {
		f := tcpFinish(c.frame)
		if binary.BigEndian.Uint16(f[12:]) == etherIPv4 && f[23] != 6 {
			f = c.frame // not TCP: no checksum to finish
		}
		orig := bytes.Clone(f)
		if got := clampMSS(f, c.limit); got != c.changed {
			t.Errorf("%s: changed %v, want %v", c.name, got, c.changed)
		}
		if !c.changed {
			if !bytes.Equal(f, orig) {
				t.Errorf("%s: frame changed though clampMSS said not", c.name)
			}
			continue
		}
		if !tcpValid(f) {
			t.Errorf("%s: TCP checksum invalid after the clamp", c.name)
		}
		if got := synMSS(f); got != c.mss {
			t.Errorf("%s: MSS %d, want %d", c.name, got, c.mss)
		}
	}
}

// TestClampMSSRandom checks the incremental checksum against gvisor's
// full one over random option layouts, MSS values and limits.
func TestClampMSSRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 2000; i++ {
		opts := make([]byte, rng.IntN(8)) // no-ops before the MSS: any alignment
		for j := range opts {
			opts[j] = 1
		}
		mss := uint16(rng.IntN(65536))
		opts = append(opts, mssOpt(mss)...)
		seg := tcpSegment(header.TCPFlagSyn, opts, rng.IntN(30))
		binary.BigEndian.PutUint32(seg[4:], rng.Uint32()) // random sequence numbers: random checksums
		var f []byte
		if rng.IntN(2) == 0 {
			f = ipv4Packet(6, true, 0, seg)
		} else {
			f = ipv6Packet(6, seg)
		}
		f = tcpFinish(f)
		limit := 600 + rng.IntN(9000)
		changed := clampMSS(f, limit)
		if !tcpValid(f) {
			t.Fatalf("case %d: checksum invalid after clampMSS(limit %d) of MSS %d, %d no-ops", i, limit, mss, len(opts)-4)
		}
		_, _, tcp := l3Addrs(f)
		got := int(binary.BigEndian.Uint16(tcp[20+len(opts)-2:]))
		if changed == (int(mss) == got) {
			t.Fatalf("case %d: clamp %v but MSS %d -> %d", i, changed, mss, got)
		}
	}
}

func icmpEcho4(size int) []byte {
	m := make([]byte, 8+size)
	m[0] = 8
	binary.BigEndian.PutUint16(m[2:], ^checksum.Checksum(m, 0))
	return m
}

func TestTooBigAnswerIPv4(t *testing.T) {
	d := ipv4Packet(1, true, 0, icmpEcho4(1400)) // ping -M do -s 1400
	out := make([]byte, BufSize)
	n := tooBigAnswer(out, d, 1198)
	if n == 0 {
		t.Fatal("no answer")
	}
	a := out[:n]
	if !bytes.Equal(a[0:6], mtuSrcMAC[:]) || !bytes.Equal(a[6:12], mtuDstMAC[:]) {
		t.Errorf("Ethernet addresses not swapped: %x", a[:12])
	}
	ip := header.IPv4(a[14:])
	if !ip.IsValid(len(a)-14) || !ip.IsChecksumValid() {
		t.Fatalf("bad IPv4 header %x", a[14:34])
	}
	if ip.Protocol() != 1 || ip.SourceAddress() != tcpip.AddrFrom4Slice(mtuDst4) || ip.DestinationAddress() != tcpip.AddrFrom4Slice(mtuSrc4) {
		t.Errorf("proto %d %v -> %v", ip.Protocol(), ip.SourceAddress(), ip.DestinationAddress())
	}
	m := header.ICMPv4(ip.Payload())
	if m.Type() != header.ICMPv4DstUnreachable || m.Code() != header.ICMPv4FragmentationNeeded {
		t.Errorf("type %d code %d", m.Type(), m.Code())
	}
	if m.MTU() != 1198-14 {
		t.Errorf("MTU %d, want %d", m.MTU(), 1198-14)
	}
	if checksum.Checksum(m, 0) != 0xffff {
		t.Error("ICMP checksum invalid")
	}
	if !bytes.Equal(m[8:], d[14:14+28]) {
		t.Errorf("quote %x, want the original header and 8 bytes", m[8:])
	}

	for name, bad := range map[string][]byte{
		"no DF":          ipv4Packet(1, false, 0, icmpEcho4(1400)),
		"later fragment": ipv4Packet(17, true, 185, make([]byte, 1400)),
		"about an error": ipv4Packet(1, true, 0, append([]byte{3, 4}, make([]byte, 1400)...)),
		"short":          d[:30],
		"not IP":         append(mtuEther(0x0806), make([]byte, 1400)...),
	} {
		if n := tooBigAnswer(out, bad, 1198); n != 0 {
			t.Errorf("%s: answered (%d bytes)", name, n)
		}
	}
	mc := bytes.Clone(d)
	copy(mc[14+16:], []byte{224, 0, 0, 1})
	if n := tooBigAnswer(out, mc, 1198); n != 0 {
		t.Error("answered a packet to a multicast group")
	}
	if n := tooBigAnswer(out[:50], d, 1198); n != 0 {
		t.Error("wrote past a short output buffer")
	}
}

func TestTooBigAnswerIPv6(t *testing.T) {
	d := ipv6Packet(17, make([]byte, 1500-40))
	out := make([]byte, BufSize)
	n := tooBigAnswer(out, d, 1198)
	if n != 14+1280 {
		t.Fatalf("answer of %d bytes, want %d (IPv6's minimum MTU)", n, 14+1280)
	}
	a := out[:n]
	if !bytes.Equal(a[0:6], mtuSrcMAC[:]) || !bytes.Equal(a[6:12], mtuDstMAC[:]) {
		t.Errorf("Ethernet addresses not swapped: %x", a[:12])
	}
	ip := header.IPv6(a[14:])
	if !ip.IsValid(n-14) || ip.TransportProtocol() != header.ICMPv6ProtocolNumber {
		t.Fatalf("bad IPv6 header %x", a[14:54])
	}
	if ip.SourceAddress() != tcpip.AddrFrom16Slice(mtuDst6) || ip.DestinationAddress() != tcpip.AddrFrom16Slice(mtuSrc6) {
		t.Errorf("%v -> %v", ip.SourceAddress(), ip.DestinationAddress())
	}
	m := header.ICMPv6(ip.Payload())
	if m.Type() != header.ICMPv6PacketTooBig || m.Code() != 0 {
		t.Errorf("type %d code %d", m.Type(), m.Code())
	}
	if m.MTU() != 1280 {
		t.Errorf("MTU %d, want 1280 (the link is below IPv6's minimum, which it splits)", m.MTU())
	}
	want := header.ICMPv6Checksum(header.ICMPv6ChecksumParams{Header: m[:8], Src: ip.SourceAddress(), Dst: ip.DestinationAddress(),
		PayloadCsum: checksum.Checksum(m[8:], 0), PayloadLen: len(m) - 8})
	if m.Checksum() != want {
		t.Errorf("ICMPv6 checksum %#x, want %#x", m.Checksum(), want)
	}
	if !bytes.Equal(m[8:], d[14:14+1232]) {
		t.Error("quote is not the start of the original packet")
	}
	if n := tooBigAnswer(out, d, 2000); binary.BigEndian.Uint32(out[14+40+4:]) != 1986 || n == 0 {
		t.Errorf("MTU %d for a 2000-byte limit", binary.BigEndian.Uint32(out[14+40+4:]))
	}
	err6 := ipv6Packet(58, append([]byte{1, 0}, make([]byte, 1460)...))
	if n := tooBigAnswer(out, err6, 1198); n != 0 {
		t.Error("answered an ICMPv6 error")
	}
	unspec := bytes.Clone(d)
	clear(unspec[14+8 : 14+24])
	if n := tooBigAnswer(out, unspec, 1198); n != 0 {
		t.Error("answered the unspecified source")
	}
}

// limitRig is a writer toward port "s1" limited to limit bytes, fed by
// local port "v1", both idle (the test drives the writer).
func limitRig(limit int) (*Switch, *writer, *portState, *portState) {
	s := New(Config{})
	in := s.attachIdle("v1", RoleLocal)
	out := s.attachIdle("s1", RoleStar)
	w := &writer{s: s, p: out, bs: 64, limit: limit}
	w.batch = make([]*frame, 0, w.bs)
	w.bufs = make([][]byte, w.bs)
	w.emit = w.put
	return s, w, in, out
}

func (s *Switch) frameFrom(in *portState, raw []byte) *frame {
	f := s.getFrame(false)
	f.n = copy(f.buf[Headroom:], raw)
	f.from = in
	return f
}

func TestWriterLimit(t *testing.T) {
	s, w, in, out := limitRig(1198)
	small := ipv4Packet(1, true, 0, icmpEcho4(1198-14-28))
	w.put(s.frameFrom(in, small))
	syn := tcpFinish(ipv4Packet(6, true, 0, tcpSegment(header.TCPFlagSyn, mssOpt(1460), 0)))
	w.put(s.frameFrom(in, syn))
	if len(w.batch) != 2 {
		t.Fatalf("%d frames in the batch, want 2 (a frame of the limit, a SYN)", len(w.batch))
	}
	if got := synMSS(w.batch[1].data()); got != 1144 {
		t.Errorf("SYN's MSS %d, want 1144", got)
	}
	v6 := ipv6Packet(17, make([]byte, 1280-40))
	w.put(s.frameFrom(in, v6))
	if len(w.batch) != 3 {
		t.Fatal("a 1294-byte IPv6 frame did not pass (IPv6 needs 1280; the link splits it)")
	}
	w.release()

	cases := []struct {
		name   string
		frame  []byte
		answer bool
	}{
		{"v4 DF", ipv4Packet(1, true, 0, icmpEcho4(1400)), true},
		{"v4 no DF", ipv4Packet(1, false, 0, icmpEcho4(1400)), false},
		{"v6", ipv6Packet(17, make([]byte, 1400)), true},
		{"arp-sized junk", append(mtuEther(0x88b5), make([]byte, 1400)...), false},
	}
	for i, c := range cases {
		w.put(s.frameFrom(in, c.frame))
		if len(w.batch) != 0 {
			t.Fatalf("%s: a too-big frame went into the batch", c.name)
		}
		if got := out.c.drops[DropTooBig].Load(); got != uint64(i+1) {
			t.Errorf("%s: too-big drops %d, want %d", c.name, got, i+1)
		}
		select {
		case a := <-in.queue:
			if !c.answer {
				t.Errorf("%s: answered", c.name)
			}
			if a.n < 14+20+8 || !bytes.Equal(a.data()[0:6], mtuSrcMAC[:]) {
				t.Errorf("%s: answer %x", c.name, a.data())
			}
			s.putFrame(a)
		default:
			if c.answer {
				t.Errorf("%s: no answer on the input port", c.name)
			}
		}
	}
	if st := out.stats(); st.Drops["too-big"] != uint64(len(cases)) {
		t.Errorf("stats say %v", st.Drops)
	}
}

// TestWriterLimitNoAlloc: frames that fit a limited port cost no
// allocation, SYNs with their clamp included.
func TestWriterLimitNoAlloc(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are meaningless under -race")
	}
	s, w, in, _ := limitRig(1198)
	data := tcpFinish(ipv4Packet(6, true, 0, tcpSegment(header.TCPFlagAck, nil, 1198-54)))
	syn := tcpFinish(ipv4Packet(6, true, 0, tcpSegment(header.TCPFlagSyn, mssOpt(1460), 0)))
	run := func() {
		w.put(s.frameFrom(in, data))
		w.put(s.frameFrom(in, syn))
		w.release()
	}
	run()
	if n := testing.AllocsPerRun(1000, run); n != 0 {
		t.Errorf("%.2f allocations per batch of a data frame and a SYN, want 0", n)
	}
}

// BenchmarkWriterLimit is what the limit costs a frame that fits:
// limit=0 is an unlimited port, for comparison.
//
//	go test ./bridge -run XXX -bench WriterLimit -benchmem
func BenchmarkWriterLimit(b *testing.B) {
	data := tcpFinish(ipv4Packet(6, true, 0, tcpSegment(header.TCPFlagAck, nil, 1198-54)))
	for _, limit := range []int{0, 1198} {
		b.Run(map[int]string{0: "unlimited", 1198: "limit=1198"}[limit], func(b *testing.B) {
			s, w, in, _ := limitRig(limit)
			f := s.frameFrom(in, data)
			b.ReportAllocs()
			for b.Loop() {
				w.put(f)
				w.batch = w.batch[:0]
			}
		})
	}
}

// FuzzMTU drives the clamp and the answer builders with arbitrary frames
// and limits: no panic, an answer that fits its buffer, and a clamp that
// changes at most the MSS and checksum.
func FuzzMTU(f *testing.F) {
	f.Add(tcpFinish(ipv4Packet(6, true, 0, tcpSegment(header.TCPFlagSyn, mssOpt(1460), 0))), uint16(1198))
	f.Add(tcpFinish(ipv6Packet(6, tcpSegment(header.TCPFlagSyn, append([]byte{1}, mssOpt(1460)...), 0))), uint16(1198))
	f.Add(ipv4Packet(1, true, 0, icmpEcho4(1400)), uint16(1198))
	f.Add(ipv6Packet(17, make([]byte, 1460)), uint16(1198))
	f.Add(ipv4Packet(1, true, 0, []byte{3, 4, 0, 0}), uint16(100))
	f.Add([]byte{}, uint16(0))
	f.Fuzz(func(t *testing.T, d []byte, limit uint16) {
		if len(d) > MaxFrame {
			return
		}
		out := make([]byte, BufSize)
		if n := tooBigAnswer(out, d, int(limit)); n < 0 || n > len(out) {
			t.Fatalf("answer of %d bytes", n)
		}
		c := bytes.Clone(d)
		fitsLimit(c, int(limit))
		if len(c) != len(d) {
			t.Fatal("length changed")
		}
		diff := 0
		for i := range c {
			if c[i] != d[i] {
				diff++
			}
		}
		if diff > 4 {
			t.Fatalf("clamp changed %d bytes", diff)
		}
	})
}
