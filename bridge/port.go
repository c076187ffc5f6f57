package bridge

import (
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Frame sizes. A buffer holds Headroom bytes that a link may fill with its
// own header in place, then the frame itself.
const (
	// MaxFrame is the largest Ethernet frame (without FCS) the switch
	// carries: a 9000-byte jumbo payload plus header and one VLAN tag.
	MaxFrame = 9018 + 4
	// Headroom is free space before each frame in a pooled buffer, enough
	// for the largest link header, so links never copy to prepend one.
	Headroom = 64
	// BufSize is the size of one pooled buffer.
	BufSize = Headroom + MaxFrame
	// MinFrame is the shortest frame the switch accepts: two MACs and an
	// EtherType. Shorter input is dropped and counted as "runt".
	MinFrame = 14
)

// Port moves Ethernet frames between the switch and something outside it:
// a TAP device, a QEMU socket, a netstack VM or a link to another daemon.
//
// Contract (modelled on wireguard-go's tun.Device and conn.Bind):
//   - Read blocks until at least one frame is available, then fills
//     bufs[i][offset:] with up to len(bufs) frames, sets sizes[i] to the
//     length of frame i and returns how many it filled. bufs are owned by
//     the caller; Read must not keep them. A frame longer than
//     len(bufs[i])-offset is dropped by the port (and counted by it), never
//     truncated.
//   - Write sends frames bufs[i][offset:]. The bytes bufs[i][:offset] are
//     headroom the port may overwrite (to write a header in place). Write
//     must not keep the slices after it returns. It returns how many frames
//     it consumed; an error means the remaining frames were not sent.
//   - BatchSize is the most frames Read returns or Write wants at once; it
//     does not change during the port's life.
//   - Close makes blocked and later Reads return net.ErrClosed (possibly
//     wrapped) and later Writes fail. Close is safe to call more than once.
//   - Read and Write may be called concurrently with each other, but the
//     switch never calls Read from two goroutines at once, nor Write.
type Port interface {
	Read(bufs [][]byte, sizes []int, offset int) (n int, err error)
	Write(bufs [][]byte, offset int) (n int, err error)
	BatchSize() int
	Close() error
}

// ErrClosed is what a closed port's Read returns.
var ErrClosed = net.ErrClosed

// QuickPort is a Port whose Write returns at once whatever its peer does (a
// TAP device, a datagram link, an in-process VM: they drop rather than
// wait). The switch may write a lone frame to it from the reader's
// goroutine, when its writer is idle, to save a goroutine wake-up on the
// latency path. Ports whose Write may block on a slow peer (streams) must
// not report true: the reader would stall with them.
type QuickPort interface {
	Port
	QuickWrites() bool
}

// PushPort is a Port whose frames arrive on a goroutine of its own (a
// tunnel's socket reader) and are then queued for Read. When a frame comes
// alone, the port may hand it to the switch there and then with
// Pusher.Push, which saves the hop through Read's goroutine (a wake-up of
// another thread, often on another CPU) on the latency path.
type PushPort interface {
	Port
	// SetPusher gives the port its Pusher, before the switch first reads.
	SetPusher(*Pusher)
}

// Pusher is the switch's way in for a PushPort. The switch's reader of the
// port holds it while it reads and forwards; the port's Read lets go of it
// (Release) just before it waits for more frames and takes it back
// (Acquire) as soon as it wakes, whatever woke it. Push forwards a frame
// only while the reader waits with nothing in hand and the port has nothing
// queued (pending is zero), so no frame overtakes one that came before it.
type Pusher struct {
	mu    sync.Mutex
	r     *reader // nil once the reader has stopped
	views [][]byte
	lent  *frame // the buffer between Lend and Forward or Unlend
}

// Release lets Push run while Read waits. Read's goroutine only.
func (p *Pusher) Release() { p.mu.Unlock() }

// Acquire takes the reader's lock back after a wait. Read's goroutine only.
func (p *Pusher) Acquire() { p.mu.Lock() }

// Push forwards frame (it is copied) as a batch of one if the port's reader
// is waiting and pending, the port's count of frames queued for Read and
// not yet forwarded, is zero. It reports whether it did; if not, the port
// queues the frame for Read as usual. It never blocks.
func (p *Pusher) Push(frame []byte, pending *atomic.Int32) bool {
	if !p.mu.TryLock() {
		return false
	}
	defer p.mu.Unlock()
	r := p.r
	if r == nil || pending.Load() != 0 || len(frame) > MaxFrame {
		return false
	}
	s := r.s
	f := s.getFrame(false)
	f.n = copy(f.buf[Headroom:], frame)
	clear(f.slot())
	p.forward(f)
	return true
}

// PushOffload is Push for an OffloadPort's frame: msg is the frame's
// virtio-net header followed by the frame, a super-frame or not. A port
// that does not offload refuses every one. Pushing super-frames saves a
// wake-up of the port's reader per 64 KB at every hop that receives bulk
// TCP over a datagram link (results/2026-12-08a-peers.*, bench/README).
func (p *Pusher) PushOffload(msg []byte, pending *atomic.Int32) bool {
	if len(msg)-VnetHdrLen > MaxSuperFrame {
		return false
	}
	buf := p.Lend(len(msg), pending)
	if buf == nil {
		return false
	}
	p.Forward(copy(buf, msg))
	return true
}

// Lend begins a push whose message (a virtio-net header and a frame, as
// for PushOffload) the caller writes in place, such as a cipher opening
// into it: it returns a buffer of n bytes, or nil where PushOffload would
// refuse (but n may be SealOverhead longer, for ForwardSealed). After a
// buffer, the caller must call Forward or Unlend, soon (the port's reader
// waits meanwhile), from the same goroutine.
func (p *Pusher) Lend(n int, pending *atomic.Int32) []byte {
	if n < VnetHdrLen || n-VnetHdrLen > MaxSuperFrame+SealOverhead || !p.mu.TryLock() {
		return nil
	}
	r := p.r
	if r == nil || !r.in.offload || pending.Load() != 0 {
		p.mu.Unlock()
		return nil
	}
	p.lent = r.s.getFrame(n-VnetHdrLen > MaxFrame) // a small frame leaves in a small buffer, as from Read
	return p.lent.buf[Headroom-VnetHdrLen : Headroom-VnetHdrLen+n]
}

// Forward forwards the first n bytes of the lent buffer (at most what
// Lend gave) and ends the push.
func (p *Pusher) Forward(n int) {
	f := p.lent
	p.lent = nil
	f.n = n - VnetHdrLen
	p.forward(f)
	p.mu.Unlock()
}

// Unlend ends a push without forwarding anything.
func (p *Pusher) Unlend() {
	p.r.s.putFrame(p.lent)
	p.lent = nil
	p.mu.Unlock()
}

// forward forwards f, a batch of one, from the port; the caller holds mu.
func (p *Pusher) forward(f *frame) {
	r, s := p.r, p.r.s
	if s.observer != nil {
		p.views[0] = f.data()
		s.observer.ObserveBatch(r.in.name, r.in.role, p.views)
		p.views[0] = nil
	}
	r.lone = true
	if !r.forward(f, time.Now().UnixNano()) {
		s.putFrame(f)
	}
}
