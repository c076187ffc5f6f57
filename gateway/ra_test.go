package gateway

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"vnet/bridge"
	"vnet/bridge/bridgetest"
	"vnet/bridge/netvm"
)

var (
	testPrefix6 = netip.MustParsePrefix("fd00:77::/64")
	testMAC     = net.HardwareAddr{0x02, 0, 0, 0x77, 0, 9}
)

// routerSolicitation is what a Linux VM sends when its NIC comes up: from
// its link-local address to all routers, with its MAC.
func routerSolicitation(mac net.HardwareAddr) []byte {
	const icmpLen = 8 + 8
	f := make([]byte, 14+40+icmpLen)
	copy(f[0:6], []byte{0x33, 0x33, 0, 0, 0, 2})
	copy(f[6:12], mac)
	binary.BigEndian.PutUint16(f[12:], 0x86dd)
	ip := f[14:]
	ip[0] = 0x60
	binary.BigEndian.PutUint16(ip[4:], icmpLen)
	ip[6], ip[7] = 58, 255
	src := netvmLinkLocal(mac).As16()
	dst := netip.MustParseAddr("ff02::2").As16()
	copy(ip[8:24], src[:])
	copy(ip[24:40], dst[:])
	m := ip[40:]
	m[0] = icmpv6RouterSolicit
	m[8], m[9] = 1, 1
	copy(m[10:16], mac)
	binary.BigEndian.PutUint16(m[2:], ^icmpv6Sum(ip[8:40], m))
	return f
}

func netvmLinkLocal(mac net.HardwareAddr) netip.Addr {
	a := [16]byte{0: 0xfe, 1: 0x80}
	a[8], a[9], a[10], a[11] = mac[0]^2, mac[1], mac[2], 0xff
	a[12], a[13], a[14], a[15] = 0xfe, mac[3], mac[4], mac[5]
	return netip.AddrFrom16(a)
}

// ra is a router advertisement as gVisor's parser reads it.
type ra struct {
	src, dst     netip.Addr
	hopLimit     uint8
	lifetime     time.Duration
	managed      bool
	srcLinkAddr  tcpip.LinkAddress
	mtu          uint32
	prefix       netip.Prefix
	onLink, auto bool
	rdnss        []netip.Addr
}

// parseRA checks frame f with gVisor's header package (an independent
// reader of the same RFC) and returns the advertisement, or an error if f
// is none.
func parseRA(f []byte) (*ra, error) {
	if len(f) < 14 || binary.BigEndian.Uint16(f[12:]) != 0x86dd {
		return nil, fmt.Errorf("not IPv6")
	}
	ip := header.IPv6(f[14:])
	if !ip.IsValid(len(ip)) || ip.TransportProtocol() != header.ICMPv6ProtocolNumber {
		return nil, fmt.Errorf("not ICMPv6")
	}
	icmp := header.ICMPv6(ip.Payload())
	if icmp.Type() != header.ICMPv6RouterAdvert {
		return nil, fmt.Errorf("ICMPv6 type %d", icmp.Type())
	}
	if sum := header.ICMPv6Checksum(header.ICMPv6ChecksumParams{Header: icmp, Src: ip.SourceAddress(), Dst: ip.DestinationAddress()}); sum != 0xffff && sum != 0 {
		// The checksum over a message that carries its own is all ones.
		want := icmp.Checksum()
		icmp.SetChecksum(0)
		got := header.ICMPv6Checksum(header.ICMPv6ChecksumParams{Header: icmp, Src: ip.SourceAddress(), Dst: ip.DestinationAddress()})
		icmp.SetChecksum(want)
		if got != want {
			return nil, fmt.Errorf("checksum %#04x, want %#04x", want, got)
		}
	}
	adv := header.NDPRouterAdvert(icmp.MessageBody())
	r := &ra{hopLimit: ip.HopLimit(), lifetime: adv.RouterLifetime(), managed: adv.ManagedAddrConfFlag()}
	src, dst := ip.SourceAddress(), ip.DestinationAddress()
	r.src, _ = netip.AddrFromSlice(src.AsSlice())
	r.dst, _ = netip.AddrFromSlice(dst.AsSlice())
	it, err := adv.Options().Iter(true)
	if err != nil {
		return nil, err
	}
	for {
		opt, done, err := it.Next()
		if err != nil {
			return nil, err
		}
		if done {
			break
		}
		switch o := opt.(type) {
		case header.NDPSourceLinkLayerAddressOption:
			r.srcLinkAddr = o.EthernetAddress()
		case header.NDPPrefixInformation:
			sn := o.Subnet()
			id := sn.ID()
			a, _ := netip.AddrFromSlice(id.AsSlice())
			r.prefix = netip.PrefixFrom(a, sn.Prefix())
			r.onLink, r.auto = o.OnLinkFlag(), o.AutonomousAddressConfigurationFlag()
		case header.NDPRecursiveDNSServer:
			addrs, err := o.Addresses()
			if err != nil {
				return nil, err
			}
			for _, a := range addrs {
				na, _ := netip.AddrFromSlice(a.AsSlice())
				r.rdnss = append(r.rdnss, na)
			}
		}
	}
	// gVisor does not parse the MTU option; read it by hand.
	for o := adv.Options(); len(o) >= 8 && o[1] > 0 && len(o) >= int(o[1])*8; o = o[int(o[1])*8:] {
		if o[0] == 5 {
			r.mtu = binary.BigEndian.Uint32(o[4:8])
		}
	}
	return r, nil
}

// expectRA reads frames from p until a router advertisement arrives.
func expectRA(t *testing.T, p *bridgetest.ChanPort, d time.Duration) *ra {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		f, ok := p.Expect(time.Until(deadline))
		if !ok {
			break
		}
		if r, err := parseRA(f); err == nil {
			return r
		} else if len(f) > 14+40 && f[14+6] == 58 && f[14+40] == icmpv6RouterAdvert {
			t.Fatalf("malformed advertisement: %v", err)
		}
	}
	t.Fatal("no router advertisement")
	return nil
}

// TestRouterAdvertisement: the gateway advertises at start and answers a
// solicitation with the prefix (autonomous for a /64), itself as router
// (from its link-local address, hop limit 255), the MTU and the DNS server.
func TestRouterAdvertisement(t *testing.T) {
	gw, err := New(Config{Prefix: netip.MustParsePrefix("10.77.0.1/24"), Prefix6: netip.MustParsePrefix("fd00:77::1/64"),
		MTU: 1400, DNS: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:53")}})
	if err != nil {
		t.Fatal(err)
	}
	sw := bridge.New(bridge.Config{})
	t.Cleanup(sw.Close)
	p := bridgetest.NewChanPort(256)
	if err := sw.AddPort("vm", bridge.RoleLocal, p); err != nil {
		t.Fatal(err)
	}
	if err := sw.AddPort("gw", bridge.RoleLocal, gw); err != nil {
		t.Fatal(err)
	}
	if gw.Addr6() != netip.MustParseAddr("fd00:77::1") {
		t.Fatalf("Addr6 %s", gw.Addr6())
	}
	check := func(r *ra) {
		t.Helper()
		wantSrc := netvmLinkLocal(gw.MAC())
		switch {
		case r.src != wantSrc || r.src != gw.LinkLocal():
			t.Fatalf("advertisement from %s, want %s", r.src, wantSrc)
		case r.dst != netip.IPv6LinkLocalAllNodes():
			t.Fatalf("advertisement to %s", r.dst)
		case r.hopLimit != 255:
			t.Fatalf("hop limit %d", r.hopLimit)
		case r.lifetime != raRouterLifetime*time.Second:
			t.Fatalf("router lifetime %v", r.lifetime)
		case r.managed:
			t.Fatal("M flag set, but there is no DHCPv6")
		case r.srcLinkAddr != tcpip.LinkAddress(gw.MAC()):
			t.Fatalf("source link-layer address %v", r.srcLinkAddr)
		case r.prefix != testPrefix6 || !r.onLink || !r.auto:
			t.Fatalf("prefix %s on-link %v autonomous %v", r.prefix, r.onLink, r.auto)
		case r.mtu != 1400:
			t.Fatalf("MTU %d", r.mtu)
		case len(r.rdnss) != 1 || r.rdnss[0] != gw.Addr6():
			t.Fatalf("DNS servers %v, want %s", r.rdnss, gw.Addr6())
		}
	}
	check(expectRA(t, p, 5*time.Second)) // the one at start
	before := gw.Stats()
	p.Inject(routerSolicitation(testMAC))
	check(expectRA(t, p, 5*time.Second))
	// A burst of solicitations shares advertisements (raMinGap).
	for range 50 {
		p.Inject(routerSolicitation(testMAC))
	}
	expectRA(t, p, 5*time.Second)
	time.Sleep(3 * raMinGap)
	st := gw.Stats()
	if st.RSs-before.RSs != 51 {
		t.Fatalf("%d solicitations counted, want 51", st.RSs-before.RSs)
	}
	if sent := st.RAs - before.RAs; sent < 2 || sent > 5 {
		t.Fatalf("%d advertisements for 51 solicitations in a burst, want 2 to 5", sent)
	}
}

// TestRouterAdvertisementNotSLAAC: a prefix other than a /64 is announced
// on-link but not for address autoconfiguration, and no DNS server is
// announced when there is none to relay to.
func TestRouterAdvertisementNotSLAAC(t *testing.T) {
	f := routerAdvertisement([6]byte(testMAC), netvmLinkLocal(testMAC), netip.MustParsePrefix("fd00:77::/112"), 1500, netip.Addr{})
	r, err := parseRA(f)
	if err != nil {
		t.Fatal(err)
	}
	if r.prefix != netip.MustParsePrefix("fd00:77::/112") || !r.onLink || r.auto || len(r.rdnss) != 0 || r.mtu != 1500 {
		t.Fatalf("%+v", r)
	}
	f[len(f)-1] ^= 1 // the checker must see a damaged message
	if _, err := parseRA(f); err == nil {
		t.Fatal("a damaged advertisement passed the checksum check")
	}
}

// TestNATIPv6ToTheMachine: a dual-stack VM reaches the machine's [::1]
// at the gateway's IPv6 address (and its link-local one), over TCP.
func TestNATIPv6ToTheMachine(t *testing.T) {
	ln, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback here: %v", err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	gw, err := New(Config{Prefix: netip.MustParsePrefix("10.77.0.1/24"), Prefix6: netip.MustParsePrefix("fd00:77::/64"),
		DNS: []netip.AddrPort{}})
	if err != nil {
		t.Fatal(err)
	}
	vm, err := netvm.New(netvm.Config{MAC: testMAC, Addr: netip.MustParsePrefix("10.77.0.9/24"),
		Addr6: netip.MustParsePrefix("fd00:77::9/64"), Gateway6: gw.LinkLocal()})
	if err != nil {
		gw.Close()
		t.Fatal(err)
	}
	sw := bridge.New(bridge.Config{})
	t.Cleanup(sw.Close)
	if err := sw.AddPort("gw", bridge.RoleLocal, gw); err != nil {
		t.Fatal(err)
	}
	if err := sw.AddPort("vm", bridge.RoleLocal, vm); err != nil {
		t.Fatal(err)
	}
	if gw.Addr6() != netip.MustParseAddr("fd00:77::1") {
		t.Fatalf("a bare prefix puts the gateway at %s, want fd00:77::1", gw.Addr6())
	}
	lport := uint16(ln.Addr().(*net.TCPAddr).Port)
	for _, to := range []netip.Addr{gw.Addr6(), gw.LinkLocal()} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		c, err := vm.DialTCP(ctx, netip.AddrPortFrom(to, lport))
		cancel()
		if err != nil {
			t.Fatalf("dial [%s]:%d: %v", to, lport, err)
		}
		fmt.Fprintf(c, "over IPv6 to %s\n", to)
		line, err := bufio.NewReader(c).ReadString('\n')
		c.Close()
		if err != nil || line != fmt.Sprintf("over IPv6 to %s\n", to) {
			t.Fatalf("echo: %q, %v", line, err)
		}
	}
	// And IPv4 still works beside it.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := vm.Ping(ctx, gw.Addr()); err != nil {
		t.Fatalf("IPv4 ping of the gateway: %v", err)
	}
	if _, err := vm.Ping(ctx, gw.Addr6()); err != nil {
		t.Fatalf("IPv6 ping of the gateway: %v", err)
	}
	if st := gw.Stats(); st.TCPConns != 2 {
		t.Fatalf("stats %+v, want 2 TCP connections", st)
	}
}

// TestGatewayConfig6: IPv6 prefixes the gateway refuses, each with a reason.
func TestGatewayConfig6(t *testing.T) {
	for _, p := range []string{"fe80::1/64", "ff02::1/64", "::1/128", "fd00::1/8", "fd00::1/127", "::ffff:10.0.0.1/120"} {
		_, err := New(Config{Prefix: netip.MustParsePrefix("10.77.0.1/24"), Prefix6: netip.MustParsePrefix(p), DNS: []netip.AddrPort{}})
		if err == nil {
			t.Errorf("Prefix6 %s accepted", p)
		} else {
			t.Logf("%s: %v", p, err)
		}
	}
	_, err := New(Config{Prefix: netip.MustParsePrefix("10.77.0.1/24"), Prefix6: netip.MustParsePrefix("fd00:77::1/64"),
		Forwards: []Forward{{Proto: "tcp", Listen: "127.0.0.1:0", To: netip.MustParseAddrPort("[fd00:78::5]:80")}}, DNS: []netip.AddrPort{}})
	if err == nil {
		t.Error("a forward to an address off both segments was accepted")
	}
}

// FuzzRouterSolicitation: the classifier on the gateway's write path never
// panics and agrees with gVisor's parser on what is a solicitation.
func FuzzRouterSolicitation(f *testing.F) {
	f.Add(routerSolicitation(testMAC))
	f.Add(routerAdvertisement([6]byte(testMAC), netvmLinkLocal(testMAC), testPrefix6, 1500, netip.Addr{}))
	f.Add(make([]byte, 62))
	f.Fuzz(func(t *testing.T, b []byte) {
		if !isRouterSolicitation(b) {
			return
		}
		ip := header.IPv6(b[14:])
		if len(ip) < header.IPv6MinimumSize || ip.NextHeader() != uint8(header.ICMPv6ProtocolNumber) ||
			header.ICMPv6(ip[header.IPv6MinimumSize:]).Type() != header.ICMPv6RouterSolicit {
			t.Fatalf("classified as a solicitation: % x", b)
		}
	})
}
