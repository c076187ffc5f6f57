// Package patterns is the synthetic bulk-synchronous-parallel (BSP) workload
// that vnet's traffic inference is evaluated with, after the "patterns"
// benchmark of the VNET/VTTIF papers. One rank runs per VM; every iteration
// is a compute phase over a local buffer followed by a communication phase in
// which each rank exchanges one message of Config.Size bytes with each of its
// neighbours in the chosen topology. The traffic matrix it produces is
// therefore exactly the topology's adjacency, which is what the inference
// must recover.
//
// # Topologies
//
// Ranks are 0..n-1. Neighbors returns, sorted and without duplicates or the
// rank itself:
//
//   - ring: r-1 and r+1 modulo n.
//   - bus: a line; r-1 and r+1 where they exist (no wrap-around).
//   - mesh2d, mesh3d: a grid of dims (default: the most cubic factorisation
//     of n, largest dimension first); the ranks one step away along each
//     axis, without wrap-around. Rank r has coordinates in row-major order
//     (the last dimension varies fastest).
//   - torus2d, torus3d: the same grid with wrap-around on every axis.
//   - hypercube: n must be a power of two; r XOR 2^k for every bit k.
//   - tree: a binary reduction tree rooted at rank 0: the parent (r-1)/2 and
//     the children 2r+1 and 2r+2 where they exist.
//   - all2all: every other rank.
//   - neighbor: the one-dimensional stencil of radius 2, the nearest-
//     neighbour pattern: r±1 and r±2 modulo n (a ring plus the links that
//     skip one rank), degree 4 when n >= 5. It differs from ring in that
//     each rank also talks to its second neighbours.
//
// Every relation is symmetric: if a lists b then b lists a (for tree, the
// parent lists the child and the child the parent).
//
// # Schedule
//
// Each iteration, every rank sends exactly one message to every neighbour
// and receives exactly one from every neighbour, over one full-duplex TCP
// connection per neighbour pair. For all topologies but tree, a rank sends
// and receives on all its connections concurrently (a goroutine per
// direction), so no rank waits for a send to drain before posting its
// receives and no cycle of waiting ranks can form. For tree, the iteration
// is a reduction followed by a broadcast: a rank first receives from its
// children (concurrently), then sends to its parent; then it receives from
// its parent and sends to its children. Waits only ever point towards the
// root in the first half and away from it in the second, so the schedule is
// deadlock-free too. In every topology a rank sends len(Neighbors) messages
// per iteration.
//
// # Messages
//
// A message is a 16-byte header (magic, iteration, sender rank, payload
// length) and Size payload bytes. The receiver checks the header against the
// iteration and peer it expects, so a lost, duplicated or misordered message
// is an error, not a silent skew; the payload's first and last 8 bytes carry
// (sender, iteration) and are checked as well, which catches corruption and
// framing errors cheaply.
package patterns

import (
	"fmt"
	"math/bits"
	"slices"
	"strconv"
	"strings"
)

// Topologies lists the topology names Neighbors accepts.
var Topologies = []string{"ring", "bus", "mesh2d", "mesh3d", "torus2d", "torus3d", "hypercube", "tree", "all2all", "neighbor"}

// Neighbors returns the ranks that rank exchanges messages with in topology
// over n ranks, in increasing order. Grids use Dims(n, 2 or 3).
func Neighbors(topology string, n, rank int) ([]int, error) {
	return NeighborsDims(topology, n, rank, nil)
}

// NeighborsDims is Neighbors with explicit grid dimensions for mesh2d,
// mesh3d, torus2d and torus3d (nil chooses Dims). dims must have 2 entries
// for the 2-D topologies, 3 for the 3-D ones, and multiply to n; other
// topologies reject non-nil dims.
func NeighborsDims(topology string, n, rank int, dims []int) ([]int, error) {
	if n < 1 {
		return nil, fmt.Errorf("patterns: %d ranks: want at least 1", n)
	}
	if rank < 0 || rank >= n {
		return nil, fmt.Errorf("patterns: rank %d out of range [0, %d)", rank, n)
	}
	grid := 0
	switch topology {
	case "mesh2d", "torus2d":
		grid = 2
	case "mesh3d", "torus3d":
		grid = 3
	}
	if grid == 0 && dims != nil {
		return nil, fmt.Errorf("patterns: --dims applies only to meshes and tori, not %s", topology)
	}
	var out []int
	add := func(p int) {
		if p != rank && !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	switch topology {
	case "ring":
		add((rank + 1) % n)
		add((rank - 1 + n) % n)
	case "bus":
		if rank > 0 {
			add(rank - 1)
		}
		if rank < n-1 {
			add(rank + 1)
		}
	case "neighbor":
		for _, d := range []int{1, 2} {
			add((rank + d) % n)
			add(((rank-d)%n + n) % n)
		}
	case "mesh2d", "mesh3d", "torus2d", "torus3d":
		if dims == nil {
			dims = Dims(n, grid)
		}
		if len(dims) != grid {
			return nil, fmt.Errorf("patterns: %s needs %d dimensions, got %s", topology, grid, FormatDims(dims))
		}
		prod := 1
		for _, d := range dims {
			if d < 1 {
				return nil, fmt.Errorf("patterns: dimensions %s: each must be at least 1", FormatDims(dims))
			}
			prod *= d
		}
		if prod != n {
			return nil, fmt.Errorf("patterns: dimensions %s make %d ranks, not %d", FormatDims(dims), prod, n)
		}
		wrap := strings.HasPrefix(topology, "torus")
		coords := make([]int, grid)
		stride := make([]int, grid)
		s, r := 1, rank
		for i := grid - 1; i >= 0; i-- {
			stride[i] = s
			coords[i] = r % dims[i]
			r /= dims[i]
			s *= dims[i]
		}
		for i := range grid {
			for _, step := range []int{-1, 1} {
				c := coords[i] + step
				if c < 0 || c >= dims[i] {
					if !wrap {
						continue
					}
					c = (c + dims[i]) % dims[i]
				}
				add(rank + (c-coords[i])*stride[i])
			}
		}
	case "hypercube":
		if n&(n-1) != 0 {
			return nil, fmt.Errorf("patterns: hypercube needs a power of two ranks, not %d", n)
		}
		for k := range bits.Len(uint(n)) - 1 {
			add(rank ^ (1 << k))
		}
	case "tree":
		if rank > 0 {
			add((rank - 1) / 2)
		}
		for _, c := range []int{2*rank + 1, 2*rank + 2} {
			if c < n {
				add(c)
			}
		}
	case "all2all":
		for p := range n {
			add(p)
		}
	default:
		return nil, fmt.Errorf("patterns: unknown topology %q (want one of %s)", topology, strings.Join(Topologies, ", "))
	}
	slices.Sort(out)
	if out == nil {
		out = []int{}
	}
	return out, nil
}

// treeParent returns rank's parent in the binary tree, or -1 for the root.
func treeParent(rank int) int {
	if rank == 0 {
		return -1
	}
	return (rank - 1) / 2
}

// Dims returns the most cubic factorisation of n into d factors, largest
// first: the one whose largest factor is smallest, then whose smallest
// factor is largest. Dims(18, 3) is [3 3 2], Dims(12, 2) is [4 3], and a
// prime n gives [n 1 ...].
func Dims(n, d int) []int {
	if d <= 1 || n < 1 {
		return []int{n}
	}
	var best []int
	var rec func(rem, k, maxf int, acc []int)
	rec = func(rem, k, maxf int, acc []int) {
		if k == 1 {
			if rem > maxf {
				return
			}
			c := append(slices.Clone(acc), rem)
			if best == nil || c[0] < best[0] || (c[0] == best[0] && c[len(c)-1] > best[len(best)-1]) {
				best = c
			}
			return
		}
		for f := min(rem, maxf); f >= 1; f-- {
			if rem%f == 0 {
				rec(rem/f, k-1, f, append(acc, f))
			}
		}
	}
	rec(n, d, n, nil)
	return best
}

// ParseDims parses dimensions written like "3x2x3" (or "3,2,3").
func ParseDims(s string) ([]int, error) {
	s = strings.TrimSpace(strings.ToLower(s))
	if s == "" {
		return nil, nil
	}
	parts := strings.FieldsFunc(s, func(r rune) bool { return r == 'x' || r == ',' || r == '*' })
	if len(parts) < 2 || len(parts) > 3 {
		return nil, fmt.Errorf("dimensions %q: want 2 or 3 numbers like 4x4 or 3x2x3", s)
	}
	dims := make([]int, len(parts))
	for i, p := range parts {
		v, err := strconv.Atoi(p)
		if err != nil || v < 1 {
			return nil, fmt.Errorf("dimensions %q: %q is not a positive number", s, p)
		}
		dims[i] = v
	}
	return dims, nil
}

// FormatDims writes dims as "3x2x3".
func FormatDims(dims []int) string {
	s := make([]string, len(dims))
	for i, d := range dims {
		s[i] = strconv.Itoa(d)
	}
	return strings.Join(s, "x")
}
