package tunnel

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"vnet/bridge"
)

// QUIC links.
//
// Protocol flow: the dialer opens a QUIC connection (TLS 1.3 inside QUIC,
// both sides presenting a certificate of the network's CA, ALPN "vnet/1",
// see auth.go), then opens ONE bidirectional stream and sends its Hello on
// it; the listener answers with its Hello (or a refusal) on the same stream.
// From then on:
//
//   - the stream carries every message that must not be lost: control
//     messages (up to MaxControl), pings and pongs, framed exactly like a TCP
//     link (4-byte header + payload, see wire.go);
//   - QUIC DATAGRAM frames (RFC 9221) carry Ethernet frames, unreliably and
//     without head-of-line blocking. Each datagram is an inner header plus a
//     chunk (see frag.go):
//
//     +--------+--------+--------+--------+--------+----------------
//     | type=1 |  message id (16)  | index  | count  | chunk ...
//     +--------+--------+--------+--------+--------+----------------
//
//     A frame that fits one datagram travels whole (index 0, count 1, id 0);
//     a larger one is split into chunks of the largest size the connection
//     currently allows and reassembled by the receiver (bounded: 32 frames
//     in progress, 1 s each).
//
// A DATAGRAM frame must fit one QUIC packet: about 1200 bytes before path MTU
// discovery, up to about 1410 after it (quic-go never sends packets above
// 1452 bytes), so a 1514-byte Ethernet frame is always split in two. The
// sender starts with a conservative budget and learns the real one from
// quic-go's DatagramTooLargeError, re-probing once a second so that it
// follows PMTUD upwards (and a shrinking path downwards).
//
// Frames may be lost or reordered (like any Ethernet); control messages,
// pings and pongs are delivered reliably and in order among themselves. A
// peer may also send frames on the stream; they are accepted.
//
// Datagrams have no flow control, and QUIC's congestion control reacts only
// to loss on the network: a receiver that falls behind loses frames. quic-go
// (v0.65) keeps at most 128 received datagrams for the application, and the
// transport at most quicQueueLen frames for its reader; beyond that frames
// are dropped (the second kind is counted as rx_queue_drops). On a busy
// machine the receiving goroutine can wait milliseconds for a CPU, long
// enough to overflow quic-go's queue: with both ends of a loopback link on
// two cores, a sender going flat out loses 5-25 % of its frames. TCP inside
// the VMs sees such drops as loss and slows down, as on any Ethernet.
// Version history: 1 (this one), named by the ALPN and the Hello's version.

// QUIC application error codes, sent in CONNECTION_CLOSE.
const (
	quicCodeClosed   quic.ApplicationErrorCode = 0 // the link was closed
	quicCodeRefused  quic.ApplicationErrorCode = 1 // the Hello was refused
	quicCodeProtocol quic.ApplicationErrorCode = 2 // handshake or protocol failure
)

const (
	// quicInitialDatagram is the datagram payload (inner header included)
	// a new link assumes until quic-go tells it better: safely below what
	// a 1200-byte packet, QUIC's minimum, can carry (about 1160 bytes).
	quicInitialDatagram = 1100
	// quicMinDatagram is the smallest budget worth fragmenting into.
	quicMinDatagram = 256
	// quicProbeEvery is how often a frame that does not fit the known
	// budget is first tried whole, to learn the current budget.
	quicProbeEvery = time.Second
	// quicQueueLen bounds the messages received but not yet read. Frames
	// beyond it are dropped (and counted); stream messages wait.
	quicQueueLen = 256
	// Reassembly bounds: frames in progress, the largest message, and how
	// long an incomplete one is kept.
	quicReasmPending = 32
	quicReasmMax     = 16 << 10
	quicReasmTimeout = time.Second
)

// quicConfig is the QUIC configuration of both ends.
func quicConfig() *quic.Config {
	return &quic.Config{
		// Bounds the QUIC handshake like HandshakeTimeout bounds a TCP one
		// (quic-go also gives up after twice this without completing).
		HandshakeIdleTimeout: HandshakeTimeout,
		// The Link's own keepalive (a ping a second on the stream, dead
		// after DeadAfter) notices a dead peer much sooner; this is the
		// backstop that frees the connection if nobody closes it.
		MaxIdleTimeout: 15 * time.Second,
		// QUIC-level PINGs keep NAT bindings open even while the Link is
		// quiet (the Link pings anyway; this costs nearly nothing).
		KeepAlivePeriod: 5 * time.Second,
		EnableDatagrams: true,
		// InitialPacketSize stays at quic-go's default (1280, falling back
		// to 1200): an explicit value is also a floor, so 1452 would make
		// the handshake time out on any path with a smaller MTU (PPPoE,
		// tunnels, IPv6 with extension headers). Path MTU discovery stays
		// on and raises the packet size within a few round trips.
		DisablePathMTUDiscovery: false,
		// One bidirectional stream (the dialer's), nothing else.
		MaxIncomingStreams:    1,
		MaxIncomingUniStreams: -1,
	}
}

// quicConnInfo travels in the context of a listener's connection: whether
// it completed the QUIC handshake (and so is not the listener's to log).
type quicConnInfo struct{ established atomic.Bool }

type quicConnInfoKey struct{}

// QUICListener accepts authenticated QUIC links. It implements Acceptor.
// Closing it stops accepting; links already accepted keep running (they
// share its UDP socket, which is closed when the last of them ends).
type QUICListener struct {
	pc    *net.UDPConn
	tr    *quic.Transport
	ln    *quic.Listener
	creds *Credentials
	log   *slog.Logger
	ch    chan *Incoming

	ctx    context.Context // cancelled by Close: pending handshakes are abandoned
	cancel context.CancelFunc
	once   sync.Once
	wg     sync.WaitGroup

	mu     sync.Mutex
	live   int  // connections on tr that have not ended
	closed bool // Close was called
	trOnce sync.Once
}

var _ Acceptor = (*QUICListener)(nil)

// ListenQUIC listens for QUIC links on the UDP address addr (like ":5001").
// Handshakes run concurrently, each bounded by HandshakeTimeout; failed ones
// are logged ("authentication failed ..." for a peer without the network
// key) and never reach Accept.
func ListenQUIC(addr string, creds *Credentials, log *slog.Logger) (*QUICListener, error) {
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("listening on quic://%s: %w", addr, err)
	}
	pc, err := net.ListenUDP("udp", ua)
	if err != nil {
		return nil, fmt.Errorf("listening on quic://%s: %w", addr, err)
	}
	l := &QUICListener{pc: pc, creds: creds, log: log, ch: make(chan *Incoming)}
	l.ctx, l.cancel = context.WithCancel(context.Background())
	l.tr = &quic.Transport{Conn: pc, ConnContext: l.connContext}
	ln, err := l.tr.Listen(creds.ServerConfig(), quicConfig())
	if err != nil {
		l.cancel()
		l.tr.Close()
		pc.Close()
		return nil, fmt.Errorf("listening on quic://%s: %w", addr, err)
	}
	l.ln = ln
	l.wg.Add(1)
	go l.routineAccept()
	return l, nil
}

// Addr is the UDP address the listener is bound to.
func (l *QUICListener) Addr() net.Addr { return l.pc.LocalAddr() }

// Close stops listening; pending handshakes are abandoned, accepted links
// keep running.
func (l *QUICListener) Close() error {
	l.once.Do(func() {
		l.cancel()
		l.ln.Close()
	})
	l.wg.Wait()
	l.mu.Lock()
	l.closed = true
	idle := l.live == 0
	l.mu.Unlock()
	if idle {
		l.closeTransport()
	}
	return nil
}

func (l *QUICListener) closeTransport() {
	l.trOnce.Do(func() {
		l.tr.Close()
		l.pc.Close()
	})
}

// Accept returns the next authenticated connection.
func (l *QUICListener) Accept(ctx context.Context) (*Incoming, error) {
	select {
	case in := <-l.ch:
		return in, nil
	case <-l.ctx.Done():
		return nil, net.ErrClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// connContext runs for every connection attempt quic-go starts. It counts
// the connection (the socket outlives the listener while any remains) and
// arranges for a failed handshake to be logged: quic-go never hands those
// to Accept, and only the cause of the context's cancellation tells why.
func (l *QUICListener) connContext(ctx context.Context, info *quic.ClientInfo) (context.Context, error) {
	ci := &quicConnInfo{}
	l.mu.Lock()
	l.live++
	l.mu.Unlock()
	peer := info.RemoteAddr.String()
	context.AfterFunc(ctx, func() {
		if !ci.established.Load() {
			err := classifyTLSError(context.Cause(ctx))
			if errors.Is(err, ErrAuth) {
				l.log.Warn("authentication failed: refused a peer without the network key", "peer", peer, "err", err)
			} else if l.ctx.Err() == nil {
				l.log.Info("handshake failed", "peer", peer, "err", err)
			}
		}
		l.mu.Lock()
		l.live--
		idle := l.closed && l.live == 0
		l.mu.Unlock()
		if idle {
			l.closeTransport()
		}
	})
	return context.WithValue(ctx, quicConnInfoKey{}, ci), nil
}

func (l *QUICListener) routineAccept() {
	defer l.wg.Done()
	for {
		// Not l.ctx: after Close, Accept still hands out the connections
		// quic-go had queued (then fails), so they can be closed here
		// rather than linger, keeping the socket open.
		conn, err := l.ln.Accept(context.Background())
		if err != nil {
			if l.ctx.Err() == nil {
				l.log.Warn("QUIC accept failed", "err", err)
			}
			return
		}
		if ci, ok := conn.Context().Value(quicConnInfoKey{}).(*quicConnInfo); ok {
			ci.established.Store(true)
		}
		if l.ctx.Err() != nil {
			conn.CloseWithError(quicCodeProtocol, "listener closed")
			continue
		}
		if !conn.ConnectionState().SupportsDatagrams.Remote {
			l.log.Info("handshake failed", "peer", conn.RemoteAddr().String(), "err", "peer does not support QUIC datagrams")
			conn.CloseWithError(quicCodeProtocol, "QUIC datagrams required")
			continue
		}
		l.wg.Add(1)
		go l.handshake(conn)
	}
}

// handshake reads the dialer's Hello from the stream it opens and hands the
// connection to Accept.
func (l *QUICListener) handshake(conn *quic.Conn) {
	defer l.wg.Done()
	peer := conn.RemoteAddr().String()
	// Abandon the handshake when the listener closes.
	stop := context.AfterFunc(l.ctx, func() { conn.CloseWithError(quicCodeProtocol, "listener closed") })
	ctx, cancel := context.WithTimeout(l.ctx, HandshakeTimeout)
	defer cancel()
	stream, err := conn.AcceptStream(ctx)
	if err != nil {
		stop()
		if l.ctx.Err() == nil {
			l.log.Info("bad hello", "peer", peer, "err", err)
		}
		conn.CloseWithError(quicCodeProtocol, "no hello")
		return
	}
	stream.SetDeadline(time.Now().Add(HandshakeTimeout))
	br := bufio.NewReaderSize(stream, 64<<10)
	h, err := readHello(br)
	if !stop() || err != nil {
		if l.ctx.Err() == nil {
			l.log.Info("bad hello", "peer", peer, "err", err)
		}
		conn.CloseWithError(quicCodeProtocol, "bad hello")
		return
	}
	if err := l.creds.checkPeer(peerLeaf(conn.ConnectionState().TLS), h.Name); err != nil {
		l.log.Warn("refused a peer", "peer", peer, "name", h.Name, "err", err)
		stream.SetWriteDeadline(time.Now().Add(time.Second))
		writeHello(bufio.NewWriter(stream), Hello{Name: l.creds.name, Error: err.Error()})
		stream.Close()
		select {
		case <-conn.Context().Done():
		case <-time.After(time.Second):
		}
		conn.CloseWithError(quicCodeRefused, "refused")
		return
	}
	stream.SetDeadline(time.Time{})
	in := &Incoming{Hello: h, remote: conn.RemoteAddr(),
		reply: func(hello Hello) (transport, error) {
			stream.SetWriteDeadline(time.Now().Add(HandshakeTimeout))
			if err := writeHello(bufio.NewWriter(stream), hello); err != nil {
				conn.CloseWithError(quicCodeProtocol, "hello failed")
				return nil, err
			}
			stream.SetWriteDeadline(time.Time{})
			return newQUICTransport(conn, stream, br), nil
		},
		refuse: func(hello Hello) {
			stream.SetWriteDeadline(time.Now().Add(time.Second))
			writeHello(bufio.NewWriter(stream), hello)
			stream.Close()
			// CONNECTION_CLOSE would discard the refusal in flight: let the
			// dialer read it and hang up (one round trip), within reason.
			select {
			case <-conn.Context().Done():
			case <-time.After(time.Second):
			}
			conn.CloseWithError(quicCodeRefused, "refused")
		}}
	select {
	case l.ch <- in:
	case <-l.ctx.Done():
		conn.CloseWithError(quicCodeProtocol, "listener closed")
	}
}

// DialQUIC opens an authenticated QUIC link to addr (host:port) and
// exchanges hellos. A peer that refuses us is reported as an error; one
// without the network key as an error wrapping ErrAuth.
func DialQUIC(ctx context.Context, addr string, creds *Credentials, hello Hello, log *slog.Logger, h ControlHandler) (*Link, error) {
	ctx, cancel := context.WithTimeout(ctx, HandshakeTimeout)
	defer cancel()
	conn, err := quic.DialAddr(ctx, addr, creds.ClientConfig(), quicConfig())
	if err != nil {
		return nil, classifyTLSError(err)
	}
	fail := func(err error) (*Link, error) {
		conn.CloseWithError(quicCodeProtocol, "handshake failed")
		return nil, classifyTLSError(err)
	}
	if !conn.ConnectionState().SupportsDatagrams.Remote {
		return fail(errors.New("peer does not support QUIC datagrams"))
	}
	stream, err := conn.OpenStreamSync(ctx)
	if err != nil {
		return fail(err)
	}
	if dl, ok := ctx.Deadline(); ok {
		stream.SetDeadline(dl)
	}
	br := bufio.NewReaderSize(stream, 64<<10)
	if err := writeHello(bufio.NewWriter(stream), hello); err != nil {
		return fail(err)
	}
	// As with TLS over TCP, the server checks our certificate after our
	// side of the handshake is done: a wrong key shows up here.
	peer, err := readHello(br)
	if err != nil {
		return fail(err)
	}
	if peer.Error != "" {
		conn.CloseWithError(quicCodeRefused, "refused")
		return nil, fmt.Errorf("%w by %s: %s", ErrRefused, peer.Name, peer.Error)
	}
	if err := creds.checkPeer(peerLeaf(conn.ConnectionState().TLS), peer.Name); err != nil {
		conn.CloseWithError(quicCodeRefused, "refused")
		return nil, err
	}
	stream.SetDeadline(time.Time{})
	return newLink(newQUICTransport(conn, stream, br), hello, peer, log, h), nil
}

// quicMsg is one received message waiting for readMsg.
type quicMsg struct {
	typ    byte
	b      []byte
	pooled bool // b came from the transport's pool
}

// quicTransport runs a Link over a QUIC connection: frames as datagrams,
// everything else on the stream. Two goroutines (stream reader, datagram
// receiver) feed one bounded queue that readMsg pops.
type quicTransport struct {
	conn   *quic.Conn
	stream *quic.Stream
	br     *bufio.Reader // the stream, read by routineStream only

	// Writer side, under the Link's write lock.
	send    func([]byte) error // conn.SendDatagram (tests substitute it)
	bw      *bufio.Writer
	hdr     [HeaderLen]byte
	max     int       // datagram payload budget, inner header included (maxPayload mirrors it)
	probed  time.Time // when a whole send of an oversized frame was last tried
	id      uint16    // message id of the last fragmented frame
	scratch []byte    // one fragment with its inner header

	// Receiver side.
	q     chan quicMsg
	free  chan []byte // pooled buffers of bridge.MaxFrame bytes
	held  []byte      // pooled buffer behind the last non-frame payload
	reasm *Reassembler
	epoch time.Time

	done      chan struct{} // closed by close
	closeOnce sync.Once
	dead      chan struct{} // closed when a receiver fails; deadErr says why
	deadOnce  sync.Once
	deadErr   error
	wg        sync.WaitGroup

	// Counters, for Stats.
	maxPayload    atomic.Int64  // mirrors max
	txDatagrams   atomic.Uint64 // datagrams handed to quic-go
	txFragmented  atomic.Uint64 // frames sent in several datagrams
	txDrops       atomic.Uint64 // frames that could not be sent
	rxDatagrams   atomic.Uint64 // datagrams received from quic-go
	rxReassembled atomic.Uint64 // frames rebuilt from fragments
	rxDrops       atomic.Uint64 // frames dropped because the queue was full
	rxBad         atomic.Uint64 // malformed datagrams, failed reassemblies
}

func newQUICTransport(conn *quic.Conn, stream *quic.Stream, br *bufio.Reader) *quicTransport {
	t := newQUICState()
	t.conn, t.stream, t.br = conn, stream, br
	t.send = conn.SendDatagram
	t.bw = bufio.NewWriter(stream)
	t.wg.Add(2)
	go t.routineStream()
	go t.routineDatagrams()
	return t
}

// newQUICState is a transport without a connection: its queue, pool and
// reassembler (tests feed it datagrams directly).
func newQUICState() *quicTransport {
	t := &quicTransport{
		scratch: make([]byte, quicMaxPacket),
		q:       make(chan quicMsg, quicQueueLen),
		free:    make(chan []byte, quicQueueLen),
		reasm:   NewReassembler(quicReasmPending, quicReasmMax, int64(quicReasmTimeout)),
		epoch:   time.Now(),
		done:    make(chan struct{}),
		dead:    make(chan struct{}),
	}
	t.setMax(quicInitialDatagram)
	return t
}

// quicMaxPacket is the largest QUIC packet quic-go sends; no datagram
// payload is larger.
const quicMaxPacket = 1452

func (t *quicTransport) kind() string         { return "quic" }
func (t *quicTransport) localAddr() net.Addr  { return t.conn.LocalAddr() }
func (t *quicTransport) remoteAddr() net.Addr { return t.conn.RemoteAddr() }

func (t *quicTransport) close() error {
	t.closeOnce.Do(func() {
		close(t.done)
		t.conn.CloseWithError(quicCodeClosed, "link closed")
		t.wg.Wait()
	})
	return nil
}

// SetWriteDeadline bounds stream writes, so a stuck peer cannot stall the
// switch. Datagram sends wait only for quic-go's send queue, which drains
// while the connection lives; MaxIdleTimeout bounds a dead one.
func (t *quicTransport) SetWriteDeadline(d time.Time) error { return t.stream.SetWriteDeadline(d) }

// Stats reports the transport's counters by name, with quic-go's packet
// counts. Datagrams that quic-go received but dropped because its own
// receive queue (128 datagrams) was full show as packets_received minus
// rx_datagrams, roughly (packets also carry ACKs, stream data, pings).
func (t *quicTransport) Stats() map[string]uint64 {
	cs := t.conn.ConnectionStats()
	return map[string]uint64{
		"packets_sent":     cs.PacketsSent,
		"packets_received": cs.PacketsReceived,
		"packets_lost":     cs.PacketsLost,
		"tx_datagrams":     t.txDatagrams.Load(),
		"tx_fragmented":    t.txFragmented.Load(),
		"tx_drops":         t.txDrops.Load(),
		"rx_datagrams":     t.rxDatagrams.Load(),
		"rx_reassembled":   t.rxReassembled.Load(),
		"rx_queue_drops":   t.rxDrops.Load(),
		"rx_bad":           t.rxBad.Load(),
		"datagram_payload": uint64(t.maxPayload.Load()),
	}
}

// pathStats implements pathStater from quic-go's loss detection and RTT.
func (t *quicTransport) pathStats(ps *pathStats) {
	if t.conn == nil {
		return
	}
	cs := t.conn.ConnectionStats()
	ps.sent, ps.lost, ps.hasTxLoss = cs.PacketsSent, cs.PacketsLost, true
	ps.minRTT = cs.MinRTT
}

func (t *quicTransport) getBuf() []byte {
	select {
	case b := <-t.free:
		return b
	default:
		return make([]byte, bridge.MaxFrame)
	}
}

func (t *quicTransport) putBuf(b []byte) {
	select {
	case t.free <- b[:cap(b)]:
	default:
	}
}

// die records why a receiver stopped; readMsg reports it once the queue is
// drained.
func (t *quicTransport) die(err error) {
	t.deadOnce.Do(func() {
		var ae *quic.ApplicationError
		if errors.As(err, &ae) && ae.Remote && ae.ErrorCode == quicCodeClosed {
			err = io.EOF // the peer closed the link
		}
		t.deadErr = err
		close(t.dead)
	})
}

// push queues m; a frame is dropped if the queue is full (wait false),
// anything else waits for room. It reports false once the transport closes.
func (t *quicTransport) push(m quicMsg, wait bool) bool {
	if !wait {
		select {
		case t.q <- m:
		default:
			t.rxDrops.Add(1)
			if m.pooled {
				t.putBuf(m.b)
			}
		}
		return true
	}
	select {
	case t.q <- m:
		return true
	case <-t.done:
		return false
	}
}

// routineStream reads control messages, pings and pongs (and any frame a
// peer chooses to send this way) from the stream.
func (t *quicTransport) routineStream() {
	defer t.wg.Done()
	for {
		b, err := t.br.Peek(HeaderLen)
		if err != nil {
			t.die(err)
			return
		}
		typ, size, err := ParseHeader(b)
		if err != nil {
			t.die(fmt.Errorf("protocol error: %w", err))
			return
		}
		t.br.Discard(HeaderLen)
		m := quicMsg{typ: typ}
		if size <= bridge.MaxFrame {
			m.b, m.pooled = t.getBuf()[:size], true
		} else {
			m.b = make([]byte, size)
		}
		if _, err := io.ReadFull(t.br, m.b); err != nil {
			t.die(err)
			return
		}
		if !t.push(m, true) {
			return
		}
	}
}

// routineDatagrams receives frames (whole or in fragments) as datagrams.
func (t *quicTransport) routineDatagrams() {
	defer t.wg.Done()
	ctx := t.conn.Context()
	for {
		d, err := t.conn.ReceiveDatagram(ctx)
		if err != nil {
			t.die(err)
			return
		}
		t.handleDatagram(d)
	}
}

// handleDatagram queues the frame d carries or completes; d is ours to keep.
func (t *quicTransport) handleDatagram(d []byte) {
	t.rxDatagrams.Add(1)
	typ, id, index, count, chunk, err := ParseInner(d)
	if err != nil || typ != MsgFrame {
		t.rxBad.Add(1)
		return
	}
	if count == 1 {
		if len(chunk) < bridge.MinFrame || len(chunk) > bridge.MaxFrame {
			t.rxBad.Add(1)
			return
		}
		t.push(quicMsg{typ: MsgFrame, b: chunk}, false)
		return
	}
	msg, err := t.reasm.Add(typ, uint64(id), index, count, chunk, int64(time.Since(t.epoch)))
	if err != nil {
		t.rxBad.Add(1)
		return
	}
	if msg == nil {
		return
	}
	if len(msg) < bridge.MinFrame || len(msg) > bridge.MaxFrame {
		t.rxBad.Add(1)
		return
	}
	t.rxReassembled.Add(1)
	b := t.getBuf()
	t.push(quicMsg{typ: MsgFrame, b: b[:copy(b, msg)], pooled: true}, false)
}

func (t *quicTransport) readMsg(buf []byte, offset int) (byte, []byte, error) {
	frame := buf[offset:]
	if t.held != nil {
		t.putBuf(t.held)
		t.held = nil
	}
	var m quicMsg
	select {
	case m = <-t.q:
	default:
		select {
		case m = <-t.q:
		case <-t.done:
			return 0, nil, net.ErrClosed
		case <-t.dead:
			select {
			case m = <-t.q: // what arrived before the failure comes first
			default:
				return 0, nil, t.deadErr
			}
		}
	}
	if m.typ != MsgFrame {
		if m.pooled {
			t.held = m.b
		}
		return m.typ, m.b, nil
	}
	if len(m.b) > len(frame) {
		if m.pooled {
			t.putBuf(m.b)
		}
		return 0, nil, fmt.Errorf("frame of %d bytes does not fit a %d-byte buffer", len(m.b), len(frame))
	}
	n := copy(frame, m.b)
	if m.pooled {
		t.putBuf(m.b)
	}
	return MsgFrame, frame[:n], nil
}

func (t *quicTransport) more() bool { return len(t.q) > 0 }

func (t *quicTransport) writeMsg(typ byte, payload []byte) error {
	PutHeader(t.hdr[:], typ, len(payload))
	t.bw.Write(t.hdr[:])
	t.bw.Write(payload)
	return t.bw.Flush()
}

// writeFrames sends plain frames only: QUIC links never offer super-frames
// (they are not a superTransport), so super is always false.
func (t *quicTransport) writeFrames(bufs [][]byte, offset int, _ bool) error {
	for _, b := range bufs {
		if err := t.sendFrame(b, offset); err != nil {
			return err
		}
	}
	return nil
}

// sendFrame sends b[offset:] as one datagram (its inner header in the
// headroom) when it fits, else in fragments.
func (t *quicTransport) sendFrame(b []byte, offset int) error {
	whole := InnerHeaderLen + len(b) - offset
	if whole <= t.max || time.Since(t.probed) >= quicProbeEvery {
		d := b[offset-InnerHeaderLen:]
		PutInner(d, MsgFrame, 0, 0, 1)
		err := t.send(d)
		if err == nil {
			t.txDatagrams.Add(1)
			if whole > t.max {
				t.setMax(whole)
			}
			return nil
		}
		if !t.learn(err) {
			return err
		}
	}
	return t.sendFragments(b[offset:])
}

func (t *quicTransport) setMax(n int) {
	t.max = n
	t.maxPayload.Store(int64(n))
}

// learn takes the datagram budget from quic-go's refusal of a datagram.
func (t *quicTransport) learn(err error) bool {
	var tl *quic.DatagramTooLargeError
	if !errors.As(err, &tl) {
		return false
	}
	t.setMax(int(tl.MaxDatagramPayloadSize))
	t.probed = time.Now()
	return true
}

// sendFragments splits f into chunks of the current budget. If the budget
// shrinks meanwhile it starts over once, then gives the frame up: a lost
// frame is a frame lost, not a reason to end the link.
func (t *quicTransport) sendFragments(f []byte) error {
	for range 2 {
		if t.max < quicMinDatagram {
			break
		}
		chunk := t.max - InnerHeaderLen
		count := FragmentCount(len(f), chunk)
		if count > MaxFragments {
			break
		}
		if cap(t.scratch) < t.max {
			t.scratch = make([]byte, t.max)
		}
		t.id++
		shrunk := false
		for i := 0; i < count; i++ {
			c := f[i*chunk : min((i+1)*chunk, len(f))]
			d := t.scratch[:InnerHeaderLen+len(c)]
			PutInner(d, MsgFrame, t.id, uint8(i), uint8(count))
			copy(d[InnerHeaderLen:], c)
			if err := t.send(d); err != nil {
				if !t.learn(err) {
					return err
				}
				shrunk = true
				break
			}
			t.txDatagrams.Add(1)
		}
		if !shrunk {
			t.txFragmented.Add(1)
			return nil
		}
	}
	t.txDrops.Add(1)
	return nil
}
