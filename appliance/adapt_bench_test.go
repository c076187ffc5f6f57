package appliance

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"vnet/adapt"
	"vnet/infer"
	"vnet/patterns"
)

// ringRate runs iters iterations of the patterns ring over the net's VMs
// and returns the slowest rank's iterations per second (a BSP application
// goes at the pace of its slowest rank).
func ringRate(tb testing.TB, n *testNet, port, iters int) float64 {
	var peers []string
	for _, vm := range n.vms {
		peers = append(peers, netip.AddrPortFrom(vm.Addr(), uint16(port)).String())
	}
	out := make(chan patterns.Result, len(n.vms))
	errs := make(chan error, len(n.vms))
	for i, vm := range n.vms {
		go func() {
			r, err := patterns.Run(context.Background(), patterns.Config{Rank: i, Peers: peers, Topology: "ring",
				Iters: iters, Size: 256 << 10, Net: vm.VM, Timeout: 30 * time.Second})
			if err != nil {
				errs <- err
				return
			}
			out <- r
		}()
	}
	slowest := 0.0
	for range n.vms {
		select {
		case err := <-errs:
			tb.Fatal(err)
		case r := <-out:
			if slowest == 0 || r.ItersPerS < slowest {
				slowest = r.ItersPerS
			}
		}
	}
	return slowest
}

// BenchmarkAdaptSpeedup measures what adaptation gives a BSP application:
// the patterns ring (256 KiB messages) over 8 netstack VMs on 4 hosts, once
// on a network without the controller (everything crosses the proxy) and
// once on one with --adapt after its fast paths are up. Both networks run
// in this process on loopback, one after the other.
//
//	go test ./appliance -run XXX -bench AdaptSpeedup -benchtime 1x
func BenchmarkAdaptSpeedup(b *testing.B) {
	old := ReportInterval
	ReportInterval = 100 * time.Millisecond
	defer func() { ReportInterval = old }()
	acct := infer.AccountConfig{TimeBound: 200 * time.Millisecond, TMax: 200 * time.Millisecond, TWait: time.Second}
	global := infer.GlobalConfig{Window: 2 * time.Second}
	const iters = 40
	var star, fast float64
	for i := 0; i < b.N; i++ {
		plain := newTestNetInfer(b, 4, 2, acct, global)
		star = ringRate(b, plain, 7400, iters)

		adaptive := newTestNetInfer(b, 4, 2, acct, global, func(pc *ProxyConfig) {
			pc.Adapt = AdaptConfig{Enabled: true, Interval: 500 * time.Millisecond, Window: 3 * time.Second,
				Budget: adapt.Budget{MaxPerHost: 2},
				Damp:   adapt.DampConfig{MinDwell: time.Minute, Hysteresis: 0.01, MaxChangesPerMinute: 100}}
		})
		ringRate(b, adaptive, 7400, iters) // the controller sees the ring and adds its fast paths
		adaptive.waitFor("four fast paths", 30*time.Second, func() bool {
			up := 0
			for _, l := range adaptive.proxy.Links() {
				if l.Role == "fast" && l.State == "up" {
					up++
				}
			}
			return up == 4
		})
		fast = ringRate(b, adaptive, 7500, iters)
	}
	b.ReportMetric(star, "star-iters/s")
	b.ReportMetric(fast, "adapted-iters/s")
	b.ReportMetric(fast/star, "speedup")
}
