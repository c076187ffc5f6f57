package tunnel

import (
	"testing"

	"vnet/bridge"
)

// The cipher path of a UDP link without sockets, and the wire codecs.
//
//	go test ./tunnel -run XXX -bench 'Cipher|Codec' -benchmem
//
// Seal is writeFrames: inner headers, AES-GCM per datagram (or once per
// message, -whole), the batch handed to an io that drops it. Open is what
// the mux's reader and the link's reader do with those datagrams: receive
// (authenticate, decrypt in place, replay window, reassembly) and readMsg
// (into the switch's buffer). Open also copies each datagram into the reader's buffer first,
// standing in for the kernel's copy of a receive, which the real path pays
// too. BenchmarkUDPLink measures the same path with the sockets.

// discardIO is a socket-less udpIO that drops what it is given.
type discardIO struct{ memIO }

func (*discardIO) sendBatch(*udpTxBatch) error { return nil }

// cipherPair is two socket-less muxes with a session between them; with
// whole, a seals messages of several datagrams whole (udp_sealed.go).
func cipherPair(b *testing.B, whole bool) (a, bm *UDPMux, sa, sb *udpSession) {
	a, bm = newMemMux(fuzzKey), newMemMux(fuzzKey)
	sa, sb, _ = memHandshake(b, a, bm)
	if whole {
		sa.sealWhole()
	}
	b.Cleanup(func() { a.Close(); bm.Close() })
	return a, bm, sa, sb
}

// benchFrame is a frame of n bytes in a switch-sized buffer at Headroom; a
// super-frame (n > MaxFrame) carries a TCP/IPv4 segmentation header.
func benchFrame(n int) (buf []byte, super bool) {
	buf = make([]byte, bridge.SuperBufSize)
	if n > bridge.MaxFrame {
		super = true
		bridge.VnetHdr{Flags: 1, GSOType: 1, HdrLen: 54, GSOSize: 1448, CsumStart: 34, CsumOffset: 16}.
			Put(buf[bridge.Headroom-bridge.VnetHdrLen:])
	}
	for i := bridge.Headroom; i < bridge.Headroom+n; i++ {
		buf[i] = byte(i)
	}
	return buf[:bridge.Headroom+n], super
}

// cipherCases: a frame of two datagrams and a super-frame of 46, sealed
// per datagram (type 4) and whole (type 5).
var cipherCases = []struct {
	name  string
	n     int
	whole bool
}{{"1514", 1514, false}, {"1514-whole", 1514, true}, {"super-64K", 65000, false}, {"super-64K-whole", 65000, true}}

func BenchmarkCipherSeal(b *testing.B) {
	for _, c := range cipherCases {
		b.Run(c.name, func(b *testing.B) {
			a, _, sa, _ := cipherPair(b, c.whole)
			a.io = &discardIO{memIO: memIO{done: make(chan struct{})}}
			frame, super := benchFrame(c.n)
			bufs := [][]byte{frame}
			b.SetBytes(int64(c.n))
			b.ReportAllocs()
			for b.Loop() {
				if err := sa.writeFrames(bufs, bridge.Headroom, super); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkCipherRelay is BenchmarkCipherSeal for a relayed super-frame
// (udp_relay.go): sealed by the host that sends it ("host": the hop part
// and the payload), and passed on by the proxy ("proxy": the hop part;
// the payload, sealed by the host, is only copied). Against
// super-64K-whole, which a proxy paid per link before: an open and a
// seal of every byte.
func BenchmarkCipherRelay(b *testing.B) {
	for _, side := range []string{"host", "proxy"} {
		b.Run(side, func(b *testing.B) {
			a, _, sa, _ := cipherPair(b, true)
			frame, super := benchFrame(65000)
			if side == "host" {
				sa.tx.relay = true
			} else {
				sa.relaying.Store(true)
				sa.sealedOut.Store(true)
				frame = frame[:len(frame)+udpTagLen] // the payload's tag
				frame[bridge.SealMetaOffset-1] = bridge.SealMarker
			}
			bufs := [][]byte{frame}
			if err := sa.writeFrames(bufs, bridge.Headroom, super); err != nil {
				b.Fatal(err)
			}
			if ds := a.io.(*memIO).take(); len(ds) == 0 || ds[0][0] != udpMsgRelayed {
				b.Fatalf("not relayed: %d datagrams; mux %v", len(ds), a.Stats())
			}
			a.io = &discardIO{memIO: memIO{done: make(chan struct{})}}
			b.SetBytes(65000)
			b.ReportAllocs()
			for b.Loop() {
				if err := sa.writeFrames(bufs, bridge.Headroom, super); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkCipherOpen(b *testing.B) {
	for _, c := range cipherCases {
		b.Run(c.name, func(b *testing.B) {
			a, bm, sa, sb := cipherPair(b, c.whole)
			frame, super := benchFrame(c.n)
			if err := sa.writeFrames([][]byte{frame}, bridge.Headroom, super); err != nil {
				b.Fatal(err)
			}
			sealed := a.io.(*memIO).take()
			views := make([][]byte, len(sealed))
			for i, d := range sealed {
				views[i] = make([]byte, len(d))
			}
			out := make([]byte, bridge.SuperBufSize)
			b.SetBytes(int64(c.n))
			b.ReportAllocs()
			for b.Loop() {
				sb.replay = replayWindow{} // the same counters, every round
				now := bm.now()
				for i, d := range sealed {
					copy(views[i], d)
					bm.receive(nil, views[i], len(d), fuzzFromA, now)
				}
				typ, got, err := sb.readMsg(out, bridge.Headroom)
				if err != nil || typ == msgNone || len(got) < c.n {
					b.Fatalf("readMsg: type %d, %d bytes, %v; mux %v", typ, len(got), err, bm.Stats())
				}
			}
		})
	}
}

func BenchmarkCodecInner(b *testing.B) {
	d := make([]byte, 1500)
	var sum int
	for b.Loop() {
		PutInner(d, MsgFrameGSO, 7, 3, 46)
		_, id, index, count, chunk, err := ParseInner(d)
		if err != nil {
			b.Fatal(err)
		}
		sum += int(id) + int(index) + int(count) + len(chunk)
	}
	if sum == 0 {
		b.Fatal("nothing parsed")
	}
}

func BenchmarkCodecStreamHeader(b *testing.B) {
	var h [HeaderLen]byte
	var sum int
	for b.Loop() {
		PutHeader(h[:], MsgFrame, 1514)
		_, n, err := ParseHeader(h[:])
		if err != nil {
			b.Fatal(err)
		}
		sum += n
	}
	if sum == 0 {
		b.Fatal("nothing parsed")
	}
}
