package tunnel

import (
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/binary"
	"net/netip"

	"vnet/bridge"
)

// Super-frames relayed sealed end to end (type 6). In the star a frame
// from host A to host B crosses two links, and a proxy that opened it from
// A and sealed it again for B made four AEAD passes of every byte where a
// fast path makes two: the star's largest cost (bench/README). Over UDP
// links, when both ends offer it (Hello.Relay), a host seals a
// super-frame's payload with its relay key, and the proxy passes it on
// sealed; only a small hop part is opened and sealed again per link:
//
//	+------+--------------------+----------------+------+-------+-------+
//	|  6   | receiver index (32)| counter (64)   | type | count | index |
//	+------+--------------------+----------------+------+-------+-------+
//	| chunk index of: hop part (80) | payload (the frame from byte 14 on,
//	| sealed with the relay key, + tag)                               |
//	+-----------------------------------------------------------------+
//
// The hop part is AES-256-GCM under the link's key (nonce and additional
// data as for type 5) of: the relay nonce's counter (8), the relay key
// (32; zeros from a host, whose key the proxy knows), the virtio-net
// header (10) and the Ethernet header (14). The payload is AES-256-GCM
// under the relay key, nonce 4 zero bytes | relay counter, additional data
// the virtio-net and Ethernet headers.
//
// A host's relay key is derived (HKDF) from its link's transmit key, so
// only the host and the proxy know it until the proxy hands it, inside
// the authenticated hop part, to the hosts it relays that host's frames
// to; the sender's relay counter is the link counter of the message it
// first went in, which never repeats under that key. Replays are refused
// per hop, by the link's counter as for every message: a forged or
// replayed payload fails at the host that opens it. The proxy takes a
// relayed message only under its own sender's key (it fills the key in),
// so no host can pass frames off as another's. What a host learns: the
// relay key of another host whose frames reached it, which reads that
// host's relayed super-frames on the underlay until its link to the proxy
// is renewed (a fresh handshake, a fresh key). Members already share the
// network key; the per-link keys of the hop parts stay as secret as
// before.
const (
	udpMsgRelayed    byte = 6
	udpRelayMetaLen       = 8 + 32 + bridge.VnetHdrLen + bridge.MinFrame // the hop part's plaintext
	udpRelayHopLen        = udpRelayMetaLen + udpTagLen
	udpRelayAADLen        = bridge.VnetHdrLen + bridge.MinFrame // the payload's additional data
	udpRelayOverhead      = udpRelayHopLen - udpRelayAADLen + udpTagLen
	udpRelayKeyInfo       = "vnet udp relay v1"
	udpRelayKeyCache      = 64 // relay keys a host keeps ciphers for
)

// The bridge carries a sealed frame's metadata: the relay counter, then
// the key.
var _ [bridge.SealMetaLen - 40]struct{}

// relayKey derives a link end's relay key from its transmit key.
func relayKey(txKey [32]byte) [32]byte {
	b, err := hkdf.Key(sha256.New, txKey[:], nil, udpRelayKeyInfo, 32)
	if err != nil {
		panic(err)
	}
	return [32]byte(b)
}

// relayTransport is a transport that can relay super-frames sealed end to
// end; newLink turns it on when both Hellos offer it.
type relayTransport interface {
	relayWith(me, peer Hello)
	takesSealed() bool
}

// relayWith turns relaying on for a host's link to a proxy (it seals its
// super-frames for relay) or a proxy's link to a host (it passes them on
// sealed), if their datagrams hold a relayed super-frame.
func (s *udpSession) relayWith(me, peer Hello) {
	if !s.m.relayFits() {
		return
	}
	switch {
	case me.Role == "host" && peer.Role == "proxy":
		s.tx.Lock()
		s.tx.relay = true
		s.tx.Unlock()
	case me.Role == "proxy" && peer.Role == "host":
		s.relaying.Store(true)
	default:
		return
	}
	s.rxRelayed.Store(true)
}

// takesSealed reports whether the session passes sealed super-frames on
// (a proxy's link to a host that opens them). Only once the switch has
// asked (and so marks every frame it writes, sealed or not: SealedPort)
// does writeFrames look for seal markers; a port that wraps the link
// and does not pass the question on never turns them on.
func (s *udpSession) takesSealed() bool {
	if !s.relaying.Load() {
		return false
	}
	s.sealedOut.Store(true)
	return true
}

// relayFits reports whether the largest relayed super-frame fits
// MaxFragments datagrams.
func (m *UDPMux) relayFits() bool {
	return !m.noFrag && !m.sealedOff && !m.relayOff &&
		(m.maxPayload-udpSealedHeaderLen)*MaxFragments >= udpReassemblyMax+udpRelayOverhead
}

// appendRelayLocked queues msg (a virtio-net header and a frame) as a
// relayed message. With key nil (a host) it seals the frame's payload
// with the session's relay key under the message's own counter; with a
// key (the proxy) the payload is already sealed under it and ctr, and is
// copied as it is. It reports false when the message does not fit.
func (s *udpSession) appendRelayLocked(msg []byte, ctr uint64, key *[32]byte) bool {
	t := &s.tx
	const hdrs = udpRelayAADLen
	chunk := s.m.maxPayload - udpSealedHeaderLen
	payload := len(msg) - hdrs
	if key == nil {
		payload += udpTagLen
	}
	n := udpRelayHopLen + payload
	count := (n + chunk - 1) / chunk
	b := t.batch
	if len(msg) < hdrs || count > MaxFragments || count > len(b.bufs) {
		s.m.count(udpTooBig)
		return false
	}
	if cap(b.sealed)-len(b.sealed) < n || len(b.bufs)-b.n < count {
		s.flushLocked()
	}
	if cap(b.sealed)-len(b.sealed) < n {
		b.sealed = make([]byte, 0, max(2*udpReassemblyBuf, n))
	}
	hdr := b.bufs[b.n][:udpSealedHeaderLen]
	hdr[0] = udpMsgRelayed
	binary.BigEndian.PutUint32(hdr[1:5], s.remote)
	binary.BigEndian.PutUint64(hdr[5:13], t.counter)
	hdr[udpSealedHeaderType], hdr[udpSealedHeaderCount], hdr[udpSealedHeaderIndex] = MsgFrameGSO, uint8(count), 0
	start := len(b.sealed)
	out := b.sealed[start : start+n]
	meta := out[:udpRelayMetaLen]
	if key == nil {
		ctr = t.counter
		clear(meta[8:40])
		binary.BigEndian.PutUint64(t.relayNonce[4:], ctr)
		t.relayAEAD.Seal(out[udpRelayHopLen:udpRelayHopLen], t.relayNonce[:], msg[hdrs:], msg[:hdrs])
	} else {
		copy(meta[8:40], key[:])
		copy(out[udpRelayHopLen:], msg[hdrs:])
	}
	binary.BigEndian.PutUint64(meta[:8], ctr)
	copy(meta[40:], msg[:hdrs])
	binary.BigEndian.PutUint64(t.nonce[4:], t.counter)
	t.counter += uint64(count)
	t.aead.Seal(meta[:0], t.nonce[:], meta, hdr[:udpSealedAADLen])
	b.sealed = b.sealed[:start+n]
	for i := 0; i < count; i++ {
		d := b.bufs[b.n]
		copy(d, hdr)
		d[udpSealedHeaderIndex] = uint8(i)
		b.size[b.n], b.body[b.n] = udpSealedHeaderLen, out[i*chunk:min((i+1)*chunk, n)]
		b.n++
	}
	return true
}

// sealedMeta returns the seal marker and metadata a SealedPort's Write
// finds in b's headroom (bridge.SealMetaOffset, counted back from offset).
func sealedMeta(b []byte, offset int) (*[bridge.SealMetaLen]byte, bool) {
	at := offset - (bridge.Headroom - bridge.SealMetaOffset)
	if at < 1 || b[at-1] != bridge.SealMarker {
		return nil, false
	}
	return (*[bridge.SealMetaLen]byte)(b[at : at+bridge.SealMetaLen]), true
}

// handleRelayed gathers a chunk of a relayed message and, once it is
// whole, opens its hop part. A proxy passes the frame to the switch still
// sealed when the push path is free, and opens it otherwise; a host opens
// it, into the switch's buffer when it can.
func (m *UDPMux) handleRelayed(b []byte, from netip.AddrPort, now int64) {
	s, msg := m.gatherWhole(b, udpMsgRelayed, now, relayedTaken)
	if msg == nil {
		return
	}
	ctr, count := binary.BigEndian.Uint64(b[5:13]), b[udpSealedHeaderCount]
	if len(msg) < udpRelayHopLen+udpTagLen {
		m.count(udpBadMessage)
		return
	}
	binary.BigEndian.PutUint64(s.rxNonce[4:], ctr)
	meta, err := s.rx.Open(msg[:0], s.rxNonce[:], msg[:udpRelayHopLen], b[:udpSealedAADLen])
	if err != nil {
		m.count(udpBadMAC)
		return
	}
	if !s.replay.accept(ctr) {
		m.count(udpReplay)
		return
	}
	m.authenticated(s, ctr, uint64(count), from)
	sealed := msg[udpRelayHopLen:]
	n := udpRelayAADLen + len(sealed) - udpTagLen // the plain message's length
	if !m.validMsg(MsgFrameGSO, n) {
		m.count(udpBadMessage)
		return
	}
	var aead cipher.AEAD
	if s.relaying.Load() {
		// From a host: its own key, whatever the hop part says.
		copy(meta[8:40], s.rxRelayKey[:])
		aead = s.rxRelayAEAD
		if pt := s.pushTo.Load(); pt != nil && pt.l.offload {
			if buf := pt.p.Lend(n+udpTagLen, &s.pending); buf != nil {
				copy(buf, meta[40:])
				copy(buf[udpRelayAADLen:], sealed)
				pt.p.ForwardSealed(len(buf), s, (*[bridge.SealMetaLen]byte)(meta[:40]))
				s.pushed(pt, len(buf)-bridge.VnetHdrLen)
				m.count(udpRelayed)
				return
			}
		}
	} else {
		aead = s.relayCipher((*[32]byte)(meta[8:40]))
	}
	binary.BigEndian.PutUint64(s.relayNonce[4:], binary.BigEndian.Uint64(meta[:8]))
	// The headers go just before the payload, so the plain message lies
	// whole in msg once the payload opens in place.
	plain := msg[udpRelayHopLen-udpRelayAADLen:]
	copy(plain, meta[40:udpRelayMetaLen])
	if pt := s.pushTo.Load(); pt != nil && pt.l.offload {
		if buf := pt.p.Lend(n, &s.pending); buf != nil {
			copy(buf, plain[:udpRelayAADLen])
			if _, err := aead.Open(buf[udpRelayAADLen:udpRelayAADLen], s.relayNonce[:], sealed, buf[:udpRelayAADLen]); err != nil {
				pt.p.Unlend()
				m.count(udpBadRelay)
				return
			}
			pt.p.Forward(n)
			s.pushed(pt, n-bridge.VnetHdrLen)
			return
		}
	}
	if _, err := aead.Open(sealed[:0], s.relayNonce[:], sealed, plain[:udpRelayAADLen]); err != nil {
		m.count(udpBadRelay)
		return
	}
	m.queueReassembled(s, s.sealedReasm, MsgFrameGSO, plain[:n], udpRelayHopLen-udpRelayAADLen)
}

// relayedTaken reports whether s takes relayed messages of inner type typ.
func relayedTaken(s *udpSession, typ byte) bool { return s.rxRelayed.Load() && typ == MsgFrameGSO }

// relayCipher is the AEAD for a relay key the proxy sent, from a small
// cache (keys are few: one per host whose frames reach us). The mux's
// reader only.
func (s *udpSession) relayCipher(key *[32]byte) cipher.AEAD {
	if a, ok := s.relayCiphers[*key]; ok {
		return a
	}
	if s.relayCiphers == nil || len(s.relayCiphers) >= udpRelayKeyCache {
		s.relayCiphers = make(map[[32]byte]cipher.AEAD)
	}
	a := newAEAD(*key)
	s.relayCiphers[*key] = a
	return a
}

// Unseal implements bridge.Unsealer for the frames the session passed to
// the switch sealed: the switch opens one there when it must (an output
// that cannot relay it). It runs on the mux's reader (ForwardSealed's
// goroutine).
func (s *udpSession) Unseal(meta *[bridge.SealMetaLen]byte, msg []byte) (int, bool) {
	if len(msg) < udpRelayAADLen+udpTagLen {
		return 0, false
	}
	binary.BigEndian.PutUint64(s.unsealNonce[4:], binary.BigEndian.Uint64(meta[:8]))
	pt, err := s.rxRelayAEAD.Open(msg[udpRelayAADLen:udpRelayAADLen], s.unsealNonce[:], msg[udpRelayAADLen:], msg[:udpRelayAADLen])
	if err != nil {
		s.m.count(udpBadRelay)
		return 0, false
	}
	return bridge.MinFrame + len(pt), true
}
