package tunnel

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Fragmentation for datagram transports (UDP, QUIC datagrams). A message
// (a frame, or any other link message) that does not fit one datagram is
// split into up to MaxFragments chunks; every chunk travels with a 5-byte
// inner header, inside the datagram's encryption:
//
//	 0        1        2        3        4
//	+--------+--------+--------+--------+--------+
//	|  type  |  message id (16)  | index  | count  |
//	+--------+--------+--------+--------+--------+
//	|  chunk ...
//
// A whole message is count 1, index 0. The receiver reassembles with a
// bounded buffer: at most maxPending messages in progress, each dropped if
// not complete within the timeout, the oldest evicted when full.
const (
	InnerHeaderLen = 5
	MaxFragments   = 64
)

// PutInner writes an inner header into b[:InnerHeaderLen].
func PutInner(b []byte, typ byte, id uint16, index, count uint8) {
	b[0] = typ
	binary.BigEndian.PutUint16(b[1:], id)
	b[3], b[4] = index, count
}

// ParseInner splits a decrypted datagram into its inner header and chunk.
func ParseInner(b []byte) (typ byte, id uint16, index, count uint8, chunk []byte, err error) {
	if len(b) < InnerHeaderLen {
		return 0, 0, 0, 0, nil, fmt.Errorf("truncated inner header: %d bytes", len(b))
	}
	typ, id, index, count = b[0], binary.BigEndian.Uint16(b[1:]), b[3], b[4]
	if count == 0 || count > MaxFragments || index >= count {
		return 0, 0, 0, 0, nil, fmt.Errorf("bad fragment %d of %d", index, count)
	}
	if typ < MsgFrame || typ > MsgFrameGSO {
		return 0, 0, 0, 0, nil, fmt.Errorf("unknown message type %d", typ)
	}
	return typ, id, index, count, b[InnerHeaderLen:], nil
}

// FragmentCount is how many chunks of at most chunkMax bytes n bytes need.
func FragmentCount(n, chunkMax int) int {
	if n <= chunkMax {
		return 1
	}
	return (n + chunkMax - 1) / chunkMax
}

// Reassembly errors, for drop counters.
var (
	ErrFragMismatch = errors.New("fragment does not match its message")
	ErrFragTooBig   = errors.New("reassembled message too large")
)

type pending struct {
	id      uint64
	typ     byte
	count   uint8
	n       int    // chunks received
	got     uint64 // bitmap of received indexes
	started int64
	off     [MaxFragments]int32 // where chunk i sits in slab
	size    [MaxFragments]int32
	slab    []byte // chunks in arrival order
	inOrder bool   // every chunk so far arrived in index order
}

// Reassembler rebuilds fragmented messages for one peer. It is not safe for
// concurrent use.
type Reassembler struct {
	maxPending int
	maxMsg     int
	timeout    int64
	pend       []*pending
	free       []*pending
	out        []byte
	last       *pending // whose slab Add's last result is, until the next Add
	// Expired counts messages dropped incomplete (timeout or eviction),
	// ExpiredChunks the chunks they had.
	Expired, ExpiredChunks uint64
}

// NewReassembler keeps at most maxPending messages of at most maxMsg bytes
// in progress, each for at most timeoutNs nanoseconds.
func NewReassembler(maxPending, maxMsg int, timeoutNs int64) *Reassembler {
	return &Reassembler{maxPending: maxPending, maxMsg: maxMsg, timeout: timeoutNs}
}

// Add takes chunk index of message id (count chunks in all). When the
// message is complete it returns it; the slice is valid until the next call.
func (r *Reassembler) Add(typ byte, id uint64, index, count uint8, chunk []byte, now int64) ([]byte, error) {
	r.last = nil
	r.expire(now)
	var p *pending
	for _, q := range r.pend {
		if q.id == id {
			p = q
			break
		}
	}
	if p == nil {
		if len(r.pend) >= r.maxPending {
			r.drop(0)
		}
		p = r.alloc()
		p.id, p.typ, p.count, p.n, p.got, p.started, p.slab, p.inOrder = id, typ, count, 0, 0, now, p.slab[:0], true
		if big := min(int(count)*len(chunk), r.maxMsg); cap(p.slab) < big && big > largeMessage {
			// Grown whole at once rather than by append's steps, so that
			// Swap can trade it for a buffer of maxMsg bytes.
			p.slab = make([]byte, 0, r.maxMsg)
		}
		r.pend = append(r.pend, p)
	}
	if p.typ != typ || p.count != count || p.got&(1<<index) != 0 {
		r.remove(p)
		return nil, ErrFragMismatch
	}
	if len(p.slab)+len(chunk) > r.maxMsg {
		r.remove(p)
		return nil, ErrFragTooBig
	}
	p.inOrder = p.inOrder && int(index) == p.n
	p.off[index], p.size[index] = int32(len(p.slab)), int32(len(chunk))
	p.slab = append(p.slab, chunk...)
	p.got |= 1 << index
	p.n++
	if p.n < int(count) {
		return nil, nil
	}
	r.remove(p)
	if p.inOrder { // the usual case: the slab is the message
		r.last = p
		return p.slab, nil
	}
	r.out = r.out[:0]
	for i := 0; i < int(count); i++ {
		r.out = append(r.out, p.slab[p.off[i]:p.off[i]+p.size[i]]...)
	}
	return r.out, nil
}

// largeMessage is the size above which a message's slab is made maxMsg
// bytes long from the start (super-frames); smaller ones grow as needed.
const largeMessage = 16 << 10

// Swap hands over the buffer that holds the message Add has just returned,
// and keeps spare in its place: the caller keeps the message without
// copying it. It returns nil, changing nothing, unless that message came
// in order (so it is a slab of its own), the slab is at least len(spare)
// long, and spare can hold a message of maxMsg bytes; the caller then
// copies as before.
func (r *Reassembler) Swap(spare []byte) []byte {
	p := r.last
	if p == nil || cap(p.slab) < len(spare) || cap(spare) < r.maxMsg {
		return nil
	}
	r.last = nil
	msg := p.slab
	p.slab = spare[:0]
	return msg
}

func (r *Reassembler) alloc() *pending {
	if n := len(r.free); n > 0 {
		p := r.free[n-1]
		r.free = r.free[:n-1]
		return p
	}
	return &pending{}
}

// remove takes p out of the pending list and keeps it for reuse.
func (r *Reassembler) remove(p *pending) {
	for i, q := range r.pend {
		if q == p {
			r.pend = append(r.pend[:i], r.pend[i+1:]...)
			r.free = append(r.free, p)
			return
		}
	}
}

func (r *Reassembler) drop(i int) {
	r.Expired++
	r.ExpiredChunks += uint64(r.pend[i].n)
	r.remove(r.pend[i])
}

func (r *Reassembler) expire(now int64) {
	for len(r.pend) > 0 && now-r.pend[0].started > r.timeout {
		r.drop(0)
	}
}

// Pending is how many messages are in progress.
func (r *Reassembler) Pending() int { return len(r.pend) }
