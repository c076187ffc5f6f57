package infer

import (
	"math/rand"
	"sync"
	"testing"
	"time"
)

// aggClock is an injectable clock.
type aggClock struct {
	mu  sync.Mutex
	now time.Time
}

func newAggClock() *aggClock {
	return &aggClock{now: time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)}
}

func (c *aggClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *aggClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func newTestAggregator(c *aggClock) *Aggregator {
	return NewAggregator(GlobalConfig{Now: c.Now})
}

func findEntry(m Matrix, src, dst string) Entry {
	for _, e := range m.Entries {
		if e.Src == src && e.Dst == dst {
			return e
		}
	}
	return Entry{}
}

func TestAggregatorMergesHosts(t *testing.T) {
	c := newAggClock()
	g := newTestAggregator(c)
	a, b, x := "02:00:00:00:00:0a", "02:00:00:00:00:0b", "02:00:00:00:00:0c"
	g.Add("h1", 1, []Entry{{Src: a, Dst: b, Bytes: 100, Frames: 1}, {Src: a, Dst: x, Bytes: 10, Frames: 1}})
	g.Add("h2", 1, []Entry{{Src: b, Dst: a, Bytes: 200, Frames: 2}})
	c.Advance(time.Second)
	g.Add("h1", 2, []Entry{{Src: a, Dst: b, Bytes: 50, Frames: 1}})
	m := g.Matrix(time.Minute)
	if m.WindowS != 60 || len(m.Entries) != 3 {
		t.Fatalf("matrix %+v", m)
	}
	if e := findEntry(m, a, b); e.Bytes != 150 || e.Frames != 2 {
		t.Fatalf("a→b %+v", e)
	}
	if e := findEntry(m, b, a); e.Bytes != 200 || e.Frames != 2 {
		t.Fatalf("b→a %+v", e)
	}
	if m.Entries[0].Src != b {
		t.Fatalf("not sorted by bytes: %+v", m.Entries)
	}
	// Upper-case MACs merge with lower-case ones.
	g.Add("h1", 3, []Entry{{Src: "02:00:00:00:00:0A", Dst: "02:00:00:00:00:0B", Bytes: 1}})
	if e := findEntry(g.Matrix(0), a, b); e.Bytes != 151 {
		t.Fatalf("case: %+v", e)
	}
	// The last second only.
	if e := findEntry(g.Matrix(time.Second), a, b); e.Bytes != 51 {
		t.Fatalf("last 1s: %+v", e)
	}
}

func TestAggregatorDedupe(t *testing.T) {
	c := newAggClock()
	g := newTestAggregator(c)
	d := []Entry{{Src: "02:00:00:00:00:01", Dst: "02:00:00:00:00:02", Bytes: 1000, Frames: 1}}
	g.Add("h1", 7, d)
	g.Add("h1", 7, d) // resend
	c.Advance(time.Second)
	g.Add("h1", 7, d) // late resend
	g.Add("h2", 7, d) // another host, same seq: not a duplicate
	g.Add("h1", 8, d)
	if e := g.Matrix(0).Entries[0]; e.Bytes != 3000 {
		t.Fatalf("bytes %d, want 3000", e.Bytes)
	}
	if s := g.Stats(); s.Duplicates != 2 || s.Reports != 3 {
		t.Fatalf("stats %+v", s)
	}
}

func TestAggregatorSmoothing(t *testing.T) {
	c := newAggClock()
	g := newTestAggregator(c)
	a, b := "02:00:00:00:00:01", "02:00:00:00:00:02"
	for i := 0; i < 30; i++ {
		g.Add("h1", uint64(i), []Entry{{Src: a, Dst: b, Bytes: 100, Frames: 1}})
		c.Advance(time.Second)
	}
	c.Advance(-time.Second) // back to the second of the last report
	sm := g.Smoothed()
	if sm.WindowS != 10 || len(sm.Entries) != 1 || sm.Entries[0].Bytes != 1000 {
		t.Fatalf("smoothed %+v, want 1000 bytes over 10 s", sm)
	}
	if m := g.Matrix(time.Hour); m.Entries[0].Bytes != 3000 || m.WindowS != 3600 {
		t.Fatalf("hour %+v", m)
	}
	c.Advance(5 * time.Second)
	if sm := g.Smoothed(); sm.Entries[0].Bytes != 500 {
		t.Fatalf("5 s later: %+v", sm)
	}
	c.Advance(5 * time.Second)
	if sm := g.Smoothed(); len(sm.Entries) != 0 {
		t.Fatalf("10 s later: %+v", sm)
	}
	if m := g.Matrix(2 * time.Hour); m.Entries[0].Bytes != 3000 || m.WindowS != 3600 {
		t.Fatalf("capped at keep: %+v", m)
	}
}

// workload drives an aggregator like the appliance: VMs spread over
// hosts, each host reporting its VMs' outgoing pairs once a second (each
// host at its own offset), a Tick after every report and once a second.
type workload struct {
	t    *testing.T
	g    *Aggregator
	c    *aggClock
	r    *rand.Rand
	macs []string
	host map[string]string // VM MAC → host
	seq  map[string]uint64
}

func newWorkload(t *testing.T, g *Aggregator, c *aggClock, r *rand.Rand, macs []string, hosts int) *workload {
	w := &workload{t: t, g: g, c: c, r: r, macs: macs, host: map[string]string{}, seq: map[string]uint64{}}
	for i, m := range macs {
		w.host[m] = string(rune('A' + i%hosts))
	}
	return w
}

// run plays entries (per-second rates) for secs seconds, with noise, and
// returns the events emitted meanwhile.
func (w *workload) run(secs int, perSec func() []Entry) []Event {
	before := w.g.Events(0)
	var last uint64
	if len(before) > 0 {
		last = before[len(before)-1].Seq
	}
	for s := 0; s < secs; s++ {
		es := perSec()
		es = append(es, noise(w.r, w.macs, es, 0.05)...)
		byHost := map[string][]Entry{}
		for _, e := range es {
			h, ok := w.host[e.Src]
			if !ok {
				h = "A" // gateway traffic: the proxy's host
			}
			byHost[h] = append(byHost[h], e)
		}
		for _, h := range []string{"A", "B", "C"} {
			if len(byHost[h]) == 0 {
				continue
			}
			w.c.Advance(200 * time.Millisecond)
			w.seq[h]++
			w.g.Add(h, w.seq[h], byHost[h])
			if w.r.Intn(5) == 0 {
				w.g.Add(h, w.seq[h], byHost[h]) // a resend
			}
			w.g.Tick()
		}
		w.c.Advance(time.Second - time.Duration(len(byHost))*200*time.Millisecond)
		w.g.Tick()
	}
	return w.g.Events(last)
}

func TestAggregatorChangeRingToAll2All(t *testing.T) {
	c := newAggClock()
	g := newTestAggregator(c)
	r := rand.New(rand.NewSource(11))
	ring := ringPat(8).instantiate(r)
	// The same VMs, now all-to-all.
	a2a := instance{macs: ring.macs, dir: map[pairKey]bool{}}
	for _, x := range ring.macs {
		for _, y := range ring.macs {
			if x != y {
				a2a.dir[pairKey{x, y}] = true
			}
		}
	}
	w := newWorkload(t, g, c, r, ring.macs, 3)

	evs := w.run(30, func() []Entry { return ring.traffic(r, 1e6) })
	if len(evs) != 1 || evs[0].Kind != EventTopologyChange || evs[0].Topology.Archetype != ArchRing {
		t.Fatalf("ring phase: events %+v", evs)
	}
	if d := evs[0].At.Sub(c.Now().Add(-30 * time.Second)); d > 3*time.Second {
		t.Fatalf("ring declared %v after it started", d)
	}
	if topo := g.Topology(); topo.Archetype != ArchRing || len(topo.Edges) != 16 || !topo.ChangedAt.Equal(evs[0].At) {
		t.Fatalf("Topology() %+v", topo)
	}
	switchAt := c.Now()
	// All-to-all at a third of the ring's per-pair rate: the weights keep
	// drifting for a whole window after the structure is clear.
	evs = w.run(40, func() []Entry { return a2a.traffic(r, 3e5) })
	for _, e := range evs {
		t.Logf("event %d at +%v: %s %s", e.Seq, e.At.Sub(switchAt), e.Kind, e.Note)
	}
	if len(evs) != 1 {
		t.Fatalf("all2all phase: %d events, want exactly 1", len(evs))
	}
	ev := evs[0]
	after := ev.At.Sub(switchAt)
	if ev.Kind != EventTopologyChange || ev.Topology.Archetype != ArchAll2All || len(ev.Topology.Edges) != 56 {
		t.Fatalf("event %+v", ev)
	}
	if after < time.Second || after > g.Config().Window {
		t.Fatalf("declared %v after the switch, want within (1 s, window]", after)
	}
	t.Logf("all2all declared %v after the switch: %s", after, ev.Note)
	if topo := g.Topology(); topo.Archetype != ArchAll2All || !topo.ChangedAt.Equal(ev.At) {
		t.Fatalf("Topology() %+v", topo)
	}
}

// TestAggregatorRenamedUnderThreshold: ring → all-to-all where the ring's
// edges keep most of the bytes, so the matrix moves less than the
// threshold; the newly named archetype is declared anyway.
func TestAggregatorRenamedUnderThreshold(t *testing.T) {
	c := newAggClock()
	g := NewAggregator(GlobalConfig{Now: c.Now, Threshold: 0.6})
	r := rand.New(rand.NewSource(12))
	ring := ringPat(8).instantiate(r)
	others := instance{macs: ring.macs, dir: map[pairKey]bool{}}
	for _, x := range ring.macs {
		for _, y := range ring.macs {
			if k := (pairKey{x, y}); x != y && !ring.dir[k] {
				others.dir[k] = true
			}
		}
	}
	w := newWorkload(t, g, c, r, ring.macs, 3)
	if evs := w.run(20, func() []Entry { return ring.traffic(r, 1e6) }); len(evs) != 1 {
		t.Fatalf("ring phase: events %+v", evs)
	}
	// 16 ring edges at 1, 40 new ones at 0.3: distance 12/28 ≈ 0.43 < 0.6.
	evs := w.run(20, func() []Entry {
		return append(ring.traffic(r, 1e6), others.traffic(r, 3e5)...)
	})
	if len(evs) != 1 || evs[0].Topology == nil || evs[0].Topology.Archetype != ArchAll2All {
		t.Fatalf("all2all phase: events %+v, want one all2all change", evs)
	}
	t.Logf("declared: %s", evs[0].Note)
}

func TestAggregatorNoFlapping(t *testing.T) {
	c := newAggClock()
	g := newTestAggregator(c)
	r := rand.New(rand.NewSource(5))
	p := gridPat(ArchTorus3D, true, 3, 2, 3).instantiate(r)
	w := newWorkload(t, g, c, r, p.macs, 3)
	// One extra pair hovering around b_min, and bursts: the rate of the
	// whole pattern swings between 0.3× and 3×.
	hover := pairKey{p.macs[0], p.macs[len(p.macs)-1]}
	if p.dir[hover] {
		t.Fatal("hover pair is an edge")
	}
	evs := w.run(120, func() []Entry {
		scale := 0.3 + 2.7*r.Float64()
		es := p.traffic(r, 1e6*scale)
		es = append(es, Entry{Src: hover.src, Dst: hover.dst, Bytes: uint64(1e6 * scale * (0.06 + 0.08*r.Float64()))})
		return es
	})
	if len(evs) != 1 {
		for _, e := range evs {
			t.Logf("event %d: %s %s", e.Seq, e.Kind, e.Note)
		}
		t.Fatalf("%d events over a steady pattern, want 1", len(evs))
	}
	if a := evs[0].Topology.Archetype; a != ArchTorus3D {
		t.Fatalf("declared %q, want torus3d", a)
	}
}

func TestAggregatorQuiet(t *testing.T) {
	c := newAggClock()
	g := newTestAggregator(c)
	r := rand.New(rand.NewSource(2))
	p := busPat(4).instantiate(r)
	w := newWorkload(t, g, c, r, p.macs, 2)
	p.traffic(r, 1)
	evs := w.run(5, func() []Entry { return p.traffic(r, 1e6) })
	if len(evs) != 1 || evs[0].Topology.Archetype != ArchBus {
		t.Fatalf("events %+v", evs)
	}
	// Every pair that talked (pattern and noise) goes quiet.
	var pairs []Pair
	for _, e := range g.Smoothed().Entries {
		pairs = append(pairs, Pair{Src: parseMACs(e.Src), Dst: parseMACs(e.Dst)})
	}
	g.Quiet("A", pairs[:len(pairs)/2])
	g.Tick()
	if evs := g.Events(evs[0].Seq); len(evs) != 0 {
		t.Fatalf("quiet too early: %+v", evs)
	}
	g.Quiet("B", pairs[len(pairs)/2:])
	g.Tick()
	g.Tick()
	evs = g.Events(evs[0].Seq)
	if len(evs) != 1 || evs[0].Kind != EventQuiet || evs[0].Topology != nil {
		t.Fatalf("events %+v", evs)
	}
	if topo := g.Topology(); topo.Archetype != ArchBus {
		t.Fatalf("Topology() after quiet: %+v", topo)
	}
	if m := g.Matrix(time.Minute); len(m.Entries) == 0 {
		t.Fatal("quiet erased the history")
	}
	// The pattern resumes: declared afresh.
	evs = w.run(5, func() []Entry { return p.traffic(r, 1e6) })
	if len(evs) != 1 || evs[0].Kind != EventTopologyChange || evs[0].Topology.Archetype != ArchBus {
		t.Fatalf("resume: %+v", evs)
	}
	// Traffic stops without Quiet: quiet once the window has emptied.
	seq := evs[0].Seq
	for i := 0; i < 12; i++ {
		c.Advance(time.Second)
		g.Tick()
	}
	evs = g.Events(seq)
	if len(evs) != 1 || evs[0].Kind != EventQuiet {
		t.Fatalf("timeout quiet: %+v", evs)
	}
	if n := g.Stats().Events; n[EventTopologyChange] != 2 || n[EventQuiet] != 2 || len(n) != 2 {
		t.Fatalf("Stats().Events = %v, want 2 of each kind", n)
	}
}

// cycle produces two events: a declared ring, then quiet.
func cycle(g *Aggregator, c *aggClock, in instance, r *rand.Rand, seq *uint64) {
	var pairs []Pair
	for i := 0; i < 3; i++ {
		*seq++
		es := in.traffic(r, 1e6)
		g.Add("A", *seq, es)
		g.Tick()
		c.Advance(time.Second)
		g.Tick()
		if i == 0 {
			for _, e := range es {
				pairs = append(pairs, Pair{Src: parseMACs(e.Src), Dst: parseMACs(e.Dst)})
			}
		}
	}
	g.Quiet("A", pairs)
	g.Tick()
}

func parseMACs(s string) MAC {
	var m MAC
	for i := 0; i < 6; i++ {
		var b byte
		for _, ch := range s[3*i : 3*i+2] {
			b <<= 4
			if ch >= 'a' {
				b |= byte(ch - 'a' + 10)
			} else {
				b |= byte(ch - '0')
			}
		}
		m[i] = b
	}
	return m
}

func TestAggregatorSubscribe(t *testing.T) {
	c := newAggClock()
	g := NewAggregator(GlobalConfig{Now: c.Now, History: 10})
	r := rand.New(rand.NewSource(4))
	in := ringPat(5).instantiate(r)
	fast, cancelFast := g.Subscribe()
	slow, cancelSlow := g.Subscribe()
	defer cancelSlow()
	var got []Event
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ev := range fast {
			got = append(got, ev)
		}
	}()
	var seq uint64
	const cycles = 50 // 100 events, more than a subscriber's buffer
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		for i := 0; i < cycles; i++ {
			cycle(g, c, in, r, &seq)
		}
	}()
	select {
	case <-finished:
	case <-time.After(20 * time.Second):
		t.Fatal("Tick blocked on a slow subscriber")
	}
	// Let the fast reader drain, then end its stream.
	deadline := time.Now().Add(5 * time.Second)
	for len(fast) > 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	cancelFast()
	cancelFast() // idempotent
	<-done
	if len(got) != 2*cycles {
		t.Fatalf("fast subscriber got %d events, want %d", len(got), 2*cycles)
	}
	for i, ev := range got {
		want := EventTopologyChange
		if i%2 == 1 {
			want = EventQuiet
		}
		if ev.Seq != uint64(i+1) || ev.Kind != want {
			t.Fatalf("event %d: %+v", i, ev)
		}
	}
	if n := len(slow); n != subscriberBuffer {
		t.Fatalf("slow subscriber holds %d, want %d", n, subscriberBuffer)
	}
	if first := <-slow; first.Seq != 1 {
		t.Fatalf("slow subscriber's first event %d", first.Seq)
	}
	s := g.Stats()
	if s.DroppedEvents != 2*cycles-subscriberBuffer || s.Subscribers != 1 {
		t.Fatalf("stats %+v", s)
	}
	// History keeps the last 10.
	h := g.Events(0)
	if len(h) != 10 || h[0].Seq != 2*cycles-9 || h[9].Seq != 2*cycles {
		t.Fatalf("history %d events, first %d", len(h), h[0].Seq)
	}
	if h := g.Events(2*cycles - 3); len(h) != 3 {
		t.Fatalf("since: %d", len(h))
	}
}

func TestAggregatorConcurrent(t *testing.T) {
	g := NewAggregator(GlobalConfig{})
	r := rand.New(rand.NewSource(9))
	in := hypercubePat(3).instantiate(r)
	var traffic [][]Entry
	for i := 0; i < 50; i++ {
		traffic = append(traffic, in.traffic(r, 1e6))
	}
	ch, cancel := g.Subscribe()
	defer cancel()
	go func() {
		for range ch {
		}
	}()
	var wg sync.WaitGroup
	for h := 0; h < 4; h++ {
		wg.Add(1)
		go func(h int) {
			defer wg.Done()
			for i, es := range traffic {
				g.Add(string(rune('A'+h)), uint64(i), es)
				g.Tick()
				g.Matrix(time.Minute)
				g.Smoothed()
				g.Topology()
				g.Events(0)
			}
			g.Quiet(string(rune('A'+h)), []Pair{{}})
		}(h)
	}
	wg.Wait()
	if m := g.Matrix(0); len(m.Entries) != 24 {
		t.Fatalf("%d entries", len(m.Entries))
	}
}

func BenchmarkTick(b *testing.B) {
	c := newAggClock()
	g := NewAggregator(GlobalConfig{Now: c.Now})
	r := rand.New(rand.NewSource(1))
	in := all2allPat(64).instantiate(r)
	for i := 0; i < 10; i++ {
		g.Add("A", uint64(i), in.traffic(r, 1e6))
		c.Advance(time.Second)
	}
	g.Tick()
	c.Advance(time.Second)
	g.Tick() // settled: all2all declared; the loop measures steady ticks
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		g.Tick()
	}
	b.StopTimer()
	if g.Topology().Archetype != ArchAll2All {
		b.Fatal(g.Topology().Archetype)
	}
}

// TestAggregatorWindowDifferential checks the running window sum against
// a plain sum of the per-second buckets (Matrix over the window) on
// random reports, gaps longer than the window included.
func TestAggregatorWindowDifferential(t *testing.T) {
	c := newAggClock()
	g := newTestAggregator(c)
	r := rand.New(rand.NewSource(8))
	macs := randMACs(r, 5)
	for step := 0; step < 3000; step++ {
		switch x := r.Intn(100); {
		case x < 60:
			var es []Entry
			for i := r.Intn(4); i >= 0; i-- {
				es = append(es, Entry{Src: macs[r.Intn(5)], Dst: macs[r.Intn(5)], Bytes: uint64(r.Intn(1000)), Frames: uint64(r.Intn(3))})
			}
			g.Add("h", uint64(step), es)
		case x < 90:
			c.Advance(time.Duration(r.Intn(1500)) * time.Millisecond)
		case x < 93:
			c.Advance(time.Duration(r.Intn(30)) * time.Second)
		default:
			g.Tick()
		}
		if step%7 == 0 {
			want, got := g.Matrix(g.Config().Window), g.Smoothed()
			if len(want.Entries) != len(got.Entries) {
				t.Fatalf("step %d: %d entries, want %d", step, len(got.Entries), len(want.Entries))
			}
			for i := range want.Entries {
				if want.Entries[i] != got.Entries[i] {
					t.Fatalf("step %d: %+v, want %+v", step, got.Entries[i], want.Entries[i])
				}
			}
		}
	}
}

// TestAggregatorRetick: Add says when a report brings a pair new to the
// window, and Tick asks to be called again when a new structure is
// waiting out Settle, then declares it on that call.
func TestAggregatorRetick(t *testing.T) {
	c := newAggClock()
	g := newTestAggregator(c)
	r := rand.New(rand.NewSource(3))
	ring := ringPat(6).instantiate(r)
	es := ring.traffic(r, 1e5)
	if !g.Add("A", 1, es) {
		t.Fatal("first report of a pattern not fresh")
	}
	if g.Add("A", 2, es) {
		t.Fatal("the same pairs again reported fresh")
	}
	again := g.Tick()
	if again <= 0 || again > g.Config().Settle {
		t.Fatalf("Tick with a new structure asked again in %v, want (0, Settle]", again)
	}
	c.Advance(again)
	if again := g.Tick(); again != 0 {
		t.Fatalf("Tick after Settle asked again in %v, want 0", again)
	}
	if tp := g.Topology(); tp.Archetype != ArchRing {
		t.Fatalf("declared %q, want ring", tp.Archetype)
	}
	g.Quiet("A", []Pair{{Src: parseMACs(es[0].Src), Dst: parseMACs(es[0].Dst)}})
	if !g.Add("A", 3, es[:1]) {
		t.Fatal("a pair back from quiet not fresh")
	}
}

// TestAggregatorSpanRate: a pair that began 50 ms before its first report
// weighs by the rate its span gives, not as if its bytes took a whole
// report interval; without spans it would fall under b_min.
func TestAggregatorSpanRate(t *testing.T) {
	for _, withSpan := range []bool{true, false} {
		c := newAggClock()
		g := newTestAggregator(c)
		const rate = 1e6 // bytes/s, both pairs
		steady := Entry{Src: "02:00:00:00:00:01", Dst: "02:00:00:00:00:02"}
		late := Entry{Src: "02:00:00:00:00:03", Dst: "02:00:00:00:00:04"}
		var seq uint64
		for range 5 {
			c.Advance(time.Second)
			seq++
			e := steady
			e.Bytes, e.Frames, e.SpanMS = rate, 700, 1000
			g.Add("A", seq, []Entry{e})
		}
		c.Advance(500 * time.Millisecond)
		e := late
		e.Bytes, e.Frames = rate/20, 35
		if withSpan {
			e.SpanMS = 50
		}
		seq++
		g.Add("B", seq, []Entry{e})
		tp := g.inferLocked(c.Now(), g.windowLocked(c.Now()))
		found := false
		for _, ed := range tp.Edges {
			found = found || ed.Src == late.Src && ed.Dst == late.Dst
		}
		if found != withSpan {
			t.Errorf("with span %v: late pair an edge: %v, want %v (edges %+v)", withSpan, found, withSpan, tp.Edges)
		}
	}
}
