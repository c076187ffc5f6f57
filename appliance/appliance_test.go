package appliance

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"vnet/bridge/netvm"
	"vnet/infer"
	"vnet/tunnel"
)

func TestMain(m *testing.M) {
	// Fast timers: a dead link in ~1 s, status twice a second.
	tunnel.KeepaliveInterval, tunnel.DeadAfter = 100*time.Millisecond, time.Second
	StatusInterval, StatusRefresh = 100*time.Millisecond, time.Second
	ProxyBackoffMin, ProxyBackoffMax = 50*time.Millisecond, 500*time.Millisecond
	FastBackoffMin, FastBackoffMax = 50*time.Millisecond, 500*time.Millisecond
	goleak.VerifyTestMain(m)
}

var (
	loopback  = []tunnel.Endpoint{{Kind: "tcp", Addr: "127.0.0.1:0"}, {Kind: "udp", Addr: "127.0.0.1:0"}}
	loopback6 = []tunnel.Endpoint{{Kind: "tcp", Addr: "[::1]:0"}, {Kind: "udp", Addr: "[::1]:0"}}
)

type testVM struct {
	*netvm.VM
	host string
	ln   net.Listener
}

type testNet struct {
	t       testing.TB
	key     tunnel.Key
	kind    string
	proxy   *Proxy
	proxyEP tunnel.Endpoint
	hosts   map[string]*Host
	vms     []*testVM
	hostAPI bool // hosts serve the control API on loopback
	v6      bool // underlay on ::1 and VMs on fd77::/64 (newTestNet6)
}

// newTestNet starts a proxy and nHosts hosts with vmsPer netstack VMs each,
// all on loopback, and waits until every host is up.
func newTestNet(t *testing.T, nHosts, vmsPer int) *testNet {
	return newTestNetKind(t, "tcp", nHosts, vmsPer)
}

// newTestNetKind is newTestNet with star links of the given kind.
func newTestNetKind(t *testing.T, kind string, nHosts, vmsPer int) *testNet {
	t.Helper()
	key, _ := tunnel.GenerateKey()
	n := &testNet{t: t, key: key, kind: kind, hosts: map[string]*Host{}}
	n.startProxy(nil)
	n.addHosts(nHosts, vmsPer, infer.AccountConfig{})
	return n
}

// addHosts starts nHosts hosts on loopback with vmsPer netstack VMs each
// (each VM serves an echo on port 7000), joined to n's proxy, arranges
// their cleanup and waits until every host is up.
func (n *testNet) addHosts(nHosts, vmsPer int, acct infer.AccountConfig) {
	t := n.t
	t.Helper()
	for h := 1; h <= nHosts; h++ {
		name := fmt.Sprintf("h%d", h)
		var ports []LocalPort
		for v := 1; v <= vmsPer; v++ {
			addr := netip.MustParsePrefix(fmt.Sprintf("10.77.0.%d/24", h*10+v))
			if n.v6 {
				addr = netip.MustParsePrefix(fmt.Sprintf("fd77::%d/64", h*10+v))
			}
			vm, err := netvm.New(netvm.Config{
				MAC:  net.HardwareAddr{0x52, 0x54, 0, 0, byte(h), byte(v)},
				Addr: addr,
			})
			if err != nil {
				t.Fatal(err)
			}
			ln, err := vm.ListenTCP(7000)
			if err != nil {
				t.Fatal(err)
			}
			go echoServer(ln)
			n.vms = append(n.vms, &testVM{VM: vm, host: name, ln: ln})
			// Through a cable, so that a test can migrate the VM.
			ports = append(ports, LocalPort{Name: fmt.Sprintf("vm%d", v), Port: vm.Plug()})
		}
		listen := loopback
		if n.v6 {
			listen = loopback6
		}
		hc := HostConfig{Name: name, Proxies: []tunnel.Endpoint{n.proxyEP}, Key: n.key,
			Listen: listen, Ports: ports, Infer: acct}
		if n.hostAPI {
			hc.API = "127.0.0.1:0"
		}
		host, err := NewHost(hc)
		if err != nil {
			t.Fatal(err)
		}
		n.hosts[name] = host
	}
	t.Cleanup(func() {
		for _, vm := range n.vms {
			vm.ln.Close()
		}
		for _, h := range n.hosts {
			h.Close()
		}
		n.proxy.Close()
		for _, vm := range n.vms {
			vm.Close()
		}
	})
	n.waitHostsUp(nHosts)
}

// startProxy starts a proxy listening on tcp, udp and quic, on the given
// addresses (nil: any free ports on loopback).
func (n *testNet) startProxy(addrs []string) {
	n.t.Helper()
	kinds := []string{"tcp", "udp", "quic"}
	var eps []tunnel.Endpoint
	for i, k := range kinds {
		a := "127.0.0.1:0"
		if n.v6 {
			a = "[::1]:0"
		}
		if addrs != nil {
			a = addrs[i]
		}
		eps = append(eps, tunnel.Endpoint{Kind: k, Addr: a})
	}
	p, err := NewProxy(ProxyConfig{Listen: eps, Key: n.key})
	if err != nil {
		n.t.Fatal(err)
	}
	n.proxy = p
	n.proxyEP = tunnel.Endpoint{Kind: n.kind, Addr: p.Addrs()[slices.Index(kinds, n.kind)]}
}

func (n *testNet) waitFor(what string, d time.Duration, ok func() bool) {
	n.t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			n.t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (n *testNet) waitHostsUp(want int) {
	n.waitFor(fmt.Sprintf("%d hosts up", want), 10*time.Second, func() bool {
		up := 0
		for _, h := range n.proxy.hosts() {
			if h.State == "up" {
				up++
			}
		}
		return up == want
	})
}

func echoServer(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			io.Copy(c, c)
		}()
	}
}

// exchange sends size random bytes from a to b's echo server and checks that
// every byte comes back.
func exchange(a, b *testVM, size int) error {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := a.DialTCP(ctx, netip.AddrPortFrom(b.Addr(), 7000))
	if err != nil {
		return fmt.Errorf("%s -> %s: dial: %w", a.Addr(), b.Addr(), err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	data := make([]byte, size)
	rand.Read(data)
	errc := make(chan error, 1)
	go func() { _, err := c.Write(data); errc <- err }()
	got := make([]byte, size)
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("%s -> %s: read: %w", a.Addr(), b.Addr(), err)
	}
	if err := <-errc; err != nil {
		return fmt.Errorf("%s -> %s: write: %w", a.Addr(), b.Addr(), err)
	}
	if !bytes.Equal(got, data) {
		return fmt.Errorf("%s -> %s: data corrupted", a.Addr(), b.Addr())
	}
	return nil
}

func (n *testNet) allPairs(size int) {
	n.t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, len(n.vms)*len(n.vms))
	for _, a := range n.vms {
		for _, b := range n.vms {
			if a == b {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := exchange(a, b, size); err != nil {
					errs <- err
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		n.t.Error(err)
	}
	if n.t.Failed() {
		n.t.FailNow()
	}
}

func routeString(r Route) string {
	var s []string
	for _, h := range r.Hops {
		s = append(s, h.Host+":"+h.To)
	}
	return strings.Join(s, " ") + fmt.Sprintf(" delivered=%v", r.Delivered)
}

func (n *testNet) route(a, b *testVM) string {
	n.t.Helper()
	r, err := n.proxy.route(context.Background(), mac6(a.MAC()), mac6(b.MAC()))
	if err != nil {
		n.t.Fatal(err)
	}
	return routeString(r)
}

func TestStarFastPathAndProxyRestart(t *testing.T) {
	for _, kind := range []string{"tcp", "udp", "quic"} {
		t.Run(kind, func(t *testing.T) { testStarFastPathAndProxyRestart(t, kind) })
	}
}

func testStarFastPathAndProxyRestart(t *testing.T, kind string) {
	n := newTestNetKind(t, kind, 3, 2)
	n.allPairs(64 << 10)

	a, b := n.vms[0], n.vms[2] // h1/vm1, h2/vm1
	n.waitFor("hosts to report their VMs", 5*time.Second, func() bool { return len(n.proxy.VMs()) == len(n.vms) })
	if got, want := n.route(a, b), "h1:link:star-h1 proxy:link:star-h2 h2:port:vm1 delivered=true"; got != want {
		t.Fatalf("route through the star = %q, want %q", got, want)
	}

	// A fast path: the route goes direct, and traffic still flows.
	if _, err := n.proxy.addLink("h1", "h2", ""); err != nil {
		t.Fatal(err)
	}
	n.waitFor("fast link up", 10*time.Second, func() bool {
		for _, l := range n.proxy.links() {
			if l.Name == "h1-h2" && l.State == "up" {
				return true
			}
		}
		return false
	})
	n.waitFor("route over the fast path", 5*time.Second, func() bool {
		return n.route(a, b) == "h1:link:h1-h2 h2:port:vm1 delivered=true"
	})
	if err := exchange(a, b, 1<<20); err != nil {
		t.Fatal(err)
	}
	n.waitFor("the transfer counted on the fast path", 5*time.Second, func() bool {
		fast := n.linkInfo("h1-h2")
		return fast.TxBytes >= 1<<20 && fast.RxBytes >= 1<<20
	})
	// Hosts on one machine share its loopback: the local path, made
	// directly, to the peer's loopback address.
	if fast := n.linkInfo("h1-h2"); fast.Via != "direct" || fast.Path != "local" || !strings.HasPrefix(fast.Addr, "127.0.0.1:") {
		t.Errorf("fast link h1-h2 via %q, path %q, addr %q; want direct, local, 127.0.0.1:*", fast.Via, fast.Path, fast.Addr)
	}

	// Export, then apply the export: nothing changes.
	if res, err := n.proxy.apply(n.proxy.export(), applyOpts{}); err != nil || len(res.Changes) != 0 {
		t.Fatalf("re-applying the export: %v %v", res.Changes, err)
	}

	// Kill the fast path's connection: traffic falls back to the star at once
	// and the link comes back by itself.
	n.hosts["h1"].mu.Lock()
	n.hosts["h1"].mu.fast["h1-h2"].Close()
	n.hosts["h1"].mu.Unlock()
	if err := exchange(a, b, 256<<10); err != nil {
		t.Fatal(err)
	}
	n.waitFor("fast link back", 10*time.Second, func() bool { return n.linkInfo("h1-h2").State == "up" })

	// Remove it: back to the star.
	if _, err := n.proxy.delLink("h1", "h2"); err != nil {
		t.Fatal(err)
	}
	n.waitFor("route back on the star", 10*time.Second, func() bool {
		// Traffic makes the switches learn where the MACs are again.
		if err := exchange(a, b, 16<<10); err != nil {
			t.Fatal(err)
		}
		return n.route(a, b) == "h1:link:star-h1 proxy:link:star-h2 h2:port:vm1 delivered=true"
	})

	// A rule, then the proxy dies and comes back on the same address: hosts
	// rejoin by themselves and the rule and a fast link are adopted from them.
	if _, err := n.proxy.addLink("h2", "h3", ""); err != nil {
		t.Fatal(err)
	}
	if err := n.proxy.addRule(RuleInfo{Host: "h3", Src: "any", Dst: b.MAC().String(), To: "link:h2-h3"}); err != nil {
		t.Fatal(err)
	}
	n.waitFor("fast link h2-h3 up", 10*time.Second, func() bool { return n.linkInfo("h2-h3").State == "up" })
	addrs := n.proxy.Addrs()
	n.proxy.Close()
	start := time.Now()
	n.startProxy(addrs)
	n.waitHostsUp(3)
	t.Logf("hosts rejoined %v after the proxy restarted", time.Since(start).Round(time.Millisecond))
	n.allPairs(32 << 10)
	n.waitFor("adopted state", 5*time.Second, func() bool {
		return n.linkInfo("h2-h3").State == "up" && len(n.proxy.rules()) == 1
	})
	if got := n.route(n.vms[4], b); got != "h3:link:h2-h3 h2:port:vm1 delivered=true" {
		t.Fatalf("after restart, rule route = %q", got)
	}
}

func (n *testNet) linkInfo(name string) LinkInfo {
	for _, l := range n.proxy.links() {
		if l.Name == name {
			return l
		}
	}
	return LinkInfo{}
}

func TestWrongKeyRefused(t *testing.T) {
	n := newTestNet(t, 1, 1)
	other, _ := tunnel.GenerateKey()
	h, err := NewHost(HostConfig{Name: "intruder", Proxies: []tunnel.Endpoint{n.proxyEP}, Key: other,
		Listen: loopback})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	n.waitFor("the intruder to give up a first time", 5*time.Second, func() bool {
		h.mu.Lock()
		defer h.mu.Unlock()
		return h.mu.starErr != ""
	})
	h.mu.Lock()
	msg := h.mu.starErr
	h.mu.Unlock()
	if !strings.Contains(msg, "authentication failed") {
		t.Fatalf("intruder's error = %q, want authentication failed", msg)
	}
	for _, hi := range n.proxy.hosts() {
		if hi.Name == "intruder" {
			t.Fatal("the proxy admitted a host with the wrong key")
		}
	}
}

func TestRuleValidation(t *testing.T) {
	n := newTestNet(t, 2, 1)
	bad := []RuleInfo{
		{Host: "h9", Src: "any", Dst: "any", To: "link:star-h9"},
		{Host: "h1", Src: "any", Dst: "any", To: "link:h1-h2"}, // no such link yet
		{Host: "h1", Src: "any", Dst: "any", To: "port:nope"},
		{Host: "h1", Src: "zz", Dst: "any", To: "port:vm1"},
	}
	for _, r := range bad {
		if err := n.proxy.addRule(r); err == nil {
			t.Errorf("rule %+v accepted", r)
		}
	}
	good := RuleInfo{Host: "h1", Src: "any", Dst: "any", To: "port:vm1"}
	n.waitFor("h1's ports reported", 5*time.Second, func() bool { return n.proxy.addRule(good) == nil })
	if err := n.proxy.addRule(good); err == nil {
		t.Error("duplicate rule accepted")
	}
	n.waitFor("rule installed on h1", 5*time.Second, func() bool { return len(n.hosts["h1"].Switch().Rules()) == 1 })
	if err := n.proxy.delRule(good); err != nil {
		t.Fatal(err)
	}
	n.waitFor("rule removed on h1", 5*time.Second, func() bool { return len(n.hosts["h1"].Switch().Rules()) == 0 })
}

// The addresses of a daemon's own TAP devices are never candidates: they
// are VMs' addresses, reached through the overlay itself.
func TestCandidatesSkipOwnDevices(t *testing.T) {
	lo := ""
	ifaces, _ := net.Interfaces()
	for _, ifc := range ifaces {
		if ifc.Flags&net.FlagLoopback != 0 {
			lo = ifc.Name
		}
	}
	if lo == "" {
		t.Skip("no loopback interface")
	}
	bound := &net.UDPAddr{IP: net.IPv4zero, Port: 5000}
	has := func(addrs []string) bool { return slices.Contains(addrs, "127.0.0.1:5000") }
	if all := candidateAddrs(bound, true, nil); !has(all) {
		t.Fatalf("candidates %v lack the loopback address", all)
	}
	if got := candidateAddrs(bound, true, map[string]bool{lo: true}); has(got) {
		t.Fatalf("candidates %v offer %s's address although it is one of ours", got, lo)
	}
}

// TestLostAnnouncementRepeated: a fast link's peer announces its VMs in
// control messages, which a UDP link may lose (and which can arrive before
// the link is attached). Hosts repeat them, so a lost one heals by itself
// even when no frame flows.
func TestLostAnnouncementRepeated(t *testing.T) {
	n := newTestNetKind(t, "udp", 2, 1)
	n.allPairs(1 << 10) // the hosts learn their VMs' MACs
	if _, err := n.proxy.addLink("h1", "h2", ""); err != nil {
		t.Fatal(err)
	}
	h1, vm := n.hosts["h1"], mac6(n.vms[1].MAC())
	announced := func() bool {
		for _, e := range h1.sw.MACs() {
			if e.MAC == vm {
				return e.Announced && e.Port == "h1-h2"
			}
		}
		return false
	}
	n.waitFor("h2's VM announced on h1-h2", 10*time.Second, announced)
	if !h1.sw.Forget(vm) {
		t.Fatal("no entry to forget")
	}
	if announced() {
		t.Fatal("the entry survived Forget")
	}
	n.waitFor("the announcement repeated", 3*StatusRefresh, announced)
}
