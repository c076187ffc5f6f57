package appliance

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"vnet/bridge"
)

// TestAccessRuleBlocksPair: a deny rule on h1 blocks one VM pair (ping and
// TCP fail) while every other pair still works; the rule's frame counter
// rises, and `route` says which rule blocks the pair.
func TestAccessRuleBlocksPair(t *testing.T) {
	n := newTestNet(t, 2, 2)
	a, b, c, d := n.vms[0], n.vms[1], n.vms[2], n.vms[3] // a, b on h1; c, d on h2
	for _, p := range [][2]*testVM{{a, c}, {b, d}, {a, d}} {
		if err := exchange(p[0], p[1], 4<<10); err != nil {
			t.Fatal(err)
		}
	}
	deny := RuleInfo{Host: "h1", Src: a.MAC().String(), Dst: c.MAC().String(), To: "deny"}
	if err := n.proxy.addRule(deny); err != nil {
		t.Fatal(err)
	}
	n.waitFor("h1 to have the rule", 5*time.Second, func() bool { return len(n.hosts["h1"].Switch().Rules()) == 1 })
	ctx := context.Background()
	pctx, cancel := context.WithTimeout(ctx, time.Second)
	if _, err := a.Ping(pctx, c.Addr()); err == nil {
		t.Error("a pings c through the deny rule")
	}
	cancel()
	dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	if conn, err := a.DialTCP(dctx, netip.AddrPortFrom(c.Addr(), 7000)); err == nil {
		conn.Close()
		t.Error("a opened a TCP connection to c through the deny rule")
	}
	cancel()
	for _, p := range [][2]*testVM{{a, b}, {a, d}, {b, c}, {d, b}} {
		if err := exchange(p[0], p[1], 64<<10); err != nil {
			t.Errorf("a pair the rule does not name: %v", err)
		}
	}
	n.waitFor("the rule's frame count at the proxy", 5*time.Second, func() bool {
		for _, r := range n.proxy.rules() {
			if r.Host == "h1" && r.To == "deny" && r.Hits > 0 {
				return true
			}
		}
		return false
	})
	var src, dst bridge.MAC
	copy(src[:], a.MAC())
	copy(dst[:], c.MAC())
	r, err := n.proxy.route(ctx, src, dst)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Hops) == 0 || r.Hops[0].By != "deny" || !strings.Contains(r.Note, "deny") {
		t.Errorf("route of the blocked pair: %+v", r)
	}
	if st, _ := n.hosts["h1"].Switch().PortStats("vm1"); st.Drops["denied"] == 0 {
		t.Errorf("h1 vm1's drops %v: no denied frames", st.Drops)
	}
}

// TestAccessIPFilterRule: a deny rule with an IP filter blocks only TCP to
// one port from a to c; ping between them, TCP the other way and TCP from
// another VM still work; the rule counts frames; `route` shows that the pair
// is blocked for tcp/7000, and the filter survives the API and the export.
func TestAccessIPFilterRule(t *testing.T) {
	n := newTestNet(t, 2, 2)
	a, b, c := n.vms[0], n.vms[1], n.vms[2] // a, b on h1; c on h2
	if err := exchange(a, c, 4<<10); err != nil {
		t.Fatal(err)
	}
	rule := RuleInfo{Host: "h1", Src: a.MAC().String(), Dst: c.MAC().String(), Filter: "proto tcp port 7000", To: "deny"}
	if err := n.proxy.addRule(rule); err != nil {
		t.Fatal(err)
	}
	n.waitFor("h1 to have the rule", 5*time.Second, func() bool { return len(n.hosts["h1"].Switch().Rules()) == 1 })
	if got := n.hosts["h1"].Switch().Rules()[0].String(); got != a.MAC().String()+" "+c.MAC().String()+" ip proto tcp port 7000 -> deny" {
		t.Fatalf("h1's rule: %s", got)
	}
	ctx := context.Background()
	dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	if conn, err := a.DialTCP(dctx, netip.AddrPortFrom(c.Addr(), 7000)); err == nil {
		conn.Close()
		t.Error("a opened a TCP connection to c's port 7000 through the rule")
	}
	cancel()
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	if _, err := a.Ping(pctx, c.Addr()); err != nil {
		t.Errorf("a cannot ping c under a tcp/7000 rule: %v", err)
	}
	cancel()
	for _, p := range [][2]*testVM{{c, a}, {b, c}} {
		if err := exchange(p[0], p[1], 64<<10); err != nil {
			t.Errorf("TCP the rule does not name: %v", err)
		}
	}
	n.waitFor("the rule's frame count at the proxy", 5*time.Second, func() bool {
		for _, r := range n.proxy.rules() {
			if r.Host == "h1" && r.Filter == "ip proto tcp port 7000" && r.Hits > 0 {
				return true
			}
		}
		return false
	})
	var src, dst bridge.MAC
	copy(src[:], a.MAC())
	copy(dst[:], c.MAC())
	r, err := n.proxy.route(ctx, src, dst)
	if err != nil {
		t.Fatal(err)
	}
	if !r.Delivered || !r.Filtered || len(r.Hops) == 0 || len(r.Hops[0].Filters) != 1 ||
		!strings.Contains(r.Hops[0].Filters[0], "blocked for tcp/7000 by the rule") {
		t.Errorf("route of the filtered pair: %+v", r)
	}
	var found bool
	for _, tr := range n.proxy.export().Rules {
		found = found || tr.Filter == "ip proto tcp port 7000" && tr.To == "deny"
	}
	if !found {
		t.Errorf("export lost the filter: %+v", n.proxy.export().Rules)
	}
	if err := n.proxy.addRule(RuleInfo{Host: "h1", Src: "any", Dst: "any", Filter: "proto tcp", To: "link:star-h1"}); err == nil {
		t.Error("a filter on a forwarding rule was accepted")
	}
	if err := n.proxy.delRule(RuleInfo{Host: "h1", Src: a.MAC().String(), Dst: c.MAC().String(), Filter: "ip proto tcp port 7000", To: "deny"}); err != nil {
		t.Fatal(err)
	}
	n.waitFor("h1 to drop the rule", 5*time.Second, func() bool { return len(n.hosts["h1"].Switch().Rules()) == 0 })
	if err := exchange(a, c, 4<<10); err != nil {
		t.Errorf("a -> c after the rule went: %v", err)
	}
}
