package appliance

import (
	"context"
	"net/netip"
	"slices"
	"testing"
	"time"

	"vnet/infer"
	"vnet/patterns"
	"vnet/tunnel"
)

// runPattern starts one rank of topo in every VM and returns a stop func.
func (n *testNet) runPattern(topo string, port int) (stop func() error) {
	ctx, cancel := context.WithCancel(context.Background())
	var peers []string
	for _, vm := range n.vms {
		peers = append(peers, netip.AddrPortFrom(vm.Addr(), uint16(port)).String())
	}
	errs := make(chan error, len(n.vms))
	for i, vm := range n.vms {
		go func() {
			_, err := patterns.Run(ctx, patterns.Config{Rank: i, Peers: peers, Topology: topo, Iters: 1 << 30,
				Size: 32 << 10, Net: vm.VM, Timeout: 20 * time.Second})
			errs <- err
		}()
	}
	return func() error {
		cancel()
		for range n.vms {
			if err := <-errs; err != nil && ctx.Err() == nil {
				return err
			}
		}
		return nil
	}
}

// TestInferenceFollowsThePattern runs the BSP workload in netstack VMs on
// four hosts and checks that the proxy infers its topology from the frames
// alone, then notices when the application switches pattern.
func TestInferenceFollowsThePattern(t *testing.T) {
	old := ReportInterval
	ReportInterval = 100 * time.Millisecond
	defer func() { ReportInterval = old }()
	acct := infer.AccountConfig{TimeBound: 200 * time.Millisecond, TMax: 200 * time.Millisecond, TWait: time.Second}
	n := newTestNetInfer(t, 4, 2, acct, infer.GlobalConfig{Window: 2 * time.Second})

	waitArch := func(want string, nodes int) time.Duration {
		start := time.Now()
		n.waitFor("topology "+want, 30*time.Second, func() bool {
			tp := n.proxy.agg.Topology()
			return tp.Archetype == want && len(tp.Nodes) == nodes
		})
		return time.Since(start)
	}
	stop := n.runPattern("ring", 7100)
	took := waitArch("ring", 8)
	t.Logf("ring(8) inferred %v after the pattern started", took.Round(time.Millisecond))
	// Both directions of every ring edge, once each direction has been
	// seen at its rate (a loaded machine lets a rank lag behind for a
	// moment, and its direction weighs below b_min meanwhile).
	n.waitFor("16 ring edges", 15*time.Second, func() bool {
		tp := n.proxy.agg.Topology()
		return tp.Archetype == "ring" && len(tp.Edges) == 16
	})
	if err := stop(); err != nil {
		t.Fatal(err)
	}

	stop = n.runPattern("all2all", 7200)
	took = waitArch("all2all", 8)
	t.Logf("switch to all2all(8) detected %v after it started", took.Round(time.Millisecond))
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	var changes []string
	for _, ev := range n.proxy.agg.Events(0) {
		if ev.Kind == "topology-change" && ev.Topology != nil {
			changes = append(changes, ev.Topology.Archetype)
		}
	}
	if len(changes) < 2 || changes[len(changes)-1] != "all2all" {
		t.Errorf("topology changes %v, want ... ring ... all2all", changes)
	}
	m := n.proxy.agg.Matrix(time.Minute)
	if len(m.Entries) < 16 {
		t.Errorf("global matrix has %d entries", len(m.Entries))
	}
}

// newTestNetInfer is newTestNet with inference parameters.
func newTestNetInfer(t testing.TB, nHosts, vmsPer int, acct infer.AccountConfig, global infer.GlobalConfig,
	opts ...func(*ProxyConfig)) *testNet {
	t.Helper()
	key, _ := tunnel.GenerateKey()
	n := &testNet{t: t, key: key, kind: "tcp", hosts: map[string]*Host{}}
	pc := ProxyConfig{Listen: []tunnel.Endpoint{{Kind: "tcp", Addr: "127.0.0.1:0"}}, Key: key, Infer: acct, Global: global}
	for _, o := range opts {
		o(&pc)
	}
	p, err := NewProxy(pc)
	if err != nil {
		t.Fatal(err)
	}
	n.proxy = p
	n.proxyEP = tunnel.Endpoint{Kind: "tcp", Addr: p.Addrs()[0]}
	n.addHosts(nHosts, vmsPer, acct)
	return n
}

// BenchmarkTimeToTopology measures, with the default inference parameters,
// how long the proxy takes to name the pattern the VMs run: from the start
// of a ring over 8 netstack VMs on 4 hosts (the network idle before) to the
// proxy's topology being that ring, and from the switch to all-to-all to
// the proxy naming all-to-all. Each iteration starts a fresh network.
//
//	go test ./appliance -run XXX -bench TimeToTopology -benchtime 5x
func BenchmarkTimeToTopology(b *testing.B) {
	var ring, switched []float64
	for i := 0; i < b.N; i++ {
		n := newTestNetInfer(b, 4, 2, infer.AccountConfig{}, infer.GlobalConfig{})
		inferred := func(want string, edges int) float64 {
			start := time.Now()
			n.waitFor("topology "+want, 30*time.Second, func() bool {
				tp := n.proxy.agg.Topology()
				return tp.Archetype == want && len(tp.Nodes) == 8 && len(tp.Edges) == edges
			})
			return time.Since(start).Seconds()
		}
		stop := n.runPattern("ring", 7100)
		ring = append(ring, inferred("ring", 16))
		if err := stop(); err != nil {
			b.Fatal(err)
		}
		stop = n.runPattern("all2all", 7200)
		switched = append(switched, inferred("all2all", 56))
		if err := stop(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(median(ring), "ring-s")
	b.ReportMetric(median(switched), "switch-s")
	b.ReportMetric(0, "ns/op")
}

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	slices.Sort(s)
	return s[len(s)/2]
}
