package infer

import (
	"cmp"
	"math"
	"slices"
	"sort"
	"strings"
	"time"
)

// Edge is one directed entry of the matrix that survived pruning.
type Edge struct {
	Src    string  `json:"src"` // MAC, lower-case colon form
	Dst    string  `json:"dst"`
	Bytes  uint64  `json:"bytes"`
	Weight float64 `json:"weight"` // Bytes / largest entry, in (0, 1]
}

// Topology is the inferred application topology (DESIGN.md's `topology`
// JSON shape).
type Topology struct {
	Archetype  string    `json:"archetype"`  // see the Arch* constants; "" when there was no traffic
	Confidence float64   `json:"confidence"` // 0..1, see Infer
	Edges      []Edge    `json:"edges"`      // bytes descending, then src, dst
	ChangedAt  time.Time `json:"changed_at"` // when the Aggregator declared it; zero from Infer
	Hub        string    `json:"hub,omitempty"`
	Nodes      []string  `json:"nodes"` // sorted
}

// Hub detection: a node is the hub when it receives at least hubRatio ×
// the median of what the other nodes receive (NAS IS: about 2×).
const hubRatio = 1.5

// Relaxation: when the pruned graph is no archetype, Infer drops the
// weakest undirected edges one weight level at a time, at most
// relaxLevels levels and never below relaxMinShare of the kept bytes, and
// names the first archetype that fits, at a reduced confidence.
const (
	relaxLevels   = 16
	relaxMinShare = 0.8
	relaxPenalty  = 0.9
)

type pairKey struct{ src, dst string }

// Infer is the pure inference step: merge duplicate (src, dst) entries,
// drop self-pairs and empty entries, normalise by the largest entry, prune
// entries below bMin × largest, and return the surviving directed entries
// as weighted edges. The archetype is judged on the undirected edge set
// (a→b or b→a makes {a, b}) by Recognize.
//
// Confidence = Recognize's structural confidence × separation, where
// separation = 0.5 + 0.5 × (1 − largest pruned weight / smallest kept
// weight): 1 when nothing was pruned or the pruned noise is negligible,
// falling towards 0.5 as pruned entries come close to the kept ones (the
// cut at b_min was then arbitrary). When the kept graph is no archetype,
// the weakest edges are dropped level by level (keeping ≥ 80 % of the
// bytes); a match found that way is scaled by 0.9 × the share of bytes
// kept. Edges always reports the graph pruned at bMin.
//
// bMin is clamped into [0, 1].
//
// Hub is set, for all2all and unknown patterns, to the node receiving the
// most when it receives ≥ 1.5 × the median of the others (NAS IS).
func Infer(m Matrix, bMin float64) Topology {
	if math.IsNaN(bMin) || bMin < 0 {
		bMin = 0
	}
	if bMin > 1 {
		bMin = 1 // the largest entry is always an edge
	}
	merged := make(map[pairKey]*Entry, len(m.Entries))
	for _, e := range m.Entries {
		if e.Src == e.Dst || e.Bytes == 0 {
			continue
		}
		k := pairKey{e.Src, e.Dst}
		if p, ok := merged[k]; ok {
			p.Bytes = satAdd(p.Bytes, e.Bytes)
			p.Frames = satAdd(p.Frames, e.Frames)
			continue
		}
		c := e
		merged[k] = &c
	}
	topo := Topology{Edges: []Edge{}, Nodes: []string{}}
	var max uint64
	for _, e := range merged {
		if e.Bytes > max {
			max = e.Bytes
		}
	}
	if max == 0 {
		return topo
	}
	cut := bMin * float64(max)
	var maxPruned float64
	for _, e := range merged {
		if float64(e.Bytes) >= cut {
			topo.Edges = append(topo.Edges, Edge{Src: e.Src, Dst: e.Dst, Bytes: e.Bytes, Weight: float64(e.Bytes) / float64(max)})
		} else if w := float64(e.Bytes) / float64(max); w > maxPruned {
			maxPruned = w
		}
	}
	sortEdges(topo.Edges)
	minKept := topo.Edges[len(topo.Edges)-1].Weight
	separation := 0.5 + 0.5*(1-maxPruned/minKept)

	und := undirected(topo.Edges)
	topo.Nodes = nodesOf(und)
	arch, conf := recognizeUnd(und)
	if arch == ArchUnknown {
		arch, conf = relax(und)
	}
	topo.Archetype = arch
	topo.Confidence = conf * separation
	if arch == ArchAll2All || arch == ArchUnknown {
		topo.Hub = hubOf(topo.Edges)
	}
	return topo
}

func satAdd(a, b uint64) uint64 {
	if a+b < a {
		return math.MaxUint64
	}
	return a + b
}

func sortEdges(es []Edge) {
	slices.SortFunc(es, func(a, b Edge) int {
		if c := cmp.Compare(b.Bytes, a.Bytes); c != 0 {
			return c
		}
		if c := strings.Compare(a.Src, b.Src); c != 0 {
			return c
		}
		return strings.Compare(a.Dst, b.Dst)
	})
}

// uedge is an undirected edge (a < b) with the bytes of both directions.
type uedge struct {
	a, b  string
	bytes float64
}

func undirected(es []Edge) []uedge {
	idx := map[pairKey]int{}
	var out []uedge
	for _, e := range es {
		a, b := e.Src, e.Dst
		if a > b {
			a, b = b, a
		}
		k := pairKey{a, b}
		if i, ok := idx[k]; ok {
			out[i].bytes += float64(e.Bytes)
			continue
		}
		idx[k] = len(out)
		out = append(out, uedge{a, b, float64(e.Bytes)})
	}
	return out // in the order of es; recognition does not care
}

func nodesOf(und []uedge) []string {
	set := map[string]struct{}{}
	for _, e := range und {
		set[e.a], set[e.b] = struct{}{}, struct{}{}
	}
	out := make([]string, 0, len(set))
	for n := range set {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

func recognizeUnd(und []uedge) (string, float64) {
	pairs := make([][2]string, len(und))
	for i, e := range und {
		pairs[i] = [2]string{e.a, e.b}
	}
	return Recognize(nodesOf(und), pairs)
}

// relax drops the weakest undirected edges level by level and returns the
// first archetype that fits, or unknown.
func relax(und []uedge) (string, float64) {
	var total float64
	levels := make([]float64, 0, len(und))
	for _, e := range und {
		total += e.bytes
		levels = append(levels, e.bytes)
	}
	sort.Float64s(levels)
	levels = uniqueFloats(levels)
	for i := 1; i < len(levels) && i <= relaxLevels; i++ {
		cut := levels[i]
		var kept []uedge
		var keptBytes float64
		for _, e := range und {
			if e.bytes >= cut {
				kept = append(kept, e)
				keptBytes += e.bytes
			}
		}
		share := keptBytes / total
		if share < relaxMinShare {
			break
		}
		if arch, conf := recognizeUnd(kept); arch != ArchUnknown {
			return arch, conf * relaxPenalty * share
		}
	}
	return ArchUnknown, 0
}

func uniqueFloats(s []float64) []float64 {
	out := s[:0]
	for i, x := range s {
		if i == 0 || x != s[i-1] {
			out = append(out, x)
		}
	}
	return out
}

// hubOf returns the node receiving the most bytes over es when it receives
// at least hubRatio × the median of the other receivers, else "".
func hubOf(es []Edge) string {
	recv := map[string]float64{}
	for _, e := range es {
		recv[e.Dst] += float64(e.Bytes)
		if _, ok := recv[e.Src]; !ok {
			recv[e.Src] = 0
		}
	}
	if len(recv) < 3 {
		return ""
	}
	type nr struct {
		n string
		r float64
	}
	all := make([]nr, 0, len(recv))
	for n, r := range recv {
		all = append(all, nr{n, r})
	}
	sort.Slice(all, func(i, j int) bool {
		if all[i].r != all[j].r {
			return all[i].r > all[j].r
		}
		return all[i].n < all[j].n
	})
	rest := all[1:]
	var median float64
	if k := len(rest); k%2 == 1 {
		median = rest[k/2].r
	} else {
		median = (rest[k/2-1].r + rest[k/2].r) / 2
	}
	if all[0].r > 0 && all[0].r >= hubRatio*median {
		return all[0].n
	}
	return ""
}

// signature identifies a topology's structure: archetype, hub and the
// undirected edge set; weights do not count. The edge set is hashed
// order-independently (a sum of per-edge FNV-1a hashes), so no sort.
func signature(t Topology) uint64 {
	sig := fnv(fnv(fnvOffset, t.Archetype), "|"+t.Hub)
	seen := make(map[pairKey]struct{}, len(t.Edges))
	for _, e := range t.Edges {
		a, b := e.Src, e.Dst
		if a > b {
			a, b = b, a
		}
		k := pairKey{a, b}
		if _, ok := seen[k]; ok {
			continue
		}
		seen[k] = struct{}{}
		h := fnv(fnv(fnvOffset, a), "-")
		sig += mix(fnv(h, b))
	}
	return sig
}

const fnvOffset = 14695981039346656037

func fnv(h uint64, s string) uint64 {
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return h
}

// mix is a 64-bit finaliser (splitmix64), so sums of edge hashes do not
// cancel structurally.
func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}
