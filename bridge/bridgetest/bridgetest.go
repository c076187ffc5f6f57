// Package bridgetest provides in-memory ports for tests of the switch and of
// anything built on it. Production code never imports it.
package bridgetest

import (
	"net"
	"sync"
	"time"
)

// ChanPort is a bridge.Port backed by channels: Inject makes the port
// "receive" a frame (the switch reads it), and frames the switch writes
// appear on Out.
type ChanPort struct {
	offload bool
	in      chan []byte
	Out     chan []byte
	once    sync.Once
	done    chan struct{}
}

// NewChanPort returns a port with the given queue depths.
func NewChanPort(depth int) *ChanPort {
	return &ChanPort{in: make(chan []byte, depth), Out: make(chan []byte, depth), done: make(chan struct{})}
}

// NewOffloadChanPort returns a ChanPort that is a bridge.OffloadPort:
// Inject takes, and Out gives, the virtio-net header (10 bytes) followed
// by the frame.
func NewOffloadChanPort(depth int) *ChanPort {
	p := NewChanPort(depth)
	p.offload = true
	return p
}

// Offloads implements bridge.OffloadPort.
func (p *ChanPort) Offloads() bool { return p.offload }

// hdr is how far before offset the port reads and writes.
func (p *ChanPort) hdr() int {
	if p.offload {
		return 10
	}
	return 0
}

// Inject queues a frame for the switch to read. It copies frame.
func (p *ChanPort) Inject(frame []byte) {
	select {
	case p.in <- append([]byte(nil), frame...):
	case <-p.done:
	}
}

// Read implements bridge.Port.
func (p *ChanPort) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	var f []byte
	select {
	case f = <-p.in:
	case <-p.done:
		return 0, net.ErrClosed
	}
	n := 0
	for {
		sizes[n] = copy(bufs[n][offset-p.hdr():], f) - p.hdr()
		n++
		if n == len(bufs) {
			return n, nil
		}
		select {
		case f = <-p.in:
		default:
			return n, nil
		}
	}
}

// Write implements bridge.Port. Frames that do not fit in Out are dropped.
func (p *ChanPort) Write(bufs [][]byte, offset int) (int, error) {
	for i, b := range bufs {
		select {
		case p.Out <- append([]byte(nil), b[offset-p.hdr():]...):
		case <-p.done:
			return i, net.ErrClosed
		default:
		}
	}
	return len(bufs), nil
}

// BatchSize implements bridge.Port.
func (p *ChanPort) BatchSize() int { return 16 }

// Close implements bridge.Port.
func (p *ChanPort) Close() error {
	p.once.Do(func() { close(p.done) })
	return nil
}

// Expect waits up to d for a frame on Out.
func (p *ChanPort) Expect(d time.Duration) ([]byte, bool) {
	select {
	case f := <-p.Out:
		return f, true
	case <-time.After(d):
		return nil, false
	}
}

// Frame builds an Ethernet frame from dst to src with EtherType IPv4 and the
// given payload.
func Frame(dst, src [6]byte, payload []byte) []byte {
	f := make([]byte, 14+len(payload))
	copy(f[0:6], dst[:])
	copy(f[6:12], src[:])
	f[12], f[13] = 0x08, 0x00
	copy(f[14:], payload)
	return f
}
