package netvm

import (
	"encoding/binary"
	"net"
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
// 0.0.0.0, which still moves its MAC.
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
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(f)})
	var l stack.PacketBufferList
	l.PushBack(pkt)
	v.link.WritePackets(l) // the queue holds its own reference; a full one is counted
	pkt.DecRef()
}
