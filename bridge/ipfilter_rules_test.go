package bridge_test

import (
	"encoding/binary"
	"strings"
	"testing"

	"vnet/bridge"
)

// ipFrame builds an untagged IPv4 frame dst<-src from 10.0.0.S to 10.0.0.D
// (the MACs' last bytes) with protocol proto and destination port dport.
func ipFrame(dst, src bridge.MAC, proto byte, dport uint16) []byte {
	f := make([]byte, 14+20+20+8)
	copy(f, dst[:])
	copy(f[6:], src[:])
	binary.BigEndian.PutUint16(f[12:], 0x0800)
	ip := f[14:]
	ip[0], ip[8], ip[9] = 0x45, 64, proto
	binary.BigEndian.PutUint16(ip[2:], uint16(len(ip)))
	copy(ip[12:], []byte{10, 0, 0, src[5]})
	copy(ip[16:], []byte{10, 0, 0, dst[5]})
	binary.BigEndian.PutUint16(ip[20:], 40000)
	binary.BigEndian.PutUint16(ip[22:], dport)
	return f
}

func arpFrame(dst, src bridge.MAC) []byte {
	f := make([]byte, 60)
	copy(f, dst[:])
	copy(f[6:], src[:])
	binary.BigEndian.PutUint16(f[12:], 0x0806)
	return f
}

func filterRule(t *testing.T, src, dst, filter, to string) bridge.Rule {
	t.Helper()
	r, err := bridge.ParseRuleFilter(src, dst, filter, to)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestIPFilterRules: a deny with an IP filter drops only the frames it
// matches (never ARP), counts them, and shows in Lookup; an allow with a
// filter opens a hole in a wider deny; a rule with more specific MACs still
// outranks a filter rule; a filter on a forwarding rule is refused.
func TestIPFilterRules(t *testing.T) {
	r := newRig(t, "v1", "v2", "s1")
	a, b := mac(1), mac(2)
	r.send("v2", b, bridge.Broadcast)
	r.send("v1", a, bridge.Broadcast)
	if err := r.sw.SetRules([]bridge.Rule{filterRule(t, a.String(), b.String(), "proto tcp port 22", "deny")}); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if got := keys(r.sendFrame("v1", ipFrame(b, a, 6, 22))); got != "[]" {
			t.Fatalf("tcp/22 went to %s", got)
		}
	}
	for _, c := range []struct {
		name string
		f    []byte
	}{{"tcp/80", ipFrame(b, a, 6, 80)}, {"udp/22", ipFrame(b, a, 17, 22)}, {"icmp", ipFrame(b, a, 1, 0)}, {"arp", arpFrame(b, a)}} {
		if got := keys(r.sendFrame("v1", c.f)); got != "[v2]" {
			t.Errorf("%s went to %s, want v2", c.name, got)
		}
	}
	if got := keys(r.sendFrame("v2", ipFrame(a, b, 6, 22))); got != "[v1]" {
		t.Errorf("tcp/22 the other way went to %s", got)
	}
	if hits := r.sw.RuleHits(); len(hits) != 1 || hits[0] != 2 {
		t.Errorf("rule hits %v, want [2]", hits)
	}
	if st, _ := r.sw.PortStats("v1"); st.Drops["denied"] != 2 {
		t.Errorf("v1's drops %v, want denied 2", st.Drops)
	}
	d := r.sw.Lookup("v1", a, b)
	if d.By != "mac" || len(d.Filters) != 1 || d.Filters[0].IP.Short() != "tcp/22" {
		t.Errorf("lookup %+v, want by mac with the filter rule", d)
	}
	if d := r.sw.Lookup("v2", b, a); len(d.Filters) != 0 {
		t.Errorf("lookup of the other direction lists filters %v", d.Filters)
	}

	// Deny everything but ICMP.
	if err := r.sw.SetRules([]bridge.Rule{
		filterRule(t, "any", "any", "", "deny"),
		filterRule(t, "any", "any", "proto icmp", "allow"),
	}); err != nil {
		t.Fatal(err)
	}
	if got := keys(r.sendFrame("v1", ipFrame(b, a, 1, 0))); got != "[v2]" {
		t.Errorf("icmp under 'any any proto icmp -> allow' went to %s", got)
	}
	if got := keys(r.sendFrame("v1", ipFrame(b, a, 6, 80))); got != "[]" {
		t.Errorf("tcp under 'any any -> deny' went to %s", got)
	}
	if hits := r.sw.RuleHits(); hits[0] != 1 || hits[1] != 1 {
		t.Errorf("rule hits %v, want [1 1]", hits)
	}
	d = r.sw.Lookup("v1", a, b)
	if d.By != "deny" || len(d.Filters) != 1 {
		t.Errorf("lookup %+v, want deny with the icmp allow", d)
	}

	// More specific MACs beat a filter rule; within one MAC score the
	// filter rule wins, and a deny beats an allow.
	if err := r.sw.SetRules([]bridge.Rule{
		filterRule(t, "any", "any", "proto tcp port 22", "deny"),
		filterRule(t, a.String(), b.String(), "", "allow"),
		filterRule(t, "any", "any", "ip4", "allow"),
		filterRule(t, "any", "any", "to 10.0.0.2", "deny"),
	}); err != nil {
		t.Fatal(err)
	}
	if got := keys(r.sendFrame("v1", ipFrame(b, a, 6, 22))); got != "[v2]" {
		t.Errorf("a b -> allow vs any any tcp/22 deny: went to %s", got)
	}
	if got := keys(r.sendFrame("v2", ipFrame(a, b, 6, 80))); got != "[v1]" {
		t.Errorf("b a tcp/80 (ip4 allow) went to %s", got)
	}
	if got := keys(r.sendFrame("v1", ipFrame(mac(9), a, 6, 80))); got != "[v2 s1]" {
		t.Errorf("a to an unknown MAC, 10.0.0.9: went to %s", got)
	}
	if got := keys(r.sendFrame("v2", ipFrame(mac(2), mac(7), 6, 80))); got != "[]" {
		t.Errorf("to 10.0.0.2 (tied deny and allow): went to %s", got)
	}

	if _, err := bridge.ParseRuleFilter("any", "any", "proto tcp", "link:s1"); err == nil || !strings.Contains(err.Error(), "deny or allow") {
		t.Errorf("filter on a forwarding rule: %v", err)
	}
	if err := r.sw.SetRules([]bridge.Rule{{Src: bridge.Any, Dst: bridge.Any, IP: filterRule(t, "any", "any", "ip", "deny").IP, To: bridge.Target{Kind: bridge.TargetLink, Name: "s1"}}}); err == nil {
		t.Error("SetRules took a filter on a forwarding rule")
	}
}
