package main

// End-to-end test of passive measurement (DESIGN.md, "Passive measurement
// (Wren's idea)"): every host reaches the proxy across a "WAN" with a known
// RTT and bandwidth, and `vnet ctl links` must find both from the VMs' own
// traffic.
//
//	ns p (proxy, TAP tp -> VM vp)   eth0 10.96.0.1
//	        │
//	ns r (router): eth0 10.96.0.2; a relay adds e2eMeasureDelay each way
//	        ├── e1 10.96.1.1 ── eth0 10.96.1.2  ns h1: tcp star,  tbf on eth0
//	        ├── e2 10.96.2.1 ── eth0 10.96.2.2  ns h2: udp star,  tbf on eth0
//	        └── e3 10.96.3.1 ── eth0 10.96.3.2  ns h3: quic star, tbf on eth0
//
// Each host has one TAP VM (vN, 10.88.0.N) that sends bulk TCP to vp
// (10.88.0.100), so each star link is full in the host-to-proxy direction,
// where tbf shapes it to e2eMeasureMbit. This kernel has no netem: the delay
// comes from the relay (netns.DelayTCP, netns.DelayUDP), in user space.

import (
	"context"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"vnet/internal/netns"
)

const (
	e2eMeasureMbit    = 20                    // tbf rate on every host's uplink
	e2eMeasureDelay   = 10 * time.Millisecond // the relay's, each way
	e2eMeasureTraffic = 8 * time.Second       // of bulk traffic before the verdict
	e2eMeasureHosts   = 3
	// e2eMeasureQuiet is how long the links stay idle before the traffic
	// (three keepalive echoes each).
	e2eMeasureQuiet = 3 * time.Second
)

// e2eMeasureKinds are the star links' kinds, h1's first.
var e2eMeasureKinds = [e2eMeasureHosts]string{"tcp", "udp", "quic"}

func TestE2EMeasure(t *testing.T) {
	e := newE2ENet(t, "vw", 3*time.Minute, "network namespaces, veth pairs, TAP devices and tbf qdiscs", []string{"tc"},
		func(e *e2eNet) { e.dumpState(t) })
	for _, s := range []struct {
		name string
		f    func(t *testing.T)
	}{
		{"build", e.build},
		{"wan", e.measureWAN},
		{"daemons", e.measureDaemons},
		{"bulk_traffic", e.measureAccuracy},
	} {
		if !t.Run(s.name, s.f) {
			t.FailNow()
		}
	}
}

// measureWAN builds the proxy's, the router's and the hosts' namespaces,
// shapes every host's uplink and starts the delaying relay in the router.
func (e *e2eNet) measureWAN(t *testing.T) {
	e.nsProxy = e.addNS(t, "p")
	nsR := e.addNS(t, "r")
	if err := e.lab.Veth(e.ctx, e.nsProxy, "eth0", nsR, "eth0"); err != nil {
		t.Fatal(err)
	}
	e.run(t, e.nsProxy, "ip", "addr", "add", "10.96.0.1/24", "dev", "eth0")
	e.run(t, nsR, "ip", "addr", "add", "10.96.0.2/24", "dev", "eth0")
	var relays []string
	for i, kind := range e2eMeasureKinds {
		h, n := fmt.Sprintf("h%d", i+1), i+1
		ns := e.addNS(t, h)
		e.nsHost[h] = ns
		rif := fmt.Sprintf("e%d", n)
		if err := e.lab.Veth(e.ctx, nsR, rif, ns, "eth0"); err != nil {
			t.Fatal(err)
		}
		e.run(t, nsR, "ip", "addr", "add", fmt.Sprintf("10.96.%d.1/24", n), "dev", rif)
		e.run(t, ns, "ip", "addr", "add", fmt.Sprintf("10.96.%d.2/24", n), "dev", "eth0")
		e.run(t, nsR, "ip", "link", "set", rif, "up")
		e.run(t, ns, "ip", "link", "set", "eth0", "up")
		// 50 ms of queue: more than the path's bandwidth-delay product, so
		// a TCP sender keeps the link full.
		e.run(t, ns, "tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", fmt.Sprintf("%dmbit", e2eMeasureMbit),
			"burst", "16kb", "latency", "50ms")
		relay, port := "udp", e2eMeasurePort(kind)
		if kind == "tcp" {
			relay = "tcp"
		}
		relays = append(relays, fmt.Sprintf("%s 10.96.%d.1:%d 10.96.0.1:%d", relay, n, port, port))
	}
	for _, ns := range []string{e.nsProxy, nsR} {
		e.run(t, ns, "ip", "link", "set", "eth0", "up")
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	p, err := e.lab.Start("relay", nsR, filepath.Join(e.dir, "relay.log"),
		[]string{e2eHelperEnv + "=relay", e2eAddrEnv + "=" + strings.Join(relays, ","), e2eBytesEnv + "=" + e2eMeasureDelay.String()},
		exe, "-test.run=^TestE2EHelper$", "-test.count=1")
	if err != nil {
		t.Fatal(err)
	}
	e.expect[p] = true
	e.pingUntil(t, nsR, "10.96.0.1", 10*time.Second)
	for i := range e2eMeasureKinds {
		e.pingUntil(t, e.nsHost[fmt.Sprintf("h%d", i+1)], fmt.Sprintf("10.96.%d.1", i+1), 10*time.Second)
	}
}

// e2eVerdict is what a star link reported during the traffic.
type e2eVerdict struct {
	first time.Duration // when capacity and RTT were first both within tolerance (0: never)
	last  e2eLinkJSON
}

func (v *e2eVerdict) within() string {
	if v.first == 0 {
		return "never"
	}
	return "after " + v.first.Round(100*time.Millisecond).String()
}

// e2eMeasurePort is the proxy's port for a star link of kind.
func e2eMeasurePort(kind string) int {
	if kind == "quic" {
		return 5001
	}
	return 5000
}

// e2eRelay runs the relays of spec ("tcp|udp LISTEN UPSTREAM", comma
// separated), each delaying by delay, until the process is killed.
func e2eRelay(spec, delay string) error {
	d, err := time.ParseDuration(delay)
	if err != nil {
		return err
	}
	errs := make(chan error, 1)
	for _, r := range strings.Split(spec, ",") {
		f := strings.Fields(r)
		if len(f) != 3 {
			return fmt.Errorf("relay %q: want KIND LISTEN UPSTREAM", r)
		}
		serve := netns.DelayTCP
		if f[0] == "udp" {
			serve = netns.DelayUDP
		}
		go func() { errs <- fmt.Errorf("relay %s: %w", r, serve(context.Background(), f[1], f[2], d)) }()
	}
	return <-errs
}

// measureDaemons starts the proxy (with a TAP VM of its own, the sink) and
// one host per star link kind (each with a TAP VM, a source).
func (e *e2eNet) measureDaemons(t *testing.T) {
	p, err := e.lab.Start("proxy", e.nsProxy, filepath.Join(e.dir, "proxy.log"), nil,
		e.bin, "proxy", "--key-file", e.key, "--listen", "tcp://10.96.0.1:5000", "--listen", "udp://10.96.0.1:5000",
		"--listen", "quic://10.96.0.1:5001", "--tap", "tp", "--api", e2eProxyAPI)
	if err != nil {
		t.Fatal(err)
	}
	e.proxy, e.expect[p] = p, true
	for i, kind := range e2eMeasureKinds {
		h := fmt.Sprintf("h%d", i+1)
		p, err := e.lab.Start(h, e.nsHost[h], filepath.Join(e.dir, h+".log"), nil, e.bin, "host", "--name", h,
			"--key-file", e.key, "--proxy", fmt.Sprintf("%s://10.96.%d.1:%d", kind, i+1, e2eMeasurePort(kind)),
			"--tap", fmt.Sprintf("t%d", i+1), "--api", e2eHostAPI)
		if err != nil {
			t.Fatal(err)
		}
		e.hosts[h], e.expect[p] = p, true
	}
	e.tapVM(t, e.nsProxy, &e2eVM{name: "vp", host: "proxy", tap: "tp", ip: "10.88.0.100"})
	for i := range e2eMeasureKinds {
		h := fmt.Sprintf("h%d", i+1)
		e.tapVM(t, e.nsHost[h], &e2eVM{name: fmt.Sprintf("v%d", i+1), host: h, tap: fmt.Sprintf("t%d", i+1),
			ip: fmt.Sprintf("10.88.0.%d", i+1)})
	}
	e.waitFor(t, "every host up", 20*time.Second, func() (bool, string) {
		st, err := e.hostStates()
		if err != nil {
			return false, err.Error()
		}
		for h := range e.hosts {
			if st[h] != "up" {
				return false, fmt.Sprint(st)
			}
		}
		return true, ""
	})
	for _, vm := range e.vms[1:] {
		e.pingUntil(t, vm.ns, e.vms[0].ip, 10*time.Second)
	}
	// Idle keepalives first: the path RTT is the smallest echo, and under
	// load every echo queues.
	e.waitFor(t, "every star link's RTT", 10*time.Second, func() (bool, string) {
		ls, err := e.starLinks()
		if err != nil {
			return false, err.Error()
		}
		for _, l := range ls {
			if l.RTTus <= 0 {
				return false, fmt.Sprintf("%+v", ls)
			}
		}
		return len(ls) == e2eMeasureHosts, fmt.Sprintf("%+v", ls)
	})
	// The first echoes come while four daemons start on two cores, and a
	// busy machine (CI's) can delay every one of them by a few ms. A few
	// more keepalive intervals of quiet give the minimum filter echoes
	// taken at rest, as a link that has been up a while has.
	time.Sleep(e2eMeasureQuiet)
}

// starLinks is `vnet ctl links` at the proxy, star links only, by host.
func (e *e2eNet) starLinks() (map[string]e2eLinkJSON, error) {
	var ls []e2eLinkJSON
	if err := e.ctl(&ls, "links"); err != nil {
		return nil, err
	}
	out := map[string]e2eLinkJSON{}
	for _, l := range ls {
		if l.Role == "star" && l.State == "up" {
			out[l.B] = l
		}
	}
	return out, nil
}

// measureAccuracy runs bulk TCP from every host's VM to the proxy's and,
// after e2eMeasureTraffic of it, compares what `links` reports with the
// WAN's ground truth: capacity within 15 % of the tbf rate, RTT within 10 %
// of the relay's delay both ways. (Capacity counts frame bytes, tbf wire
// bytes: the difference is the links' overhead, about 5 % on tcp and 9 % on
// udp and quic, whose 1514-byte frames travel as two datagrams.)
func (e *e2eNet) measureAccuracy(t *testing.T) {
	wantRTT := 2 * e2eMeasureDelay
	ctx, stop := context.WithCancel(e.ctx)
	var wg sync.WaitGroup
	defer func() { stop(); wg.Wait() }()
	sink := e.vms[0]
	for i, src := range e.vms[1:] {
		addr := fmt.Sprintf("%s:%d", sink.ip, 9001+i)
		recv := e.helperCmd(t, ctx, sink.ns, "recv", addr, "0")
		send := e.helperCmd(t, ctx, src.ns, "send", addr, fmt.Sprint(1<<30))
		for _, c := range []*exec.Cmd{recv, send} {
			if err := c.Start(); err != nil {
				t.Fatal(err)
			}
			wg.Add(1)
			go func() { defer wg.Done(); c.Wait() }()
		}
	}
	start := time.Now()

	got := map[string]*e2eVerdict{}
	capOK := func(l e2eLinkJSON) bool { return math.Abs(l.CapacityMbps-e2eMeasureMbit) <= 0.15*e2eMeasureMbit }
	rttOK := func(l e2eLinkJSON) bool {
		return math.Abs(float64(l.RTTus)-float64(wantRTT.Microseconds())) <= 0.10*float64(wantRTT.Microseconds())
	}
	for time.Since(start) < e2eMeasureTraffic {
		time.Sleep(500 * time.Millisecond)
		e.checkAlive(t)
		ls, err := e.starLinks()
		if err != nil {
			t.Fatal(err)
		}
		for h, l := range ls {
			v := got[h]
			if v == nil {
				v = &e2eVerdict{}
				got[h] = v
			}
			v.last = l
			if v.first == 0 && capOK(l) && rttOK(l) {
				v.first = time.Since(start)
			}
		}
	}
	t.Logf("ground truth: tbf %d Mbit/s host -> proxy, RTT %v (relay %v each way); after %v of bulk TCP:",
		e2eMeasureMbit, wantRTT, e2eMeasureDelay, e2eMeasureTraffic)
	for i, kind := range e2eMeasureKinds {
		h := fmt.Sprintf("h%d", i+1)
		v := got[h]
		if v == nil {
			t.Errorf("star-%s not listed", h)
			continue
		}
		l := v.last
		t.Logf("  star-%s %-4s capacity %5.1f Mbit/s (%+5.1f%%; carrying %.1f) RTT %6.2f ms (%+5.1f%%; smoothed %.1f ms, transport's %.2f ms) loss %.2f%%; both within tolerance %s",
			h, kind, l.CapacityMbps, 100*(l.CapacityMbps/e2eMeasureMbit-1), l.RxMbps,
			float64(l.RTTus)/1e3, 100*(float64(l.RTTus)/float64(wantRTT.Microseconds())-1), float64(l.SRTTus)/1e3,
			float64(l.TransportRTTus)/1e3, 100*l.Loss, v.within())
		// The sender's own view: TCP's kernel says when its send queue
		// was not empty (Wren's idea); a UDP or QUIC sender whose VM's TCP
		// paces itself to the path is never backlogged (the receiver's
		// estimate above is the one that counts). What a sender claims must
		// be right.
		var own []e2eLinkJSON
		if err := e.ctlAt(e.nsHost[h], e2eHostAPI, &own, "links"); err != nil || len(own) == 0 || own[0].Role != "star" {
			t.Errorf("%s's own links: %v %+v", h, err, own)
		} else {
			c := own[0].TxCapacityMbps
			t.Logf("  star-%s %-4s as %s sees it: sending capacity %.1f Mbit/s (%+.1f%%), loss %.2f%%", h, kind, h, c,
				100*(c/e2eMeasureMbit-1), 100*own[0].Loss)
			if (kind == "tcp" || c > 0) && !capOK(e2eLinkJSON{CapacityMbps: c}) {
				t.Errorf("%s (%s star): its own sending capacity %.1f Mbit/s, want %d ± 15%%", h, kind, c, e2eMeasureMbit)
			}
		}
		if !capOK(l) {
			t.Errorf("star-%s (%s): capacity %.1f Mbit/s, want %d ± 15%%", h, kind, l.CapacityMbps, e2eMeasureMbit)
		}
		if !rttOK(l) {
			t.Errorf("star-%s (%s): RTT %dµs, want %v ± 10%%", h, kind, l.RTTus, wantRTT)
		}
		// QUIC's own RTT crosses the relay too (TCP's ends there): the two
		// measurements must agree.
		if kind == "quic" && !rttOK(e2eLinkJSON{RTTus: l.TransportRTTus}) {
			t.Errorf("star-%s (%s): quic-go's RTT %dµs, want %v ± 10%% like the echoes'", h, kind, l.TransportRTTus, wantRTT)
		}
	}
}
