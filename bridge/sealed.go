package bridge

// Frames sealed end to end. A proxy relays most of the star's bytes between
// two hosts; opening and sealing each super-frame there cost two of the
// star's four AEAD passes. A link may instead hand the switch a super-frame
// whose payload is still sealed by the host that sent it: the Ethernet
// header (and the virtio-net header) are in the clear, authenticated by the
// link, so the switch can learn, match rules and count, and the payload
// behind them stays as the sender sealed it. Such a frame leaves sealed
// only through a SealedPort; for any other output (a TAP, the LAN, a link
// that cannot relay it) or an IP filter that must read the payload, the
// switch opens it first with the Unsealer that came with it.

// SealMetaLen is the size of a sealed frame's metadata: what its Unsealer,
// or the SealedPort it leaves by, needs to open or relay it (the tunnel
// keeps its nonce and key there). The switch only carries it.
const SealMetaLen = 40

// SealMetaOffset is where a sealed frame's metadata lies in the headroom
// given to a SealedPort's Write, behind a marker byte at SealMetaOffset-1
// (SealMarker for a sealed frame, 0 for a plain one): just before the
// virtio-net header slot.
const SealMetaOffset = Headroom - VnetHdrLen - SealMetaLen

// SealOverhead is how much longer a sealed frame may be than its plain
// one (an AEAD's tag): super-frame buffers leave room for it.
const SealOverhead = 16

// SealMarker marks a sealed frame in a SealedPort's headroom.
const SealMarker byte = 0x5e

// Unsealer opens frames sealed end to end.
type Unsealer interface {
	// Unseal opens the sealed frame in place: msg is its virtio-net
	// header, then its Ethernet header and the sealed payload. It returns
	// the plain frame's length (without the header), or false if it does
	// not open. The switch calls it on the goroutine that forwarded the
	// frame into it (ForwardSealed's).
	Unseal(meta *[SealMetaLen]byte, msg []byte) (int, bool)
}

// SealedPort is a Port that takes sealed frames as they are (a proxy's
// datagram link to a host that opens them). Write finds each frame's
// marker and metadata in its headroom (SealMetaOffset).
type SealedPort interface {
	OffloadPort
	TakesSealed() bool
}

// ForwardSealed is Forward for a lent buffer that holds a sealed frame (a
// virtio-net header, the Ethernet header and the sealed payload): u opens
// it, with meta, where the switch must.
func (p *Pusher) ForwardSealed(n int, u Unsealer, meta *[SealMetaLen]byte) {
	p.lent.unsealer, p.lent.meta = u, *meta
	p.Forward(n)
}

// unseal opens f in place. It reports false (and f is left unforwardable)
// if it does not open.
func (f *frame) unseal() bool {
	n, ok := f.unsealer.Unseal(&f.meta, f.buf[Headroom-VnetHdrLen:Headroom+f.n])
	f.unsealer = nil
	if !ok || n < MinFrame || n > f.n {
		return false
	}
	f.n = n
	return true
}

// markSealed writes f's seal marker, and its metadata when it is sealed,
// into the headroom a SealedPort's Write reads.
func (f *frame) markSealed() {
	if f.unsealer == nil {
		f.buf[SealMetaOffset-1] = 0
		return
	}
	f.buf[SealMetaOffset-1] = SealMarker
	copy(f.buf[SealMetaOffset:], f.meta[:])
}
