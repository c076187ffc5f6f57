package infer

// Local accounting (the host half of VTTIF): per (src MAC, dst MAC) pair,
// bytes and frames of VM traffic, a history that answers "the matrix over
// the last n seconds" for n up to History, and a rate trigger that decides
// when the host should push its deltas to the proxy.
//
// History layout and its trade-off. A per-pair ring of 3600 one-second
// buckets costs 3600×16 bytes = 56 KiB per pair, whether the pair talks or
// not: 118 MB for 2048 pairs. Instead the Accountant keeps two global rings
// of sparse slots:
//
//   - 60 second-slots, each holding one 16-byte cell per pair that moved
//     traffic in that second;
//   - ceil(History/1 min)+1 minute-slots, each holding one cell per pair
//     that moved traffic in that minute.
//
// Memory is therefore proportional to the pairs that actually talk (a pair
// silent for an hour costs nothing in the rings and is evicted from the
// table), and bounded by 60+61 cells per pair for an hour: about 1.9 KiB per
// continuously talking pair instead of 56 KiB. The price is resolution:
// Matrix is exact to the second for windows up to a minute; for longer
// windows the current minute is exact to the second, whole minutes are
// exact, and the oldest, partly covered minute is pro-rated (its bytes and
// frames scaled by the share of its seconds inside the window).
//
// Hot path. Observe aggregates its batch into a fixed array on its own
// stack (a batch of 64 frames usually holds a handful of pairs), then takes
// the Accountant's lock once per batch, not once per frame (STYLE lessons
// 10 and 11), and appends or adds to cells whose capacity is reused, so the
// steady state allocates nothing.

import (
	"encoding/binary"
	"math"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults for AccountConfig's zero fields.
const (
	DefaultByteThreshold  = 10 << 10
	DefaultTimeBound      = time.Second
	DefaultTMax           = 250 * time.Millisecond
	DefaultTWait          = 5 * time.Second
	DefaultAccountHistory = time.Hour
	DefaultMaxPairs       = 65536
)

const (
	secSlots   = 60 // second-resolution ring length (one minute)
	batchPairs = 64 // distinct pairs aggregated per lock acquisition
	etherIPv4  = 0x0800
	etherIPv6  = 0x86dd
	etherVLAN  = 0x8100
	etherQinQ  = 0x88a8
)

// AccountConfig configures an Accountant. Zero fields take the defaults.
type AccountConfig struct {
	// ByteThreshold: a pair is "hot" when it moves at least this many
	// bytes within one TimeBound window (default 10 KiB). Lower catches
	// light applications sooner but lets background chatter trigger pushes.
	ByteThreshold uint64
	// TimeBound is the rate window of the trigger (default 1 s).
	TimeBound time.Duration
	// TMax: after this long hot without a cold window in between, the pair
	// is active and reported (default 250 ms; the research system used
	// about a second). Shorter reacts faster; longer ignores short bursts
	// (a burst that outlives TMax costs a few small reports, no more).
	TMax time.Duration
	// TWait: after this long without a hot window, an active pair is
	// reported quiet (default 5 s). Shorter forgets finished phases sooner
	// but flaps on BSP applications whose compute phase is long.
	TWait time.Duration
	// History is how far back Matrix answers (default 1 h); memory grows
	// with it by one minute-slot per minute.
	History time.Duration
	// Filter says which EtherTypes count (the inner one for 802.1Q/802.1ad
	// tagged frames). Default: IPv4 and IPv6 only (ARP and the rest are
	// filtered).
	Filter func(etherType uint16) bool
	// MaxPairs bounds the tracked pairs (default 65536); frames of new
	// pairs beyond it are dropped from accounting and counted.
	MaxPairs int
	// Now is the clock (default time.Now); tests inject one.
	Now func() time.Time
}

// Pair states of the rate trigger.
const (
	stCold      uint8 = iota // below threshold, or never reported
	stTriggered              // hot since hotSince, not yet for TMax
	stActive                 // hot for TMax: reported until TWait quiet
)

// cell is one pair's traffic in one slot.
type cell struct {
	pair   uint32 // index into Accountant.pairs
	frames uint32
	bytes  uint64
}

// slot is one second or one minute of history: the cells of the pairs
// that moved traffic in it. stamp is the second (or minute) number; a slot
// whose stamp is not the one a reader wants is stale and ignored.
type slot struct {
	stamp int64
	cells []cell
}

// pairState is one tracked pair.
type pairState struct {
	key                Pair
	live               bool
	state              uint8
	secPos, minPos     int32 // position of the pair's cell in the current slots
	secStamp, minStamp int64 // the slots those positions refer to
	lastSec            int64 // last second with traffic (eviction)
	winStart, winBytes int64 // trigger window start (ns) and bytes in it
	hotSince, lastHot  int64 // ns
	pendBytes          uint64
	pendFrames         uint64
	pendSince          int64 // ns of the first pending frame
}

// Accountant counts VM traffic per directed MAC pair. Its methods are safe
// for concurrent use. The appliance plugs it into the switch with a
// three-line adapter (infer does not import bridge):
//
//	type observer struct{ a *infer.Accountant }
//
//	func (o observer) ObserveBatch(_ string, r bridge.Role, f [][]byte) {
//		o.a.Observe(r == bridge.RoleLocal, f)
//	}
type Accountant struct {
	thr      int64
	tb       int64 // ns
	tmax     int64 // ns
	twait    int64 // ns
	histS    int64 // History in whole seconds
	maxPairs int
	filter   func(uint16) bool
	now      func() time.Time

	mu       sync.Mutex
	lastNS   int64 // clock clamp: time never runs backwards for us
	pairs    []pairState
	index    map[Pair]uint32
	free     []uint32
	nlive    int
	secRing  [secSlots]slot
	minRing  []slot
	lastFull int64 // second of the last sweep forced by a full table
	// due is the earliest time (ns) a triggered pair may turn active, 0 if
	// none is pending: Due answers from it without a sweep of the pairs.
	due int64

	// counters, under mu
	framesCounted, bytesCounted uint64
	framesFiltered, framesRunt  uint64
	framesGroup                 uint64
	framesTableFull             uint64
	pairsDropped, pairsEvicted  uint64
	reports                     uint64

	framesNonLocal atomic.Uint64 // outside mu: link ports never lock
}

// NewAccountant returns an Accountant with cfg's zero fields defaulted.
func NewAccountant(cfg AccountConfig) *Accountant {
	if cfg.ByteThreshold == 0 {
		cfg.ByteThreshold = DefaultByteThreshold
	}
	if cfg.ByteThreshold > math.MaxInt64 {
		cfg.ByteThreshold = math.MaxInt64
	}
	if cfg.TimeBound <= 0 {
		cfg.TimeBound = DefaultTimeBound
	}
	if cfg.TMax <= 0 {
		cfg.TMax = DefaultTMax
	}
	if cfg.TWait <= 0 {
		cfg.TWait = DefaultTWait
	}
	if cfg.History <= 0 {
		cfg.History = DefaultAccountHistory
	}
	if cfg.MaxPairs <= 0 {
		cfg.MaxPairs = DefaultMaxPairs
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	histS := int64((cfg.History + time.Second - 1) / time.Second)
	return &Accountant{
		thr:      int64(cfg.ByteThreshold),
		tb:       int64(cfg.TimeBound),
		tmax:     int64(cfg.TMax),
		twait:    int64(cfg.TWait),
		histS:    histS,
		maxPairs: cfg.MaxPairs,
		filter:   cfg.Filter,
		now:      cfg.Now,
		index:    make(map[Pair]uint32),
		minRing:  make([]slot, (histS+59)/60+1),
		lastFull: math.MinInt64,
	}
}

// batchCell is one pair's share of a batch, aggregated before locking.
type batchCell struct {
	key    Pair
	frames uint32
	bytes  uint64
}

// Observe accounts a batch of full Ethernet frames received on one port.
// local says the port faces VMs; frames from links are ignored, so every
// frame is counted once in the whole network, at its source's host. The
// frames are not kept. Observe takes the lock once per batch (or once per
// 64 distinct pairs) and allocates nothing in the steady state.
func (a *Accountant) Observe(local bool, frames [][]byte) {
	if len(frames) == 0 {
		return
	}
	if !local {
		a.framesNonLocal.Add(uint64(len(frames))) // links: no lock
		return
	}
	var (
		agg                   [batchPairs]batchCell
		n                     int
		filtered, runt, group uint64
	)
	for _, f := range frames {
		if len(f) < 14 {
			runt++
			continue
		}
		et := binary.BigEndian.Uint16(f[12:14])
		if et == etherVLAN || et == etherQinQ {
			if len(f) < 18 {
				runt++
				continue
			}
			et = binary.BigEndian.Uint16(f[16:18])
			if et == etherVLAN && len(f) >= 22 { // QinQ inner tag
				et = binary.BigEndian.Uint16(f[20:22])
			}
		}
		if a.filter != nil {
			if !a.filter(et) {
				filtered++
				continue
			}
		} else if et != etherIPv4 && et != etherIPv6 {
			filtered++
			continue
		}
		if f[0]&1 != 0 { // broadcast or multicast: not a VM pair
			group++
			continue
		}
		var k Pair
		copy(k.Dst[:], f[0:6])
		copy(k.Src[:], f[6:12])
		i := 0
		for i < n && agg[i].key != k {
			i++
		}
		if i == n {
			if n == batchPairs {
				a.apply(agg[:n], 0, 0, 0)
				n, i = 0, 0
			}
			agg[i] = batchCell{key: k}
			n++
		}
		agg[i].frames++
		agg[i].bytes += uint64(len(f))
	}
	a.apply(agg[:n], filtered, runt, group)
}

// apply adds a batch's aggregate under the lock.
func (a *Accountant) apply(agg []batchCell, filtered, runt, group uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.framesFiltered += filtered
	a.framesRunt += runt
	a.framesGroup += group
	if len(agg) == 0 {
		return
	}
	now := a.clock()
	sec := floorDiv(now, int64(time.Second))
	mn := floorDiv(sec, 60)
	ss := &a.secRing[mod(sec, secSlots)]
	if ss.stamp != sec {
		ss.reset(sec)
	}
	ms := &a.minRing[mod(mn, int64(len(a.minRing)))]
	if ms.stamp != mn {
		ms.reset(mn)
	}
	for _, c := range agg {
		pi, ok := a.index[c.key]
		if !ok {
			var full bool
			pi, full = a.newPair(c.key, now, sec)
			if full {
				a.pairsDropped++
				a.framesTableFull += uint64(c.frames)
				continue
			}
		}
		p := &a.pairs[pi]
		a.framesCounted += uint64(c.frames)
		a.bytesCounted += c.bytes
		p.lastSec = sec
		if p.pendBytes == 0 && p.pendFrames == 0 {
			p.pendSince = now
		}
		p.pendBytes += c.bytes
		p.pendFrames += uint64(c.frames)
		if p.secStamp != sec {
			p.secStamp, p.secPos = sec, int32(len(ss.cells))
			ss.cells = append(ss.cells, cell{pair: pi})
		}
		sc := &ss.cells[p.secPos]
		sc.frames += c.frames
		sc.bytes += c.bytes
		if p.minStamp != mn {
			p.minStamp, p.minPos = mn, int32(len(ms.cells))
			ms.cells = append(ms.cells, cell{pair: pi})
		}
		mc := &ms.cells[p.minPos]
		mc.frames += c.frames
		mc.bytes += c.bytes
		// rate trigger
		a.roll(p, now)
		p.winBytes += int64(min64(c.bytes, math.MaxInt64/2))
		if p.winBytes >= a.thr {
			p.lastHot = now
			switch p.state {
			case stCold:
				p.state, p.hotSince = stTriggered, now
				a.noteDue(now + a.tmax)
			case stTriggered: // hot again: it may turn active at the next Report
				a.noteDue(max(p.hotSince+a.tmax, now))
			}
		}
	}
}

// newPair adds key to the table; full reports that MaxPairs is reached
// even after evicting long-silent pairs. Called with mu held.
func (a *Accountant) newPair(key Pair, now, sec int64) (pi uint32, full bool) {
	if a.nlive >= a.maxPairs && a.lastFull != sec {
		a.lastFull = sec // sweep at most once a second on the hot path
		a.evict(sec)
	}
	if a.nlive >= a.maxPairs {
		return 0, true
	}
	if n := len(a.free); n > 0 {
		pi = a.free[n-1]
		a.free = a.free[:n-1]
	} else {
		a.pairs = append(a.pairs, pairState{})
		pi = uint32(len(a.pairs) - 1)
	}
	a.pairs[pi] = pairState{
		key: key, live: true,
		secStamp: math.MinInt64, minStamp: math.MinInt64,
		winStart: now,
	}
	a.index[key] = pi
	a.nlive++
	return pi, false
}

// evict forgets cold pairs silent for longer than History plus the
// minute ring's slack, so no live slot can refer to them any more.
func (a *Accountant) evict(sec int64) {
	limit := sec - a.histS - 2*60
	for i := range a.pairs {
		p := &a.pairs[i]
		if p.live && p.state == stCold && p.lastSec < limit {
			delete(a.index, p.key)
			*p = pairState{}
			a.free = append(a.free, uint32(i))
			a.nlive--
			a.pairsEvicted++
		}
	}
}

// roll advances p's trigger window to now; a completed window below the
// threshold ends a trigger that has not yet become active.
func (a *Accountant) roll(p *pairState, now int64) {
	d := now - p.winStart
	if d < a.tb {
		return
	}
	k := d / a.tb
	if (p.winBytes < a.thr || k >= 2) && p.state == stTriggered {
		p.state = stCold
	}
	p.winStart += k * a.tb
	p.winBytes = 0
}

// clock returns now in ns, never earlier than a previous call. mu held.
func (a *Accountant) clock() int64 {
	t := a.now().UnixNano()
	if t < a.lastNS {
		t = a.lastNS
	}
	a.lastNS = t
	return t
}

func (s *slot) reset(stamp int64) {
	// Give back capacity left by a past burst, so memory follows the
	// pairs that talk now (allocates only when traffic shrinks).
	if c := cap(s.cells); c > 256 && len(s.cells) < c/4 {
		s.cells = make([]cell, 0, c/2)
	}
	s.stamp = stamp
	s.cells = s.cells[:0]
}

// Matrix sums the traffic of the last `last` (rounded up to whole seconds,
// at least 1 s, capped at History; last <= 0 means History). Windows up to
// a minute are exact to the second; longer ones pro-rate the oldest, partly
// covered minute (see the file comment).
func (a *Accountant) Matrix(last time.Duration) Matrix {
	w := a.histS
	if last > 0 {
		w = int64((last + time.Second - 1) / time.Second)
		if w > a.histS {
			w = a.histS
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	sec := floorDiv(a.clock(), int64(time.Second))
	sums := make([]struct{ bytes, frames uint64 }, len(a.pairs))
	addSec := func(from, to int64) { // seconds [from, to]
		for s := from; s <= to; s++ {
			sl := &a.secRing[mod(s, secSlots)]
			if sl.stamp != s {
				continue
			}
			for _, c := range sl.cells {
				sums[c.pair].bytes += c.bytes
				sums[c.pair].frames += uint64(c.frames)
			}
		}
	}
	start := sec - w + 1
	if w <= secSlots {
		addSec(start, sec)
	} else {
		mn := floorDiv(sec, 60)
		addSec(mn*60, sec)
		for m := mn - 1; m*60+59 >= start; m-- {
			sl := &a.minRing[mod(m, int64(len(a.minRing)))]
			if sl.stamp != m {
				continue
			}
			covered := m*60 + 59 - max(m*60, start) + 1
			for _, c := range sl.cells {
				b, f := c.bytes, uint64(c.frames)
				if covered < 60 {
					b = mulDiv(b, uint64(covered), 60)
					f = mulDiv(f, uint64(covered), 60)
				}
				sums[c.pair].bytes += b
				sums[c.pair].frames += f
			}
		}
	}
	m := Matrix{WindowS: int(w), Entries: []Entry{}}
	for i, s := range sums {
		if s.bytes == 0 && s.frames == 0 || !a.pairs[i].live {
			continue
		}
		k := a.pairs[i].key
		m.Entries = append(m.Entries, Entry{Src: k.Src.String(), Dst: k.Dst.String(), Bytes: s.bytes, Frames: s.frames})
	}
	sortEntries(m.Entries)
	return m
}

// Report returns what to push to the proxy: per-pair byte/frame deltas
// since the previous Report call, for pairs that are active (hot for TMax)
// or that went quiet in this call (no hot window for TWait), and the pairs
// that went quiet. Pairs with nothing new are left out of deltas. active
// says some pair is still active after this call; the caller pushes while
// active or quiet is non-empty (about once a second). Every call starts a
// new delta interval for every pair, reported or not, except a triggered
// one: its first delta, when it turns active, covers its traffic since the
// trigger. Each delta says in SpanMS how long its traffic took.
func (a *Accountant) Report() (deltas []Entry, quiet []Pair, active bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.reports++
	now := a.clock()
	a.due = 0
	for i := range a.pairs {
		p := &a.pairs[i]
		if !p.live {
			continue
		}
		a.roll(p, now)
		emit := false
		switch p.state {
		case stTriggered:
			// Sustained: hot for TMax with no cold window (roll), and
			// still hot now (a hot window within the last TimeBound).
			if now-p.hotSince >= a.tmax && now-p.lastHot < a.tb {
				p.state = stActive
				emit = true
			} else if d := p.hotSince + a.tmax; d > now {
				a.noteDue(d)
			}
		case stActive:
			emit = true
			if now-p.lastHot >= a.twait {
				p.state = stCold
				quiet = append(quiet, p.key)
			}
		}
		if p.state == stActive {
			active = true
		}
		if emit && (p.pendBytes != 0 || p.pendFrames != 0) {
			deltas = append(deltas, Entry{Src: p.key.Src.String(), Dst: p.key.Dst.String(), Bytes: p.pendBytes,
				Frames: p.pendFrames, SpanMS: max(1, (now-p.pendSince)/int64(time.Millisecond))})
		}
		if p.state != stTriggered { // a triggered pair's first report carries its traffic since the trigger
			p.pendBytes, p.pendFrames = 0, 0
		}
	}
	a.evict(floorDiv(now, int64(time.Second)))
	sortEntries(deltas)
	sort.Slice(quiet, func(i, j int) bool { return pairLess(quiet[i], quiet[j]) })
	return deltas, quiet, active
}

// Due says whether a Report now may carry news the proxy has not had: a
// pair that has been hot for TMax and turns active. The host polls it
// often (it costs a lock and a comparison) and reports at once instead of
// at its next periodic push, so a new pattern reaches the proxy about TMax
// after it starts. It may say yes once in vain, for a pair that went cold
// again.
func (a *Accountant) Due() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.due != 0 && a.clock() >= a.due
}

// noteDue lowers due to t. mu held.
func (a *Accountant) noteDue(t int64) {
	if a.due == 0 || t < a.due {
		a.due = t
	}
}

// Stats returns counters: frames and bytes counted, frames filtered (by
// EtherType), runt, group (broadcast/multicast destination), non-local,
// table-full; pairs tracked, active, dropped (new pair refused, table full),
// evicted; history cells held; Report calls.
func (a *Accountant) Stats() map[string]uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	var activeN, cells uint64
	for i := range a.pairs {
		if a.pairs[i].live && a.pairs[i].state == stActive {
			activeN++
		}
	}
	for i := range a.secRing {
		cells += uint64(len(a.secRing[i].cells))
	}
	for i := range a.minRing {
		cells += uint64(len(a.minRing[i].cells))
	}
	return map[string]uint64{
		"frames_counted":    a.framesCounted,
		"bytes_counted":     a.bytesCounted,
		"frames_filtered":   a.framesFiltered,
		"frames_runt":       a.framesRunt,
		"frames_group":      a.framesGroup,
		"frames_nonlocal":   a.framesNonLocal.Load(),
		"frames_table_full": a.framesTableFull,
		"pairs":             uint64(a.nlive),
		"pairs_active":      activeN,
		"pairs_dropped":     a.pairsDropped,
		"pairs_evicted":     a.pairsEvicted,
		"history_cells":     cells,
		"reports":           a.reports,
	}
}

func sortEntries(es []Entry) {
	sort.Slice(es, func(i, j int) bool {
		if es[i].Bytes != es[j].Bytes {
			return es[i].Bytes > es[j].Bytes
		}
		if es[i].Src != es[j].Src {
			return es[i].Src < es[j].Src
		}
		return es[i].Dst < es[j].Dst
	})
}

func pairLess(x, y Pair) bool {
	if x.Src != y.Src {
		return string(x.Src[:]) < string(y.Src[:])
	}
	return string(x.Dst[:]) < string(y.Dst[:])
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && (a < 0) != (b < 0) {
		q--
	}
	return q
}

func mod(a, b int64) int64 {
	m := a % b
	if m < 0 {
		m += b
	}
	return m
}

func min64(a, b uint64) uint64 {
	if a < b {
		return a
	}
	return b
}

// mulDiv returns v*num/den without overflow for num <= den.
func mulDiv(v, num, den uint64) uint64 {
	return v/den*num + v%den*num/den
}
