package netvm

import (
	"net"
	"sync/atomic"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"vnet/bridge"
)

// This file is the bridge.Port side of a VM. Directions are the VM's: Tx is
// what the VM sends (the switch Reads it), Rx what the VM receives (the
// switch Writes it).
//
// Read takes frames off the link endpoint's queue and copies them into the
// caller's buffers; Write filters frames by destination MAC and copies each
// into a gVisor buffer, which the stack processes before Write returns
// (TCP hands segments to its own workers). Neither keeps the caller's
// slices. Counters are added once per batch.

// Read implements bridge.Port: it blocks until the VM has sent a frame,
// then returns it and whatever else is queued, up to len(bufs) frames.
// Frames longer than len(bufs[i])-offset are dropped and counted
// (TxDropTooBig), never truncated. After Close it returns net.ErrClosed.
func (v *VM) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	return v.read(bufs, sizes, offset, nil)
}

// read is Read that also returns net.ErrClosed when unplug is closed.
func (v *VM) read(bufs [][]byte, sizes []int, offset int, unplug <-chan struct{}) (int, error) {
	limit := min(len(bufs), len(sizes))
	if limit == 0 {
		return 0, nil
	}
	if v.isClosed() {
		return 0, net.ErrClosed
	}
	var n, bytes, tooBig int
	for n == 0 {
		var pkt *stack.PacketBuffer
		select {
		case pkt = <-v.link.q:
		case <-v.done:
			v.stats.add(&v.stats.txDropTooBig, tooBig)
			return 0, net.ErrClosed
		case <-unplug:
			v.stats.add(&v.stats.txDropTooBig, tooBig)
			return 0, net.ErrClosed
		}
		if v.copyOut(pkt, bufs[n], offset, &sizes[n]) {
			bytes += sizes[n]
			n++
		} else {
			tooBig++
		}
	}
more:
	for n < limit {
		select {
		case pkt := <-v.link.q:
			if v.copyOut(pkt, bufs[n], offset, &sizes[n]) {
				bytes += sizes[n]
				n++
			} else {
				tooBig++
			}
		default:
			break more
		}
	}
	v.stats.txFrames.Add(uint64(n))
	v.stats.txBytes.Add(uint64(bytes))
	v.stats.add(&v.stats.txDropTooBig, tooBig)
	return n, nil
}

// copyOut copies pkt into buf[offset:] and releases it. It reports false
// (and copies nothing) if the frame does not fit.
func (v *VM) copyOut(pkt *stack.PacketBuffer, buf []byte, offset int, size *int) bool {
	defer pkt.DecRef()
	n := pkt.Size()
	if offset < 0 || offset > len(buf) || n > len(buf)-offset {
		return false
	}
	dst := buf[offset:]
	c := 0
	for _, s := range pkt.AsSlices() {
		c += copy(dst[c:], s)
	}
	*size = c
	return true
}

// Write implements bridge.Port: it delivers frames bufs[i][offset:] to the
// VM and returns len(bufs). Frames the VM's NIC would not accept are
// consumed and counted instead: shorter than bridge.MinFrame (RxDropRunt),
// longer than MTU+14 (RxDropOversize), or unicast to another MAC
// (RxDropNotForUs; gVisor's ethernet endpoint marks such frames but still
// delivers them, so the filter is here). After Close it returns 0 and
// net.ErrClosed.
func (v *VM) Write(bufs [][]byte, offset int) (int, error) {
	v.write.mu.RLock()
	defer v.write.mu.RUnlock()
	if v.write.closed {
		return 0, net.ErrClosed
	}
	maxFrame := v.mtu + ethHeaderLen
	mac := [6]byte(v.mac)
	var frames, bytes, runt, oversize, notForUs int
	for _, b := range bufs {
		if offset < 0 || offset > len(b) {
			runt++
			continue
		}
		f := b[offset:]
		switch {
		case len(f) < bridge.MinFrame:
			runt++
			continue
		case len(f) > maxFrame:
			oversize++
			continue
		case f[0]&1 == 0 && [6]byte(f[:6]) != mac:
			// Unicast (I/G bit clear) to someone else. Broadcast and
			// multicast have the bit set and go up; the stack ignores
			// groups it has not joined.
			notForUs++
			continue
		}
		pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{
			Payload: buffer.MakeWithData(f), // copies f
		})
		v.link.deliver(pkt)
		pkt.DecRef()
		frames++
		bytes += len(f)
	}
	v.stats.rxFrames.Add(uint64(frames))
	v.stats.rxBytes.Add(uint64(bytes))
	v.stats.add(&v.stats.rxDropRunt, runt)
	v.stats.add(&v.stats.rxDropOversize, oversize)
	v.stats.add(&v.stats.rxDropNotForUs, notForUs)
	return len(bufs), nil
}

// BatchSize implements bridge.Port.
func (v *VM) BatchSize() int { return BatchSize }

// QuickWrites implements bridge.QuickPort: Write hands frames to the stack,
// which queues or drops them without waiting.
func (v *VM) QuickWrites() bool { return true }

// Stats is a snapshot of a VM's counters. Tx is what the VM sent (returned
// by Read), Rx what it was given (by Write).
type Stats struct {
	TxFrames, TxBytes uint64
	RxFrames, RxBytes uint64

	// TxDropQueueFull: the VM sent a frame while txQueueLen frames were
	// waiting for Read.
	TxDropQueueFull uint64
	// TxDropTooBig: a frame was longer than the buffer Read was given.
	TxDropTooBig uint64
	// RxDropRunt: a frame shorter than an Ethernet header.
	RxDropRunt uint64
	// RxDropOversize: a frame longer than MTU+14.
	RxDropOversize uint64
	// RxDropNotForUs: a unicast frame for another MAC.
	RxDropNotForUs uint64
}

// Stats returns the VM's counters. They keep counting until Close.
func (v *VM) Stats() Stats {
	c := &v.stats
	return Stats{
		TxFrames:        c.txFrames.Load(),
		TxBytes:         c.txBytes.Load(),
		RxFrames:        c.rxFrames.Load(),
		RxBytes:         c.rxBytes.Load(),
		TxDropQueueFull: c.txDropQueueFull.Load(),
		TxDropTooBig:    c.txDropTooBig.Load(),
		RxDropRunt:      c.rxDropRunt.Load(),
		RxDropOversize:  c.rxDropOversize.Load(),
		RxDropNotForUs:  c.rxDropNotForUs.Load(),
	}
}

type counters struct {
	txFrames, txBytes atomic.Uint64
	rxFrames, rxBytes atomic.Uint64
	txDropQueueFull   atomic.Uint64
	txDropTooBig      atomic.Uint64
	rxDropRunt        atomic.Uint64
	rxDropOversize    atomic.Uint64
	rxDropNotForUs    atomic.Uint64
}

// add adds n to c unless n is 0, which saves the atomic on the common path.
func (*counters) add(c *atomic.Uint64, n int) {
	if n != 0 {
		c.Add(uint64(n))
	}
}
