package tunnel

import (
	"encoding/binary"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"

	"vnet/bridge"
)

// memIO is a socket-less udpIO: it keeps what the mux sends.
type memIO struct {
	mu   sync.Mutex
	sent [][]byte
	done chan struct{}
	once sync.Once
}

func newMemIO() *memIO { return &memIO{done: make(chan struct{})} }

func (f *memIO) readBatch([][]byte, []int, []netip.AddrPort) (int, error) {
	<-f.done
	return 0, net.ErrClosed
}

func (f *memIO) keep(b []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.sent) >= 256 {
		f.sent = f.sent[1:]
	}
	f.sent = append(f.sent, append([]byte(nil), b...))
}

func (f *memIO) sendBatch(b *udpTxBatch) error {
	for i := 0; i < b.n; i++ {
		f.keep(b.datagram(i))
	}
	return nil
}

func (f *memIO) writeTo(b []byte, _ netip.AddrPort) error { f.keep(b); return nil }
func (f *memIO) close() error                             { f.once.Do(func() { close(f.done) }); return nil }

func (f *memIO) take() [][]byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := f.sent
	f.sent = nil
	return out
}

// fuzzKey is fixed so that stored seeds (valid inits) stay valid.
var fuzzKey = Key{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32}

var (
	fuzzFromA = netip.MustParseAddrPort("192.0.2.1:4000")
	fuzzFromB = netip.MustParseAddrPort("192.0.2.2:5000")
)

// newMemMux is a mux without socket or goroutines: tests call receive.
func newMemMux(k Key) *UDPMux {
	return newUDPMux(k, quietLog(), newMemIO(), &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1}, false)
}

// feed hands datagram b from from to m as the reader would.
func feed(m *UDPMux, b []byte, from netip.AddrPort) {
	buf := m.getRx()
	n := copy(buf.b, b)
	if len(b) >= m.rxSize {
		n = -1
	}
	m.receive(&buf, nil, n, from, m.now())
	if buf != nil {
		m.rxPool.Put(buf)
	}
}

// feedView hands datagram b to m as the reader does with an io's own
// memory (udpViewReader), and scribbles over b afterwards, as the io's next
// read would: nothing m kept may still point into it.
func feedView(m *UDPMux, b []byte, from netip.AddrPort) {
	view := append([]byte(nil), b...)
	n := len(view)
	if n >= m.rxSize {
		n = -1
	}
	m.receive(nil, view, n, from, m.now())
	for i := range view {
		view[i] = 0xa5
	}
}

// memHandshake runs a handshake between two socket-less muxes and returns
// a's and b's sessions, and a's init.
func memHandshake(tb testing.TB, a, b *UDPMux) (*udpSession, *udpSession, []byte) {
	tb.Helper()
	d, err := a.newDial(Hello{Name: "a", Link: "fuzz"})
	if err != nil {
		tb.Fatal(err)
	}
	defer a.endDial(d)
	feed(b, d.msg1, fuzzFromA)
	var in *Incoming
	select {
	case in = <-b.acceptCh:
	default:
		tb.Fatalf("init not accepted: %v", b.Stats())
	}
	t, err := in.reply(Hello{Name: "b"})
	if err != nil {
		tb.Fatal(err)
	}
	for _, m := range b.io.(*memIO).take() {
		feed(a, m, fuzzFromB)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.res == nil || d.res.sess == nil {
		tb.Fatalf("no session: %v", a.Stats())
	}
	sa := d.res.sess
	d.res.sess = nil
	return sa, t.(*udpSession), d.msg1
}

// checkQueue drains s's queue and checks every message is well-formed.
func checkQueue(t *testing.T, m *UDPMux, s *udpSession) {
	frame := make([]byte, bridge.SuperBufSize)
	for s.more() {
		typ, p, err := s.readMsg(frame, bridge.Headroom)
		if err != nil {
			t.Fatal(err)
		}
		if !m.validMsg(typ, len(p)) {
			t.Fatalf("delivered message type %d of %d bytes", typ, len(p))
		}
	}
}

// FuzzUDPDatagram feeds arbitrary datagrams to a mux that has one live
// session, raw and (to reach the inner parsing, replay window and
// reassembly) re-sealed with the session's key.
func FuzzUDPDatagram(f *testing.F) {
	a, b := newMemMux(fuzzKey), newMemMux(fuzzKey)
	sa, _, init := memHandshake(f, a, b)
	sa.writeMsg(MsgControl, []byte(`{"op":"x"}`))
	sa.writeFrames([][]byte{make([]byte, bridge.Headroom+3000)}, bridge.Headroom, false)
	sa.sealWhole()
	sa.writeFrames([][]byte{make([]byte, bridge.Headroom+3000)}, bridge.Headroom, false)
	relayMsg(sa, make([]byte, 3000), nil)
	for _, d := range a.io.(*memIO).take() {
		f.Add(d)
	}
	f.Add(init)
	f.Add(append([]byte(nil), udpPunchPacket...))
	stun := make([]byte, 20)
	binary.BigEndian.PutUint32(stun[4:], stunMagicCookie)
	f.Add(stun)
	f.Add([]byte{})
	f.Add([]byte{4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, MsgFrame, 0, 1, 0, 2})
	a.Close()
	b.Close()
	f.Fuzz(func(t *testing.T, data []byte) {
		a, b := newMemMux(fuzzKey), newMemMux(fuzzKey)
		defer a.Close()
		defer b.Close()
		sa, sb, _ := memHandshake(t, a, b)
		feed(b, data, fuzzFromA)
		if len(data) >= udpDataHeaderLen {
			// The same bytes as an authenticated datagram: header from data
			// (its counter too), plaintext = the rest, up to a datagram.
			pt := data[udpDataHeaderLen:]
			if len(pt) > b.maxPayload-udpDataHeaderLen-udpTagLen {
				pt = pt[:b.maxPayload-udpDataHeaderLen-udpTagLen]
			}
			d := make([]byte, udpDataHeaderLen, b.maxPayload)
			copy(d, data)
			d[0] = udpMsgTransport
			binary.BigEndian.PutUint32(d[1:], sb.local)
			var nonce [12]byte
			copy(nonce[4:], d[5:13])
			d = sa.tx.aead.Seal(d, nonce[:], pt, d[:udpDataHeaderLen])
			feedView(b, d, fuzzFromA) // d is unchanged: feedView decrypts a copy
			feed(b, d, fuzzFromA)     // the replay
		}
		if len(data) > udpSealedHeaderLen {
			// The rest as a message sealed whole, of the inner type in
			// data, its chunks fed in order or backwards, one left out or
			// given twice, as data says.
			sa.tx.Lock()
			sa.beginTxLocked()
			sa.appendWholeLocked(data[udpSealedHeaderType], data[udpSealedHeaderLen:])
			sa.flushLocked()
			sa.endTxLocked()
			sa.tx.Unlock()
			ds := a.io.(*memIO).take()
			mode := data[udpSealedHeaderIndex]
			if mode&1 != 0 {
				slices.Reverse(ds)
			}
			for i, d := range ds {
				switch {
				case mode&2 != 0 && i == int(mode>>2)%len(ds):
					continue
				case mode&2 == 0 && i == int(mode>>2)%len(ds):
					feed(b, d, fuzzFromA)
				}
				feedView(b, d, fuzzFromA)
			}
		}
		if len(data) > udpSealedHeaderLen {
			// The rest as a relayed super-frame to a proxy (sb), sealed
			// by a host (sa) or passed on as it is, fed as above.
			sb.relaying.Store(true)
			sb.rxRelayed.Store(true)
			var key *[32]byte
			if data[udpSealedHeaderType]&1 != 0 {
				key = new([32]byte)
			}
			relayMsg(sa, data[udpSealedHeaderLen:], key)
			ds := a.io.(*memIO).take()
			for i, d := range ds {
				if i == int(data[udpSealedHeaderIndex])%len(ds) {
					feed(b, d, fuzzFromA)
				}
				feedView(b, d, fuzzFromA)
			}
		}
		if b.sessionCount() != 1 || b.pendingCount() > 1 {
			t.Fatalf("%d sessions, %d pending", b.sessionCount(), b.pendingCount())
		}
		if sb.reasm.Pending() > udpReassemblyPending || sb.sealedReasm.Pending() > udpReassemblyPending {
			t.Fatalf("%d and %d messages in reassembly", sb.reasm.Pending(), sb.sealedReasm.Pending())
		}
		if got, next := sb.rxGot.Load(), sb.rxNext.Load(); got > next {
			t.Fatalf("%d datagrams counted arrived, of %d sent", got, next)
		}
		checkQueue(t, b, sb)
	})
}

// relayMsg sends msg (a virtio-net header and a frame) from s as a relayed
// message: sealed by s (key nil) or passed on sealed under key.
func relayMsg(s *udpSession, msg []byte, key *[32]byte) {
	s.tx.Lock()
	defer s.tx.Unlock()
	s.beginTxLocked()
	defer s.endTxLocked()
	s.appendRelayLocked(msg, 7, key)
	s.flushLocked()
}

// FuzzUDPHandshake hands arbitrary message-1 bytes to the responder: only
// an authenticated init makes one pending Incoming, a repeat never makes a
// second, and nothing opens a session before the caller accepts.
func FuzzUDPHandshake(f *testing.F) {
	a := newMemMux(fuzzKey)
	for _, h := range []Hello{{Name: "h1", Link: "star-h1"}, {Name: "x"}} {
		d, err := a.newDial(h)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(d.msg1)
		a.endDial(d)
	}
	other, _ := GenerateKey()
	o := newMemMux(other)
	d, _ := o.newDial(Hello{Name: "stranger"})
	f.Add(d.msg1)
	f.Add(make([]byte, udpMinInit))
	f.Add([]byte{1, 2, 3})
	a.Close()
	o.Close()
	f.Fuzz(func(t *testing.T, data []byte) {
		m := newMemMux(fuzzKey)
		defer m.Close()
		m.handleInit(data, fuzzFromA)
		if m.sessionCount() != 0 || m.pendingCount() > 1 || len(m.io.(*memIO).take()) != 0 {
			t.Fatalf("an init alone: %d sessions, %d pending, or answered", m.sessionCount(), m.pendingCount())
		}
		m.handleInit(data, fuzzFromB)
		if m.pendingCount() > 1 {
			t.Fatal("a repeated init made a second pending handshake")
		}
		if m.pendingCount() == 0 {
			return
		}
		in := <-m.acceptCh
		if in.Hello.Version != WireVersion {
			t.Fatalf("accepted version %d", in.Hello.Version)
		}
		tr, err := in.reply(Hello{Name: "b"})
		if err != nil {
			t.Fatal(err)
		}
		if m.sessionCount() != 1 || len(m.io.(*memIO).take()) != 1 {
			t.Fatal("accepting did not make exactly one session and one answer")
		}
		tr.close()
		if m.sessionCount() != 0 {
			t.Fatal("closed session still registered")
		}
	})
}

// FuzzReplayWindow checks the window against a map of every counter seen.
// Each 3 input bytes make one counter: a mode and a 16-bit value.
func FuzzReplayWindow(f *testing.F) {
	f.Add([]byte{0, 0, 1, 0, 0, 2, 1, 0, 1, 0, 0, 2})
	f.Add([]byte{3, 0xff, 0xff, 1, 0x07, 0xc0, 1, 0x07, 0xc1, 2, 0, 5})
	f.Add([]byte{4, 0, 1, 4, 0, 2, 0, 0, 1})
	f.Fuzz(func(t *testing.T, data []byte) {
		var w replayWindow
		seen := map[uint64]bool{}
		var last uint64
		for i := 0; i+3 <= len(data); i += 3 {
			v := uint64(data[i+1])<<8 | uint64(data[i+2])
			var c uint64
			switch data[i] % 5 {
			case 0: // a little ahead
				c = last + v%3000
			case 1: // a little behind, around the window's edge
				c = last - min(last, v%3000)
			case 2: // small absolute
				c = v
			case 3: // a leap
				c = last + v*1000
			case 4: // at the top of the counter space
				c = replayCounterLimit - v%4
			}
			want := c < replayCounterLimit && !seen[c] && (c > last || last-c <= replayWindowSize)
			if got := w.fresh(c); got != want {
				t.Fatalf("counter %d (newest %d): fresh = %v, want %v", c, last, got, want)
			}
			if got := w.accept(c); got != want {
				t.Fatalf("counter %d (newest %d): accept = %v, want %v", c, last, got, want)
			}
			if want {
				seen[c] = true
				last = max(last, c)
			}
		}
	})
}
