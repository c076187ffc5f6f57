package tunnel

// UDP datagram links.
//
// One UDP socket per daemon (a UDPMux) carries every datagram link of that
// daemon, its STUN traffic and its hole punching. Links are sessions keyed
// by a random 32-bit index that each side picks for itself; a datagram names
// the receiver's index, so a peer may change address (NAT rebinding) and
// still be found.
//
// Wire format (all integers big-endian). The first byte is the message type:
//
//	type 1, handshake init (initiator -> responder):
//	+------+--------------------+-----------------------------------------+
//	|  1   | sender index (32)  | Noise NNpsk0 message 1:                 |
//	|      |                    |   e (32) | AEAD(timestamp(12) | cert   |
//	|      |                    |   | signature | Hello) (udp_auth.go)    |
//	+------+--------------------+-----------------------------------------+
//	type 2, handshake response (responder -> initiator):
//	+------+--------------------+----------------------+------------------+
//	|  2   | sender index (32)  | receiver index (32)  | Noise message 2: |
//	|      |                    |                      | e (32) | AEAD(cert
//	|      |                    |                      | | signature | Hello)
//	+------+--------------------+----------------------+------------------+
//	type 3, punch: 3, then "vnetpunch"; unauthenticated, ignored (counted).
//	type 4, transport data:
//	+------+--------------------+--------------------------------------+
//	|  4   | receiver index (32)| counter (64)                         |
//	+------+--------------------+--------------------------------------+
//	| AES-256-GCM(inner header (5, frag.go) | chunk) | tag (16)        |
//	+---------------------------------------------------------------+
//	type 5, a chunk of a message sealed whole: to a peer whose Hello
//	offers it (Hello.Sealed), a message of several datagrams is sealed
//	once and its ciphertext cut into datagrams (udp_sealed.go).
//
// The transport AEAD uses the keys of the Noise handshake's split (initiator
// to responder, and back), nonce = 4 zero bytes | counter (as Noise's
// AESGCM), additional data = the 13-byte outer header. The receiver checks
// the counter against a sliding replay window (udp_replay.go) after the
// datagram authenticated. A datagram whose bytes 4..8 hold the STUN magic
// cookie (and whose first two bits are 0) is STUN, handed to the packet
// handler; the indexes we choose never let our own messages look like that.
//
// Protocol flow: the initiator sends message 1 to every candidate address
// of the peer every UDPRetryInterval (the same bytes each time) until one
// authenticated message 2 arrives; the responder authenticates message 1
// with the pre-shared key derived from the network key (a stranger's message
// fails the AEAD: counted "handshake-bad", never answered), rejects a
// timestamp not newer than the last one it accepted from the same daemon and
// link ("handshake-replay"), hands an Incoming to Accept, and answers once
// the caller accepts or refuses. A re-sent message 1 gets the same answer
// again (a few times, until data flows). After that both sides send type 4.
// The pre-shared key (derived from the network key, and handed to hosts
// that join with an invite) keeps strangers out cheaply; the certificates
// and signatures in the payloads say which member is which, and a revoked
// one is refused (and told so). Version history: udp v1 (Noise prologue
// "vnet udp v1", the key alone); udp v2 (this one: "vnet udp v2",
// certificates).
//
// Stages and locking. One reader goroutine per mux (routineRead) receives
// batches (recvmmsg on Linux), decrypts transport datagrams in place, checks
// replay, reassembles fragments and queues whole messages on the session's
// bounded channel (full: dropped, "queue-full"); nothing on that path takes
// a lock (sessions are found in a copy-on-write map) or allocates. The link's
// reader goroutine pops them (readMsg). Senders encrypt under the session's
// own tx lock into the session's scratch datagrams and send each batch with
// one sendmmsg. Handshakes, dials and session changes take m.mu (rare).

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"vnet/bridge"
)

// Outer message types of a UDP datagram.
const (
	udpMsgInit      byte = 1
	udpMsgResponse  byte = 2
	udpMsgPunch     byte = 3
	udpMsgTransport byte = 4

	udpInitHeaderLen = 5  // type, sender index
	udpRespHeaderLen = 9  // type, sender index, receiver index
	udpDataHeaderLen = 13 // type, receiver index, counter
	udpTagLen        = 16 // AES-GCM tag
	// udpOverhead is what a transport datagram adds to a chunk.
	udpOverhead = udpDataHeaderLen + InnerHeaderLen + udpTagLen

	// stunMagicCookie sits at bytes 4..8 of every STUN message (RFC 5389).
	stunMagicCookie = 0x2112A442
	// udpIndexAvoid is a low index byte we never pick: byte 4 of our messages
	// is the low byte of an index, so none can carry the STUN cookie.
	udpIndexAvoid = 0x21
)

var udpPunchPacket = []byte{udpMsgPunch, 'v', 'n', 'e', 't', 'p', 'u', 'n', 'c', 'h'}

// Datagram sizing and timing. Package variables so tests (and unusual
// underlays) can change them; a mux reads them when it is created.
var (
	// MaxUDPPayload is the largest UDP payload a link sends. 1452 = 1500
	// (the usual underlay MTU) - 40 (IPv6 header) - 8 (UDP header): safe on
	// IPv6 and IPv4 paths of a 1500-byte underlay without IP fragmentation
	// (which NATs and firewalls often drop). A datagram carries 1418 bytes
	// of message after its 34 bytes of headers and tag, so a 1514-byte
	// Ethernet frame travels as 2 datagrams. Receivers accept datagrams up to
	// max(MaxUDPPayload, 2047) bytes.
	MaxUDPPayload = 1452
	// UDPRetryInterval is how often Dial re-sends its handshake init and
	// Punch its punch packets: short, since the first packets towards a NAT
	// that has not opened yet are lost by design.
	UDPRetryInterval = 100 * time.Millisecond
	// UDPReassemblyTimeout bounds how long a fragmented message may take to
	// arrive whole; its chunks are normally back to back.
	UDPReassemblyTimeout = time.Second
)

// Limits, chosen to bound what a peer (or a flood) can make us hold.
const (
	udpMinPayload        = 1024 // a chunk must still hold a handshake (a certificate, a signature, the Hello)
	udpMaxPayloadLimit   = 9216 // jumbo underlays
	udpMinRxBuf          = 2048 // receive buffers hold a datagram of up to this-1 bytes
	udpReadBatch         = 64   // datagrams per recvmmsg
	udpSendBatch         = 2 * linkBatch
	udpQueueLen          = 512  // messages waiting for a link's reader
	udpMaxPending        = 256  // authenticated inits not yet accepted/refused
	udpMaxDials          = 256  // concurrent Dials of one mux
	udpMaxSessions       = 4096 // live sessions of one mux
	udpMaxInitRecords    = 4096 // (name, link) pairs whose last init time we keep
	udpMaxResends        = 10   // answers to one re-sent init
	udpMaxControl        = 60 << 10
	udpReassemblyPending = 16
	udpReassemblyMax     = bridge.VnetHdrLen + bridge.MaxSuperFrame
	// udpReassemblyBuf holds the largest message, or its ciphertext when
	// it was sealed whole (udp_sealed.go) or relayed (udp_relay.go).
	udpReassemblyBuf  = udpReassemblyMax + udpRelayOverhead
	udpMaxSuperQueued = 32 // super-frames among the udpQueueLen (64 KB each)
	// udpSocketBuffer: a link delivers a batch of 64 frames (128 datagrams)
	// at once, several links may burst together, and the reader decrypts
	// while the kernel queues; the default ~200 KiB overflows within one
	// burst, and every overflow is a frame the VMs' TCP must recover.
	udpSocketBuffer = 4 << 20
)

// udpCounter names a counted drop or event (Stats).
type udpCounter int

const (
	udpStranger udpCounter = iota
	udpBadMAC
	udpReplay
	udpUnknownSession
	udpTruncated
	udpHandshakeReplay
	udpHandshakeBad
	udpHandshakeBusy
	udpHandshakeDup
	udpHandshakeResend
	udpHandshakes
	udpPunch
	udpFragError
	udpFragExpired
	udpTooBig
	udpBadMessage
	udpQueueFull
	udpSendError
	udpSTUN
	udpRoam
	udpRxDatagrams
	udpTxDatagrams
	udpPushed
	udpRelayed
	udpBadRelay
	udpNumCounters
)

var udpCounterNames = [udpNumCounters]string{
	udpStranger:        "stranger",         // unknown outer type: garbage
	udpBadMAC:          "bad-mac",          // transport datagram failed authentication
	udpReplay:          "replay",           // transport counter seen before or too old
	udpUnknownSession:  "unknown-session",  // receiver index not ours (any more)
	udpTruncated:       "truncated",        // shorter than its type's minimum
	udpHandshakeReplay: "handshake-replay", // init not newer than the last accepted one
	udpHandshakeBad:    "handshake-bad",    // handshake failed authentication or was malformed
	udpHandshakeBusy:   "handshake-busy",   // too many pending handshakes
	udpHandshakeDup:    "handshake-dup",    // re-sent init/response while one is in progress
	udpHandshakeResend: "handshake-resend", // answered a re-sent init again
	udpHandshakes:      "handshakes",       // sessions established
	udpPunch:           "punch",            // punch packets received
	udpFragError:       "frag-error",       // fragment inconsistent with its message
	udpFragExpired:     "frag-expired",     // fragmented message never completed
	udpTooBig:          "too-big",          // datagram or message above the limits
	udpBadMessage:      "bad-message",      // authenticated but malformed inner message
	udpQueueFull:       "queue-full",       // link reader too slow: message dropped
	udpSendError:       "send-error",       // the socket refused a datagram
	udpSTUN:            "stun",             // STUN messages received
	udpRoam:            "roam",             // a session's peer changed address
	udpRxDatagrams:     "rx-datagrams",
	udpTxDatagrams:     "tx-datagrams",
	udpPushed:          "pushed",    // frames the reader handed to the switch itself (lone or super, link idle)
	udpRelayed:         "relayed",   // super-frames passed to the switch still sealed by their sender (udp_relay.go)
	udpBadRelay:        "bad-relay", // relayed payload failed authentication under its sender's key
}

// udpIO is the socket under a mux (udp_linux.go, udp_other.go; a fake in
// tests). readBatch is called only by the reader goroutine; sendBatch and
// writeTo from any goroutine.
type udpIO interface {
	// readBatch fills bufs[i] with datagrams and returns how many; sizes[i]
	// is a datagram's length, or -1 if it did not fit; froms[i] its source.
	readBatch(bufs [][]byte, sizes []int, froms []netip.AddrPort) (int, error)
	// sendBatch sends every datagram of b to one address.
	sendBatch(b *udpTxBatch) error
	writeTo(b []byte, to netip.AddrPort) error
	close() error
}

// udpViewReader is a udpIO that can hand out datagrams where they arrived
// rather than copying them into the reader's buffers (udp_linux.go, with
// UDP_GRO). viewReader returns nil when it cannot; the function it returns
// is readBatch, but sets views[i] to datagram i (sizes[i] its length, or
// -1 or 0 as in readBatch), valid and writable until the next call.
type udpViewReader interface {
	viewReader() func(views [][]byte, sizes []int, froms []netip.AddrPort) (int, error)
}

// udpBuf is a pooled datagram or message buffer.
type udpBuf struct{ b []byte }

// udpLargePool holds buffers for reassembled messages up to a jumbo frame.
var udpLargePool = sync.Pool{New: func() any { return &udpBuf{b: make([]byte, bridge.MaxFrame)} }}

// udpSuperPool holds buffers for reassembled super-frames.
var udpSuperPool = sync.Pool{New: func() any { return &udpBuf{b: make([]byte, udpReassemblyBuf)} }}

// UDPMux is one UDP socket shared by every datagram link of a daemon, its
// STUN traffic and its hole punching. It implements Acceptor.
type UDPMux struct {
	creds      *Credentials // certificates of the handshake; its pre-shared key
	psk        [32]byte
	log        *slog.Logger
	io         udpIO
	laddr      net.Addr
	is6        bool // the socket is AF_INET6: IPv4 peers as v4-mapped
	maxPayload int  // MaxUDPPayload at creation, or from UDPOptions.UnderlayMTU
	noFrag     bool // UDPOptions.NoFragment
	sealedOff  bool // tests: offer no messages sealed whole, as a daemon from before them
	relayOff   bool // tests: offer no relayed messages, as a daemon from before them
	chunkMax   int  // message bytes per transport datagram
	maxControl int  // largest control message
	rxSize     int  // receive buffer size: datagrams of rxSize-1 bytes at most
	// lone is set while the reader handles a batch of one datagram: a frame
	// in it may go to the switch at once (udpSession.pushTo). Reader only.
	lone   bool
	epoch  time.Time
	rxPool sync.Pool // *udpBuf of rxSize bytes
	txPool sync.Pool // *udpTxBatch

	sessions atomic.Pointer[map[uint32]*udpSession] // copy-on-write under mu
	handler  atomic.Pointer[func([]byte, netip.AddrPort)]
	counters [udpNumCounters]atomic.Uint64
	lastWarn atomic.Int64 // ns since epoch of the last "authentication failed" log

	mu struct {
		sync.Mutex
		closed   bool
		dials    map[uint32]*udpDial
		pendings map[*udpPending]struct{}
		inits    map[string]*udpInitRecord
		lastTS   int64
	}
	acceptCh chan *Incoming

	done      chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup
}

var _ Acceptor = (*UDPMux)(nil)

// UDPOptions tune a mux's links.
type UDPOptions struct {
	// UnderlayMTU is the IP MTU of the paths to the peers: datagrams are
	// sized to fit it whole (minus the IP and UDP headers: 28 bytes on an
	// IPv4 socket, 48 on a dual-stack one). 0: MaxUDPPayload (a 1500-byte
	// underlay). The mux cannot learn it: one unconnected socket serves
	// every peer, and the kernel's path MTU (IP_MTU) is per connected
	// socket and shows the first hop only until an ICMP error comes back,
	// which is what paths that black-hole drop.
	UnderlayMTU int
	// NoFragment: a frame that does not fit one datagram is not split (nor
	// sent as IP fragments): it is dropped and counted ("too-big"). Links
	// then say how large a frame they carry (Link.FrameLimit), so the
	// switch clamps TCP MSS and answers oversize IP packets with ICMP
	// (bridge/mtu.go), and they offer no super-frames. Frames of up to
	// bridge.MinIPv6Frame bytes are still split when they must be: IPv6
	// needs every link to carry 1280-byte packets.
	NoFragment bool
}

// udpIPOverhead is the IP and UDP headers around a datagram on a socket.
func udpIPOverhead(is6 bool) int {
	if is6 {
		return 40 + 8
	}
	return 20 + 8
}

// ListenUDP opens a UDP socket on addr (":5000", "127.0.0.1:0", "[::]:0")
// for links in the network of key; it speaks for any name (it mints
// certificates as needed). Daemons use ListenUDPCreds.
func ListenUDP(addr string, key Key, log *slog.Logger) (*UDPMux, error) {
	return ListenUDPWith(addr, key, log, UDPOptions{})
}

// ListenUDPWith is ListenUDP with options.
func ListenUDPWith(addr string, key Key, log *slog.Logger, opts UDPOptions) (*UDPMux, error) {
	creds, err := NewCredentials(key, "")
	if err != nil {
		return nil, err
	}
	return ListenUDPCredsWith(addr, creds, log, opts)
}

// ListenUDPCreds opens the daemon's UDP socket on addr for links
// authenticated by creds.
func ListenUDPCreds(addr string, creds *Credentials, log *slog.Logger) (*UDPMux, error) {
	return ListenUDPCredsWith(addr, creds, log, UDPOptions{})
}

// ListenUDPCredsWith is ListenUDPCreds with options.
func ListenUDPCredsWith(addr string, creds *Credentials, log *slog.Logger, opts UDPOptions) (*UDPMux, error) {
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("udp listen address %q: %w", addr, err)
	}
	if err := checkUDPPayload(); err != nil {
		return nil, err
	}
	conn, err := net.ListenUDP("udp", ua)
	if err != nil {
		return nil, fmt.Errorf("listening on udp://%s: %w", addr, err)
	}
	tuneUDPSocket(conn)
	io, is6, err := newUDPIO(conn)
	if err != nil {
		conn.Close()
		return nil, err
	}
	m := newUDPMuxCreds(creds, log, io, conn.LocalAddr(), is6)
	if err := m.configure(opts); err != nil {
		conn.Close()
		return nil, err
	}
	m.start()
	return m, nil
}

func checkUDPPayload() error {
	if MaxUDPPayload < udpMinPayload || MaxUDPPayload > udpMaxPayloadLimit {
		return fmt.Errorf("MaxUDPPayload %d out of range %d..%d", MaxUDPPayload, udpMinPayload, udpMaxPayloadLimit)
	}
	return nil
}

// newUDPMux builds a mux over io without starting its goroutines (tests and
// fuzzers drive receive directly).
func newUDPMux(key Key, log *slog.Logger, io udpIO, laddr net.Addr, is6 bool) *UDPMux {
	creds, err := NewCredentials(key, "")
	if err != nil {
		panic(err)
	}
	return newUDPMuxCreds(creds, log, io, laddr, is6)
}

func newUDPMuxCreds(creds *Credentials, log *slog.Logger, io udpIO, laddr net.Addr, is6 bool) *UDPMux {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m := &UDPMux{creds: creds, psk: creds.psk, log: log, io: io, laddr: laddr, is6: is6,
		epoch: time.Now(), acceptCh: make(chan *Incoming, udpMaxPending),
		done: make(chan struct{})}
	m.setPayload(MaxUDPPayload)
	m.rxPool.New = func() any { return &udpBuf{b: make([]byte, m.rxSize)} }
	empty := map[uint32]*udpSession{}
	m.sessions.Store(&empty)
	m.mu.dials = map[uint32]*udpDial{}
	m.mu.pendings = map[*udpPending]struct{}{}
	m.mu.inits = map[string]*udpInitRecord{}
	return m
}

// configure applies opts before the mux starts.
func (m *UDPMux) configure(opts UDPOptions) error {
	m.noFrag = opts.NoFragment
	if opts.UnderlayMTU == 0 {
		return nil
	}
	n := opts.UnderlayMTU - udpIPOverhead(m.is6)
	if n < udpMinPayload || n > udpMaxPayloadLimit {
		return fmt.Errorf("underlay MTU %d out of range %d..%d", opts.UnderlayMTU,
			udpMinPayload+udpIPOverhead(m.is6), udpMaxPayloadLimit+udpIPOverhead(m.is6))
	}
	m.setPayload(n)
	return nil
}

// setPayload sizes the mux's datagrams (before it starts).
func (m *UDPMux) setPayload(n int) {
	m.maxPayload = n
	m.chunkMax = m.maxPayload - udpOverhead
	m.maxControl = min(udpMaxControl, MaxFragments*m.chunkMax)
	m.rxSize = max(m.maxPayload, udpMinRxBuf-1) + 1
}

// FrameLimit is the largest frame one datagram of this mux carries.
func (m *UDPMux) FrameLimit() int { return m.chunkMax }

func (m *UDPMux) start() {
	m.wg.Add(2)
	go m.routineRead()
	go m.routineHousekeeping()
}

// Addr is the bound address (a *net.UDPAddr).
func (m *UDPMux) Addr() net.Addr { return m.laddr }

// DualStack reports whether the socket reaches both IPv4 and IPv6 peers
// (an AF_INET6 socket not bound to one IPv6 address).
func (m *UDPMux) DualStack() bool {
	if !m.is6 {
		return false
	}
	ua, ok := m.laddr.(*net.UDPAddr)
	return ok && (ua.IP == nil || ua.IP.IsUnspecified())
}

// Accept returns the next peer whose handshake init authenticated. The
// caller must answer it (Incoming.Accept or Refuse) within HandshakeTimeout.
func (m *UDPMux) Accept(ctx context.Context) (*Incoming, error) {
	select {
	case in := <-m.acceptCh:
		return in, nil
	case <-m.done:
		return nil, net.ErrClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Close closes the socket and every session; Accept and Dial return
// net.ErrClosed, links over the mux die.
func (m *UDPMux) Close() error {
	m.closeOnce.Do(func() {
		m.mu.Lock()
		m.mu.closed = true
		m.mu.Unlock()
		close(m.done)
		m.io.close()
		for _, s := range *m.sessions.Load() {
			s.closeWith(errUDPMuxClosed)
		}
	})
	m.wg.Wait()
	return nil
}

var errUDPMuxClosed = fmt.Errorf("udp socket closed: %w", net.ErrClosed)

func (m *UDPMux) closed() bool {
	select {
	case <-m.done:
		return true
	default:
		return false
	}
}

// SetPacketHandler receives datagrams that are STUN messages, on the mux's
// reader goroutine; b is valid only during the call. nil removes it.
func (m *UDPMux) SetPacketHandler(f func(b []byte, from netip.AddrPort)) {
	if f == nil {
		m.handler.Store(nil)
		return
	}
	m.handler.Store(&f)
}

// WriteTo sends one raw datagram (STUN).
func (m *UDPMux) WriteTo(b []byte, to netip.AddrPort) error {
	if m.closed() {
		return net.ErrClosed
	}
	return m.io.writeTo(b, to)
}

// Punch sends punch packets to every candidate every UDPRetryInterval for
// d, in the background, to open our NAT towards a peer that will Dial us.
func (m *UDPMux) Punch(to []netip.AddrPort, d time.Duration) {
	to = slices.Clone(to)
	m.mu.Lock()
	if m.mu.closed {
		m.mu.Unlock()
		return
	}
	m.wg.Add(1)
	m.mu.Unlock()
	go func() {
		defer m.wg.Done()
		t := time.NewTicker(UDPRetryInterval)
		defer t.Stop()
		end := time.NewTimer(d)
		defer end.Stop()
		for {
			for _, a := range to {
				m.io.writeTo(udpPunchPacket, a)
			}
			select {
			case <-t.C:
			case <-end.C:
				return
			case <-m.done:
				return
			}
		}
	}()
}

// Stats returns counted drops and events by reason (every reason, zeros
// included).
func (m *UDPMux) Stats() map[string]uint64 {
	out := make(map[string]uint64, udpNumCounters)
	for i, name := range udpCounterNames {
		out[name] = m.counters[i].Load()
	}
	return out
}

func (m *UDPMux) count(c udpCounter) { m.counters[c].Add(1) }

// sendRaw sends a handshake or punch datagram; errors only count.
func (m *UDPMux) sendRaw(b []byte, to netip.AddrPort) {
	if err := m.io.writeTo(b, to); err != nil {
		m.count(udpSendError)
		m.log.Debug("udp send failed", "to", to.String(), "err", err)
	}
}

// now is the mux's monotonic clock in nanoseconds.
func (m *UDPMux) now() int64 { return int64(time.Since(m.epoch)) }

func (m *UDPMux) getRx() *udpBuf { return m.rxPool.Get().(*udpBuf) }

// routineRead receives batches and dispatches every datagram.
func (m *UDPMux) routineRead() {
	defer m.wg.Done()
	m.log.Debug("udp reader started", "addr", m.laddr.String())
	defer m.log.Debug("udp reader stopped", "addr", m.laddr.String())
	slots := make([]*udpBuf, udpReadBatch)
	bufs := make([][]byte, udpReadBatch)
	sizes := make([]int, udpReadBatch)
	froms := make([]netip.AddrPort, udpReadBatch)
	lastErrLog := int64(-1 << 62)
	var readViews func([][]byte, []int, []netip.AddrPort) (int, error)
	if vr, ok := m.io.(udpViewReader); ok {
		readViews = vr.viewReader()
	}
	for {
		var n int
		var err error
		if readViews != nil {
			n, err = readViews(bufs, sizes, froms)
		} else {
			for i, s := range slots {
				if s == nil {
					s = m.getRx()
					slots[i] = s
				}
				bufs[i] = s.b[:m.rxSize]
			}
			n, err = m.io.readBatch(bufs, sizes, froms)
		}
		if err != nil {
			if m.closed() || errors.Is(err, net.ErrClosed) {
				return
			}
			if now := m.now(); now-lastErrLog > int64(time.Second) { // at most once a second
				m.log.Warn("udp read failed", "err", err)
				lastErrLog = now
			}
			select {
			case <-m.done:
				return
			case <-time.After(10 * time.Millisecond):
			}
			continue
		}
		m.counters[udpRxDatagrams].Add(uint64(n))
		now := m.now()
		m.lone = n == 1
		for i := 0; i < n; i++ {
			if readViews != nil {
				m.receive(nil, bufs[i], sizes[i], froms[i], now)
			} else {
				m.receive(&slots[i], nil, sizes[i], froms[i], now)
			}
		}
		m.lone = false
	}
}

// receive handles one datagram of n bytes (-1: it did not fit), in *slot
// or, with slot nil, in view: the io's memory (udpViewReader), lent until
// receive returns, so whatever is kept of it is copied. When it keeps
// *slot's buffer (queued for a link) it sets *slot to nil. It never blocks
// and never trusts the bytes: this is what FuzzUDPDatagram drives.
func (m *UDPMux) receive(slot **udpBuf, view []byte, n int, from netip.AddrPort, now int64) {
	if n < 0 || n >= m.rxSize {
		m.count(udpTooBig)
		return
	}
	if n == 0 {
		m.count(udpTruncated)
		return
	}
	var b []byte
	if slot != nil {
		b = (*slot).b[:n]
	} else {
		b = view[:n]
	}
	from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
	if isSTUN(b) {
		m.count(udpSTUN)
		if h := m.handler.Load(); h != nil {
			(*h)(b, from)
		}
		return
	}
	switch b[0] {
	case udpMsgTransport:
		m.handleData(slot, b, from, now)
	case udpMsgSealed:
		m.handleSealed(b, from, now)
	case udpMsgRelayed:
		m.handleRelayed(b, from, now)
	case udpMsgInit:
		m.handleInit(b, from)
	case udpMsgResponse:
		m.handleResponse(b, from)
	case udpMsgPunch:
		m.count(udpPunch)
	default:
		m.count(udpStranger)
	}
}

// isSTUN reports whether b looks like a STUN message (RFC 5389 section 6).
func isSTUN(b []byte) bool {
	return len(b) >= 20 && b[0]&0xc0 == 0 && binary.BigEndian.Uint32(b[4:8]) == stunMagicCookie
}

// routineHousekeeping expires handshakes that the caller never answered.
func (m *UDPMux) routineHousekeeping() {
	defer m.wg.Done()
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-m.done:
			return
		case <-t.C:
		}
		m.expirePending(time.Now())
	}
}

// udpSockAddr is to in the socket's family: v4-mapped on an AF_INET6
// socket, plain IPv4 on an AF_INET one (which cannot reach IPv6).
func udpSockAddr(to netip.AddrPort, is6 bool) (netip.AddrPort, error) {
	a := to.Addr()
	switch {
	case !a.IsValid():
		return to, fmt.Errorf("invalid address %v", to)
	case is6 && a.Is4():
		a = netip.AddrFrom16(a.As16())
	case !is6:
		a = a.Unmap()
		if !a.Is4() {
			return to, fmt.Errorf("cannot reach IPv6 address %v from an IPv4 socket", to)
		}
	}
	return netip.AddrPortFrom(a, to.Port()), nil
}
