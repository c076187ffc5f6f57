package netvm

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"testing"

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
