package main

// End-to-end test of path MTU without splitting (--fragment=false): the
// underlay between the daemons carries 1280-byte IP packets, the VMs' TAP
// devices have MTU 1500, and the star links are udp://.
//
//	switch ns:  br0 (MTU 1280) ── pup ── up  (proxy, 192.168.250.1)
//	             ├──────────────── pu1 ── u1  (host h1; TAP t11 -> ns v11, 10.88.0.11, fd88::11)
//	             └──────────────── pu2 ── u2  (host h2; TAP t21 -> ns v21, 10.88.0.21, fd88::21)

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"vnet/internal/netns"
)

const e2eMTUProxyURL = "udp://" + e2eProxyIP + ":5000"

func TestE2EMTU(t *testing.T) {
	e := newE2ENet(t, "vm", 3*time.Minute, "network namespaces, a bridge, veth pairs and TAP devices", nil,
		func(e *e2eNet) { e.dumpState(t) })
	steps := []struct {
		name string
		f    func(t *testing.T)
	}{
		{"build", e.build},
		{"underlay_1280", e.underlay1280},
		{"daemons", e.mtuDaemons},
		{"ping", func(t *testing.T) { e.pingUntil(t, e.vm("v11").ns, e.vm("v21").ip, 15*time.Second) }},
		{"tcp_transfer_mss_clamped", e.mtuTransfer},
		{"ping_df_too_big", e.mtuPingTooBig},
		{"ipv6_packet_too_big", e.mtuPing6},
	}
	for _, s := range steps {
		if !t.Run(s.name, s.f) {
			t.FailNow()
		}
	}
}

// underlay1280 is the usual underlay with every veth and the bridge at
// MTU 1280, and checks that a larger packet with DF really does not pass.
func (e *e2eNet) underlay1280(t *testing.T) {
	e.underlay(t)
	for _, dev := range []string{"pup", "pu1", "pu2", "br0"} {
		e.run(t, e.nsSw, "ip", "link", "set", "dev", dev, "mtu", "1280")
	}
	for _, ns := range []string{e.nsProxy, e.nsHost["h1"], e.nsHost["h2"]} {
		e.run(t, ns, "ip", "link", "set", "dev", "eth0", "mtu", "1280")
	}
	if out, err := e.pingOut(e.nsHost["h1"], "-M", "do", "-s", "1300", e2eProxyIP); err == nil {
		t.Fatalf("a 1328-byte packet crossed the 1280-byte underlay:\n%s", out)
	}
	e.pingUntil(t, e.nsHost["h1"], e2eProxyIP, 5*time.Second)
}

func (e *e2eNet) mtuDaemons(t *testing.T) {
	mtu := []string{"--fragment=false", "--underlay-mtu", "1280"}
	p, err := e.lab.Start("proxy", e.nsProxy, e.dir+"/proxy.log", nil, append([]string{e.bin, "proxy", "--key-file", e.key,
		"--listen", e2eMTUProxyURL, "--api", e2eProxyAPI}, mtu...)...)
	if err != nil {
		t.Fatal(err)
	}
	e.proxy, e.expect[p] = p, true
	for i, h := range []string{"h1", "h2"} {
		args := append([]string{e.bin, "host", "--name", h, "--proxy", e2eMTUProxyURL, "--key-file", e.key,
			"--listen", "udp://:0", "--tap", fmt.Sprintf("t%d1", i+1), "--api", e2eHostAPI}, mtu...)
		p, err := e.lab.Start(h, e.nsHost[h], e.dir+"/"+h+".log", nil, args...)
		if err != nil {
			t.Fatal(err)
		}
		e.hosts[h], e.expect[p] = p, true
	}
	for i, h := range []string{"h1", "h2"} {
		vm := &e2eVM{name: fmt.Sprintf("v%d1", i+1), host: h, tap: fmt.Sprintf("t%d1", i+1), ip: fmt.Sprintf("10.88.0.%d1", i+1)}
		e.tapVM(t, e.nsHost[h], vm)
		e.run(t, vm.ns, "ip", "-6", "addr", "add", fmt.Sprintf("fd88::%d1/64", i+1), "dev", vm.tap, "nodad")
		if got := strings.TrimSpace(e.run(t, vm.ns, "cat", "/sys/class/net/"+vm.tap+"/mtu")); got != "1500" {
			t.Fatalf("%s's MTU is %s, want 1500", vm.name, got)
		}
	}
	e.waitHostsUp(t, 15*time.Second)
	var ls []e2eLinkJSON
	if err := e.ctl(&ls, "links"); err != nil {
		t.Fatal(err)
	}
	for _, l := range ls {
		if l.Kind != "udp" {
			t.Fatalf("link %s is %s, want udp", l.Name, l.Kind)
		}
	}
}

// tooBig is the too-big drop count of port on the daemon (h1, h2 or proxy).
func (e *e2eNet) tooBig(t *testing.T, daemon, port string) uint64 {
	t.Helper()
	var st struct {
		Ports []struct {
			Name  string            `json:"name"`
			Drops map[string]uint64 `json:"drops"`
		} `json:"ports"`
	}
	var err error
	if daemon == "proxy" {
		err = e.ctl(&st, "status")
	} else {
		err = e.ctlAt(e.nsHost[daemon], e2eHostAPI, &st, "status")
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range st.Ports {
		if p.Name == port {
			return p.Drops["too-big"]
		}
	}
	t.Fatalf("%s has no port %s", daemon, port)
	return 0
}

func (e *e2eNet) tooBigAll(t *testing.T) uint64 {
	return e.tooBig(t, "h1", "star-h1") + e.tooBig(t, "h2", "star-h2") + e.tooBig(t, "proxy", "star-h1") +
		e.tooBig(t, "proxy", "star-h2")
}

// mtuTransfer: TCP between two MTU-1500 VMs crosses, and it is the MSS
// clamp that fits its segments (a SYN's MSS 1460 lowered to 1144): not
// one segment is too big on the way.
func (e *e2eNet) mtuTransfer(t *testing.T) {
	before := e.tooBigAll(t)
	e.transfer(t, e.vm("v11"), e.vm("v21"), 8<<20)
	e.transfer(t, e.vm("v21"), e.vm("v11"), 8<<20)
	if d := e.tooBigAll(t) - before; d != 0 {
		t.Fatalf("%d frames too big during the transfers: the MSS clamp did not fit TCP to the path", d)
	}
}

func (e *e2eNet) pingOut(ns string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(e.ctx, 10*time.Second)
	defer cancel()
	out, err := netns.Command(ctx, ns, append([]string{"ping", "-c", "1", "-W", "2"}, args...)...).CombinedOutput()
	return string(out), err
}

// mtuPingTooBig: a 1428-byte ping with DF from a VM gets "fragmentation
// needed" back with the path's MTU (1280 - 28 - 48 - 34 - 14: h1's
// dual-stack socket), so the VM's path-MTU discovery learns it; a ping of
// exactly that size passes, one byte more does not.
func (e *e2eNet) mtuPingTooBig(t *testing.T) {
	a, b := e.vm("v11"), e.vm("v21")
	const mtu = 1280 - 48 - 34 - 14
	before := e.tooBig(t, "h1", "star-h1")
	out, err := e.pingOut(a.ns, "-M", "do", "-s", "1400", b.ip)
	if err == nil {
		t.Fatalf("a 1428-byte ping with DF crossed a path of MTU %d:\n%s", mtu, out)
	}
	re := regexp.MustCompile(fmt.Sprintf(`(?i)(frag needed|message too long).*mtu ?[=:]? ?%d\b`, mtu))
	if !re.MatchString(out) {
		t.Fatalf("ping -M do -s 1400 did not learn mtu %d:\n%s", mtu, out)
	}
	t.Logf("ping -M do -s 1400: %s", firstLine(out, "mtu"))
	if d := e.tooBig(t, "h1", "star-h1") - before; d != 1 {
		t.Errorf("h1 counted %d too-big frames, want 1", d)
	}
	// The VM now knows: it refuses to send the next one itself.
	out, _ = e.pingOut(a.ns, "-M", "do", "-s", "1400", b.ip)
	if !regexp.MustCompile(fmt.Sprintf(`(?i)too long.*mtu ?[=:]? ?%d\b`, mtu)).MatchString(out) {
		t.Errorf("second ping: the VM did not keep the path MTU:\n%s", out)
	}
	t.Logf("again: %s", firstLine(out, "mtu"))
	if out, err := e.pingOut(a.ns, "-M", "do", "-s", fmt.Sprint(mtu-28), b.ip); err != nil {
		t.Fatalf("a ping of exactly the path MTU (%d) did not cross: %v\n%s", mtu, err, out)
	}
}

// mtuPing6: IPv6 learns 1280 from "packet too big", and 1280-byte packets
// cross though the path's limit is lower: the link splits what IPv6
// requires every link to carry.
func (e *e2eNet) mtuPing6(t *testing.T) {
	a := e.vm("v11")
	if _, err := e.pingOut(a.ns, "-6", "fd88::21"); err != nil {
		// Neighbour discovery may need a moment.
		e.waitFor(t, "ping6", 10*time.Second, func() (bool, string) {
			out, err := e.pingOut(a.ns, "-6", "fd88::21")
			return err == nil, out
		})
	}
	out, err := e.pingOut(a.ns, "-6", "-M", "do", "-s", "1400", "fd88::21")
	if err == nil {
		t.Fatalf("a 1448-byte IPv6 ping crossed:\n%s", out)
	}
	if !regexp.MustCompile(`(?i)(too big|too long).*mtu ?[=:]? ?1280\b`).MatchString(out) {
		t.Fatalf("ping -6 -s 1400 did not learn mtu 1280:\n%s", out)
	}
	t.Logf("ping -6 -M do -s 1400: %s", firstLine(out, "mtu"))
	if out, err := e.pingOut(a.ns, "-6", "-M", "do", "-s", "1232", "fd88::21"); err != nil {
		t.Fatalf("a 1280-byte IPv6 packet did not cross: %v\n%s", err, out)
	}
}

func firstLine(out, with string) string {
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(strings.ToLower(l), with) {
			return strings.TrimSpace(l)
		}
	}
	return strings.TrimSpace(out)
}
