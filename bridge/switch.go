package bridge

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// QueueLen is the depth of each port's output queue, in frames.
var QueueLen = 1024

// DefaultBroadcastRate is Config.BroadcastRate's default: far above what
// ARP, NDP, DHCP and mDNS need (a few frames a second per VM, a burst when
// a VM boots or scans its subnet), far below a storm.
const DefaultBroadcastRate = 1000

// Drop reasons, counted per port. Ingress reasons count on the port the frame
// came in on, egress reasons on the port it was going out of.
const (
	DropRunt           = iota // ingress: shorter than an Ethernet header
	DropBadSource             // ingress: multicast or zero source address
	DropNoRoute               // ingress: the only way out was where it came from
	DropQueueFull             // egress: the output queue was full (slow port)
	DropWriteError            // egress: the port failed to write
	DropDenied                // ingress: an access rule (deny) matched
	DropBadOffload            // ingress: a virtio-net header that describes no valid frame; egress: a super-frame a plain port cannot take
	DropLooped                // ingress: from a link, with the source address of a VM on a local port here (a forwarding loop)
	DropTooBig                // egress: larger than the port carries whole (LimitPort; mtu.go)
	DropBroadcastLimit        // ingress: a VM port's broadcast and multicast frames beyond Config.BroadcastRate
	DropBadSeal               // ingress: a frame sealed end to end (sealed.go) that did not open
	numDropReasons
)

// DropReasonNames names the drop reasons, for logs, the API and metrics.
var DropReasonNames = [numDropReasons]string{"runt", "bad-source", "no-route", "queue-full", "write-error", "denied", "bad-offload", "looped", "too-big", "broadcast-limit", "bad-seal"}

// maxSuperQueued bounds the super-frames waiting in one port's queue (up to
// 64 KB each: QueueLen of them would be 64 MB).
const maxSuperQueued = 64

type portCounters struct {
	rxFrames, rxBytes, txFrames, txBytes atomic.Uint64
	drops                                [numDropReasons]atomic.Uint64
}

// portState is the switch's record of one attached port.
type portState struct {
	name    string
	role    Role
	port    Port
	queue   chan *frame
	done    chan struct{}
	removed atomic.Bool
	wg      sync.WaitGroup
	c       portCounters
	offload bool         // port is an OffloadPort that Offloads
	lim     LimitPort    // the port, if it may not carry every frame whole
	supers  atomic.Int32 // super-frames in queue

	// The writer's state, shared between routineWrite and readers that
	// write a lone frame themselves (reader.send): whoever holds wmu owns w.
	// inflight counts frames queued and not yet written; a reader writes
	// directly only when it is zero, so no frame overtakes one queued
	// before it.
	quick    bool // the port is a QuickPort that QuickWrites
	sealed   bool // the port is a SealedPort that TakesSealed (and offloads)
	wmu      sync.Mutex
	w        *writer
	inflight atomic.Int32
}

// portSet is an immutable snapshot of the attached ports, replaced as a
// whole when a port comes or goes, so readers need no lock.
type portSet struct {
	byName map[string]*portState
	star   []*portState // flood set for frames from local and star ports
	local  []*portState // flood set for frames from fast-path ports
}

// Observer sees every batch of frames a port received, before forwarding.
// It runs on the port's reader goroutine (so concurrently for different
// ports) and must not keep the slices. role tells VM-facing ports from
// links: counting only frames that enter from VM ports counts every frame
// once in the whole network, at the host of its source.
type Observer interface {
	ObserveBatch(port string, role Role, frames [][]byte)
}

// Config configures a Switch.
type Config struct {
	Log     *slog.Logger // nil: discard
	MaxMACs int          // MAC table bound; 0: DefaultMaxMACs
	// BroadcastRate bounds the broadcast and multicast frames each VM port
	// may send, in frames a second (with a burst of as many); the rest are
	// dropped as "broadcast-limit", so one VM's storm cannot flood the
	// whole network. 0: DefaultBroadcastRate; negative: no limit.
	BroadcastRate int
	Observer      Observer // optional; called once per received batch
	// OnNewLocal, if set, is called when a VM port gains an address it did
	// not have: a new VM, or one that moved here. It runs on the port's
	// reader, so it must not block; a host uses it to announce the VM at
	// once rather than at its next status tick.
	OnNewLocal func()
}

// Switch is the layer-2 switch. Its methods are safe for concurrent use.
type Switch struct {
	log       *slog.Logger
	observer  Observer
	bcastGap  atomic.Int64 // ns between broadcast frames a VM port may send on average; 0: no limit
	macs      *macTable
	pool      sync.Pool // frames of BufSize
	superPool sync.Pool // frames of SuperBufSize

	mu    sync.Mutex // serialises port and rule changes
	ports atomic.Pointer[portSet]
	rules atomic.Pointer[ruleSet]
	gen   atomic.Uint64 // bumped on any change that can alter a cached decision
}

// ruleSet is the rules with a frame counter each, swapped as one.
type ruleSet struct {
	rules []Rule
	hits  []atomic.Uint64
	filt  []filterRule // the rules with an IP filter, compiled
}

// New returns a switch with no ports.
func New(cfg Config) *Switch {
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Switch{log: log, observer: cfg.Observer, macs: newMACTable(cfg.MaxMACs)}
	s.macs.onNewLocal = cfg.OnNewLocal
	s.SetBroadcastRate(cfg.BroadcastRate)
	s.pool.New = func() any { return &frame{buf: make([]byte, BufSize)} }
	s.superPool.New = func() any { return &frame{buf: make([]byte, SuperBufSize)} }
	s.ports.Store(&portSet{byName: map[string]*portState{}})
	s.rules.Store(&ruleSet{})
	return s
}

// SetBroadcastRate changes Config.BroadcastRate on the running switch (0:
// the default, negative: no limit).
func (s *Switch) SetBroadcastRate(rate int) {
	switch {
	case rate == 0:
		s.bcastGap.Store(int64(time.Second) / DefaultBroadcastRate)
	case rate > 0:
		s.bcastGap.Store(max(int64(time.Second)/int64(rate), 1))
	default:
		s.bcastGap.Store(0)
	}
}

func (s *Switch) getFrame(super bool) *frame {
	if super {
		return s.superPool.Get().(*frame)
	}
	return s.pool.Get().(*frame)
}

func (s *Switch) putFrame(f *frame) {
	f.n, f.from, f.unsealer = 0, nil, nil
	f.buf[SealMetaOffset-1] = 0 // no stale seal marker for the buffer's next owner
	if f.super() {
		s.superPool.Put(f)
	} else {
		s.pool.Put(f)
	}
}

// ErrPortExists is returned by AddPort for a name already in use.
var ErrPortExists = errors.New("port name already in use")

// AddPort attaches p under name and starts moving its frames. The switch owns
// p from now on: RemovePort (or Close) closes it.
func (s *Switch) AddPort(name string, role Role, p Port) error {
	if name == "" {
		return errors.New("empty port name")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.ports.Load()
	if old.byName[name] != nil {
		return fmt.Errorf("%w: %s", ErrPortExists, name)
	}
	ps := &portState{name: name, role: role, port: p, queue: make(chan *frame, QueueLen), done: make(chan struct{})}
	if op, ok := p.(OffloadPort); ok && op.Offloads() {
		ps.offload = true
	}
	if lp, ok := p.(LimitPort); ok {
		ps.lim = lp
	}
	if qp, ok := p.(QuickPort); ok && qp.QuickWrites() {
		ps.quick = true
	}
	if sp, ok := p.(SealedPort); ok && ps.offload && sp.TakesSealed() {
		ps.sealed = true
	}
	ps.w = newWriter(s, ps)
	s.publishLocked(old, ps, "")
	ps.wg.Add(2)
	go s.routineRead(ps)
	go s.routineWrite(ps)
	s.log.Debug("port attached", "port", name, "role", role)
	return nil
}

// Forget drops what the switch knows of where mac is (after a VM moved):
// frames to it are flooded until it is learned again. It reports whether
// the MAC was known.
func (s *Switch) Forget(mac MAC) bool { return s.macs.forget(mac) }

// Where returns the port a frame to mac would go to, if the switch knows.
func (s *Switch) Where(mac MAC) (string, bool) {
	if p := s.macs.lookup(mac, time.Now().UnixNano()); p != nil {
		return p.name, true
	}
	return "", false
}

// RemovePort detaches and closes the port called name, forgets the MACs
// learned on it and waits for its goroutines. It reports whether it existed.
func (s *Switch) RemovePort(name string) bool {
	ps := s.ports.Load().byName[name]
	return ps != nil && s.removeState(ps)
}

// removeState detaches ps if it is still attached (a port of the same name
// attached later is left alone).
func (s *Switch) removeState(ps *portState) bool {
	s.mu.Lock()
	old := s.ports.Load()
	if old.byName[ps.name] != ps {
		s.mu.Unlock()
		return false
	}
	ps.removed.Store(true)
	s.publishLocked(old, nil, ps.name)
	s.mu.Unlock()

	s.macs.flushPort(ps)
	close(ps.done)
	ps.port.Close()
	ps.wg.Wait()
	s.log.Debug("port detached", "port", ps.name)
	return true
}

// publishLocked installs a new port set with add added and del removed.
func (s *Switch) publishLocked(old *portSet, add *portState, del string) {
	ns := &portSet{byName: make(map[string]*portState, len(old.byName)+1)}
	for n, p := range old.byName {
		if n != del {
			ns.byName[n] = p
		}
	}
	if add != nil {
		ns.byName[add.name] = add
	}
	names := make([]string, 0, len(ns.byName))
	for n := range ns.byName {
		names = append(names, n)
	}
	sort.Strings(names) // deterministic flood order
	for _, n := range names {
		p := ns.byName[n]
		switch p.role {
		case RoleLocal:
			ns.star = append(ns.star, p)
			ns.local = append(ns.local, p)
		case RoleStar:
			ns.star = append(ns.star, p)
		}
	}
	s.ports.Store(ns)
	s.gen.Add(1)
}

// SetRules replaces the rule set. Rules whose target port is not attached are
// kept but inactive until it is.
func (s *Switch) SetRules(rules []Rule) error {
	if err := ValidateRules(rules); err != nil {
		return err
	}
	rs := &ruleSet{rules: append([]Rule(nil), rules...), hits: make([]atomic.Uint64, len(rules))}
	rs.filt = compileFilters(rs.rules)
	s.mu.Lock()
	s.rules.Store(rs)
	s.gen.Add(1)
	s.mu.Unlock()
	return nil
}

// Rules returns the current rule set.
func (s *Switch) Rules() []Rule { return append([]Rule(nil), s.rules.Load().rules...) }

// RuleHits returns how many frames each rule of Rules decided (the first
// of the rules tied at the top score is counted), in the same order.
func (s *Switch) RuleHits() []uint64 {
	rs := s.rules.Load()
	out := make([]uint64, len(rs.hits))
	for i := range rs.hits {
		out[i] = rs.hits[i].Load()
	}
	return out
}

// Announce pins macs to the link port called name: the daemon at its far
// end hosts them (a fast-path peer's announcement, or a host's report to
// the proxy). Learning from other links does not move a pinned address;
// learning from a VM port does. It replaces what was announced on that
// port before.
func (s *Switch) Announce(name string, macs []MAC) error {
	p := s.ports.Load().byName[name]
	if p == nil {
		return fmt.Errorf("no port %s", name)
	}
	s.macs.announce(p, macs, time.Now().UnixNano())
	s.gen.Add(1)
	return nil
}

// Close detaches every port.
func (s *Switch) Close() {
	for name := range s.ports.Load().byName {
		s.RemovePort(name)
	}
}

// decision is the cached result of rule matching for one (src, dst).
type decision struct {
	gen  uint64
	act  ruleAction
	best int8  // the top score of the rules without an IP filter
	n    int8  // outputs, for actForward
	hit  int32 // the deciding rule, or -1
	outs [8]*portState
}

type cacheKey [12]byte

// maxCache bounds a reader's decision cache (a source-address flood must not
// grow it without limit).
const maxCache = 4096

// superBatch bounds the batch of a port that takes super-frames (see
// routineRead).
const superBatch = 4

// routineRead reads batches from one port and hands every frame to its
// outputs' queues.
func (s *Switch) routineRead(in *portState) {
	defer in.wg.Done()
	bs := max(in.port.BatchSize(), 1)
	if in.offload {
		// Every slot of an offloading port's batch holds a 64 KB buffer, so
		// a full batch would pin 4 MB per link: a proxy with 64 hosts held
		// 150 MB in readers alone. Four super-frames are 256 KB a read,
		// which is already more than a syscall's worth.
		bs = min(bs, superBatch)
	}
	frames := make([]*frame, bs)
	bufs := make([][]byte, bs)
	sizes := make([]int, bs)
	views := make([][]byte, 0, bs)
	for i := range frames {
		frames[i] = s.getFrame(in.offload)
		bufs[i] = frames[i].buf
	}
	defer func() {
		for _, f := range frames {
			s.putFrame(f)
		}
	}()
	r := reader{s: s, in: in, cache: make(map[cacheKey]*decision), outs: make([]*portState, 0, 64)}
	if pp, ok := in.port.(PushPort); ok {
		// The reader holds the pusher's lock except while the port's
		// Read waits: whoever holds it owns r.
		p := &Pusher{r: &r, views: make([][]byte, 1)}
		p.mu.Lock()
		pp.SetPusher(p)
		defer func() {
			p.r = nil
			p.mu.Unlock()
		}()
	}
	for {
		n, err := in.port.Read(bufs, sizes, Headroom)
		for i := 0; i < n; i++ {
			frames[i].n = sizes[i]
			if !in.offload {
				// The port never wrote the slot: clear what the buffer's
				// last owner left there.
				clear(frames[i].slot())
			}
		}
		if s.observer != nil && n > 0 {
			views = views[:0]
			for i := 0; i < n; i++ {
				views = append(views, frames[i].data())
			}
			s.observer.ObserveBatch(in.name, in.role, views)
		}
		now := time.Now().UnixNano()
		r.lone = n == 1
		for i := 0; i < n; i++ {
			if f := frames[i]; f.super() && f.n <= MaxFrame {
				// A small frame from an offloading port leaves in a small
				// buffer: the reader keeps its 64 KB one, and the queues'
				// bound on super-frames counts only real ones.
				c := s.getFrame(false)
				c.n = f.n
				copy(c.buf[Headroom-VnetHdrLen:], f.buf[Headroom-VnetHdrLen:Headroom+f.n])
				if !r.forward(c, now) {
					s.putFrame(c)
				}
				continue
			}
			if r.forward(frames[i], now) {
				frames[i] = s.getFrame(in.offload)
				bufs[i] = frames[i].buf
			}
		}
		if err != nil {
			if !in.removed.Load() && !errors.Is(err, ErrClosed) {
				s.log.Warn("port read failed; detaching it", "port", in.name, "err", err)
				go s.removeState(in)
			}
			return
		}
	}
}

// reader is the per-port scratch of routineRead: no other goroutine touches it.
type reader struct {
	s     *Switch
	in    *portState
	cache map[cacheKey]*decision
	spare []*decision // evicted cache entries, reused
	outs  []*portState
	// lone is set while the reader forwards a batch of one frame (send).
	lone bool
	// bcastDue paces the port's broadcasts (GCRA, a token bucket in one
	// number): the time at which its next one would be on schedule. A frame
	// may run up to a second (a burst of BroadcastRate frames) ahead of it.
	bcastDue int64
}

// broadcastAllowed reports whether a broadcast or multicast frame from a VM
// port, arriving at now, is within the port's rate.
func (r *reader) broadcastAllowed(now int64) bool {
	gap := r.s.bcastGap.Load()
	if gap == 0 {
		return true
	}
	due := max(r.bcastDue, now)
	if due-now > int64(time.Second) {
		return false
	}
	r.bcastDue = due + gap
	return true
}

// forward sends f on its way. It reports whether it gave f away (the caller
// must then take a new buffer); false means f is still the caller's.
func (r *reader) forward(f *frame, now int64) bool {
	in, s := r.in, r.s
	n := f.n
	f.from = in
	in.c.rxFrames.Add(1)
	in.c.rxBytes.Add(uint64(n))
	if n < MinFrame {
		in.c.drops[DropRunt].Add(1)
		return false
	}
	plain := n // the frame's length once open
	if f.unsealer != nil {
		plain -= SealOverhead
	}
	if in.offload && (plain > MaxFrame || !IsPlainHdr(f.slot())) && !ValidVnetHdr(ParseVnetHdr(f.slot()), plain) {
		in.c.drops[DropBadOffload].Add(1)
		return false
	}
	d := f.data()
	var dst, src MAC
	copy(dst[:], d[0:6])
	copy(src[:], d[6:12])
	if src.IsMulticast() || src.IsZero() {
		in.c.drops[DropBadSource].Add(1)
		return false
	}
	if s.macs.learn(src, in, now) {
		in.c.drops[DropLooped].Add(1)
		return false
	}
	if dst.IsMulticast() && in.role == RoleLocal && !r.broadcastAllowed(now) {
		in.c.drops[DropBroadcastLimit].Add(1)
		return false
	}
	if in.role == RoleLocal {
		if ip, ok := vmAddr(d[:n]); ok {
			s.macs.setIP(src, ip)
		}
	}

	set := s.ports.Load()
	outs := r.outs[:0]
	matched := false
	rs := s.rules.Load()
	if f.unsealer != nil && len(rs.filt) > 0 {
		if !f.unseal() {
			in.c.drops[DropBadSeal].Add(1)
			return false
		}
		n = f.n
	}
	if len(rs.rules) > 0 {
		var act ruleAction
		outs, act = r.ruleOutputs(rs, set, src, dst, d[:n], outs)
		if act == actDeny {
			in.c.drops[DropDenied].Add(1)
			return false
		}
		matched = act == actForward
	}
	if !matched {
		if !dst.IsMulticast() {
			if p := s.macs.lookup(dst, now); p != nil {
				if p == in {
					in.c.drops[DropNoRoute].Add(1)
					return false
				}
				outs = append(outs, p)
			}
		}
		if len(outs) == 0 {
			flood := set.star
			if in.role == RoleFast {
				flood = set.local
			}
			for _, p := range flood {
				if p != in {
					outs = append(outs, p)
				}
			}
		}
	}
	r.outs = outs
	if len(outs) == 0 {
		in.c.drops[DropNoRoute].Add(1)
		return false
	}
	if f.unsealer != nil {
		for _, p := range outs {
			if !p.sealed {
				if !f.unseal() {
					in.c.drops[DropBadSeal].Add(1)
					return false
				}
				n = f.n
				break
			}
		}
	}
	// Every output but the first gets its own copy: one owner per buffer,
	// since a link may write its header into the headroom in place.
	for _, p := range outs[1:] {
		c := s.getFrame(f.super())
		c.n, c.from, c.unsealer, c.meta = n, in, f.unsealer, f.meta
		copy(c.buf[Headroom-VnetHdrLen:], f.buf[Headroom-VnetHdrLen:Headroom+n])
		r.send(p, c)
	}
	r.send(outs[0], f)
	return true
}

// send hands f to p's writer. A lone frame (the reader's whole batch: the
// port is not busy, and someone may be waiting for this frame) to a quick
// port whose writer is idle and has nothing queued is written here and
// now, which saves the wake-up of the writer's goroutine on the latency
// path: two of them per hop and direction. So is a super-frame to a port
// that takes it whole, lone or not: it is a batch of its own (64 KB, one
// write), and bulk TCP, paced by its sender, would otherwise wake the
// writer for each one.
func (r *reader) send(p *portState, f *frame) {
	if (r.lone || f.super() && p.offload) && p.quick && p.inflight.Load() == 0 && p.wmu.TryLock() {
		if p.inflight.Load() == 0 && !p.removed.Load() {
			w := p.w
			w.refreshLimit()
			w.process(f)
			w.flush()
			p.wmu.Unlock()
			return
		}
		p.wmu.Unlock()
	}
	r.s.enqueue(p, f)
}

// ruleOutputs returns the outputs chosen by rules for frame d, from the
// cache when it is current, and what the rules decided; it counts the
// deciding rule's hit. The MAC-only decision is cached per (src, dst); rules
// with an IP filter that outrank it are tried on every frame.
func (r *reader) ruleOutputs(rs *ruleSet, set *portSet, src, dst MAC, d []byte, outs []*portState) ([]*portState, ruleAction) {
	gen := r.s.gen.Load()
	var k cacheKey
	copy(k[:6], src[:])
	copy(k[6:], dst[:])
	dec := r.cache[k]
	if dec == nil || dec.gen != gen {
		if dec == nil {
			if len(r.cache) >= maxCache {
				for k, v := range r.cache {
					r.spare = append(r.spare, v)
					delete(r.cache, k)
				}
			}
			if n := len(r.spare); n > 0 {
				dec, r.spare = r.spare[n-1], r.spare[:n-1]
			} else {
				dec = new(decision)
			}
			r.cache[k] = dec
		}
		var matchedOuts [8]*portState
		got, act, hit, best := matchRules(rs.rules, set, nil, src, dst, matchedOuts[:0])
		dec.gen, dec.act, dec.hit, dec.best, dec.n = gen, act, int32(hit), int8(best), 0
		if act == actForward {
			dec.n = int8(copy(dec.outs[:], got))
		}
	}
	if len(rs.filt) > 0 {
		if act, hit := matchFilters(rs.filt, src, dst, int(dec.best), d); act != actNone {
			rs.hits[hit].Add(1)
			return outs, act
		}
	}
	if dec.hit >= 0 && int(dec.hit) < len(rs.hits) {
		rs.hits[dec.hit].Add(1)
	}
	if dec.act != actForward {
		return outs, dec.act
	}
	for _, p := range dec.outs[:dec.n] {
		if p != r.in {
			outs = append(outs, p)
		}
	}
	return outs, actForward
}

func (s *Switch) enqueue(p *portState, f *frame) {
	super := f.super()
	if super && p.supers.Add(1) > maxSuperQueued {
		p.supers.Add(-1)
		p.c.drops[DropQueueFull].Add(1)
		s.putFrame(f)
		return
	}
	p.inflight.Add(1)
	select {
	case p.queue <- f:
	default:
		p.inflight.Add(-1)
		if super {
			p.supers.Add(-1)
		}
		p.c.drops[DropQueueFull].Add(1)
		s.putFrame(f)
	}
}

// routineWrite drains one port's queue in batches. A plain port's
// super-frames and unfinished checksums are made plain here, on the
// writer's goroutine, so only the port that needs it pays.
func (s *Switch) routineWrite(p *portState) {
	defer p.wg.Done()
	w := p.w
	for {
		select {
		case f := <-p.queue:
			p.wmu.Lock()
			w.refreshLimit()
			w.take(f)
		case <-p.done:
			p.wmu.Lock()
			w.release()
			for {
				select {
				case f := <-p.queue:
					w.popped(f)
					p.inflight.Add(-1)
					s.putFrame(f)
				default:
					p.wmu.Unlock()
					return
				}
			}
		}
		n := int32(1)
	fill:
		for len(w.batch) < w.bs {
			select {
			case f := <-p.queue:
				w.take(f)
				n++
			default:
				break fill
			}
		}
		w.flush()
		p.inflight.Add(-n)
		p.wmu.Unlock()
	}
}

func newWriter(s *Switch, p *portState) *writer {
	w := &writer{s: s, p: p, bs: max(p.port.BatchSize(), 1)}
	w.batch = make([]*frame, 0, w.bs)
	w.bufs = make([][]byte, w.bs)
	w.emit = w.put
	return w
}

// writer is routineWrite's state.
type writer struct {
	s     *Switch
	p     *portState
	bs    int
	batch []*frame
	bufs  [][]byte
	emit  func(*frame) // w.put, bound once
	limit int          // the port's FrameLimit for this batch; 0: none
}

func (w *writer) refreshLimit() {
	if w.p.lim != nil {
		w.limit = w.p.lim.FrameLimit()
	}
}

func (w *writer) popped(f *frame) {
	if f.super() {
		w.p.supers.Add(-1)
	}
}

// take queues f, just popped from the port's queue, for the next write.
func (w *writer) take(f *frame) {
	w.popped(f)
	w.process(f)
}

// process adds f to the batch, made plain first if the port wants.
func (w *writer) process(f *frame) {
	if w.p.offload || IsPlainHdr(f.slot()) {
		w.put(f)
		return
	}
	if !w.s.plainFrames(f, w.emit) {
		w.p.c.drops[DropBadOffload].Add(1)
		w.s.putFrame(f)
	}
}

// put adds plain frame f to the batch, if the port's frame limit lets it
// (mtu.go).
func (w *writer) put(f *frame) {
	if w.limit > 0 && !w.p.offload && !fitsLimit(f.data(), w.limit) {
		w.s.tooBig(w.p, f, w.limit)
		return
	}
	w.add(f)
}

func (w *writer) add(f *frame) {
	if len(w.batch) == w.bs {
		w.flush()
	}
	w.batch = append(w.batch, f)
}

func (w *writer) flush() {
	if len(w.batch) == 0 {
		return
	}
	p := w.p
	for i, f := range w.batch {
		if p.sealed {
			f.markSealed()
		}
		w.bufs[i] = f.buf[:Headroom+f.n]
	}
	n, err := p.port.Write(w.bufs[:len(w.batch)], Headroom)
	if n > 0 {
		p.c.txFrames.Add(uint64(n))
		for _, f := range w.batch[:n] {
			p.c.txBytes.Add(uint64(f.n))
		}
	}
	if err != nil && n < len(w.batch) {
		p.c.drops[DropWriteError].Add(uint64(len(w.batch) - n))
	}
	w.release()
}

func (w *writer) release() {
	for i, f := range w.batch {
		w.s.putFrame(f)
		w.batch[i] = nil
		w.bufs[i] = nil
	}
	w.batch = w.batch[:0]
}

// PortStats is a snapshot of one port's counters.
type PortStats struct {
	Name                                 string
	Role                                 Role
	RxFrames, RxBytes, TxFrames, TxBytes uint64
	Drops                                map[string]uint64 // by reason; only non-zero reasons
}

// Stats returns every port's counters, sorted by name.
func (s *Switch) Stats() []PortStats {
	set := s.ports.Load()
	out := make([]PortStats, 0, len(set.byName))
	for _, p := range set.byName {
		out = append(out, p.stats())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// PortStats returns the counters of the port called name.
func (s *Switch) PortStats(name string) (PortStats, bool) {
	p := s.ports.Load().byName[name]
	if p == nil {
		return PortStats{}, false
	}
	return p.stats(), true
}

// DropCounter is implemented by ports that drop frames on their own (e.g. a
// QEMU socket with no VM connected); Stats folds its counts in.
type DropCounter interface {
	Drops() map[string]uint64
}

func (p *portState) stats() PortStats {
	st := PortStats{Name: p.name, Role: p.role, RxFrames: p.c.rxFrames.Load(), RxBytes: p.c.rxBytes.Load(),
		TxFrames: p.c.txFrames.Load(), TxBytes: p.c.txBytes.Load(), Drops: map[string]uint64{}}
	for i := range p.c.drops {
		if v := p.c.drops[i].Load(); v > 0 {
			st.Drops[DropReasonNames[i]] = v
		}
	}
	if dc, ok := p.port.(DropCounter); ok {
		for k, v := range dc.Drops() {
			if v > 0 {
				st.Drops[k] += v
			}
		}
	}
	return st
}

// MACs returns the MAC table.
func (s *Switch) MACs() []MACEntry {
	out := s.macs.snapshot(time.Now().UnixNano())
	sort.Slice(out, func(i, j int) bool { return string(out[i].MAC[:]) < string(out[j].MAC[:]) })
	return out
}

// MACStats reports how many MAC entries were evicted (table full) and moved.
func (s *Switch) MACStats() (evicted, moved uint64) {
	return s.macs.evicted.Load(), s.macs.moves.Load()
}

// Decision is what the switch would do now with a frame from src to dst that
// arrived on port in ("" for a local VM port).
type Decision struct {
	Outputs []string // port names
	Roles   []Role
	By      string // "rule", "deny", "mac", "flood" or "none"
	Rule    string // the deciding rule, if a rule decided (or allowed)
	// Filters are the rules with an IP filter that outrank the decision
	// above for the frames they match (it depends on the packet): the
	// decision holds for every other frame.
	Filters []Rule
}

// Lookup answers Decision for `vnet ctl route` without sending anything.
func (s *Switch) Lookup(in string, src, dst MAC) Decision {
	set := s.ports.Load()
	inp := set.byName[in]
	var outs []*portState
	by, rule := "none", ""
	var filters []Rule
	if rs := s.rules.Load(); len(rs.rules) > 0 {
		var act ruleAction
		var hit, best int
		outs, act, hit, best = matchRules(rs.rules, set, inp, src, dst, nil)
		if hit >= 0 {
			rule = rs.rules[hit].String()
		}
		for _, i := range filterCandidates(rs.filt, src, dst, best) {
			filters = append(filters, rs.rules[i])
		}
		switch act {
		case actForward:
			by = "rule"
		case actDeny:
			return Decision{By: "deny", Rule: rule, Filters: filters}
		}
	}
	if by == "none" && !dst.IsMulticast() {
		if p := s.macs.lookup(dst, time.Now().UnixNano()); p != nil && p != inp {
			outs, by = []*portState{p}, "mac"
		}
	}
	if by == "none" {
		flood := set.star
		if inp != nil && inp.role == RoleFast {
			flood = set.local
		}
		for _, p := range flood {
			if p != inp {
				outs = append(outs, p)
			}
		}
		if len(outs) > 0 {
			by = "flood"
		}
	}
	d := Decision{By: by, Rule: rule, Filters: filters}
	for _, p := range outs {
		d.Outputs = append(d.Outputs, p.name)
		d.Roles = append(d.Roles, p.role)
	}
	return d
}

// vmAddr is the IP address a VM announces in frame, for `vnet ctl vms`:
// the sender's IPv4 address of an ARP packet, or the source address of an
// NDP neighbour solicitation or advertisement (ICMPv6 135, 136) that is
// neither unspecified (duplicate address detection) nor link-local.
func vmAddr(d []byte) (netip.Addr, bool) {
	switch binary.BigEndian.Uint16(d[12:14]) {
	case 0x0806:
		if len(d) < 14+28 {
			return netip.Addr{}, false
		}
		ip := netip.AddrFrom4([4]byte(d[14+14 : 14+18]))
		return ip, !ip.IsUnspecified()
	case 0x86dd:
		const ip6 = 14
		if len(d) < ip6+40+4 || d[ip6]>>4 != 6 || d[ip6+6] != 58 {
			return netip.Addr{}, false
		}
		if t := d[ip6+40]; t != 135 && t != 136 {
			return netip.Addr{}, false
		}
		ip := netip.AddrFrom16([16]byte(d[ip6+8 : ip6+24]))
		return ip, !ip.IsUnspecified() && !ip.IsLinkLocalUnicast() && !ip.IsMulticast() && !ip.Is4In6()
	}
	return netip.Addr{}, false
}
