package main

// Two hosts behind one NAT, on one LAN: their fast path must run over
// their private addresses, not through the router (which, like many home
// routers, does not hairpin).
//
//	inet ns:  br0 203.0.113.1 (proxy: tcp+udp :5000; also .2 for the lab's reflectors)
//	  └── w1 ── wan 203.0.113.50 [router r: eim NAT, counters] lan 10.50.0.1 ── lan ns: br0
//	                                                                              ├── eth0 10.50.0.2 [host ha] TAP ta1 -> [VM va 10.99.0.1]
//	                                                                              └── eth0 10.50.0.3 [host hb] TAP tb1 -> [VM vb 10.99.0.2]
//
// The LAN's bridge lives in a namespace of its own, so that frames between
// the two hosts never enter the router's netfilter hooks (br_netfilter
// would show bridged IPv4 to them). The router counts, with nftables named
// counters, every packet from the LAN that is not for the proxy ("cross":
// what would cross the NAT or hairpin) and those for its own public
// address ("hairpin"). Before any vnet daemon runs the lab shows, with
// plain UDP, that the router does not hairpin: two LAN sockets with NAT
// mappings cannot reach each other at their public addresses.
// Needs root; skipped otherwise.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"vnet/internal/netns"
)

const (
	localWAN = "203.0.113.50"
	localLAN = "10.50.0" // .1 the router, .2 ha, .3 hb
)

func TestNATLocalPath(t *testing.T) {
	if os.Getenv(natHelperEnv) != "" || os.Getenv(e2eHelperEnv) != "" {
		t.Skip("running as a helper")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: builds network namespaces, a NAT router (nftables), veth pairs, bridges and TAP devices")
	}
	var missing []string
	missing = append(missing, netns.Missing("ip", "nft", "ping", "go")...)
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		missing = append(missing, "/dev/net/tun")
	}
	if len(missing) > 0 {
		msg := fmt.Sprintf("needs %s (apt-get install iproute2 nftables iputils-ping)", strings.Join(missing, ", "))
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	budget := 3 * time.Minute
	if d, ok := t.Deadline(); ok && time.Until(d)-15*time.Second < budget {
		budget = time.Until(d) - 15*time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), budget)
	t.Cleanup(cancel)

	prefix := fmt.Sprintf("vl%d", os.Getpid())
	l := &natLab{e2eNet: &e2eNet{ctx: ctx, lab: netns.New(prefix), dir: t.TempDir(),
		nsHost: map[string]string{}, hosts: map[string]*netns.Proc{}, expect: map[*netns.Proc]bool{}},
		combos: map[string]string{}}
	var nsR string
	t.Cleanup(func() {
		if t.Failed() {
			l.dump(t)
			if nsR != "" {
				out, err := netns.Run(context.Background(), nsR, "nft", "list", "ruleset")
				t.Logf("the shared router: nft list ruleset: %v\n%s", err, out)
			}
		}
		if err := l.lab.Close(); err != nil {
			t.Errorf("cleanup: %v", err)
		}
		cctx, ccancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer ccancel()
		if left, err := netns.Leftovers(cctx, prefix); err == nil && len(left) > 0 {
			t.Errorf("cleanup left namespaces behind: %v", left)
		}
	})
	for i, name := range []string{"ha", "hb"} {
		l.hosts = append(l.hosts, &natHost{i: i + 1, name: name, kind: netns.EIM, wan: localWAN,
			proxies: []string{natProxyUDP, natProxyTCP}, star: "udp"})
	}
	ha, hb := l.hosts[0], l.hosts[1]

	steps := []struct {
		name string
		f    func(t *testing.T)
	}{
		{"build", l.build},
		{"lab", func(t *testing.T) { nsR = l.makeLocalLab(t) }},
		{"no_hairpin", func(t *testing.T) { l.checkNoHairpin(t, nsR) }},
		{"daemons", l.localDaemons},
		{"udp_local", func(t *testing.T) { l.localFastPath(t, nsR, ha, hb, "") }},
		{"tcp_local", func(t *testing.T) { l.localFastPath(t, nsR, ha, hb, "tcp") }},
	}
	for _, s := range steps {
		if !t.Run(s.name, s.f) {
			t.FailNow()
		}
	}
}

// makeLocalLab builds the internet, the router and the LAN with both
// hosts, and returns the router's namespace.
func (l *natLab) makeLocalLab(t *testing.T) string {
	l.nsNet = l.addNS(t, "inet")
	l.nsProxy = l.nsNet
	l.run(t, l.nsNet, "ip", "link", "add", "br0", "type", "bridge")
	l.run(t, l.nsNet, "ip", "addr", "add", natProxyIP+"/24", "dev", "br0")
	l.run(t, l.nsNet, "ip", "addr", "add", natOtherIP+"/24", "dev", "br0")
	l.run(t, l.nsNet, "ip", "link", "set", "br0", "up")
	nsR := l.addNS(t, "r")
	if err := l.lab.BridgePort(l.ctx, l.nsNet, "br0", "w1", nsR, "wan", localWAN+"/24"); err != nil {
		t.Fatal(err)
	}
	nsLAN := l.addNS(t, "lan")
	l.run(t, nsLAN, "ip", "link", "add", "br0", "type", "bridge")
	l.run(t, nsLAN, "ip", "link", "set", "br0", "up")
	if err := l.lab.BridgePort(l.ctx, nsLAN, "br0", "pr", nsR, "lan", localLAN+".1/24"); err != nil {
		t.Fatal(err)
	}
	for _, h := range l.hosts {
		h.nsR = nsR
		h.nsH = l.addNS(t, h.name)
		l.nsHost[h.name] = h.nsH
		if err := l.lab.BridgePort(l.ctx, nsLAN, "br0", "p"+h.name, h.nsH, "eth0",
			fmt.Sprintf("%s.%d/24", localLAN, h.i+1)); err != nil {
			t.Fatal(err)
		}
		l.run(t, h.nsH, "ip", "route", "add", "default", "via", localLAN+".1")
	}
	if err := netns.SetNAT(l.ctx, nsR, l.lab.Prefix()+"nat", netns.EIM, "wan", "lan"); err != nil {
		t.Fatal(err)
	}
	// Counters in a table of their own, in the prerouting hook: every
	// packet from the LAN (routed, NATed or for the router itself) passes.
	counters := fmt.Sprintf(`table ip %[1]scount {
	counter cross {}
	counter hairpin {}
	chain pre {
		type filter hook prerouting priority -200; policy accept;
		iifname "lan" ip daddr %[2]s counter name "hairpin"
		iifname "lan" ip daddr != %[3]s counter name "cross"
	}
}
`, l.lab.Prefix(), localWAN, natProxyIP)
	cmd := netns.Command(l.ctx, nsR, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(counters)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft counters: %v\n%s", err, out)
	}
	for _, h := range l.hosts {
		l.pingUntil(t, h.nsH, natProxyIP, 10*time.Second)
	}
	l.pingUntil(t, l.hosts[0].nsH, localLAN+".3", 10*time.Second) // over the LAN
	t.Logf("internet %s; router %s (eim, no hairpin) with LAN %s.0/24: ha .2, hb .3", natProxyIP, localWAN, localLAN)
	return nsR
}

var nftCounterRE = regexp.MustCompile(`counter (\w+) \{\s*packets (\d+) bytes (\d+)`)

// routerCounters reads the router's named counters: name -> {packets, bytes}.
func (l *natLab) routerCounters(t *testing.T, nsR string) map[string][2]uint64 {
	t.Helper()
	out := l.run(t, nsR, "nft", "list", "counters", "table", "ip", l.lab.Prefix()+"count")
	m := map[string][2]uint64{}
	for _, g := range nftCounterRE.FindAllStringSubmatch(out, -1) {
		p, _ := strconv.ParseUint(g[2], 10, 64)
		b, _ := strconv.ParseUint(g[3], 10, 64)
		m[g[1]] = [2]uint64{p, b}
	}
	if _, ok := m["cross"]; !ok {
		t.Fatalf("no counter cross in:\n%s", out)
	}
	return m
}

// checkNoHairpin shows with plain UDP that the router does not hairpin:
// ha and hb each get a NAT mapping (a probe to the reflectors), then punch
// towards each other's public address and port; neither hears the other,
// and the router counts their packets as hairpin attempts.
func (l *natLab) checkNoHairpin(t *testing.T, nsR string) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	args, _ := json.Marshal(natHelperArgs{Reflectors: natReflectors, Poke: natPoke})
	refl, err := l.lab.Start("reflector", l.nsNet, filepath.Join(l.dir, "reflector.log"),
		[]string{natHelperEnv + "=reflect", natArgsEnv + "=" + string(args)}, exe, "-test.run=^TestNATLabHelper$", "-test.count=1")
	if err != nil {
		t.Fatal(err)
	}
	defer refl.Kill()
	ctx, cancel := context.WithTimeout(l.ctx, 30*time.Second)
	defer cancel()
	ha, hb := l.hosts[0], l.hosts[1]
	port := func(h *natHost) int { return natProbe + h.i }
	public := map[string]string{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for k, h := range []*natHost{ha, hb} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var r netns.ProbeResult
			errs[k] = l.helper(ctx, h.nsH, "probe", natHelperArgs{Local: fmt.Sprintf("0.0.0.0:%d", port(h)),
				Reflectors: natReflectors[:1], For: 2 * time.Second}, &r)
			for _, m := range r.Mapped {
				mu.Lock()
				public[h.name] = m
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(public["ha"], localWAN+":") || !strings.HasPrefix(public["hb"], localWAN+":") {
		t.Fatalf("the reflector saw ha at %q and hb at %q, want both at %s", public["ha"], public["hb"], localWAN)
	}
	before := l.routerCounters(t, nsR)["hairpin"]
	var heard [2]bool
	for k, p := range [][2]*natHost{{ha, hb}, {hb, ha}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[k] = l.helper(ctx, p[0].nsH, "punch", natHelperArgs{Local: fmt.Sprintf("0.0.0.0:%d", port(p[0])),
				Peer: public[p[1].name], For: 2 * time.Second}, &heard[k])
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	after := l.routerCounters(t, nsR)["hairpin"]
	t.Logf("hairpin check: ha (public %s) and hb (public %s) punched at each other's public address: heard %v/%v; "+
		"the router counted %d hairpin packets", public["ha"], public["hb"], heard[0], heard[1], after[0]-before[0])
	if heard[0] || heard[1] {
		t.Fatalf("the router hairpins (ha heard hb: %v, hb heard ha: %v): this lab needs one that does not",
			heard[0], heard[1])
	}
	if after[0] == before[0] {
		t.Fatalf("the router's hairpin counter did not move (%v -> %v): the counters do not see the LAN", before, after)
	}
}

// localDaemons starts the proxy and both hosts, gives each a VM, and waits
// until both are up and have learnt their NAT.
func (l *natLab) localDaemons(t *testing.T) {
	var err error
	l.proxy, err = l.lab.Start("proxy", l.nsNet, filepath.Join(l.dir, "proxy.log"), nil,
		l.bin, "proxy", "--key-file", l.key, "--listen", natProxyTCP, "--listen", natProxyUDP, "--api", natProxyAPI)
	if err != nil {
		t.Fatal(err)
	}
	l.expect[l.proxy] = true
	for _, h := range l.hosts {
		tap := "t" + h.name[1:] + "1"
		args := []string{l.bin, "host", "--name", h.name, "--key-file", l.key, "--tap", tap, "--api", natHostAPI,
			"--listen", "tcp://:0", "--listen", "udp://:0"}
		for _, p := range h.proxies {
			args = append(args, "--proxy", p)
		}
		h.proc, err = l.lab.Start(h.name, h.nsH, filepath.Join(l.dir, h.name+".log"), nil, args...)
		if err != nil {
			t.Fatal(err)
		}
		l.e2eNet.hosts[h.name], l.expect[h.proc] = h.proc, true
		h.vm = &e2eVM{name: "v" + h.name[1:], host: h.name, tap: tap, ip: fmt.Sprintf("10.99.0.%d", h.i)}
		l.tapVM(t, h.nsH, h.vm)
	}
	l.waitFor(t, "both hosts up with their NAT learnt", 30*time.Second, func() (bool, string) {
		hs, err := l.hostsJSON()
		if err != nil {
			return false, err.Error()
		}
		ok := true
		for _, h := range l.hosts {
			ok = ok && hs[h.name].State == "up" && hs[h.name].NAT == "endpoint-independent"
		}
		return ok, fmt.Sprintf("%+v", hs)
	})
	hs, _ := l.hostsJSON()
	for _, h := range l.hosts {
		t.Logf("%s: nat %s, addrs %v", h.name, hs[h.name].NAT, hs[h.name].Addrs)
	}
}

// localFastPath makes the fast link ha-hb (of kind, "" for the default)
// and checks that it runs over the LAN: via direct, path local, the peer's
// private address; VMs ping over it; a transfer leaves the router's
// counters and the proxy's star links (nearly) untouched. It deletes the
// link at the end.
func (l *natLab) localFastPath(t *testing.T, nsR string, a, b *natHost, kind string) {
	l.pingUntil(t, a.vm.ns, b.vm.ip, 15*time.Second) // over the star: the MACs are learnt
	x, took := l.linkAdd(t, a, b, kind, natPunchWait, "direct", "punched")
	t.Logf("fast link %s (--kind %q) up %v after `link add`: kind %s, via %s, path %s, addr %s", x.Name, kind,
		took.Round(time.Millisecond), x.Kind, x.Via, x.Path, x.Addr)
	wantKind := kind
	if wantKind == "" {
		wantKind = "udp" // both behind a NAT, both with a UDP socket
	}
	private := fmt.Sprintf("%s.%d:", localLAN, b.i+1)
	if x.Kind != wantKind || x.Via != "direct" || x.Path != "local" || !strings.HasPrefix(x.Addr, private) {
		t.Errorf("fast link %s: kind %s, via %s, path %q, addr %q; want kind %s, via direct, path local, addr %s*",
			x.Name, x.Kind, x.Via, x.Path, x.Addr, wantKind, private)
	}
	for _, line := range strings.Split(a.proc.Output(), "\n") {
		if strings.Contains(line, "fast link made") && strings.Contains(line, x.Name) {
			t.Logf("%s's log: %s", a.name, line)
		}
	}
	var hl []natLinkJSON
	if err := l.ctlAt(b.nsH, natHostAPI, &hl, "links"); err != nil {
		t.Fatal(err)
	}
	for _, y := range hl {
		if y.Name == x.Name && (y.Path != "local" || !strings.HasPrefix(y.Addr, fmt.Sprintf("%s.%d:", localLAN, a.i+1))) {
			t.Errorf("the accepting end %s reports %s with path %q, addr %q; want local from %s's private address",
				b.name, y.Name, y.Path, y.Addr, a.name)
		}
	}
	l.waitRouteVia(t, a, b, true)
	l.pingUntil(t, a.vm.ns, b.vm.ip, 5*time.Second)

	const n = 10 << 20
	cross0, star0 := l.routerCounters(t, nsR)["cross"], l.starBytes(t, a, b)
	l.transfer(t, a.vm, b.vm, n)
	cross1, star1 := l.routerCounters(t, nsR)["cross"], l.starBytes(t, a, b)
	// The dialing end reports its counters about every second.
	var y natLinkJSON
	l.waitFor(t, "the transfer counted on "+x.Name, 10*time.Second, func() (bool, string) {
		ls, err := l.linksJSON()
		if err != nil {
			return false, err.Error()
		}
		y = ls[x.Name]
		return y.TxBytes+y.RxBytes-x.TxBytes-x.RxBytes >= n,
			fmt.Sprintf("tx %d -> %d, rx %d -> %d", x.TxBytes, y.TxBytes, x.RxBytes, y.RxBytes)
	})
	t.Logf("during the %d MiB transfer over %s: the fast link moved %d bytes; the router saw %d packets (%d bytes) "+
		"from the LAN not for the proxy; the proxy's star links moved %d bytes", n>>20, x.Name,
		y.TxBytes+y.RxBytes-x.TxBytes-x.RxBytes, cross1[0]-cross0[0], cross1[1]-cross0[1], star1-star0)
	if d := cross1[1] - cross0[1]; d > n/100 {
		t.Errorf("BUG: the router saw %d bytes from the LAN (not for the proxy) during a %d-byte transfer over the local "+
			"fast link %s: the data crossed the NAT", d, n, x.Name)
	}
	if d := star1 - star0; d > n/20 {
		t.Errorf("BUG: the proxy's star links carried %d bytes during a %d-byte transfer over %s", d, n, x.Name)
	}
	if err := l.ctl(nil, "link", "del", a.name, b.name); err != nil {
		t.Fatal(err)
	}
	l.waitFor(t, "link "+x.Name+" gone", 10*time.Second, func() (bool, string) {
		ls, err := l.linksJSON()
		if err != nil {
			return false, err.Error()
		}
		_, ok := ls[x.Name]
		return !ok, fmt.Sprintf("%+v", ls[x.Name])
	})
}
