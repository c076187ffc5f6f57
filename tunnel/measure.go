package tunnel

// Passive measurement (DESIGN.md, "Passive measurement (Wren's idea)"): a
// link estimates its path's RTT, achievable throughput and loss from the
// traffic that flows over it anyway, without probes of its own.
//
//   - RTT: the keepalive echoes (one a KeepaliveInterval). Under load an echo
//     waits behind the data in every queue on the path, so the path RTT is
//     the smallest echo of the last RTTWindow, as in TCP's and BBR's min-RTT
//     filters; the smoothed echo (SRTT) is the loaded one. The transport's
//     own minimum (TCP_INFO, QUIC) is reported beside it as a cross-check.
//   - Throughput: frame bytes per keepalive interval each way.
//   - Capacity (achievable throughput), Wren's idea: a rate measured while
//     the sender had more to send than the path took approximates what the
//     path can carry. Sending: an interval counts as backlogged when the
//     writer spent at least busyShare of it inside the transport (a full TCP
//     socket buffer, QUIC's datagram queue behind its congestion window), or
//     when TCP's latest rate sample was not application-limited (the
//     kernel's own "send queue not empty": a VM's TCP that paces itself to
//     the path keeps the socket's queue short but never empty), and TCP did
//     not spend it waiting for the receiver's window (a slow receiver, whose
//     own estimate is the one to trust); the rate is what the peer
//     acknowledged (TCP) or what the transport accepted (QUIC, UDP).
//     Receiving: an interval counts as saturated when datagrams were lost
//     (UDP's counters have gaps) or when the peer's pings arrived later than
//     its quickest one by more than a standing queue's worth (the one-way
//     delay grows only when a queue builds, Wren's self-induced congestion;
//     clock offsets cancel because only the growth matters). The estimate
//     is the largest such rate of the last CapacityWindow, sustained over
//     two intervals (buffers that fill let one interval exceed the path),
//     and at least the largest sustained rate achieved since; it stays at
//     its last value when the window empties.
//     A link that never filled its path has no capacity estimate (zero).
//   - Loss: TCP's retransmitted segments and QUIC's lost packets (sending),
//     UDP's counter gaps (receiving), each smoothed over a few intervals.
//
// The frame path only bumps atomic counters; estimation runs on the
// keepalive tick and on the rare ping and pong.

import (
	"math"
	"sync"
	"time"
)

// Measurement windows. Package variables so tests can shrink them.
var (
	// RTTWindow is how far back the path RTT looks for its smallest echo.
	RTTWindow = 30 * time.Second
	// CapacityWindow is how far back the capacity estimate looks for
	// backlogged or saturated intervals.
	CapacityWindow = 30 * time.Second
)

const (
	// busyShare is the share of an interval the writer must spend inside
	// the transport for the interval to count as backlogged.
	busyShare = 0.5
	// queueDelayMin and queueShare: a ping delayed by more than both (the
	// second as a share of the path RTT) met a standing queue.
	queueDelayMin = 5 * time.Millisecond
	queueShare    = 0.25
	// lossSaturated: an interval that lost more than this share of its
	// datagrams (and at least lossMinDatagrams) overflowed a queue.
	lossSaturated    = 0.002
	lossMinDatagrams = 2
	// minSampleBytes: an interval that moved less cannot tell a capacity
	// (a few keepalives are not a rate).
	minSampleBytes = 64 << 10
	// lossDecay weighs the previous intervals in the smoothed loss.
	lossDecay = 0.7
)

// Measurement is what a link knows about its path. Zero means unknown.
type Measurement struct {
	RTT          time.Duration // path RTT: the smallest echo of the last RTTWindow
	SRTT         time.Duration // smoothed echo RTT (includes queueing under load)
	TransportRTT time.Duration // the transport's own minimum RTT (TCP_INFO, QUIC), a cross-check

	TxMbps, RxMbps float64 // frame bytes sent and received in the last interval, Mbit/s
	// TxCapacityMbps and RxCapacityMbps are the achievable rates each way
	// (see the package comment in measure.go); zero until the path filled.
	TxCapacityMbps, RxCapacityMbps float64
	// TxLoss and RxLoss are loss fractions each way, where the transport
	// can tell (TCP and QUIC sending, UDP receiving).
	TxLoss, RxLoss float64
}

// CapacityMbps is the link's achievable throughput: the smaller of the two
// directions' estimates that are known.
func (m Measurement) CapacityMbps() float64 { return minKnown(m.TxCapacityMbps, m.RxCapacityMbps) }

// Loss is the larger of the two directions' loss fractions.
func (m Measurement) Loss() float64 { return max(m.TxLoss, m.RxLoss) }

// minKnown is the smaller of the positive values among a and b, or 0.
func minKnown(a, b float64) float64 {
	switch {
	case a <= 0:
		return max(b, 0)
	case b <= 0:
		return a
	}
	return min(a, b)
}

// pathStats are a transport's cumulative counters about its path, read on
// the keepalive tick (see pathStater). Each has flags saying whether the
// transport keeps it.
type pathStats struct {
	delivered    uint64 // bytes the peer acknowledged (TCP)
	hasDelivered bool
	// rwndLimited is how long the sender waited for the receiver's window
	// (TCP): a slow receiver, not the path, held it back.
	rwndLimited time.Duration
	hasRwnd     bool
	// appLimited: the transport's latest rate sample was taken while it had
	// nothing waiting to be sent (TCP's tcpi_delivery_rate_app_limited).
	appLimited, hasAppLimited bool
	sent, lost                uint64 // packets or segments sent, and lost or retransmitted
	hasTxLoss                 bool
	rxExpected                uint64 // datagrams the peer sent us (by their counters)
	rxGot                     uint64 // ... of which arrived
	hasRxLoss                 bool
	minRTT                    time.Duration
}

// pathStater is implemented by transports that know more about their path
// than the Link sees.
type pathStater interface{ pathStats(*pathStats) }

// meterSample is one keepalive tick's reading of a link's counters.
type meterSample struct {
	now    int64  // ns on the link's clock
	tx, rx uint64 // frame bytes
	busy   int64  // ns the writer spent inside the transport
	// pingGap is how often the peer pings, ns (its keepalive interval,
	// which is ours); 0: unknown.
	pingGap int64
	path    pathStats
}

// extremum keeps the smallest (or largest) value seen over a sliding
// window, in two half-window buckets (the answer covers between half the
// window and all of it), as Nichols' windowed filters in BBR do with three.
type extremum struct {
	largest         bool
	start           int64 // ns: when the current bucket began
	cur, prev       float64
	hasCur, hasPrev bool
}

func (e *extremum) better(a, b float64) bool {
	if e.largest {
		return a > b
	}
	return a < b
}

// roll retires buckets older than the window at now.
func (e *extremum) roll(now, window int64) {
	half := max(window/2, 1)
	switch age := now - e.start; {
	case age >= 2*half:
		e.hasPrev, e.hasCur, e.start = false, false, now
	case age >= half:
		e.prev, e.hasPrev, e.hasCur, e.start = e.cur, e.hasCur, false, e.start+half
	}
}

func (e *extremum) add(now, window int64, v float64) {
	e.roll(now, window)
	if !e.hasCur || e.better(v, e.cur) {
		e.cur, e.hasCur = v, true
	}
}

// get is the extremum over the window at now; ok is false when the window
// holds no sample.
func (e *extremum) get(now, window int64) (v float64, ok bool) {
	e.roll(now, window)
	switch {
	case !e.hasCur:
		return e.prev, e.hasPrev
	case !e.hasPrev || e.better(e.cur, e.prev):
		return e.cur, true
	}
	return e.prev, true
}

// ratio is a smoothed share (lost over sent), weighing older intervals by
// lossDecay each.
type ratio struct{ num, den float64 }

func (r *ratio) add(num, den float64) {
	r.num = r.num*lossDecay + num
	r.den = r.den*lossDecay + den
}

func (r ratio) get() float64 {
	if r.den < 1 {
		return 0
	}
	return math.Min(math.Max(r.num/r.den, 0), 1)
}

// direction estimates one way's capacity. A rate counts only when it was
// sustained: the smaller of two consecutive intervals' rates, both of them
// full for a capacity sample. A single interval can carry more than the
// path does, while buffers on the way fill (a socket buffer that grows, a
// receiver's window opening).
type direction struct {
	sat      extremum // sustained rates while the path was full, bytes/s
	achieved extremum // sustained rates, bytes/s
	last     float64  // the latest capacity estimate, kept when sat's window empties

	prevRate float64
	prevFull bool
}

func newDirection() direction {
	return direction{sat: extremum{largest: true}, achieved: extremum{largest: true}}
}

// observe takes one interval's rate (bytes/s), the bytes it moved and
// whether the path was full during it.
func (d *direction) observe(now, window int64, rate float64, bytes uint64, full bool) {
	full = full && bytes >= minSampleBytes
	sustained := min(rate, d.prevRate)
	d.achieved.add(now, window, sustained)
	if full && d.prevFull {
		d.sat.add(now, window, sustained)
	}
	d.prevRate, d.prevFull = rate, full
	if c, ok := d.sat.get(now, window); ok {
		d.last = c
	}
	if d.last > 0 { // once the path has been seen full, what it carried since is a floor
		a, _ := d.achieved.get(now, window)
		d.last = max(d.last, a)
	}
}

// estimator turns a link's counters into a Measurement. The keepalive tick
// (tick), the reader (echo, peerPing) and API calls (measurement) share it
// under mu; none of them is on the frame path.
type estimator struct {
	mu   sync.Mutex
	have bool
	last meterSample

	srtt    float64  // ns, smoothed echo
	rtt     extremum // echo RTTs, ns (smallest)
	tickRTT float64  // the smallest echo since the last tick (0: none)
	// One-way delays of the peer's pings plus the unknown clock offset, ns:
	// the smallest of the window, and this interval's extremes.
	owd            extremum
	tickOWDMin     float64
	tickOWDMax     float64
	haveOWD        bool
	peerSent       int64 // the latest ping's departure, on the peer's clock
	havePeerSent   bool
	transport      time.Duration
	txRate, rxRate float64 // bytes/s, last interval
	tx, rx         direction
	txLoss, rxLoss ratio
}

func newEstimator() *estimator {
	return &estimator{tx: newDirection(), rx: newDirection()}
}

// echo records a keepalive round trip of d ns.
func (e *estimator) echo(d int64) {
	if d <= 0 {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.srtt == 0 {
		e.srtt = float64(d)
	} else {
		e.srtt += (float64(d) - e.srtt) / 8 // RFC 6298's alpha
	}
	if e.tickRTT == 0 || float64(d) < e.tickRTT {
		e.tickRTT = float64(d)
	}
}

// peerPing records a ping from the peer: it left at sent on the peer's
// clock and arrived at now on ours.
func (e *estimator) peerPing(now, sent int64) {
	v := float64(now - sent)
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.havePeerSent || sent > e.peerSent {
		e.peerSent, e.havePeerSent = sent, true
	}
	if !e.haveOWD {
		e.tickOWDMin, e.tickOWDMax, e.haveOWD = v, v, true
		return
	}
	e.tickOWDMin, e.tickOWDMax = min(e.tickOWDMin, v), max(e.tickOWDMax, v)
}

// pathRTTLocked is the smallest echo of the window, this interval's
// included (0: none yet).
func (e *estimator) pathRTTLocked(now int64) float64 {
	r, ok := e.rtt.get(now, int64(RTTWindow))
	if e.tickRTT > 0 && (!ok || e.tickRTT < r) {
		r = e.tickRTT
	}
	return r
}

// tick closes an interval.
func (e *estimator) tick(s meterSample) {
	e.mu.Lock()
	defer e.mu.Unlock()
	rttW, capW := int64(RTTWindow), int64(CapacityWindow)
	if e.tickRTT > 0 {
		e.rtt.add(s.now, rttW, e.tickRTT)
		e.tickRTT = 0
	}
	e.transport = s.path.minRTT
	// The peer's pings of this interval met a queue if the slowest took
	// longer than the quickest of the window by a standing queue's worth.
	// A ping the peer owes (its last one left more than a ping interval
	// ago) is at least that late already: behind a slow path or receiver
	// the peer's pings wait behind its frames, come in bunches, and leave
	// whole intervals with none.
	queued := false
	slowest, haveSlowest := e.tickOWDMax, e.haveOWD
	if e.haveOWD {
		e.owd.add(s.now, rttW, e.tickOWDMin)
		e.haveOWD = false
	}
	if s.pingGap > 0 && e.havePeerSent {
		// Less a scheduling slack: the peer's ticker may run late.
		owed := float64(s.now - e.peerSent - s.pingGap - int64(queueDelayMin))
		if !haveSlowest || owed > slowest {
			slowest, haveSlowest = owed, true
		}
	}
	if base, ok := e.owd.get(s.now, rttW); ok && haveSlowest {
		delay := slowest - base
		queued = delay > float64(queueDelayMin) && delay > queueShare*e.pathRTTLocked(s.now)
	}
	if !e.have {
		e.last, e.have = s, true
		return
	}
	p, dt := e.last, float64(s.now-e.last.now)
	e.last = s
	if dt <= 0 {
		return
	}
	secs := dt / 1e9
	txBytes, rxBytes := s.tx-p.tx, s.rx-p.rx
	e.txRate, e.rxRate = float64(txBytes)/secs, float64(rxBytes)/secs

	// Sending: backlogged when the writer was stuck in the transport; the
	// rate is what the peer acknowledged when the transport knows it (a
	// socket buffer that grows accepts more than the path carries).
	backlogged := float64(s.busy-p.busy) >= busyShare*dt
	if s.path.hasAppLimited && !s.path.appLimited {
		backlogged = true // the kernel's send queue held data: the path, not we, set the pace
	}
	if s.path.hasRwnd && p.path.hasRwnd && float64(s.path.rwndLimited-p.path.rwndLimited) >= busyShare*dt {
		backlogged = false // the receiver's window, not the path: the receiver's own estimate tells
	}
	txRate, txMoved := e.txRate, txBytes
	if s.path.hasDelivered && p.path.hasDelivered && s.path.delivered >= p.path.delivered {
		txMoved = s.path.delivered - p.path.delivered
		txRate = float64(txMoved) / secs
	}
	e.tx.observe(s.now, capW, txRate, txMoved, backlogged)
	if s.path.hasTxLoss && p.path.hasTxLoss && s.path.sent >= p.path.sent && s.path.lost >= p.path.lost {
		e.txLoss.add(float64(s.path.lost-p.path.lost), float64(s.path.sent-p.path.sent))
	}

	// Receiving: saturated when datagrams were lost or pings queued.
	lossy := false
	if s.path.hasRxLoss && p.path.hasRxLoss && s.path.rxExpected >= p.path.rxExpected && s.path.rxGot >= p.path.rxGot {
		exp, got := float64(s.path.rxExpected-p.path.rxExpected), float64(s.path.rxGot-p.path.rxGot)
		lost := max(exp-got, 0)
		e.rxLoss.add(lost, exp)
		lossy = lost >= lossMinDatagrams && lost > lossSaturated*exp
	}
	e.rx.observe(s.now, capW, e.rxRate, rxBytes, lossy || queued)
}

// measurement is the current estimate at now.
func (e *estimator) measurement(now int64) Measurement {
	e.mu.Lock()
	defer e.mu.Unlock()
	const mbit = 8 / 1e6
	return Measurement{
		RTT:            time.Duration(e.pathRTTLocked(now)),
		SRTT:           time.Duration(e.srtt),
		TransportRTT:   e.transport,
		TxMbps:         e.txRate * mbit,
		RxMbps:         e.rxRate * mbit,
		TxCapacityMbps: e.tx.last * mbit,
		RxCapacityMbps: e.rx.last * mbit,
		TxLoss:         e.txLoss.get(),
		RxLoss:         e.rxLoss.get(),
	}
}
