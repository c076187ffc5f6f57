package tunnel

// Replay protection for UDP transport datagrams: a sliding window over the
// 64-bit counters, as in WireGuard (RFC 6479's bitmap kept as a ring of
// 64-bit blocks). A datagram is accepted when its counter is newer than any
// seen so far, or at most replayWindowSize behind the newest and not seen
// before. The check runs after the datagram authenticated, so only holders of
// the session keys can move the window.
const (
	replayBlockBits  = 64
	replayRingBlocks = 32                                       // 2048 bits of bitmap
	replayWindowSize = (replayRingBlocks - 1) * replayBlockBits // 1984 counters behind the newest
	// replayCounterLimit is the first counter never accepted; a sender stops
	// long before it (2^64-1 is reserved, as in Noise).
	replayCounterLimit = ^uint64(0)
)

// replayWindow is the receive-side filter of one session. It is not safe for
// concurrent use: only the mux's reader goroutine touches it.
type replayWindow struct {
	last uint64 // newest counter accepted
	ring [replayRingBlocks]uint64
}

// fresh reports whether accept would take counter c, without marking it.
func (w *replayWindow) fresh(c uint64) bool {
	switch {
	case c >= replayCounterLimit:
		return false
	case c > w.last:
		return true
	case w.last-c > replayWindowSize:
		return false
	}
	return w.ring[(c/replayBlockBits)%replayRingBlocks]&(uint64(1)<<(c%replayBlockBits)) == 0
}

// accept reports whether counter c is fresh and marks it seen.
func (w *replayWindow) accept(c uint64) bool {
	if c >= replayCounterLimit {
		return false
	}
	block := c / replayBlockBits
	if c > w.last {
		// Slide forward: clear the blocks the window moves into.
		cur := w.last / replayBlockBits
		diff := block - cur
		if diff > replayRingBlocks {
			diff = replayRingBlocks
		}
		for i := cur + 1; i <= cur+diff; i++ {
			w.ring[i%replayRingBlocks] = 0
		}
		w.last = c
	} else if w.last-c > replayWindowSize {
		return false // too old to tell
	}
	i := block % replayRingBlocks
	bit := uint64(1) << (c % replayBlockBits)
	old := w.ring[i]
	w.ring[i] = old | bit
	return old&bit == 0
}
