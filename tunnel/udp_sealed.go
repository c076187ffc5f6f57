package tunnel

import (
	"encoding/binary"
	"net/netip"

	"vnet/bridge"
)

// Messages sealed whole (type 5). A message that needs more than one
// datagram (a 1514-byte frame, a 64 KB super-frame) is sealed as one
// AEAD message and its ciphertext cut into datagrams, when the peer said
// it opens them (Hello.Sealed):
//
//	+------+--------------------+----------------+------+-------+-------+
//	|  5   | receiver index (32)| counter (64)   | type | count | index |
//	+------+--------------------+----------------+------+-------+-------+
//	| chunk index of AES-256-GCM(message) | tag (16, in the last chunk)
//	+-----------------------------------------------------------------+
//
// Nonce = 4 zero bytes | counter; additional data = the first 15 header
// bytes (all but the index). The sender advances its counter by count, so
// nonces stay unique and the receiver's loss accounting still counts
// datagrams. The receiver gathers the chunks (as it does the plaintext
// chunks of type 4), opens the whole once, and only then checks the
// counter against the replay window and takes the source address as the
// peer's.
//
// Why: AES-GCM costs about 100 ns per call whatever the size, so sealing
// a super-frame's 46 datagrams one by one costs a third more than sealing
// it once (BenchmarkCipherSeal, BenchmarkCipherOpen); the star pays that
// at four link ends. The price: a chunk is no longer authenticated on its
// own, so one forged chunk (which takes the session index and a live
// counter, i.e. a view of the traffic) spoils its message. What the
// unauthenticated chunks can hold is bounded as for type 4: at most
// udpReassemblyPending messages of udpReassemblyBuf bytes per session,
// each dropped after UDPReassemblyTimeout, and a counter the replay window
// has already seen is refused before it takes any.
const (
	udpMsgSealed         byte = 5
	udpSealedHeaderLen        = 16
	udpSealedAADLen           = 15 // the header without the index
	udpSealedHeaderType       = 13 // offsets of the inner type, count and index
	udpSealedHeaderCount      = 14
	udpSealedHeaderIndex      = 15
)

// sealingTransport is a transport that can seal messages whole; newLink
// turns it on when the peer's Hello says it opens them.
type sealingTransport interface {
	sealWhole()
}

func (s *udpSession) sealWhole() {
	s.tx.Lock()
	s.tx.whole = true
	s.tx.Unlock()
}

// appendWholeLocked seals msg (of inner type typ) once into the batch's
// scratch and queues its ciphertext as datagrams whose bodies point into
// it: nothing is copied but by the cipher.
func (s *udpSession) appendWholeLocked(typ byte, msg []byte) {
	t := &s.tx
	chunk := s.m.maxPayload - udpSealedHeaderLen
	n := len(msg) + udpTagLen
	count := (n + chunk - 1) / chunk
	b := t.batch
	if count > MaxFragments || count > len(b.bufs) {
		s.m.count(udpTooBig)
		return
	}
	if cap(b.sealed)-len(b.sealed) < n || len(b.bufs)-b.n < count {
		s.flushLocked() // the batch's datagrams point into sealed until sent
	}
	if cap(b.sealed)-len(b.sealed) < n {
		b.sealed = make([]byte, 0, max(2*udpReassemblyBuf, n))
	}
	// The header is written in the first datagram and copied to the others
	// (not built on the stack: the AEAD is an interface, and its additional
	// data would escape to the heap).
	hdr := b.bufs[b.n][:udpSealedHeaderLen]
	hdr[0] = udpMsgSealed
	binary.BigEndian.PutUint32(hdr[1:5], s.remote)
	binary.BigEndian.PutUint64(hdr[5:13], t.counter)
	hdr[udpSealedHeaderType], hdr[udpSealedHeaderCount], hdr[udpSealedHeaderIndex] = typ, uint8(count), 0
	binary.BigEndian.PutUint64(t.nonce[4:], t.counter)
	t.counter += uint64(count)
	start := len(b.sealed)
	ct := t.aead.Seal(b.sealed[start:start], t.nonce[:], msg, hdr[:udpSealedAADLen])
	b.sealed = b.sealed[:start+len(ct)]
	for i := 0; i < count; i++ {
		d := b.bufs[b.n]
		copy(d, hdr)
		d[udpSealedHeaderIndex] = uint8(i)
		b.size[b.n], b.body[b.n] = udpSealedHeaderLen, ct[i*chunk:min((i+1)*chunk, len(ct))]
		b.n++
	}
}

// gatherWhole adds datagram b, a chunk of a message of several datagrams
// under one seal (outer type kind: 5 or 6, which share a header), to its
// session's reassembly, if its inner type is one the session takes
// (takes) and its counter is fresh. It returns the session and, once
// the message is whole, its ciphertext (not yet authenticated); b is lent.
func (m *UDPMux) gatherWhole(b []byte, kind byte, now int64, takes func(s *udpSession, typ byte) bool) (*udpSession, []byte) {
	if len(b) <= udpSealedHeaderLen {
		m.count(udpTruncated)
		return nil, nil
	}
	s := m.receiver(b)
	if s == nil {
		return nil, nil
	}
	ctr := binary.BigEndian.Uint64(b[5:13])
	typ, count, index := b[udpSealedHeaderType], b[udpSealedHeaderCount], b[udpSealedHeaderIndex]
	if !takes(s, typ) || count == 0 || count > MaxFragments || index >= count {
		m.count(udpBadMessage)
		return nil, nil
	}
	if !s.replay.fresh(ctr) {
		m.count(udpReplay)
		return nil, nil
	}
	if kind != udpMsgSealed {
		typ = kind // the two kinds' messages must not complete each other
	}
	return s, m.reassemble(s, s.sealedReasm, typ, ctr, index, count, b[udpSealedHeaderLen:], now)
}

// sealedTaken: every session takes frames sealed whole.
func sealedTaken(_ *udpSession, typ byte) bool { return typ == MsgFrame || typ == MsgFrameGSO }

// handleSealed gathers a chunk of a message sealed whole and, once the
// message is complete, opens it and queues it. b is lent: Add copies the
// chunk.
func (m *UDPMux) handleSealed(b []byte, from netip.AddrPort, now int64) {
	s, msg := m.gatherWhole(b, udpMsgSealed, now, sealedTaken)
	if msg == nil {
		return
	}
	ctr := binary.BigEndian.Uint64(b[5:13])
	typ, count := b[udpSealedHeaderType], b[udpSealedHeaderCount]
	// A super-frame opens straight into the switch's buffer when the push
	// path is free (one 64 KB copy fewer); anything else opens in place.
	dst := msg[:0]
	var lent *pushTarget
	if typ == MsgFrameGSO {
		if pt := s.pushTo.Load(); pt != nil && pt.l.offload {
			if buf := pt.p.Lend(len(msg)-udpTagLen, &s.pending); buf != nil {
				dst, lent = buf[:0], pt
			}
		}
	}
	// The additional data is this chunk's header but the index: the same
	// in every chunk of the message, if none was forged.
	binary.BigEndian.PutUint64(s.rxNonce[4:], ctr)
	pt, err := s.rx.Open(dst, s.rxNonce[:], msg, b[:udpSealedAADLen])
	switch {
	case err != nil:
		m.count(udpBadMAC)
	case !s.replay.accept(ctr):
		m.count(udpReplay)
	default:
		m.authenticated(s, ctr, uint64(count), from)
		switch {
		case !m.validMsg(typ, len(pt)):
			m.count(udpBadMessage)
		case lent != nil:
			lent.p.Forward(len(pt))
			s.pushed(lent, len(pt)-bridge.VnetHdrLen)
			return
		default:
			m.queueReassembled(s, s.sealedReasm, typ, pt, 0)
		}
	}
	if lent != nil {
		lent.p.Unlend()
	}
}
