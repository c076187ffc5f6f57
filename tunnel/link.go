package tunnel

import (
	"bufio"
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

// Link is an authenticated stream connection to another daemon. It is a
// bridge.Port for frames and also carries control messages and keepalives.
type Link struct {
	conn      net.Conn
	peer      Hello
	log       *slog.Logger
	onControl ControlHandler
	br        *bufio.Reader

	wmu sync.Mutex // guards bw and wscratch
	bw  *bufio.Writer
	hdr [HeaderLen + 8]byte

	keepalive, deadAfter, writeTimeout time.Duration // from the package vars, at creation

	epoch   time.Time
	lastRx  atomic.Int64 // ns since epoch of the last message received
	rtt     atomic.Int64 // ns, smoothed
	txBytes atomic.Uint64
	rxBytes atomic.Uint64

	closeOnce sync.Once
	done      chan struct{}
	quiet     chan struct{} // closed to stop keepalives (tests)
	quietOnce sync.Once
	errMu     sync.Mutex
	err       error
}

var _ bridge.Port = (*Link)(nil)

func newLink(conn net.Conn, br *bufio.Reader, peer Hello, log *slog.Logger, h ControlHandler) *Link {
	l := &Link{conn: conn, peer: peer, log: log, onControl: h, br: br,
		bw: bufio.NewWriterSize(conn, 64<<10), epoch: time.Now(), done: make(chan struct{}), quiet: make(chan struct{})}
	l.keepalive, l.deadAfter, l.writeTimeout = KeepaliveInterval, DeadAfter, WriteTimeout
	go l.routineKeepalive()
	return l
}

// Peer is the Hello the other side sent.
func (l *Link) Peer() Hello { return l.peer }

// RemoteAddr is the underlay address of the peer.
func (l *Link) RemoteAddr() net.Addr { return l.conn.RemoteAddr() }

// LocalAddr is our underlay address of this link.
func (l *Link) LocalAddr() net.Addr { return l.conn.LocalAddr() }

// RTT is the smoothed keepalive round-trip time (zero until measured).
func (l *Link) RTT() time.Duration { return time.Duration(l.rtt.Load()) }

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

// Close implements bridge.Port.
func (l *Link) Close() error { l.fail(nil); return nil }

func (l *Link) fail(err error) {
	l.closeOnce.Do(func() {
		l.errMu.Lock()
		l.err = err
		l.errMu.Unlock()
		close(l.done)
		l.conn.Close()
	})
}

func (l *Link) since() int64 { return int64(time.Since(l.epoch)) }

// Read implements bridge.Port. It handles control and keepalive messages
// itself and returns only frames. Any error closes the link; Read then
// reports net.ErrClosed (the reason is in Err).
func (l *Link) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	n := 0
	for n < len(bufs) {
		if n > 0 && !l.wholeMessageBuffered() {
			break
		}
		typ, size, err := l.readHeader()
		if err != nil {
			return n, l.readFailed(err)
		}
		l.lastRx.Store(l.since())
		switch typ {
		case MsgFrame:
			if size > len(bufs[n])-offset {
				return n, l.readFailed(fmt.Errorf("frame of %d bytes does not fit a %d-byte buffer", size, len(bufs[n])-offset))
			}
			if _, err := io.ReadFull(l.br, bufs[n][offset:offset+size]); err != nil {
				return n, l.readFailed(err)
			}
			sizes[n] = size
			l.rxBytes.Add(uint64(size))
			n++
		case MsgPing, MsgPong:
			var b [8]byte
			if _, err := io.ReadFull(l.br, b[:]); err != nil {
				return n, l.readFailed(err)
			}
			if typ == MsgPing {
				l.send(MsgPong, b[:])
			} else if sent := int64(binary.BigEndian.Uint64(b[:])); sent > 0 && sent <= l.since() {
				l.observeRTT(l.since() - sent)
			}
		case MsgControl:
			msg := make([]byte, size)
			if _, err := io.ReadFull(l.br, msg); err != nil {
				return n, l.readFailed(err)
			}
			if l.onControl != nil {
				l.onControl(l, msg)
			}
		}
	}
	return n, nil
}

func (l *Link) readHeader() (byte, int, error) {
	b, err := l.br.Peek(HeaderLen)
	if err != nil {
		return 0, 0, err
	}
	typ, size, err := ParseHeader(b)
	if err != nil {
		return 0, 0, fmt.Errorf("protocol error from %s: %w", l.peer.Name, err)
	}
	l.br.Discard(HeaderLen)
	return typ, size, nil
}

// wholeMessageBuffered reports whether the next message can be read without
// blocking, so a batch never waits for more than its first frame.
func (l *Link) wholeMessageBuffered() bool {
	if l.br.Buffered() < HeaderLen {
		return false
	}
	b, _ := l.br.Peek(HeaderLen)
	return l.br.Buffered() >= HeaderLen+int(binary.BigEndian.Uint32(b)&0xffffff)
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

func (l *Link) observeRTT(d int64) {
	old := l.rtt.Load()
	if old == 0 {
		l.rtt.Store(d)
		return
	}
	l.rtt.Store(old + (d-old)/8) // RFC 6298's alpha
}

// Write implements bridge.Port: the batch goes out in one flush, with each
// header written into the frame's headroom.
func (l *Link) Write(bufs [][]byte, offset int) (int, error) {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	l.conn.SetWriteDeadline(time.Now().Add(l.writeTimeout))
	var bytes uint64
	for i, b := range bufs {
		size := len(b) - offset
		PutHeader(b[offset-HeaderLen:], MsgFrame, size)
		if _, err := l.bw.Write(b[offset-HeaderLen:]); err != nil {
			return i, l.writeFailed(err)
		}
		bytes += uint64(size)
	}
	if err := l.bw.Flush(); err != nil {
		return 0, l.writeFailed(err)
	}
	l.txBytes.Add(bytes)
	return len(bufs), nil
}

func (l *Link) writeFailed(err error) error {
	l.fail(fmt.Errorf("write: %w", err))
	return net.ErrClosed
}

// SendControl sends one control message.
func (l *Link) SendControl(msg []byte) error {
	if len(msg) == 0 || len(msg) > MaxControl {
		return fmt.Errorf("control message of %d bytes", len(msg))
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
	l.conn.SetWriteDeadline(time.Now().Add(l.writeTimeout))
	PutHeader(l.hdr[:], typ, len(payload))
	if _, err := l.bw.Write(l.hdr[:HeaderLen]); err != nil {
		return l.writeFailed(err)
	}
	if _, err := l.bw.Write(payload); err != nil {
		return l.writeFailed(err)
	}
	if err := l.bw.Flush(); err != nil {
		return l.writeFailed(err)
	}
	return nil
}

func (l *Link) stopKeepalive() { l.quietOnce.Do(func() { close(l.quiet) }) }

// routineKeepalive pings the peer and declares it dead when it falls silent.
func (l *Link) routineKeepalive() {
	t := time.NewTicker(l.keepalive)
	defer t.Stop()
	var b [8]byte
	for {
		select {
		case <-l.done:
			return
		case <-l.quiet:
			return
		case <-t.C:
		}
		now := l.since()
		if silent := time.Duration(now - l.lastRx.Load()); silent > l.deadAfter {
			l.fail(fmt.Errorf("keepalive timeout: nothing heard for %v", silent.Round(time.Millisecond)))
			return
		}
		binary.BigEndian.PutUint64(b[:], uint64(now))
		l.send(MsgPing, b[:])
	}
}
