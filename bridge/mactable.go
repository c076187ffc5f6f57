package bridge

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// MAC table sizing and ageing. Package variables so tests can shrink them.
var (
	// DefaultMaxMACs bounds the table: a VM that floods new source addresses
	// evicts old entries (counted) instead of growing memory.
	DefaultMaxMACs = 8192
	// MACAge is how long a learned entry lives without traffic from it.
	MACAge = 5 * time.Minute
)

// origin says how a MAC table entry came to be.
type origin uint8

const (
	originLearned   origin = iota // seen as a source address on the port
	originAnnounced               // the far end of a link hosts the MAC: its fast-path peer said so, or (at the proxy) its host reported it
)

type macEntry struct {
	port   *portState
	origin origin
	seen   atomic.Int64               // unix nanoseconds of the last frame from this MAC
	ip     atomic.Pointer[netip.Addr] // IPv4, from ARP
	ip6    atomic.Pointer[netip.Addr] // IPv6, from NDP
}

// macTable maps MACs to ports. Lookups take a read lock; the write lock is
// taken only when an address is new or moves, which is rare after warm-up.
type macTable struct {
	max     int
	mu      sync.RWMutex
	entries map[MAC]*macEntry
	evicted atomic.Uint64
	moves   atomic.Uint64
	// onNewLocal is Config.OnNewLocal.
	onNewLocal func()
}

func newMACTable(max int) *macTable {
	if max <= 0 {
		max = DefaultMaxMACs
	}
	return &macTable{max: max, entries: make(map[MAC]*macEntry)}
}

// lookup returns the live port for mac, or nil.
func (t *macTable) lookup(mac MAC, now int64) *portState {
	t.mu.RLock()
	e := t.entries[mac]
	t.mu.RUnlock()
	if e == nil || e.port.removed.Load() {
		return nil
	}
	if e.origin == originLearned && now-e.seen.Load() > int64(MACAge) {
		return nil
	}
	return e.port
}

// learn records that src was seen on p. Learning from a link never
// overrides an announced address (the far end said where the VM is);
// learning from a VM port overrides everything. Nothing is learned on a
// fast-path link: its entries come from the peer's announcements only. A
// frame on a fast link may have been relayed there (a planned path can
// cross several links), and learning its source would point the VM at a
// host that does not have it, a black hole once that path changes.
func (t *macTable) learn(src MAC, p *portState, now int64) (looped bool) {
	t.mu.RLock()
	e := t.entries[src]
	t.mu.RUnlock()
	if e != nil && e.port == p {
		if e.seen.Load() < now-int64(time.Second) { // keep the cache line quiet
			e.seen.Store(now)
		}
		return false
	}
	if e != nil && p.role != RoleLocal && !e.port.removed.Load() {
		if e.origin == originAnnounced {
			return false
		}
		// A frame from a VM that sent here a moment ago, coming back in on
		// a link, went round a loop (stale entries after a migration can
		// make one of a fast path and the star): learning it would point
		// the VM's own address away from it and keep the loop going.
		if e.port.role == RoleLocal && now-e.seen.Load() < int64(localHold) {
			return true
		}
	}
	if p.role == RoleFast {
		return false
	}
	t.set(src, p, originLearned, now)
	if p.role == RoleLocal && t.onNewLocal != nil {
		t.onNewLocal()
	}
	return false
}

// localHold is how long after a VM's last frame on a local port its
// address does not move to a link (seen is refreshed at most once a
// second, so the hold is 1-2 s of silence). A VM that really moved away
// has left its port (which forgets its addresses at once) or falls silent
// there.
const localHold = 2 * time.Second

func (t *macTable) set(mac MAC, p *portState, o origin, now int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	old := t.entries[mac]
	if old != nil {
		if old.port == p && old.origin == o {
			old.seen.Store(now)
			return
		}
		t.moves.Add(1)
	} else if len(t.entries) >= t.max {
		t.evictLocked(now)
	}
	e := &macEntry{port: p, origin: o}
	e.seen.Store(now)
	if old != nil {
		e.ip.Store(old.ip.Load())
	}
	t.entries[mac] = e
}

// evictLocked drops one entry: the oldest of a few sampled ones (map
// iteration order is random), which is O(1) per insertion even under a flood
// of new addresses.
func (t *macTable) evictLocked(now int64) {
	var victim MAC
	oldest := now + 1
	n := 0
	for m, e := range t.entries {
		if s := e.seen.Load(); s < oldest || e.port.removed.Load() {
			victim, oldest = m, s
		}
		if n++; n == 8 {
			break
		}
	}
	delete(t.entries, victim)
	t.evicted.Add(1)
}

// announce pins macs to link port p, replacing what p announced before.
func (t *macTable) announce(p *portState, macs []MAC, now int64) {
	want := make(map[MAC]bool, len(macs))
	for _, m := range macs {
		want[m] = true
	}
	t.mu.Lock()
	for m, e := range t.entries {
		if e.port == p && e.origin == originAnnounced && !want[m] {
			delete(t.entries, m)
		}
	}
	t.mu.Unlock()
	for _, m := range macs {
		if m.IsMulticast() || m.IsZero() {
			continue
		}
		t.mu.RLock()
		e := t.entries[m]
		t.mu.RUnlock()
		if e != nil && e.port.role == RoleLocal && !e.port.removed.Load() {
			continue // it is here; the peer is out of date
		}
		t.set(m, p, originAnnounced, now)
	}
}

// flushPort forgets every entry on p (the port is going away).
func (t *macTable) flushPort(p *portState) {
	t.mu.Lock()
	for m, e := range t.entries {
		if e.port == p {
			delete(t.entries, m)
		}
	}
	t.mu.Unlock()
}

func (t *macTable) setIP(mac MAC, ip netip.Addr) {
	t.mu.RLock()
	e := t.entries[mac]
	t.mu.RUnlock()
	if e != nil {
		p := &e.ip
		if ip.Is6() {
			p = &e.ip6
		}
		if old := p.Load(); old == nil || *old != ip {
			p.Store(&ip)
		}
	}
}

// MACEntry is one row of the MAC table, for the control API.
type MACEntry struct {
	MAC       MAC
	Port      string
	Role      Role
	Announced bool
	IP        netip.Addr // IPv4 (from ARP), if seen
	IP6       netip.Addr // IPv6 (from NDP, not link-local), if seen
	Age       time.Duration
}

func (t *macTable) snapshot(now int64) []MACEntry {
	t.mu.RLock()
	defer t.mu.RUnlock()
	out := make([]MACEntry, 0, len(t.entries))
	for m, e := range t.entries {
		if e.port.removed.Load() {
			continue
		}
		me := MACEntry{MAC: m, Port: e.port.name, Role: e.port.role, Announced: e.origin == originAnnounced,
			Age: time.Duration(now - e.seen.Load())}
		if ip := e.ip.Load(); ip != nil {
			me.IP = *ip
		}
		if ip := e.ip6.Load(); ip != nil {
			me.IP6 = *ip
		}
		out = append(out, me)
	}
	return out
}

// forget drops mac's entry, learned or announced; it reports whether there
// was one.
func (t *macTable) forget(mac MAC) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	_, ok := t.entries[mac]
	delete(t.entries, mac)
	return ok
}
