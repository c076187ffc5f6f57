package tunnel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"vnet/bridge"
)

// Keepalive timing. Package variables so tests can shrink them.
var (
	// KeepaliveInterval is how often a link pings its peer.
	KeepaliveInterval = time.Second
	// DeadAfter is how long a link waits without hearing anything before it
	// declares the peer dead: a few missed pings, so a cut is noticed within
	// a few seconds.
	DeadAfter = 4 * time.Second
	// BusyDeadAfter is the shorter silence after which a link that is
	// sending frames declares its peer dead. Traffic in flight is what a cut
	// hurts, and frames sent bring answers (ACKs, echoes) back quickly, so
	// such a link fails over to the star sooner; an idle one waits DeadAfter.
	BusyDeadAfter = 2500 * time.Millisecond
	// WriteTimeout bounds one batch write, so a stuck peer cannot stall the
	// switch's writer; the link is closed when it expires.
	WriteTimeout = 5 * time.Second
)

// linkBatch is how many frames a link reads or writes at once.
const linkBatch = 64

// ControlHandler receives a link's control messages on the goroutine that
// reads the link. It must not block for long; msg is valid only during the
// call.
type ControlHandler func(l *Link, msg []byte)

// Link is an authenticated connection to another daemon over some
// transport. It is a bridge.Port for frames and also carries control
// messages and keepalives.
type Link struct {
	t         transport
	peer      Hello
	offload   bool // super-frames cross (offload.go)
	log       *slog.Logger
	onControl ControlHandler

	wmu sync.Mutex // serialises writes to t

	keepalive, deadAfter, busyDeadAfter, writeTimeout time.Duration // from the package vars, at creation

	epoch   time.Time
	lastRx  atomic.Int64 // ns since epoch of the last message received
	txBytes atomic.Uint64
	rxBytes atomic.Uint64
	txBusy  atomic.Int64 // ns spent inside the transport's writeFrames
	// rxRefused counts super-frames from a peer that was not offered them.
	rxRefused atomic.Uint64
	est       *estimator // passive measurement (measure.go)

	closeOnce sync.Once
	done      chan struct{}
	quiet     chan struct{} // closed to stop keepalives (tests)
	quietOnce sync.Once
	errMu     sync.Mutex
	err       error
}

var (
	_ bridge.OffloadPort = (*Link)(nil)
	_ bridge.LimitPort   = (*Link)(nil)
	_ bridge.SealedPort  = (*Link)(nil)
)

func newLink(t transport, me, peer Hello, log *slog.Logger, h ControlHandler) *Link {
	l := &Link{t: t, peer: peer, log: log, onControl: h, epoch: time.Now(), done: make(chan struct{}),
		quiet: make(chan struct{}), est: newEstimator()}
	if st, ok := t.(superTransport); ok && me.Offload && peer.Offload && st.carriesSuper() {
		l.offload = true
	}
	if st, ok := t.(sealingTransport); ok && peer.Sealed {
		st.sealWhole()
	}
	if rt, ok := t.(relayTransport); ok && l.offload && peer.Relay && peer.Sealed {
		rt.relayWith(me, peer)
	}
	l.keepalive, l.deadAfter, l.busyDeadAfter, l.writeTimeout = KeepaliveInterval, DeadAfter, BusyDeadAfter, WriteTimeout
	go l.routineKeepalive()
	return l
}

// Peer is the Hello the other side sent.
func (l *Link) Peer() Hello { return l.peer }

// Kind is the link kind: tcp, udp or quic.
func (l *Link) Kind() string { return l.t.kind() }

// RemoteAddr is the underlay address of the peer.
func (l *Link) RemoteAddr() net.Addr { return l.t.remoteAddr() }

// LocalAddr is our underlay address of this link.
func (l *Link) LocalAddr() net.Addr { return l.t.localAddr() }

// RTT is the path's round-trip time: the smallest keepalive echo of the
// last RTTWindow (zero until measured). See Measurement for more.
func (l *Link) RTT() time.Duration { return l.Measurement().RTT }

// Measurement is what the link has learnt about its path from the traffic
// that crossed it (see measure.go).
func (l *Link) Measurement() Measurement { return l.est.measurement(l.since()) }

// TransportStats are the transport's own counters (datagrams, drops by
// reason), when it keeps any.
func (l *Link) TransportStats() map[string]uint64 {
	var out map[string]uint64
	if st, ok := l.t.(interface{ Stats() map[string]uint64 }); ok {
		out = st.Stats()
	}
	if n := l.rxRefused.Load(); n > 0 {
		if out == nil {
			out = map[string]uint64{}
		}
		out["offload-refused"] = n
	}
	return out
}

// TakesSealed implements bridge.SealedPort: a proxy's UDP link to a host
// passes super-frames on as their sender sealed them (udp_relay.go).
func (l *Link) TakesSealed() bool {
	rt, ok := l.t.(relayTransport)
	return ok && rt.takesSealed()
}

// Offloads implements bridge.OffloadPort: super-frames cross this link
// whole when both daemons offered them (Hello.Offload) and the transport
// carries them (TCP and UDP links; not QUIC's datagrams).
func (l *Link) Offloads() bool { return l.offload }

// FrameLimit implements bridge.LimitPort: the largest frame the link
// carries whole when it may not split frames (UDPOptions.NoFragment), else
// 0 (no limit: stream links, and datagram links that split).
func (l *Link) FrameLimit() int {
	if fl, ok := l.t.(interface{ frameLimit() int }); ok {
		return fl.frameLimit()
	}
	return 0
}

// TxBytes and RxBytes count frame bytes sent and received.
func (l *Link) TxBytes() uint64 { return l.txBytes.Load() }
func (l *Link) RxBytes() uint64 { return l.rxBytes.Load() }

// Done is closed when the link is closed or dies.
func (l *Link) Done() <-chan struct{} { return l.done }

// Err says why the link ended (nil while it is up, or after a plain Close).
func (l *Link) Err() error {
	l.errMu.Lock()
	defer l.errMu.Unlock()
	return l.err
}

// BatchSize implements bridge.Port.
func (l *Link) BatchSize() int { return linkBatch }

// QuickWrites implements bridge.QuickPort: a datagram link's Write sends
// and returns (the network drops what it cannot take); a stream's may wait
// for a slow peer's window.
func (l *Link) QuickWrites() bool { return l.t.kind() == "udp" }

// Close implements bridge.Port.
func (l *Link) Close() error { l.fail(nil); return nil }

func (l *Link) fail(err error) {
	l.closeOnce.Do(func() {
		l.errMu.Lock()
		l.err = err
		l.errMu.Unlock()
		close(l.done)
		l.t.close()
	})
}

func (l *Link) since() int64 { return int64(time.Since(l.epoch)) }

// Read implements bridge.Port. It handles control and keepalive messages
// itself and returns only frames. Any error closes the link; Read then
// reports net.ErrClosed (the reason is in Err).
func (l *Link) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	n := 0
	for n < len(bufs) {
		if n > 0 && !l.t.more() {
			break
		}
		typ, payload, err := l.t.readMsg(bufs[n], offset)
		if err != nil {
			return n, l.readFailed(err)
		}
		l.lastRx.Store(l.since())
		switch typ {
		case MsgFrame:
			if l.offload {
				clear(bufs[n][offset-bridge.VnetHdrLen : offset])
			}
			sizes[n] = len(payload)
			l.rxBytes.Add(uint64(len(payload)))
			n++
		case MsgFrameGSO:
			if !l.offload { // the peer sends what it was not offered
				l.rxRefused.Add(1)
				continue
			}
			sizes[n] = len(payload) - bridge.VnetHdrLen
			l.rxBytes.Add(uint64(sizes[n]))
			n++
		case MsgPing:
			var b [8]byte
			copy(b[:], payload)
			l.send(MsgPong, b[:])
			l.est.peerPing(l.since(), int64(binary.BigEndian.Uint64(b[:])))
		case MsgPong:
			if len(payload) == 8 {
				if sent := int64(binary.BigEndian.Uint64(payload)); sent > 0 && sent <= l.since() {
					l.est.echo(l.since() - sent)
				}
			}
		case MsgControl:
			if l.onControl != nil {
				l.onControl(l, payload)
			}
		}
	}
	return n, nil
}

// pushTransport is a transport with a push path (bridge.PushPort).
type pushTransport interface {
	setPusher(p *bridge.Pusher, l *Link)
}

var _ bridge.PushPort = (*Link)(nil)

// SetPusher implements bridge.PushPort. Only UDP links use it; on others
// the switch's reader keeps the pusher's lock and nothing is pushed.
func (l *Link) SetPusher(p *bridge.Pusher) {
	if pt, ok := l.t.(pushTransport); ok {
		pt.setPusher(p, l)
	}
}

// pushed counts a frame that the push path delivered, as Read counts those
// it returns.
func (l *Link) pushed(n int) {
	l.lastRx.Store(l.since())
	l.rxBytes.Add(uint64(n))
}

func (l *Link) readFailed(err error) error {
	select {
	case <-l.done:
	default:
		if errors.Is(err, io.EOF) {
			err = errors.New("closed by peer")
		}
		l.fail(err)
	}
	return net.ErrClosed
}

// Write implements bridge.Port: the batch goes out at once, each header
// written into the frame's headroom.
func (l *Link) Write(bufs [][]byte, offset int) (int, error) {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	l.armWriteDeadline()
	start := l.since()
	err := l.t.writeFrames(bufs, offset, l.offload)
	// Time stuck here is the sign of a path that takes less than it is
	// offered (a full socket buffer or congestion window): measure.go.
	l.txBusy.Add(l.since() - start)
	if err != nil {
		return 0, l.writeFailed(err)
	}
	var bytes uint64
	for _, b := range bufs {
		bytes += uint64(len(b) - offset)
	}
	l.txBytes.Add(bytes)
	return len(bufs), nil
}

// armWriteDeadline bounds the next write on transports that can block.
func (l *Link) armWriteDeadline() {
	if d, ok := l.t.(interface{ SetWriteDeadline(time.Time) error }); ok {
		d.SetWriteDeadline(time.Now().Add(l.writeTimeout))
	}
}

func (l *Link) writeFailed(err error) error {
	l.fail(fmt.Errorf("write: %w", err))
	return net.ErrClosed
}

// SendControl sends one control message.
func (l *Link) SendControl(msg []byte) error {
	limit := MaxControl
	if c, ok := l.t.(interface{ controlLimit() int }); ok {
		limit = c.controlLimit()
	}
	if len(msg) == 0 || len(msg) > limit {
		return fmt.Errorf("control message of %d bytes does not fit a %s link (at most %d)", len(msg), l.t.kind(), limit)
	}
	return l.send(MsgControl, msg)
}

func (l *Link) send(typ byte, payload []byte) error {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	select {
	case <-l.done:
		return net.ErrClosed
	default:
	}
	l.armWriteDeadline()
	if err := l.t.writeMsg(typ, payload); err != nil {
		return l.writeFailed(err)
	}
	return nil
}

func (l *Link) stopKeepalive() { l.quietOnce.Do(func() { close(l.quiet) }) }

// startPings are sent in the link's first moments, a tenth of the
// keepalive interval apart: the path RTT (the smallest echo) then rests on
// several samples taken before traffic starts, whose echoes queue.
const startPings = 4

// routineKeepalive pings the peer and declares it dead when it falls silent.
func (l *Link) routineKeepalive() {
	var b [8]byte
	for range startPings {
		select {
		case <-l.done:
			return
		case <-l.quiet:
			return
		case <-time.After(l.keepalive / 10):
		}
		binary.BigEndian.PutUint64(b[:], uint64(l.since()))
		l.send(MsgPing, b[:])
	}
	// The silence is judged four times a keepalive interval, so a busy
	// link's cut shows within a quarter interval of BusyDeadAfter.
	const checks = 4
	t := time.NewTicker(l.keepalive / checks)
	defer t.Stop()
	// txHeard is the bytes sent when we last heard from the peer: more
	// since then are frames that brought no answer. (TCP in the VMs backs
	// off during a cut, so "sent in the last check" would miss it.)
	lastRx, txHeard := l.lastRx.Load(), l.txBytes.Load()
	for tick := 1; ; tick++ {
		select {
		case <-l.done:
			return
		case <-l.quiet:
			return
		case <-t.C:
		}
		now := l.since()
		tx := l.txBytes.Load()
		if rx := l.lastRx.Load(); rx != lastRx {
			lastRx, txHeard = rx, tx
		}
		sending := tx != txHeard
		silent := time.Duration(now - lastRx)
		if silent > l.deadAfter || (sending && silent > l.busyDeadAfter) {
			how := ""
			if silent <= l.deadAfter {
				how = " while sending"
			}
			l.fail(fmt.Errorf("keepalive timeout: nothing heard for %v%s", silent.Round(time.Millisecond), how))
			return
		}
		if tick%checks != 0 {
			continue
		}
		binary.BigEndian.PutUint64(b[:], uint64(now))
		l.send(MsgPing, b[:])
		l.measureTick(now)
	}
}

// measureTick closes a measurement interval.
func (l *Link) measureTick(now int64) {
	s := meterSample{now: now, tx: l.txBytes.Load(), rx: l.rxBytes.Load(), busy: l.txBusy.Load(), pingGap: int64(l.keepalive)}
	if ps, ok := l.t.(pathStater); ok {
		ps.pathStats(&s.path)
	}
	l.est.tick(s)
}
