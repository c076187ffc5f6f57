package infer

import (
	"sort"
)

// Archetype names, as they appear in Topology.Archetype and the `topology`
// JSON shape.
const (
	ArchRing      = "ring"
	ArchBus       = "bus"
	ArchMesh2D    = "mesh2d"
	ArchMesh3D    = "mesh3d"
	ArchTorus2D   = "torus2d"
	ArchTorus3D   = "torus3d"
	ArchHypercube = "hypercube"
	ArchTree      = "tree"
	ArchAll2All   = "all2all"
	ArchUnknown   = "unknown"
)

// Recognition limits.
const (
	// nearCompleteMin is the edge density (edges / n(n-1)/2) from which a
	// graph that is no exact archetype is still called all2all, with the
	// density as its confidence: an all-to-all where a few pairs happen to
	// fall under b_min is still an all-to-all.
	nearCompleteMin = 0.85
	// otherTreeConfidence is the confidence of a binary tree that is not
	// the heap-shaped reduction tree on its n nodes (rank i's parent is
	// (i-1)/2), e.g. a lopsided one.
	otherTreeConfidence = 0.8
	// isoBudget bounds the backtracking steps of one isomorphism check.
	// The archetypes are vertex-transitive or nearly so, and colour
	// refinement plus adjacency-consistent extension finds a mapping in
	// about n steps when one exists; the budget only stops pathological
	// non-isomorphic inputs that share all cheap invariants.
	isoBudget = 200000
	// maxRecognize caps the node count Recognize examines structurally
	// (beyond the complete-graph test, which is O(1)): the adjacency
	// matrices are n² bytes.
	maxRecognize = 4096
)

// graph is a simple undirected graph on vertices 0..n-1.
type graph struct {
	n   int
	adj [][]int // sorted neighbour lists
	mat []bool  // n×n adjacency matrix
	m   int     // edge count
}

func newGraph(n int) *graph {
	return &graph{n: n, adj: make([][]int, n), mat: make([]bool, n*n)}
}

// addEdge adds {a, b}; self-loops and duplicates are ignored, which is
// what makes a torus dimension of size 2 collapse to a single edge.
func (g *graph) addEdge(a, b int) {
	if a == b || g.mat[a*g.n+b] {
		return
	}
	g.mat[a*g.n+b], g.mat[b*g.n+a] = true, true
	g.adj[a] = append(g.adj[a], b)
	g.adj[b] = append(g.adj[b], a)
	g.m++
}

func (g *graph) has(a, b int) bool { return g.mat[a*g.n+b] }

func (g *graph) finish() *graph {
	for _, l := range g.adj {
		sort.Ints(l)
	}
	return g
}

func (g *graph) connected() bool {
	if g.n == 0 {
		return false
	}
	seen := make([]bool, g.n)
	stack := []int{0}
	seen[0] = true
	count := 1
	for len(stack) > 0 {
		v := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		for _, w := range g.adj[v] {
			if !seen[w] {
				seen[w] = true
				count++
				stack = append(stack, w)
			}
		}
	}
	return count == g.n
}

// degreeHist returns the sorted degree sequence.
func (g *graph) degrees() []int {
	d := make([]int, g.n)
	for i, l := range g.adj {
		d[i] = len(l)
	}
	sort.Ints(d)
	return d
}

func (g *graph) bipartite() bool {
	side := make([]int8, g.n)
	for s := 0; s < g.n; s++ {
		if side[s] != 0 {
			continue
		}
		side[s] = 1
		queue := []int{s}
		for len(queue) > 0 {
			v := queue[0]
			queue = queue[1:]
			for _, w := range g.adj[v] {
				if side[w] == 0 {
					side[w] = -side[v]
					queue = append(queue, w)
				} else if side[w] == side[v] {
					return false
				}
			}
		}
	}
	return true
}

// grid builds the a×b×… mesh (wrap=false) or torus (wrap=true) on
// dims; vertex index is mixed-radix over dims.
func grid(dims []int, wrap bool) *graph {
	n := 1
	for _, d := range dims {
		n *= d
	}
	g := newGraph(n)
	coord := make([]int, len(dims))
	for v := 0; v < n; v++ {
		// decode v
		x := v
		for i := len(dims) - 1; i >= 0; i-- {
			coord[i] = x % dims[i]
			x /= dims[i]
		}
		stride := 1
		for i := len(dims) - 1; i >= 0; i-- {
			if coord[i]+1 < dims[i] {
				g.addEdge(v, v+stride)
			} else if wrap && dims[i] > 1 {
				g.addEdge(v, v-coord[i]*stride) // wrap to coordinate 0
			}
			stride *= dims[i]
		}
	}
	return g.finish()
}

// hypercube builds Q_d.
func hypercube(d int) *graph {
	n := 1 << d
	g := newGraph(n)
	for v := 0; v < n; v++ {
		for i := 0; i < d; i++ {
			g.addEdge(v, v^(1<<i))
		}
	}
	return g.finish()
}

// heapTree builds the binary reduction tree on n ranks: i's parent is (i-1)/2.
func heapTree(n int) *graph {
	g := newGraph(n)
	for i := 1; i < n; i++ {
		g.addEdge(i, (i-1)/2)
	}
	return g.finish()
}

// Recognize names the archetype of the undirected graph with the given
// nodes and edges (node labels carry no meaning: only graph structure is
// used, via invariants and isomorphism checks against generated
// candidates). Edges naming nodes absent from nodes add them; self-loops
// and duplicate edges are ignored; the graph must be connected.
//
// Candidates are tried in this order, the first match wins, so graphs that
// are several archetypes at once get the simplest name: all2all (complete
// graph, n ≥ 3; the single edge n = 2 is a bus), ring (cycle, n ≥ 4; so a
// 2×2 mesh is a ring), bus (path), tree (binary tree), hypercube (Q_d,
// d ≥ 3; so the 2×4 and 4×4 tori and the 2×2×2 mesh are hypercubes),
// mesh2d, torus2d, mesh3d, torus3d (all dimensions ≥ 2; a torus dimension
// of 2 wraps onto the edge that is already there, so a 3×2×3 torus is
// C3×K2×C3, 5-regular).
//
// Confidence: 1.0 for an exact structural match (the graph is isomorphic
// to the archetype); otherTreeConfidence for a binary tree that is not the
// heap-shaped reduction tree; the edge density for a near-complete graph
// (≥ 85 % of all pairs) called all2all; 0 for "unknown".
func Recognize(nodes []string, edges [][2]string) (archetype string, confidence float64) {
	idx := make(map[string]int, len(nodes))
	for _, n := range nodes {
		if _, ok := idx[n]; !ok {
			idx[n] = len(idx)
		}
	}
	for _, e := range edges {
		for _, n := range e {
			if _, ok := idx[n]; !ok {
				idx[n] = len(idx)
			}
		}
	}
	n := len(idx)
	if n < 2 {
		return ArchUnknown, 0
	}
	// Count distinct undirected edges first: the complete-graph test is
	// O(m) and must not need n² memory for large n.
	type ue struct{ a, b int }
	set := make(map[ue]struct{}, len(edges))
	for _, e := range edges {
		a, b := idx[e[0]], idx[e[1]]
		if a == b {
			continue
		}
		if a > b {
			a, b = b, a
		}
		set[ue{a, b}] = struct{}{}
	}
	full := n * (n - 1) / 2
	if len(set) == full {
		if n == 2 {
			return ArchBus, 1
		}
		return ArchAll2All, 1
	}
	if n > maxRecognize {
		return ArchUnknown, 0
	}
	g := newGraph(n)
	for e := range set {
		g.addEdge(e.a, e.b)
	}
	g.finish()
	if !g.connected() {
		return ArchUnknown, 0
	}
	return recognizeGraph(g)
}

func recognizeGraph(g *graph) (string, float64) {
	n, m := g.n, g.m
	deg := g.degrees()
	minDeg, maxDeg := deg[0], deg[n-1]
	// Connected, so: m == n-1 is a tree, and all degrees 2 is a cycle.
	if minDeg == 2 && maxDeg == 2 {
		return ArchRing, 1
	}
	if m == n-1 {
		if maxDeg <= 2 {
			return ArchBus, 1
		}
		if isBinaryTree(g) {
			if iso(g, heapTree(n)) {
				return ArchTree, 1
			}
			return ArchTree, otherTreeConfidence
		}
		return ArchUnknown, 0
	}
	if d := log2(n); d >= 3 && minDeg == d && maxDeg == d && m == n*d/2 && g.bipartite() {
		if iso(g, hypercube(d)) {
			return ArchHypercube, 1
		}
	}
	for _, c := range gridCandidates(n) {
		h := grid(c.dims, c.wrap)
		if h.m != m || !equalInts(h.degrees(), deg) {
			continue
		}
		if iso(g, h) {
			return c.name, 1
		}
	}
	if n >= 4 {
		if density := float64(m) / float64(n*(n-1)/2); density >= nearCompleteMin {
			return ArchAll2All, density
		}
	}
	return ArchUnknown, 0
}

type gridCandidate struct {
	name string
	dims []int
	wrap bool
}

// gridCandidates lists the 2-D and 3-D meshes and tori on n nodes, all
// dimensions ≥ 2 and non-decreasing (isomorphism makes order irrelevant).
func gridCandidates(n int) []gridCandidate {
	var twoD, threeD [][]int
	for a := 2; a*a <= n; a++ {
		if n%a == 0 {
			twoD = append(twoD, []int{a, n / a})
		}
	}
	for a := 2; a*a*a <= n; a++ {
		if n%a != 0 {
			continue
		}
		for b := a; a*b*b <= n; b++ {
			if (n/a)%b == 0 {
				threeD = append(threeD, []int{a, b, n / a / b})
			}
		}
	}
	var out []gridCandidate
	for _, d := range twoD {
		out = append(out, gridCandidate{ArchMesh2D, d, false})
	}
	for _, d := range twoD {
		out = append(out, gridCandidate{ArchTorus2D, d, true})
	}
	for _, d := range threeD {
		out = append(out, gridCandidate{ArchMesh3D, d, false})
	}
	for _, d := range threeD {
		out = append(out, gridCandidate{ArchTorus3D, d, true})
	}
	return out
}

// isBinaryTree reports whether the tree g can be rooted so that every
// vertex has at most two children: some vertex of degree ≤ 2 is the root
// and every vertex has degree ≤ 3.
func isBinaryTree(g *graph) bool {
	hasRoot := false
	for _, l := range g.adj {
		if len(l) > 3 {
			return false
		}
		if len(l) <= 2 {
			hasRoot = true
		}
	}
	return hasRoot
}

func log2(n int) int {
	d := 0
	for 1<<d < n {
		d++
	}
	if 1<<d != n {
		return -1
	}
	return d
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// refine runs colour refinement (1-dimensional Weisfeiler-Leman) on g and
// h together, so equal colours mean the same thing in both. It returns the
// stable colourings, or ok=false when the colour histograms differ (then
// the graphs are certainly not isomorphic).
func refine(g, h *graph) (cg, ch []int, ok bool) {
	n := g.n
	cg, ch = make([]int, n), make([]int, n)
	for v := 0; v < n; v++ {
		cg[v], ch[v] = len(g.adj[v]), len(h.adj[v])
	}
	classes := -1
	buf := make([]int, 0, 16)
	for iter := 0; iter <= n; iter++ {
		if !sameHist(cg, ch) {
			return nil, nil, false
		}
		ids := map[string]int{}
		sig := func(gr *graph, c []int, v int) string {
			buf = buf[:0]
			for _, w := range gr.adj[v] {
				buf = append(buf, c[w])
			}
			sort.Ints(buf)
			b := make([]byte, 0, 8*(len(buf)+1))
			b = appendInt(b, c[v])
			for _, x := range buf {
				b = append(b, ',')
				b = appendInt(b, x)
			}
			return string(b)
		}
		ng, nh := make([]int, n), make([]int, n)
		for v := 0; v < n; v++ {
			s := sig(g, cg, v)
			id, seen := ids[s]
			if !seen {
				id = len(ids)
				ids[s] = id
			}
			ng[v] = id
		}
		for v := 0; v < n; v++ {
			s := sig(h, ch, v)
			id, seen := ids[s]
			if !seen {
				id = len(ids)
				ids[s] = id
			}
			nh[v] = id
		}
		cg, ch = ng, nh
		if len(ids) == classes {
			break
		}
		classes = len(ids)
	}
	if !sameHist(cg, ch) {
		return nil, nil, false
	}
	return cg, ch, true
}

func appendInt(b []byte, x int) []byte {
	if x == 0 {
		return append(b, '0')
	}
	var tmp [20]byte
	i := len(tmp)
	for x > 0 {
		i--
		tmp[i] = byte('0' + x%10)
		x /= 10
	}
	return append(b, tmp[i:]...)
}

func sameHist(a, b []int) bool {
	h := map[int]int{}
	for _, x := range a {
		h[x]++
	}
	for _, x := range b {
		h[x]--
	}
	for _, c := range h {
		if c != 0 {
			return false
		}
	}
	return true
}

// iso reports whether g and h (same n) are isomorphic: colour refinement,
// then a backtracking search that maps h's vertices in BFS order onto g's,
// each candidate drawn from the neighbours of an already-mapped neighbour's
// image, of the same colour and consistent in adjacency with everything
// mapped so far. Gives up (false) after isoBudget steps.
func iso(g, h *graph) bool {
	if g.n != h.n || g.m != h.m {
		return false
	}
	n := g.n
	if n == 0 {
		return true
	}
	cg, ch, ok := refine(g, h)
	if !ok {
		return false
	}
	// BFS order over h from a vertex of its rarest colour.
	count := map[int]int{}
	for _, c := range ch {
		count[c]++
	}
	start := 0
	for v := 1; v < n; v++ {
		if count[ch[v]] < count[ch[start]] {
			start = v
		}
	}
	order := make([]int, 0, n)
	anchor := make([]int, n) // an earlier neighbour in order, or -1
	seen := make([]bool, n)
	for s := start; ; {
		seen[s] = true
		anchor[s] = -1
		order = append(order, s)
		for i := len(order) - 1; i < len(order); i++ {
			v := order[i]
			for _, w := range h.adj[v] {
				if !seen[w] {
					seen[w] = true
					anchor[w] = v
					order = append(order, w)
				}
			}
		}
		if len(order) == n {
			break
		}
		for s = 0; seen[s]; s++ {
		}
	}
	pos := make([]int, n) // pos[v] = index of h-vertex v in order
	for i, v := range order {
		pos[v] = i
	}
	img := make([]int, n) // img[h vertex] = g vertex
	used := make([]bool, n)
	steps := 0
	var try func(i int) bool
	try = func(i int) bool {
		if i == n {
			return true
		}
		v := order[i]
		var cands []int
		if a := anchor[v]; a >= 0 {
			cands = g.adj[img[a]]
		} else {
			cands = nil
		}
		consider := func(c int) bool {
			steps++
			if steps > isoBudget || used[c] || cg[c] != ch[v] || len(g.adj[c]) != len(h.adj[v]) {
				return false
			}
			// Adjacency to every mapped vertex must agree; checking h's
			// mapped neighbours and the count of g's mapped neighbours is
			// enough and costs O(degree).
			mappedNbrs := 0
			for _, w := range h.adj[v] {
				if pos[w] < i {
					if !g.has(img[w], c) {
						return false
					}
					mappedNbrs++
				}
			}
			gm := 0
			for _, w := range g.adj[c] {
				if used[w] {
					gm++
				}
			}
			if gm != mappedNbrs {
				return false
			}
			img[v], used[c] = c, true
			if try(i + 1) {
				return true
			}
			used[c] = false
			return false
		}
		if cands != nil {
			for _, c := range cands {
				if consider(c) {
					return true
				}
				if steps > isoBudget {
					return false
				}
			}
			return false
		}
		for c := 0; c < n; c++ {
			if consider(c) {
				return true
			}
			if steps > isoBudget {
				return false
			}
		}
		return false
	}
	return try(0)
}
