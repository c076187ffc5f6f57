package bridge_test

import (
	"bytes"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"vnet/bridge"
	"vnet/bridge/bridgetest"
)

// xorSeal is a toy end-to-end seal for the switch's tests: the payload
// (from byte 14 of the frame) XORed with meta[0], then SealOverhead bytes
// of meta[1] as the "tag".
type xorSeal struct{ opened atomic.Int64 }

func (x *xorSeal) seal(meta *[bridge.SealMetaLen]byte, msg []byte) []byte {
	out := bytes.Clone(msg)
	for i := bridge.VnetHdrLen + bridge.MinFrame; i < len(out); i++ {
		out[i] ^= meta[0]
	}
	return append(out, bytes.Repeat([]byte{meta[1]}, bridge.SealOverhead)...)
}

func (x *xorSeal) Unseal(meta *[bridge.SealMetaLen]byte, msg []byte) (int, bool) {
	n := len(msg) - bridge.SealOverhead
	if n < bridge.VnetHdrLen+bridge.MinFrame || !bytes.Equal(msg[n:], bytes.Repeat([]byte{meta[1]}, bridge.SealOverhead)) {
		return 0, false
	}
	for i := bridge.VnetHdrLen + bridge.MinFrame; i < n; i++ {
		msg[i] ^= meta[0]
	}
	x.opened.Add(1)
	return n - bridge.VnetHdrLen, true
}

// sealedChanPort is an offloading ChanPort that may take sealed frames,
// and records the seal marker and metadata of every frame written to it.
type sealedChanPort struct {
	*bridgetest.ChanPort
	takes bool
	seen  chan [1 + bridge.SealMetaLen]byte
}

func (p *sealedChanPort) TakesSealed() bool { return p.takes }

func (p *sealedChanPort) Write(bufs [][]byte, offset int) (int, error) {
	for _, b := range bufs {
		var m [1 + bridge.SealMetaLen]byte
		copy(m[:], b[offset-bridge.VnetHdrLen-bridge.SealMetaLen-1:])
		p.seen <- m
	}
	return p.ChanPort.Write(bufs, offset)
}

// TestForwardSealed: a frame pushed sealed leaves sealed (marker and
// metadata in the headroom) by a port that takes it, opened by one that
// does not (and by both, when a flood reaches both), and is dropped as
// bad-seal when it does not open.
func TestForwardSealed(t *testing.T) {
	in := newPushPort(4)
	in.offload = true
	relay := &sealedChanPort{ChanPort: bridgetest.NewOffloadChanPort(16), takes: true, seen: make(chan [1 + bridge.SealMetaLen]byte, 16)}
	plain := &sealedChanPort{ChanPort: bridgetest.NewOffloadChanPort(16), seen: make(chan [1 + bridge.SealMetaLen]byte, 16)}
	sw := bridge.New(bridge.Config{})
	defer sw.Close()
	for name, p := range map[string]bridge.Port{"in": in, "relay": relay, "plain": plain} {
		if err := sw.AddPort(name, bridge.RoleStar, p); err != nil {
			t.Fatal(err)
		}
	}
	for in.pusher.Load() == nil {
		time.Sleep(time.Millisecond)
	}
	src, onRelay, onPlain := [6]byte{2, 0, 0, 0, 0, 1}, [6]byte{2, 0, 0, 0, 0, 2}, [6]byte{2, 0, 0, 0, 0, 3}
	hdr := make([]byte, bridge.VnetHdrLen)
	relay.Inject(append(hdr, bridgetest.Frame(src, onRelay, make([]byte, 46))...))
	plain.Inject(append(hdr, bridgetest.Frame(src, onPlain, make([]byte, 46))...))
	for _, p := range []*sealedChanPort{relay, plain} { // each got the other's flood
		if _, ok := p.Expect(5 * time.Second); !ok {
			t.Fatal("a flood never arrived")
		}
		<-p.seen
	}
	waitFor(t, "both MACs learned", func() bool {
		_, a := sw.Where(bridge.MAC(onRelay))
		_, b := sw.Where(bridge.MAC(onPlain))
		return a && b
	})

	var x xorSeal
	payload := 3000
	push := func(dst [6]byte, meta [bridge.SealMetaLen]byte, corrupt bool) []byte {
		t.Helper()
		msg := append(bytes.Clone(hdr), bridgetest.Frame(dst, src, bytes.Repeat([]byte{0xab}, payload))...)
		sealed := x.seal(&meta, msg)
		if corrupt {
			sealed[len(sealed)-1] ^= 1
		}
		ps := in.pusher.Load()
		for {
			if buf := ps.Lend(len(sealed), &in.pending); buf != nil {
				copy(buf, sealed)
				ps.ForwardSealed(len(sealed), &x, &meta)
				return msg
			}
			time.Sleep(time.Millisecond) // the reader is not waiting yet
		}
	}
	expect := func(p *sealedChanPort, want []byte, marker byte, meta *[bridge.SealMetaLen]byte) {
		t.Helper()
		got, ok := p.Expect(5 * time.Second)
		if !ok {
			t.Fatal("the frame never arrived")
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("arrived as %d bytes %x..., want %d bytes %x...", len(got), got[:40], len(want), want[:40])
		}
		m := <-p.seen
		if p.takes && m[0] != marker {
			t.Fatalf("seal marker %#x, want %#x", m[0], marker)
		}
		if meta != nil && !bytes.Equal(m[1:], meta[:]) {
			t.Fatalf("metadata %x, want %x", m[1:], meta[:])
		}
	}
	meta := [bridge.SealMetaLen]byte{0x5a, 0x77, 3, 4, 5}

	msg := push(onRelay, meta, false)
	expect(relay, x.seal(&meta, msg), bridge.SealMarker, &meta)
	if n := x.opened.Load(); n != 0 {
		t.Fatalf("a frame to a port that takes it sealed was opened %d times", n)
	}

	msg = push(onPlain, meta, false)
	expect(plain, msg, 0, nil)
	if n := x.opened.Load(); n != 1 {
		t.Fatalf("opened %d times, want 1", n)
	}

	// A flood to both: opened once, before it is copied.
	msg = push([6]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, meta, false)
	expect(relay, msg, 0, nil)
	expect(plain, msg, 0, nil)
	if n := x.opened.Load(); n != 2 {
		t.Fatalf("opened %d times, want 2", n)
	}

	push(onPlain, meta, true)
	waitFor(t, "bad-seal counted", func() bool {
		st, _ := sw.PortStats("in")
		return st.Drops["bad-seal"] == 1
	})
	// And the next one still goes: nothing was lost but the forgery.
	msg = push(onRelay, meta, false)
	expect(relay, x.seal(&meta, msg), bridge.SealMarker, &meta)
	select {
	case f := <-plain.Out:
		t.Fatalf("the forged frame reached a port: %d bytes", len(f))
	default:
	}

	// A jumbo frame whose checksum is left to do, as large as a plain frame
	// may be: its header is checked against its length once open.
	payload = bridge.MaxFrame - bridge.MinFrame
	hdr = make([]byte, bridge.VnetHdrLen)
	bridge.VnetHdr{Flags: 1, CsumStart: 34, CsumOffset: 16}.Put(hdr)
	msg = push(onRelay, meta, false)
	expect(relay, x.seal(&meta, msg), bridge.SealMarker, &meta)

	// A shaped port (vnet demo's star links) relays sealed frames if the
	// port it shapes does, and only then.
	for _, p := range []*sealedChanPort{relay, plain} {
		sp, ok := bridge.Shape(p, rate.NewLimiter(rate.Inf, 1)).(bridge.SealedPort)
		if !ok || sp.TakesSealed() != p.takes {
			t.Fatalf("shaped port: a SealedPort %v, takes sealed frames %v; want %v", ok, ok && sp.TakesSealed(), p.takes)
		}
	}
}
