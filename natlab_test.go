package main

// NAT lab: the real vnet binary with every host behind its own NAT router,
// made of network namespaces and nftables masquerade.
//
//	inet ns:  br0 203.0.113.1 (proxy: tcp+udp :5000, quic :5001; also .2 for the lab's own checks)
//	  ├── wI ── wan 203.0.113.(10+I) [router rI: NAT] lan 10.I.0.1 ── eth0 10.I.0.2 [host hI] ── TAP tI1 -> [VM vI 10.99.0.I]
//	  ...
//
//	hosts  NAT     star (--proxy)   case
//	h1 h2  eim     udp, then tcp    (a) punched fast path; its traffic stays off the proxy
//	h3     sym     udp, then tcp    (b) one symmetric side: punched or relayed, data flows
//	h4     eim     udp, then tcp
//	h5 h6  sym     udp, then tcp    (c) both symmetric: relayed over the star, data flows
//	h7     closed  tcp only         (d) a router that lets nothing in joins the star
//	h8     closed  udp only
//
// Then every NAT pairing the lab has gets a fast link (eim-closed,
// sym-closed, closed-closed over tcp and over udp) and the test logs how many
// were punched and how many relayed.
//
// Before any vnet daemon runs, the lab checks its own routers with plain UDP
// (a reflector on the "internet", a prober and a naive puncher in the host
// namespaces, all re-executions of this test binary): eim keeps one public
// port for every destination and drops what nobody asked for; sym picks a
// new port per destination; two eim hosts can punch, two sym hosts cannot.
// Needs root; skipped otherwise.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"vnet/internal/netns"
)

const (
	natHelperEnv = "VNET_NATLAB_HELPER" // reflect | probe | punch: TestNATLabHelper's mode
	natArgsEnv   = "VNET_NATLAB_ARGS"   // its arguments, JSON (natHelperArgs)
	natResult    = "NATLAB-RESULT"      // the helper's result line prefix

	natProxyIP  = "203.0.113.1" // RFC 5737 TEST-NET-3: the lab's "internet"
	natOtherIP  = "203.0.113.2" // a second internet address, for the lab's own checks
	natProxyAPI = e2eProxyAPI
	natHostAPI  = "127.0.0.1:7778" // every host daemon's, each in its own namespace
	natProbe    = 7100             // the lab checks' UDP port in the host namespaces

	natPunchWait = 30 * time.Second // link add -> up (punched, or relayed after failed punches)
)

var (
	natProxyTCP  = "tcp://" + natProxyIP + ":5000"
	natProxyUDP  = "udp://" + natProxyIP + ":5000"
	natProxyQUIC = "quic://" + natProxyIP + ":5001"
	// Reflectors for the lab checks: two ports on one address, one port on
	// another, and a port that nobody probes (it sends the unsolicited
	// datagram).
	natReflectors = []string{natProxyIP + ":7001", natProxyIP + ":7002", natOtherIP + ":7001"}
	natPoke       = natProxyIP + ":7009"
)

// natHostJSON is one entry of `vnet ctl hosts --json` (DESIGN.md).
type natHostJSON struct {
	Name  string   `json:"name"`
	Addrs []string `json:"addrs"`
	NAT   string   `json:"nat"`
	State string   `json:"state"`
	VMs   []string `json:"vms"`
}

// natLinkJSON is one entry of `vnet ctl links --json` (DESIGN.md).
type natLinkJSON struct {
	Name    string `json:"name"`
	A       string `json:"a"`
	B       string `json:"b"`
	Kind    string `json:"kind"`
	Role    string `json:"role"`
	Via     string `json:"via"`
	State   string `json:"state"`
	RTTus   int64  `json:"rtt_us"`
	TxBytes uint64 `json:"tx_bytes"`
	RxBytes uint64 `json:"rx_bytes"`
	Error   string `json:"error"`
	Path    string `json:"path"` // local | nat | public, a fast link that is up
	Addr    string `json:"addr"` // the peer's underlay address it uses
}

// natStatusJSON is the part of `vnet ctl status --json` this test reads.
type natStatusJSON struct {
	Ports []struct {
		Name    string `json:"name"`
		RxBytes uint64 `json:"rx_bytes"`
		TxBytes uint64 `json:"tx_bytes"`
	} `json:"ports"`
}

type natHelperArgs struct {
	Local      string        `json:"local,omitempty"`
	Reflectors []string      `json:"reflectors,omitempty"`
	Poke       string        `json:"poke,omitempty"`
	Peer       string        `json:"peer,omitempty"`
	Delay      time.Duration `json:"delay,omitempty"` // before a punch starts
	For        time.Duration `json:"for,omitempty"`
}

type natHost struct {
	i       int
	name    string // h1
	kind    netns.NAT
	proxies []string // --proxy URLs, in order
	star    string   // the star link's expected kind (the first proxy URL's)
	nsR     string   // router namespace
	nsH     string   // host namespace
	wan     string   // 203.0.113.(10+i)
	proc    *netns.Proc
	vm      *e2eVM
	nat     string // what `vnet ctl hosts` says
}

type natLab struct {
	*e2eNet // ctl, waitFor, link, route, ping, transfer ... of the netns e2e test
	nsNet   string
	hosts   []*natHost

	mu      sync.Mutex
	summary []string // figures for the final log
	combos  map[string]string
}

// TestNATLabHelper is TestNATLab's UDP tool inside a namespace: the test
// re-executes its own binary with VNET_NATLAB_HELPER set.
func TestNATLabHelper(t *testing.T) {
	mode := os.Getenv(natHelperEnv)
	if mode == "" {
		t.Skip("helper of TestNATLab; runs only when that test re-executes the test binary")
	}
	var a natHelperArgs
	if err := json.Unmarshal([]byte(os.Getenv(natArgsEnv)), &a); err != nil {
		fmt.Fprintf(os.Stderr, "helper %s: args: %v\n", mode, err)
		os.Exit(3)
	}
	var res any
	var err error
	switch mode {
	case "reflect":
		err = netns.Reflect(context.Background(), a.Reflectors, a.Poke) // until killed
	case "probe":
		res, err = netns.Probe(a.Local, a.Reflectors, a.For)
	case "punch":
		time.Sleep(a.Delay)
		res, err = netns.Punch(a.Local, a.Peer, a.For)
	default:
		err = fmt.Errorf("unknown mode %q", mode)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "helper %s: %v\n", mode, err)
		os.Exit(3)
	}
	b, _ := json.Marshal(res)
	fmt.Printf("%s %s\n", natResult, b)
}

func TestNATLab(t *testing.T) {
	if os.Getenv(natHelperEnv) != "" || os.Getenv(e2eHelperEnv) != "" {
		t.Skip("running as a helper")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: builds network namespaces, NAT routers (nftables), veth pairs, a bridge and TAP devices")
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

	budget := 5 * time.Minute
	if d, ok := t.Deadline(); ok && time.Until(d)-15*time.Second < budget {
		budget = time.Until(d) - 15*time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), budget)
	t.Cleanup(cancel) // after the cleanup below, which still asks the proxy

	start := time.Now()
	prefix := fmt.Sprintf("vn%d", os.Getpid())
	l := &natLab{e2eNet: &e2eNet{ctx: ctx, lab: netns.New(prefix), dir: t.TempDir(),
		nsHost: map[string]string{}, hosts: map[string]*netns.Proc{}, expect: map[*netns.Proc]bool{}},
		combos: map[string]string{}}
	t.Cleanup(func() {
		if t.Failed() {
			l.dump(t)
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
	plan := []struct {
		kind    netns.NAT
		proxies []string
	}{
		{netns.EIM, []string{natProxyUDP, natProxyTCP}},
		{netns.EIM, []string{natProxyUDP, natProxyTCP}},
		{netns.Sym, []string{natProxyUDP, natProxyTCP}},
		{netns.EIM, []string{natProxyUDP, natProxyTCP}},
		{netns.Sym, []string{natProxyUDP, natProxyTCP}},
		{netns.Sym, []string{natProxyUDP, natProxyTCP}},
		{netns.Closed, []string{natProxyTCP}},
		{netns.Closed, []string{natProxyUDP}},
	}
	for i, p := range plan {
		h := &natHost{i: i + 1, name: fmt.Sprintf("h%d", i+1), kind: p.kind, proxies: p.proxies,
			wan: fmt.Sprintf("203.0.113.%d", 11+i)}
		h.star = strings.SplitN(p.proxies[0], ":", 2)[0]
		l.hosts = append(l.hosts, h)
	}

	steps := []struct {
		name string
		f    func(t *testing.T)
	}{
		{"build", l.build},
		{"lab", l.makeLab},
		{"check_nat", l.checkNAT},
		{"daemons", l.daemons},
		{"a_eim_eim_punched", l.caseA},
		{"b_sym_eim", l.caseB},
		{"c_sym_sym_relayed", l.caseC},
		{"d_closed_star", l.caseD},
		{"combinations", l.combinations},
	}
	for _, s := range steps {
		if !t.Run(s.name, s.f) {
			t.FailNow()
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, s := range l.summary {
		t.Log(s)
	}
	t.Logf("NAT lab: %v in all", time.Since(start).Round(time.Second))
}

func (l *natLab) host(name string) *natHost {
	for _, h := range l.hosts {
		if h.name == name {
			return h
		}
	}
	panic("no host " + name)
}

func (l *natLab) note(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.summary = append(l.summary, fmt.Sprintf(format, args...))
}

// makeLab makes the internet namespace (bridge, proxy address) and, for
// every host, its router (with its NAT) and its own namespace.
func (l *natLab) makeLab(t *testing.T) {
	l.nsNet = l.addNS(t, "inet")
	l.nsProxy = l.nsNet
	l.run(t, l.nsNet, "ip", "link", "add", "br0", "type", "bridge")
	l.run(t, l.nsNet, "ip", "addr", "add", natProxyIP+"/24", "dev", "br0")
	l.run(t, l.nsNet, "ip", "addr", "add", natOtherIP+"/24", "dev", "br0")
	l.run(t, l.nsNet, "ip", "link", "set", "br0", "up")
	for _, h := range l.hosts {
		h.nsR = l.addNS(t, "r"+strconv.Itoa(h.i))
		h.nsH = l.addNS(t, h.name)
		l.nsHost[h.name] = h.nsH
		if err := l.lab.BridgePort(l.ctx, l.nsNet, "br0", fmt.Sprintf("w%d", h.i), h.nsR, "wan", h.wan+"/24"); err != nil {
			t.Fatal(err)
		}
		if err := l.lab.Veth(l.ctx, h.nsR, "lan", h.nsH, "eth0"); err != nil {
			t.Fatal(err)
		}
		l.run(t, h.nsR, "ip", "addr", "add", fmt.Sprintf("10.%d.0.1/24", h.i), "dev", "lan")
		l.run(t, h.nsR, "ip", "link", "set", "lan", "up")
		l.run(t, h.nsH, "ip", "addr", "add", fmt.Sprintf("10.%d.0.2/24", h.i), "dev", "eth0")
		l.run(t, h.nsH, "ip", "link", "set", "eth0", "up")
		l.run(t, h.nsH, "ip", "route", "add", "default", "via", fmt.Sprintf("10.%d.0.1", h.i))
		if err := netns.SetNAT(l.ctx, h.nsR, l.lab.Prefix()+"nat", h.kind, "wan", "lan"); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	errs := make([]error, len(l.hosts))
	for k, h := range l.hosts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[k] = l.ping(h.nsH, natProxyIP, 10*time.Second)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("hosts cannot reach the internet through their routers: %v", err)
	}
	t.Logf("internet %s, %d routers and hosts: %s", natProxyIP, len(l.hosts), l.layout())
}

func (l *natLab) layout() string {
	var s []string
	for _, h := range l.hosts {
		s = append(s, fmt.Sprintf("%s(%s, wan %s)", h.name, h.kind, h.wan))
	}
	return strings.Join(s, " ")
}

// helper runs TestNATLabHelper in namespace ns and decodes its result into v.
func (l *natLab) helper(ctx context.Context, ns, mode string, a natHelperArgs, v any) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	b, _ := json.Marshal(a)
	cmd := netns.Command(ctx, ns, exe, "-test.run=^TestNATLabHelper$", "-test.count=1")
	cmd.Env = append(os.Environ(), natHelperEnv+"="+mode, natArgsEnv+"="+string(b))
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("helper %s in %s: %w\n%s", mode, ns, err, out)
	}
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), natResult+" "); ok {
			return json.Unmarshal([]byte(rest), v)
		}
	}
	return fmt.Errorf("helper %s in %s: no result line in:\n%s", mode, ns, out)
}

// checkNAT checks the routers with plain UDP before any vnet daemon runs.
func (l *natLab) checkNAT(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(natHelperArgs{Reflectors: natReflectors, Poke: natPoke})
	refl, err := l.lab.Start("reflector", l.nsNet, filepath.Join(l.dir, "reflector.log"),
		[]string{natHelperEnv + "=reflect", natArgsEnv + "=" + string(b)},
		exe, "-test.run=^TestNATLabHelper$", "-test.count=1")
	if err != nil {
		t.Fatal(err)
	}
	defer refl.Kill()
	ctx, cancel := context.WithTimeout(l.ctx, 30*time.Second)
	defer cancel()

	// Mapping and filtering, every host at once, one socket to three
	// reflectors.
	var wg sync.WaitGroup
	res := make([]netns.ProbeResult, len(l.hosts))
	errs := make([]error, len(l.hosts))
	for k, h := range l.hosts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[k] = l.helper(ctx, h.nsH, "probe", natHelperArgs{Local: fmt.Sprintf("0.0.0.0:%d", natProbe),
				Reflectors: natReflectors, For: 5 * time.Second}, &res[k])
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	for k, h := range l.hosts {
		r := res[k]
		var addrs []string
		for _, m := range r.Mapped {
			ap, err := netip.ParseAddrPort(m)
			if err != nil {
				t.Fatalf("%s: reflector answered %q", h.name, m)
			}
			addrs = append(addrs, ap.Addr().String())
		}
		slices.Sort(addrs)
		addrs = slices.Compact(addrs)
		ports := r.Ports()
		t.Logf("%s behind %s: UDP :%d seen by %d reflectors as %v (%d distinct ports), unsolicited datagrams let in: %d",
			h.name, h.kind, natProbe, len(r.Mapped), r.Mapped, len(ports), len(r.Unsolicited))
		if len(addrs) != 1 || addrs[0] != h.wan {
			t.Errorf("%s: reflectors saw addresses %v, want only the router's WAN %s (no NAT?)", h.name, addrs, h.wan)
		}
		switch h.kind {
		case netns.EIM, netns.Closed:
			if len(ports) != 1 || ports[0] != natProbe {
				t.Errorf("%s (%s): mapped ports %v, want %d for every destination (endpoint-independent mapping)",
					h.name, h.kind, ports, natProbe)
			}
		case netns.Sym:
			if len(ports) != len(natReflectors) {
				t.Errorf("%s (%s): mapped ports %v, want a different one per destination (endpoint-dependent mapping)",
					h.name, h.kind, ports)
			}
		}
		if len(r.Unsolicited) > 0 {
			t.Errorf("%s (%s): unsolicited datagrams from %v reached the host (the router should filter them)",
				h.name, h.kind, r.Unsolicited)
		}
	}

	// The routers themselves: eim and sym answer ping on their WAN, closed
	// ones do not.
	for _, h := range l.hosts {
		err := l.pingOnce(l.nsNet, h.wan)
		if (h.kind == netns.Closed) != (err != nil) {
			t.Errorf("ping from the internet to %s's router (%s, %s): %v", h.name, h.kind, h.wan, err)
		}
	}

	// A naive simultaneous open to the peer's WAN address and the probe
	// port. Two eim hosts succeed even when one starts well before the other
	// (its first datagrams hit the peer's router before that router has a
	// mapping); two sym hosts cannot.
	punch := func(a, b *natHost, stagger, d time.Duration) (bool, bool) {
		var ok [2]bool
		var perr [2]error
		var wg sync.WaitGroup
		for k, p := range [][2]*natHost{{a, b}, {b, a}} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				delay := time.Duration(0)
				if k == 0 {
					delay = stagger
				}
				perr[k] = l.helper(ctx, p[0].nsH, "punch", natHelperArgs{Local: fmt.Sprintf("0.0.0.0:%d", natProbe+1),
					Peer: fmt.Sprintf("%s:%d", p[1].wan, natProbe+1), Delay: delay, For: d}, &ok[k])
			}()
		}
		wg.Wait()
		if err := errors.Join(perr[:]...); err != nil {
			t.Fatal(err)
		}
		return ok[0], ok[1]
	}
	h1, h2, h3, h4, h5, h6 := l.host("h1"), l.host("h2"), l.host("h3"), l.host("h4"), l.host("h5"), l.host("h6")
	var pwg sync.WaitGroup
	var eimOK, symOK, mixOK [2]bool
	pwg.Add(3)
	go func() { defer pwg.Done(); eimOK[0], eimOK[1] = punch(h1, h2, 500*time.Millisecond, 5*time.Second) }()
	go func() { defer pwg.Done(); symOK[0], symOK[1] = punch(h5, h6, 0, 2*time.Second) }()
	go func() { defer pwg.Done(); mixOK[0], mixOK[1] = punch(h3, h4, 0, 2*time.Second) }()
	pwg.Wait()
	t.Logf("naive UDP punch: eim-eim (h1 starting 500 ms after h2) %v/%v, sym-eim %v/%v, sym-sym %v/%v",
		eimOK[0], eimOK[1], mixOK[0], mixOK[1], symOK[0], symOK[1])
	if !eimOK[0] || !eimOK[1] {
		t.Errorf("two hosts behind eim routers cannot punch a hole to each other (h1 heard h2: %v, h2 heard h1: %v)",
			eimOK[0], eimOK[1])
	}
	if symOK[0] || symOK[1] {
		t.Errorf("two hosts behind sym routers punched a hole to each other's probe port: the routers are not symmetric")
	}
	if t.Failed() {
		t.FailNow()
	}
	l.note("LAB: eim keeps one public port for all destinations, sym one per destination; both drop unsolicited UDP; " +
		"naive punching: eim-eim yes, sym-sym no")
}

// daemons starts the proxy and the eight hosts, moves each host's TAP into
// its VM namespace, and waits until every host is up and has classified its
// NAT.
func (l *natLab) daemons(t *testing.T) {
	var err error
	l.proxy, err = l.lab.Start("proxy", l.nsNet, filepath.Join(l.dir, "proxy.log"), nil,
		l.bin, "proxy", "--key-file", l.key, "--listen", natProxyTCP, "--listen", natProxyUDP,
		"--listen", natProxyQUIC, "--api", natProxyAPI)
	if err != nil {
		t.Fatal(err)
	}
	l.expect[l.proxy] = true
	l.waitFor(t, "the proxy's control API", 10*time.Second, func() (bool, string) {
		var hs []natHostJSON
		err := l.ctl(&hs, "hosts")
		return err == nil, fmt.Sprint(err)
	})
	start := time.Now()
	for _, h := range l.hosts {
		args := []string{l.bin, "host", "--name", h.name}
		for _, p := range h.proxies {
			args = append(args, "--proxy", p)
		}
		// Every host gets a UDP socket, even h7 whose star is TCP only, so
		// that its fast paths can be punched.
		args = append(args, "--listen", "tcp://:0", "--listen", "udp://:0")
		args = append(args, "--key-file", l.key, "--tap", fmt.Sprintf("t%d1", h.i), "--api", natHostAPI)
		h.proc, err = l.lab.Start(h.name, h.nsH, filepath.Join(l.dir, h.name+".log"), nil, args...)
		if err != nil {
			t.Fatal(err)
		}
		l.e2eNet.hosts[h.name], l.expect[h.proc] = h.proc, true
	}
	for _, h := range l.hosts {
		vm := &e2eVM{name: fmt.Sprintf("v%d", h.i), host: h.name, tap: fmt.Sprintf("t%d1", h.i),
			ip: fmt.Sprintf("10.99.0.%d", h.i)}
		l.waitFor(t, "TAP "+vm.tap+" in "+h.name+"'s namespace", 10*time.Second, func() (bool, string) {
			_, err := netns.Run(l.ctx, h.nsH, "ip", "link", "show", "dev", vm.tap)
			return err == nil, fmt.Sprint(err)
		})
		vm.ns = l.addNS(t, vm.name)
		l.run(t, h.nsH, "ip", "link", "set", vm.tap, "netns", vm.ns)
		l.run(t, vm.ns, "ip", "addr", "add", vm.ip+"/24", "dev", vm.tap)
		l.run(t, vm.ns, "ip", "link", "set", vm.tap, "up")
		vm.mac = strings.TrimSpace(l.run(t, vm.ns, "cat", "/sys/class/net/"+vm.tap+"/address"))
		h.vm = vm
		l.vms = append(l.vms, vm)
	}
	l.waitFor(t, "all hosts up", 30*time.Second, func() (bool, string) {
		hs, err := l.hostsJSON()
		if err != nil {
			return false, err.Error()
		}
		n := 0
		for _, h := range l.hosts {
			if hs[h.name].State == "up" {
				n++
			}
		}
		return n == len(l.hosts), fmt.Sprintf("%+v", hs)
	})
	t.Logf("all %d hosts up %v after their start", len(l.hosts), time.Since(start).Round(time.Millisecond))
	// STUN may take a moment more; a host that never classifies its NAT is
	// reported below, and the cases go on.
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		hs, err := l.hostsJSON()
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, h := range l.hosts {
			if j := hs[h.name]; j.NAT != "" && j.NAT != "unknown" {
				n++
			}
		}
		if n == len(l.hosts) {
			t.Logf("all hosts classified their NAT %v after their start", time.Since(start).Round(time.Millisecond))
			break
		}
		l.checkAlive(t)
		time.Sleep(200 * time.Millisecond)
	}
	hs, err := l.hostsJSON()
	if err != nil {
		t.Fatal(err)
	}
	links, err := l.linksJSON()
	if err != nil {
		t.Fatal(err)
	}
	var nats []string
	for _, h := range l.hosts {
		j := hs[h.name]
		h.nat = j.NAT
		want := "endpoint-independent"
		if h.kind == netns.Sym {
			want = "endpoint-dependent"
		}
		star := links["star-"+h.name]
		t.Logf("%s behind %s: nat %q, addrs %v, star link %s (%s, %s)", h.name, h.kind, j.NAT, j.Addrs, star.Name,
			star.Kind, star.State)
		nats = append(nats, fmt.Sprintf("%s(%s)=%s", h.name, h.kind, j.NAT))
		if j.NAT != want {
			t.Errorf("BUG? vnet ctl hosts says %s (behind a %s router, checked above) has nat %q, want %q",
				h.name, h.kind, j.NAT, want)
		}
		if star.Kind != h.star || star.State != "up" {
			t.Errorf("%s's star link: %+v, want kind %s (its first --proxy) and up", h.name, star, h.star)
		}
	}
	l.note("NAT as vnet classified it (vnet ctl hosts --json): %s", strings.Join(nats, " "))
}

func (l *natLab) hostsJSON() (map[string]natHostJSON, error) {
	var hs []natHostJSON
	if err := l.ctl(&hs, "hosts"); err != nil {
		return nil, err
	}
	m := map[string]natHostJSON{}
	for _, h := range hs {
		m[h.Name] = h
	}
	return m, nil
}

func (l *natLab) linksJSON() (map[string]natLinkJSON, error) {
	var ls []natLinkJSON
	if err := l.ctl(&ls, "links"); err != nil {
		return nil, err
	}
	m := map[string]natLinkJSON{}
	for _, x := range ls {
		m[x.Name] = x
	}
	return m, nil
}

// starBytes is what the proxy counted on the star links of the given hosts
// (received plus sent).
func (l *natLab) starBytes(t *testing.T, hosts ...*natHost) uint64 {
	t.Helper()
	var st natStatusJSON
	if err := l.ctl(&st, "status"); err != nil {
		t.Fatal(err)
	}
	var n uint64
	found := 0
	for _, p := range st.Ports {
		for _, h := range hosts {
			if p.Name == "star-"+h.name {
				n += p.RxBytes + p.TxBytes
				found++
			}
		}
	}
	if found != len(hosts) {
		t.Fatalf("the proxy's status lists %d of the star ports of %d hosts: %+v", found, len(hosts), st.Ports)
	}
	return n
}

// linkAdd runs `vnet ctl link add a b` and waits until the fast link is up
// with one of the accepted ways (via); it returns the link and the time
// from the command to that state.
func (l *natLab) linkAdd(t *testing.T, a, b *natHost, kind string, d time.Duration, via ...string) (natLinkJSON, time.Duration) {
	t.Helper()
	name := natLinkName(a, b)
	args := []string{"link", "add", a.name, b.name}
	if kind != "" {
		args = append(args, "--kind", kind)
	}
	start := time.Now()
	if err := l.ctl(nil, args...); err != nil {
		t.Fatal(err)
	}
	var last natLinkJSON
	var seen []string // states the link went through, for the failure message
	l.waitFor(t, fmt.Sprintf("fast link %s up via %v", name, via), d, func() (bool, string) {
		ls, err := l.linksJSON()
		if err != nil {
			return false, err.Error()
		}
		x, ok := ls[name]
		if !ok {
			return false, fmt.Sprintf("no link %s in %+v", name, ls)
		}
		last = x
		s := x.State + "/" + x.Via
		if len(seen) == 0 || seen[len(seen)-1] != s {
			seen = append(seen, s)
		}
		return x.Role == "fast" && x.State == "up" && slices.Contains(via, x.Via),
			fmt.Sprintf("%+v (states so far: %v)", x, seen)
	})
	took := time.Since(start)
	if len(seen) > 1 {
		t.Logf("link %s went through %v", name, seen)
	}
	return last, took
}

// natLinkName is the name of the fast link between a and b: the two host
// names in order, whichever way it was asked for; the first one dials (and
// its star's kind is the link's unless --kind says otherwise).
func natLinkName(a, b *natHost) string {
	if a.name > b.name {
		a, b = b, a
	}
	return a.name + "-" + b.name
}

// waitRouteVia waits until the proxy routes a's VM to b's VM over the
// fast link (fast) or the star, pinging meanwhile so the switches learn.
func (l *natLab) waitRouteVia(t *testing.T, a, b *natHost, fast bool) {
	t.Helper()
	want := fmt.Sprintf("%s:link:star-%s proxy:link:star-%s %s:port:%s delivered=true", a.name, a.name, b.name, b.name,
		b.vm.tap)
	if fast {
		want = fmt.Sprintf("%s:link:%s-%s %s:port:%s delivered=true", a.name, a.name, b.name, b.name, b.vm.tap)
	}
	l.waitRoute(t, a.vm, b.vm, want, 15*time.Second)
}

// caseA: two eim hosts; the fast path is punched and a bulk transfer
// between their VMs does not cross the proxy.
func (l *natLab) caseA(t *testing.T) {
	h1, h2 := l.host("h1"), l.host("h2")
	l.pingUntil(t, h1.vm.ns, h2.vm.ip, 15*time.Second) // through the star: the MACs are learned
	// Only punched will do: two hosts behind endpoint-independent NATs can
	// punch (a naive UDP punch between these two works, see check_nat).
	x, took := l.linkAdd(t, h1, h2, "", natPunchWait, "punched")
	if x.Kind != "udp" {
		t.Errorf("fast link h1-h2 is punched but of kind %q, want udp: %+v", x.Kind, x)
	}
	// Behind two NATs: through h2's mapping, the WAN address of its router.
	if x.Path != "nat" || !strings.HasPrefix(x.Addr, h2.wan+":") {
		t.Errorf("fast link h1-h2 path %q, addr %q; want nat, %s:*", x.Path, x.Addr, h2.wan)
	}
	t.Logf("PUNCH: fast link h1-h2 (eim-eim) up via %s (kind %s) %v after `vnet ctl link add h1 h2`",
		x.Via, x.Kind, took.Round(time.Millisecond))
	// The dialing host's own account (the poll above has ~100 ms resolution).
	for _, line := range strings.Split(h1.proc.Output(), "\n") {
		if strings.Contains(line, "fast link made") && strings.Contains(line, "h1-h2") {
			t.Logf("h1's log: %s", line)
		}
	}
	l.note("PUNCH: eim-eim fast link h1-h2 punched (udp) and up %v after `link add`", took.Round(time.Millisecond))
	l.waitRouteVia(t, h1, h2, true)
	l.pingUntil(t, h1.vm.ns, h2.vm.ip, 5*time.Second)

	before, link0 := l.starBytes(t, h1, h2), x
	l.transfer(t, h1.vm, h2.vm, e2eXferBytes)
	after := l.starBytes(t, h1, h2)
	var link1 natLinkJSON
	l.waitFor(t, "the transfer counted on h1-h2", 10*time.Second, func() (bool, string) {
		ls, err := l.linksJSON()
		if err != nil {
			return false, err.Error()
		}
		link1 = ls["h1-h2"]
		return link1.TxBytes+link1.RxBytes-link0.TxBytes-link0.RxBytes >= e2eXferBytes,
			fmt.Sprintf("tx %d -> %d, rx %d -> %d", link0.TxBytes, link1.TxBytes, link0.RxBytes, link1.RxBytes)
	})
	star := after - before
	t.Logf("during the %d MiB transfer: the proxy's star-h1 + star-h2 grew by %d bytes (%.2f%%), fast link h1-h2 by %d "+
		"(its rtt now %d µs)", e2eXferBytes>>20, star, 100*float64(star)/e2eXferBytes,
		link1.TxBytes+link1.RxBytes-link0.TxBytes-link0.RxBytes, link1.RTTus)
	if star > e2eXferBytes/20 {
		t.Errorf("BUG: the proxy's star links to h1 and h2 carried %d bytes during a %d-byte transfer over the "+
			"punched fast link h1-h2 (want well under 5%%): the data crossed the proxy", star, e2eXferBytes)
	}
	l.mu.Lock()
	l.combos["eim-eim "+x.Kind+" (h1-h2)"] = x.Via
	l.mu.Unlock()
}

// caseB: a symmetric host and an eim one: punched if vnet manages, else
// relayed; data flows either way and the label tells the truth about
// where it went.
func (l *natLab) caseB(t *testing.T) {
	h3, h4 := l.host("h3"), l.host("h4")
	l.pingUntil(t, h3.vm.ns, h4.vm.ip, 15*time.Second)
	x, took := l.linkAdd(t, h3, h4, "", natPunchWait, "punched", "relayed")
	t.Logf("fast link h3-h4 (sym-eim) up via %s (kind %s) %v after `link add`", x.Via, x.Kind, took.Round(time.Millisecond))
	l.note("sym-eim fast link h3-h4: %s (kind %s), %v after `link add`", x.Via, x.Kind, took.Round(time.Millisecond))
	l.transferAndCheck(t, h3, h4, x, 5<<20)
	l.mu.Lock()
	l.combos["sym-eim "+x.Kind+" (h3-h4)"] = x.Via
	l.mu.Unlock()
}

// caseC: both symmetric: relayed over the star, data flows.
func (l *natLab) caseC(t *testing.T) {
	h5, h6 := l.host("h5"), l.host("h6")
	l.pingUntil(t, h5.vm.ns, h6.vm.ip, 15*time.Second)
	x, took := l.linkAdd(t, h5, h6, "", natPunchWait+15*time.Second, "relayed", "punched", "direct")
	t.Logf("fast link h5-h6 (sym-sym) up via %s (kind %s) %v after `link add`", x.Via, x.Kind, took.Round(time.Millisecond))
	l.note("sym-sym fast link h5-h6: %s, %v after `link add`", x.Via, took.Round(time.Millisecond))
	if x.Via != "relayed" {
		t.Errorf("fast link h5-h6 between two symmetric NATs says via %q, want relayed (a naive punch between them "+
			"fails, see check_nat)", x.Via)
	}
	l.transferAndCheck(t, h5, h6, x, 5<<20)
	l.mu.Lock()
	l.combos["sym-sym "+x.Kind+" (h5-h6)"] = x.Via
	l.mu.Unlock()
}

// transferAndCheck sends n bytes from a's VM to b's and checks, from the
// proxy's counters, that a relayed link's data crossed the star and a
// punched one's did not.
func (l *natLab) transferAndCheck(t *testing.T, a, b *natHost, x natLinkJSON, n int) {
	t.Helper()
	if x.Via != "relayed" {
		l.waitRouteVia(t, a, b, true)
	}
	l.pingUntil(t, a.vm.ns, b.vm.ip, 10*time.Second)
	before := l.starBytes(t, a, b)
	l.transfer(t, a.vm, b.vm, n)
	star := l.starBytes(t, a, b) - before
	t.Logf("during the %d MiB transfer (link %s-%s via %s) the proxy's star links to %s and %s carried %d bytes",
		n>>20, a.name, b.name, x.Via, a.name, b.name, star)
	switch x.Via {
	case "relayed":
		// Both star links carry it: in from a, out to b.
		if star < uint64(2*n) {
			t.Errorf("link %s-%s is reported relayed, but the proxy's star links carried only %d bytes of a %d-byte transfer",
				a.name, b.name, star, n)
		}
	default:
		if star > uint64(n/20) {
			t.Errorf("BUG: link %s-%s is reported %s, but the proxy's star links carried %d bytes of a %d-byte transfer",
				a.name, b.name, x.Via, star, n)
		}
	}
}

// caseD: hosts behind routers that let nothing in join the star, h7 over
// TCP only and h8 over UDP only; their VMs reach the others and each other.
func (l *natLab) caseD(t *testing.T) {
	h1, h7, h8 := l.host("h1"), l.host("h7"), l.host("h8")
	hs, err := l.hostsJSON()
	if err != nil {
		t.Fatal(err)
	}
	links, err := l.linksJSON()
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range []*natHost{h7, h8} {
		j, star := hs[h.name], links["star-"+h.name]
		t.Logf("%s behind a closed router, --proxy %v: state %s, star link kind %s %s", h.name, h.proxies, j.State,
			star.Kind, star.State)
		if j.State != "up" || star.State != "up" || star.Kind != h.star {
			t.Fatalf("%s behind a closed router: host %+v, star link %+v; want up over %s", h.name, j, star, h.star)
		}
	}
	for _, p := range [][2]*natHost{{h7, h1}, {h8, h1}, {h7, h8}, {h8, h7}} {
		l.pingUntil(t, p[0].vm.ns, p[1].vm.ip, 15*time.Second)
		t.Logf("VM %s (%s, closed, %s star) pings VM %s (%s)", p[0].vm.name, p[0].name, p[0].star, p[1].vm.name, p[1].name)
	}
	l.transfer(t, h8.vm, h7.vm, 2<<20)
	l.note("closed routers: h7 joined the star over tcp, h8 over udp; their VMs ping and a 2 MiB transfer v8->v7 matched")
}

// combinations adds the fast links the cases did not, so that every NAT
// pairing of the lab is counted: how many end up direct or punched, and
// how many relayed.
func (l *natLab) combinations(t *testing.T) {
	// A fast link is UDP by default when both ends have a UDP socket (they
	// all do here, h7 too although its star is TCP), and punched where the
	// NATs allow; a TCP fast path cannot cross two NATs and would end up
	// relayed (never worse than the star).
	type combo struct {
		a, b string
		kind string // for ctl link add --kind; "" for the default
		then string // after the default, delete the link and ask again with --kind then
	}
	extra := []combo{{"h7", "h8", "", "udp"}, {"h2", "h8", "", ""}, {"h6", "h7", "", ""}}
	var wg sync.WaitGroup
	for _, c := range extra {
		a, b := l.host(c.a), l.host(c.b)
		wg.Add(1)
		go func() {
			defer wg.Done()
			t.Run(fmt.Sprintf("%s_%s", a.name, b.name), func(t *testing.T) {
				kind := c.kind
				for {
					x, took := l.linkAdd(t, a, b, kind, natPunchWait+15*time.Second, "punched", "relayed", "direct")
					t.Logf("fast link %s (%s-%s, --kind %q) up via %s (kind %s) %v after `link add`",
						natLinkName(a, b), a.kind, b.kind, kind, x.Via, x.Kind, took.Round(time.Millisecond))
					if x.Kind == "tcp" && x.Via != "relayed" {
						t.Errorf("a TCP fast link between two hosts behind NAT routers says via %q: %+v", x.Via, x)
					}
					l.mu.Lock()
					l.combos[fmt.Sprintf("%s-%s %s (%s)", a.kind, b.kind, x.Kind, natLinkName(a, b))] = x.Via
					l.mu.Unlock()
					if c.then == "" || kind == c.then {
						return
					}
					if x.Kind == "tcp" && x.Via == "relayed" {
						// Data still flows (over the star).
						l.pingUntil(t, a.vm.ns, b.vm.ip, 10*time.Second)
					}
					if err := l.ctl(nil, "link", "del", a.name, b.name); err != nil {
						t.Fatal(err)
					}
					l.waitFor(t, "link "+natLinkName(a, b)+" gone", 10*time.Second, func() (bool, string) {
						ls, err := l.linksJSON()
						if err != nil {
							return false, err.Error()
						}
						_, ok := ls[natLinkName(a, b)]
						return !ok, fmt.Sprintf("%+v", ls[natLinkName(a, b)])
					})
					kind = c.then
				}
			})
		}()
	}
	wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	var keys []string
	for k := range l.combos {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	count := map[string]map[string]int{} // kind -> via -> links
	var parts []string
	for _, k := range keys {
		kind := strings.Fields(k)[1]
		if count[kind] == nil {
			count[kind] = map[string]int{}
		}
		count[kind][l.combos[k]]++
		count[kind]["all"]++
		parts = append(parts, k+": "+l.combos[k])
	}
	var sums []string
	for _, kind := range natSortedKeys(count) {
		c := count[kind]
		sums = append(sums, fmt.Sprintf("%s fast links: %d NAT pairings, %d direct, %d punched, %d relayed",
			kind, c["all"], c["direct"], c["punched"], c["relayed"]))
	}
	l.summary = append(l.summary, fmt.Sprintf("COMBINATIONS: %s — %s", strings.Join(sums, "; "), strings.Join(parts, "; ")))
}

func natSortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// dump logs what the proxy and every host think, the routers' rules and
// every daemon's log.
func (l *natLab) dump(t *testing.T) {
	if l.proxy != nil {
		if done, _ := l.proxy.Exited(); !done {
			for _, what := range []string{"hosts", "links", "status", "vms", "rules"} {
				var v any
				err := l.ctl(&v, what)
				b, _ := json.Marshal(v)
				t.Logf("vnet ctl %s --json (proxy): %s %v", what, b, err)
			}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, h := range l.hosts {
		if h.proc == nil {
			continue
		}
		if done, _ := h.proc.Exited(); done {
			continue
		}
		for _, what := range []string{"status", "links"} {
			out, err := netns.Run(ctx, h.nsH, l.bin, "ctl", "--api", natHostAPI, "--timeout", "3s", "--json", what)
			t.Logf("vnet ctl %s --json (on %s): %s %v", what, h.name, strings.TrimSpace(out), err)
		}
	}
	for _, h := range l.hosts {
		if h.nsR == "" {
			continue
		}
		out, err := netns.Run(ctx, h.nsR, "nft", "list", "ruleset")
		t.Logf("router of %s (%s): nft list ruleset: %v\n%s", h.name, h.kind, err, out)
	}
	for _, p := range l.lab.Procs() {
		t.Logf("----- %s (%s) -----\n%s", p.Name, p.Log, p.Output())
	}
}
