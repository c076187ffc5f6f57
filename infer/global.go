package infer

import (
	"cmp"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"slices"
	"strings"
	"sync"
	"time"
)

// Defaults for GlobalConfig.
const (
	DefaultWindow    = 10 * time.Second
	DefaultThreshold = 0.3
	DefaultBMin      = 0.1
	DefaultHistory   = 256
	DefaultSettle    = 200 * time.Millisecond
	// DefaultKeep is how much per-second history the Aggregator keeps for
	// Matrix(last).
	DefaultKeep = time.Hour
	// dedupTTL is how long a (host, seq) is remembered for deduplication;
	// resends happen within seconds.
	dedupTTL = 2 * time.Minute
	// subscriberBuffer is the channel capacity of a Subscribe stream.
	subscriberBuffer = 64
	// minRetick is the shortest re-evaluation delay Tick asks for.
	minRetick = 10 * time.Millisecond
)

// Event kinds.
const (
	EventTopologyChange = "topology-change"
	EventQuiet          = "quiet"
)

// GlobalConfig configures an Aggregator. Zero values take the defaults.
type GlobalConfig struct {
	// Window is the sliding window the global matrix is smoothed over
	// (default 10 s). A pair is judged by its best recent rate within the
	// window (so a pattern that just began counts at its full rate, not at
	// the share of the window it has filled), and an edge leaves only when
	// that rate falls under b_min × the largest. Longer: steadier topology,
	// slower to notice traffic that stopped.
	Window time.Duration
	// Threshold is the change-detection threshold (default 0.3): a change
	// is declared when the total-variation distance between the smoothed,
	// pruned matrix and the last declared one, each normalised to sum 1,
	// exceeds it. Lower: reacts to smaller shifts, risks declaring noise.
	Threshold float64
	// BMin prunes: entries below BMin × the largest entry are not edges
	// (default 0.1). Higher: ignores more background noise, risks losing
	// genuinely light edges of an uneven pattern.
	BMin float64
	// History is how many events are kept for Events (default 256).
	History int
	// Settle is how long a new structure (archetype, hub, edge set) must be
	// seen unchanged, over at least two ticks, before it can be declared
	// (default 200 ms: hosts report a pair the moment it turns active, so
	// the first reports of a pattern's hosts arrive within about one of
	// their polls of each other, and a picture built from only some of
	// them is not declared). Shorter: faster detection, risks declaring a
	// half-reported pattern.
	Settle time.Duration
	// Keep is the raw per-second history kept for Matrix (default 1 h).
	Keep time.Duration
	// Now is the clock (default time.Now); tests inject one.
	Now func() time.Time
	// Log receives one line per declared change or quiet (default: none).
	Log *slog.Logger
}

func (c GlobalConfig) withDefaults() GlobalConfig {
	if c.Window <= 0 {
		c.Window = DefaultWindow
	}
	if c.Threshold <= 0 {
		c.Threshold = DefaultThreshold
	}
	if c.BMin <= 0 {
		c.BMin = DefaultBMin
	}
	if c.History <= 0 {
		c.History = DefaultHistory
	}
	if c.Settle <= 0 {
		c.Settle = DefaultSettle
	}
	if c.Keep <= 0 {
		c.Keep = DefaultKeep
	}
	if c.Keep < c.Window {
		c.Keep = c.Window
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

// Event is a topology change or a quiet, kept in a history and streamed
// to subscribers.
type Event struct {
	Seq      uint64    `json:"seq"`
	At       time.Time `json:"at"`
	Kind     string    `json:"kind"` // EventTopologyChange or EventQuiet
	Topology *Topology `json:"topology,omitempty"`
	Note     string    `json:"note,omitempty"`
}

// AggregatorStats counts what the Aggregator discarded.
type AggregatorStats struct {
	Reports       uint64 `json:"reports"`        // reports merged
	Duplicates    uint64 `json:"duplicates"`     // reports dropped as a repeated (host, seq)
	DroppedEvents uint64 `json:"dropped_events"` // events a slow subscriber missed
	Subscribers   int    `json:"subscribers"`
	// Events counts every event emitted since the start, by kind
	// (EventTopologyChange, EventQuiet, and Note's kinds), however many
	// the history still holds.
	Events map[string]uint64 `json:"events"`
}

// pairCounts is traffic of a pair; in a second's bucket, from is when the
// earliest delta in it began (unix ns; 0: unknown, take reportLead).
type pairCounts struct {
	bytes, frames uint64
	from          int64
}

// secBucket is one second of global traffic, sparse by pair.
type secBucket struct {
	sec   int64
	pairs map[pairKey]pairCounts
}

type subscriber struct {
	ch      chan Event
	dropped uint64
}

// Aggregator merges hosts' local matrices into the global VM×VM matrix,
// smooths it over a sliding window, infers the topology and declares
// changes. It is safe for concurrent use; one mutex guards everything,
// and no call blocks on a subscriber.
//
// Storage is a ring of per-second buckets (Keep long), each a map of the
// pairs that talked in that second, so memory is proportional to active
// pairs × active seconds, not to VMs².
type Aggregator struct {
	cfg GlobalConfig

	mu      sync.Mutex
	buckets []secBucket
	seen    map[string]map[uint64]time.Time // host → seq → when
	quiet   map[pairKey]time.Time           // pairs reported quiet, until they talk again
	// win is the running sum of the buckets of seconds ≥ win.lo (Window
	// long once advanced to now), so a Tick costs O(pairs in the window),
	// not O(pairs × seconds).
	win struct {
		lo  int64
		sum map[pairKey]pairCounts
	}
	stats AggregatorStats

	active bool // the last Tick saw traffic
	decl   struct {
		has  bool // a topology is declared and traffic has not gone quiet since
		topo Topology
		sig  uint64
		ref  map[pairKey]float64 // its pruned matrix, normalised to sum 1
	}
	everDeclared bool
	cand         struct {
		sig   uint64
		since time.Time
		ticks int
	}

	events  []Event           // ring of the last History events, oldest first
	kinds   map[string]uint64 // events emitted, by kind
	nextSeq uint64
	subs    map[*subscriber]struct{}
}

// NewAggregator returns an Aggregator; zero fields of cfg take defaults.
func NewAggregator(cfg GlobalConfig) *Aggregator {
	cfg = cfg.withDefaults()
	n := int((cfg.Keep + time.Second - 1) / time.Second)
	return &Aggregator{
		cfg:     cfg,
		buckets: make([]secBucket, n),
		seen:    map[string]map[uint64]time.Time{},
		quiet:   map[pairKey]time.Time{},
		kinds:   map[string]uint64{},
		nextSeq: 1,
		win: struct {
			lo  int64
			sum map[pairKey]pairCounts
		}{lo: cfg.Now().Unix() - windowSecs(cfg.Window) + 1, sum: map[pairKey]pairCounts{}},
		subs: map[*subscriber]struct{}{},
	}
}

// Config returns the effective configuration (defaults filled in).
func (g *Aggregator) Config() GlobalConfig { return g.cfg }

// Add merges a host's report: per-pair byte/frame deltas measured by that
// host since its previous report. Each frame is counted by exactly one
// host (the host of its source VM), so reports add up without double
// counting; a repeated (host, seq) within dedupTTL is dropped. A host that
// restarts its seq numbering should change its host string (e.g. add a
// boot nonce). Deltas land in the current second's bucket. fresh says the
// report brought a pair new to the window (or back from quiet): only then
// can the structure have changed before the next periodic Tick.
func (g *Aggregator) Add(host string, seq uint64, deltas []Entry) (fresh bool) {
	now := g.cfg.Now()
	g.mu.Lock()
	defer g.mu.Unlock()
	seen := g.seen[host]
	if seen == nil {
		seen = map[uint64]time.Time{}
		g.seen[host] = seen
	}
	if _, dup := seen[seq]; dup {
		g.stats.Duplicates++
		return false
	}
	for s, at := range seen {
		if now.Sub(at) > dedupTTL {
			delete(seen, s)
		}
	}
	seen[seq] = now
	g.stats.Reports++
	sec := now.Unix()
	g.advanceLocked(sec)
	b := g.bucketLocked(sec)
	for _, e := range deltas {
		if e.Bytes == 0 && e.Frames == 0 {
			continue
		}
		k := pairKey{strings.ToLower(e.Src), strings.ToLower(e.Dst)}
		if k.src == k.dst {
			continue
		}
		c := b.pairs[k]
		c.bytes += e.Bytes
		c.frames += e.Frames
		if e.SpanMS > 0 {
			span := min(time.Duration(e.SpanMS)*time.Millisecond, g.cfg.Window+reportLead)
			if from := now.Add(-span).UnixNano(); c.from == 0 || from < c.from {
				c.from = from
			}
		}
		b.pairs[k] = c
		if sec >= g.win.lo {
			w, ok := g.win.sum[k]
			fresh = fresh || !ok
			w.bytes += e.Bytes
			w.frames += e.Frames
			g.win.sum[k] = w
		}
		if _, q := g.quiet[k]; q && e.Bytes > 0 {
			delete(g.quiet, k)
			fresh = true
		}
	}
	return fresh
}

// Quiet tells the aggregator that these pairs went quiet at host: their
// traffic stopped. They leave the smoothed matrix (not the raw history) at
// once, instead of fading out over the window, until they report traffic
// again. When nothing is left, the next Tick emits a "quiet" event.
func (g *Aggregator) Quiet(host string, pairs []Pair) {
	now := g.cfg.Now()
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, p := range pairs {
		g.quiet[pairKey{p.Src.String(), p.Dst.String()}] = now
	}
}

func (g *Aggregator) bucketLocked(sec int64) *secBucket {
	n := int64(len(g.buckets))
	b := &g.buckets[((sec%n)+n)%n]
	if b.sec != sec || b.pairs == nil {
		b.sec = sec
		b.pairs = make(map[pairKey]pairCounts, len(b.pairs))
	}
	return b
}

func windowSecs(d time.Duration) int64 { return int64((d + time.Second - 1) / time.Second) }

// advanceLocked moves the running window sum to end at second now:
// buckets that left the window are subtracted (or, after a long gap, the
// sum is rebuilt). A clock that went backwards leaves it alone.
func (g *Aggregator) advanceLocked(now int64) {
	lo := now - windowSecs(g.cfg.Window) + 1
	if lo <= g.win.lo {
		return
	}
	if lo-g.win.lo > windowSecs(g.cfg.Window) {
		g.win.sum = g.sumLocked(time.Unix(now, 0), g.cfg.Window, false)
		g.win.lo = lo
		return
	}
	for s := g.win.lo; s < lo; s++ {
		b := g.bucketAtLocked(s)
		if b == nil {
			continue
		}
		for k, c := range b.pairs {
			w := g.win.sum[k]
			w.bytes -= c.bytes
			w.frames -= c.frames
			if w.bytes == 0 && w.frames == 0 {
				delete(g.win.sum, k)
			} else {
				g.win.sum[k] = w
			}
		}
	}
	g.win.lo = lo
}

// bucketAtLocked is second s's bucket, nil if none is kept for it.
func (g *Aggregator) bucketAtLocked(s int64) *secBucket {
	n := int64(len(g.buckets))
	b := &g.buckets[((s%n)+n)%n]
	if b.sec != s || b.pairs == nil {
		return nil
	}
	return b
}

// windowLocked returns the smoothed sum at now, without quiet pairs.
func (g *Aggregator) windowLocked(now time.Time) map[pairKey]pairCounts {
	sec := now.Unix()
	if sec-windowSecs(g.cfg.Window)+1 < g.win.lo {
		return g.sumLocked(now, g.cfg.Window, true) // clock went backwards
	}
	g.advanceLocked(sec)
	out := make(map[pairKey]pairCounts, len(g.win.sum))
	for k, c := range g.win.sum {
		if _, q := g.quiet[k]; !q {
			out[k] = c
		}
	}
	return out
}

// sumLocked adds the buckets of the seconds in (now-span, now].
func (g *Aggregator) sumLocked(now time.Time, span time.Duration, skipQuiet bool) map[pairKey]pairCounts {
	secs := int64((span + time.Second - 1) / time.Second)
	if max := int64(len(g.buckets)); secs > max {
		secs = max
	}
	end := now.Unix()
	out := map[pairKey]pairCounts{}
	n := int64(len(g.buckets))
	for s := end - secs + 1; s <= end; s++ {
		b := &g.buckets[((s%n)+n)%n]
		if b.sec != s {
			continue
		}
		for k, c := range b.pairs {
			if skipQuiet {
				if _, q := g.quiet[k]; q {
					continue
				}
			}
			t := out[k]
			t.bytes = satAdd(t.bytes, c.bytes)
			t.frames = satAdd(t.frames, c.frames)
			out[k] = t
		}
	}
	return out
}

func toMatrix(span time.Duration, m map[pairKey]pairCounts) Matrix {
	out := Matrix{WindowS: int(span / time.Second), Entries: make([]Entry, 0, len(m))}
	for k, c := range m {
		out.Entries = append(out.Entries, Entry{Src: k.src, Dst: k.dst, Bytes: c.bytes, Frames: c.frames})
	}
	slices.SortFunc(out.Entries, func(a, b Entry) int {
		if c := cmp.Compare(b.Bytes, a.Bytes); c != 0 {
			return c
		}
		if c := strings.Compare(a.Src, b.Src); c != 0 {
			return c
		}
		return strings.Compare(a.Dst, b.Dst)
	})
	return out
}

// Matrix returns the raw global matrix over the last `last` (whole
// seconds, capped at Keep; last ≤ 0 means all that is kept). Pairs
// reported quiet are included: this is history.
func (g *Aggregator) Matrix(last time.Duration) Matrix {
	if last <= 0 || last > g.cfg.Keep {
		last = g.cfg.Keep
	}
	last = last.Truncate(time.Second)
	if last < time.Second {
		last = time.Second
	}
	now := g.cfg.Now()
	g.mu.Lock()
	defer g.mu.Unlock()
	return toMatrix(last, g.sumLocked(now, last, false))
}

// Smoothed returns the matrix summed over the last Window (a boxcar
// low-pass filter), without the pairs reported quiet.
func (g *Aggregator) Smoothed() Matrix {
	now := g.cfg.Now()
	g.mu.Lock()
	defer g.mu.Unlock()
	return toMatrix(g.cfg.Window, g.windowLocked(now))
}

// Topology returns the last declared topology (the zero Topology, with
// empty slices, before the first). Its weights are refreshed while the
// same structure persists; ChangedAt is when it was declared.
func (g *Aggregator) Topology() Topology {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.everDeclared {
		return Topology{Edges: []Edge{}, Nodes: []string{}}
	}
	return cloneTopology(g.decl.topo)
}

func cloneTopology(t Topology) Topology {
	t.Edges = append([]Edge{}, t.Edges...)
	t.Nodes = append([]string{}, t.Nodes...)
	return t
}

// Tick re-evaluates now: smooth, infer, detect change, emit events. The
// appliance calls it about once a second and after each Add. When a new
// structure is waiting out Settle, Tick returns how soon it wants to be
// called again to declare it (0: nothing pending), so a change is declared
// Settle after it is seen, not at the next periodic tick.
//
// Change detection: the current structure (signature = archetype, hub,
// undirected edge set) becomes a candidate; once it has been seen
// unchanged for Settle and at least two ticks, it is declared if it
// differs from the declared one's and the total-variation distance
// between the two pruned matrices, each normalised to sum 1 (half the L1
// distance: the share of traffic that moved, 0..1, blind to the overall
// rate), exceeds Threshold. The same structure with shifted weights only
// refreshes the declared topology; a different structure that moved less
// traffic than Threshold (an edge hovering at b_min) is ignored. That
// pair of conditions is the hysteresis: no flapping while a pattern is
// steady, one event per real change.
func (g *Aggregator) Tick() (again time.Duration) {
	now := g.cfg.Now()
	g.mu.Lock()
	defer g.mu.Unlock()
	win := g.windowLocked(now)
	sm := toMatrix(g.cfg.Window, win)
	for k, at := range g.quiet {
		if now.Sub(at) > g.cfg.Keep {
			delete(g.quiet, k)
		}
	}
	if len(sm.Entries) == 0 {
		if g.active {
			g.active = false
			g.decl.has = false
			g.cand.sig, g.cand.ticks = 0, 0
			g.emitLocked(Event{At: now, Kind: EventQuiet, Note: "all traffic stopped"})
		}
		return 0
	}
	g.active = true
	topo := g.inferLocked(now, win)
	sig := signature(topo)
	if sig != g.cand.sig {
		g.cand.sig, g.cand.since, g.cand.ticks = sig, now, 1
	} else {
		g.cand.ticks++
	}
	vec := normalised(topo)
	if g.decl.has && sig == g.decl.sig {
		changed := g.decl.topo.ChangedAt
		g.decl.topo = topo
		g.decl.topo.ChangedAt = changed
		g.decl.ref = vec
		return 0
	}
	if wait := g.cfg.Settle - now.Sub(g.cand.since); g.cand.ticks < 2 || wait > 0 {
		return max(wait, minRetick)
	}
	d := 1.0
	if g.decl.has {
		d = tvDistance(vec, g.decl.ref)
	}
	// A newly named archetype is a change even when the old edges still
	// carry most bytes (ring → all-to-all keeps the ring's edges, and its
	// new edges weigh little at first): a named fit is exact on the
	// undirected edge set and has settled, so it is no noise the threshold
	// must absorb. The same archetype with an edge more or less (a
	// direction that began later) refines the declared one, silently.
	// For the same archetype only the edges gained or lost count, not the
	// reweighting of the edges both share: with recent traffic weighed
	// most, a bursty steady pattern shifts its weights by more than the
	// threshold from one second to the next, and that is no new topology.
	named := g.decl.has && topo.Archetype != ""
	if named && topo.Archetype == g.decl.topo.Archetype && movedEdges(vec, g.decl.ref) <= g.cfg.Threshold {
		topo.ChangedAt = g.decl.topo.ChangedAt
		g.decl.topo, g.decl.sig, g.decl.ref = topo, sig, vec
		return 0
	}
	if d <= g.cfg.Threshold && !(named && topo.Archetype != g.decl.topo.Archetype) {
		return 0
	}
	topo.ChangedAt = now
	g.decl.has, g.decl.topo, g.decl.sig, g.decl.ref = true, topo, sig, vec
	g.everDeclared = true
	t := cloneTopology(topo)
	g.emitLocked(Event{At: now, Kind: EventTopologyChange, Topology: &t,
		Note: fmt.Sprintf("%s, %d nodes, %d edges, distance %.2f", archOrUnknown(topo.Archetype), len(topo.Nodes), len(topo.Edges), d)})
	return 0
}

// reportLead is about how much traffic one report covers (hosts push
// about once a second): for a delta that does not say its span, the
// traffic of second s's bucket began about reportLead before s.
const reportLead = time.Second

// minSpan floors the time a suffix's traffic is taken to span, so that a
// burst reported a moment after the previous report is not read as a
// rate far above the pair's.
const minSpan = 250 * time.Millisecond

// rateHalfLife is how fast old traffic loses weight in inferLocked.
const rateHalfLife = time.Second

// inferLocked infers the topology of the window's traffic, judging each
// pair by its best recent rate — the highest average rate over any
// suffix of the window (its traffic since second s, over the time since
// that traffic began: the reports' SpanMS say when, else reportLead before
// s) — instead of by its bytes in the whole window. A
// pattern that has just started then weighs at once what it will weigh
// once it fills the window, instead of staying under b_min beside the
// previous pattern's bytes for seconds; a pair that talks steadily gets
// its steady rate, so a steady pattern infers as on bytes; and silence
// (a long compute phase) scales every pair alike. Edges report the
// window's real bytes; weights are by rate. Cost: one pass over the
// window's buckets.
func (g *Aggregator) inferLocked(now time.Time, win map[pairKey]pairCounts) Topology {
	// A suffix's rate only rises where the pair has traffic (elsewhere
	// its span grows), so the best is found at those seconds alone.
	type acc struct {
		suffix float64
		best   float64
	}
	accs := make([]acc, 0, len(win))
	rates := make(map[pairKey]*acc, len(win))
	for k := range win {
		accs = append(accs, acc{})
		rates[k] = &accs[len(accs)-1]
	}
	for s := now.Unix(); s >= g.win.lo; s-- {
		b := g.bucketAtLocked(s)
		if b == nil {
			continue
		}
		guess := (now.Sub(time.Unix(s, 0)) + reportLead).Seconds()
		for k, c := range b.pairs {
			if a := rates[k]; a != nil {
				span := guess
				if c.from != 0 {
					span = max(float64(now.UnixNano()-c.from)/1e9, minSpan.Seconds())
				}
				// Older traffic counts less (half its weight per
				// rateHalfLife of age): a pattern that has slowed down,
				// or stopped while the next one runs, leaves the judgement
				// in a few half-lives instead of the whole window.
				a.suffix += float64(c.bytes) * math.Exp2(-max(0, now.Sub(time.Unix(s, 0)).Seconds()-1)/rateHalfLife.Seconds())
				a.best = max(a.best, a.suffix/span)
			}
		}
	}
	over := (g.cfg.Window + reportLead).Seconds()
	rated := Matrix{WindowS: int(g.cfg.Window / time.Second), Entries: make([]Entry, 0, len(win))}
	for k, c := range win {
		b := rates[k].best * over
		if b == 0 { // not in the buckets (the clock went backwards): by bytes
			b = float64(c.bytes)
		}
		rated.Entries = append(rated.Entries, Entry{Src: k.src, Dst: k.dst, Bytes: uint64(min(b, 1<<62)), Frames: c.frames})
	}
	topo := Infer(rated, g.cfg.BMin)
	for i := range topo.Edges {
		topo.Edges[i].Bytes = win[pairKey{topo.Edges[i].Src, topo.Edges[i].Dst}].bytes
	}
	sortEdges(topo.Edges)
	return topo
}

func archOrUnknown(a string) string {
	if a == "" {
		return ArchUnknown
	}
	return a
}

// normalised returns the pruned matrix (the topology's edges, by weight)
// scaled to sum 1.
func normalised(t Topology) map[pairKey]float64 {
	var total float64
	for _, e := range t.Edges {
		total += e.Weight
	}
	out := make(map[pairKey]float64, len(t.Edges))
	if total == 0 {
		return out
	}
	for _, e := range t.Edges {
		out[pairKey{e.Src, e.Dst}] = e.Weight / total
	}
	return out
}

// movedEdges is the share of traffic on the edges that only one of two
// normalised matrices has: ½ (Σ a[k] for k not in b + Σ b[k] for k not
// in a), in [0, 1], at most tvDistance(a, b).
func movedEdges(a, b map[pairKey]float64) float64 {
	var s float64
	for k, x := range a {
		if _, ok := b[k]; !ok {
			s += x
		}
	}
	for k, y := range b {
		if _, ok := a[k]; !ok {
			s += y
		}
	}
	return s / 2
}

// tvDistance is the total-variation distance ½ Σ |a − b| of two
// distributions over pairs, in [0, 1].
func tvDistance(a, b map[pairKey]float64) float64 {
	var s float64
	for k, x := range a {
		y := b[k]
		if x > y {
			s += x - y
		} else {
			s += y - x
		}
	}
	for k, y := range b {
		if _, ok := a[k]; !ok {
			s += y
		}
	}
	return s / 2
}

func (g *Aggregator) emitLocked(ev Event) {
	ev.Seq = g.nextSeq
	g.nextSeq++
	g.kinds[ev.Kind]++
	if len(g.events) >= g.cfg.History {
		copy(g.events, g.events[1:])
		g.events = g.events[:len(g.events)-1]
	}
	g.events = append(g.events, ev)
	if g.cfg.Log != nil {
		g.cfg.Log.Info("vttif", "event", ev.Kind, "seq", ev.Seq, "note", ev.Note)
	}
	for s := range g.subs {
		select {
		case s.ch <- ev:
		default:
			s.dropped++
			g.stats.DroppedEvents++
		}
	}
}

// Events returns the kept events with Seq > since, oldest first.
func (g *Aggregator) Events(since uint64) []Event {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := []Event{}
	for _, ev := range g.events {
		if ev.Seq > since {
			out = append(out, ev)
		}
	}
	return out
}

// Subscribe returns a live stream of events (buffered; a subscriber that
// falls behind misses events, counted in Stats().DroppedEvents, and never
// blocks Tick) and a cancel func that ends the stream and closes the
// channel. Cancel may be called more than once.
func (g *Aggregator) Subscribe() (<-chan Event, func()) {
	s := &subscriber{ch: make(chan Event, subscriberBuffer)}
	g.mu.Lock()
	g.subs[s] = struct{}{}
	g.mu.Unlock()
	var once sync.Once
	return s.ch, func() {
		once.Do(func() {
			g.mu.Lock()
			delete(g.subs, s)
			g.mu.Unlock()
			close(s.ch)
		})
	}
}

// Stats returns counters.
func (g *Aggregator) Stats() AggregatorStats {
	g.mu.Lock()
	defer g.mu.Unlock()
	s := g.stats
	s.Subscribers = len(g.subs)
	s.Events = maps.Clone(g.kinds)
	return s
}

// Note records an event from outside inference (e.g. an adaptation action)
// in the same history and live stream, so API clients see one timeline.
func (g *Aggregator) Note(kind, note string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.emitLocked(Event{At: g.cfg.Now(), Kind: kind, Note: note})
}
