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
// relayRig is a proxy and hosts a and b on loopback UDP, a's link to the
// proxy through a udpRelay: the proxy's switch has both links and a VM
// port (lan), b's switch its link and a VM port (vm), whose MAC (dst) the
// proxy has learnt behind b.
type relayRig struct {
	px, a, b       *UDPMux
	r              *udpRelay
	la, pa, pb, lb *Link
	lan, vm        *bridgetest.ChanPort
	src, dst       [6]byte
}

// newRelayRig builds it; old (nil, or one of the muxes by name: "proxy",
// "b") offers no relayed messages, as a daemon from before them.
func newRelayRig(t *testing.T, old string) *relayRig {
	k, _ := GenerateKey()
	g := &relayRig{px: listenUDPTest(t, k, nil), a: listenUDPTest(t, k, nil), b: listenUDPTest(t, k, nil),
		src: [6]byte{0x02, 0, 0, 0, 0, 1}, dst: [6]byte{0x02, 0, 0, 0, 0, 2}}
	switch old {
	case "proxy":
		g.px.relayOff = true
	case "b":
		g.b.relayOff = true
	}
	g.r = newUDPRelay(t, apOf(g.px.Addr()))
	proxyHello := Hello{Name: "proxy", Role: "proxy", Offload: true}
	var err error
	if g.la, g.pa, err = dialAcceptHellos(t, g.a, g.px, []netip.AddrPort{g.r.addr()}, Hello{Name: "a", Role: "host", Link: "star-a", Offload: true}, proxyHello, nil, nil); err != nil {
		t.Fatal(err)
	}
	if g.lb, g.pb, err = dialAcceptHellos(t, g.b, g.px, []netip.AddrPort{apOf(g.px.Addr())}, Hello{Name: "b", Role: "host", Link: "star-b", Offload: true}, proxyHello, nil, nil); err != nil {
		t.Fatal(err)
	}
	attach := func(sw *bridge.Switch, name string, role bridge.Role, p bridge.Port) {
		if err := sw.AddPort(name, role, p); err != nil {
			t.Fatal(err)
		}
	}
	proxy := bridge.New(bridge.Config{})
	t.Cleanup(proxy.Close)
	g.lan = bridgetest.NewOffloadChanPort(64)
	attach(proxy, "a", bridge.RoleStar, g.pa)
	attach(proxy, "b", bridge.RoleStar, g.pb)
	attach(proxy, "lan", bridge.RoleLocal, g.lan)
	hostB := bridge.New(bridge.Config{})
	t.Cleanup(hostB.Close)
	g.vm = bridgetest.NewOffloadChanPort(64)
	attach(hostB, "star", bridge.RoleStar, g.lb)
	attach(hostB, "vm", bridge.RoleLocal, g.vm)
	g.vm.Inject(append(make([]byte, bridge.VnetHdrLen), bridgetest.Frame(g.src, g.dst, make([]byte, 46))...))
	if _, ok := g.lan.Expect(5 * time.Second); !ok { // the proxy flooded it: dst is learnt behind b
		t.Fatal("b's VM's frame never reached the proxy")
	}
	return g
}

// superFrame is super-frame number i from a's VM to to.
func (g *relayRig) superFrame(i int, to [6]byte) []byte {
	buf, _ := benchFrame(bridge.MaxFrame + 997*i)
	copy(buf[bridge.Headroom:], to[:])
	copy(buf[bridge.Headroom+6:], g.src[:])
	binary.BigEndian.PutUint32(buf[bridge.Headroom+14:], uint32(i))
	return buf
}

// expectSuper waits for buf (super-frame i, its header with it) at p.
func expectSuper(t *testing.T, p *bridgetest.ChanPort, buf []byte, i int) {
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

// TestUDPRelaySealedThroughProxy: super-frames from host a to host b
// through a proxy's switch, over real UDP links on loopback, cross the
// proxy sealed by a (counted "relayed" there) and arrive whole and in
// order. A payload forged on the way passes the proxy (it cannot tell)
// and is counted bad-relay at b; a forged hop part is counted bad-mac at
// the proxy. A broadcast reaches the proxy's own VM port opened.
func TestUDPRelaySealedThroughProxy(t *testing.T) {
	g := newRelayRig(t, "")
	px, b, la, vm, lan := g.px, g.b, g.la, g.vm, g.lan
	if !g.pa.TakesSealed() || !g.pb.TakesSealed() || la.TakesSealed() || g.lb.TakesSealed() {
		t.Fatalf("takes sealed frames: proxy's links %v %v, hosts' %v %v; want only the proxy's",
			g.pa.TakesSealed(), g.pb.TakesSealed(), la.TakesSealed(), g.lb.TakesSealed())
	}
	const (
		tamperNone = iota
		tamperPayload
		tamperHop
	)
	var tamper atomic.Int32
	g.r.mu.Lock()
	g.r.pass = func(d []byte) bool {
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
	g.r.mu.Unlock()
	superFrame, dst := g.superFrame, g.dst
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
			expectSuper(t, vm, buf, i)
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
	expectSuper(t, lan, buf, n+2)
	expectSuper(t, vm, buf, n+2)
	t.Logf("proxy: %d of the %d super-frames with a good hop part relayed sealed", px.Stats()["relayed"], n+2)
}

// TestUDPRelayWithOldDaemons: where the proxy, or the receiving host, is
// from before relayed messages, super-frames still cross the star whole,
// sealed per link as before (an old proxy), or opened at the proxy for
// the old host (a's still come sealed by a as far as the proxy).
func TestUDPRelayWithOldDaemons(t *testing.T) {
	for _, old := range []string{"proxy", "b"} {
		t.Run("old "+old, func(t *testing.T) {
			g := newRelayRig(t, old)
			if g.pb.TakesSealed() || g.pa.TakesSealed() != (old == "b") {
				t.Fatalf("the proxy's links take sealed frames: to a %v, to b %v", g.pa.TakesSealed(), g.pb.TakesSealed())
			}
			const n = 10
			for i := range n {
				buf := g.superFrame(i, g.dst)
				if _, err := g.la.Write([][]byte{buf}, bridge.Headroom); err != nil {
					t.Fatal(err)
				}
				expectSuper(t, g.vm, buf, i)
			}
			relayed := g.px.Stats()["relayed"]
			if old == "proxy" && relayed != 0 || old == "b" && relayed < n/2 {
				t.Fatalf("the proxy took %d of %d super-frames sealed by a", relayed, n)
			}
			if st := g.b.Stats(); st["bad-relay"]+st["bad-message"] != 0 {
				t.Fatalf("b: %v", st)
			}
		})
	}
}
