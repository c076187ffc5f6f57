package infer

import (
	"fmt"
	"math/rand"
	"testing"
)

// recognizePattern names p's nodes with shuffled random MACs and
// recognises it.
func recognizePattern(r *rand.Rand, p pattern) (string, float64) {
	in := p.instantiate(r)
	und := append([][2]string{}, in.und...)
	r.Shuffle(len(und), func(i, j int) { und[i], und[j] = und[j], und[i] })
	for i := range und {
		if r.Intn(2) == 0 {
			und[i][0], und[i][1] = und[i][1], und[i][0]
		}
	}
	nodes := append([]string{}, in.macs...)
	r.Shuffle(len(nodes), func(i, j int) { nodes[i], nodes[j] = nodes[j], nodes[i] })
	return Recognize(nodes, und)
}

func TestRecognize(t *testing.T) {
	cases := []struct {
		p    pattern
		want string
	}{
		{ringPat(5), ArchRing},
		{ringPat(8), ArchRing},
		{ringPat(4), ArchRing}, // also the 2×2 mesh and Q2: simplest name wins
		{ringPat(64), ArchRing},
		{busPat(2), ArchBus},
		{busPat(8), ArchBus},
		{busPat(100), ArchBus},
		{all2allPat(3), ArchAll2All},
		{all2allPat(6), ArchAll2All},
		{all2allPat(64), ArchAll2All},
		{hypercubePat(3), ArchHypercube},
		{hypercubePat(4), ArchHypercube},
		{hypercubePat(6), ArchHypercube},
		{treePat(7), ArchTree},
		{treePat(15), ArchTree},
		{treePat(10), ArchTree},
		{gridPat(ArchMesh2D, false, 3, 3), ArchMesh2D},
		{gridPat(ArchMesh2D, false, 2, 5), ArchMesh2D},
		{gridPat(ArchMesh2D, false, 4, 6), ArchMesh2D},
		{gridPat(ArchTorus2D, true, 3, 3), ArchTorus2D},
		{gridPat(ArchTorus2D, true, 4, 5), ArchTorus2D},
		{gridPat(ArchTorus2D, true, 2, 5), ArchTorus2D},   // prism C5×K2
		{gridPat(ArchTorus2D, true, 2, 4), ArchHypercube}, // C4×K2 = Q3
		{gridPat(ArchTorus2D, true, 4, 4), ArchHypercube}, // C4×C4 = Q4
		{gridPat(ArchMesh3D, false, 2, 2, 2), ArchHypercube},
		{gridPat(ArchMesh3D, false, 2, 3, 4), ArchMesh3D},
		{gridPat(ArchMesh3D, false, 3, 3, 3), ArchMesh3D},
		{gridPat(ArchTorus3D, true, 3, 2, 3), ArchTorus3D},
		{gridPat(ArchTorus3D, true, 3, 3, 3), ArchTorus3D},
		{gridPat(ArchTorus3D, true, 2, 3, 5), ArchTorus3D},
		{gridPat(ArchTorus3D, true, 3, 4, 4), ArchTorus3D},
		{gridPat(ArchTorus3D, true, 4, 4, 4), ArchHypercube}, // C4³ = Q6
	}
	for _, c := range cases {
		t.Run(fmt.Sprintf("%s_n%d_m%d", c.p.name, c.p.n, len(c.p.und)), func(t *testing.T) {
			for seed := int64(1); seed <= 5; seed++ {
				r := rand.New(rand.NewSource(seed))
				arch, conf := recognizePattern(r, c.p)
				wantConf := 1.0
				if arch != c.want || conf != wantConf {
					t.Fatalf("seed %d: %q %v, want %q %v", seed, arch, conf, c.want, wantConf)
				}
			}
		})
	}
}

func TestRecognizeUnknown(t *testing.T) {
	edges := func(pairs ...int) [][2]string {
		var out [][2]string
		for i := 0; i+1 < len(pairs); i += 2 {
			out = append(out, [2]string{fmt.Sprint(pairs[i]), fmt.Sprint(pairs[i+1])})
		}
		return out
	}
	// Petersen graph: 3-regular on 10 nodes, 15 edges, like the 2×5 torus
	// (prism), so only the isomorphism check tells them apart.
	petersen := edges(0, 1, 1, 2, 2, 3, 3, 4, 4, 0, 0, 5, 1, 6, 2, 7, 3, 8, 4, 9, 5, 7, 7, 9, 9, 6, 6, 8, 8, 5)
	// Two disjoint triangles: 2-regular but not connected.
	twoRings := edges(0, 1, 1, 2, 2, 0, 3, 4, 4, 5, 5, 3)
	// Star on 8: a tree, but not binary.
	star := edges(0, 1, 0, 2, 0, 3, 0, 4, 0, 5, 0, 6, 0, 7)
	// The Möbius ladder on 8 (C8 + antipodal chords, the Wagner graph):
	// 3-regular with 12 edges like Q3, but not bipartite.
	mobius := edges(0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 0, 0, 4, 1, 5, 2, 6, 3, 7)
	// A 3×3 mesh with one extra diagonal.
	meshPlus := append(gridEdges(gridPat("", false, 3, 3)), [2]string{"0", "4"})
	// A 4-regular graph on 16 nodes that is not Q4 nor the 4×4 torus:
	// the circulant C16(1,3).
	var circ [][2]string
	for i := 0; i < 16; i++ {
		circ = append(circ, [2]string{fmt.Sprint(i), fmt.Sprint((i + 1) % 16)}, [2]string{fmt.Sprint(i), fmt.Sprint((i + 3) % 16)})
	}
	for name, es := range map[string][][2]string{
		"petersen": petersen, "two-rings": twoRings, "star": star, "mobius": mobius,
		"mesh+diagonal": meshPlus, "circulant16": circ,
	} {
		if arch, conf := Recognize(nil, es); arch != ArchUnknown || conf != 0 {
			t.Errorf("%s: %q %v, want unknown", name, arch, conf)
		}
	}
	// Isolated nodes make it disconnected.
	if arch, _ := Recognize([]string{"x"}, edges(0, 1, 1, 2, 2, 0)); arch != ArchUnknown {
		t.Errorf("isolated node: %q", arch)
	}
	if arch, _ := Recognize([]string{"x"}, nil); arch != ArchUnknown {
		t.Errorf("single node: %q", arch)
	}
}

func gridEdges(p pattern) [][2]string {
	var out [][2]string
	for _, e := range p.und {
		out = append(out, [2]string{fmt.Sprint(e[0]), fmt.Sprint(e[1])})
	}
	return out
}

func TestRecognizeNearComplete(t *testing.T) {
	p := all2allPat(8) // 28 edges; drop 2 → density 26/28
	es := gridEdges(pattern{und: p.und[2:]})
	arch, conf := Recognize(nil, es)
	if arch != ArchAll2All || conf > 0.95 || conf < 0.9 {
		t.Fatalf("%q %v, want all2all at density 26/28", arch, conf)
	}
}

func TestRecognizeLopsidedTree(t *testing.T) {
	// A caterpillar: a path 0..5 with a leaf on each inner node; binary
	// (root at 0) but not the heap shape.
	es := [][2]string{{"0", "1"}, {"1", "2"}, {"2", "3"}, {"3", "4"}, {"4", "5"}, {"1", "a"}, {"2", "b"}, {"3", "c"}, {"4", "d"}}
	arch, conf := Recognize(nil, es)
	if arch != ArchTree || conf != otherTreeConfidence {
		t.Fatalf("%q %v", arch, conf)
	}
}

func BenchmarkRecognizeTorus3D(b *testing.B) {
	r := rand.New(rand.NewSource(1))
	p := gridPat(ArchTorus3D, true, 3, 4, 4)
	for b.Loop() {
		if arch, _ := recognizePattern(r, p); arch != ArchTorus3D {
			b.Fatal(arch)
		}
	}
}
