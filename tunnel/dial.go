package tunnel

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// HandshakeTimeout bounds TLS plus the Hello exchange.
var HandshakeTimeout = 10 * time.Second

// Endpoint is where a link listens or dials: a URL like tcp://host:port.
type Endpoint struct {
	Kind string // "tcp", "udp" or "quic"
	Addr string // host:port
}

func (e Endpoint) String() string { return e.Kind + "://" + e.Addr }

// ParseEndpoint parses kind://host:port. A missing host means all addresses.
func ParseEndpoint(s string) (Endpoint, error) {
	u, err := url.Parse(s)
	if err != nil || u.Scheme == "" || u.Host == "" || (u.Path != "" && u.Path != "/") {
		return Endpoint{}, fmt.Errorf("malformed endpoint %q (want e.g. tcp://198.51.100.7:5000 or tcp://:5000)", s)
	}
	switch u.Scheme {
	case "tcp", "udp", "quic":
	default:
		return Endpoint{}, fmt.Errorf("endpoint %q: unknown link kind %q (want tcp, udp or quic)", s, u.Scheme)
	}
	if _, _, err := net.SplitHostPort(u.Host); err != nil {
		return Endpoint{}, fmt.Errorf("endpoint %q: %v", s, err)
	}
	return Endpoint{Kind: u.Scheme, Addr: u.Host}, nil
}

// Hello is the first control message each way on a new link.
type Hello struct {
	Version int    `json:"version"`
	Name    string `json:"name"`           // the sender's daemon name
	Role    string `json:"role"`           // "proxy" or "host"
	Link    string `json:"link,omitempty"` // the link's name, chosen by the dialer
	Error   string `json:"error,omitempty"`
	// Offload: the sender takes super-frames (MsgFrameGSO) on this link.
	// A link carries them when both sides say so and its transport can.
	Offload bool `json:"offload,omitempty"`
	// Sealed: the sender opens messages sealed whole on a UDP link
	// (udp_sealed.go), so a message of several datagrams may go that way.
	Sealed bool `json:"sealed,omitempty"`
	// Relay: the sender relays super-frames sealed end to end on a UDP
	// link between a host and a proxy (udp_relay.go).
	Relay bool `json:"relay,omitempty"`
}

func writeHello(bw *bufio.Writer, h Hello) error {
	h.Version = WireVersion
	b, err := json.Marshal(h)
	if err != nil {
		return err
	}
	var hdr [HeaderLen]byte
	PutHeader(hdr[:], MsgControl, len(b))
	bw.Write(hdr[:])
	bw.Write(b)
	return bw.Flush()
}

func readHello(br *bufio.Reader) (Hello, error) {
	var hdr [HeaderLen]byte
	if _, err := io.ReadFull(br, hdr[:]); err != nil {
		return Hello{}, err
	}
	typ, n, err := ParseHeader(hdr[:])
	if err != nil {
		return Hello{}, err
	}
	if typ != MsgControl || n > 64<<10 {
		return Hello{}, fmt.Errorf("expected a hello, got message type %d of %d bytes", typ, n)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(br, b); err != nil {
		return Hello{}, err
	}
	var h Hello
	if err := json.Unmarshal(b, &h); err != nil {
		return Hello{}, fmt.Errorf("malformed hello: %w", err)
	}
	if h.Version != WireVersion {
		return h, fmt.Errorf("peer speaks link protocol version %d, we speak %d", h.Version, WireVersion)
	}
	return h, nil
}

// Dial opens an authenticated link to ep and exchanges hellos. A peer that
// refuses us (its Hello carries an error) is reported as an error.
func Dial(ctx context.Context, ep Endpoint, creds *Credentials, hello Hello, log *slog.Logger, h ControlHandler) (*Link, error) {
	ctx, cancel := context.WithTimeout(ctx, HandshakeTimeout)
	defer cancel()
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", ep.Addr)
	if err != nil {
		return nil, err
	}
	tuneTCP(raw)
	conn := tls.Client(raw, creds.ClientConfig())
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	fail := func(err error) (*Link, error) { conn.Close(); return nil, err }
	if err := conn.HandshakeContext(ctx); err != nil {
		return fail(classifyTLSError(err))
	}
	br := bufio.NewReaderSize(conn, 64<<10)
	if err := writeHello(bufio.NewWriter(conn), hello); err != nil {
		return fail(classifyTLSError(err))
	}
	// In TLS 1.3 the server checks our certificate after our handshake has
	// finished, so a wrong key shows up here, on the first read.
	peer, err := readHello(br)
	if err != nil {
		return fail(classifyTLSError(err))
	}
	if peer.Error != "" {
		return fail(fmt.Errorf("%w by %s: %s", ErrRefused, peer.Name, peer.Error))
	}
	if err := creds.checkPeer(peerLeaf(conn.ConnectionState()), peer.Name); err != nil {
		return fail(err)
	}
	conn.SetDeadline(time.Time{})
	return newLink(newStreamTransport(conn, br), hello, peer, log, h), nil
}

// Listener accepts authenticated links.
type Listener struct {
	ln    net.Listener
	creds *Credentials
	log   *slog.Logger
	ch    chan *Incoming
	join  atomic.Pointer[JoinHandler]
	done  chan struct{}
	once  sync.Once
	wg    sync.WaitGroup
}

// Incoming is a connection that passed authentication and sent its Hello;
// the caller accepts it (Accept) or refuses it (Refuse). Every transport
// produces them.
type Incoming struct {
	Hello  Hello
	remote net.Addr
	// reply sends our Hello and returns the transport, ready for a Link.
	reply func(h Hello) (transport, error)
	// refuse sends a Hello carrying an error and drops the connection.
	refuse func(h Hello)
}

// Acceptor is a listener of any link kind.
type Acceptor interface {
	Accept(ctx context.Context) (*Incoming, error)
	Addr() net.Addr
	Close() error
}

// Listen listens on ep. Handshakes run concurrently, each bounded by
// HandshakeTimeout; failed ones are logged ("authentication failed ...") and
// never reach Accept.
func Listen(ep Endpoint, creds *Credentials, log *slog.Logger) (*Listener, error) {
	ln, err := net.Listen("tcp", ep.Addr)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", ep, err)
	}
	l := &Listener{ln: ln, creds: creds, log: log, ch: make(chan *Incoming), done: make(chan struct{})}
	l.wg.Add(1)
	go l.routineAccept()
	return l, nil
}

// SetJoinHandler lets hosts without credentials join over this listener
// with an invite token (see join.go); nil turns joining off.
func (l *Listener) SetJoinHandler(f JoinHandler) {
	if f == nil {
		l.join.Store(nil)
		return
	}
	l.join.Store(&f)
}

// Addr is the address the listener is bound to.
func (l *Listener) Addr() net.Addr { return l.ln.Addr() }

// Close stops listening; pending handshakes are abandoned.
func (l *Listener) Close() error {
	l.once.Do(func() { close(l.done); l.ln.Close() })
	l.wg.Wait()
	return nil
}

// Accept returns the next authenticated connection.
func (l *Listener) Accept(ctx context.Context) (*Incoming, error) {
	select {
	case in := <-l.ch:
		return in, nil
	case <-l.done:
		return nil, net.ErrClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (l *Listener) routineAccept() {
	defer l.wg.Done()
	for {
		raw, err := l.ln.Accept()
		if err != nil {
			select {
			case <-l.done:
				return
			default:
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			l.log.Warn("accept failed", "err", err)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		l.wg.Add(1)
		go l.handshake(raw)
	}
}

func (l *Listener) handshake(raw net.Conn) {
	defer l.wg.Done()
	tuneTCP(raw)
	cfg := l.creds.ServerConfig()
	join := l.join.Load()
	if join != nil {
		cfg.GetConfigForClient = func(chi *tls.ClientHelloInfo) (*tls.Config, error) {
			if slices.Contains(chi.SupportedProtos, joinALPN) {
				return l.creds.joinServerConfig(), nil
			}
			return nil, nil
		}
	}
	conn := tls.Server(raw, cfg)
	conn.SetDeadline(time.Now().Add(HandshakeTimeout))
	fin := make(chan struct{})
	defer close(fin)
	go func() { // abandon the handshake when the listener closes
		select {
		case <-l.done:
			conn.SetDeadline(time.Now())
		case <-fin:
		}
	}()
	if err := conn.Handshake(); err != nil {
		err = classifyTLSError(err)
		if errors.Is(err, ErrAuth) {
			l.log.Warn("authentication failed: refused a peer without the network key", "peer", raw.RemoteAddr().String(), "err", err)
		} else {
			l.log.Info("handshake failed", "peer", raw.RemoteAddr().String(), "err", err)
		}
		conn.Close()
		return
	}
	if conn.ConnectionState().NegotiatedProtocol == joinALPN {
		if join != nil {
			serveJoin(conn, *join, l.log)
		}
		conn.Close()
		return
	}
	br := bufio.NewReaderSize(conn, 64<<10)
	h, err := readHello(br)
	if err != nil {
		l.log.Info("bad hello", "peer", raw.RemoteAddr().String(), "err", err)
		conn.Close()
		return
	}
	if err := l.creds.checkPeer(peerLeaf(conn.ConnectionState()), h.Name); err != nil {
		l.log.Warn("refused a peer", "peer", raw.RemoteAddr().String(), "name", h.Name, "err", err)
		conn.SetDeadline(time.Now().Add(time.Second))
		writeHello(bufio.NewWriter(conn), Hello{Name: l.creds.name, Error: err.Error()})
		conn.Close()
		return
	}
	in := &Incoming{Hello: h, remote: raw.RemoteAddr(),
		reply: func(hello Hello) (transport, error) {
			conn.SetDeadline(time.Now().Add(HandshakeTimeout))
			if err := writeHello(bufio.NewWriter(conn), hello); err != nil {
				conn.Close()
				return nil, err
			}
			conn.SetDeadline(time.Time{})
			return newStreamTransport(conn, br), nil
		},
		refuse: func(hello Hello) {
			conn.SetDeadline(time.Now().Add(time.Second))
			writeHello(bufio.NewWriter(conn), hello)
			conn.Close()
		}}
	select {
	case l.ch <- in:
	case <-l.done:
		conn.Close()
	}
}

// RemoteAddr is the peer's underlay address.
func (in *Incoming) RemoteAddr() net.Addr { return in.remote }

// Accept answers with our hello and returns the link.
func (in *Incoming) Accept(hello Hello, log *slog.Logger, h ControlHandler) (*Link, error) {
	t, err := in.reply(hello)
	if err != nil {
		return nil, err
	}
	return newLink(t, hello, in.Hello, log, h), nil
}

// Refuse answers with a hello carrying reason and drops the connection.
func (in *Incoming) Refuse(hello Hello, reason string) {
	hello.Error = reason
	in.refuse(hello)
}

// tuneTCP sets what every link connection wants: no Nagle delay for small
// frames (keepalives, ACKs) and kernel keepalives as a second line of defence.
func tuneTCP(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
		tc.SetKeepAlive(true)
		tc.SetKeepAlivePeriod(5 * time.Second)
	}
}

// Backoff yields exponentially growing delays with jitter, for re-dialing.
type Backoff struct {
	Min, Max time.Duration
	cur      time.Duration
}

// Next returns the next delay: doubling from Min up to Max, each randomised
// to between half and all of it so that many hosts do not re-dial in step.
func (b *Backoff) Next() time.Duration {
	if b.cur == 0 {
		b.cur = b.Min
	} else {
		b.cur = min(b.cur*2, b.Max)
	}
	return b.cur/2 + rand.N(b.cur/2+1)
}

// Reset starts again from Min (after a success).
func (b *Backoff) Reset() { b.cur = 0 }

// IsAuthError reports whether err is an authentication failure.
func IsAuthError(err error) bool {
	return errors.Is(err, ErrAuth) || strings.Contains(fmt.Sprint(err), ErrAuth.Error())
}
