package gateway

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"vnet/bridge"
	"vnet/bridge/netvm"
)

// segment is a switch with the gateway and one netstack VM on it.
type segment struct {
	gw *Gateway
	vm *netvm.VM
}

func newSegment(t *testing.T, cfg Config) *segment {
	t.Helper()
	if !cfg.Prefix.IsValid() {
		cfg.Prefix = netip.MustParsePrefix("10.77.0.0/24")
	}
	gw, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	vm, err := netvm.New(netvm.Config{MAC: net.HardwareAddr{0x02, 0, 0, 0x77, 0, 5},
		Addr: netip.MustParsePrefix("10.77.0.5/24"), Gateway: gw.Addr()})
	if err != nil {
		gw.Close()
		t.Fatal(err)
	}
	sw := bridge.New(bridge.Config{})
	t.Cleanup(sw.Close) // closes both ports
	if err := sw.AddPort("gw", bridge.RoleLocal, gw); err != nil {
		t.Fatal(err)
	}
	if err := sw.AddPort("vm", bridge.RoleLocal, vm); err != nil {
		t.Fatal(err)
	}
	return &segment{gw: gw, vm: vm}
}

// echoServer listens on the machine's loopback and echoes each line.
func echoServer(t *testing.T, network string) string {
	t.Helper()
	switch network {
	case "tcp":
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
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
		return ln.Addr().String()
	default:
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { pc.Close() })
		go func() {
			buf := make([]byte, 2048)
			for {
				n, from, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				pc.WriteTo(buf[:n], from)
			}
		}()
		return pc.LocalAddr().String()
	}
}

func port(t *testing.T, addr string) uint16 {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return ap.Port()
}

// TestNATTCPToTheMachine: a VM connects to the gateway's address at a port
// where a server listens on the machine's loopback, and talks to it.
func TestNATTCPToTheMachine(t *testing.T) {
	srv := echoServer(t, "tcp")
	s := newSegment(t, Config{DNS: []netip.AddrPort{}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := s.vm.DialTCP(ctx, netip.AddrPortFrom(s.gw.Addr(), port(t, srv)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "hello through the gateway\n")
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || line != "hello through the gateway\n" {
		t.Fatalf("echo: %q, %v", line, err)
	}
	if st := s.gw.Stats(); st.TCPConns != 1 {
		t.Fatalf("stats %+v, want one TCP connection", st)
	}
}

// TestNATTCPRefused: a port nobody listens on is a reset for the VM, not a
// connection that dies later.
func TestNATTCPRefused(t *testing.T) {
	s := newSegment(t, Config{DNS: []netip.AddrPort{}})
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	free := port(t, ln.Addr().String())
	ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if c, err := s.vm.DialTCP(ctx, netip.AddrPortFrom(s.gw.Addr(), free)); err == nil {
		c.Close()
		t.Fatal("dial to a closed port succeeded")
	} else if !strings.Contains(err.Error(), "refused") {
		t.Fatalf("dial: %v, want connection refused", err)
	}
	if st := s.gw.Stats(); st.TCPRefused != 1 {
		t.Fatalf("stats %+v, want one refused", st)
	}
}

// TestNATForeignAddress: the NAT carries connections to addresses off the
// segment through the machine's sockets; the test's Dial maps the
// (unroutable, documentation) address to the loopback server, so no
// traffic leaves the machine.
func TestNATForeignAddress(t *testing.T) {
	srv := echoServer(t, "tcp")
	foreign := netip.MustParseAddrPort("192.0.2.10:80")
	var dialled string
	d := &net.Dialer{}
	s := newSegment(t, Config{DNS: []netip.AddrPort{}, Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
		dialled = addr
		if addr == foreign.String() {
			addr = srv
		}
		return d.DialContext(ctx, network, addr)
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := s.vm.DialTCP(ctx, foreign)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "x\n")
	if line, err := bufio.NewReader(c).ReadString('\n'); err != nil || line != "x\n" {
		t.Fatalf("echo %q %v", line, err)
	}
	if dialled != foreign.String() {
		t.Fatalf("gateway dialled %q, want %s", dialled, foreign)
	}
}

// TestNATUDPAndDNS: UDP to the gateway's address reaches the machine's
// loopback; DNS to the gateway is relayed to the configured resolver.
func TestNATUDPAndDNS(t *testing.T) {
	srv := echoServer(t, "udp")
	resolver := netip.MustParseAddrPort(echoServer(t, "udp")) // an echo stands in for a resolver
	s := newSegment(t, Config{DNS: []netip.AddrPort{resolver}})
	for _, dst := range []netip.AddrPort{netip.AddrPortFrom(s.gw.Addr(), port(t, srv)), netip.AddrPortFrom(s.gw.Addr(), 53)} {
		c, err := s.vm.DialUDP(dst)
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 100)
		var got string
		for try := 0; try < 20 && got == ""; try++ { // the first datagram may wait for ARP
			c.Write([]byte("query " + dst.String()))
			c.SetReadDeadline(time.Now().Add(250 * time.Millisecond))
			if n, err := c.Read(buf); err == nil {
				got = string(buf[:n])
			}
		}
		c.Close()
		if got != "query "+dst.String() {
			t.Fatalf("UDP to %s: got %q", dst, got)
		}
	}
	if st := s.gw.Stats(); st.UDPFlows != 2 || st.DNSQueries == 0 {
		t.Fatalf("stats %+v, want 2 UDP flows and DNS queries", st)
	}
}

// TestForwardTCP: a client on the machine reaches a server in the VM
// through a published port.
func TestForwardTCP(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	pub := ln.Addr().String()
	ln.Close()
	f, err := ParseForward("tcp:" + pub + "=10.77.0.5:8000")
	if err != nil {
		t.Fatal(err)
	}
	s := newSegment(t, Config{DNS: []netip.AddrPort{}, Forwards: []Forward{f}})
	vl, err := s.vm.ListenTCP(8000)
	if err != nil {
		t.Fatal(err)
	}
	defer vl.Close()
	go func() {
		c, err := vl.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		fmt.Fprintf(c, "served by %s to %s\n", c.LocalAddr(), c.RemoteAddr())
	}()
	c, err := net.DialTimeout("tcp", pub, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "served by 10.77.0.5:8000 to 10.77.0.1:") {
		t.Fatalf("through the forward: %q, %v", line, err)
	}
}

// TestForwardUDP: datagrams to a published UDP port reach the VM, and its
// answers come back to the right client.
func TestForwardUDP(t *testing.T) {
	pc0, _ := net.ListenPacket("udp", "127.0.0.1:0")
	pub := pc0.LocalAddr().String()
	pc0.Close()
	f, err := ParseForward("udp:" + pub + "=10.77.0.5:5300")
	if err != nil {
		t.Fatal(err)
	}
	s := newSegment(t, Config{DNS: []netip.AddrPort{}, Forwards: []Forward{f}})
	vpc, err := s.vm.ListenUDP(5300)
	if err != nil {
		t.Fatal(err)
	}
	defer vpc.Close()
	go func() {
		buf := make([]byte, 100)
		for {
			n, from, err := vpc.ReadFrom(buf)
			if err != nil {
				return
			}
			vpc.WriteTo(append([]byte("re: "), buf[:n]...), from)
		}
	}()
	c, err := net.Dial("udp", pub)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 100)
	var got string
	for try := 0; try < 20 && got == ""; try++ {
		c.Write([]byte("ping"))
		c.SetReadDeadline(time.Now().Add(250 * time.Millisecond))
		if n, err := c.Read(buf); err == nil {
			got = string(buf[:n])
		}
	}
	if got != "re: ping" {
		t.Fatalf("through the UDP forward: %q", got)
	}
}

func TestParseForward(t *testing.T) {
	for _, tc := range []struct {
		in, want string
	}{
		{"tcp:8080=10.0.0.5:80", "tcp::8080=10.0.0.5:80"},
		{"udp:127.0.0.1:5353=10.0.0.5:53", "udp:127.0.0.1:5353=10.0.0.5:53"},
		{"tcp:[::1]:8080=10.0.0.5:80", "tcp:[::1]:8080=10.0.0.5:80"},
		{"sctp:1=10.0.0.5:80", ""},
		{"tcp:8080", ""},
		{"tcp:0=10.0.0.5:80", ""},
		{"tcp:99999=10.0.0.5:80", ""},
		{"tcp:host:80=10.0.0.5:80", ""},
		{"tcp:8080=10.0.0.5", ""},
		{"tcp:8080=10.0.0.5:0", ""},
		{"tcp:8080=[fd00::5]:80", ""},
	} {
		f, err := ParseForward(tc.in)
		if got := f.String(); tc.want == "" && err == nil || tc.want != "" && (err != nil || got != tc.want) {
			t.Errorf("ParseForward(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

func TestGatewayConfig(t *testing.T) {
	for _, tc := range []struct {
		prefix, addr string
		ok           bool
	}{
		{"10.0.0.0/24", "10.0.0.1", true},
		{"10.0.0.1/24", "10.0.0.1", true},
		{"10.0.0.254/24", "10.0.0.254", true},
		{"10.0.0.255/24", "", false},
		{"10.0.0.0/31", "", false},
		{"fd00::/64", "", false},
	} {
		a, _, err := gatewayAddr(netip.MustParsePrefix(tc.prefix))
		if (err == nil) != tc.ok || tc.ok && a.String() != tc.addr {
			t.Errorf("gatewayAddr(%s) = %v, %v; want %s ok=%v", tc.prefix, a, err, tc.addr, tc.ok)
		}
	}
	if _, err := New(Config{Prefix: netip.MustParsePrefix("10.0.0.0/24"), DNS: []netip.AddrPort{},
		Forwards: []Forward{{Proto: "tcp", Listen: ":0", To: netip.MustParseAddrPort("10.9.0.5:80")}}}); err == nil {
		t.Fatal("a forward to an address off the segment was accepted")
	}
}

func TestResolvConf(t *testing.T) {
	got := parseResolvConf(bufio.NewScanner(strings.NewReader(
		"# comment\nsearch example.org\nnameserver 10.1.2.3\nnameserver fe80::1%eth0\nnameserver bogus\noptions ndots:2\n")))
	if fmt.Sprint(got) != "[10.1.2.3:53 [fe80::1]:53]" {
		t.Fatalf("resolvers %v", got)
	}
}

// dhcpMsg builds a client message.
func dhcpMsg(t *testing.T, mac net.HardwareAddr, typ dhcpv4.MessageType, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	t.Helper()
	m, err := dhcpv4.New(append([]dhcpv4.Modifier{dhcpv4.WithHwAddr(mac), dhcpv4.WithMessageType(typ)}, mods...)...)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestDHCPLeases(t *testing.T) {
	inUse := netip.MustParseAddr("10.77.0.3")
	s := newSegment(t, Config{Prefix: netip.MustParsePrefix("10.77.0.0/29"), DNS: []netip.AddrPort{},
		InUse: func(a netip.Addr) bool { return a == inUse }})
	d := s.gw.dhcp
	now := time.Now()
	macs := []net.HardwareAddr{{2, 0, 0, 0, 0, 1}, {2, 0, 0, 0, 0, 2}, {2, 0, 0, 0, 0, 3}, {2, 0, 0, 0, 0, 4}, {2, 0, 0, 0, 0, 5}}
	var got []string
	for _, mac := range macs[:4] {
		offer := d.handle(dhcpMsg(t, mac, dhcpv4.MessageTypeDiscover), now)
		if offer == nil || offer.MessageType() != dhcpv4.MessageTypeOffer {
			t.Fatalf("no offer for %s: %v", mac, offer)
		}
		if !offer.Router()[0].Equal(net.IP{10, 77, 0, 1}) || !offer.DNS()[0].Equal(net.IP{10, 77, 0, 1}) ||
			offer.SubnetMask().String() != "fffffff8" {
			t.Fatalf("offer options: %s", offer.Summary())
		}
		ack := d.handle(dhcpMsg(t, mac, dhcpv4.MessageTypeRequest,
			dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(offer.YourIPAddr)),
			dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IP{10, 77, 0, 1}))), now)
		if ack == nil || ack.MessageType() != dhcpv4.MessageTypeAck || !ack.YourIPAddr.Equal(offer.YourIPAddr) {
			t.Fatalf("request of %s: %v", offer.YourIPAddr, ack)
		}
		got = append(got, ack.YourIPAddr.String())
	}
	// /29: .1 is the gateway, .3 is in use, .7 is broadcast: .2 .4 .5 .6
	if strings.Join(got, " ") != "10.77.0.2 10.77.0.4 10.77.0.5 10.77.0.6" {
		t.Fatalf("leases %v", got)
	}
	// The pool is spent.
	if r := d.handle(dhcpMsg(t, macs[4], dhcpv4.MessageTypeDiscover), now); r != nil {
		t.Fatalf("offer from an empty pool: %s", r.Summary())
	}
	// A client asking for another's address gets a NAK.
	if r := d.handle(dhcpMsg(t, macs[4], dhcpv4.MessageTypeRequest,
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.IP{10, 77, 0, 2}))), now); r == nil || r.MessageType() != dhcpv4.MessageTypeNak {
		t.Fatalf("request of a leased address: %v", r)
	}
	// The same client again gets its address back.
	if r := d.handle(dhcpMsg(t, macs[1], dhcpv4.MessageTypeDiscover), now); r == nil || !r.YourIPAddr.Equal(net.IP{10, 77, 0, 4}) {
		t.Fatalf("rediscover: %v", r)
	}
	// Release frees it for the waiting client.
	d.handle(dhcpMsg(t, macs[1], dhcpv4.MessageTypeRelease), now)
	if r := d.handle(dhcpMsg(t, macs[4], dhcpv4.MessageTypeDiscover), now); r == nil || !r.YourIPAddr.Equal(net.IP{10, 77, 0, 4}) {
		t.Fatalf("after release: %v", r)
	}
	// Expired leases are reclaimed.
	later := now.Add(2 * DefaultLease)
	if r := d.handle(dhcpMsg(t, net.HardwareAddr{2, 0, 0, 0, 0, 9}, dhcpv4.MessageTypeDiscover), later); r == nil {
		t.Fatal("expired leases not reclaimed")
	}
	// A request for another server is not ours to answer.
	if r := d.handle(dhcpMsg(t, macs[0], dhcpv4.MessageTypeRequest,
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IP{10, 77, 0, 99}))), now); r != nil {
		t.Fatalf("answered a request for another server: %s", r.Summary())
	}
}

// FuzzDHCP: any datagram to port 67 is parsed and answered, or counted as
// bad, without a panic.
func FuzzDHCP(f *testing.F) {
	m, _ := dhcpv4.New(dhcpv4.WithHwAddr(net.HardwareAddr{2, 0, 0, 0, 0, 1}), dhcpv4.WithMessageType(dhcpv4.MessageTypeDiscover))
	f.Add(m.ToBytes())
	r, _ := dhcpv4.New(dhcpv4.WithHwAddr(net.HardwareAddr{2, 0, 0, 0, 0, 1}), dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.IP{10, 77, 0, 2})))
	f.Add(r.ToBytes())
	f.Add([]byte{1, 1, 6, 0})
	gw, err := New(Config{Prefix: netip.MustParsePrefix("10.77.0.0/28"), DNS: []netip.AddrPort{}})
	if err != nil {
		f.Fatal(err)
	}
	defer gw.Close()
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := dhcpv4.FromBytes(b)
		if err != nil || req.OpCode != dhcpv4.OpcodeBootRequest || len(req.ClientHWAddr) != 6 {
			return
		}
		if reply := gw.dhcp.handle(req, time.Now()); reply != nil {
			if _, err := dhcpv4.FromBytes(reply.ToBytes()); err != nil {
				t.Fatalf("our reply does not parse: %v", err)
			}
		}
	})
}

// BenchmarkNATTCP: bulk TCP from a netstack VM through the gateway's NAT to
// a sink on the machine's loopback (both stacks are in this process: the
// figure is the userspace path's cost, not a network's).
func BenchmarkNATTCP(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(io.Discard, c) }()
		}
	}()
	gw, err := New(Config{Prefix: netip.MustParsePrefix("10.77.0.0/24"), DNS: []netip.AddrPort{}})
	if err != nil {
		b.Fatal(err)
	}
	vm, err := netvm.New(netvm.Config{MAC: net.HardwareAddr{0x02, 0, 0, 0x77, 0, 5},
		Addr: netip.MustParsePrefix("10.77.0.5/24"), Gateway: gw.Addr()})
	if err != nil {
		b.Fatal(err)
	}
	sw := bridge.New(bridge.Config{})
	defer sw.Close()
	sw.AddPort("gw", bridge.RoleLocal, gw)
	sw.AddPort("vm", bridge.RoleLocal, vm)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ap, _ := netip.ParseAddrPort(ln.Addr().String())
	c, err := vm.DialTCP(ctx, netip.AddrPortFrom(gw.Addr(), ap.Port()))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 64<<10)
	b.SetBytes(int64(len(buf)))
	b.ResetTimer()
	for range b.N {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*len(buf))*8/1e6/b.Elapsed().Seconds(), "Mbit/s")
}
