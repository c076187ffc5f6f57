package tunnel

import (
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"

	"golang.org/x/net/ipv4"

	"vnet/bridge"
)

// udpSession is one datagram link's state in a mux, and the transport a
// Link runs over.
//
// Ownership: the receive half (rx, replay, reasm, rxFrom) belongs to the
// mux's reader goroutine; the transmit half to whoever holds txMu (the
// Link's writes); in is the hand-over between the reader and the Link's
// reader (readMsg, more), which owns cur.
type udpSession struct {
	m             *UDPMux
	local, remote uint32 // our index (receiver index of their datagrams), theirs

	// receive half: the mux's reader only
	rx           cipher.AEAD
	rxNonce      [12]byte
	replay       replayWindow
	reasm        *Reassembler // type 4 messages' plaintext chunks
	sealedReasm  *Reassembler // type 5 messages' ciphertext chunks (udp_sealed.go)
	reasmExpire  uint64       // the two reassemblers' Expired, last counted
	sealedChunks uint64       // sealedReasm.ExpiredChunks, last counted
	rxFrom       netip.AddrPort
	// relayed messages (udp_relay.go): the peer's relay key and its
	// cipher (a proxy's link to a host), the ciphers of the keys a proxy
	// sent (a host's link to it), and nonce scratch
	rxRelayed    atomic.Bool // type 6 is taken on this session
	relaying     atomic.Bool // a proxy's link to a host: super-frames pass on sealed
	sealedOut    atomic.Bool // the switch marks what it writes here (takesSealed)
	rxRelayKey   [32]byte
	rxRelayAEAD  cipher.AEAD
	relayCiphers map[[32]byte]cipher.AEAD
	relayNonce   [12]byte
	unsealNonce  [12]byte

	peer      atomic.Pointer[netip.AddrPort] // where we send: the latest authenticated source
	confirmed atomic.Bool                    // an authenticated datagram arrived
	// Loss accounting (measure.go), written by the mux's reader only: the
	// datagrams that arrived, and one past the highest counter among them.
	rxGot, rxNext atomic.Uint64

	in     chan udpMsg
	supers atomic.Int32 // super-frames in in
	// The push path (bridge.PushPort): a frame that comes alone, or a
	// super-frame, goes straight to the switch from the mux's reader while
	// the link's reader waits with nothing queued. pending counts messages
	// queued in in and not yet done with by the link's reader; popped, the
	// reader's own count of those it took since it last waited.
	pushTo  atomic.Pointer[pushTarget]
	pending atomic.Int32
	popped  int32
	cur     udpMsg // the message readMsg returned last (its payload is lent out)

	done      chan struct{}
	closeOnce sync.Once
	closeErr  error

	tx struct {
		sync.Mutex
		aead       cipher.AEAD
		nonce      [12]byte
		counter    uint64
		fragID     uint16
		whole      bool // the peer opens messages sealed whole (Hello.Sealed)
		relay      bool // super-frames go relayed, sealed with relayAEAD (a host's link to a proxy)
		relayAEAD  cipher.AEAD
		relayNonce [12]byte
		dest       udpDest     // the peer's address as the socket wants it
		batch      *udpTxBatch // from the mux's pool during a write
	}
}

var _ transport = (*udpSession)(nil)

// udpMsg is a whole message queued for the link: data lives in buf (from
// pool) or, for a large control message, in memory of its own.
type udpMsg struct {
	typ  byte
	data []byte
	buf  *udpBuf
	pool *sync.Pool
}

func (e *udpMsg) release() {
	if e.buf != nil {
		e.pool.Put(e.buf)
	}
	*e = udpMsg{}
}

// udpTxBatch is scratch for datagrams about to be sent to one address,
// pooled per mux (so memory follows concurrent writers, not sessions). The
// io may keep its own scratch in it (msgs).
type udpTxBatch struct {
	bufs [][]byte // udpSendBatch buffers of maxPayload bytes
	size []int
	// body[i], when not nil, follows bufs[i][:size[i]] in datagram i: a
	// chunk of a message sealed whole, which stays in sealed until the
	// batch is sent (udp_sealed.go).
	body [][]byte
	n    int
	to   netip.AddrPort
	dest *udpDest // the sending session's cache

	sealed []byte // ciphertexts of messages sealed whole, until the batch is sent

	msgs []ipv4.Message
	// UDP GSO scratch (udp_linux.go): one message per run of equal-sized
	// datagrams, whose Buffers are a window of iov, and OOB a window of oob.
	gmsgs []ipv4.Message
	iov   [][]byte
	oob   []byte
}

// datagram returns datagram i whole, copying its body (if it has one)
// behind its header: for ios that send one buffer per datagram.
func (b *udpTxBatch) datagram(i int) []byte {
	d := b.bufs[i][:b.size[i]]
	if i < len(b.body) && b.body[i] != nil {
		d = append(d, b.body[i]...)
	}
	return d
}

// length is datagram i's size, body included.
func (b *udpTxBatch) length(i int) int {
	if i < len(b.body) {
		return b.size[i] + len(b.body[i])
	}
	return b.size[i]
}

// udpDest caches the socket address of a session's peer (converting one
// allocates), for the io to fill in.
type udpDest struct {
	to netip.AddrPort
	ua *net.UDPAddr
}

func (m *UDPMux) getTxBatch() *udpTxBatch {
	if b, ok := m.txPool.Get().(*udpTxBatch); ok {
		return b
	}
	b := &udpTxBatch{bufs: make([][]byte, udpSendBatch), size: make([]int, udpSendBatch), body: make([][]byte, udpSendBatch)}
	for i := range b.bufs {
		b.bufs[i] = make([]byte, m.maxPayload)
	}
	return b
}

func (m *UDPMux) putTxBatch(b *udpTxBatch) {
	b.n, b.dest = 0, nil
	m.txPool.Put(b)
}

// beginTxLocked and endTxLocked bracket a write: they lend the session a
// batch from the pool.
func (s *udpSession) beginTxLocked() {
	s.tx.batch = s.m.getTxBatch()
	s.tx.batch.dest = &s.tx.dest
}

func (s *udpSession) endTxLocked() {
	s.m.putTxBatch(s.tx.batch)
	s.tx.batch = nil
}

func newAEAD(key [32]byte) cipher.AEAD {
	block, err := aes.NewCipher(key[:])
	if err != nil {
		panic(err) // 32-byte keys never fail
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		panic(err)
	}
	return aead
}

// addSession registers a new session under a fresh index (local == 0) or
// under a dial's reserved index.
func (m *UDPMux) addSession(local, remote uint32, peer netip.AddrPort, txKey, rxKey [32]byte) (*udpSession, error) {
	s := &udpSession{m: m, remote: remote, rx: newAEAD(rxKey),
		reasm:       NewReassembler(udpReassemblyPending, udpReassemblyBuf, int64(UDPReassemblyTimeout)),
		sealedReasm: NewReassembler(udpReassemblyPending, udpReassemblyBuf, int64(UDPReassemblyTimeout)),
		in:          make(chan udpMsg, udpQueueLen), done: make(chan struct{}), rxFrom: peer}
	s.tx.aead = newAEAD(txKey)
	s.tx.relayAEAD = newAEAD(relayKey(txKey))
	s.rxRelayKey = relayKey(rxKey)
	s.rxRelayAEAD = newAEAD(s.rxRelayKey)
	s.peer.Store(&peer)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.mu.closed {
		return nil, errUDPMuxClosed
	}
	old := *m.sessions.Load()
	if len(old) >= udpMaxSessions {
		return nil, fmt.Errorf("too many UDP sessions (%d)", len(old))
	}
	if local == 0 {
		local = m.allocIndexLocked()
	}
	s.local = local
	next := make(map[uint32]*udpSession, len(old)+1)
	for k, v := range old {
		next[k] = v
	}
	next[local] = s
	m.sessions.Store(&next)
	return s, nil
}

func (m *UDPMux) removeSession(s *udpSession) {
	m.mu.Lock()
	defer m.mu.Unlock()
	old := *m.sessions.Load()
	if old[s.local] != s {
		return
	}
	next := make(map[uint32]*udpSession, len(old))
	for k, v := range old {
		if k != s.local {
			next[k] = v
		}
	}
	m.sessions.Store(&next)
}

// receiver is the session that datagram b (type 4 or 5) is addressed to
// by its receiver index, or nil, counted as an unknown session.
func (m *UDPMux) receiver(b []byte) *udpSession {
	s := (*m.sessions.Load())[binary.BigEndian.Uint32(b[1:5])]
	if s == nil {
		m.count(udpUnknownSession)
	}
	return s
}

// handleData decrypts a transport datagram in place and queues its message.
// b is in *slot (kept for a whole message, *slot then nil) or, with slot
// nil, lent by the io (see UDPMux.receive).
func (m *UDPMux) handleData(slot **udpBuf, b []byte, from netip.AddrPort, now int64) {
	if len(b) < udpDataHeaderLen+InnerHeaderLen+udpTagLen {
		m.count(udpTruncated)
		return
	}
	s := m.receiver(b)
	if s == nil {
		return
	}
	ctr := binary.BigEndian.Uint64(b[5:13])
	binary.BigEndian.PutUint64(s.rxNonce[4:], ctr)
	pt, err := s.rx.Open(b[udpDataHeaderLen:udpDataHeaderLen], s.rxNonce[:], b[udpDataHeaderLen:], b[:udpDataHeaderLen])
	if err != nil {
		m.count(udpBadMAC)
		return
	}
	if !s.replay.accept(ctr) {
		m.count(udpReplay)
		return
	}
	m.authenticated(s, ctr, 1, from)
	typ, id, index, count, chunk, err := ParseInner(pt)
	if err != nil {
		m.count(udpBadMessage)
		return
	}
	if count == 1 {
		if !m.validMsg(typ, len(chunk)) {
			m.count(udpBadMessage)
			return
		}
		if typ == MsgFrame && m.lone && s.pushFrame(chunk) {
			return
		}
		if slot == nil { // lent by the io: keep a copy
			e := udpMsg{typ: typ, buf: m.getRx(), pool: &m.rxPool}
			e.data = e.buf.b[:copy(e.buf.b, chunk)]
			if !s.push(e) {
				e.release()
			}
			return
		}
		if s.push(udpMsg{typ: typ, data: chunk, buf: *slot, pool: &m.rxPool}) {
			*slot = nil
		}
		return
	}
	msg := m.reassemble(s, s.reasm, typ, uint64(id), index, count, chunk, now)
	if msg == nil {
		return
	}
	if !m.validMsg(typ, len(msg)) {
		m.count(udpBadMessage)
		return
	}
	m.queueReassembled(s, s.reasm, typ, msg, 0)
}

// reassemble adds a chunk to r (one of s's reassemblers) and returns the
// whole message once it is complete, or nil, counting what r dropped.
func (m *UDPMux) reassemble(s *udpSession, r *Reassembler, typ byte, id uint64, index, count uint8, chunk []byte, now int64) []byte {
	msg, err := r.Add(typ, id, index, count, chunk, now)
	m.countExpired(s)
	switch {
	case errors.Is(err, ErrFragTooBig):
		m.count(udpTooBig)
	case err != nil:
		m.count(udpFragError)
	}
	return msg
}

// authenticated records an authenticated message from the peer at from:
// one datagram under counter ctr, or a message sealed whole that spans
// datagrams counters from ctr.
func (m *UDPMux) authenticated(s *udpSession, ctr, datagrams uint64, from netip.AddrPort) {
	s.rxGot.Add(datagrams)
	if ctr+datagrams > s.rxNext.Load() {
		s.rxNext.Store(ctr + datagrams)
	}
	if from != s.rxFrom { // NAT rebinding or roaming: follow the peer
		s.rxFrom = from
		p := new(netip.AddrPort) // only here: from itself must not escape
		*p = from
		s.peer.Store(p)
		m.count(udpRoam)
	}
	if !s.confirmed.Load() {
		s.confirmed.Store(true)
	}
}

// countExpired adds the messages s's reassemblers dropped incomplete
// since the last call to the mux's counter.
func (m *UDPMux) countExpired(s *udpSession) {
	if e := s.reasm.Expired + s.sealedReasm.Expired; e != s.reasmExpire {
		m.counters[udpFragExpired].Add(e - s.reasmExpire)
		s.reasmExpire = e
	}
	// The datagrams of a message sealed whole count as arrived only when
	// it opens; those of one that never completes, when it is dropped. The
	// loss is then the datagrams that did not come, as for type 4, not
	// their whole messages (taken on trust: a forger who knows the session
	// can hide loss, no more).
	if c := s.sealedReasm.ExpiredChunks; c != s.sealedChunks {
		s.rxGot.Add(c - s.sealedChunks)
		s.sealedChunks = c
	}
}

// queueReassembled queues msg, a whole message that r has just returned
// (it lies in r's memory until r's next Add, off bytes into it), for the
// link's reader.
func (m *UDPMux) queueReassembled(s *udpSession, r *Reassembler, typ byte, msg []byte, off int) {
	if typ == MsgFrameGSO && s.pushOffload(msg) {
		return
	}
	e := udpMsg{typ: typ}
	if len(msg) <= m.rxSize { // a 1514-byte frame: no need for a jumbo buffer
		e.buf, e.pool = m.getRx(), &m.rxPool
		e.data = e.buf.b[:copy(e.buf.b, msg)]
	} else if len(msg) <= bridge.MaxFrame {
		e.buf, e.pool = udpLargePool.Get().(*udpBuf), &udpLargePool
		e.data = e.buf.b[:copy(e.buf.b, msg)]
	} else if typ == MsgFrameGSO {
		e.buf, e.pool = udpSuperPool.Get().(*udpBuf), &udpSuperPool
		if slab := r.Swap(e.buf.b); slab != nil {
			// The reassembler keeps the pool's buffer and the message
			// leaves in its slab, uncopied: 64 KB less to move per
			// super-frame, at every receiving end (the proxy's too).
			e.buf.b, e.data = slab[:len(e.buf.b)], slab[off:off+len(msg)]
		} else {
			e.data = e.buf.b[:copy(e.buf.b, msg)]
		}
	} else {
		e.data = append([]byte(nil), msg...) // a large control message: rare
	}
	if !s.push(e) {
		e.release()
	}
}

// validMsg checks a whole message's size against its type.
func (m *UDPMux) validMsg(typ byte, n int) bool {
	switch typ {
	case MsgFrame:
		return n >= bridge.MinFrame && n <= bridge.MaxFrame
	case MsgFrameGSO:
		return n >= bridge.VnetHdrLen+bridge.MinFrame && n <= bridge.VnetHdrLen+bridge.MaxSuperFrame
	case MsgControl:
		return n >= 1 && n <= m.maxControl
	case MsgPing, MsgPong:
		return n == 8
	}
	return false
}

// push queues e for the link's reader, or drops it when the queue is full.
func (s *udpSession) push(e udpMsg) bool {
	super := e.typ == MsgFrameGSO
	if super && s.supers.Add(1) > udpMaxSuperQueued {
		s.supers.Add(-1)
		s.m.count(udpQueueFull)
		return false
	}
	s.pending.Add(1)
	select {
	case s.in <- e:
		return true
	default:
		s.pending.Add(-1)
		if super {
			s.supers.Add(-1)
		}
		s.m.count(udpQueueFull)
		return false
	}
}

// msgNone is what readMsg returns for a message it dropped.
const msgNone byte = 0

// pushTarget is where the push path delivers: the switch's Pusher of the
// link, and the link, which counts what arrives.
type pushTarget struct {
	p *bridge.Pusher
	l *Link
}

// setPusher implements pushTransport.
func (s *udpSession) setPusher(p *bridge.Pusher, l *Link) { s.pushTo.Store(&pushTarget{p: p, l: l}) }

// pushFrame hands a lone frame to the switch if the link's reader waits
// with nothing queued; false: queue it as usual. The mux's reader only.
func (s *udpSession) pushFrame(frame []byte) bool {
	pt := s.pushTo.Load()
	if pt == nil || !pt.p.Push(frame, &s.pending) {
		return false
	}
	s.pushed(pt, len(frame))
	return true
}

// pushed counts a frame of n bytes that went to the switch by pt.
func (s *udpSession) pushed(pt *pushTarget, n int) {
	pt.l.pushed(n)
	s.m.count(udpPushed)
}

// pushOffload is pushFrame for a super-frame (its virtio-net header
// first). Unlike a small frame it goes even when it is not alone in the
// reader's batch: a super-frame is a batch of its own.
func (s *udpSession) pushOffload(msg []byte) bool {
	pt := s.pushTo.Load()
	if pt == nil || !pt.l.offload || !pt.p.PushOffload(msg, &s.pending) {
		return false
	}
	s.pushed(pt, len(msg)-bridge.VnetHdrLen)
	return true
}

// carriesSuper implements superTransport: a super-frame must fit
// MaxFragments chunks of this mux's datagrams.
func (s *udpSession) carriesSuper() bool {
	return !s.m.noFrag && s.m.chunkMax*MaxFragments >= bridge.VnetHdrLen+bridge.MaxSuperFrame
}

// frameLimit is the largest frame the session carries whole when it may
// not split frames (UDPOptions.NoFragment); 0: no limit.
func (s *udpSession) frameLimit() int {
	if s.m.noFrag {
		return s.m.chunkMax
	}
	return 0
}

func (s *udpSession) kind() string        { return "udp" }
func (s *udpSession) localAddr() net.Addr { return s.m.laddr }
func (s *udpSession) remoteAddr() net.Addr {
	return net.UDPAddrFromAddrPort(*s.peer.Load())
}

func (s *udpSession) close() error {
	s.closeWith(errors.New("udp session closed"))
	return nil
}

func (s *udpSession) closeWith(err error) {
	s.closeOnce.Do(func() {
		s.closeErr = err
		close(s.done)
		s.m.removeSession(s)
	})
}

// readMsg pops the next message. Frames are copied into frame and their
// buffer goes back to the pool at once; other payloads stay lent until the
// next call.
func (s *udpSession) readMsg(buf []byte, offset int) (byte, []byte, error) {
	s.cur.release()
	select {
	case <-s.done:
		return 0, nil, s.closeErr
	default:
	}
	var e udpMsg
	select {
	case e = <-s.in:
	default:
		// Nothing queued. Link.Read asks for more within a batch only
		// when more() says so, so waiting here means everything taken
		// before has been forwarded: let the push path run meanwhile.
		s.pending.Add(-s.popped)
		s.popped = 0
		pt := s.pushTo.Load()
		if pt != nil {
			pt.p.Release()
		}
		closed := false
		select {
		case e = <-s.in:
		case <-s.done:
			closed = true
		}
		if pt != nil {
			pt.p.Acquire()
		}
		if closed {
			return 0, nil, s.closeErr
		}
	}
	s.popped++
	frame := buf[offset:]
	switch e.typ {
	case MsgFrameGSO:
		s.supers.Add(-1)
		frame = buf[offset-bridge.VnetHdrLen:]
	case MsgFrame:
	default:
		s.cur = e
		return e.typ, e.data, nil
	}
	if len(e.data) > len(frame) {
		s.m.count(udpTooBig)
		e.release()
		// Not a loop back to the wait: frames of this batch may be
		// in hand. Link.Read skips a message of no type.
		return msgNone, nil, nil
	}
	typ, n := e.typ, copy(frame, e.data)
	e.release()
	return typ, frame[:n], nil
}

func (s *udpSession) more() bool { return len(s.in) > 0 }

// pathStats implements pathStater: the peer numbers its datagrams, so the
// gaps among those that arrived are the ones lost on the way.
func (s *udpSession) pathStats(ps *pathStats) {
	// next before got: a datagram landing in between is counted, not lost.
	ps.rxExpected = s.rxNext.Load()
	ps.rxGot, ps.hasRxLoss = s.rxGot.Load(), true
}

func (s *udpSession) isClosed() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// writeFrames encrypts every frame into the session's scratch datagrams
// (fragmenting those that do not fit one) and sends them in batches. A
// frame's plaintext is read where it lies: the inner header goes into the
// 5 bytes before each chunk (the headroom for the first, the previous
// chunk's tail for the others, saved and restored), so the caller's bytes
// are unchanged when it returns. Socket errors are counted, not returned:
// a lost datagram is normal on UDP, and keepalives judge the path.
func (s *udpSession) writeFrames(bufs [][]byte, offset int, super bool) error {
	s.tx.Lock()
	defer s.tx.Unlock()
	if s.isClosed() {
		return net.ErrClosed
	}
	s.beginTxLocked()
	defer s.endTxLocked()
	for _, b := range bufs {
		if super && s.sealedOut.Load() {
			if meta, ok := sealedMeta(b, offset); ok {
				// Sealed by the host it came from: passed on as it is.
				if len(b)-offset > udpReassemblyMax+udpTagLen-bridge.VnetHdrLen {
					s.m.count(udpTooBig)
					continue
				}
				s.appendRelayLocked(b[offset-bridge.VnetHdrLen:], binary.BigEndian.Uint64(meta[:8]), (*[32]byte)(meta[8:40]))
				continue
			}
		}
		typ, start := frameType(b, offset, super)
		limit := bridge.MaxFrame
		if typ == MsgFrameGSO {
			limit = udpReassemblyMax
		}
		if typ == MsgFrame && s.m.noFrag {
			limit = max(s.m.chunkMax, bridge.MinIPv6Frame)
		}
		switch n := len(b) - start; {
		case n > limit:
			s.m.count(udpTooBig)
			continue
		case n < bridge.MinFrame:
			s.m.count(udpBadMessage)
			continue
		}
		if start < InnerHeaderLen {
			if err := s.appendCopyLocked(typ, b[start:]); err != nil {
				return err
			}
			continue
		}
		s.appendFrameLocked(typ, b, start)
	}
	return s.flushLocked()
}

// appendFrameLocked seals frame b[offset:] chunk by chunk without copying it.
func (s *udpSession) appendFrameLocked(typ byte, b []byte, offset int) {
	chunkMax := s.m.chunkMax
	n := len(b) - offset
	count := FragmentCount(n, chunkMax)
	if count > 1 && s.tx.whole {
		if typ != MsgFrameGSO || !s.tx.relay || !s.appendRelayLocked(b[offset:], 0, nil) {
			s.appendWholeLocked(typ, b[offset:])
		}
		return
	}
	var id uint16
	if count > 1 {
		s.tx.fragID++
		id = s.tx.fragID
	}
	for i := 0; i < count; i++ {
		start := offset + i*chunkMax
		end := min(start+chunkMax, len(b))
		h := start - InnerHeaderLen
		var saved [InnerHeaderLen]byte
		copy(saved[:], b[h:start])
		PutInner(b[h:], typ, id, uint8(i), uint8(count))
		s.sealLocked(b[h:end])
		copy(b[h:start], saved[:])
	}
}

// appendCopyLocked queues a message that has no headroom: each chunk is
// copied behind its inner header in the datagram, then sealed in place.
func (s *udpSession) appendCopyLocked(typ byte, payload []byte) error {
	chunkMax := s.m.chunkMax
	count := FragmentCount(len(payload), chunkMax)
	if count > MaxFragments {
		return fmt.Errorf("message of %d bytes needs %d fragments (max %d)", len(payload), count, MaxFragments)
	}
	var id uint16
	if count > 1 {
		s.tx.fragID++
		id = s.tx.fragID
	}
	for i := 0; i < count; i++ {
		chunk := payload[i*chunkMax : min((i+1)*chunkMax, len(payload))]
		d := s.nextDatagramLocked()
		PutInner(d[udpDataHeaderLen:], typ, id, uint8(i), uint8(count))
		k := copy(d[udpDataHeaderLen+InnerHeaderLen:], chunk)
		s.finishLocked(d, d[udpDataHeaderLen:udpDataHeaderLen+InnerHeaderLen+k])
	}
	return nil
}

// sealLocked encrypts plaintext (inner header + chunk) into the next
// datagram of the batch.
func (s *udpSession) sealLocked(plaintext []byte) {
	s.finishLocked(s.nextDatagramLocked(), plaintext)
}

// finishLocked writes the outer header into d and seals plaintext (which
// may already sit in d at the ciphertext's place) behind it.
func (s *udpSession) finishLocked(d, plaintext []byte) {
	t := &s.tx
	d[0] = udpMsgTransport
	binary.BigEndian.PutUint32(d[1:5], s.remote)
	binary.BigEndian.PutUint64(d[5:13], t.counter)
	binary.BigEndian.PutUint64(t.nonce[4:], t.counter)
	t.counter++
	out := t.aead.Seal(d[udpDataHeaderLen:udpDataHeaderLen], t.nonce[:], plaintext, d[:udpDataHeaderLen])
	b := t.batch
	b.size[b.n], b.body[b.n] = udpDataHeaderLen+len(out), nil
	b.n++
}

// nextDatagramLocked returns the next free scratch datagram, sending the
// batch first when it is full.
func (s *udpSession) nextDatagramLocked() []byte {
	b := s.tx.batch
	if b.n == len(b.bufs) {
		s.flushLocked()
	}
	return b.bufs[b.n][:s.m.maxPayload]
}

// flushLocked sends the batch to the peer's current address.
func (s *udpSession) flushLocked() error {
	b := s.tx.batch
	if b.n == 0 {
		return nil
	}
	b.to = *s.peer.Load()
	n := b.n
	err := s.m.io.sendBatch(b)
	b.n, b.sealed = 0, b.sealed[:0]
	s.m.counters[udpTxDatagrams].Add(uint64(n))
	if err != nil {
		if s.m.closed() {
			return net.ErrClosed
		}
		s.m.count(udpSendError)
		s.m.log.Debug("udp send failed", "to", b.to.String(), "err", err)
	}
	return nil
}

// writeMsg sends one message of any type (control up to maxControl bytes).
func (s *udpSession) writeMsg(typ byte, payload []byte) error {
	switch typ {
	case MsgControl:
		if len(payload) == 0 || len(payload) > s.m.maxControl {
			return fmt.Errorf("control message of %d bytes does not fit a UDP link (max %d)", len(payload), s.m.maxControl)
		}
	case MsgFrame:
		if len(payload) < bridge.MinFrame || len(payload) > bridge.MaxFrame {
			return fmt.Errorf("frame of %d bytes", len(payload))
		}
	case MsgPing, MsgPong:
		if len(payload) != 8 {
			return fmt.Errorf("keepalive of %d bytes", len(payload))
		}
	default:
		return fmt.Errorf("unknown message type %d", typ)
	}
	s.tx.Lock()
	defer s.tx.Unlock()
	if s.isClosed() {
		return net.ErrClosed
	}
	s.beginTxLocked()
	defer s.endTxLocked()
	if err := s.appendCopyLocked(typ, payload); err != nil {
		return err
	}
	return s.flushLocked()
}

// controlLimit is the largest control message a UDP link carries.
func (s *udpSession) controlLimit() int { return s.m.maxControl }
