package netvm

import (
	"encoding/binary"
	"net"
	"net/netip"
	"sync"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// Cable is a detachable connection between a VM and a switch: a
// bridge.Port whose Close unplugs the VM without stopping it, so that the
// VM, with its connections and listeners, can be plugged into another
// switch (in-process migration). Frames the VM sends while it is unplugged
// wait in its queue, as in a VM paused for migration, and go out through
// the next cable; beyond the queue's length they are dropped and counted
// (TxDropQueueFull).
//
// Plug at most one cable at a time: two would take turns at the VM's
// frames.
type Cable struct {
	vm     *VM
	unplug chan struct{}
	once   sync.Once
	mu     sync.RWMutex // Write against Close
	closed bool
}

// Plug returns a new cable to the VM.
func (v *VM) Plug() *Cable { return &Cable{vm: v, unplug: make(chan struct{})} }

// Read implements bridge.Port (see VM.Read). After Close it returns
// net.ErrClosed.
func (c *Cable) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	return c.vm.read(bufs, sizes, offset, c.unplug)
}

// Write implements bridge.Port (see VM.Write). After Close it returns 0
// and net.ErrClosed.
func (c *Cable) Write(bufs [][]byte, offset int) (int, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.closed {
		return 0, net.ErrClosed
	}
	return c.vm.Write(bufs, offset)
}

// BatchSize implements bridge.Port.
func (c *Cable) BatchSize() int { return BatchSize }

// Close unplugs the cable; the VM keeps running. It is safe to call more
// than once and always returns nil.
func (c *Cable) Close() error {
	c.once.Do(func() {
		c.mu.Lock()
		c.closed = true
		c.mu.Unlock()
		close(c.unplug)
	})
	return nil
}

// VM returns the VM at the other end of the cable.
func (c *Cable) VM() *VM { return c.vm }

// Announce sends a gratuitous ARP (a broadcast request for the VM's own
// address), as QEMU does after a live migration: every switch on the
// segment learns where the VM's MAC is now, and neighbours refresh their
// ARP caches. A router-mode VM without an address of its own announces
// 0.0.0.0, which still moves its MAC. An IPv6 VM (whose ARP says 0.0.0.0)
// then sends an unsolicited neighbour advertisement for its address, so
// that its neighbours' NDP caches move too.
func (v *VM) Announce() {
	f := make([]byte, 42)
	copy(f[0:6], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	copy(f[6:12], v.mac)
	binary.BigEndian.PutUint16(f[12:], 0x0806) // ARP
	a := f[14:]
	binary.BigEndian.PutUint16(a[0:], 1)      // Ethernet
	binary.BigEndian.PutUint16(a[2:], 0x0800) // IPv4
	a[4], a[5] = 6, 4
	binary.BigEndian.PutUint16(a[6:], 1) // request
	copy(a[8:14], v.mac)
	var ip [4]byte
	if v.prefix.Addr().Is4() {
		ip = v.prefix.Addr().As4()
	}
	copy(a[14:18], ip[:])
	copy(a[24:28], ip[:]) // target = sender: gratuitous
	v.send(f)
	if v.prefix.Addr().Is6() {
		v.send(unsolicitedNA(v.mac, v.prefix.Addr()))
	}
}

// send queues one frame the VM sends by itself.
func (v *VM) send(f []byte) {
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(f)})
	var l stack.PacketBufferList
	l.PushBack(pkt)
	v.link.WritePackets(l) // the queue holds its own reference; a full one is counted
	pkt.DecRef()
}

// unsolicitedNA is IPv6's gratuitous ARP (RFC 4861 7.2.6): a neighbour
// advertisement for addr with the override flag and mac as the target's
// link-layer address, from addr to all nodes (ff02::1), hop limit 255.
func unsolicitedNA(mac net.HardwareAddr, addr netip.Addr) []byte {
	const icmpLen = 4 + 4 + 16 + 8 // header, flags, target, target link-layer option
	f := make([]byte, 14+40+icmpLen)
	copy(f[0:6], []byte{0x33, 0x33, 0, 0, 0, 1})
	copy(f[6:12], mac)
	binary.BigEndian.PutUint16(f[12:], 0x86dd)
	ip := f[14:]
	ip[0] = 0x60
	binary.BigEndian.PutUint16(ip[4:], icmpLen)
	ip[6], ip[7] = 58, 255 // ICMPv6, hop limit
	src, dst := addr.As16(), netip.IPv6LinkLocalAllNodes().As16()
	copy(ip[8:24], src[:])
	copy(ip[24:40], dst[:])
	m := ip[40:]
	m[0] = 136                               // neighbour advertisement
	binary.BigEndian.PutUint32(m[4:], 1<<29) // override
	copy(m[8:24], src[:])                    // target
	m[24], m[25] = 2, 1                      // target link-layer address, 8 bytes
	copy(m[26:32], mac)
	// Checksum over the pseudo-header (addresses, length, next header) and
	// the message.
	var sum uint32
	for _, b := range [][]byte{ip[8:40], m} {
		for i := 0; i+1 < len(b); i += 2 {
			sum += uint32(binary.BigEndian.Uint16(b[i:]))
		}
	}
	sum += icmpLen + 58
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(m[2:], ^uint16(sum))
	return f
}
