package tunnel

// The UDP handshake: Noise NNpsk0 (25519, AES-GCM, SHA-256) whose pre-shared
// key is derived from the network key, so only members can complete it and
// a stranger's init costs us one hash chain and one failed AEAD open, no DH
// and no answer. NN gives forward secrecy (fresh ephemerals each side);
// identity is the Hello inside, vouched for by a CA-signed certificate and
// a signature over both ephemerals (udp_auth.go), as with TLS links.
//
// Concurrency: handleInit and handleResponse run on the mux's reader
// goroutine; Dial, Incoming.Accept/Refuse on the callers'. Shared state
// (dials, pending inits, init records) is under m.mu; a dial's handshake
// state under its own d.mu (lock order: d.mu, then m.mu).

import (
	"bytes"
	"context"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/flynn/noise"
)

const (
	udpPrologue     = "vnet udp v2"
	udpPSKInfo      = "vnet udp psk v1"
	udpTimestampLen = 12 // unix nanoseconds (8) + random (4)
	udpEphemeralLen = 32
	// udpMinInit and udpMinResponse are the shortest well-formed messages.
	udpMinInit     = udpInitHeaderLen + udpEphemeralLen + udpTimestampLen + 2 + udpSigLen + udpTagLen
	udpMinResponse = udpRespHeaderLen + udpEphemeralLen + 2 + udpSigLen + udpTagLen
)

var udpCipherSuite = noise.NewCipherSuite(noise.DH25519, noise.CipherAESGCM, noise.HashSHA256)

// udpPSK derives the handshake's pre-shared key from the network key.
func udpPSK(k Key) [32]byte {
	b, err := hkdf.Key(sha256.New, k[:], nil, udpPSKInfo, 32)
	if err != nil {
		panic(err)
	}
	return [32]byte(b)
}

func (m *UDPMux) noiseState(initiator bool, rng *bytes.Reader) (*noise.HandshakeState, error) {
	cfg := noise.Config{CipherSuite: udpCipherSuite, Pattern: noise.HandshakeNN, Initiator: initiator,
		Prologue: []byte(udpPrologue), PresharedKey: m.psk[:], PresharedKeyPlacement: 0}
	if rng != nil {
		cfg.Random = rng
	}
	return noise.NewHandshakeState(cfg)
}

// allocIndexLocked picks an unused random session index: never 0, never
// with udpIndexAvoid as its low byte (see isSTUN).
func (m *UDPMux) allocIndexLocked() uint32 {
	sessions := *m.sessions.Load()
	for {
		var b [4]byte
		rand.Read(b[:])
		i := binary.BigEndian.Uint32(b[:])
		if i == 0 || byte(i) == udpIndexAvoid {
			continue
		}
		if _, ok := sessions[i]; ok {
			continue
		}
		if _, ok := m.mu.dials[i]; ok {
			continue
		}
		return i
	}
}

// ---- initiator ----

// udpDial is one Dial in progress.
type udpDial struct {
	idx     uint32
	hello   Hello                 // ours
	seed    [32]byte              // ephemeral private key: the state can be rebuilt
	eph     [udpEphemeralLen]byte // its public key
	payload []byte                // message 1's payload
	msg1    []byte

	mu           sync.Mutex
	hs           *noise.HandshakeState
	dirty        bool // a failed read may have left hs inconsistent
	done         bool // Dial gave up or took the result
	answers      int
	authFailures int
	res          *udpDialResult
	ready        chan struct{} // closed when res is set
}

type udpDialResult struct {
	sess *udpSession
	peer Hello
	err  error
}

// initiatorState builds the handshake state after message 1 from the seed.
func (m *UDPMux) initiatorState(d *udpDial) (*noise.HandshakeState, []byte, error) {
	hs, err := m.noiseState(true, bytes.NewReader(d.seed[:]))
	if err != nil {
		return nil, nil, err
	}
	out, _, _, err := hs.WriteMessage(nil, d.payload)
	return hs, out, err
}

// timestamp is message 1's timestamp: unix nanoseconds, strictly increasing
// within this mux, then 4 random bytes.
func (m *UDPMux) timestamp() [udpTimestampLen]byte {
	m.mu.Lock()
	ns := time.Now().UnixNano()
	if ns <= m.mu.lastTS {
		ns = m.mu.lastTS + 1
	}
	m.mu.lastTS = ns
	m.mu.Unlock()
	var ts [udpTimestampLen]byte
	binary.BigEndian.PutUint64(ts[:8], uint64(ns))
	rand.Read(ts[8:])
	return ts
}

func (m *UDPMux) newDial(hello Hello) (*udpDial, error) {
	hello.Version = WireVersion
	hello.Offload = hello.Offload && !m.noFrag // a super-frame would be split
	hello.Sealed = !m.sealedOff
	hello.Relay = m.relayFits()
	js, err := json.Marshal(hello)
	if err != nil {
		return nil, err
	}
	uc, err := m.creds.udpCertFor(hello.Name)
	if err != nil {
		return nil, err
	}
	ts := m.timestamp()
	d := &udpDial{hello: hello, ready: make(chan struct{})}
	rand.Read(d.seed[:])
	d.eph = [udpEphemeralLen]byte(ephemeralPublic(d.seed[:]))
	d.payload = appendUDPAuth(ts[:], uc, udpSignedMsg(udpInitContext, d.eph[:], ts[:], js))
	d.payload = append(d.payload, js...)
	hs, out, err := m.initiatorState(d)
	if err != nil {
		return nil, err
	}
	d.hs = hs
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.mu.closed {
		return nil, net.ErrClosed
	}
	if len(m.mu.dials) >= udpMaxDials {
		return nil, fmt.Errorf("too many UDP dials in progress (%d)", len(m.mu.dials))
	}
	d.idx = m.allocIndexLocked()
	d.msg1 = make([]byte, udpInitHeaderLen, udpInitHeaderLen+len(out))
	d.msg1[0] = udpMsgInit
	binary.BigEndian.PutUint32(d.msg1[1:], d.idx)
	d.msg1 = append(d.msg1, out...)
	if len(d.msg1) > m.maxPayload {
		return nil, fmt.Errorf("hello too large for one datagram (%d bytes)", len(d.msg1))
	}
	m.mu.dials[d.idx] = d
	return d, nil
}

// endDial forgets d; a session that arrived after Dial gave up is closed.
func (m *UDPMux) endDial(d *udpDial) {
	d.mu.Lock()
	d.done = true
	var orphan *udpSession
	if d.res != nil && d.res.sess != nil {
		orphan, d.res.sess = d.res.sess, nil
	}
	d.mu.Unlock()
	if orphan != nil {
		orphan.close()
	}
	m.mu.Lock()
	delete(m.mu.dials, d.idx)
	m.mu.Unlock()
}

// Dial runs the initiator handshake towards every candidate address at
// once, re-sending the same init to each every UDPRetryInterval until one
// authenticated response arrives or ctx ends (bounded by HandshakeTimeout).
// The first response wins; the link's remote address is where it came from
// (the candidate that answered). This is the hole-punching primitive: run it
// while the peer runs Punch (or Dial) towards us.
func (m *UDPMux) Dial(ctx context.Context, to []netip.AddrPort, hello Hello, log *slog.Logger, h ControlHandler) (*Link, error) {
	if len(to) == 0 {
		return nil, errors.New("udp dial: no candidate addresses")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithTimeout(ctx, HandshakeTimeout)
	defer cancel()
	d, err := m.newDial(hello)
	if err != nil {
		return nil, err
	}
	defer m.endDial(d)
	start := time.Now()
	t := time.NewTicker(UDPRetryInterval)
	defer t.Stop()
	for {
		for _, a := range to {
			m.sendRaw(d.msg1, a)
		}
		select {
		case <-d.ready:
			return m.finishDial(d, log, h)
		case <-t.C:
		case <-m.done:
			return nil, net.ErrClosed
		case <-ctx.Done():
			select {
			case <-d.ready: // an answer that raced the deadline still wins
				return m.finishDial(d, log, h)
			default:
			}
			return nil, m.dialError(d, to, time.Since(start), ctx.Err())
		}
	}
}

func (m *UDPMux) finishDial(d *udpDial, log *slog.Logger, h ControlHandler) (*Link, error) {
	me := d.hello
	d.mu.Lock()
	res := *d.res
	d.res.sess = nil // ours now
	d.done = true
	d.mu.Unlock()
	if res.err != nil {
		return nil, res.err
	}
	return newLink(res.sess, me, res.peer, log, h), nil
}

func (m *UDPMux) dialError(d *udpDial, to []netip.AddrPort, took time.Duration, cause error) error {
	d.mu.Lock()
	answers, bad := d.answers, d.authFailures
	d.mu.Unlock()
	if bad > 0 && bad == answers {
		return fmt.Errorf("%w: %d answer(s) from %v did not authenticate: the peer does not hold this network's key (check --key-file on both sides)", ErrAuth, bad, to)
	}
	if errors.Is(cause, context.DeadlineExceeded) {
		return fmt.Errorf("no answer from any of %v within %v (peer down, UDP blocked on the path, or the peer does not hold this network's key)", to, took.Round(time.Millisecond))
	}
	return fmt.Errorf("udp dial %v: %w", to, cause)
}

// handleResponse processes message 2 for a Dial in progress.
func (m *UDPMux) handleResponse(b []byte, from netip.AddrPort) {
	if len(b) < udpMinResponse {
		m.count(udpTruncated)
		return
	}
	sender := binary.BigEndian.Uint32(b[1:5])
	m.mu.Lock()
	d := m.mu.dials[binary.BigEndian.Uint32(b[5:9])]
	m.mu.Unlock()
	if d == nil {
		m.count(udpUnknownSession)
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.done || d.res != nil {
		m.count(udpHandshakeDup)
		return
	}
	d.answers++
	if d.dirty {
		hs, _, err := m.initiatorState(d)
		if err != nil {
			return
		}
		d.hs, d.dirty = hs, false
	}
	payload, cs1, cs2, err := d.hs.ReadMessage(nil, b[udpRespHeaderLen:])
	if err != nil || cs1 == nil || cs2 == nil {
		d.dirty = true
		d.authFailures++
		m.count(udpHandshakeBad)
		m.warnAuth(from)
		return
	}
	res := &udpDialResult{}
	var peer Hello
	cert, sig, js, authErr := splitUDPAuth(payload)
	if authErr == nil {
		authErr = json.Unmarshal(js, &peer)
	}
	if authErr == nil && peer.Error == "" {
		authErr = m.creds.verifyUDPPeer(cert, sig, peer.Name,
			udpSignedMsg(udpRespContext, d.eph[:], b[udpRespHeaderLen:udpRespHeaderLen+udpEphemeralLen], js))
	}
	switch err := authErr; {
	case err != nil && (errors.Is(err, ErrAuth) || errors.Is(err, ErrRevoked)):
		m.count(udpHandshakeBad)
		res.err = fmt.Errorf("udp peer %v: %w", from, err)
	case err != nil:
		res.err = fmt.Errorf("malformed hello from %v: %w", from, err)
	case peer.Version != WireVersion:
		res.err = fmt.Errorf("peer speaks link protocol version %d, we speak %d", peer.Version, WireVersion)
	case peer.Error != "":
		res.err = fmt.Errorf("%w by %s: %s", ErrRefused, peer.Name, peer.Error)
	default:
		s, err := m.addSession(d.idx, sender, from, cs1.UnsafeKey(), cs2.UnsafeKey())
		if err != nil {
			res.err = err
		} else {
			res.sess, res.peer = s, peer
			m.count(udpHandshakes)
		}
	}
	d.res = res
	close(d.ready)
}

// warnAuth logs a failed handshake, at most once every 10 s per mux.
func (m *UDPMux) warnAuth(from netip.AddrPort) {
	now := m.now()
	last := m.lastWarn.Load()
	if last != 0 && now-last < int64(10*time.Second) {
		return
	}
	if m.lastWarn.CompareAndSwap(last, now) {
		m.log.Warn("authentication failed: dropped UDP handshakes from a peer without the network key (check --key-file on both sides)",
			"peer", from.String(), "handshake_bad_total", m.counters[udpHandshakeBad].Load())
	}
}

// ---- responder ----

// udpInitRecord remembers the last init accepted from one (name, link), to
// refuse replays and to answer re-sent inits.
type udpInitRecord struct {
	ts      [udpTimestampLen]byte
	idx     uint32
	eph     [udpEphemeralLen]byte
	resp    []byte // our answer, once given
	resends int
	sess    *udpSession
	seen    time.Time
}

// udpPending is an authenticated init waiting for Accept/Refuse.
type udpPending struct {
	hs      *noise.HandshakeState
	remote  uint32
	from    netip.AddrPort
	rec     *udpInitRecord
	expires time.Time
	eInit   [udpEphemeralLen]byte // the initiator's ephemeral
	eResp   [udpEphemeralLen]byte // ours
	state   int                   // under m.mu: pendingWaiting, pendingAnswered, pendingExpired
}

const (
	pendingWaiting = iota
	pendingAnswered
	pendingExpired
)

// handleInit is the responder's side of message 1. It answers nothing
// itself: the Incoming it queues answers when accepted or refused.
func (m *UDPMux) handleInit(b []byte, from netip.AddrPort) {
	if len(b) < udpMinInit {
		m.count(udpTruncated)
		return
	}
	m.mu.Lock()
	busy := len(m.mu.pendings) >= udpMaxPending
	m.mu.Unlock()
	if busy {
		m.count(udpHandshakeBusy)
		return
	}
	var seed [32]byte // our ephemeral: its public half is signed in the answer
	rand.Read(seed[:])
	hs, err := m.noiseState(false, bytes.NewReader(seed[:]))
	if err != nil {
		return
	}
	payload, _, _, err := hs.ReadMessage(nil, b[udpInitHeaderLen:])
	if err != nil {
		m.count(udpHandshakeBad)
		m.warnAuth(from)
		return
	}
	var eph [udpEphemeralLen]byte
	copy(eph[:], b[udpInitHeaderLen:])
	hello, ts, err := parseInitPayload(payload, m.creds, eph[:])
	if err != nil {
		m.count(udpHandshakeBad)
		if errors.Is(err, ErrRevoked) {
			// A member we cut off: tell it so (it holds the pre-shared
			// key, so the answer costs it nothing it could not get anyway).
			p := &udpPending{hs: hs, remote: binary.BigEndian.Uint32(b[1:5]), from: from, rec: &udpInitRecord{},
				eInit: eph, eResp: [udpEphemeralLen]byte(ephemeralPublic(seed[:]))}
			m.answer(p, Hello{Name: m.creds.name, Error: err.Error()})
		}
		if errors.Is(err, ErrRevoked) || errors.Is(err, ErrAuth) {
			m.log.Warn("refused a UDP peer", "peer", from.String(), "name", hello.Name, "err", err)
		} else {
			m.log.Info("bad udp hello", "peer", from.String(), "err", err)
		}
		return
	}
	sender := binary.BigEndian.Uint32(b[1:5])
	key := hello.Name + "\x00" + hello.Link

	m.mu.Lock()
	if m.mu.closed {
		m.mu.Unlock()
		return
	}
	if rec := m.mu.inits[key]; rec != nil {
		if rec.idx == sender && rec.eph == eph && rec.ts == ts { // the initiator re-sent it
			c := udpHandshakeDup
			var resp []byte
			switch {
			case rec.sess != nil && rec.sess.confirmed.Load():
				c = udpHandshakeReplay // data flows already: this is someone replaying it
			case rec.resp != nil && rec.resends < udpMaxResends:
				rec.resends++
				resp, c = rec.resp, udpHandshakeResend
			}
			m.mu.Unlock()
			m.count(c)
			if resp != nil {
				m.sendRaw(resp, from)
			}
			return
		}
		if bytes.Compare(ts[:], rec.ts[:]) <= 0 {
			m.mu.Unlock()
			m.count(udpHandshakeReplay)
			m.log.Debug("replayed udp handshake dropped", "peer", from.String(), "name", hello.Name)
			return
		}
	}
	if len(m.mu.pendings) >= udpMaxPending {
		m.mu.Unlock()
		m.count(udpHandshakeBusy)
		return
	}
	if len(m.mu.inits) >= udpMaxInitRecords {
		m.evictInitLocked()
	}
	now := time.Now()
	rec := &udpInitRecord{ts: ts, idx: sender, eph: eph, seen: now}
	m.mu.inits[key] = rec
	p := &udpPending{hs: hs, remote: sender, from: from, rec: rec, expires: now.Add(HandshakeTimeout), eInit: eph,
		eResp: [udpEphemeralLen]byte(ephemeralPublic(seed[:]))}
	m.mu.pendings[p] = struct{}{}
	m.mu.Unlock()

	in := &Incoming{Hello: hello, remote: net.UDPAddrFromAddrPort(from),
		reply: func(h Hello) (transport, error) {
			t, err := m.answer(p, h)
			if err == nil && t == nil {
				err = fmt.Errorf("refused: %s", h.Error)
			}
			return t, err
		},
		refuse: func(h Hello) { m.answer(p, h) }}
	select {
	case m.acceptCh <- in: // never full: it holds udpMaxPending
	default:
		m.mu.Lock()
		delete(m.mu.pendings, p)
		m.mu.Unlock()
		m.count(udpHandshakeBusy)
	}
}

// parseInitPayload splits message 1's payload into its Hello and
// timestamp, and checks its certificate and signature (see udp_auth.go);
// eph is the initiator's ephemeral.
func parseInitPayload(p []byte, creds *Credentials, eph []byte) (Hello, [udpTimestampLen]byte, error) {
	var ts [udpTimestampLen]byte
	if len(p) < udpTimestampLen {
		return Hello{}, ts, fmt.Errorf("payload of %d bytes", len(p))
	}
	copy(ts[:], p)
	cert, sig, js, err := splitUDPAuth(p[udpTimestampLen:])
	if err != nil {
		return Hello{}, ts, err
	}
	var h Hello
	if err := json.Unmarshal(js, &h); err != nil {
		return Hello{}, ts, fmt.Errorf("malformed hello: %w", err)
	}
	if h.Version != WireVersion {
		return h, ts, fmt.Errorf("peer speaks link protocol version %d, we speak %d", h.Version, WireVersion)
	}
	if err := creds.verifyUDPPeer(cert, sig, h.Name, udpSignedMsg(udpInitContext, eph, ts[:], js)); err != nil {
		return h, ts, err
	}
	return h, ts, nil
}

// evictInitLocked forgets the least recently accepted init record.
func (m *UDPMux) evictInitLocked() {
	var oldest string
	var t time.Time
	for k, r := range m.mu.inits {
		if oldest == "" || r.seen.Before(t) {
			oldest, t = k, r.seen
		}
	}
	delete(m.mu.inits, oldest)
}

// answer sends message 2 for pending init p: our Hello, and a session
// unless h refuses (h.Error set).
func (m *UDPMux) answer(p *udpPending, h Hello) (transport, error) {
	m.mu.Lock()
	state := p.state
	if state == pendingWaiting {
		p.state = pendingAnswered
		delete(m.mu.pendings, p)
	}
	m.mu.Unlock()
	switch {
	case state == pendingExpired:
		return nil, fmt.Errorf("udp handshake from %v expired before it was answered", p.from)
	case state != pendingWaiting:
		return nil, errors.New("udp handshake already answered")
	case m.closed():
		return nil, net.ErrClosed
	}
	h.Version = WireVersion
	h.Offload = h.Offload && !m.noFrag // a super-frame would be split
	h.Sealed = !m.sealedOff
	h.Relay = m.relayFits()
	js, err := json.Marshal(h)
	if err != nil {
		return nil, err
	}
	uc, err := m.creds.udpCertFor(h.Name)
	if err != nil {
		return nil, err
	}
	payload := appendUDPAuth(nil, uc, udpSignedMsg(udpRespContext, p.eInit[:], p.eResp[:], js))
	out, cs1, cs2, err := p.hs.WriteMessage(nil, append(payload, js...))
	if err != nil {
		return nil, err
	}
	var s *udpSession
	var local uint32
	if h.Error == "" {
		// Initiator to responder is cs1 (we decrypt with it), back is cs2.
		if s, err = m.addSession(0, p.remote, p.from, cs2.UnsafeKey(), cs1.UnsafeKey()); err != nil {
			return nil, err
		}
		local = s.local
	}
	msg := make([]byte, udpRespHeaderLen, udpRespHeaderLen+len(out))
	msg[0] = udpMsgResponse
	binary.BigEndian.PutUint32(msg[1:], local)
	binary.BigEndian.PutUint32(msg[5:], p.remote)
	msg = append(msg, out...)
	if len(msg) > m.maxPayload {
		if s != nil {
			s.close()
		}
		return nil, fmt.Errorf("hello too large for one datagram (%d bytes)", len(msg))
	}
	m.mu.Lock()
	p.rec.resp, p.rec.sess = msg, s
	m.mu.Unlock()
	m.sendRaw(msg, p.from)
	if s == nil {
		return nil, nil
	}
	m.count(udpHandshakes)
	return s, nil
}

// expirePending drops inits nobody answered within HandshakeTimeout.
func (m *UDPMux) expirePending(now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for p := range m.mu.pendings {
		if now.After(p.expires) {
			p.state = pendingExpired
			delete(m.mu.pendings, p)
		}
	}
}

// pendingCount is how many authenticated inits wait for an answer (tests).
func (m *UDPMux) pendingCount() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.mu.pendings)
}

// sessionCount is how many sessions are live (tests).
func (m *UDPMux) sessionCount() int { return len(*m.sessions.Load()) }
