package infer

import (
	"encoding/json"
	"fmt"
	"math/rand"
	"os"
	"sort"
	"testing"
)

// pattern is a generated ground truth: directed entries between node
// indices 0..n-1 (the application's traffic), named later with random MACs.
type pattern struct {
	name string // expected archetype
	n    int
	und  [][2]int // undirected edges
	dir  bool     // traffic one way only (a→b for each listed edge), else both ways
}

func ringPat(n int) pattern {
	p := pattern{name: ArchRing, n: n}
	for i := 0; i < n; i++ {
		p.und = append(p.und, [2]int{i, (i + 1) % n})
	}
	return p
}

func busPat(n int) pattern {
	p := pattern{name: ArchBus, n: n}
	for i := 0; i+1 < n; i++ {
		p.und = append(p.und, [2]int{i, i + 1})
	}
	return p
}

func all2allPat(n int) pattern {
	p := pattern{name: ArchAll2All, n: n}
	for i := 0; i < n; i++ {
		for j := i + 1; j < n; j++ {
			p.und = append(p.und, [2]int{i, j})
		}
	}
	return p
}

func hypercubePat(d int) pattern {
	p := pattern{name: ArchHypercube, n: 1 << d}
	for i := 0; i < p.n; i++ {
		for k := 0; k < d; k++ {
			if j := i ^ (1 << k); j > i {
				p.und = append(p.und, [2]int{i, j})
			}
		}
	}
	return p
}

// treePat is the binary reduction tree: children send to their parent.
func treePat(n int) pattern {
	p := pattern{name: ArchTree, n: n, dir: true}
	for i := 1; i < n; i++ {
		p.und = append(p.und, [2]int{i, (i - 1) / 2})
	}
	return p
}

// gridPat is written independently of archetype.go's generator: nodes
// are coordinate tuples, neighbours differ by ±1 in one coordinate
// (mod the size when wrapping), duplicates collapse.
func gridPat(name string, wrap bool, dims ...int) pattern {
	type coord [3]int
	var all []coord
	var rec func(c coord, i int)
	rec = func(c coord, i int) {
		if i == len(dims) {
			all = append(all, c)
			return
		}
		for x := 0; x < dims[i]; x++ {
			c[i] = x
			rec(c, i+1)
		}
	}
	rec(coord{}, 0)
	id := map[coord]int{}
	for i, c := range all {
		id[c] = i
	}
	p := pattern{name: name, n: len(all)}
	seen := map[[2]int]bool{}
	for _, c := range all {
		for i := range dims {
			d := c
			d[i]++
			if d[i] == dims[i] {
				if !wrap {
					continue
				}
				d[i] = 0
			}
			a, b := id[c], id[d]
			if a > b {
				a, b = b, a
			}
			if a != b && !seen[[2]int{a, b}] {
				seen[[2]int{a, b}] = true
				p.und = append(p.und, [2]int{a, b})
			}
		}
	}
	return p
}

func randMACs(r *rand.Rand, n int) []string {
	seen := map[string]bool{}
	var out []string
	for len(out) < n {
		m := MAC{0x02, byte(r.Intn(256)), byte(r.Intn(256)), byte(r.Intn(256)), byte(r.Intn(256)), byte(r.Intn(256))}
		if s := m.String(); !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

// instance is a pattern named with random MACs.
type instance struct {
	macs []string
	dir  map[pairKey]bool // true directed entries
	und  [][2]string
}

func (p pattern) instantiate(r *rand.Rand) instance {
	in := instance{macs: randMACs(r, p.n), dir: map[pairKey]bool{}}
	for _, e := range p.und {
		a, b := in.macs[e[0]], in.macs[e[1]]
		in.und = append(in.und, [2]string{a, b})
		in.dir[pairKey{a, b}] = true
		if !p.dir {
			in.dir[pairKey{b, a}] = true
		}
	}
	return in
}

// traffic returns the entries of one window of the pattern: base bytes
// per directed entry with ±20 % jitter, shuffled.
func (in instance) traffic(r *rand.Rand, base float64) []Entry {
	var es []Entry
	for k := range in.dir {
		b := uint64(base * (0.8 + 0.4*r.Float64()))
		es = append(es, Entry{Src: k.src, Dst: k.dst, Bytes: b, Frames: b/1400 + 1})
	}
	sort.Slice(es, func(i, j int) bool { return es[i].Src+es[i].Dst < es[j].Src+es[j].Dst })
	r.Shuffle(len(es), func(i, j int) { es[i], es[j] = es[j], es[i] })
	return es
}

// noise returns background traffic: ARP-like broadcasts and DNS-like
// exchanges with a gateway (tiny), and small random flows on distinct
// pairs, each well under b_min (≤ 5 % of the largest entry), together up
// to frac of total.
func noise(r *rand.Rand, macs []string, entries []Entry, frac float64) []Entry {
	var total, max float64
	for _, e := range entries {
		total += float64(e.Bytes)
		if float64(e.Bytes) > max {
			max = float64(e.Bytes)
		}
	}
	extra := randMACs(r, 3) // gateway, DNS server, a monitoring box
	var out []Entry
	for _, m := range macs {
		out = append(out,
			Entry{Src: m, Dst: "ff:ff:ff:ff:ff:ff", Bytes: 42 * 3, Frames: 3},
			Entry{Src: m, Dst: extra[0], Bytes: 80, Frames: 1},
			Entry{Src: extra[0], Dst: m, Bytes: 140, Frames: 1})
	}
	var pairs []pairKey
	nodes := append(append([]string{}, macs...), extra...)
	for _, a := range nodes {
		for _, b := range nodes {
			if a != b {
				pairs = append(pairs, pairKey{a, b})
			}
		}
	}
	r.Shuffle(len(pairs), func(i, j int) { pairs[i], pairs[j] = pairs[j], pairs[i] })
	budget := frac * total
	for _, p := range pairs {
		b := max * (0.005 + 0.045*r.Float64())
		if b > budget {
			break
		}
		budget -= b
		out = append(out, Entry{Src: p.src, Dst: p.dst, Bytes: uint64(b), Frames: uint64(b)/200 + 1})
	}
	return out
}

var testPatterns = []pattern{
	ringPat(8),
	gridPat(ArchMesh2D, false, 3, 3),
	gridPat(ArchTorus3D, true, 3, 2, 3),
	all2allPat(6),
	hypercubePat(3),
	treePat(7),
	busPat(8),
}

func TestInferPatterns(t *testing.T) {
	for _, p := range testPatterns {
		for _, withNoise := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/n%d/noise=%v", p.name, p.n, withNoise), func(t *testing.T) {
				for seed := int64(1); seed <= 20; seed++ {
					r := rand.New(rand.NewSource(seed))
					in := p.instantiate(r)
					es := in.traffic(r, 1e6)
					if withNoise {
						es = append(es, noise(r, in.macs, es, 0.10)...)
						r.Shuffle(len(es), func(i, j int) { es[i], es[j] = es[j], es[i] })
					}
					topo := Infer(Matrix{WindowS: 10, Entries: es}, DefaultBMin)
					got := map[pairKey]bool{}
					for _, e := range topo.Edges {
						got[pairKey{e.Src, e.Dst}] = true
						if e.Weight <= 0 || e.Weight > 1 {
							t.Fatalf("seed %d: weight %v out of (0,1]", seed, e.Weight)
						}
					}
					if len(got) != len(in.dir) {
						t.Fatalf("seed %d: %d edges, want %d", seed, len(got), len(in.dir))
					}
					for k := range in.dir {
						if !got[k] {
							t.Fatalf("seed %d: edge %s→%s missing", seed, k.src, k.dst)
						}
					}
					if topo.Archetype != p.name {
						t.Fatalf("seed %d: archetype %q, want %q", seed, topo.Archetype, p.name)
					}
					if topo.Confidence < 0.9 || topo.Confidence > 1 {
						t.Fatalf("seed %d: confidence %v", seed, topo.Confidence)
					}
					if len(topo.Nodes) != p.n {
						t.Fatalf("seed %d: %d nodes, want %d", seed, len(topo.Nodes), p.n)
					}
					if topo.Hub != "" {
						t.Fatalf("seed %d: hub %s on a uniform pattern", seed, topo.Hub)
					}
				}
			})
		}
	}
}

// TestInferNoiseAboveBMin checks the test can fail: noise that reaches
// b_min becomes edges and spoils the archetype.
func TestInferNoiseAboveBMin(t *testing.T) {
	r := rand.New(rand.NewSource(7))
	in := ringPat(8).instantiate(r)
	es := in.traffic(r, 1e6)
	es = append(es, Entry{Src: in.und[0][0], Dst: in.und[3][1], Bytes: 5e5})
	topo := Infer(Matrix{Entries: es}, DefaultBMin)
	if len(topo.Edges) != len(in.dir)+1 {
		t.Fatalf("%d edges, want %d", len(topo.Edges), len(in.dir)+1)
	}
	if topo.Archetype == ArchRing && topo.Confidence == 1 {
		t.Fatalf("a chorded ring recognised as an exact ring")
	}
}

func TestInferRelaxDropsWeakEdge(t *testing.T) {
	// A ring with one chord carrying 15 % of a ring edge: above b_min, so
	// an edge, but the ring is found by dropping it, at lower confidence.
	r := rand.New(rand.NewSource(3))
	in := ringPat(8).instantiate(r)
	var es []Entry
	for k := range in.dir {
		es = append(es, Entry{Src: k.src, Dst: k.dst, Bytes: 1e6})
	}
	es = append(es, Entry{Src: in.macs[0], Dst: in.macs[4], Bytes: 15e4})
	topo := Infer(Matrix{Entries: es}, DefaultBMin)
	if topo.Archetype != ArchRing {
		t.Fatalf("archetype %q, want ring", topo.Archetype)
	}
	if topo.Confidence >= 0.95 || topo.Confidence < 0.5 {
		t.Fatalf("confidence %v, want reduced", topo.Confidence)
	}
	if len(topo.Edges) != 17 {
		t.Fatalf("%d edges, want 17 (edges are pruned at b_min only)", len(topo.Edges))
	}
}

func TestInferEmptyAndDegenerate(t *testing.T) {
	topo := Infer(Matrix{}, DefaultBMin)
	if topo.Archetype != "" || len(topo.Edges) != 0 || topo.Edges == nil || topo.Nodes == nil {
		t.Fatalf("empty: %+v", topo)
	}
	topo = Infer(Matrix{Entries: []Entry{{Src: "a", Dst: "a", Bytes: 10}, {Src: "a", Dst: "b"}}}, DefaultBMin)
	if len(topo.Edges) != 0 {
		t.Fatalf("self and empty entries became edges: %+v", topo.Edges)
	}
	// Duplicate entries merge.
	topo = Infer(Matrix{Entries: []Entry{{Src: "a", Dst: "b", Bytes: 10}, {Src: "a", Dst: "b", Bytes: 10}, {Src: "b", Dst: "a", Bytes: 20}}}, 0.5)
	if len(topo.Edges) != 2 || topo.Edges[0].Weight != 1 || topo.Edges[1].Weight != 1 || topo.Edges[0].Bytes != 20 {
		t.Fatalf("merge: %+v", topo.Edges)
	}
}

func TestNASIS(t *testing.T) {
	raw, err := os.ReadFile("testdata/nas_is_8.json")
	if err != nil {
		t.Fatal(err)
	}
	var m Matrix
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	var meta struct {
		Hub string `json:"hub"`
	}
	if err := json.Unmarshal(raw, &meta); err != nil {
		t.Fatal(err)
	}
	if len(m.Entries) != 56 || meta.Hub == "" {
		t.Fatalf("testdata: %d entries, hub %q", len(m.Entries), meta.Hub)
	}
	topo := Infer(m, DefaultBMin)
	if topo.Archetype != ArchAll2All || topo.Confidence < 0.9 {
		t.Fatalf("archetype %q confidence %v, want all2all", topo.Archetype, topo.Confidence)
	}
	if topo.Hub != meta.Hub {
		t.Fatalf("hub %q, want %q", topo.Hub, meta.Hub)
	}
	if len(topo.Edges) != 56 {
		t.Fatalf("%d edges, want 56", len(topo.Edges))
	}
	// The same matrix with noise and shuffled still names the hub.
	r := rand.New(rand.NewSource(1))
	es := append(append([]Entry{}, m.Entries...), noise(r, topo.Nodes, m.Entries, 0.1)...)
	r.Shuffle(len(es), func(i, j int) { es[i], es[j] = es[j], es[i] })
	topo = Infer(Matrix{Entries: es}, DefaultBMin)
	if topo.Archetype != ArchAll2All || topo.Hub != meta.Hub {
		t.Fatalf("with noise: %q hub %q", topo.Archetype, topo.Hub)
	}
}

func FuzzInfer(f *testing.F) {
	f.Add([]byte{0, 1, 10, 1, 2, 10, 2, 0, 10}, 0.1)
	f.Add([]byte{0, 1, 255, 1, 0, 1, 3, 3, 7}, 0.5)
	f.Add([]byte{}, 0.0)
	f.Add([]byte{0, 1, 0, 2, 3, 200, 4, 5, 100, 5, 4, 100, 6, 7, 9}, 1.5)
	f.Fuzz(func(t *testing.T, data []byte, bMin float64) {
		macs := make([]string, 10)
		for i := range macs {
			macs[i] = MAC{2, 0, 0, 0, 0, byte(i)}.String()
		}
		sum := map[pairKey]uint64{}
		var es []Entry
		for i := 0; i+2 < len(data); i += 3 {
			e := Entry{Src: macs[int(data[i])%10], Dst: macs[int(data[i+1])%10], Bytes: uint64(data[i+2]) * uint64(data[i+2])}
			es = append(es, e)
			sum[pairKey{e.Src, e.Dst}] += e.Bytes
		}
		topo := Infer(Matrix{Entries: es}, bMin)
		seen := map[pairKey]bool{}
		for _, e := range topo.Edges {
			k := pairKey{e.Src, e.Dst}
			if e.Src == e.Dst || sum[k] == 0 || sum[k] != e.Bytes || seen[k] {
				t.Fatalf("edge %+v not an entry", e)
			}
			seen[k] = true
			if !(e.Weight > 0 && e.Weight <= 1) {
				t.Fatalf("weight %v", e.Weight)
			}
		}
		if topo.Confidence < 0 || topo.Confidence > 1 {
			t.Fatalf("confidence %v", topo.Confidence)
		}
	})
}

func BenchmarkInfer(b *testing.B) {
	r := rand.New(rand.NewSource(1))
	in := all2allPat(64).instantiate(r)
	m := Matrix{WindowS: 10, Entries: in.traffic(r, 1e6)}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if topo := Infer(m, DefaultBMin); topo.Archetype != ArchAll2All {
			b.Fatal(topo.Archetype)
		}
	}
}
