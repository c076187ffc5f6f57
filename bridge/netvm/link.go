package netvm

import (
	"sync"
	"sync/atomic"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// linkEndpoint is the bottom of a VM's NIC: gVisor's ethernet.Endpoint sits
// on top of it and adds and strips the Ethernet header, so packets here are
// whole frames.
//
// Outbound, WritePackets puts a reference to each frame on a bounded queue
// that VM.Read empties; a full queue drops the frame and counts it, and the
// stack sees ErrNoBufferSpace (it never blocks a stack goroutine).
// Inbound, VM.Write calls deliver, which passes the frame up to the
// dispatcher (the ethernet endpoint) synchronously.
//
// It is like gVisor's link/channel endpoint, with two differences that
// matter here: a full queue is reported and counted instead of being
// reported as success, and Close is visible to readers through done.
type linkEndpoint struct {
	mtu       uint32 // including the Ethernet header
	linkAddr  tcpip.LinkAddress
	q         chan *stack.PacketBuffer
	queueFull *atomic.Uint64

	mu struct {
		sync.RWMutex
		dispatcher stack.NetworkDispatcher
		closed     bool
	}
}

var _ stack.LinkEndpoint = (*linkEndpoint)(nil)

func newLinkEndpoint(mtu uint32, addr tcpip.LinkAddress, queueLen int, queueFull *atomic.Uint64) *linkEndpoint {
	return &linkEndpoint{
		mtu:       mtu,
		linkAddr:  addr,
		q:         make(chan *stack.PacketBuffer, queueLen),
		queueFull: queueFull,
	}
}

// deliver passes an inbound frame to the stack. The caller keeps its
// reference to pkt.
func (e *linkEndpoint) deliver(pkt *stack.PacketBuffer) {
	e.mu.RLock()
	d := e.mu.dispatcher
	e.mu.RUnlock()
	if d != nil {
		d.DeliverNetworkPacket(0 /* the ethernet endpoint reads the EtherType */, pkt)
	}
}

// WritePackets implements stack.LinkWriter: it queues frames for VM.Read.
func (e *linkEndpoint) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	e.mu.RLock()
	defer e.mu.RUnlock()
	if e.mu.closed {
		return 0, &tcpip.ErrClosedForSend{}
	}
	n := 0
	for _, pkt := range pkts.AsSlice() {
		// The stack releases its reference when WritePackets returns;
		// the queue holds its own, on a clone sharing the same bytes.
		c := pkt.Clone()
		select {
		case e.q <- c:
			n++
		default:
			c.DecRef()
			e.queueFull.Add(uint64(pkts.Len() - n))
			if n == 0 {
				return 0, &tcpip.ErrNoBufferSpace{}
			}
			return n, nil
		}
	}
	return n, nil
}

// Close implements stack.NetworkLinkEndpoint. The stack calls it when it
// removes the NIC (in VM.Close). Queued frames are released.
func (e *linkEndpoint) Close() {
	e.mu.Lock()
	if e.mu.closed {
		e.mu.Unlock()
		return
	}
	e.mu.closed = true
	e.mu.Unlock()
	// No WritePackets can enqueue any more; VM.Read may still take a
	// frame concurrently, and owns what it takes.
	for {
		select {
		case pkt := <-e.q:
			pkt.DecRef()
		default:
			return
		}
	}
}

// SetOnCloseAction implements stack.NetworkLinkEndpoint. The action is
// for endpoints that can close by themselves (a device going away); this
// one is closed only by the stack, which has then removed the NIC already.
func (e *linkEndpoint) SetOnCloseAction(func()) {}

// Attach implements stack.NetworkLinkEndpoint.
func (e *linkEndpoint) Attach(d stack.NetworkDispatcher) {
	e.mu.Lock()
	e.mu.dispatcher = d
	e.mu.Unlock()
}

// IsAttached implements stack.NetworkLinkEndpoint.
func (e *linkEndpoint) IsAttached() bool {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return e.mu.dispatcher != nil
}

// MTU implements stack.NetworkLinkEndpoint: the largest frame, header
// included (the ethernet endpoint subtracts its header).
func (e *linkEndpoint) MTU() uint32 { return e.mtu }

// SetMTU implements stack.NetworkLinkEndpoint. The MTU is fixed at New;
// the stack never calls this.
func (e *linkEndpoint) SetMTU(uint32) {}

// MaxHeaderLength implements stack.NetworkLinkEndpoint: the ethernet
// endpoint above adds the only header.
func (e *linkEndpoint) MaxHeaderLength() uint16 { return 0 }

// LinkAddress implements stack.NetworkLinkEndpoint.
func (e *linkEndpoint) LinkAddress() tcpip.LinkAddress { return e.linkAddr }

// SetLinkAddress implements stack.NetworkLinkEndpoint. The MAC is fixed at
// New; the stack never calls this.
func (e *linkEndpoint) SetLinkAddress(tcpip.LinkAddress) {}

// Capabilities implements stack.NetworkLinkEndpoint. None: checksums are
// computed and verified in the stack because the frames go to and come
// from real hosts, and there is no GSO, so every frame fits the MTU.
func (e *linkEndpoint) Capabilities() stack.LinkEndpointCapabilities { return 0 }

// Wait implements stack.NetworkLinkEndpoint. The endpoint has no
// goroutines.
func (e *linkEndpoint) Wait() {}

// ARPHardwareType implements stack.NetworkLinkEndpoint; the ethernet
// endpoint reports Ethernet.
func (e *linkEndpoint) ARPHardwareType() header.ARPHardwareType { return header.ARPHardwareNone }

// AddHeader implements stack.NetworkLinkEndpoint; the ethernet endpoint
// adds the header.
func (e *linkEndpoint) AddHeader(*stack.PacketBuffer) {}

// ParseHeader implements stack.NetworkLinkEndpoint.
func (e *linkEndpoint) ParseHeader(*stack.PacketBuffer) bool { return true }
