package tunnel

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"time"

	"vnet/bridge"
)

// transport is what a Link runs over: it moves typed messages (see wire.go)
// to and from one peer. Stream links (TLS over TCP), datagram links (AEAD
// over UDP) and QUIC links each implement it; the Link above it does the
// rest (frames as a bridge.Port, control dispatch, keepalive, counters).
//
// Concurrency: the Link calls readMsg and more from one goroutine (the
// switch's reader), and writeFrames and writeMsg under its write lock;
// close may be called at any time from any goroutine and must make a blocked
// readMsg return.
type transport interface {
	// readMsg blocks for the next message. A frame's payload is written into
	// buf[offset:] (a super-frame's, header slot first, into
	// buf[offset-bridge.VnetHdrLen:]) and returned as the bytes written;
	// a payload that does not fit buf is dropped and counted, or kills the
	// link where the stream cannot skip it. Other payloads may live in
	// transport-owned memory valid until the next call. Errors are final:
	// the link dies.
	readMsg(buf []byte, offset int) (typ byte, payload []byte, err error)
	// more reports whether readMsg can return another message at once,
	// without blocking, so a batch never waits beyond its first frame.
	more() bool
	// writeFrames sends frames bufs[i][offset:]; the bytes before offset are
	// headroom (at least bridge.Headroom) it may overwrite. With super, a
	// frame whose header slot (the bridge.VnetHdrLen bytes before offset)
	// is not plain goes as MsgFrameGSO, slot included.
	writeFrames(bufs [][]byte, offset int, super bool) error
	// writeMsg sends one message of any type.
	writeMsg(typ byte, payload []byte) error
	close() error
	localAddr() net.Addr
	remoteAddr() net.Addr
	// kind is the link kind: "tcp", "udp" or "quic".
	kind() string
}

// superTransport is a transport that can carry MsgFrameGSO (and says
// whether it can on this link).
type superTransport interface {
	carriesSuper() bool
}

// frameType returns how frame b[offset:] travels, and where its message
// starts: a super-frame (any frame whose header slot asks for something,
// when super) from its slot.
func frameType(b []byte, offset int, super bool) (typ byte, start int) {
	if super && !bridge.IsPlainHdr(b[offset-bridge.VnetHdrLen:offset]) {
		return MsgFrameGSO, offset - bridge.VnetHdrLen
	}
	return MsgFrame, offset
}

// streamTransport carries messages as header+payload over a reliable byte
// stream (TLS over TCP).
type streamTransport struct {
	conn net.Conn
	br   *bufio.Reader
	bw   *bufio.Writer
	hdr  [HeaderLen]byte
	ctrl []byte
	wto  func() // arms the write deadline
}

func newStreamTransport(conn net.Conn, br *bufio.Reader) *streamTransport {
	return &streamTransport{conn: conn, br: br, bw: bufio.NewWriterSize(conn, 64<<10)}
}

func (t *streamTransport) kind() string         { return "tcp" }
func (t *streamTransport) close() error         { return t.conn.Close() }
func (t *streamTransport) localAddr() net.Addr  { return t.conn.LocalAddr() }
func (t *streamTransport) remoteAddr() net.Addr { return t.conn.RemoteAddr() }

func (t *streamTransport) carriesSuper() bool { return true }

func (t *streamTransport) readMsg(buf []byte, offset int) (byte, []byte, error) {
	b, err := t.br.Peek(HeaderLen)
	if err != nil {
		return 0, nil, err
	}
	typ, size, err := ParseHeader(b)
	if err != nil {
		return 0, nil, fmt.Errorf("protocol error: %w", err)
	}
	t.br.Discard(HeaderLen)
	var dst []byte
	switch typ {
	case MsgFrame, MsgFrameGSO:
		at := offset
		if typ == MsgFrameGSO {
			at -= bridge.VnetHdrLen
		}
		if size > len(buf)-at {
			return 0, nil, fmt.Errorf("frame of %d bytes does not fit a %d-byte buffer (a super-frame the link did not offer?)", size, len(buf)-at)
		}
		dst = buf[at : at+size]
	default:
		if cap(t.ctrl) < size {
			t.ctrl = make([]byte, size)
		}
		dst = t.ctrl[:size]
	}
	if _, err := io.ReadFull(t.br, dst); err != nil {
		return 0, nil, err
	}
	return typ, dst, nil
}

func (t *streamTransport) more() bool {
	if t.br.Buffered() < HeaderLen {
		return false
	}
	b, _ := t.br.Peek(HeaderLen)
	return t.br.Buffered() >= HeaderLen+int(binary.BigEndian.Uint32(b)&0xffffff)
}

func (t *streamTransport) writeFrames(bufs [][]byte, offset int, super bool) error {
	for _, b := range bufs {
		typ, start := frameType(b, offset, super)
		PutHeader(b[start-HeaderLen:], typ, len(b)-start)
		if _, err := t.bw.Write(b[start-HeaderLen:]); err != nil {
			return err
		}
	}
	return t.bw.Flush()
}

func (t *streamTransport) writeMsg(typ byte, payload []byte) error {
	PutHeader(t.hdr[:], typ, len(payload))
	t.bw.Write(t.hdr[:])
	t.bw.Write(payload)
	return t.bw.Flush()
}

// pathStats implements pathStater from the kernel's TCP_INFO.
func (t *streamTransport) pathStats(ps *pathStats) { tcpPathStats(t.conn, ps) }

// SetWriteDeadline bounds writes, so a stuck peer cannot stall the switch.
func (t *streamTransport) SetWriteDeadline(d time.Time) error { return t.conn.SetWriteDeadline(d) }
