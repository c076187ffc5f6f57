package tunnel

import (
	"math"
	"testing"
	"time"
)

func TestExtremumWindow(t *testing.T) {
	const w = int64(4 * time.Second)
	sec := int64(time.Second)
	lo := extremum{}
	if _, ok := lo.get(0, w); ok {
		t.Fatal("an empty window has a value")
	}
	lo.add(0, w, 5)
	lo.add(1*sec, w, 3)
	lo.add(2*sec, w, 7)
	if v, _ := lo.get(2*sec, w); v != 3 {
		t.Fatalf("min at 2s = %v, want 3", v)
	}
	// A sample is kept for at least half the window and gone after it.
	if v, _ := lo.get(3*sec, w); v != 3 {
		t.Fatalf("min at 3s = %v, want 3 (the 1s sample is 2s old)", v)
	}
	if v, _ := lo.get(5*sec, w); v != 7 {
		t.Fatalf("min at 5s = %v, want 7 (the 1s sample is older than the window)", v)
	}
	if _, ok := lo.get(9*sec, w); ok {
		t.Fatal("window still holds a value 7s after the last sample")
	}
	hi := extremum{largest: true}
	for i, v := range []float64{1, 9, 4} {
		hi.add(int64(i)*sec, w, v)
	}
	if v, _ := hi.get(2*sec, w); v != 9 {
		t.Fatalf("max = %v, want 9", v)
	}
}

// synth drives an estimator with synthetic counters, one tick per step.
type synth struct {
	t *testing.T
	e *estimator
	s meterSample
}

func newSynth(t *testing.T) *synth {
	y := &synth{t: t, e: newEstimator()}
	y.e.tick(y.s) // the baseline
	return y
}

// step advances one interval of dt in which tx and rx bytes moved and the
// writer was busy for busy; path (if not nil) changes the path counters.
func (y *synth) step(dt time.Duration, tx, rx uint64, busy time.Duration, path func(*pathStats)) Measurement {
	y.s.now += int64(dt)
	y.s.tx += tx
	y.s.rx += rx
	y.s.busy += int64(busy)
	if path != nil {
		path(&y.s.path)
	}
	y.e.tick(y.s)
	return y.e.measurement(y.s.now)
}

// atRest runs three quiet intervals: a 20 ms echo and a peer's ping that
// took 10 ms in each (ping sends one that took d), a few bytes received.
func (y *synth) atRest(ping func(d time.Duration)) {
	for i := 0; i < 3; i++ {
		y.e.echo(int64(20 * time.Millisecond))
		ping(10 * time.Millisecond)
		y.step(time.Second, 0, 1000, 0, nil)
	}
}

// mbps is the number of bytes that rate moves in dt.
func mbps(rate float64, dt time.Duration) uint64 { return uint64(rate * 1e6 / 8 * dt.Seconds()) }

func near(got, want, tol float64) bool { return math.Abs(got-want) <= tol*want }

func TestCapacityFromBacklog(t *testing.T) {
	y := newSynth(t)
	var m Measurement
	for i := 0; i < 4; i++ {
		m = y.step(time.Second, mbps(20, time.Second), 0, 900*time.Millisecond, nil)
	}
	if !near(m.TxCapacityMbps, 20, 0.01) || !near(m.TxMbps, 20, 0.01) {
		t.Fatalf("backlogged at 20 Mbit/s: %+v", m)
	}
	if m.RxCapacityMbps != 0 || m.CapacityMbps() != m.TxCapacityMbps {
		t.Fatalf("nothing received, yet %+v", m)
	}
	// Demand falls below the path: the estimate stays, the rate follows.
	for i := 0; i < 5; i++ {
		m = y.step(time.Second, mbps(5, time.Second), 0, 10*time.Millisecond, nil)
	}
	if !near(m.TxCapacityMbps, 20, 0.01) || !near(m.TxMbps, 5, 0.01) {
		t.Fatalf("after 5s at 5 Mbit/s: %+v", m)
	}
}

func TestCapacityUnknownWithoutBacklog(t *testing.T) {
	y := newSynth(t)
	var m Measurement
	for i := 0; i < 10; i++ {
		m = y.step(time.Second, mbps(20, time.Second), mbps(20, time.Second), 100*time.Millisecond, nil)
	}
	if m.TxCapacityMbps != 0 || m.RxCapacityMbps != 0 {
		t.Fatalf("a link that never filled its path has a capacity: %+v", m)
	}
	if !near(m.TxMbps, 20, 0.01) || !near(m.RxMbps, 20, 0.01) {
		t.Fatalf("rates: %+v", m)
	}
}

// A TCP socket buffer that grows takes more than the path carries; what
// the peer acknowledged is the rate.
func TestCapacityPrefersDelivered(t *testing.T) {
	y := newSynth(t)
	acked := func(n uint64) func(*pathStats) {
		return func(p *pathStats) { p.delivered += n; p.hasDelivered = true }
	}
	var m Measurement
	for i := 0; i < 4; i++ {
		m = y.step(time.Second, mbps(32, time.Second), 0, time.Second, acked(mbps(20, time.Second)))
	}
	if !near(m.TxCapacityMbps, 20, 0.01) {
		t.Fatalf("accepted 32, delivered 20: capacity %v", m.TxCapacityMbps)
	}
}

func TestCapacityIgnoresOneBurst(t *testing.T) {
	y := newSynth(t)
	var m Measurement
	y.step(time.Second, mbps(80, time.Second), 0, 800*time.Millisecond, nil) // buffers filling
	for i := 0; i < 3; i++ {
		m = y.step(time.Second, mbps(20, time.Second), 0, 900*time.Millisecond, nil)
	}
	if !near(m.TxCapacityMbps, 20, 0.01) {
		t.Fatalf("one 80 Mbit/s interval, then 20: capacity %v", m.TxCapacityMbps)
	}
}

func TestCapacityFollowsThePathDown(t *testing.T) {
	CapacityWindow = 4 * time.Second
	t.Cleanup(func() { CapacityWindow = 30 * time.Second })
	y := newSynth(t)
	for i := 0; i < 4; i++ {
		y.step(time.Second, mbps(20, time.Second), 0, time.Second, nil)
	}
	var m Measurement
	for i := 0; i < 8; i++ { // the path now carries 10
		m = y.step(time.Second, mbps(10, time.Second), 0, time.Second, nil)
	}
	if !near(m.TxCapacityMbps, 10, 0.01) {
		t.Fatalf("capacity %v two windows after the path fell to 10", m.TxCapacityMbps)
	}
	for i := 0; i < 10; i++ { // idle for longer than the window
		m = y.step(time.Second, 0, 0, 0, nil)
	}
	if !near(m.TxCapacityMbps, 10, 0.01) || m.TxMbps != 0 {
		t.Fatalf("idle: %+v, want the last estimate kept", m)
	}
}

func TestRxCapacityFromLoss(t *testing.T) {
	y := newSynth(t)
	lossy := func(sent, got uint64) func(*pathStats) {
		return func(p *pathStats) { p.rxExpected += sent; p.rxGot += got; p.hasRxLoss = true }
	}
	var m Measurement
	for i := 0; i < 4; i++ { // 18 Mbit/s arrive, 1 % of the datagrams do not
		m = y.step(time.Second, 0, mbps(18, time.Second), 0, lossy(3000, 2970))
	}
	if !near(m.RxCapacityMbps, 18, 0.01) || !near(m.RxLoss, 0.01, 0.05) || m.Loss() != m.RxLoss {
		t.Fatalf("18 Mbit/s with 1%% loss: %+v", m)
	}
	y = newSynth(t)
	for i := 0; i < 4; i++ {
		m = y.step(time.Second, 0, mbps(18, time.Second), 0, lossy(3000, 3000))
	}
	if m.RxCapacityMbps != 0 || m.RxLoss != 0 {
		t.Fatalf("no loss, no queue: %+v", m)
	}
}

// A datagram counted late (reordered across a tick) is not a loss, and
// never a negative one.
func TestRxLossReordering(t *testing.T) {
	y := newSynth(t)
	y.step(time.Second, 0, 1000, 0, func(p *pathStats) { p.rxExpected += 100; p.rxGot += 99; p.hasRxLoss = true })
	m := y.step(time.Second, 0, 1000, 0, func(p *pathStats) { p.rxExpected += 100; p.rxGot += 101 })
	if m.RxLoss < 0 || m.RxLoss > 0.01 {
		t.Fatalf("loss %v after a late datagram", m.RxLoss)
	}
}

// The peer's pings arrive later than its quickest once a queue builds:
// the interval was saturated, whatever the clocks' offset.
func TestRxCapacityFromQueueing(t *testing.T) {
	for _, tc := range []struct {
		queue time.Duration
		want  float64
	}{{30 * time.Millisecond, 18}, {2 * time.Millisecond, 0}} {
		y := newSynth(t)
		const offset = -int64(5 * time.Hour) // the peer's clock is far ahead of ours
		ping := func(d time.Duration) { y.e.peerPing(y.s.now, y.s.now-offset-int64(d)) }
		y.atRest(ping)
		var m Measurement
		for i := 0; i < 4; i++ {
			ping(10*time.Millisecond + tc.queue)
			m = y.step(time.Second, 0, mbps(18, time.Second), 0, nil)
		}
		if !near(m.RxCapacityMbps, tc.want, 0.01) && !(tc.want == 0 && m.RxCapacityMbps == 0) {
			t.Errorf("queue %v: rx capacity %v, want %v", tc.queue, m.RxCapacityMbps, tc.want)
		}
	}
}

// Behind a slow receiver the peer's pings wait behind its frames and come
// in bunches: an interval with none, whose ping is overdue by more than a
// queue's worth, was saturated too. Pings on time say nothing of the kind.
func TestRxCapacityFromOverduePings(t *testing.T) {
	for _, tc := range []struct {
		name  string
		every int           // a ping arrives every this many intervals
		late  time.Duration // how late the arriving ping is beyond the path's 10 ms
		want  float64
	}{
		{"bunched", 3, 400 * time.Millisecond, 18},
		{"on time", 1, 0, 0},
	} {
		y := newSynth(t)
		y.s.pingGap = int64(time.Second)
		const offset = int64(3 * time.Hour) // the peer's clock is behind ours
		ping := func(d time.Duration) { y.e.peerPing(y.s.now, y.s.now-offset-int64(d)) }
		y.atRest(ping)
		var m Measurement
		for i := 1; i <= 6; i++ {
			if i%tc.every == 0 {
				ping(10*time.Millisecond + tc.late)
			}
			m = y.step(time.Second, 0, mbps(18, time.Second), 0, nil)
		}
		if !near(m.RxCapacityMbps, tc.want, 0.01) && !(tc.want == 0 && m.RxCapacityMbps == 0) {
			t.Errorf("%s: rx capacity %v, want %v", tc.name, m.RxCapacityMbps, tc.want)
		}
	}
}

func TestPathRTTIsTheWindowsSmallestEcho(t *testing.T) {
	RTTWindow = 10 * time.Second
	t.Cleanup(func() { RTTWindow = 30 * time.Second })
	y := newSynth(t)
	var m Measurement
	for i := 0; i < 3; i++ {
		y.e.echo(int64(20 * time.Millisecond))
		m = y.step(time.Second, 0, 0, 0, nil)
	}
	if m.RTT != 20*time.Millisecond || m.SRTT != 20*time.Millisecond {
		t.Fatalf("idle: %+v", m)
	}
	for i := 0; i < 4; i++ { // loaded: every echo waits behind data
		y.e.echo(int64(80 * time.Millisecond))
		m = y.step(time.Second, 0, 0, 0, nil)
	}
	if m.RTT != 20*time.Millisecond || m.SRTT < 40*time.Millisecond {
		t.Fatalf("4s of load: RTT %v SRTT %v, want 20ms and the load in SRTT", m.RTT, m.SRTT)
	}
	for i := 0; i < 12; i++ {
		y.e.echo(int64(80 * time.Millisecond))
		m = y.step(time.Second, 0, 0, 0, nil)
	}
	if m.RTT != 80*time.Millisecond {
		t.Fatalf("a window of load: RTT %v, want 80ms", m.RTT)
	}
	// A fresh echo counts before the tick folds it in.
	y.e.echo(int64(15 * time.Millisecond))
	if got := y.e.measurement(y.s.now).RTT; got != 15*time.Millisecond {
		t.Fatalf("RTT %v right after a 15ms echo", got)
	}
}

func TestTxLossFromRetransmits(t *testing.T) {
	y := newSynth(t)
	var m Measurement
	for i := 0; i < 10; i++ {
		m = y.step(time.Second, 1<<20, 0, 0, func(p *pathStats) {
			p.sent += 1000
			p.lost += 20
			p.hasTxLoss = true
		})
	}
	if !near(m.TxLoss, 0.02, 0.05) || m.Loss() != m.TxLoss {
		t.Fatalf("2%% retransmitted: %+v", m)
	}
	for i := 0; i < 20; i++ {
		m = y.step(time.Second, 1<<20, 0, 0, func(p *pathStats) { p.sent += 1000 })
	}
	if m.TxLoss > 0.001 {
		t.Fatalf("loss %v 20s after the last retransmit", m.TxLoss)
	}
}

func TestCapacityMbpsIsTheSmallerKnown(t *testing.T) {
	for _, c := range []struct{ tx, rx, want float64 }{{0, 0, 0}, {20, 0, 20}, {0, 18, 18}, {20, 400, 20}, {400, 20, 20}} {
		if got := (Measurement{TxCapacityMbps: c.tx, RxCapacityMbps: c.rx}).CapacityMbps(); got != c.want {
			t.Errorf("tx %v rx %v: capacity %v, want %v", c.tx, c.rx, got, c.want)
		}
	}
}

// A VM's TCP that paces itself to the path never fills the socket, so the
// writer is never stuck; the kernel still says its send queue was not
// empty, and that is backlog too.
func TestCapacityFromTCPNotAppLimited(t *testing.T) {
	for _, appLimited := range []bool{false, true} {
		y := newSynth(t)
		var m Measurement
		for i := 0; i < 4; i++ {
			m = y.step(time.Second, mbps(20, time.Second), 0, 10*time.Millisecond, func(p *pathStats) {
				p.delivered += mbps(19, time.Second)
				p.hasDelivered, p.appLimited, p.hasAppLimited = true, appLimited, true
			})
		}
		want := 19.0
		if appLimited {
			want = 0
		}
		if (want == 0 && m.TxCapacityMbps != 0) || (want > 0 && !near(m.TxCapacityMbps, want, 0.01)) {
			t.Errorf("app-limited %v: capacity %v, want %v", appLimited, m.TxCapacityMbps, want)
		}
	}
}
