package bridge_test

import (
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
}

func newPushPort(depth int) *pushPort {
	return &pushPort{in: make(chan []byte, depth), done: make(chan struct{})}
}

func (p *pushPort) SetPusher(ps *bridge.Pusher) { p.pusher.Store(ps) }

// Send delivers a frame the way a tunnel's socket reader would.
func (p *pushPort) Send(f []byte, lone bool) {
	if ps := p.pusher.Load(); lone && ps != nil && ps.Push(f, &p.pending) {
		p.pushed.Add(1)
		return
	}
	p.pending.Add(1)
	p.in <- append([]byte(nil), f...)
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
		sizes[n] = copy(bufs[n][offset:], f)
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

// TestPushPortKeepsOrder: frames of a PushPort arrive in the order they
// were sent, whether pushed (lone, with the reader idle) or read (bursts,
// or the reader still busy), none lost, and the push path was taken.
func TestPushPortKeepsOrder(t *testing.T) {
	const n = 5000
	sw := bridge.New(bridge.Config{})
	t.Cleanup(sw.Close)
	in := newPushPort(n)
	out := &quickPort{ChanPort: bridgetest.NewChanPort(n), slow: rand.New(rand.NewPCG(1, 2))}
	if err := sw.AddPort("in", bridge.RoleFast, in); err != nil {
		t.Fatal(err)
	}
	if err := sw.AddPort("out", bridge.RoleLocal, out); err != nil {
		t.Fatal(err)
	}
	a, b := [6]byte{0x02, 0, 0, 0, 0, 1}, [6]byte{0x02, 0, 0, 0, 0, 2}
	out.Inject(bridgetest.Frame(a, b, make([]byte, 46))) // learn b on out
	waitFor(t, "b learned", func() bool { p, _ := sw.Where(b); return p == "out" })
	for in.pusher.Load() == nil {
		time.Sleep(time.Millisecond)
	}
	sendNumbered(n, b, a, in.Send)
	expectInOrder(t, out.ChanPort, n)
	if in.pushed.Load() == 0 || in.pushed.Load() == n {
		t.Fatalf("%d of %d frames pushed: the test did not mix the two paths", in.pushed.Load(), n)
	}
	t.Logf("%d of %d frames pushed", in.pushed.Load(), n)
}
