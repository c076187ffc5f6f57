package main

// Access rules end to end, in network namespaces (the layout of
// e2e_netns_test.go): a deny rule blocks one VM pair, and an IP-filter rule
// blocks only TCP to one port between two VMs, both set with `vnet ctl rule`
// and seen in `vnet ctl rules` and `vnet ctl route`.

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"vnet/internal/netns"
)

type e2eRuleJSON struct {
	Host   string `json:"host"`
	Src    string `json:"src"`
	Dst    string `json:"dst"`
	To     string `json:"to"`
	Filter string `json:"filter"`
	Hits   uint64 `json:"hits"`
}

// e2eRouteFilterJSON is the route answer with the hops' filters.
type e2eRouteFilterJSON struct {
	Hops []struct {
		Host    string   `json:"host"`
		To      string   `json:"to"`
		By      string   `json:"by"`
		Filters []string `json:"filters"`
	} `json:"hops"`
	Delivered bool   `json:"delivered"`
	Note      string `json:"note"`
	Filtered  bool   `json:"filtered"`
}

func TestE2EAccessRules(t *testing.T) {
	e := newE2ENet(t, "va", 3*time.Minute, "network namespaces, a bridge, veth pairs and TAP devices", nil,
		func(e *e2eNet) { e.dumpState(t) })
	steps := []struct {
		name string
		f    func(t *testing.T)
	}{
		{"build", e.build},
		{"underlay", e.underlay},
		{"daemons", e.daemons},
		{"ping_all_pairs", func(t *testing.T) { e.allPairs(t, 15*time.Second) }},
		{"deny_pair", e.denyPair},
		{"ip_filter", e.ipFilter},
	}
	for _, s := range steps {
		if !t.Run(s.name, s.f) {
			t.FailNow()
		}
	}
}

// rule runs `vnet ctl rule add|del HOST ARGS...`.
func (e *e2eNet) rule(t *testing.T, op string, args ...string) {
	t.Helper()
	if err := e.ctl(nil, append([]string{"rule", op}, args...)...); err != nil {
		t.Fatal(err)
	}
}

// ruleHits waits until `vnet ctl rules` shows the rule on host from src to
// dst with filter at more than min frames, and returns its count.
func (e *e2eNet) ruleHits(t *testing.T, host, src, dst, filter string, min uint64) uint64 {
	t.Helper()
	var hits uint64
	e.waitFor(t, fmt.Sprintf("the rule on %s to count more than %d frames", host, min), 15*time.Second, func() (bool, string) {
		var rs []e2eRuleJSON
		if err := e.ctl(&rs, "rules"); err != nil {
			return false, err.Error()
		}
		for _, r := range rs {
			if r.Host == host && r.Src == src && r.Dst == dst && r.Filter == filter {
				hits = r.Hits
				return hits > min, fmt.Sprintf("%+v", r)
			}
		}
		return false, fmt.Sprintf("no such rule in %+v", rs)
	})
	return hits
}

// waitRulesAt waits until host runs n rules (as its own API says).
func (e *e2eNet) waitRulesAt(t *testing.T, host string, n int) {
	t.Helper()
	e.waitFor(t, fmt.Sprintf("%s to run %d rules", host, n), 10*time.Second, func() (bool, string) {
		var rs []e2eRuleJSON
		if err := e.ctlAt(e.nsHost[host], e2eHostAPI, &rs, "rules"); err != nil {
			return false, err.Error()
		}
		return len(rs) == n, fmt.Sprintf("%d rules", len(rs))
	})
}

// pingBlocked checks that a cannot ping b (3 tries).
func (e *e2eNet) pingBlocked(t *testing.T, a, b *e2eVM) {
	t.Helper()
	for range 3 {
		if err := e.pingOnce(a.ns, b.ip); err == nil {
			t.Fatalf("%s pings %s through the rule", a.name, b.name)
		}
	}
}

// tcpBlocked checks that a cannot open a TCP connection to port of b while
// b listens there.
func (e *e2eNet) tcpBlocked(t *testing.T, a, b *e2eVM, port int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(e.ctx, 30*time.Second)
	defer cancel()
	addr := net.JoinHostPort(b.ip, strconv.Itoa(port))
	recv := e.helperCmd(t, ctx, b.ns, "recv", addr, "0")
	if err := recv.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); recv.Wait() }()
	// The listener is up when b's namespace shows it.
	e.waitFor(t, b.name+" listening on "+addr, 10*time.Second, func() (bool, string) {
		out, err := e.runErr(b.ns, "ss", "-ltnH", "sport = :"+strconv.Itoa(port))
		return err == nil && strings.Contains(out, strconv.Itoa(port)), out
	})
	if out, err := e.helperCmd(t, ctx, a.ns, "dial", addr, "0").CombinedOutput(); err == nil {
		t.Fatalf("%s opened a TCP connection to %s through the rule\n%s", a.name, addr, out)
	}
}

func (e *e2eNet) runErr(ns string, argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(e.ctx, 10*time.Second)
	defer cancel()
	return netns.Run(ctx, ns, argv...)
}

// otherPairsPing pings every ordered pair of VMs but those in skip.
func (e *e2eNet) otherPairsPing(t *testing.T, skip map[[2]string]bool) {
	t.Helper()
	for _, a := range e.vms {
		for _, b := range e.vms {
			if a == b || skip[[2]string{a.name, b.name}] {
				continue
			}
			if err := e.ping(a.ns, b.ip, 5*time.Second); err != nil {
				t.Errorf("%s -> %s, not named by the rule: %v", a.name, b.name, err)
			}
		}
	}
}

// denyPair: `rule add h1 v11 v21 -> deny` stops ping and TCP between v11
// and v21 (both ways: the replies are v11's frames too), every other pair
// still pings and moves TCP, the rule counts frames, and route names it.
func (e *e2eNet) denyPair(t *testing.T) {
	a, b := e.vm("v11"), e.vm("v21")
	e.rule(t, "add", "h1", a.mac, b.mac, "->", "deny")
	e.waitRulesAt(t, "h1", 1)
	e.pingBlocked(t, a, b)
	e.pingBlocked(t, b, a)
	e.tcpBlocked(t, a, b, 9000)
	e.otherPairsPing(t, map[[2]string]bool{{"v11", "v21"}: true, {"v21", "v11"}: true})
	e.transfer(t, e.vm("v12"), b, 1<<20)
	e.transfer(t, a, e.vm("v22"), 1<<20)
	e.transfer(t, a, e.vm("v12"), 1<<20)
	hits := e.ruleHits(t, "h1", a.mac, b.mac, "", 0)
	t.Logf("the deny rule counted %d frames", hits)
	var r e2eRouteFilterJSON
	if err := e.ctl(&r, "route", a.mac, b.mac); err != nil {
		t.Fatal(err)
	}
	if r.Delivered || len(r.Hops) != 1 || r.Hops[0].By != "deny" || !strings.Contains(r.Note, "blocked at h1") {
		t.Errorf("route of the denied pair: %+v", r)
	}
	if st := e.portDrops(t, "h1", "t11"); st["denied"] == 0 {
		t.Errorf("h1's t11 drops %v: no denied frames", st)
	}
	e.rule(t, "del", "h1", a.mac, b.mac, "deny")
	e.waitRulesAt(t, "h1", 0)
	if err := e.ping(a.ns, b.ip, 5*time.Second); err != nil {
		t.Fatalf("%s -> %s after the rule went: %v", a.name, b.name, err)
	}
}

// ipFilter: `rule add h1 v12 v22 proto tcp port 9000 -> deny` stops TCP
// from v12 to v22's port 9000 only: ping (and the ARP before it) between
// them, TCP to another port of v22, and TCP to port 9000 from another VM
// still work; the rule counts the blocked SYNs, and route says the pair is
// blocked for tcp/9000.
func (e *e2eNet) ipFilter(t *testing.T) {
	a, b := e.vm("v12"), e.vm("v22")
	e.rule(t, "add", "h1", a.mac, b.mac, "proto", "tcp", "port", "9000", "->", "deny")
	e.waitRulesAt(t, "h1", 1)
	const filter = "ip proto tcp port 9000"
	e.tcpBlocked(t, a, b, 9000)
	hits := e.ruleHits(t, "h1", a.mac, b.mac, filter, 0)
	t.Logf("the tcp/9000 rule counted %d frames", hits)
	e.run(t, a.ns, "ip", "neigh", "flush", "all") // so the ping needs ARP through the rule
	e.pingUntil(t, a.ns, b.ip, 5*time.Second)
	e.pingUntil(t, b.ns, a.ip, 5*time.Second)
	e.transferPort(t, a, b, 1<<20, 9001)
	e.transferPort(t, e.vm("v11"), b, 1<<20, 9000)
	e.transferPort(t, b, a, 1<<20, 9000) // the other direction is another pair
	var r e2eRouteFilterJSON
	if err := e.ctl(&r, "route", a.mac, b.mac); err != nil {
		t.Fatal(err)
	}
	if !r.Delivered || !r.Filtered || len(r.Hops) == 0 || len(r.Hops[0].Filters) != 1 ||
		!strings.Contains(r.Hops[0].Filters[0], "blocked for tcp/9000") {
		t.Errorf("route of the filtered pair: %+v", r)
	}
	out, err := e.runErr(e.nsProxy, e.bin, "ctl", "--api", e2eProxyAPI, "route", a.mac, b.mac)
	if err != nil || !strings.Contains(out, "blocked for tcp/9000") {
		t.Errorf("vnet ctl route: %v\n%s", err, out)
	}
	t.Logf("vnet ctl route %s %s:\n%s", a.name, b.name, out)
}

// portDrops is a host's drop counters of one port, from its status.
func (e *e2eNet) portDrops(t *testing.T, host, port string) map[string]uint64 {
	t.Helper()
	var st struct {
		Ports []struct {
			Name  string            `json:"name"`
			Drops map[string]uint64 `json:"drops"`
		} `json:"ports"`
	}
	if err := e.ctlAt(e.nsHost[host], e2eHostAPI, &st, "status"); err != nil {
		t.Fatal(err)
	}
	for _, p := range st.Ports {
		if p.Name == port {
			return p.Drops
		}
	}
	t.Fatalf("%s has no port %s in %+v", host, port, st.Ports)
	return nil
}
