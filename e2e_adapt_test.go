package main

// End-to-end test of adaptation in network namespaces: four hosts with two
// TAP VMs each on a bridge underlay, the proxy's veth shaped by tbf in both
// directions to e2eAdaptMbit (the star's centre is the bottleneck, as on a
// WAN), host-to-host unshaped.
//
//	switch ns:  br0 ── pup ── up  (proxy, tbf on both ends of the veth)
//	             ├──── pu1 ── u1  (host h1; TAPs t11 t12 -> ns v11 v12)
//	             ├──── ...
//	             └──── pu4 ── u4  (host h4; TAPs t41 t42 -> ns v41 v42)
//
// `vnet patterns` all2all across the eight VMs runs first on the star (the
// proxy without --adapt), then, after the proxy is restarted with --adapt,
// once the controller has added its fast paths on its own. The adapted run
// must be clearly faster; when the workload stops the fast paths age out.
// Needs root; skipped otherwise. It reuses the plumbing of e2e_netns_test.go.

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"vnet/internal/netns"
)

const (
	e2eAdaptHosts  = 4
	e2eAdaptVMsPer = 2
	e2eAdaptMbit   = 20
	e2eAdaptSize   = "16KiB"
	e2eAdaptIters  = 20 // of the star run; the adapted run does 10x as many
)

func TestE2EAdapt(t *testing.T) {
	if os.Getenv(e2eHelperEnv) != "" {
		t.Skip("running as TestE2EHelper")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: builds network namespaces, a bridge, veth pairs, TAP devices and tbf qdiscs")
	}
	var missing []string
	missing = append(missing, netns.Missing("ip", "tc", "ping", "go")...)
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

	budget := 4 * time.Minute
	if d, ok := t.Deadline(); ok && time.Until(d)-15*time.Second < budget {
		budget = time.Until(d) - 15*time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), budget)
	t.Cleanup(cancel)

	dir := t.TempDir()
	prefix := fmt.Sprintf("va%d", os.Getpid())
	e := &e2eNet{ctx: ctx, lab: netns.New(prefix), dir: dir, nsHost: map[string]string{},
		hosts: map[string]*netns.Proc{}, expect: map[*netns.Proc]bool{}}
	t.Cleanup(func() {
		if t.Failed() {
			e.dumpInfer(t)
			e.dumpState(t)
			var v any
			err := e.ctl(&v, "plan")
			b, _ := json.Marshal(v)
			t.Logf("vnet ctl plan: %s %v", b, err)
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

	var star, adapted float64
	steps := []struct {
		name string
		f    func(t *testing.T)
	}{
		{"build", e.build},
		{"underlay", func(t *testing.T) {
			e.vmUnderlay(t, e2eAdaptHosts)
			// 50 ms of queue at the bottleneck, like a WAN access link.
			for _, dev := range []struct{ ns, dev string }{{e.nsProxy, "eth0"}, {e.nsSw, "pup"}} {
				e.run(t, dev.ns, "tc", "qdisc", "add", "dev", dev.dev, "root", "tbf",
					"rate", fmt.Sprintf("%dmbit", e2eAdaptMbit), "burst", "16kb", "latency", "50ms")
			}
		}},
		{"daemons", func(t *testing.T) { e.vmDaemons(t, e2eAdaptHosts, e2eAdaptVMsPer) }},
		{"star", func(t *testing.T) {
			star = e.patternsRate(t, "all2all", 7600, e2eAdaptIters)
			if n := e.fastLinks(t); len(n) != 0 {
				t.Fatalf("fast paths without --adapt: %v", n)
			}
			t.Logf("ADAPT: star only: all2all(8) %.2f iterations/s (proxy shaped to %d Mbit/s)", star, e2eAdaptMbit)
		}},
		{"adapt_on", func(t *testing.T) {
			e.expect[e.proxy] = false
			if err := e.proxy.Kill(); err != nil {
				t.Fatal(err)
			}
			e.inferProxy(t, "proxy-adapt.log", "--adapt", "--adapt-interval", "1s", "--adapt-window", "5s",
				"--adapt-dwell", "5s", "--adapt-hysteresis", "0.01")
			e.waitHostsUp(t, 30*time.Second)
			ranks := e.startRanks(t, "all2all", 7700)
			start := time.Now()
			// all2all over four hosts wants all six host pairs; each host has
			// three, the default budget per host.
			want := e2eAdaptHosts * (e2eAdaptHosts - 1) / 2
			e.waitFor(t, fmt.Sprintf("%d fast paths up", want), 60*time.Second, func() (bool, string) {
				for _, p := range ranks {
					if exited, err := p.Exited(); exited {
						t.Fatalf("rank %s exited (%v); its log:\n%s", p.Name, err, p.Output())
					}
				}
				up := e.fastLinks(t)
				return len(up) == want, fmt.Sprint(up)
			})
			t.Logf("ADAPT: %d fast paths up %v after the workload started", want, time.Since(start).Round(time.Millisecond))
			e.stopRanks(t, ranks)
			e.waitRoute(t, e.vm("v11"), e.vm("v21"), e2eRouteFast, 10*time.Second)
		}},
		{"adapted", func(t *testing.T) {
			adapted = e.patternsRate(t, "all2all", 7800, 10*e2eAdaptIters)
			t.Logf("ADAPT: adapted: all2all(8) %.2f iterations/s, %.2fx the star's %.2f", adapted, adapted/star, star)
			if adapted < 1.5*star {
				t.Errorf("adapted all2all runs %.2f iterations/s, star %.2f: want at least 1.5x", adapted, star)
			}
		}},
		{"age_out", func(t *testing.T) {
			start := time.Now()
			e.waitFor(t, "the fast paths to age out", 60*time.Second, func() (bool, string) {
				var ls []e2eLinkJSON
				if err := e.ctl(&ls, "links"); err != nil {
					return false, err.Error()
				}
				var fast []string
				for _, l := range ls {
					if l.Role == "fast" {
						fast = append(fast, l.Name)
					}
				}
				return len(fast) == 0, fmt.Sprint(fast)
			})
			t.Logf("ADAPT: fast paths gone %v after the workload stopped (window 5 s, dwell 5 s)",
				time.Since(start).Round(time.Millisecond))
			e.allPairs(t, 15*time.Second)
		}},
	}
	for _, s := range steps {
		if !t.Run(s.name, s.f) {
			t.FailNow()
		}
	}
}

// fastLinks lists the fast paths that are up.
func (e *e2eNet) fastLinks(t *testing.T) []string {
	t.Helper()
	var ls []e2eLinkJSON
	if err := e.ctl(&ls, "links"); err != nil {
		t.Logf("vnet ctl links: %v", err)
		return nil
	}
	var up []string
	for _, l := range ls {
		if l.Role == "fast" && l.State == "up" {
			up = append(up, l.Name)
		}
	}
	return up
}

// patternsRate runs iters iterations of topo in every VM and returns the
// slowest rank's iterations per second (a BSP application goes at the pace
// of its slowest rank).
func (e *e2eNet) patternsRate(t *testing.T, topo string, port, iters int) float64 {
	t.Helper()
	ranks := e.startRanksN(t, topo, port, iters, e2eAdaptSize)
	slowest := 0.0
	for _, p := range ranks {
		select {
		case <-p.Done():
		case <-e.ctx.Done():
			t.Fatalf("rank %s did not finish; its log:\n%s", p.Name, p.Output())
		}
		if _, err := p.Exited(); err != nil {
			t.Fatalf("rank %s: %v; its log:\n%s", p.Name, err, p.Output())
		}
		var res struct {
			ItersPerS float64 `json:"iters_per_s"`
		}
		out := p.Output()
		i := strings.Index(out, "\n{") // the JSON result, after any log lines
		if i < 0 && strings.HasPrefix(out, "{") {
			i = -1
		} else if i < 0 {
			i = len(out) - 1
		}
		if json.NewDecoder(strings.NewReader(out[i+1:])).Decode(&res) != nil || res.ItersPerS <= 0 {
			t.Fatalf("rank %s printed no iters_per_s; its log:\n%s", p.Name, p.Output())
		}
		if slowest == 0 || res.ItersPerS < slowest {
			slowest = res.ItersPerS
		}
	}
	return slowest
}
