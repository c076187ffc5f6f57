package main

// The reload test: the proxy runs with --config and --topology files; a
// checksummed TCP transfer crosses the fast link h1-h2 the topology file
// names; the file is edited to add a link h1-h3 and a deny rule for the VM
// pair on h3 and h2, and the proxy gets SIGHUP. The new link comes up, the
// rule blocks its pair, and the transfer over the unchanged link completes
// intact, the link never going down meanwhile.
//
//	switch ns:  br0 ── pup ── up  (proxy, 192.168.250.1)
//	             ├──── pu1 ── u1  (host h1, 192.168.250.11; VM 10.89.0.11 on TAP tv)
//	             ├──── pu2 ── u2  (host h2, 192.168.250.12; VM 10.89.0.12 on TAP tv)
//	             └──── pu3 ── u3  (host h3, 192.168.250.13; VM 10.89.0.13 on TAP tv)
//
// As in the faults test, each VM is a persistent TAP device in its host's
// namespace.

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"vnet/appliance"
)

const (
	reloadPace  = 4 << 20  // bytes a second
	reloadBytes = 80 << 20 // 20 s at reloadPace
)

func TestE2EReload(t *testing.T) {
	e := newE2ENet(t, "vl", 4*time.Minute, "network namespaces, a bridge, veth pairs and TAP devices", nil,
		func(e *e2eNet) { e.dumpState(t) })
	r := &reloadLab{e: e, topo: filepath.Join(e.dir, "net.topo")}
	for _, s := range []struct {
		name string
		fn   func(t *testing.T)
	}{
		{"build", e.build},
		{"underlay", r.underlay},
		{"daemons", r.daemons},
		{"sighup_under_transfer", r.sighupUnderTransfer},
	} {
		if !t.Run(s.name, s.fn) {
			t.FailNow()
		}
	}
}

type reloadLab struct {
	e    *e2eNet
	topo string // the proxy's --topology file
}

var reloadHosts = []string{"h1", "h2", "h3"}

func (r *reloadLab) underlay(t *testing.T) {
	e := r.e
	e.underlay(t)
	e.nsHost["h3"] = e.attachUnderlay(t, "u3", "192.168.250.13")
	e.pingUntil(t, e.nsHost["h3"], e2eProxyIP, 10*time.Second)
}

// daemons starts the proxy with a config file and the topology file (one
// UDP fast link h1-h2), the three hosts with their VMs, and waits for the
// fast link and for every VM pair to ping.
func (r *reloadLab) daemons(t *testing.T) {
	e := r.e
	for _, h := range reloadHosts {
		ns := e.nsHost[h]
		ip := "10.89.0.1" + h[1:]
		e.run(t, ns, "ip", "tuntap", "add", "dev", "tv", "mode", "tap")
		e.run(t, ns, "ip", "addr", "add", ip+"/24", "dev", "tv")
		e.run(t, ns, "ip", "link", "set", "tv", "up")
		mac := strings.ToLower(strings.TrimSpace(e.run(t, ns, "cat", "/sys/class/net/tv/address")))
		e.vms = append(e.vms, &e2eVM{name: "v" + h[1:], host: h, ns: ns, tap: "tv", ip: ip, mac: mac})
	}
	writeTestFile(t, r.topo, "# the reload test's network\nlink h1 h2 kind udp\n")
	conf := filepath.Join(e.dir, "proxy.conf")
	writeTestFile(t, conf, fmt.Sprintf("key-file = %s\nlisten = %s\napi = %s\ntopology = %s\n",
		e.key, e2eProxyURL, e2eProxyAPI, r.topo))
	p, err := e.lab.Start("proxy", e.nsProxy, filepath.Join(e.dir, "proxy.log"), nil, e.bin, "proxy", "--config", conf)
	if err != nil {
		t.Fatal(err)
	}
	e.proxy, e.expect[p] = p, true
	for _, h := range reloadHosts {
		p, err := e.lab.Start(h, e.nsHost[h], filepath.Join(e.dir, h+".log"), nil,
			e.bin, "host", "--name", h, "--proxy", e2eProxyURL, "--key-file", e.key,
			"--listen", "udp://:0", "--tap", "tv", "--api", e2eHostAPI)
		if err != nil {
			t.Fatal(err)
		}
		e.hosts[h], e.expect[p] = p, true
	}
	e.waitFor(t, "hosts h1, h2 and h3 up", 20*time.Second, func() (bool, string) {
		st, err := e.hostStates()
		return err == nil && st["h1"] == "up" && st["h2"] == "up" && st["h3"] == "up", fmt.Sprint(st, err)
	})
	e.waitLink(t, "h1-h2", "up", 20*time.Second)
	e.allPairs(t, 15*time.Second)
	e.waitRoute(t, e.vm("v1"), e.vm("v2"), "h1:link:h1-h2 h2:port:tv delivered=true", 10*time.Second)
}

func writeTestFile(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
}

// linkSample is what `ctl links` said of the unchanged link at one moment.
type linkSample struct {
	state, via string
	tx         uint64
	err        error
}

func (r *reloadLab) sighupUnderTransfer(t *testing.T) {
	e := r.e
	v1, v2, v3 := e.vm("v1"), e.vm("v2"), e.vm("v3")
	ctx, cancel := context.WithTimeout(e.ctx, 2*time.Minute)
	defer cancel()
	addr := net.JoinHostPort(v2.ip, "9000")
	recv := e.helperCmd(t, ctx, v2.ns, "recv", addr, "0")
	recv.Env = append(recv.Env, e2eDeadlineEnv+"=2m")
	var recvOut, sendOut bytes.Buffer
	recv.Stdout, recv.Stderr = &recvOut, &recvOut
	if err := recv.Start(); err != nil {
		t.Fatal(err)
	}
	send := e.helperCmd(t, ctx, v1.ns, "send", addr, strconv.Itoa(reloadBytes))
	send.Env = append(send.Env, e2ePaceEnv+"="+strconv.Itoa(reloadPace))
	send.Stdout, send.Stderr = &sendOut, &sendOut
	start := time.Now()
	if err := send.Start(); err != nil {
		t.Fatal(err)
	}
	sent := make(chan error, 1)
	go func() { sent <- send.Wait() }()

	// Under way on the fast link.
	before, err := e.link("h1-h2")
	if err != nil {
		t.Fatal(err)
	}
	e.waitFor(t, "the transfer moving on h1-h2", 15*time.Second, func() (bool, string) {
		l, err := e.link("h1-h2")
		return err == nil && l.TxBytes >= before.TxBytes+4<<20, fmt.Sprintf("%+v %v", l, err)
	})
	// The pair the deny rule will cut talks now.
	e.pingUntil(t, v2.ns, v3.ip, 5*time.Second)

	// Watch the unchanged link from before the reload until the end of
	// the checks.
	var samples []linkSample
	var mu sync.Mutex
	stopWatch := make(chan struct{})
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		for {
			l, err := e.link("h1-h2")
			mu.Lock()
			samples = append(samples, linkSample{l.State, l.Via, l.TxBytes, err})
			mu.Unlock()
			select {
			case <-stopWatch:
				return
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()

	deny := fmt.Sprintf("rule h3 %s %s -> deny", v3.mac, v2.mac)
	writeTestFile(t, r.topo, "# the reload test's network, edited\nlink h1 h2 kind udp\nlink h1 h3 kind udp\n"+deny+"\n")
	sighupAt := time.Since(start)
	if err := e.proxy.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}

	// The new link comes up and carries v1 <-> v3.
	took := e.waitLink(t, "h1-h3", "up", 20*time.Second)
	t.Logf("RELOAD: SIGHUP at %v into the transfer; link h1-h3 up %v later", sighupAt.Round(100*time.Millisecond),
		took.Round(time.Millisecond))
	e.waitRoute(t, v1, v3, "h1:link:h1-h3 h3:port:tv delivered=true", 10*time.Second)
	e.pingUntil(t, v1.ns, v3.ip, 5*time.Second)

	// The deny rule is in the proxy's rules and on h3, and cuts v2 <-> v3.
	var rules []appliance.RuleInfo
	if err := e.ctl(&rules, "rules"); err != nil {
		t.Fatal(err)
	}
	want := appliance.RuleInfo{Host: "h3", Src: v3.mac, Dst: v2.mac, To: "deny"}
	if !hasRule(rules, want) {
		t.Fatalf("ctl rules after the reload: %+v, want %+v among them", rules, want)
	}
	e.waitFor(t, "the deny rule on h3", 10*time.Second, func() (bool, string) {
		var rs []appliance.RuleInfo
		err := e.ctlAt(e.nsHost["h3"], e2eHostAPI, &rs, "rules")
		return err == nil && hasRule(rs, want), fmt.Sprintf("%+v %v", rs, err)
	})
	for i := range 3 {
		if err := e.pingOnce(v2.ns, v3.ip); err == nil {
			t.Fatalf("ping %d from v2 to v3 got a reply through the deny rule", i+1)
		}
	}
	e.waitFor(t, "the deny rule counting v3's dropped replies", 10*time.Second, func() (bool, string) {
		var rs []appliance.RuleInfo
		err := e.ctlAt(e.nsHost["h3"], e2eHostAPI, &rs, "rules")
		for _, r := range rs {
			if r.To == "deny" && r.Hits > 0 {
				return true, ""
			}
		}
		return false, fmt.Sprintf("%+v %v", rs, err)
	})
	e.pingUntil(t, v1.ns, v2.ip, 5*time.Second) // other pairs still talk

	if log := e.proxy.Output(); !strings.Contains(log, `msg="SIGHUP: reloaded"`) ||
		!strings.Contains(log, `change="+ link h1 h3 kind udp"`) || strings.Contains(log, `change="- link h1 h2`) {
		t.Fatalf("the proxy's log does not show the SIGHUP adding h1-h3 alone:\n%s", log)
	}

	// Reloading the same files again changes nothing.
	var res appliance.ReloadResult
	if err := e.ctl(&res, "reload"); err != nil || len(res.Changes) != 0 {
		t.Fatalf("a second reload of the same file: %+v %v", res, err)
	}

	// The transfer completes intact.
	sendErr := <-sent
	if sendErr != nil {
		cancel()
	}
	recvErr := recv.Wait()
	close(stopWatch)
	<-watched
	if sendErr != nil || recvErr != nil {
		t.Fatalf("transfer: sender: %v\n%s\nreceiver: %v\n%s", sendErr, sendOut.String(), recvErr, recvOut.String())
	}
	sn, ssum, err := e2eParseResult(sendOut.String())
	if err != nil {
		t.Fatalf("sender: %v", err)
	}
	rn, rsum, err := e2eParseResult(recvOut.String())
	if err != nil {
		t.Fatalf("receiver: %v", err)
	}
	if sn != reloadBytes || rn != sn || rsum != ssum {
		t.Fatalf("sent %d bytes sha256 %s, received %d bytes sha256 %s", sn, ssum, rn, rsum)
	}

	// The unchanged link stayed up throughout, on the same connection: its
	// counter never went back, and each end made it once.
	mu.Lock()
	defer mu.Unlock()
	var last uint64
	for i, s := range samples {
		if s.err != nil || s.state != "up" || s.via == "relayed" || s.tx < last {
			t.Fatalf("h1-h2 at sample %d of %d: %+v (tx before %d); want up, direct, tx growing", i+1, len(samples), s, last)
		}
		last = s.tx
	}
	for _, h := range []string{"h1", "h2"} {
		log := e.hosts[h].Output()
		if n := strings.Count(log, `msg="fast link up" host=`+h+` link=h1-h2`); n != 1 {
			t.Fatalf("%s made fast link h1-h2 %d times; want once:\n%s", h, n, log)
		}
		if strings.Contains(log, `msg="fast link down" host=`+h+` link=h1-h2`) {
			t.Fatalf("fast link h1-h2 went down on %s:\n%s", h, log)
		}
	}
	t.Logf("RELOAD: %d MiB arrived intact (sha256 %s…) in %v; h1-h2 up in all %d samples, its tx %d -> %d bytes",
		rn>>20, rsum[:16], time.Since(start).Round(100*time.Millisecond), len(samples), samples[0].tx, last)
}

func hasRule(rs []appliance.RuleInfo, want appliance.RuleInfo) bool {
	for _, r := range rs {
		if r.Host == want.Host && r.Src == want.Src && r.Dst == want.Dst && r.To == want.To {
			return true
		}
	}
	return false
}
