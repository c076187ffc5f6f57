package bridge_test

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"vnet/bridge"
	"vnet/bridge/bridgetest"
)

// pushPort follows the PushPort protocol as a tunnel does: its producer
// (Send, one goroutine) pushes a frame when nothing is pending and queues it
// otherwise; Read lets go of the pusher only while it waits, and counts
// down what it took only then.
type pushPort struct {
	in      chan []byte
	done    chan struct{}
	pusher  atomic.Pointer[bridge.Pusher]
	pending atomic.Int32
	popped  int32
	pushed  atomic.Int64
	// offload makes it an OffloadPort: its frames carry their virtio-net
	// header first, and super-frames are pushed alone or not, as a
	// tunnel's are.
	offload bool
}

func (p *pushPort) Offloads() bool { return p.offload }

func (p *pushPort) hdr() int {
	if p.offload {
		return bridge.VnetHdrLen
	}
	return 0
}

func newPushPort(depth int) *pushPort {
	return &pushPort{in: make(chan []byte, depth), done: make(chan struct{})}
}

func (p *pushPort) SetPusher(ps *bridge.Pusher) { p.pusher.Store(ps) }

// Send delivers a frame the way a tunnel's socket reader would.
func (p *pushPort) Send(f []byte, lone bool) {
	if ps := p.pusher.Load(); ps != nil && p.push(ps, f, lone) {
		p.pushed.Add(1)
		return
	}
	p.pending.Add(1)
	p.in <- append([]byte(nil), f...)
}

func (p *pushPort) push(ps *bridge.Pusher, f []byte, lone bool) bool {
	if p.offload {
		return (lone || len(f)-bridge.VnetHdrLen > bridge.MaxFrame) && ps.PushOffload(f, &p.pending)
	}
	return lone && ps.Push(f, &p.pending)
}

func (p *pushPort) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	n := 0
	for n < len(bufs) {
		var f []byte
		select {
		case f = <-p.in:
		default:
			if n > 0 {
				return n, nil
			}
			p.pending.Add(-p.popped)
			p.popped = 0
			ps := p.pusher.Load()
			ps.Release()
			closed := false
			select {
			case f = <-p.in:
			case <-p.done:
				closed = true
			}
			ps.Acquire()
			if closed {
				return 0, net.ErrClosed
			}
		}
		p.popped++
		sizes[n] = copy(bufs[n][offset-p.hdr():], f) - p.hdr()
		n++
	}
	return n, nil
}

func (p *pushPort) Write(bufs [][]byte, offset int) (int, error) { return len(bufs), nil }
func (p *pushPort) BatchSize() int                               { return 8 }
func (p *pushPort) Close() error {
	select {
	case <-p.done:
	default:
		close(p.done)
	}
	return nil
}

// pushRig attaches in (a link, RoleFast) and out (a VM port) to a new
// switch, closed when tb ends, and waits until in has its Pusher.
func pushRig(tb testing.TB, in *pushPort, out bridge.Port) *bridge.Switch {
	tb.Helper()
	sw := bridge.New(bridge.Config{})
	tb.Cleanup(sw.Close)
	if err := sw.AddPort("in", bridge.RoleFast, in); err != nil {
		tb.Fatal(err)
	}
	if err := sw.AddPort("out", bridge.RoleLocal, out); err != nil {
		tb.Fatal(err)
	}
	for in.pusher.Load() == nil {
		time.Sleep(time.Millisecond)
	}
	return sw
}

// TestPushPortKeepsOrder: frames of a PushPort arrive in the order they
// were sent, whether pushed (lone, with the reader idle) or read (bursts,
// or the reader still busy), none lost, and the push path was taken.
func TestPushPortKeepsOrder(t *testing.T) {
	const n = 5000
	in := newPushPort(n)
	out := &quickPort{ChanPort: bridgetest.NewChanPort(n), slow: rand.New(rand.NewPCG(1, 2))}
	sw := pushRig(t, in, out)
	a, b := [6]byte{0x02, 0, 0, 0, 0, 1}, [6]byte{0x02, 0, 0, 0, 0, 2}
	out.Inject(bridgetest.Frame(a, b, make([]byte, 46))) // learn b on out
	waitFor(t, "b learned", func() bool { p, _ := sw.Where(b); return p == "out" })
	sendNumbered(n, b, a, in.Send)
	expectInOrder(t, out.ChanPort, n)
	if in.pushed.Load() == 0 || in.pushed.Load() == n {
		t.Fatalf("%d of %d frames pushed: the test did not mix the two paths", in.pushed.Load(), n)
	}
	t.Logf("%d of %d frames pushed", in.pushed.Load(), n)
}

// TestPushOffloadKeepsOrder is TestPushPortKeepsOrder for an offloading
// port sending super-frames and small frames to an offloading quick port:
// every frame arrives whole, header and all, in order, whether pushed or
// read, and written by the reader itself or by the port's writer.
func TestPushOffloadKeepsOrder(t *testing.T) {
	const n = 1500
	in := newPushPort(n)
	in.offload = true
	out := &quickPort{ChanPort: bridgetest.NewOffloadChanPort(n), slow: rand.New(rand.NewPCG(5, 6))}
	sw := pushRig(t, in, out)
	a, b := [6]byte{0x02, 0, 0, 0, 0, 1}, [6]byte{0x02, 0, 0, 0, 0, 2}
	out.Inject(withHdr(bridge.VnetHdr{}, bridgetest.Frame(a, b, make([]byte, 46)))) // learn b on out
	waitFor(t, "b learned", func() bool { p, _ := sw.Where(b); return p == "out" })
	sent := make([][]byte, 0, n)
	supers := 0
	sendNumberedWith(n, func(i int) []byte {
		f := numberedOffload(b, a, i)
		if len(f)-bridge.VnetHdrLen > bridge.MaxFrame {
			supers++
		}
		sent = append(sent, f)
		return f
	}, func(f []byte, lone bool) {
		// Keep fewer super-frames queued for out than the switch
		// holds: the test is about order, not about the queue's bound.
		for {
			st, _ := sw.PortStats("out")
			if len(sent)-int(st.TxFrames) < 32 {
				break
			}
			time.Sleep(20 * time.Microsecond)
		}
		in.Send(f, lone)
	})
	for i := range n {
		got, ok := out.Expect(5 * time.Second)
		if !ok {
			t.Fatalf("frame %d of %d never arrived", i, n)
		}
		if !bytes.Equal(got, sent[i]) {
			t.Fatalf("frame %d: got %d bytes (number %d), want the %d sent", i, len(got),
				binary.BigEndian.Uint32(got[bridge.VnetHdrLen+14:]), len(sent[i]))
		}
	}
	if p := in.pushed.Load(); p == 0 || p == n {
		t.Fatalf("%d of %d frames pushed: the test did not mix the two paths", p, n)
	}
	if st, _ := sw.PortStats("out"); st.TxFrames != n {
		t.Fatalf("out: %d frames written, drops %v; want %d", st.TxFrames, st.Drops, n)
	}
	t.Logf("%d of %d frames pushed; %d super-frames", in.pushed.Load(), n, supers)
}

// numberedOffload is frame i of TestPushOffloadKeepsOrder behind its
// virtio-net header: two in three are super-frames (TCPv4 segmentation, up
// to 40 KB), the others plain.
func numberedOffload(dst, src [6]byte, i int) []byte {
	if i%3 == 0 {
		payload := make([]byte, 46)
		binary.BigEndian.PutUint32(payload, uint32(i))
		return withHdr(bridge.VnetHdr{}, bridgetest.Frame(dst, src, payload))
	}
	payload := make([]byte, bridge.MaxFrame+i%40*1000)
	binary.BigEndian.PutUint32(payload, uint32(i))
	for j := 4; j < len(payload); j++ {
		payload[j] = byte(i + j)
	}
	return withHdr(bridge.VnetHdr{GSOType: 1, GSOSize: 1448, HdrLen: 54}, bridgetest.Frame(dst, src, payload))
}

func withHdr(h bridge.VnetHdr, frame []byte) []byte {
	b := make([]byte, bridge.VnetHdrLen, bridge.VnetHdrLen+len(frame))
	h.Put(b)
	return append(b, frame...)
}

// TestPushOffloadRefused: PushOffload forwards nothing for a port that
// does not offload, while frames are pending, or for a message shorter
// than its header or longer than a super-frame; each refusal is checked
// between two pushes that went through, so the reader was waiting.
func TestPushOffloadRefused(t *testing.T) {
	a, b := [6]byte{0x02, 0, 0, 0, 0, 1}, [6]byte{0x02, 0, 0, 0, 0, 2}
	super := numberedOffload(b, a, 1)
	for _, offload := range []bool{false, true} {
		in := newPushPort(4)
		in.offload = offload
		out := bridgetest.NewOffloadChanPort(16)
		pushRig(t, in, out)
		ps := in.pusher.Load()
		var pending atomic.Int32
		good := func() bool { return ps.Push(bridgetest.Frame(b, a, make([]byte, 46)), &pending) }
		if offload {
			good = func() bool { return ps.PushOffload(super, &pending) }
		}
		waitFor(t, "a push", good)
		refused := map[string]func() bool{}
		if offload {
			refused["a super-frame past a pending frame"] = func() bool {
				pending.Store(1)
				defer pending.Store(0)
				return ps.PushOffload(super, &pending)
			}
			refused["a message shorter than its header"] = func() bool {
				return ps.PushOffload(super[:bridge.VnetHdrLen-1], &pending)
			}
			refused["a message longer than a super-frame"] = func() bool {
				return ps.PushOffload(make([]byte, bridge.VnetHdrLen+bridge.MaxSuperFrame+1), &pending)
			}
		} else {
			refused["a super-frame on a port that does not offload"] = func() bool { return ps.PushOffload(super, &pending) }
		}
		for what, push := range refused {
			if push() {
				t.Errorf("offload %v: pushed %s", offload, what)
			}
			if !good() {
				t.Fatalf("offload %v: after %s, a good push was refused", offload, what)
			}
		}
		for i := range 1 + len(refused) {
			got, ok := out.Expect(5 * time.Second)
			if !ok {
				t.Fatalf("offload %v: %d of %d good pushes arrived", offload, i, 1+len(refused))
			}
			if offload && !bytes.Equal(got, super) {
				t.Fatalf("offload %v: a pushed super-frame arrived as %d bytes, want %d", offload, len(got), len(super))
			}
		}
		if extra, ok := out.Expect(50 * time.Millisecond); ok {
			t.Fatalf("offload %v: a refused push arrived (%d bytes)", offload, len(extra))
		}
	}
}

// sinkPort is an offloading quick port that counts what it is given.
type sinkPort struct {
	done   chan struct{}
	frames atomic.Int64
}

func (p *sinkPort) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	<-p.done
	return 0, net.ErrClosed
}
func (p *sinkPort) Write(bufs [][]byte, offset int) (int, error) {
	p.frames.Add(int64(len(bufs)))
	return len(bufs), nil
}
func (p *sinkPort) BatchSize() int    { return 8 }
func (p *sinkPort) Close() error      { close(p.done); return nil }
func (p *sinkPort) Offloads() bool    { return true }
func (p *sinkPort) QuickWrites() bool { return true }

// BenchmarkPushOffload: a 64 KB super-frame pushed from an offloading
// port to an idle quick one, all on the caller's goroutine: copied in
// (PushOffload) or written in place (Lend, as a cipher opening into it).
func BenchmarkPushOffload(b *testing.B) {
	for _, inPlace := range []bool{false, true} {
		b.Run(map[bool]string{false: "copy", true: "lend"}[inPlace], func(b *testing.B) {
			in := newPushPort(1)
			in.offload = true
			out := &sinkPort{done: make(chan struct{})}
			sw := pushRig(b, in, out)
			src, dst := [6]byte{0x02, 0, 0, 0, 0, 1}, [6]byte{0x02, 0, 0, 0, 0, 2}
			msg := withHdr(bridge.VnetHdr{GSOType: 1, GSOSize: 1448, HdrLen: 54},
				bridgetest.Frame(dst, src, make([]byte, bridge.MaxSuperFrame-14)))
			if err := sw.Announce("out", []bridge.MAC{dst}); err != nil {
				b.Fatal(err)
			}
			ps := in.pusher.Load()
			var pending atomic.Int32
			for !ps.PushOffload(msg, &pending) { // until the reader waits
				time.Sleep(time.Millisecond)
			}
			b.SetBytes(int64(len(msg)))
			b.ReportAllocs()
			for b.Loop() {
				if !inPlace {
					if !ps.PushOffload(msg, &pending) {
						b.Fatal("refused")
					}
					continue
				}
				buf := ps.Lend(len(msg), &pending)
				if buf == nil {
					b.Fatal("refused")
				}
				copy(buf[:bridge.VnetHdrLen+14], msg) // the headers only: the rest stands for a cipher's output
				ps.Forward(len(msg))
			}
			b.StopTimer()
			if out.frames.Load() < int64(b.N) {
				b.Fatalf("%d of %d super-frames written", out.frames.Load(), b.N)
			}
		})
	}
}
