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
// `vnet patterns` all2all across the eight VMs runs on the star (the
// controller off), with every host pair linked by hand from the start, and
// with the controller on, once it has added its fast paths by itself. The
// adapted run must be clearly faster than the star; when the workload
// stops the fast paths age out.
// Needs root; skipped otherwise. It reuses the plumbing of e2e_netns_test.go.

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

const (
	e2eAdaptHosts  = 4
	e2eAdaptVMsPer = 2
	e2eAdaptMbit   = 20
	e2eAdaptSize   = "16KiB"
	e2eAdaptIters  = 20 // of the star run; the adapted run does 10x as many
)

func TestE2EAdapt(t *testing.T) {
	e := newE2ENet(t, "va", 4*time.Minute, "network namespaces, a bridge, veth pairs, TAP devices and tbf qdiscs",
		[]string{"tc"}, func(e *e2eNet) {
			e.dumpInfer(t)
			e.dumpState(t)
			var v any
			err := e.ctl(&v, "plan")
			b, _ := json.Marshal(v)
			t.Logf("vnet ctl plan: %s %v", b, err)
		})

	// VNET_ADAPT_TOPOLOGIES (bench/adapt.sh) runs more patterns; CI runs all2all.
	topos := []string{"all2all"}
	if v := os.Getenv("VNET_ADAPT_TOPOLOGIES"); v != "" {
		topos = strings.Split(v, ",")
	}
	type step struct {
		name string
		f    func(t *testing.T)
	}
	steps := []step{
		{"build", e.build},
		{"underlay", func(t *testing.T) {
			e.vmUnderlay(t, e2eAdaptHosts)
			// 50 ms of queue at the bottleneck, like a WAN access link.
			for _, dev := range []struct{ ns, dev string }{{e.nsProxy, "eth0"}, {e.nsSw, "pup"}} {
				e.run(t, dev.ns, "tc", "qdisc", "add", "dev", dev.dev, "root", "tbf",
					"rate", fmt.Sprintf("%dmbit", e2eAdaptMbit), "burst", "16kb", "latency", "50ms")
			}
		}},
		{"daemons", func(t *testing.T) {
			e.vmDaemons(t, e2eAdaptHosts, e2eAdaptVMsPer, "--adapt", "--adapt-interval", "1s", "--adapt-window", "5s",
				"--adapt-dwell", "5s", "--adapt-hysteresis", "0.01")
			e.ctlOK(t, "adapt", "off")
		}},
	}
	for i, topo := range topos {
		port := 7600 + 100*i
		var star float64
		steps = append(steps,
			step{topo + "_star", func(t *testing.T) {
				e.ctlOK(t, "adapt", "off")
				e.ctlOK(t, "adapt", "reset")
				e.waitFor(t, "no fast paths", 30*time.Second, func() (bool, string) {
					n := e.fastLinks(t)
					return len(n) == 0, fmt.Sprint(n)
				})
				star = e.patternsRate(t, topo, port, e2eAdaptIters)
				t.Logf("ADAPT: %s star only: %.2f iterations/s (proxy shaped to %d Mbit/s)", topo, star, e2eAdaptMbit)
			}},
			step{topo + "_fast_from_start", func(t *testing.T) {
				// The hand-built optimum to compare with: every host pair
				// linked before the workload starts.
				var names []string
				for a := 1; a <= e2eAdaptHosts; a++ {
					for b := a + 1; b <= e2eAdaptHosts; b++ {
						e.ctlOK(t, "link", "add", fmt.Sprintf("h%d", a), fmt.Sprintf("h%d", b))
						names = append(names, fmt.Sprintf("h%d-h%d", a, b))
					}
				}
				e.waitFor(t, "all fast paths up", 30*time.Second, func() (bool, string) {
					n := e.fastLinks(t)
					return len(n) == len(names), fmt.Sprint(n)
				})
				full := e.patternsRate(t, topo, port+1, 10*e2eAdaptIters)
				t.Logf("ADAPT: %s fast paths from the start (all %d pairs, by hand): %.2f iterations/s, %.2fx the star",
					topo, len(names), full, full/star)
				for _, n := range names {
					a, b, _ := strings.Cut(n, "-")
					e.ctlOK(t, "link", "del", a, b)
				}
				e.waitFor(t, "no fast paths", 30*time.Second, func() (bool, string) {
					n := e.fastLinks(t)
					return len(n) == 0, fmt.Sprint(n)
				})
			}},
			step{topo + "_adapt", func(t *testing.T) {
				ranks := e.startRanks(t, topo, port+2)
				time.Sleep(2 * time.Second) // the workload runs on the star first, as an application would
				e.ctlOK(t, "adapt", "on")
				start := time.Now()
				// Settled: fast paths up and the set unchanged for 3 s.
				var last []string
				var since time.Time
				e.waitFor(t, "the controller's fast paths to settle", 60*time.Second, func() (bool, string) {
					for _, p := range ranks {
						if exited, err := p.Exited(); exited {
							t.Fatalf("rank %s exited (%v); its log:\n%s", p.Name, err, p.Output())
						}
					}
					up := e.fastLinks(t)
					if !slices.Equal(up, last) {
						last, since = up, time.Now()
					}
					return len(up) > 0 && time.Since(since) > 3*time.Second, fmt.Sprint(up)
				})
				t.Logf("ADAPT: %s: the controller's %d fast paths %v up %v after it was turned on",
					topo, len(last), last, since.Sub(start).Round(time.Millisecond))
				e.stopRanks(t, ranks)
				if topo == "all2all" {
					e.waitRoute(t, e.vm("v11"), e.vm("v21"), e2eRouteFast, 10*time.Second)
				}
				adapted := e.patternsRate(t, topo, port+3, 10*e2eAdaptIters)
				t.Logf("ADAPT: %s adapted: %.2f iterations/s, %.2fx the star's %.2f", topo, adapted, adapted/star, star)
				if adapted < 1.5*star {
					t.Errorf("adapted %s runs %.2f iterations/s, star %.2f: want at least 1.5x", topo, adapted, star)
				}
			}})
	}
	steps = append(steps, step{"age_out", func(t *testing.T) {
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
	}})
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

// ctlOK runs `vnet ctl ARGS` against the proxy and fails the test on error.
func (e *e2eNet) ctlOK(t *testing.T, args ...string) {
	t.Helper()
	var v any
	if err := e.ctl(&v, args...); err != nil {
		t.Fatalf("vnet ctl %s: %v", strings.Join(args, " "), err)
	}
}
