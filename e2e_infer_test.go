package main

// End-to-end test of traffic inference in network namespaces: the real vnet
// binary, `vnet patterns` ranks running in "VM" namespaces behind real TAP
// devices, three hosts and a proxy on a Linux bridge underlay.
//
//	switch ns:  br0 ── pup ── up  (proxy, 192.168.250.1)
//	             ├──── pu1 ── u1  (host h1, 192.168.250.11; TAPs t11 t12 -> ns v11 v12)
//	             ├──── pu2 ── u2  (host h2, 192.168.250.12; TAPs t21 t22 -> ns v21 v22)
//	             └──── pu3 ── u3  (host h3, 192.168.250.13; TAPs t31 t32 -> ns v31 v32)
//
// The six VMs run a ring, then an all-to-all; the proxy must infer each from
// the frames alone and record the switch as a topology change. Needs root;
// skipped otherwise. It reuses the plumbing of e2e_netns_test.go.

import (
	"encoding/json"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"vnet/internal/netns"
)

const (
	e2eInferHosts  = 3
	e2eInferVMsPer = 2
)

// The documented JSON shapes of `vnet ctl --json topology|events|matrix`.
type (
	e2eEdgeJSON struct {
		Src    string  `json:"src"`
		Dst    string  `json:"dst"`
		Bytes  uint64  `json:"bytes"`
		Weight float64 `json:"weight"`
	}
	e2eTopologyJSON struct {
		Archetype  string        `json:"archetype"`
		Confidence float64       `json:"confidence"`
		Edges      []e2eEdgeJSON `json:"edges"`
		Nodes      []string      `json:"nodes"`
		Hub        string        `json:"hub"`
	}
	e2eEventJSON struct {
		Seq      uint64           `json:"seq"`
		At       time.Time        `json:"at"`
		Kind     string           `json:"kind"`
		Topology *e2eTopologyJSON `json:"topology"`
		Note     string           `json:"note"`
	}
	e2eMatrixJSON struct {
		WindowS int `json:"window_s"`
		Entries []struct {
			Src    string `json:"src"`
			Dst    string `json:"dst"`
			Bytes  uint64 `json:"bytes"`
			Frames uint64 `json:"frames"`
		} `json:"entries"`
	}
)

func (tp e2eTopologyJSON) String() string {
	return fmt.Sprintf("archetype %q (%.2f), %d nodes, %d edges", tp.Archetype, tp.Confidence, len(tp.Nodes),
		len(tp.Edges))
}

func TestE2EInference(t *testing.T) {
	e := newE2ENet(t, "vi", 3*time.Minute, "network namespaces, a bridge, veth pairs and TAP devices", nil,
		func(e *e2eNet) { e.dumpInfer(t); e.dumpState(t) })

	var ranks []*netns.Proc
	steps := []struct {
		name string
		f    func(t *testing.T)
	}{
		{"build", e.build},
		{"underlay", func(t *testing.T) { e.vmUnderlay(t, e2eInferHosts) }},
		{"daemons", func(t *testing.T) { e.vmDaemons(t, e2eInferHosts, e2eInferVMsPer) }},
		{"ring", func(t *testing.T) {
			ranks = e.startRanks(t, "ring", 7100)
			e.waitArchetype(t, "ring", ranks, e2eRingEdges(e.vms))
			e.stopRanks(t, ranks)
		}},
		{"all2all", func(t *testing.T) {
			ranks = e.startRanks(t, "all2all", 7200)
			e.waitArchetype(t, "all2all", ranks, e2eAllEdges(e.vms))
		}},
		{"events", e.checkChangeEvents},
		{"matrix", e.checkMatrix},
		{"stop", func(t *testing.T) { e.stopRanks(t, ranks) }},
	}
	for _, s := range steps {
		if !t.Run(s.name, s.f) {
			t.FailNow()
		}
	}
}

// vmUnderlay builds the bridge and the underlay namespaces of the proxy
// and hosts h1..hN.
func (e *e2eNet) vmUnderlay(t *testing.T, hosts int) {
	e.nsSw = e.addNS(t, "sw")
	e.run(t, e.nsSw, "ip", "link", "add", "br0", "type", "bridge")
	e.run(t, e.nsSw, "ip", "link", "set", "br0", "up")
	e.nsProxy = e.attachUnderlay(t, "up", e2eProxyIP)
	for i := 1; i <= hosts; i++ {
		h := fmt.Sprintf("h%d", i)
		e.nsHost[h] = e.attachUnderlay(t, fmt.Sprintf("u%d", i), fmt.Sprintf("192.168.250.%d", 10+i))
	}
	for _, ns := range e.nsHost {
		e.pingUntil(t, ns, e2eProxyIP, 10*time.Second)
	}
}

// inferProxy starts the proxy with inference tuned for a quick test, and
// extra flags.
func (e *e2eNet) inferProxy(t *testing.T, log string, extra ...string) {
	p, err := e.lab.Start("proxy", e.nsProxy, filepath.Join(e.dir, log), nil,
		append([]string{e.bin, "proxy", "--key-file", e.key, "--listen", e2eProxyURL, "--api", e2eProxyAPI,
			"--infer-window", "3s", "--infer-tmax", "300ms", "--infer-time-bound", "300ms", "--infer-twait", "2s"},
			extra...)...)
	if err != nil {
		t.Fatal(err)
	}
	e.proxy, e.expect[p] = p, true
	e.waitFor(t, "the proxy's control API", 10*time.Second, func() (bool, string) {
		var hs []e2eHostJSON
		err := e.ctl(&hs, "hosts")
		return err == nil, fmt.Sprint(err)
	})
}

// vmDaemons starts the proxy and hosts h1..hN with inference tuned for a
// quick test, and moves each host's vmsPer TAPs into VM namespaces.
func (e *e2eNet) vmDaemons(t *testing.T, hosts, vmsPer int, proxyFlags ...string) {
	e.inferProxy(t, "proxy.log", proxyFlags...)
	for i := 1; i <= hosts; i++ {
		h := fmt.Sprintf("h%d", i)
		args := []string{e.bin, "host", "--name", h, "--proxy", e2eProxyURL, "--key-file", e.key,
			"--listen", "tcp://:0",
			"--infer-tmax", "300ms", "--infer-time-bound", "300ms", "--infer-twait", "2s"}
		for j := 1; j <= vmsPer; j++ {
			args = append(args, "--tap", fmt.Sprintf("t%d%d", i, j))
		}
		p, err := e.lab.Start(h, e.nsHost[h], filepath.Join(e.dir, h+".log"), nil, args...)
		if err != nil {
			t.Fatal(err)
		}
		e.hosts[h], e.expect[p] = p, true
	}
	for i := 1; i <= hosts; i++ {
		h := fmt.Sprintf("h%d", i)
		for j := 1; j <= vmsPer; j++ {
			e.tapVM(t, e.nsHost[h], &e2eVM{name: fmt.Sprintf("v%d%d", i, j), host: h, tap: fmt.Sprintf("t%d%d", i, j),
				ip: fmt.Sprintf("10.88.0.%d", i*10+j)})
		}
	}
	e.waitFor(t, "all hosts up", 15*time.Second, func() (bool, string) {
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
	for _, vm := range e.vms {
		t.Logf("VM %s on %s: %s %s (%s)", vm.name, vm.host, vm.tap, vm.ip, vm.mac)
	}
}

// startRanks starts one `vnet patterns` rank of topo in every VM namespace,
// running until stopped.
func (e *e2eNet) startRanks(t *testing.T, topo string, port int) []*netns.Proc {
	return e.startRanksN(t, topo, port, 100000, "32KiB")
}

// startRanksN starts one rank of topo in every VM namespace, for iters
// iterations of size-byte messages, with --json.
func (e *e2eNet) startRanksN(t *testing.T, topo string, port, iters int, size string) []*netns.Proc {
	t.Helper()
	var peers []string
	for _, vm := range e.vms {
		peers = append(peers, net.JoinHostPort(vm.ip, fmt.Sprint(port)))
	}
	var ps []*netns.Proc
	for i, vm := range e.vms {
		p, err := e.lab.Start(fmt.Sprintf("%s-rank%d", topo, i), vm.ns,
			filepath.Join(e.dir, fmt.Sprintf("%s-%d-rank%d.log", topo, port, i)), nil,
			e.bin, "patterns", "--rank", fmt.Sprint(i), "--peers", strings.Join(peers, ","),
			"--topology", topo, "--iters", fmt.Sprint(iters), "--size", size, "--timeout", "60s", "--json")
		if err != nil {
			t.Fatal(err)
		}
		ps = append(ps, p)
	}
	return ps
}

func (e *e2eNet) stopRanks(t *testing.T, ranks []*netns.Proc) {
	t.Helper()
	for _, p := range ranks {
		if err := p.Kill(); err != nil {
			t.Error(err)
		}
	}
}

// e2eRingEdges is the directed edge set of a ring over vms in rank order.
func e2eRingEdges(vms []*e2eVM) map[string]bool {
	m := map[string]bool{}
	n := len(vms)
	for i := range vms {
		m[vms[i].mac+">"+vms[(i+1)%n].mac] = true
		m[vms[(i+1)%n].mac+">"+vms[i].mac] = true
	}
	return m
}

// e2eAllEdges is the directed edge set of all-to-all over vms.
func e2eAllEdges(vms []*e2eVM) map[string]bool {
	m := map[string]bool{}
	for _, a := range vms {
		for _, b := range vms {
			if a != b {
				m[a.mac+">"+b.mac] = true
			}
		}
	}
	return m
}

// waitArchetype polls the proxy's topology until it is want over all the
// VMs with exactly the edges of the pattern, and logs how long that took
// from the ranks' start.
func (e *e2eNet) waitArchetype(t *testing.T, want string, ranks []*netns.Proc, edges map[string]bool) {
	t.Helper()
	var macs []string
	for _, vm := range e.vms {
		macs = append(macs, vm.mac)
	}
	slices.Sort(macs)
	took := e.waitFor(t, "topology "+want, 30*time.Second, func() (bool, string) {
		for _, p := range ranks {
			if exited, err := p.Exited(); exited {
				t.Fatalf("rank %s exited (%v); its log:\n%s", p.Name, err, p.Output())
			}
		}
		var tp e2eTopologyJSON
		if err := e.ctl(&tp, "topology"); err != nil {
			return false, err.Error()
		}
		nodes := slices.Clone(tp.Nodes)
		slices.Sort(nodes)
		if tp.Archetype != want || !slices.Equal(nodes, macs) || len(tp.Edges) != len(edges) {
			return false, tp.String()
		}
		for _, ed := range tp.Edges {
			if !edges[ed.Src+">"+ed.Dst] {
				return false, fmt.Sprintf("%v; edge %s>%s is not in the %s", tp, ed.Src, ed.Dst, want)
			}
		}
		return true, ""
	})
	t.Logf("INFER: %s(%d) inferred by the proxy %v after the ranks started (%d directed edges)", want, len(e.vms),
		took.Round(time.Millisecond), len(edges))
}

// checkChangeEvents checks the proxy's event history: topology changes to a
// ring and, later, to all2all, the last one.
func (e *e2eNet) checkChangeEvents(t *testing.T) {
	e.waitFor(t, "topology-change events ring ... all2all", 10*time.Second, func() (bool, string) {
		var evs []e2eEventJSON
		if err := e.ctl(&evs, "events"); err != nil {
			return false, err.Error()
		}
		var changes []string
		for _, ev := range evs {
			if ev.Kind == "topology-change" && ev.Topology != nil {
				changes = append(changes, ev.Topology.Archetype)
			}
		}
		n := len(changes)
		ok := n >= 2 && changes[n-1] == "all2all" && slices.Contains(changes[:n-1], "ring")
		return ok, fmt.Sprintf("topology changes %v, want ... ring ... all2all", changes)
	})
}

// checkMatrix checks that the proxy's matrix over the last 30 s has bytes
// for every ordered pair of VMs (all2all has been running).
func (e *e2eNet) checkMatrix(t *testing.T) {
	var m e2eMatrixJSON
	if err := e.ctl(&m, "matrix", "--last", "30s"); err != nil {
		t.Fatal(err)
	}
	got := map[string]uint64{}
	for _, en := range m.Entries {
		got[en.Src+">"+en.Dst] += en.Bytes
	}
	var total uint64
	for pair := range e2eAllEdges(e.vms) {
		if got[pair] == 0 {
			t.Errorf("matrix --last 30s: no bytes for %s", pair)
		}
		total += got[pair]
	}
	t.Logf("matrix over the last 30 s: %d entries, %.1f MB between the %d VMs", len(m.Entries), float64(total)/1e6,
		len(e.vms))
}

// dumpInfer logs the proxy's inference state.
func (e *e2eNet) dumpInfer(t *testing.T) {
	if e.proxy == nil {
		return
	}
	if done, _ := e.proxy.Exited(); done {
		return
	}
	for _, what := range [][]string{{"topology"}, {"events"}, {"matrix", "--last", "30s"}} {
		var v any
		err := e.ctl(&v, what...)
		b, _ := json.Marshal(v)
		t.Logf("vnet ctl %s: %s %v", strings.Join(what, " "), b, err)
	}
}
