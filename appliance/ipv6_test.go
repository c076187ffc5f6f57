package appliance

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"vnet/infer"
	"vnet/tunnel"
)

// skipWithoutIPv6 skips t when this machine cannot use IPv6 on loopback
// (the kernel built without it, or disabled by sysctl).
func skipWithoutIPv6(t *testing.T) {
	t.Helper()
	if b, err := os.ReadFile("/proc/sys/net/ipv6/conf/lo/disable_ipv6"); err == nil && strings.TrimSpace(string(b)) == "1" {
		t.Skip("IPv6 is disabled on loopback (net.ipv6.conf.lo.disable_ipv6=1)")
	}
	ln, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Skipf("IPv6 loopback unusable: %v", err)
	}
	ln.Close()
}

// newTestNet6 is newTestNetKind over IPv6: the proxy and the hosts listen on
// ::1 only and the VMs have addresses in fd77::/64.
func newTestNet6(t *testing.T, kind string, nHosts, vmsPer int) *testNet {
	t.Helper()
	key, _ := tunnel.GenerateKey()
	n := &testNet{t: t, key: key, kind: kind, hosts: map[string]*Host{}, v6: true}
	n.startProxy(nil)
	n.addHosts(nHosts, vmsPer, infer.AccountConfig{})
	return n
}

// TestIPv6 runs a proxy and two hosts on ::1 for each link kind: the star
// links and the fast path between the hosts go over IPv6, and netstack VMs
// with IPv6 addresses exchange TCP through the overlay (NDP's multicast
// crosses the star; the traffic is counted as IP traffic by inference).
func TestIPv6(t *testing.T) {
	skipWithoutIPv6(t)
	for _, kind := range []string{"tcp", "udp", "quic"} {
		t.Run(kind, func(t *testing.T) { testIPv6(t, kind) })
	}
}

func testIPv6(t *testing.T, kind string) {
	n := newTestNet6(t, kind, 2, 1)
	for _, a := range n.proxy.Addrs() {
		if ap, err := netip.ParseAddrPort(a); err != nil || ap.Addr() != netip.IPv6Loopback() {
			t.Fatalf("proxy listens on %q, want [::1]:port", a)
		}
	}
	a, b := n.vms[0], n.vms[1]
	if !a.Addr().Is6() || !b.Addr().Is6() {
		t.Fatalf("VM addresses %v %v, want IPv6", a.Addr(), b.Addr())
	}
	// Over the star: NDP resolves b's MAC by multicast, flooded on the star.
	if err := exchange(a, b, 64<<10); err != nil {
		t.Fatal(err)
	}
	for _, l := range n.proxy.links() {
		if l.Role == "star" && l.Kind != kind {
			t.Fatalf("star link %s is %s, want %s", l.Name, l.Kind, kind)
		}
	}
	for _, h := range n.proxy.hosts() {
		if len(h.Addrs) == 0 {
			t.Fatalf("host %s reports no addresses", h.Name)
		}
		for _, s := range h.Addrs {
			if !strings.Contains(s, "[::1]:") {
				t.Fatalf("host %s reports address %q, want one on [::1]", h.Name, s)
			}
		}
	}
	n.waitFor("hosts to report their VMs and IPv6 addresses", 5*time.Second, func() bool {
		vms := n.proxy.VMs()
		if len(vms) != 2 {
			return false
		}
		for _, v := range vms {
			found := false
			for _, ip := range v.IPs {
				if addr, err := netip.ParseAddr(ip); err == nil && addr.Is6() {
					found = true
				}
			}
			if !found {
				return false
			}
		}
		return true
	})

	// A fast path over IPv6: the route goes direct and the link carries it.
	fastKind := ""
	if kind != "quic" {
		fastKind = kind
	}
	if _, err := n.proxy.addLink("h1", "h2", fastKind); err != nil {
		t.Fatal(err)
	}
	n.waitFor("fast link up", 15*time.Second, func() bool { return n.linkInfo("h1-h2").State == "up" })
	n.waitFor("route over the fast path", 5*time.Second, func() bool {
		return n.route(a, b) == "h1:link:h1-h2 h2:port:vm1 delivered=true" &&
			n.route(b, a) == "h2:link:h1-h2 h1:port:vm1 delivered=true"
	})
	n.hosts["h1"].mu.Lock()
	fast := n.hosts["h1"].mu.fast["h1-h2"]
	n.hosts["h1"].mu.Unlock()
	if fast == nil {
		t.Fatal("h1 has no fast link h1-h2")
	}
	if ra := addrIP(fast.RemoteAddr()); ra != netip.IPv6Loopback() {
		t.Fatalf("fast link's peer address %v, want ::1", fast.RemoteAddr())
	}
	want := kind
	if kind == "quic" {
		want = "udp" // QUIC is for the star; an unspecified fast path is UDP when both ends have it
	}
	if fk := fast.Kind(); fk != want {
		t.Errorf("fast link kind %s, want %s", fk, want)
	}
	before := n.linkInfo("h1-h2")
	if err := exchange(a, b, 1<<20); err != nil {
		n.logSwitches()
		t.Fatal(err)
	}
	// The echo may start back over the star until h2 has the link too:
	// count the way out whole and some of the way back.
	n.waitFor("the transfer counted on the fast path", 10*time.Second, func() bool {
		l := n.linkInfo("h1-h2")
		return l.TxBytes-before.TxBytes >= 1<<20 && l.RxBytes-before.RxBytes >= 1<<18
	})
	// Inference counts the IPv6 traffic between the two VMs.
	n.waitFor("the IPv6 traffic in the global matrix", 10*time.Second, func() bool {
		for _, e := range n.proxy.agg.Matrix(time.Minute).Entries {
			if e.Src == a.MAC().String() && e.Dst == b.MAC().String() && e.Bytes >= 1<<20 {
				return true
			}
		}
		return false
	})
}

// logSwitches logs every host's port counters (for a failed transfer).
func (n *testNet) logSwitches() {
	for name, h := range n.hosts {
		for _, st := range h.sw.Stats() {
			n.t.Logf("%s %s: rx %d tx %d drops %v", name, st.Name, st.RxFrames, st.TxFrames, st.Drops)
		}
	}
	for _, st := range n.proxy.sw.Stats() {
		n.t.Logf("proxy %s: rx %d tx %d drops %v", st.Name, st.RxFrames, st.TxFrames, st.Drops)
	}
}

func TestOtherFamily(t *testing.T) {
	addrs := []string{"192.0.2.1", "198.51.100.1", "2001:db8::1", "fe80::1", "::1", "127.0.0.1", "fd00::1", "junk", "::ffff:203.0.113.1"}
	cases := []struct {
		star string
		dual bool
		want string
	}{
		{"192.0.2.1", true, "[2001:db8::1 fd00::1]"},
		{"192.0.2.1", false, "[]"}, // an IPv4 socket cannot probe IPv6
		{"2001:db8::1", true, "[192.0.2.1 198.51.100.1 203.0.113.1]"},
		{"2001:db8::1", false, "[]"}, // bound to one IPv6 address
		{"127.0.0.1", true, "[::1]"},
		{"::1", true, "[127.0.0.1]"},
	}
	for _, c := range cases {
		got := otherFamily(netip.MustParseAddr(c.star), addrs, c.dual)
		if s := fmt.Sprint(got); s != c.want && !(len(got) == 0 && c.want == "[]") {
			t.Errorf("otherFamily(%s, dual=%v) = %s, want %s", c.star, c.dual, s, c.want)
		}
	}
	many := []string{"2001:db8::1", "2001:db8::2", "2001:db8::3", "2001:db8::4", "2001:db8::5"}
	if got := otherFamily(netip.MustParseAddr("192.0.2.1"), many, true); len(got) != maxOtherFamily {
		t.Errorf("otherFamily took %d addresses, want at most %d", len(got), maxOtherFamily)
	}
}
