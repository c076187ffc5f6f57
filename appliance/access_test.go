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
