package adapt

import (
	"math"
	"sort"
	"strings"
)

// latencyWindow is the number of bytes in flight that pay one one-way latency.
const latencyWindow = 64 << 10

var inf = math.Inf(1)

func fillCost(c, d Cost) Cost {
	if c.RTT <= 0 {
		c.RTT = d.RTT
	}
	if c.Mbps <= 0 {
		c.Mbps = d.Mbps
	}
	return c
}

// perByte is a hop's base weight in seconds per byte.
func (c Cost) perByte() float64 {
	return 8/(c.Mbps*1e6) + c.RTT.Seconds()/2/latencyWindow
}

type vmDemand struct {
	s, d  int // VM indices
	bytes float64
}

// model is an Input indexed for fast evaluation: hosts 0..n-1, the proxy is node n.
type model struct {
	in      *Input
	hosts   []string
	hidx    map[string]int
	n, N    int
	starW   []float64 // per host
	directW []float64 // n*n
	vms     []string
	vidx    map[string]int
	dem     []vmDemand
	start   []int // input placement, VM index -> host index (-1 unknown)
	cap     int   // VMs per host, 0 = no limit
}

func newModel(in *Input) *model {
	m := &model{in: in, hidx: map[string]int{}, vidx: map[string]int{}, cap: in.MaxVMsPerHost}
	addHost := func(h string) {
		if h == "" || h == in.Proxy {
			return
		}
		if _, ok := m.hidx[h]; !ok {
			m.hidx[h] = -1
			m.hosts = append(m.hosts, h)
		}
	}
	for _, h := range in.Hosts {
		addHost(h)
	}
	for vm, h := range in.Placement {
		addHost(h)
		m.vms = append(m.vms, vm)
	}
	sort.Strings(m.hosts)
	sort.Strings(m.vms)
	for i, h := range m.hosts {
		m.hidx[h] = i
	}
	for i, v := range m.vms {
		m.vidx[v] = i
	}
	m.n, m.N = len(m.hosts), len(m.hosts)+1
	star := make([]Cost, m.n)
	m.starW = make([]float64, m.n)
	for i, h := range m.hosts {
		star[i] = fillCost(in.StarCost[h], DefaultStarCost)
		m.starW[i] = star[i].perByte()
	}
	m.directW = make([]float64, m.n*m.n)
	for i := 0; i < m.n; i++ {
		for j := i + 1; j < m.n; j++ {
			a, b := star[i], star[j]
			est := Cost{RTT: (a.RTT + b.RTT) / 2, Mbps: math.Max(a.Mbps, b.Mbps)}
			w := fillCost(in.Costs[HostPair{m.hosts[i], m.hosts[j]}], est).perByte()
			m.directW[i*m.n+j], m.directW[j*m.n+i] = w, w
		}
	}
	agg := map[[2]int]float64{}
	for _, d := range in.Demands {
		s, ok1 := m.vidx[d.Src]
		t, ok2 := m.vidx[d.Dst]
		if !ok1 || !ok2 || s == t || !(d.Bytes > 0) {
			continue
		}
		agg[[2]int{s, t}] += d.Bytes
	}
	for k, b := range agg {
		m.dem = append(m.dem, vmDemand{k[0], k[1], b})
	}
	sort.Slice(m.dem, func(i, j int) bool {
		if m.dem[i].s != m.dem[j].s {
			return m.dem[i].s < m.dem[j].s
		}
		return m.dem[i].d < m.dem[j].d
	})
	m.start = m.hostOf(in.Placement)
	return m
}

func (m *model) hostOf(pl map[string]string) []int {
	h := make([]int, len(m.vms))
	for i, v := range m.vms {
		h[i] = -1
		if x, ok := m.hidx[pl[v]]; ok {
			h[i] = x
		}
	}
	return h
}

func (m *model) placementMap(hostOf []int) map[string]string {
	pl := make(map[string]string, len(m.vms))
	for i, v := range m.vms {
		if hostOf[i] >= 0 {
			pl[v] = m.hosts[hostOf[i]]
		} else {
			pl[v] = m.in.Placement[v]
		}
	}
	return pl
}

// adj converts links to an n*n adjacency matrix, ignoring unknown hosts.
func (m *model) adj(links []HostPair) []bool {
	a := make([]bool, m.n*m.n)
	for _, l := range links {
		i, ok1 := m.hidx[l.A]
		j, ok2 := m.hidx[l.B]
		if ok1 && ok2 && i != j {
			a[i*m.n+j], a[j*m.n+i] = true, true
		}
	}
	return a
}

func (m *model) links(adj []bool) []HostPair {
	var ls []HostPair
	for i := 0; i < m.n; i++ {
		for j := i + 1; j < m.n; j++ {
			if adj[i*m.n+j] {
				ls = append(ls, HostPair{m.hosts[i], m.hosts[j]})
			}
		}
	}
	return ls
}

// hostDemand aggregates VM demands to ordered host pairs (n*n) and returns the total.
func (m *model) hostDemand(hostOf []int) ([]float64, float64) {
	hd := make([]float64, m.n*m.n)
	total := 0.0
	for _, d := range m.dem {
		s, t := hostOf[d.s], hostOf[d.d]
		if s < 0 || t < 0 || s == t {
			continue
		}
		hd[s*m.n+t] += d.bytes
		total += d.bytes
	}
	return hd, total
}

// pairTraffic is the traffic both ways between hosts i<j, as pt[i*n+j].
func (m *model) pairTraffic(hd []float64) []float64 {
	pt := make([]float64, m.n*m.n)
	for i := 0; i < m.n; i++ {
		for j := i + 1; j < m.n; j++ {
			pt[i*m.n+j] = hd[i*m.n+j] + hd[j*m.n+i]
		}
	}
	return pt
}

type routing struct {
	next []int // N*N first hop, second pass
	hd   []float64
	obj  float64
}

// fw is Floyd–Warshall with first-hop reconstruction; ties keep the earlier path.
func fw(N int, w []float64) ([]float64, []int) {
	dist := append([]float64(nil), w...)
	next := make([]int, N*N)
	for i := range next {
		next[i] = -1
		if !math.IsInf(dist[i], 1) {
			next[i] = i % N
		}
	}
	for k := 0; k < N; k++ {
		for i := 0; i < N; i++ {
			dik := dist[i*N+k]
			if math.IsInf(dik, 1) || i == k {
				continue
			}
			for j := 0; j < N; j++ {
				if d := dik + dist[k*N+j]; d < dist[i*N+j] {
					dist[i*N+j] = d
					next[i*N+j] = next[i*N+k]
				}
			}
		}
	}
	return dist, next
}

func (m *model) weights(adj []bool) []float64 {
	N, n := m.N, m.n
	w := make([]float64, N*N)
	for i := range w {
		w[i] = inf
	}
	for i := 0; i < N; i++ {
		w[i*N+i] = 0
	}
	for i := 0; i < n; i++ {
		w[i*N+n], w[n*N+i] = m.starW[i], m.starW[i]
		for j := 0; j < n; j++ {
			if adj[i*n+j] {
				w[i*N+j] = m.directW[i*n+j]
			}
		}
	}
	return w
}

// route plans paths for a link set and placement and computes the objective.
func (m *model) route(adj []bool, hostOf []int) routing {
	N, n := m.N, m.n
	hd, total := m.hostDemand(hostOf)
	w := m.weights(adj)
	_, next1 := fw(N, w)
	if total == 0 {
		return routing{next: next1, hd: hd}
	}
	load := make([]float64, N*N)
	for s := 0; s < n; s++ {
		for t := 0; t < n; t++ {
			b := hd[s*n+t]
			if b == 0 {
				continue
			}
			for u := s; u != t; {
				v := next1[u*N+t]
				load[u*N+v] += b
				u = v
			}
		}
	}
	for i := range w {
		if load[i] > 0 {
			w[i] *= 1 + load[i]/total
		}
	}
	dist, next := fw(N, w)
	obj := 0.0
	for s := 0; s < n; s++ {
		for t := 0; t < n; t++ {
			if b := hd[s*n+t]; b > 0 {
				obj += b * dist[s*N+t]
			}
		}
	}
	return routing{next: next, hd: hd, obj: obj}
}

// path returns the nodes from host s to host t.
func (r *routing) path(N, s, t int) []int {
	p := []int{s}
	for u := s; u != t; {
		u = r.next[u*N+t]
		p = append(p, u)
	}
	return p
}

func (m *model) nodeName(u int) string {
	if u == m.n {
		return m.in.Proxy
	}
	return m.hosts[u]
}

func (m *model) linkName(u, v int) string {
	switch {
	case u == m.n:
		return "link:star-" + m.hosts[v]
	case v == m.n:
		return "link:star-" + m.hosts[u]
	}
	return "link:" + Pair(m.hosts[u], m.hosts[v]).Name()
}

// rules derives the minimal rule set for the routing (see the package doc).
func (m *model) rules(r routing, hostOf []int) []Rule {
	seen := map[[2]string]bool{}
	var rules []Rule
	for _, d := range m.dem {
		s, t := hostOf[d.s], hostOf[d.d]
		if s < 0 || t < 0 || s == t {
			continue
		}
		p := r.path(m.N, s, t)
		fast := false
		for k := 0; k+1 < len(p); k++ {
			if p[k] != m.n && p[k+1] != m.n {
				fast = true
			}
		}
		if !fast {
			continue
		}
		dst := m.vms[d.d]
		for k := 0; k+1 < len(p); k++ {
			u, v := p[k], p[k+1]
			if u == m.n && v == t {
				continue // the proxy's default: the destination's star link
			}
			key := [2]string{m.nodeName(u), dst}
			if seen[key] {
				continue
			}
			seen[key] = true
			rules = append(rules, Rule{Host: m.nodeName(u), Src: "any", Dst: dst, To: m.linkName(u, v)})
		}
	}
	sortRules(rules)
	return rules
}

func sortRules(rs []Rule) {
	sort.Slice(rs, func(i, j int) bool { return ruleLess(rs[i], rs[j]) })
}

func ruleLess(a, b Rule) bool {
	if a.Host != b.Host {
		return a.Host < b.Host
	}
	if a.Dst != b.Dst {
		return a.Dst < b.Dst
	}
	if a.Src != b.Src {
		return a.Src < b.Src
	}
	if a.To != b.To {
		return a.To < b.To
	}
	return a.Filter < b.Filter
}

// feasible reports whether a link set (adjacency) is within the budget for host demands hd.
func (m *model) feasible(adj []bool, hd []float64) bool {
	b := m.in.Budget
	n := m.n
	count := 0
	sum, min := 0.0, inf
	for i := 0; i < n; i++ {
		deg := 0
		for j := 0; j < n; j++ {
			if !adj[i*n+j] {
				continue
			}
			deg++
			if j > i {
				count++
				t := hd[i*n+j] + hd[j*n+i]
				sum += t
				if t < min {
					min = t
				}
			}
		}
		if b.MaxPerHost > 0 && deg > b.MaxPerHost {
			return false
		}
	}
	if b.MaxLinks > 0 && count > b.MaxLinks {
		return false
	}
	if b.Share > 0 && count > 0 {
		total := 0.0
		for _, x := range hd {
			total += x
		}
		if sum-min >= b.Share*total {
			return false
		}
	}
	return true
}

// build turns a link set and placement into a Plan.
func (m *model) build(adj []bool, hostOf []int, reasons []string) Plan {
	r := m.route(adj, hostOf)
	return Plan{
		Links:     m.links(adj),
		Rules:     m.rules(r, hostOf),
		Placement: m.placementMap(hostOf),
		Objective: r.obj,
		Reasons:   reasons,
	}
}

// Evaluate returns the objective (see the package doc) of a link set and placement.
func Evaluate(in Input, links []HostPair, placement map[string]string) float64 {
	m := newModel(&in)
	return m.route(m.adj(links), m.hostOf(placement)).obj
}

// EvaluatePlan returns the objective of p as the overlay forwards it: each demand follows
// p.Rules hop by hop (a rule with Src "any" or the demand's source VM, no IP filter, and Dst
// the demand's destination VM), and where no rule applies, what the switches do without
// one: a host sends over its fast link to the destination's host if p has one (the peer
// announced the VM there), otherwise to the proxy, and the proxy to the destination's host.
// Links carry the load that these paths put on them, as in the planner's objective.
//
// Evaluate scores a link set under the best routing for it; a plan whose rules were made
// for other costs or demands routes worse than that, and only this tells the two apart.
// A path that loops or names a link p lacks is scored as the star path.
func EvaluatePlan(in Input, p Plan) float64 {
	m := newModel(&in)
	adj := m.adj(p.Links)
	hostOf := m.hostOf(p.Placement)
	w := m.weights(adj)
	N, n := m.N, m.n
	node := func(name string) int {
		if name == m.in.Proxy {
			return n
		}
		if i, ok := m.hidx[name]; ok {
			return i
		}
		return -1
	}
	fast := map[string]HostPair{}
	for _, l := range p.Links {
		fast[l.Name()] = l
	}
	type key struct{ node, dst int }
	next := map[key]int{} // rules with Src "any"
	nextFrom := map[[3]int]int{}
	for _, r := range p.Rules {
		u := node(r.Host)
		d, ok := m.vidx[r.Dst]
		if u < 0 || !ok || r.Filter != "" || !strings.HasPrefix(r.To, "link:") {
			continue
		}
		v := -1
		name := strings.TrimPrefix(r.To, "link:")
		if h, ok := strings.CutPrefix(name, "star-"); ok && node(h) >= 0 {
			if u == n {
				v = node(h)
			} else if u == node(h) {
				v = n
			}
		} else if l, ok := fast[name]; ok && u < n {
			switch {
			case node(l.A) == u:
				v = node(l.B)
			case node(l.B) == u:
				v = node(l.A)
			}
		}
		if v < 0 || v == u || math.IsInf(w[u*N+v], 1) {
			continue
		}
		if r.Src == "any" {
			next[key{u, d}] = v
		} else if s, ok := m.vidx[r.Src]; ok {
			nextFrom[[3]int{u, s, d}] = v
		}
	}
	hop := func(u, sv, dv, t int) int {
		if v, ok := nextFrom[[3]int{u, sv, dv}]; ok {
			return v
		}
		if v, ok := next[key{u, dv}]; ok {
			return v
		}
		if u == n || adj[u*n+t] {
			return t
		}
		return n
	}
	paths := make([][]int, len(m.dem))
	load := make([]float64, N*N)
	total := 0.0
	for i, d := range m.dem {
		s, t := hostOf[d.s], hostOf[d.d]
		if s < 0 || t < 0 || s == t {
			continue
		}
		path := []int{s}
		for u := s; u != t; {
			u = hop(u, d.s, d.d, t)
			path = append(path, u)
			if len(path) > N+1 {
				path = []int{s, n, t} // a loop: score the star path
				break
			}
		}
		paths[i] = path
		for k := 0; k+1 < len(path); k++ {
			load[path[k]*N+path[k+1]] += d.bytes
		}
		total += d.bytes
	}
	if total == 0 {
		return 0
	}
	obj := 0.0
	for i, d := range m.dem {
		p := paths[i]
		for k := 0; k+1 < len(p); k++ {
			e := p[k]*N + p[k+1]
			obj += d.bytes * w[e] * (1 + load[e]/total)
		}
	}
	return obj
}
