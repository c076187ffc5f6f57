package patterns

import (
	"fmt"
	"math/bits"
	"slices"
	"strings"
	"testing"
)

// TestNeighborsExpected checks hand-computed neighbour lists.
func TestNeighborsExpected(t *testing.T) {
	for _, tc := range []struct {
		topo string
		n    int
		dims []int
		want map[int][]int
	}{
		{"ring", 8, nil, map[int][]int{0: {1, 7}, 3: {2, 4}, 7: {0, 6}}},
		{"ring", 2, nil, map[int][]int{0: {1}, 1: {0}}},
		{"bus", 8, nil, map[int][]int{0: {1}, 3: {2, 4}, 7: {6}}},
		// 3x3, row-major:
		// 0 1 2
		// 3 4 5
		// 6 7 8
		{"mesh2d", 9, nil, map[int][]int{0: {1, 3}, 1: {0, 2, 4}, 2: {1, 5}, 4: {1, 3, 5, 7}, 8: {5, 7}}},
		{"mesh2d", 6, []int{2, 3}, map[int][]int{0: {1, 3}, 4: {1, 3, 5}}},
		{"torus2d", 9, nil, map[int][]int{0: {1, 2, 3, 6}, 4: {1, 3, 5, 7}, 8: {2, 5, 6, 7}}},
		{"mesh3d", 8, nil, map[int][]int{0: {1, 2, 4}, 7: {3, 5, 6}}},
		// 3x2x3: rank = a*6 + b*3 + c.
		{"torus3d", 18, []int{3, 2, 3}, map[int][]int{
			0:  {1, 2, 3, 6, 12},    // (0,0,0)
			10: {4, 7, 9, 11, 16},   // (1,1,1)
			17: {5, 11, 14, 15, 16}, // (2,1,2)
		}},
		{"mesh3d", 18, []int{3, 2, 3}, map[int][]int{0: {1, 3, 6}, 10: {4, 7, 9, 11, 16}, 17: {11, 14, 16}}},
		{"hypercube", 8, nil, map[int][]int{0: {1, 2, 4}, 5: {1, 4, 7}, 7: {3, 5, 6}}},
		{"hypercube", 1, nil, map[int][]int{0: {}}},
		{"tree", 7, nil, map[int][]int{0: {1, 2}, 1: {0, 3, 4}, 2: {0, 5, 6}, 3: {1}, 6: {2}}},
		{"tree", 6, nil, map[int][]int{2: {0, 5}, 5: {2}}},
		{"all2all", 6, nil, map[int][]int{0: {1, 2, 3, 4, 5}, 2: {0, 1, 3, 4, 5}}},
		{"neighbor", 8, nil, map[int][]int{0: {1, 2, 6, 7}, 4: {2, 3, 5, 6}}},
		{"neighbor", 4, nil, map[int][]int{0: {1, 2, 3}}},
	} {
		for rank, want := range tc.want {
			got, err := NeighborsDims(tc.topo, tc.n, rank, tc.dims)
			if err != nil {
				t.Errorf("%s(%d %v) rank %d: %v", tc.topo, tc.n, tc.dims, rank, err)
				continue
			}
			if !slices.Equal(got, want) {
				t.Errorf("%s(%d %v) rank %d: got %v, want %v", tc.topo, tc.n, tc.dims, rank, got, want)
			}
		}
	}
}

// TestNeighborsProperties checks symmetry, no self, order and the degree
// and edge counts of every topology on the sizes the inference tests use.
func TestNeighborsProperties(t *testing.T) {
	for _, tc := range []struct {
		topo  string
		n     int
		dims  []int
		edges int
		deg   func(rank int) int // nil: not checked
	}{
		{"ring", 8, nil, 8, func(int) int { return 2 }},
		{"bus", 8, nil, 7, func(r int) int { return map[bool]int{true: 1, false: 2}[r == 0 || r == 7] }},
		{"mesh2d", 9, []int{3, 3}, 12, nil},
		{"mesh3d", 27, nil, 54, nil},
		{"torus2d", 16, nil, 32, func(int) int { return 4 }},
		{"torus3d", 18, []int{3, 2, 3}, 45, func(int) int { return 5 }},
		{"torus3d", 27, nil, 81, func(int) int { return 6 }},
		{"hypercube", 8, nil, 12, func(int) int { return 3 }},
		{"hypercube", 16, nil, 32, func(int) int { return 4 }},
		{"tree", 7, nil, 6, nil},
		{"tree", 10, nil, 9, nil},
		{"all2all", 6, nil, 15, func(int) int { return 5 }},
		{"neighbor", 8, nil, 16, func(int) int { return 4 }},
	} {
		name := fmt.Sprintf("%s(%d)", tc.topo, tc.n)
		adj := make([][]int, tc.n)
		for r := range tc.n {
			nb, err := NeighborsDims(tc.topo, tc.n, r, tc.dims)
			if err != nil {
				t.Fatalf("%s rank %d: %v", name, r, err)
			}
			if !slices.IsSorted(nb) || len(slices.Compact(slices.Clone(nb))) != len(nb) {
				t.Errorf("%s rank %d: %v not sorted and unique", name, r, nb)
			}
			if slices.Contains(nb, r) {
				t.Errorf("%s rank %d lists itself", name, r)
			}
			if tc.deg != nil && len(nb) != tc.deg(r) {
				t.Errorf("%s rank %d: degree %d, want %d (%v)", name, r, len(nb), tc.deg(r), nb)
			}
			adj[r] = nb
		}
		total := 0
		for a, nb := range adj {
			total += len(nb)
			for _, b := range nb {
				if b < 0 || b >= tc.n || !slices.Contains(adj[b], a) {
					t.Errorf("%s: %d lists %d but not the other way", name, a, b)
				}
			}
		}
		if total != 2*tc.edges {
			t.Errorf("%s: %d edges, want %d", name, total/2, tc.edges)
		}
	}
	// The tree is the binary heap: every rank but 0 has exactly one
	// lower-ranked neighbour, its parent.
	for r := 1; r < 15; r++ {
		nb, _ := Neighbors("tree", 15, r)
		if nb[0] != treeParent(r) || (len(nb) > 1 && nb[1] < r) {
			t.Errorf("tree(15) rank %d: %v", r, nb)
		}
	}
	// A hypercube's neighbours differ in exactly one bit.
	for r := range 16 {
		nb, _ := Neighbors("hypercube", 16, r)
		for _, p := range nb {
			if bits.OnesCount(uint(p^r)) != 1 {
				t.Errorf("hypercube(16): %d-%d differ in more than one bit", r, p)
			}
		}
	}
}

func TestNeighborsErrors(t *testing.T) {
	for _, tc := range []struct {
		topo    string
		n, rank int
		dims    []int
		want    string
	}{
		{"hypercube", 6, 0, nil, "power of two"},
		{"hypercube", 12, 3, nil, "power of two"},
		{"star", 4, 0, nil, "unknown topology"},
		{"", 4, 0, nil, "unknown topology"},
		{"ring", 0, 0, nil, "at least 1"},
		{"ring", 4, 4, nil, "out of range"},
		{"ring", 4, -1, nil, "out of range"},
		{"mesh2d", 6, 0, []int{2, 2}, "make 4 ranks, not 6"},
		{"torus3d", 18, 0, []int{3, 6}, "needs 3 dimensions"},
		{"mesh2d", 6, 0, []int{6, 1, 1}, "needs 2 dimensions"},
		{"mesh2d", 0, 0, nil, "at least 1"},
		{"ring", 6, 0, []int{2, 3}, "only to meshes and tori"},
		{"torus2d", 6, 0, []int{6, 0}, "at least 1"},
	} {
		_, err := NeighborsDims(tc.topo, tc.n, tc.rank, tc.dims)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s(%d %v) rank %d: error %v, want one containing %q", tc.topo, tc.n, tc.dims, tc.rank, err, tc.want)
		}
	}
}

func TestDims(t *testing.T) {
	for _, tc := range []struct {
		n, d int
		want []int
	}{
		{18, 3, []int{3, 3, 2}}, {27, 3, []int{3, 3, 3}}, {8, 3, []int{2, 2, 2}}, {12, 3, []int{3, 2, 2}},
		{64, 3, []int{4, 4, 4}}, {16, 2, []int{4, 4}}, {12, 2, []int{4, 3}}, {9, 2, []int{3, 3}},
		{7, 2, []int{7, 1}}, {1, 3, []int{1, 1, 1}}, {24, 2, []int{6, 4}},
	} {
		if got := Dims(tc.n, tc.d); !slices.Equal(got, tc.want) {
			t.Errorf("Dims(%d, %d) = %v, want %v", tc.n, tc.d, got, tc.want)
		}
	}
	for s, want := range map[string][]int{"3x2x3": {3, 2, 3}, "4X4": {4, 4}, "2,3": {2, 3}, "": nil} {
		got, err := ParseDims(s)
		if err != nil || !slices.Equal(got, want) {
			t.Errorf("ParseDims(%q) = %v, %v; want %v", s, got, err, want)
		}
	}
	for _, s := range []string{"3", "3x0", "axb", "1x2x3x4", "3x-2"} {
		if d, err := ParseDims(s); err == nil {
			t.Errorf("ParseDims(%q) = %v, want an error", s, d)
		}
	}
	if s := FormatDims([]int{3, 2, 3}); s != "3x2x3" {
		t.Errorf("FormatDims = %q", s)
	}
}
