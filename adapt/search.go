package adapt

import (
	"fmt"
	"math"
	"math/rand/v2"
)

// Improve runs simulated annealing from p over link sets within the budget (and, when
// in.Migrate, placements within MaxVMsPerHost) for iters proposals, seeded by seed. It returns
// the best state seen; when nothing beats p it returns p unchanged.
func Improve(in Input, p Plan, iters int, seed uint64) Plan {
	m := newModel(&in)
	n := m.n
	start := m.start
	if in.Migrate && p.Placement != nil {
		start = m.hostOf(p.Placement)
	}
	adj := m.adj(p.Links)
	hostOf := append([]int(nil), start...)
	curObj := m.route(adj, hostOf).obj
	initObj, bestObj := curObj, curObj
	bestAdj, bestHost := append([]bool(nil), adj...), append([]int(nil), hostOf...)
	if iters <= 0 || n < 2 || curObj == 0 {
		return p
	}
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	hd, _ := m.hostDemand(hostOf)
	var cands []int // pair indices i*n+j, i<j
	refresh := func() {
		cands = cands[:0]
		pt := m.pairTraffic(hd)
		for i := 0; i < n; i++ {
			for j := i + 1; j < n; j++ {
				if n <= 16 || pt[i*n+j] > 0 || adj[i*n+j] {
					cands = append(cands, i*n+j)
				}
			}
		}
	}
	refresh()
	load := make([]int, n)
	for _, h := range hostOf {
		if h >= 0 {
			load[h]++
		}
	}
	t0 := 0.05 * curObj
	set := func(a []bool, k int, v bool) { a[k] = v; a[(k%n)*n+k/n] = v }
	for it := 0; it < iters; it++ {
		temp := t0 * math.Pow(1e-3, float64(it)/float64(iters))
		nadj := adj
		nhost := hostOf
		moved := false
		if in.Migrate && len(m.vms) > 1 && rng.IntN(5) < 2 {
			nhost = append([]int(nil), hostOf...)
			moved = true
			v := rng.IntN(len(m.vms))
			if nhost[v] < 0 {
				continue
			}
			switch rng.IntN(3) {
			case 0: // move
				h := rng.IntN(n)
				if h == nhost[v] || (m.cap > 0 && load[h] >= m.cap) {
					continue
				}
				nhost[v] = h
			case 1: // swap two VMs
				w := rng.IntN(len(m.vms))
				if nhost[w] < 0 || nhost[w] == nhost[v] {
					continue
				}
				nhost[v], nhost[w] = nhost[w], nhost[v]
			default: // swap the VMs of two hosts (keeps groups together)
				a, b := nhost[v], rng.IntN(n)
				if a == b {
					continue
				}
				for i, h := range nhost {
					switch h {
					case a:
						nhost[i] = b
					case b:
						nhost[i] = a
					}
				}
			}
		} else {
			nadj = append([]bool(nil), adj...)
			var on []int
			for _, k := range cands {
				if adj[k] {
					on = append(on, k)
				}
			}
			switch op := rng.IntN(3); {
			case op == 0 || len(on) == 0: // add
				k := cands[rng.IntN(len(cands))]
				if adj[k] {
					continue
				}
				set(nadj, k, true)
			case op == 1: // remove
				set(nadj, on[rng.IntN(len(on))], false)
			default: // swap
				k := cands[rng.IntN(len(cands))]
				if adj[k] {
					continue
				}
				set(nadj, on[rng.IntN(len(on))], false)
				set(nadj, k, true)
			}
		}
		nhd := hd
		if moved {
			nhd, _ = m.hostDemand(nhost)
		}
		obj := inf
		if m.feasible(nadj, nhd) {
			obj = m.route(nadj, nhost).obj
		}
		if moved { // the links may no longer suit the placement: also try greedy links for it
			gadj, _ := m.greedyLinks(nhost)
			if o := m.route(gadj, nhost).obj; o < obj {
				nadj, obj = gadj, o
			}
		}
		if math.IsInf(obj, 1) {
			continue
		}
		if d := obj - curObj; d <= 0 || rng.Float64() < math.Exp(-d/temp) {
			if moved {
				for i := range load {
					load[i] = 0
				}
				for _, h := range nhost {
					if h >= 0 {
						load[h]++
					}
				}
			}
			adj, hostOf, hd, curObj = nadj, nhost, nhd, obj
			if moved {
				refresh()
			}
			if obj < bestObj {
				bestObj = obj
				bestAdj, bestHost = append([]bool(nil), adj...), append([]int(nil), hostOf...)
			}
		}
	}
	if !(bestObj < initObj) {
		return p
	}
	q := m.build(bestAdj, bestHost, nil)
	q.Reasons = m.changeReasons("improve", p, q, iters)
	return q
}

// changeReasons explains how q differs from p.
func (m *model) changeReasons(what string, p, q Plan, iters int) []string {
	old := map[HostPair]bool{}
	for _, l := range p.Links {
		old[l] = true
	}
	now := map[HostPair]bool{}
	for _, l := range q.Links {
		now[l] = true
	}
	hostOf := m.hostOf(q.Placement)
	hd, total := m.hostDemand(hostOf)
	var rs []string
	for _, l := range q.Links {
		i, j := m.hidx[l.A], m.hidx[l.B]
		t := hd[i*m.n+j] + hd[j*m.n+i]
		share := 0.0
		if total > 0 {
			share = 100 * t / total
		}
		tag := "kept"
		if !old[l] {
			tag = "added by " + what
		}
		rs = append(rs, fmt.Sprintf("link %s: carries %.0f%% of inter-host traffic (%s<->%s %s), %s", l.Name(), share, l.A, l.B, fmtBytes(t), tag))
	}
	for _, l := range p.Links {
		if !now[l] {
			rs = append(rs, fmt.Sprintf("no link %s: dropped by %s", l.Name(), what))
		}
	}
	rs = append(rs, m.moveReasons(m.hostOf(p.Placement), hostOf)...)
	gain := 0.0
	if p.Objective > 0 {
		gain = 100 * (p.Objective - q.Objective) / p.Objective
	}
	if iters > 0 {
		rs = append(rs, fmt.Sprintf("%s: objective %.4g -> %.4g (-%.1f%%) in %d iterations", what, p.Objective, q.Objective, gain, iters))
	} else {
		rs = append(rs, fmt.Sprintf("%s: objective %.4g (optimal within budget)", what, q.Objective))
	}
	return rs
}

// Exact returns an optimal plan: it tries every link set within the budget (and, when
// in.Migrate, every placement within MaxVMsPerHost). Exponential: for ≤ 6 hosts.
func Exact(in Input) Plan {
	m := newModel(&in)
	n := m.n
	b := in.Budget
	bestObj := inf
	var bestAdj []bool
	var bestHost []int
	adj := make([]bool, n*n)
	deg := make([]int, n)
	var pairs [][2]int
	for i := 0; i < n; i++ {
		for j := i + 1; j < n; j++ {
			pairs = append(pairs, [2]int{i, j})
		}
	}
	var hostOf []int
	var hd []float64
	var links func(k, count int)
	links = func(k, count int) {
		if k == len(pairs) {
			if !m.feasible(adj, hd) {
				return
			}
			if obj := m.route(adj, hostOf).obj; obj < bestObj {
				bestObj = obj
				bestAdj, bestHost = append([]bool(nil), adj...), append([]int(nil), hostOf...)
			}
			return
		}
		links(k+1, count)
		i, j := pairs[k][0], pairs[k][1]
		if (b.MaxLinks > 0 && count >= b.MaxLinks) || (b.MaxPerHost > 0 && (deg[i] >= b.MaxPerHost || deg[j] >= b.MaxPerHost)) {
			return
		}
		adj[i*n+j], adj[j*n+i] = true, true
		deg[i]++
		deg[j]++
		links(k+1, count+1)
		adj[i*n+j], adj[j*n+i] = false, false
		deg[i]--
		deg[j]--
	}
	if !in.Migrate || n == 0 {
		hostOf = m.start
		hd, _ = m.hostDemand(hostOf)
		links(0, 0)
	} else {
		hostOf = make([]int, len(m.vms))
		load := make([]int, n)
		var place func(v int)
		place = func(v int) {
			if v == len(m.vms) {
				hd, _ = m.hostDemand(hostOf)
				links(0, 0)
				return
			}
			for h := 0; h < n; h++ {
				if m.cap > 0 && load[h] >= m.cap {
					continue
				}
				hostOf[v] = h
				load[h]++
				place(v + 1)
				load[h]--
			}
		}
		place(0)
		if bestHost == nil { // no placement within capacity: keep the current one
			hostOf = m.start
			hd, _ = m.hostDemand(hostOf)
			links(0, 0)
		}
	}
	if bestAdj == nil {
		bestAdj, bestHost = make([]bool, n*n), m.start
	}
	q := m.build(bestAdj, bestHost, nil)
	q.Reasons = m.changeReasons("exact", Plan{Placement: in.Placement, Objective: m.route(make([]bool, n*n), m.start).obj}, q, 0)
	return q
}
