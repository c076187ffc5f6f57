package main

// End-to-end tests over IPv6 in network namespaces, on the layout of
// TestE2ENetns:
//
//	switch ns:  br0 ── pup ── up  (proxy, fd00:5::1)
//	             ├──── pu1 ── u1  (host h1, fd00:5::11; TAPs t11 t12 -> ns v11 v12)
//	             └──── pu2 ── u2  (host h2, fd00:5::12; TAPs t21 t22 -> ns v21 v22)
//
// TestE2EIPv6's underlay has IPv6 addresses only (no IPv4 but loopback),
// and so do its VMs (fd88::<10i+j>/64). h1's star is UDP, h2's QUIC; the
// fast path between them is UDP, then TCP. TestE2EDualStackSTUN gives the
// underlay both families, makes the star IPv4 and checks that a host learns
// its IPv6 mapping beside its IPv4 one.

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"vnet/appliance"
	"vnet/internal/netns"
)

const (
	e2e6ProxyIP  = "fd00:5::1"
	e2e6ProxyAPI = "[::1]:7777"
	e2e6HostAPI  = "[::1]:7778"
)

// skipWithoutIPv6NS skips t when the kernel has no IPv6 or new namespaces
// get it disabled.
func skipWithoutIPv6NS(t *testing.T, e *e2eNet, ns string) {
	t.Helper()
	if _, err := os.Stat("/proc/sys/net/ipv6"); err != nil {
		t.Skip("the kernel has no IPv6 (no /proc/sys/net/ipv6)")
	}
	out, err := netns.Run(e.ctx, ns, "cat", "/proc/sys/net/ipv6/conf/default/disable_ipv6")
	if err == nil && strings.TrimSpace(out) == "1" {
		t.Skip("IPv6 is disabled in new network namespaces (net.ipv6.conf.default.disable_ipv6=1)")
	}
}

func TestE2EIPv6(t *testing.T) {
	e := newE2ENet(t, "v6", 4*time.Minute, "network namespaces, a bridge, veth pairs and TAP devices", nil,
		func(e *e2eNet) { e.dumpState6(t) })
	steps := []struct {
		name string
		f    func(t *testing.T)
	}{
		{"build", e.build},
		{"underlay", func(t *testing.T) { e.underlay6(t, false) }},
		{"daemons", e.daemons6},
		{"ping_all_pairs", func(t *testing.T) { e.allPairs(t, 15*time.Second) }},
		{"vms_ipv6", e.vmsIPv6},
		{"fast_path_udp", func(t *testing.T) { e.fastPath6(t, "udp") }},
		{"fast_path_tcp", func(t *testing.T) { e.fastPath6(t, "tcp") }},
	}
	for _, s := range steps {
		if !t.Run(s.name, s.f) {
			t.FailNow()
		}
	}
}

// underlay6 builds the switch namespace and the underlay namespaces of the
// proxy and the two hosts, with IPv6 addresses (and IPv4 ones too if
// dual).
func (e *e2eNet) underlay6(t *testing.T, dual bool) {
	e.nsSw = e.addNS(t, "sw")
	skipWithoutIPv6NS(t, e, e.nsSw)
	e.run(t, e.nsSw, "ip", "link", "add", "br0", "type", "bridge")
	e.run(t, e.nsSw, "ip", "link", "set", "br0", "up")
	attach := func(short, ip6, ip4 string) string {
		ns := e.addNS(t, short)
		peer := "p" + short
		if err := e.lab.Veth(e.ctx, e.nsSw, peer, ns, "eth0"); err != nil {
			t.Fatal(err)
		}
		e.run(t, e.nsSw, "ip", "link", "set", peer, "master", "br0", "up")
		// nodad: the address is usable at once, not tentative for a second.
		e.run(t, ns, "ip", "-6", "addr", "add", ip6+"/64", "dev", "eth0", "nodad")
		if dual {
			e.run(t, ns, "ip", "addr", "add", ip4+"/24", "dev", "eth0")
		}
		e.run(t, ns, "ip", "link", "set", "eth0", "up")
		return ns
	}
	e.nsProxy = attach("up", e2e6ProxyIP, e2eProxyIP)
	e.nsHost["h1"] = attach("u1", "fd00:5::11", "192.168.250.11")
	e.nsHost["h2"] = attach("u2", "fd00:5::12", "192.168.250.12")
	for _, h := range []string{"h1", "h2"} {
		e.pingUntil(t, e.nsHost[h], e2e6ProxyIP, 10*time.Second)
		if !dual {
			out, _ := netns.Run(e.ctx, e.nsHost[h], "ip", "-4", "-o", "addr", "show", "dev", "eth0")
			if strings.TrimSpace(out) != "" {
				t.Fatalf("%s's underlay has IPv4: %s", h, out)
			}
		}
	}
}

// daemons6 starts the proxy on [::] and the hosts (h1 with a UDP star, h2
// with a QUIC one), moves the TAP devices into VM namespaces with IPv6
// addresses and waits until both hosts are up.
func (e *e2eNet) daemons6(t *testing.T) {
	p, err := e.lab.Start("proxy", e.nsProxy, filepath.Join(e.dir, "proxy.log"), nil,
		e.bin, "proxy", "--key-file", e.key, "--listen", "tcp://[::]:5000", "--listen", "udp://[::]:5000",
		"--listen", "quic://[::]:5001", "--api", e2e6ProxyAPI)
	if err != nil {
		t.Fatal(err)
	}
	e.proxy, e.expect[p] = p, true
	e.waitFor(t, "the proxy's control API", 10*time.Second, func() (bool, string) {
		var hs []e2eHostJSON
		err := e.ctl6(&hs, "hosts")
		return err == nil, fmt.Sprint(err)
	})
	stars := map[string]string{"h1": "udp://[" + e2e6ProxyIP + "]:5000", "h2": "quic://[" + e2e6ProxyIP + "]:5001"}
	for i, h := range []string{"h1", "h2"} {
		args := []string{e.bin, "host", "--name", h, "--proxy", stars[h], "--key-file", e.key,
			"--listen", "tcp://[::]:0", "--listen", "udp://[::]:0", "--api", e2e6HostAPI}
		for j := 1; j <= 2; j++ {
			args = append(args, "--tap", fmt.Sprintf("t%d%d", i+1, j))
		}
		p, err := e.lab.Start(h, e.nsHost[h], filepath.Join(e.dir, h+".log"), nil, args...)
		if err != nil {
			t.Fatal(err)
		}
		e.hosts[h], e.expect[p] = p, true
	}
	for i, h := range []string{"h1", "h2"} {
		for j := 1; j <= 2; j++ {
			vm := &e2eVM{name: fmt.Sprintf("v%d%d", i+1, j), host: h, tap: fmt.Sprintf("t%d%d", i+1, j),
				ip: fmt.Sprintf("fd88::%d", (i+1)*10+j)}
			e.waitFor(t, "TAP "+vm.tap, 10*time.Second, func() (bool, string) {
				_, err := netns.Run(e.ctx, e.nsHost[h], "ip", "link", "show", "dev", vm.tap)
				return err == nil, fmt.Sprint(err)
			})
			vm.ns = e.addNS(t, vm.name)
			e.run(t, e.nsHost[h], "ip", "link", "set", vm.tap, "netns", vm.ns)
			e.run(t, vm.ns, "ip", "-6", "addr", "add", vm.ip+"/64", "dev", vm.tap, "nodad")
			e.run(t, vm.ns, "ip", "link", "set", vm.tap, "up")
			vm.mac = strings.ToLower(strings.TrimSpace(e.run(t, vm.ns, "cat", "/sys/class/net/"+vm.tap+"/address")))
			e.vms = append(e.vms, vm)
		}
	}
	e.waitFor(t, "2 hosts up", 15*time.Second, func() (bool, string) {
		var hs []e2eHostJSON
		if err := e.ctl6(&hs, "hosts"); err != nil {
			return false, err.Error()
		}
		up := 0
		for _, h := range hs {
			if h.State == "up" {
				up++
			}
		}
		return up == 2, fmt.Sprintf("%+v", hs)
	})
	var links []e2eLinkJSON
	if err := e.ctl6(&links, "links"); err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		want := map[string]string{"star-h1": "udp", "star-h2": "quic"}[l.Name]
		if l.Role == "star" && l.Kind != want {
			t.Errorf("star link %s is %s, want %s", l.Name, l.Kind, want)
		}
	}
	var hs []e2eHostJSON
	if err := e.ctl6(&hs, "hosts"); err != nil {
		t.Fatal(err)
	}
	for _, h := range hs {
		for _, a := range h.Addrs {
			ap, err := netip.ParseAddrPort(a)
			if err != nil || !ap.Addr().Is6() || ap.Addr().Is4In6() {
				t.Errorf("host %s reports address %q; want only IPv6 ones", h.Name, a)
			}
		}
	}
}

// ctl6 is ctl against the proxy's API on [::1].
func (e *e2eNet) ctl6(v any, args ...string) error {
	return e.ctlAt(e.nsProxy, e2e6ProxyAPI, v, args...)
}

// vmsIPv6 checks that the proxy lists the VMs with the IPv6 addresses the
// switches saw in their NDP.
func (e *e2eNet) vmsIPv6(t *testing.T) {
	e.waitFor(t, "the VMs' IPv6 addresses in `vnet ctl vms`", 10*time.Second, func() (bool, string) {
		var vms []struct {
			MAC string   `json:"mac"`
			IPs []string `json:"ips"`
		}
		if err := e.ctl6(&vms, "vms"); err != nil {
			return false, err.Error()
		}
		for _, want := range e.vms {
			found := false
			for _, v := range vms {
				found = found || v.MAC == want.mac && slices.Contains(v.IPs, want.ip)
			}
			if !found {
				return false, fmt.Sprintf("no %s %s in %+v", want.mac, want.ip, vms)
			}
		}
		return true, ""
	})
}

// fastPath6 opens the fast link h1-h2 of kind over the IPv6 underlay and
// checks that VM11 -> VM21 takes it with full-size frames and bulk TCP.
func (e *e2eNet) fastPath6(t *testing.T, kind string) {
	v11, v21 := e.vm("v11"), e.vm("v21")
	if err := e.ctl6(nil, "link", "add", "h1", "h2", "--kind", kind); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := e.ctl6(nil, "link", "del", "h1", "h2"); err != nil {
			t.Error(err)
		}
	}()
	e.waitFor(t, "fast link h1-h2 up", 20*time.Second, func() (bool, string) {
		var links []e2eLinkJSON
		if err := e.ctl6(&links, "links"); err != nil {
			return false, err.Error()
		}
		for _, l := range links {
			if l.Name == "h1-h2" {
				return l.State == "up" && l.Kind == kind, fmt.Sprintf("%+v", l)
			}
		}
		return false, "no link h1-h2"
	})
	e.waitFor(t, "the route over the fast path", 10*time.Second, func() (bool, string) {
		e.pingOnce(v11.ns, v21.ip) // the switches learn where the MACs are
		var r e2eRouteJSON
		if err := e.ctl6(&r, "route", v11.mac, v21.mac); err != nil {
			return false, err.Error()
		}
		return r.String() == e2eRouteFast, r.String()
	})
	// The largest unfragmented IPv6 packet of a 1500-byte MTU: 1452 bytes
	// of ICMPv6 payload, a 1514-byte frame.
	e.pingUntil(t, v11.ns, v21.ip, 5*time.Second)
	ctx, cancel := context.WithTimeout(e.ctx, 10*time.Second)
	out, err := netns.Run(ctx, v11.ns, "ping", "-M", "do", "-s", "1452", "-c", "3", "-W", "2", v21.ip)
	cancel()
	if err != nil {
		t.Fatalf("1452-byte ping over the %s fast path: %v\n%s", kind, err, out)
	}
	var before e2eLinkJSON
	if before, err = e.link6("h1-h2"); err != nil {
		t.Fatal(err)
	}
	e.transfer(t, v11, v21, e2eXferBytes)
	e.waitFor(t, "the transfer counted on the fast link", 10*time.Second, func() (bool, string) {
		l, err := e.link6("h1-h2")
		if err != nil {
			return false, err.Error()
		}
		return l.TxBytes-before.TxBytes >= e2eXferBytes, fmt.Sprintf("tx_bytes %d -> %d", before.TxBytes, l.TxBytes)
	})
}

func (e *e2eNet) link6(name string) (e2eLinkJSON, error) {
	var links []e2eLinkJSON
	if err := e.ctl6(&links, "links"); err != nil {
		return e2eLinkJSON{}, err
	}
	for _, l := range links {
		if l.Name == name {
			return l, nil
		}
	}
	return e2eLinkJSON{}, fmt.Errorf("no link %s", name)
}

func (e *e2eNet) dumpState6(t *testing.T) {
	if e.proxy != nil {
		if done, _ := e.proxy.Exited(); !done {
			for _, what := range []string{"hosts", "links", "vms"} {
				var v any
				err := e.ctl6(&v, what)
				t.Logf("vnet ctl %s: %v %v", what, v, err)
			}
		}
	}
	for _, p := range e.lab.Procs() {
		t.Logf("----- %s (%s) -----\n%s", p.Name, p.Log, p.Output())
	}
}

// TestE2EDualStackSTUN: with both families on the underlay and the star
// over IPv4, a host probes the proxy's STUN ports on its IPv6 address too
// and reports a mapping of each family.
func TestE2EDualStackSTUN(t *testing.T) {
	e := newE2ENet(t, "ds", 2*time.Minute, "network namespaces, a bridge and veth pairs", nil,
		func(e *e2eNet) { e.dumpState6(t) })
	if !t.Run("build", e.build) || !t.Run("underlay", func(t *testing.T) { e.underlay6(t, true) }) {
		t.FailNow()
	}
	p, err := e.lab.Start("proxy", e.nsProxy, filepath.Join(e.dir, "proxy.log"), nil,
		e.bin, "proxy", "--key-file", e.key, "--listen", "udp://:5000", "--api", e2e6ProxyAPI)
	if err != nil {
		t.Fatal(err)
	}
	e.proxy, e.expect[p] = p, true
	h, err := e.lab.Start("h1", e.nsHost["h1"], filepath.Join(e.dir, "h1.log"), nil,
		e.bin, "host", "--name", "h1", "--proxy", "udp://"+e2eProxyIP+":5000", "--key-file", e.key,
		"--listen", "udp://:0", "--api", e2e6HostAPI)
	if err != nil {
		t.Fatal(err)
	}
	e.hosts["h1"], e.expect[h] = h, true
	e.waitFor(t, "h1's IPv4 and IPv6 mappings", 20*time.Second, func() (bool, string) {
		var st appliance.Status
		if err := e.ctlAt(e.nsHost["h1"], e2e6HostAPI, &st, "status"); err != nil {
			return false, err.Error()
		}
		var v4, v6 bool
		for _, r := range st.Reflexive {
			ap, err := netip.ParseAddrPort(r)
			v4 = v4 || err == nil && ap.Addr() == netip.MustParseAddr("192.168.250.11")
			v6 = v6 || err == nil && ap.Addr() == netip.MustParseAddr("fd00:5::11")
		}
		return v4 && v6 && st.NAT == "none", fmt.Sprintf("reflexive %v, nat %q", st.Reflexive, st.NAT)
	})
	var hs []e2eHostJSON
	if err := e.ctl6(&hs, "hosts"); err != nil {
		t.Fatal(err)
	}
	if len(hs) != 1 || !slices.ContainsFunc(hs[0].Addrs, func(a string) bool { return strings.HasPrefix(a, "[fd00:5::11]:") }) {
		t.Errorf("proxy's hosts: %+v; want h1 with an address on fd00:5::11", hs)
	}
}
