package tunnel

import (
	"net/netip"
	"sync"
	"testing"
	"time"

	"vnet/bridge"
)

func listenUDPOpts(t *testing.T, k Key, o UDPOptions) *UDPMux {
	t.Helper()
	m, err := ListenUDPWith("127.0.0.1:0", k, quietLog(), o)
	if err != nil {
		t.Fatal(err)
	}
	testMuxes.Store(m, true)
	t.Cleanup(func() { m.Close(); testMuxes.Delete(m) })
	return m
}

// A 1280-byte underlay without splitting: datagrams fit it, links say how
// large a frame they carry, offer no super-frames, and drop (count) a frame
// beyond it, but still split one IPv6 needs (up to 1294 bytes).
func TestUDPNoFragment(t *testing.T) {
	k, _ := GenerateKey()
	o := UDPOptions{UnderlayMTU: 1280, NoFragment: true}
	a, b := listenUDPOpts(t, k, o), listenUDPOpts(t, k, o)
	const limit = 1280 - 28 - udpOverhead // an IPv4 socket
	if a.FrameLimit() != limit {
		t.Fatalf("FrameLimit %d, want %d", a.FrameLimit(), limit)
	}
	la, lb, err := dialAccept(t, a, b, []netip.AddrPort{apOf(b.Addr())}, "a", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if la.FrameLimit() != limit || lb.FrameLimit() != limit {
		t.Fatalf("links' FrameLimit %d %d, want %d", la.FrameLimit(), lb.FrameLimit(), limit)
	}
	if la.Offloads() || lb.Offloads() {
		t.Fatal("a link that may not split frames offers super-frames")
	}
	if lb.Peer().Offload || la.Peer().Offload {
		t.Fatal("a hello offered super-frames on a link that may not split them")
	}
	var wg sync.WaitGroup
	got := make(chan []byte, 8)
	wg.Add(1)
	go pump(lb, got, &wg)
	before := b.Stats()["rx-datagrams"]
	sendAndCheck(t, la, got, []int{limit})
	if d := b.Stats()["rx-datagrams"] - before; d != 1 {
		t.Fatalf("a frame of the limit took %d datagrams", d)
	}
	sendAndCheck(t, la, got, []int{bridge.MinIPv6Frame}) // split: IPv6's minimum
	tooBig := a.Stats()["too-big"]
	bufs, _ := frameBatch([]int{bridge.MinIPv6Frame + 1, 1514})
	if n, err := la.Write(bufs, bridge.Headroom); n != 2 || err != nil {
		t.Fatalf("write: %d %v", n, err)
	}
	if d := a.Stats()["too-big"] - tooBig; d != 2 {
		t.Fatalf("too-big counted %d frames, want 2", d)
	}
	select {
	case g := <-got:
		t.Fatalf("a frame of %d bytes crossed a link that may not split it", len(g))
	case <-time.After(100 * time.Millisecond):
	}
	lb.Close()
	wg.Wait()

	// Splitting on (the default), the same underlay: no limit.
	c, d := listenUDPOpts(t, k, UDPOptions{UnderlayMTU: 1280}), listenUDPOpts(t, k, UDPOptions{})
	lc, _, err := dialAccept(t, c, d, []netip.AddrPort{apOf(d.Addr())}, "c", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if lc.FrameLimit() != 0 {
		t.Fatalf("a link that splits has FrameLimit %d", lc.FrameLimit())
	}
}

func TestUDPUnderlayMTUOutOfRange(t *testing.T) {
	k, _ := GenerateKey()
	for _, mtu := range []int{100, 600, 20000} {
		if m, err := ListenUDPWith("127.0.0.1:0", k, quietLog(), UDPOptions{UnderlayMTU: mtu}); err == nil {
			m.Close()
			t.Errorf("underlay MTU %d accepted", mtu)
		}
	}
}
