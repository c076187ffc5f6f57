package main

// End-to-end test in network namespaces: the real vnet binary, real TAP
// devices moved into "VM" namespaces, a Linux bridge as the underlay.
//
//	switch ns:  br0 ── pup ── up  (proxy, 192.168.250.1)
//	             ├──── pu1 ── u1  (host h1, 192.168.250.11; TAPs t11 t12 -> ns v11 v12)
//	             └──── pu2 ── u2  (host h2, 192.168.250.12; TAPs t21 t22 -> ns v21 v22)
//
// VM tIj has 10.88.0.<10i+j>/24. Every namespace is named with a prefix
// carrying the test's pid, so parallel runs do not collide; interface names
// live only inside the test's namespaces. Needs root; skipped otherwise.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"vnet/appliance"
	"vnet/internal/netns"
)

const (
	e2eHelperEnv   = "VNET_E2E_HELPER"   // send | recv | relay: TestE2EHelper's mode
	e2eAddrEnv     = "VNET_E2E_ADDR"     // host:port to listen on or dial (relay: e2eRelay's spec)
	e2eBytesEnv    = "VNET_E2E_BYTES"    // how many bytes to send (relay: the delay)
	e2ePaceEnv     = "VNET_E2E_PACE"     // send: bytes per second at most (none: as fast as it goes)
	e2eDeadlineEnv = "VNET_E2E_DEADLINE" // recv: how long to wait for the whole transfer (default 60s)
	e2eProgressEnv = "VNET_E2E_PROGRESS" // recv: print "E2E-PROGRESS bytes" this often (a duration)
	e2eProgress    = "E2E-PROGRESS"      // the receiver's progress line prefix
	e2eResult      = "E2E-RESULT"        // the helper's result line prefix

	e2eProxyIP   = "192.168.250.1"
	e2eProxyURL  = "tcp://" + e2eProxyIP + ":5000"
	e2eProxyAPI  = "127.0.0.1:7777"
	e2eHostAPI   = "127.0.0.1:7778"
	e2eXferBytes = 20 << 20
)

// The JSON shapes of `vnet ctl --json` (DESIGN.md, "JSON shapes"), declared
// here rather than taken from package appliance so that the test checks the
// documented contract.
type (
	e2eHostJSON struct {
		Name  string   `json:"name"`
		Addrs []string `json:"addrs"`
		State string   `json:"state"`
		VMs   []string `json:"vms"`
	}
	e2eLinkJSON struct {
		Name    string `json:"name"`
		A       string `json:"a"`
		B       string `json:"b"`
		Role    string `json:"role"`
		Kind    string `json:"kind"`
		Via     string `json:"via"`
		State   string `json:"state"`
		TxBytes uint64 `json:"tx_bytes"`
		RxBytes uint64 `json:"rx_bytes"`
		Error   string `json:"error"`
		// Passive measurement.
		RTTus          int64   `json:"rtt_us"`
		SRTTus         int64   `json:"srtt_us"`
		TransportRTTus int64   `json:"transport_rtt_us"`
		TxMbps         float64 `json:"tx_mbps"`
		RxMbps         float64 `json:"rx_mbps"`
		CapacityMbps   float64 `json:"capacity_mbps"`
		TxCapacityMbps float64 `json:"tx_capacity_mbps"`
		RxCapacityMbps float64 `json:"rx_capacity_mbps"`
		Loss           float64 `json:"loss"`
	}
	e2eRouteJSON struct {
		Hops []struct {
			Host string `json:"host"`
			To   string `json:"to"`
		} `json:"hops"`
		Delivered bool   `json:"delivered"`
		Note      string `json:"note"`
	}
)

// String renders a route as "h1:link:star-h1 proxy:link:star-h2 h2:port:t21 delivered=true".
func (r e2eRouteJSON) String() string {
	var s []string
	for _, h := range r.Hops {
		s = append(s, h.Host+":"+h.To)
	}
	out := strings.Join(s, " ") + fmt.Sprintf(" delivered=%v", r.Delivered)
	if r.Note != "" {
		out += " (" + r.Note + ")"
	}
	return out
}

type e2eVM struct {
	name string // v11
	host string // h1
	ns   string // full namespace name
	tap  string // t11
	ip   string // 10.88.0.11
	mac  string
}

type e2eNet struct {
	ctx     context.Context
	lab     *netns.Lab
	dir     string
	bin     string
	key     string
	nsSw    string
	nsProxy string
	nsHost  map[string]string // h1 -> namespace
	proxy   *netns.Proc
	hosts   map[string]*netns.Proc
	vms     []*e2eVM
	expect  map[*netns.Proc]bool // processes that must keep running
}

// TestE2EHelper is the socket end of the end-to-end tests' TCP transfers,
// and their WAN relay: a test re-executes its own binary inside a
// namespace with VNET_E2E_HELPER set.
func TestE2EHelper(t *testing.T) {
	mode := os.Getenv(e2eHelperEnv)
	if mode == "" {
		t.Skip("helper of TestE2ENetns; runs only when that test re-executes the test binary")
	}
	if err := e2eHelper(mode, os.Getenv(e2eAddrEnv), os.Getenv(e2eBytesEnv)); err != nil {
		fmt.Fprintf(os.Stderr, "helper %s: %v\n", mode, err)
		os.Exit(3)
	}
}

func e2eHelper(mode, addr, size string) error {
	deadline := time.Now().Add(60 * time.Second)
	var pace int64
	if v := os.Getenv(e2ePaceEnv); v != "" {
		var err error
		if pace, err = strconv.ParseInt(v, 10, 64); err != nil || pace <= 0 {
			return fmt.Errorf("%s=%q: want bytes per second", e2ePaceEnv, v)
		}
		want, _ := strconv.ParseInt(size, 10, 64)
		deadline = deadline.Add(time.Duration(want/pace) * time.Second)
	}
	if v := os.Getenv(e2eDeadlineEnv); v != "" { // the receiver of a paced transfer
		d, err := time.ParseDuration(v)
		if err != nil {
			return fmt.Errorf("%s=%q: %v", e2eDeadlineEnv, v, err)
		}
		deadline = time.Now().Add(d)
	}
	h := sha256.New()
	switch mode {
	case "recv":
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return err
		}
		defer ln.Close()
		ln.(*net.TCPListener).SetDeadline(deadline)
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(deadline)
		var w io.Writer = h
		if v := os.Getenv(e2eProgressEnv); v != "" {
			every, err := time.ParseDuration(v)
			if err != nil {
				return fmt.Errorf("%s=%q: %v", e2eProgressEnv, v, err)
			}
			w = &progressWriter{w: h, every: every}
		}
		n, err := io.Copy(w, c)
		if err != nil {
			return fmt.Errorf("after %d bytes: %w", n, err)
		}
		fmt.Printf("%s %d %x\n", e2eResult, n, h.Sum(nil))
		return nil
	case "send":
		want, err := strconv.ParseInt(size, 10, 64)
		if err != nil {
			return err
		}
		var c net.Conn
		for { // the receiver may not listen yet
			c, err = net.DialTimeout("tcp", addr, 2*time.Second)
			if err == nil {
				break
			}
			if time.Now().After(deadline.Add(-50 * time.Second)) {
				return err
			}
			time.Sleep(100 * time.Millisecond)
		}
		defer c.Close()
		c.SetDeadline(deadline)
		var src io.Reader = rand.Reader
		if pace > 0 {
			src = &pacedReader{r: src, pace: pace, start: time.Now()}
		}
		n, err := io.CopyN(io.MultiWriter(c, h), src, want)
		if err != nil {
			return fmt.Errorf("after %d bytes: %w", n, err)
		}
		if err := c.(*net.TCPConn).CloseWrite(); err != nil {
			return err
		}
		// The receiver closes once it has read everything.
		if _, err := io.Copy(io.Discard, c); err != nil {
			return fmt.Errorf("waiting for the receiver to finish: %w", err)
		}
		fmt.Printf("%s %d %x\n", e2eResult, n, h.Sum(nil))
		return nil
	case "relay":
		return e2eRelay(addr, size)
	case "dial": // one TCP connection attempt, 3 s at most
		c, err := net.DialTimeout("tcp", addr, 3*time.Second)
		if err != nil {
			return err
		}
		return c.Close()
	}
	return fmt.Errorf("unknown mode %q", mode)
}

// pacedReader reads from r no faster than pace bytes a second on average.
// progressWriter prints how many bytes have gone through it, at most once
// every interval, so that a test can watch a stream move.
type progressWriter struct {
	w     io.Writer
	every time.Duration
	n     int64
	last  time.Time
}

func (p *progressWriter) Write(b []byte) (int, error) {
	n, err := p.w.Write(b)
	p.n += int64(n)
	if now := time.Now(); now.Sub(p.last) >= p.every {
		p.last = now
		fmt.Printf("%s %d\n", e2eProgress, p.n)
	}
	return n, err
}

type pacedReader struct {
	r     io.Reader
	pace  int64
	start time.Time
	n     int64
}

func (p *pacedReader) Read(b []byte) (int, error) {
	if len(b) > 64<<10 {
		b = b[:64<<10]
	}
	if ahead := time.Duration(p.n*int64(time.Second)/p.pace) - time.Since(p.start); ahead > 0 {
		time.Sleep(ahead)
	}
	n, err := p.r.Read(b)
	p.n += int64(n)
	return n, err
}

func TestE2ENetns(t *testing.T) {
	e := newE2ENet(t, "ve", 4*time.Minute, "network namespaces, a bridge, veth pairs and TAP devices", []string{"nft"},
		func(e *e2eNet) { e.dumpState(t) })

	steps := []struct {
		name string
		f    func(t *testing.T)
	}{
		{"build", e.build},
		{"underlay", e.underlay},
		{"daemons", e.daemons},
		{"ping_all_pairs", func(t *testing.T) { e.allPairs(t, 15*time.Second) }},
		{"tcp_transfer_star", func(t *testing.T) { e.transfer(t, e.vms[0], e.vms[2], e2eXferBytes) }},
		{"fast_path", e.fastPath},
		{"fast_path_cut", e.fastPathCut},
		{"proxy_kill9", e.proxyKill},
		{"wrong_key", e.wrongKey},
	}
	for _, s := range steps {
		if !t.Run(s.name, s.f) {
			t.FailNow()
		}
	}
}

// checkSysmonAwake checks that the daemon with this pid re-executed itself
// with keepSysmonAwake in its environment, and is still named vnet.
func checkSysmonAwake(t *testing.T, pid int) {
	t.Helper()
	environ, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		t.Fatal(err)
	}
	comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(strings.Split(string(environ), "\x00"), func(kv string) bool {
		return strings.HasPrefix(kv, "GODEBUG=") && strings.Contains(kv, keepSysmonAwake)
	}) {
		t.Errorf("daemon (pid %d) runs without GODEBUG %s: environment %q", pid, keepSysmonAwake, environ)
	}
	if got := strings.TrimSpace(string(comm)); got != "vnet" {
		t.Errorf("daemon (pid %d) is named %q, want vnet", pid, got)
	}
}

// build builds the vnet binary and makes the network key.
func (e *e2eNet) build(t *testing.T) {
	e.bin = filepath.Join(e.dir, "vnet")
	cmd := netns.Command(e.ctx, "", "go", "build", "-o", e.bin, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	e.key = e.keygen(t, "net.key")
}

func (e *e2eNet) keygen(t *testing.T, name string) string {
	out, err := netns.Command(e.ctx, "", e.bin, "keygen").Output()
	if err != nil {
		t.Fatalf("vnet keygen: %v", err)
	}
	path := filepath.Join(e.dir, name)
	if err := os.WriteFile(path, out, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// run runs argv in namespace ns and fails the test if it fails.
func (e *e2eNet) run(t *testing.T, ns string, argv ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(e.ctx, 20*time.Second)
	defer cancel()
	out, err := netns.Run(ctx, ns, argv...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func (e *e2eNet) addNS(t *testing.T, short string) string {
	t.Helper()
	ns, err := e.lab.AddNS(e.ctx, short)
	if err != nil {
		t.Fatal(err)
	}
	return ns
}

// underlay builds the switch namespace with its bridge and the underlay
// namespaces of the proxy and the two hosts.
func (e *e2eNet) underlay(t *testing.T) {
	e.nsSw = e.addNS(t, "sw")
	e.run(t, e.nsSw, "ip", "link", "add", "br0", "type", "bridge")
	e.run(t, e.nsSw, "ip", "link", "set", "br0", "up")
	e.nsProxy = e.attachUnderlay(t, "up", e2eProxyIP)
	e.nsHost["h1"] = e.attachUnderlay(t, "u1", "192.168.250.11")
	e.nsHost["h2"] = e.attachUnderlay(t, "u2", "192.168.250.12")
	for _, h := range []string{"h1", "h2"} {
		e.pingUntil(t, e.nsHost[h], e2eProxyIP, 10*time.Second)
	}
}

// attachUnderlay makes namespace short with eth0 at ip/24 on the bridge.
func (e *e2eNet) attachUnderlay(t *testing.T, short, ip string) string {
	ns := e.addNS(t, short)
	peer := "p" + short
	if err := e.lab.Veth(e.ctx, e.nsSw, peer, ns, "eth0"); err != nil {
		t.Fatal(err)
	}
	e.run(t, e.nsSw, "ip", "link", "set", peer, "master", "br0", "up")
	e.run(t, ns, "ip", "addr", "add", ip+"/24", "dev", "eth0")
	e.run(t, ns, "ip", "link", "set", "eth0", "up")
	return ns
}

func (e *e2eNet) startProxy(t *testing.T, log string) *netns.Proc {
	p, err := e.lab.Start("proxy", e.nsProxy, filepath.Join(e.dir, log), nil,
		e.bin, "proxy", "--key-file", e.key, "--listen", e2eProxyURL, "--api", e2eProxyAPI)
	if err != nil {
		t.Fatal(err)
	}
	e.expect[p] = true
	return p
}

// daemons starts the proxy and the hosts, moves the hosts' TAP devices into
// VM namespaces and waits until both hosts are up.
func (e *e2eNet) daemons(t *testing.T) {
	e.proxy = e.startProxy(t, "proxy.log")
	e.waitFor(t, "the proxy's control API", 10*time.Second, func() (bool, string) {
		var hs []e2eHostJSON
		err := e.ctl(&hs, "hosts")
		return err == nil, fmt.Sprint(err)
	})
	for i, h := range []string{"h1", "h2"} {
		// A TCP star, and a UDP socket too for the UDP fast path.
		args := []string{e.bin, "host", "--name", h, "--proxy", e2eProxyURL, "--key-file", e.key,
			"--listen", "tcp://:0", "--listen", "udp://:0"}
		for j := 1; j <= 2; j++ {
			args = append(args, "--tap", fmt.Sprintf("t%d%d", i+1, j))
		}
		args = append(args, "--api", e2eHostAPI)
		p, err := e.lab.Start(h, e.nsHost[h], filepath.Join(e.dir, h+".log"), nil, args...)
		if err != nil {
			t.Fatal(err)
		}
		e.hosts[h], e.expect[p] = p, true
	}
	for i, h := range []string{"h1", "h2"} {
		for j := 1; j <= 2; j++ {
			e.tapVM(t, e.nsHost[h], &e2eVM{name: fmt.Sprintf("v%d%d", i+1, j), host: h, tap: fmt.Sprintf("t%d%d", i+1, j),
				ip: fmt.Sprintf("10.88.0.%d", (i+1)*10+j)})
		}
	}
	e.waitHostsUp(t, 15*time.Second)
	for _, vm := range e.vms {
		t.Logf("VM %s on %s: %s %s (%s)", vm.name, vm.host, vm.tap, vm.ip, vm.mac)
	}
	checkSysmonAwake(t, e.hosts["h1"].Pid())
}

// tapVM makes vm's namespace and moves the TAP device vm.tap, which its
// daemon creates in namespace daemonNS, into it with vm.ip/24; it records
// the VM's MAC and adds it to e.vms.
func (e *e2eNet) tapVM(t *testing.T, daemonNS string, vm *e2eVM) {
	t.Helper()
	e.waitFor(t, "TAP "+vm.tap+" in "+vm.host+"'s namespace", 10*time.Second, func() (bool, string) {
		_, err := netns.Run(e.ctx, daemonNS, "ip", "link", "show", "dev", vm.tap)
		return err == nil, fmt.Sprint(err)
	})
	vm.ns = e.addNS(t, vm.name)
	e.run(t, daemonNS, "ip", "link", "set", vm.tap, "netns", vm.ns)
	e.run(t, vm.ns, "ip", "addr", "add", vm.ip+"/24", "dev", vm.tap)
	e.run(t, vm.ns, "ip", "link", "set", vm.tap, "up")
	vm.mac = strings.ToLower(strings.TrimSpace(e.run(t, vm.ns, "cat", "/sys/class/net/"+vm.tap+"/address")))
	if _, err := net.ParseMAC(vm.mac); err != nil {
		t.Fatalf("%s's MAC %q: %v", vm.name, vm.mac, err)
	}
	e.vms = append(e.vms, vm)
}

// ctl runs `vnet ctl --json args...` in the proxy's namespace and decodes
// the answer into v (if not nil).
func (e *e2eNet) ctl(v any, args ...string) error { return e.ctlAt(e.nsProxy, e2eProxyAPI, v, args...) }

// ctlAt is ctl against the daemon whose API is api in namespace ns.
func (e *e2eNet) ctlAt(ns, api string, v any, args ...string) error {
	ctx, cancel := context.WithTimeout(e.ctx, 15*time.Second)
	defer cancel()
	argv := append([]string{e.bin, "ctl", "--api", api, "--timeout", "5s", "--json"}, args...)
	cmd := netns.Command(ctx, ns, argv...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("vnet ctl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	if v == nil {
		return nil
	}
	if err := json.Unmarshal(out, v); err != nil {
		return fmt.Errorf("vnet ctl %s: %w in %q", strings.Join(args, " "), err, out)
	}
	return nil
}

// waitFor polls ok until it holds; it fails the test after d, with ok's
// last explanation, or at once if a daemon died.
func (e *e2eNet) waitFor(t *testing.T, what string, d time.Duration, ok func() (bool, string)) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := start.Add(d)
	for {
		done, why := ok()
		if done {
			return time.Since(start)
		}
		e.checkAlive(t)
		if time.Now().After(deadline) || e.ctx.Err() != nil {
			t.Fatalf("timed out after %v waiting for %s: %s", d, what, why)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// checkAlive fails the test if a daemon that should run has exited.
func (e *e2eNet) checkAlive(t *testing.T) {
	t.Helper()
	for p, want := range e.expect {
		if !want {
			continue
		}
		if exited, err := p.Exited(); exited {
			t.Fatalf("%s exited unexpectedly (%v); its log:\n%s", p.Name, err, p.Output())
		}
	}
}

func (e *e2eNet) hostStates() (map[string]string, error) {
	var hs []e2eHostJSON
	if err := e.ctl(&hs, "hosts"); err != nil {
		return nil, err
	}
	m := map[string]string{}
	for _, h := range hs {
		m[h.Name] = h.State
	}
	return m, nil
}

func (e *e2eNet) waitHostsUp(t *testing.T, d time.Duration) time.Duration {
	t.Helper()
	return e.waitFor(t, "hosts h1 and h2 up", d, func() (bool, string) {
		st, err := e.hostStates()
		if err != nil {
			return false, err.Error()
		}
		return st["h1"] == "up" && st["h2"] == "up", fmt.Sprint(st)
	})
}

func (e *e2eNet) link(name string) (e2eLinkJSON, error) {
	var ls []e2eLinkJSON
	if err := e.ctl(&ls, "links"); err != nil {
		return e2eLinkJSON{}, err
	}
	for _, l := range ls {
		if l.Name == name {
			return l, nil
		}
	}
	return e2eLinkJSON{}, fmt.Errorf("no link %s in %+v", name, ls)
}

func (e *e2eNet) waitLink(t *testing.T, name, state string, d time.Duration) time.Duration {
	t.Helper()
	return e.waitFor(t, "link "+name+" "+state, d, func() (bool, string) {
		l, err := e.link(name)
		if err != nil {
			return false, err.Error()
		}
		// A relayed fast path carries its traffic over the star: for this
		// test it is down.
		direct := l.State == "up" && l.Via != "relayed"
		return l.Role == "fast" && direct == (state == "up"), fmt.Sprintf("%+v", l)
	})
}

func (e *e2eNet) route(a, b *e2eVM) (e2eRouteJSON, error) {
	var r e2eRouteJSON
	err := e.ctl(&r, "route", a.mac, b.mac)
	return r, err
}

// waitRoute waits until the route from a to b is want, pinging b from a
// between looks so that the switches learn where the MACs are.
func (e *e2eNet) waitRoute(t *testing.T, a, b *e2eVM, want string, d time.Duration) {
	t.Helper()
	e.waitFor(t, fmt.Sprintf("route %s -> %s = %q", a.name, b.name, want), d, func() (bool, string) {
		r, err := e.route(a, b)
		if err != nil {
			return false, err.Error()
		}
		if got := r.String(); got != want {
			e.pingOnce(a.ns, b.ip)
			return false, "route is " + got
		}
		return true, ""
	})
}

func (e *e2eNet) pingOnce(ns, ip string) error {
	ctx, cancel := context.WithTimeout(e.ctx, 5*time.Second)
	defer cancel()
	_, err := netns.Run(ctx, ns, "ping", "-c", "1", "-W", "1", "-q", ip)
	return err
}

// ping pings ip from namespace ns until a reply comes, for up to d.
func (e *e2eNet) ping(ns, ip string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		err := e.pingOnce(ns, ip)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) || e.ctx.Err() != nil {
			return err
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (e *e2eNet) pingUntil(t *testing.T, ns, ip string, d time.Duration) {
	t.Helper()
	if err := e.ping(ns, ip, d); err != nil {
		t.Fatalf("no ping reply within %v: %v", d, err)
	}
}

// allPairs pings every VM from every other one, all at once.
func (e *e2eNet) allPairs(t *testing.T, d time.Duration) {
	t.Helper()
	start := time.Now()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []string
	for _, a := range e.vms {
		for _, b := range e.vms {
			if a == b {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := e.ping(a.ns, b.ip, d); err != nil {
					mu.Lock()
					errs = append(errs, fmt.Sprintf("%s -> %s: %v", a.name, b.name, err))
					mu.Unlock()
				}
			}()
		}
	}
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("%d of %d pairs cannot ping within %v:\n%s", len(errs), len(e.vms)*(len(e.vms)-1), d,
			strings.Join(errs, "\n"))
	}
	t.Logf("all %d pairs ping (%v)", len(e.vms)*(len(e.vms)-1), time.Since(start).Round(time.Millisecond))
}

// transfer sends n random bytes over TCP from VM a to VM b and checks that
// b received exactly them (count and SHA-256).
func (e *e2eNet) transfer(t *testing.T, a, b *e2eVM, n int) { e.transferPort(t, a, b, n, 9000) }

// transferPort is transfer to TCP port port of b.
func (e *e2eNet) transferPort(t *testing.T, a, b *e2eVM, n, port int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(e.ctx, 90*time.Second)
	defer cancel()
	addr := net.JoinHostPort(b.ip, strconv.Itoa(port))
	helper := func(ns, mode string) *exec.Cmd { return e.helperCmd(t, ctx, ns, mode, addr, strconv.Itoa(n)) }
	start := time.Now()
	recv := helper(b.ns, "recv")
	var recvOut bytes.Buffer
	recv.Stdout, recv.Stderr = &recvOut, &recvOut
	if err := recv.Start(); err != nil {
		t.Fatal(err)
	}
	sendOut, sendErr := helper(a.ns, "send").CombinedOutput()
	if sendErr != nil {
		cancel()
	}
	recvErr := recv.Wait()
	elapsed := time.Since(start)
	if sendErr != nil || recvErr != nil {
		t.Fatalf("transfer %s -> %s: sender: %v\n%s\nreceiver: %v\n%s", a.name, b.name, sendErr, sendOut, recvErr,
			recvOut.String())
	}
	sn, ssum, err := e2eParseResult(string(sendOut))
	if err != nil {
		t.Fatalf("sender: %v", err)
	}
	rn, rsum, err := e2eParseResult(recvOut.String())
	if err != nil {
		t.Fatalf("receiver: %v", err)
	}
	if sn != int64(n) || rn != int64(n) || ssum != rsum {
		t.Fatalf("transfer %s -> %s: sent %d bytes sha256 %s, received %d bytes sha256 %s (want %d bytes)",
			a.name, b.name, sn, ssum, rn, rsum, n)
	}
	t.Logf("TCP %s -> %s: %d MiB, sha256 %s… matches, %v (%.0f Mbit/s incl. helper start-up)", a.name, b.name, n>>20,
		ssum[:16], elapsed.Round(time.Millisecond), float64(n)*8/elapsed.Seconds()/1e6)
}

// helperCmd is the test binary, to run in namespace ns as TestE2EHelper in
// mode with its address and size arguments.
func (e *e2eNet) helperCmd(t *testing.T, ctx context.Context, ns, mode, addr, size string) *exec.Cmd {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := netns.Command(ctx, ns, exe, "-test.run=^TestE2EHelper$", "-test.count=1")
	cmd.Env = append(os.Environ(), e2eHelperEnv+"="+mode, e2eAddrEnv+"="+addr, e2eBytesEnv+"="+size)
	return cmd
}

func e2eParseResult(out string) (int64, string, error) {
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 3 && f[0] == e2eResult {
			n, err := strconv.ParseInt(f[1], 10, 64)
			if _, herr := hex.DecodeString(f[2]); err != nil || herr != nil || len(f[2]) != 64 {
				return 0, "", fmt.Errorf("malformed result line %q", sc.Text())
			}
			return n, f[2], nil
		}
	}
	return 0, "", errors.New("no result line in output:\n" + out)
}

// vm returns the VM named name (v11 ...).
func (e *e2eNet) vm(name string) *e2eVM {
	for _, vm := range e.vms {
		if vm.name == name {
			return vm
		}
	}
	panic("no VM " + name)
}

const (
	e2eRouteStar = "h1:link:star-h1 proxy:link:star-h2 h2:port:t21 delivered=true"
	e2eRouteFast = "h1:link:h1-h2 h2:port:t21 delivered=true"
)

// fastPath opens the fast link h1-h2 and checks that VM11 -> VM21 takes it.
func (e *e2eNet) fastPath(t *testing.T) {
	v11, v21 := e.vm("v11"), e.vm("v21")
	e.waitRoute(t, v11, v21, e2eRouteStar, 10*time.Second)
	// A UDP fast path (the star is TCP here): frames of a 1500-byte MTU VM
	// are split to cross the 1500-byte underlay and put together again.
	if err := e.ctl(nil, "link", "add", "h1", "h2", "--kind", "udp"); err != nil {
		t.Fatal(err)
	}
	took := e.waitLink(t, "h1-h2", "up", 15*time.Second)
	t.Logf("fast link h1-h2 up %v after `link add`", took.Round(time.Millisecond))
	if l, err := e.link("h1-h2"); err != nil || l.Kind != "udp" {
		t.Fatalf("fast link: %+v, %v; want kind udp", l, err)
	}
	e.waitRoute(t, v11, v21, e2eRouteFast, 10*time.Second)
	e.pingUntil(t, v11.ns, v21.ip, 5*time.Second)
	// The largest unfragmented IPv4 packet, DF set: 1472 bytes of ICMP
	// payload, a 1514-byte frame.
	ctx, cancel := context.WithTimeout(e.ctx, 10*time.Second)
	out, err := netns.Run(ctx, v11.ns, "ping", "-M", "do", "-s", "1472", "-c", "3", "-W", "2", v21.ip)
	cancel()
	if err != nil {
		t.Fatalf("1472-byte ping with DF over the UDP fast path: %v\n%s", err, out)
	}

	// The bulk transfer crosses the fast link, not the star.
	before, err := e.link("h1-h2")
	if err != nil {
		t.Fatal(err)
	}
	e.transfer(t, v11, v21, e2eXferBytes)
	e.waitFor(t, "the transfer counted on the fast link", 10*time.Second, func() (bool, string) {
		l, err := e.link("h1-h2")
		if err != nil {
			return false, err.Error()
		}
		return l.TxBytes-before.TxBytes >= e2eXferBytes, fmt.Sprintf("tx_bytes %d -> %d", before.TxBytes, l.TxBytes)
	})
	e.waitRoute(t, v11, v21, e2eRouteFast, 5*time.Second)

	// The TAP devices offload (--offload, the default): the VM's kernel
	// hands over TCP segments of up to 64 KB, which cross the UDP link
	// whole, so the link's frames are far larger than the MTU.
	var st appliance.Status
	if err := e.ctlAt(e.nsHost["h1"], e2eHostAPI, &st, "status"); err != nil {
		t.Fatal(err)
	}
	for _, p := range st.Ports {
		if p.Name == "h1-h2" {
			avg := p.TxBytes / max(p.TxFrames, 1)
			t.Logf("fast link h1-h2: %d frames, %d bytes sent (%d bytes a frame)", p.TxFrames, p.TxBytes, avg)
			if avg <= 1514 {
				t.Errorf("fast link frames average %d bytes: no super-frames crossed", avg)
			}
		}
	}
}

// fastPathCut drops all traffic (TCP and UDP) between the hosts' underlay addresses with nftables:
// the fast link goes down, traffic falls back to the star, and the link
// comes back once the cut is lifted.
func (e *e2eNet) fastPathCut(t *testing.T) {
	v11, v21 := e.vm("v11"), e.vm("v21")
	table := e.lab.Prefix() + "cut"
	rules := fmt.Sprintf(`table inet %[1]s {
	chain in {
		type filter hook input priority 0; policy accept;
		ip saddr 192.168.250.12 ip daddr 192.168.250.11 drop
	}
	chain out {
		type filter hook output priority 0; policy accept;
		ip saddr 192.168.250.11 ip daddr 192.168.250.12 drop
	}
}
`, table)
	ns := e.nsHost["h1"]
	cmd := netns.Command(e.ctx, ns, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft: %v: %s", err, out)
	}
	lifted := false
	lift := func() {
		if !lifted {
			lifted = true
			e.run(t, ns, "nft", "delete", "table", "inet", table)
		}
	}
	defer func() {
		if !lifted { // on failure; the namespace's deletion would do too
			netns.Run(context.Background(), ns, "nft", "delete", "table", "inet", table)
		}
	}()
	cut := time.Now()
	took := e.waitLink(t, "h1-h2", "down", 12*time.Second)
	t.Logf("fast link h1-h2 reported down %v after the cut", took.Round(time.Millisecond))
	e.waitRoute(t, v11, v21, e2eRouteStar, 10*time.Second)
	e.pingUntil(t, v11.ns, v21.ip, 5*time.Second)
	t.Logf("VM11 -> VM21 through the star %v after the cut", time.Since(cut).Round(time.Millisecond))
	// The star itself was never cut: both hosts stayed up.
	if st, err := e.hostStates(); err != nil || st["h1"] != "up" || st["h2"] != "up" {
		t.Fatalf("hosts during the cut: %v %v", st, err)
	}

	lift()
	took = e.waitLink(t, "h1-h2", "up", 30*time.Second)
	t.Logf("fast link h1-h2 back up %v after the cut was lifted", took.Round(time.Millisecond))
	e.waitRoute(t, v11, v21, e2eRouteFast, 10*time.Second)
}

// proxyKill kills the proxy with SIGKILL and restarts it: the hosts rejoin
// by themselves and the VMs talk again without any host restarting.
func (e *e2eNet) proxyKill(t *testing.T) {
	e.expect[e.proxy] = false
	if err := e.proxy.Kill(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	e.proxy = e.startProxy(t, "proxy-restarted.log")
	e.waitHostsUp(t, 30*time.Second)
	t.Logf("REJOIN: both hosts up %v after the proxy was restarted (kill -9, same command)",
		time.Since(start).Round(time.Millisecond))
	e.allPairs(t, 15*time.Second)
	// The fast link outlived the proxy; the new proxy adopts it from h1.
	e.waitLink(t, "h1-h2", "up", 15*time.Second)
	e.waitRoute(t, e.vm("v11"), e.vm("v21"), e2eRouteFast, 10*time.Second)
	for h, p := range e.hosts {
		if exited, err := p.Exited(); exited {
			t.Fatalf("host %s exited: %v", h, err)
		}
	}
}

// wrongKey starts a host with another network's key: the proxy refuses it.
func (e *e2eNet) wrongKey(t *testing.T) {
	other := e.keygen(t, "other.key")
	p, err := e.lab.Start("h3", e.nsHost["h2"], filepath.Join(e.dir, "h3.log"), nil,
		e.bin, "host", "--name", "h3", "--proxy", e2eProxyURL, "--key-file", other, "--api", "127.0.0.1:7779")
	if err != nil {
		t.Fatal(err)
	}
	e.waitFor(t, `"authentication failed" in h3's log`, 10*time.Second, func() (bool, string) {
		if exited, err := p.Exited(); exited {
			return false, fmt.Sprintf("h3 exited (%v)", err)
		}
		out := p.Output()
		return strings.Contains(out, "authentication failed"), "log so far:\n" + out
	})
	for range 2 {
		st, err := e.hostStates()
		if err != nil {
			t.Fatal(err)
		}
		if st["h3"] == "up" {
			t.Fatalf("the proxy lists h3, which has the wrong key, as up: %v", st)
		}
		if st["h1"] != "up" || st["h2"] != "up" {
			t.Fatalf("hosts: %v", st)
		}
		time.Sleep(time.Second)
	}
	if err := p.Kill(); err != nil {
		t.Fatal(err)
	}
}

// dumpState logs what the proxy thinks and every daemon's log.
func (e *e2eNet) dumpState(t *testing.T) {
	if e.proxy != nil {
		if done, _ := e.proxy.Exited(); !done {
			for _, what := range []string{"hosts", "links", "vms", "rules"} {
				var v any
				err := e.ctl(&v, what)
				b, _ := json.Marshal(v)
				t.Logf("vnet ctl %s: %s %v", what, b, err)
			}
		}
	}
	for _, p := range e.lab.Procs() {
		t.Logf("----- %s (%s) -----\n%s", p.Name, p.Log, p.Output())
	}
}

// newE2ENet is the common start of a namespace test: it skips (or, in CI,
// fails) without root or the tools, and returns a lab for namespaces named
// after prefix with a deadline of budget (shortened to the test's own). On
// cleanup it calls dump if the test failed, then removes every process and
// namespace and checks that none is left.
func newE2ENet(t *testing.T, prefix string, budget time.Duration, needs string, tools []string, dump func(e *e2eNet)) *e2eNet {
	t.Helper()
	if os.Getenv(e2eHelperEnv) != "" {
		t.Skip("running as TestE2EHelper")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: builds " + needs)
	}
	missing := netns.Missing(append([]string{"ip", "ping", "go"}, tools...)...)
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		missing = append(missing, "/dev/net/tun")
	}
	if len(missing) > 0 {
		msg := fmt.Sprintf("needs %s (apt-get install iproute2 iputils-ping)", strings.Join(missing, ", "))
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	if d, ok := t.Deadline(); ok && time.Until(d)-15*time.Second < budget {
		budget = time.Until(d) - 15*time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), budget)
	t.Cleanup(cancel) // after the cleanup below, which may still ask the daemons
	prefix = fmt.Sprintf("%s%d", prefix, os.Getpid())
	e := &e2eNet{ctx: ctx, lab: netns.New(prefix), dir: t.TempDir(), nsHost: map[string]string{},
		hosts: map[string]*netns.Proc{}, expect: map[*netns.Proc]bool{}}
	t.Cleanup(func() {
		if t.Failed() && dump != nil {
			dump(e)
		}
		if err := e.lab.Close(); err != nil {
			t.Errorf("cleanup: %v", err)
		}
		cctx, ccancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer ccancel()
		if left, err := netns.Leftovers(cctx, prefix); err == nil && len(left) > 0 {
			t.Errorf("cleanup left namespaces behind: %v", left)
		}
	})
	return e
}
