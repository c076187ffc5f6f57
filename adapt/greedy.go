package adapt

import (
	"fmt"
	"sort"
)

// Greedy plans fast links by host-pair traffic within the budget, rules by shortest paths,
// and, when in.Migrate, a greedy VM-to-host mapping (see the package doc).
func Greedy(in Input) Plan {
	m := newModel(&in)
	adj, reasons := m.greedyLinks(m.start)
	p := m.build(adj, m.start, reasons)
	if !in.Migrate {
		return p
	}
	hostOf := m.greedyPlace()
	adj2, reasons2 := m.greedyLinks(hostOf)
	q := m.build(adj2, hostOf, nil)
	if q.Objective < p.Objective {
		q.Reasons = append(m.moveReasons(m.start, hostOf), reasons2...)
		q.Reasons = append(q.Reasons, fmt.Sprintf("migrate: objective %.4g -> %.4g with moves", p.Objective, q.Objective))
		return q
	}
	p.Reasons = append(p.Reasons, fmt.Sprintf("migrate: no greedy mapping beats the current one (%.4g vs %.4g)", q.Objective, p.Objective))
	return p
}

type pairT struct {
	i, j int
	t    float64
}

// greedyLinks adds links by decreasing host-pair traffic until the budget is spent.
func (m *model) greedyLinks(hostOf []int) ([]bool, []string) {
	n, b := m.n, m.in.Budget
	hd, total := m.hostDemand(hostOf)
	pt := m.pairTraffic(hd)
	var pairs []pairT
	for i := 0; i < n; i++ {
		for j := i + 1; j < n; j++ {
			if t := pt[i*n+j]; t > 0 {
				pairs = append(pairs, pairT{i, j, t})
			}
		}
	}
	sort.SliceStable(pairs, func(a, c int) bool { return pairs[a].t > pairs[c].t })
	adj := make([]bool, n*n)
	deg := make([]int, n)
	count, covered := 0, 0.0
	var reasons []string
	for _, p := range pairs {
		name := Pair(m.hosts[p.i], m.hosts[p.j]).Name()
		if b.MaxLinks > 0 && count >= b.MaxLinks {
			reasons = append(reasons, fmt.Sprintf("stop: %d links is the budget (MaxLinks)", b.MaxLinks))
			break
		}
		if b.Share > 0 && covered >= b.Share*total {
			reasons = append(reasons, fmt.Sprintf("stop: fast paths carry %.0f%% of inter-host traffic (Share %.0f%%)", 100*covered/total, 100*b.Share))
			break
		}
		if b.MaxPerHost > 0 && (deg[p.i] >= b.MaxPerHost || deg[p.j] >= b.MaxPerHost) {
			reasons = append(reasons, fmt.Sprintf("skip %s: %d links per host is the budget (MaxPerHost)", name, b.MaxPerHost))
			continue
		}
		adj[p.i*n+p.j], adj[p.j*n+p.i] = true, true
		deg[p.i]++
		deg[p.j]++
		count++
		covered += p.t
		reasons = append(reasons, fmt.Sprintf("link %s: carries %.0f%% of inter-host traffic (%s<->%s %s)",
			name, 100*p.t/total, m.hosts[p.i], m.hosts[p.j], fmtBytes(p.t)))
	}
	return adj, reasons
}

// greedyPlace maps VMs to hosts: heavy VM pairs together when a host has room, otherwise on
// the best-connected host pair with room; ties to the least loaded host, then the current one.
func (m *model) greedyPlace() []int {
	n, nv := m.n, len(m.vms)
	hostOf := make([]int, nv)
	for i := range hostOf {
		hostOf[i] = -1
	}
	if n == 0 {
		return append([]int(nil), m.start...)
	}
	load := make([]int, n)
	free := func(h int) int {
		if m.cap <= 0 {
			return nv
		}
		return m.cap - load[h]
	}
	put := func(v, h int) { hostOf[v] = h; load[h]++ }
	// better reports whether host h beats host best for VM v (or VMs v, w): load, then current host, then index.
	cur := func(h int, vs ...int) bool {
		for _, v := range vs {
			if m.start[v] == h {
				return true
			}
		}
		return false
	}
	better := func(h, best int, vs ...int) bool {
		if best < 0 {
			return true
		}
		if load[h] != load[best] {
			return load[h] < load[best]
		}
		return cur(h, vs...) && !cur(best, vs...)
	}
	// symmetric VM-pair traffic, heaviest first
	agg := map[[2]int]float64{}
	for _, d := range m.dem {
		a, b := d.s, d.d
		if b < a {
			a, b = b, a
		}
		agg[[2]int{a, b}] += d.bytes
	}
	type vp struct {
		a, b int
		t    float64
	}
	var vps []vp
	for k, t := range agg {
		vps = append(vps, vp{k[0], k[1], t})
	}
	sort.Slice(vps, func(i, j int) bool {
		if vps[i].t != vps[j].t {
			return vps[i].t > vps[j].t
		}
		if vps[i].a != vps[j].a {
			return vps[i].a < vps[j].a
		}
		return vps[i].b < vps[j].b
	})
	// nearest: the host with room closest (direct cost) to host h, for VM v.
	nearest := func(h, v int) int {
		best := -1
		for j := 0; j < n; j++ {
			if free(j) < 1 {
				continue
			}
			if best < 0 {
				best = j
				continue
			}
			cj, cb := m.directW[h*n+j], m.directW[h*n+best]
			if j == h {
				cj = 0
			}
			if best == h {
				cb = 0
			}
			if cj < cb || (cj == cb && better(j, best, v)) {
				best = j
			}
		}
		return best
	}
	for _, p := range vps {
		a, b := p.a, p.b
		switch {
		case hostOf[a] < 0 && hostOf[b] < 0:
			best := -1
			for h := 0; h < n; h++ {
				if free(h) >= 2 && better(h, best, a, b) {
					best = h
				}
			}
			if best >= 0 {
				put(a, best)
				put(b, best)
				continue
			}
			// no room for both: the best-connected pair of hosts with room
			bi, bj, bc := -1, -1, inf
			for i := 0; i < n; i++ {
				for j := 0; j < n; j++ {
					if i == j || free(i) < 1 || free(j) < 1 {
						continue
					}
					if c := m.directW[i*n+j]; c < bc {
						bi, bj, bc = i, j, c
					}
				}
			}
			if bi >= 0 {
				put(a, bi)
				put(b, bj)
			}
		case hostOf[a] < 0:
			if h := nearest(hostOf[b], a); h >= 0 {
				put(a, h)
			}
		case hostOf[b] < 0:
			if h := nearest(hostOf[a], b); h >= 0 {
				put(b, h)
			}
		}
	}
	for v := range hostOf {
		if hostOf[v] >= 0 {
			continue
		}
		if s := m.start[v]; s >= 0 && free(s) >= 1 {
			put(v, s)
			continue
		}
		best := -1
		for h := 0; h < n; h++ {
			if free(h) >= 1 && better(h, best, v) {
				best = h
			}
		}
		if best < 0 {
			best = m.start[v] // over capacity everywhere: stay
			if best < 0 {
				continue
			}
		}
		put(v, best)
	}
	return hostOf
}

// moveReasons explains the moves from one placement to another.
func (m *model) moveReasons(from, to []int) []string {
	var rs []string
	for v := range m.vms {
		if from[v] == to[v] || to[v] < 0 {
			continue
		}
		// the VM's heaviest partner now on the same host
		partner, pb := "", 0.0
		for _, d := range m.dem {
			var o int
			switch v {
			case d.s:
				o = d.d
			case d.d:
				o = d.s
			default:
				continue
			}
			if to[o] == to[v] && d.bytes > pb {
				partner, pb = m.vms[o], d.bytes
			}
		}
		fromName := "?"
		if from[v] >= 0 {
			fromName = m.hosts[from[v]]
		}
		why := "balances load"
		if partner != "" {
			why = fmt.Sprintf("colocated with %s (%s)", partner, fmtBytes(pb))
		}
		rs = append(rs, fmt.Sprintf("move %s %s -> %s: %s", m.vms[v], fromName, m.hosts[to[v]], why))
	}
	return rs
}

func fmtBytes(b float64) string {
	switch {
	case b >= 1e9:
		return fmt.Sprintf("%.1f GB", b/1e9)
	case b >= 1e6:
		return fmt.Sprintf("%.1f MB", b/1e6)
	case b >= 1e3:
		return fmt.Sprintf("%.1f kB", b/1e3)
	}
	return fmt.Sprintf("%.0f B", b)
}
