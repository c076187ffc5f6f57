package tunnel

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"vnet/bridge"
	"vnet/bridge/bridgetest"
)

// TestUDPRelaySealedThroughProxy: super-frames from host a to host b
// through a proxy's switch, over real UDP links on loopback, cross the
// proxy sealed by a (counted "relayed" there) and arrive whole and in
// order. A payload forged on the way passes the proxy (it cannot tell)
// and is counted bad-relay at b; a forged hop part is counted bad-mac at
// the proxy. A broadcast reaches the proxy's own VM port opened.
func TestUDPRelaySealedThroughProxy(t *testing.T) {
	k, _ := GenerateKey()
	px, a, b := listenUDPTest(t, k, nil), listenUDPTest(t, k, nil), listenUDPTest(t, k, nil)
	r := newUDPRelay(t, apOf(px.Addr())) // between a and the proxy
	const (
		tamperNone = iota
		tamperPayload
		tamperHop
	)
	var tamper atomic.Int32
	r.mu.Lock()
	r.pass = func(d []byte) bool {
		if d[0] != udpMsgRelayed {
			return true
		}
		switch tamper.Load() {
		case tamperPayload: // the payload's tag, in the last chunk
			if d[udpSealedHeaderIndex] == d[udpSealedHeaderCount]-1 {
				d[len(d)-1] ^= 1
			}
		case tamperHop:
			if d[udpSealedHeaderIndex] == 0 {
				d[udpSealedHeaderLen+3] ^= 1
			}
		}
		return true
	}
	r.mu.Unlock()
	proxyHello := Hello{Name: "proxy", Role: "proxy", Offload: true}
	la, pa, err := dialAcceptHellos(t, a, px, []netip.AddrPort{r.addr()}, Hello{Name: "a", Role: "host", Link: "star-a", Offload: true}, proxyHello, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	lb, pb, err := dialAcceptHellos(t, b, px, []netip.AddrPort{apOf(px.Addr())}, Hello{Name: "b", Role: "host", Link: "star-b", Offload: true}, proxyHello, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !pa.TakesSealed() || !pb.TakesSealed() || la.TakesSealed() || lb.TakesSealed() {
		t.Fatalf("takes sealed frames: proxy's links %v %v, hosts' %v %v; want only the proxy's",
			pa.TakesSealed(), pb.TakesSealed(), la.TakesSealed(), lb.TakesSealed())
	}

	attach := func(sw *bridge.Switch, name string, role bridge.Role, p bridge.Port) {
		if err := sw.AddPort(name, role, p); err != nil {
			t.Fatal(err)
		}
	}
	proxy := bridge.New(bridge.Config{})
	defer proxy.Close()
	lan := bridgetest.NewOffloadChanPort(64)
	attach(proxy, "a", bridge.RoleStar, pa)
	attach(proxy, "b", bridge.RoleStar, pb)
	attach(proxy, "lan", bridge.RoleLocal, lan)
	hostB := bridge.New(bridge.Config{})
	defer hostB.Close()
	vm := bridgetest.NewOffloadChanPort(64)
	attach(hostB, "star", bridge.RoleStar, lb)
	attach(hostB, "vm", bridge.RoleLocal, vm)

	src, dst := [6]byte{0x02, 0, 0, 0, 0, 1}, [6]byte{0x02, 0, 0, 0, 0, 2}
	vm.Inject(append(make([]byte, bridge.VnetHdrLen), bridgetest.Frame(src, dst, make([]byte, 46))...))
	if _, ok := lan.Expect(5 * time.Second); !ok { // the proxy flooded it: dst is learnt behind b
		t.Fatal("b's VM's frame never reached the proxy")
	}
	superFrame := func(i int, to [6]byte) []byte {
		buf, _ := benchFrame(bridge.MaxFrame + 997*i)
		copy(buf[bridge.Headroom:], to[:])
		copy(buf[bridge.Headroom+6:], src[:])
		binary.BigEndian.PutUint32(buf[bridge.Headroom+14:], uint32(i))
		return buf
	}
	expect := func(p *bridgetest.ChanPort, buf []byte, i int) {
		t.Helper()
		got, ok := p.Expect(5 * time.Second)
		if !ok {
			t.Fatalf("super-frame %d never arrived", i)
		}
		if !bytes.Equal(got, buf[bridge.Headroom-bridge.VnetHdrLen:]) {
			t.Fatalf("super-frame %d arrived as %d bytes (number %d), not as sent (%d)", i, len(got),
				binary.BigEndian.Uint32(got[bridge.VnetHdrLen+14:]), len(buf)-bridge.Headroom+bridge.VnetHdrLen)
		}
	}
	const n = 40
	for i := range n + 2 {
		buf := superFrame(i, dst)
		switch i {
		case n / 2:
			tamper.Store(tamperPayload)
		case n/2 + 1:
			tamper.Store(tamperHop)
		default:
			tamper.Store(tamperNone)
		}
		if _, err := la.Write([][]byte{buf}, bridge.Headroom); err != nil {
			t.Fatal(err)
		}
		switch i {
		case n / 2:
			waitFor(t, "the forged payload counted at b", func() bool { return b.Stats()["bad-relay"] == 1 })
		case n/2 + 1:
			waitFor(t, "the forged hop part counted at the proxy", func() bool { return px.Stats()["bad-mac"] == 1 })
		default:
			expect(vm, buf, i)
		}
	}
	if st := px.Stats(); st["relayed"] < n/2 || st["bad-relay"] != 0 {
		t.Fatalf("the proxy passed on %d of %d super-frames sealed (want at least half), bad-relay %d", st["relayed"], n, st["bad-relay"])
	}
	select {
	case f := <-vm.Out:
		t.Fatalf("a forged super-frame reached b's VM: %d bytes", len(f))
	default:
	}

	// A broadcast: the proxy opens it for its own port, once for all.
	buf := superFrame(n+2, bridge.Broadcast)
	if _, err := la.Write([][]byte{buf}, bridge.Headroom); err != nil {
		t.Fatal(err)
	}
	expect(lan, buf, n+2)
	expect(vm, buf, n+2)
	t.Logf("proxy: %d of the %d super-frames with a good hop part relayed sealed", px.Stats()["relayed"], n+2)
}
