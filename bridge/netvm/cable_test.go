package netvm

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"vnet/bridge"
)

// TestCable unplugs a VM and plugs it in again: the VM keeps running, a
// frame it sent while unplugged waits for the next cable, and Announce
// sends a gratuitous ARP for its address.
func TestCable(t *testing.T) {
	vm, err := New(Config{MAC: net.HardwareAddr{0x52, 0x54, 0, 0, 9, 1}, Addr: netip.MustParsePrefix("10.9.0.1/24")})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	read := func(c *Cable) ([]byte, error) {
		bufs, sizes := [][]byte{make([]byte, bridge.BufSize)}, []int{0}
		n, err := c.Read(bufs, sizes, bridge.Headroom)
		if err != nil || n != 1 {
			return nil, err
		}
		return bufs[0][bridge.Headroom : bridge.Headroom+sizes[0]], nil
	}
	c1 := vm.Plug()
	vm.Announce()
	f, err := read(c1)
	if err != nil {
		t.Fatal(err)
	}
	want := []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x52, 0x54, 0, 0, 9, 1, 0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1,
		0x52, 0x54, 0, 0, 9, 1, 10, 9, 0, 1, 0, 0, 0, 0, 0, 0, 10, 9, 0, 1}
	if !bytes.Equal(f, want) {
		t.Fatalf("announcement\n got % x\nwant % x", f, want)
	}
	c1.Close()
	if _, err := read(c1); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read after unplug: %v", err)
	}
	if _, err := c1.Write([][]byte{make([]byte, 64)}, 0); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("write after unplug: %v", err)
	}
	vm.Announce() // while unplugged: it waits in the queue
	c2 := vm.Plug()
	if f, err := read(c2); err != nil || !bytes.Equal(f, want) {
		t.Fatalf("after replugging: % x, %v", f, err)
	}
	vm.Close()
	if _, err := read(c2); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read after the VM closed: %v", err)
	}
}

// TestAnnounceIPv6: an IPv6 VM's Announce also sends an unsolicited
// neighbour advertisement, and a neighbour that had the address at another
// MAC (the VM's before a migration, here another VM) takes the new one.
func TestAnnounceIPv6(t *testing.T) {
	old := startVM(t, macA, "fd00::1/64")
	b := startVM(t, macB, "fd00::2/64")
	wire(t, old, b)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := b.Ping(ctx, old.Addr()); err != nil {
		t.Fatal(err)
	}
	neighbour := func() string {
		ns, _ := b.stack.Neighbors(nicID, ipv6Proto)
		for _, n := range ns {
			if n.Addr == tcpipAddr(old.Addr()) {
				return net.HardwareAddr(n.LinkAddr).String()
			}
		}
		return ""
	}
	if got := neighbour(); got != macA {
		t.Fatalf("b's neighbour fd00::1 is at %q, want %s", got, macA)
	}

	moved := startVM(t, "52:54:00:00:00:0c", "fd00::1/64")
	c := moved.Plug()
	moved.Announce()
	// Both frames are queued by the time Announce returns; a missing one
	// would block Read, so the reader gives up when the VM is closed.
	got := make(chan [][]byte, 1)
	go func() {
		bufs, sizes := [][]byte{make([]byte, bridge.BufSize), make([]byte, bridge.BufSize)}, []int{0, 0}
		var frames [][]byte
		for len(frames) < 2 {
			n, err := c.Read(bufs[len(frames):], sizes[len(frames):], bridge.Headroom)
			if err != nil {
				break
			}
			for i, k := len(frames), len(frames)+n; i < k; i++ {
				frames = append(frames, bufs[i][:bridge.Headroom+sizes[i]])
			}
		}
		got <- frames
	}()
	var frames [][]byte
	select {
	case frames = <-got:
	case <-time.After(5 * time.Second):
		moved.Close()
		frames = <-got
	}
	if len(frames) != 2 {
		t.Fatalf("Announce sent %d frames, want 2 (ARP, then a neighbour advertisement)", len(frames))
	}
	na := frames[1][bridge.Headroom:]
	if et := binary.BigEndian.Uint16(na[12:]); et != 0x86dd || na[14+40] != 136 {
		t.Fatalf("second announcement frame % x, want a neighbour advertisement", na)
	}
	if _, err := b.Write(frames[1:], bridge.Headroom); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for neighbour() != "52:54:00:00:00:0c" {
		if time.Now().After(deadline) {
			t.Fatalf("after the advertisement b's neighbour fd00::1 is at %q, want 52:54:00:00:00:0c", neighbour())
		}
		time.Sleep(10 * time.Millisecond)
	}
}
