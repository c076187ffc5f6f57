package tunnel

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"go.uber.org/goleak"

	"vnet/bridge"
)

// quicLogBuf collects log output from several goroutines.
type quicLogBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *quicLogBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *quicLogBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// waitFor polls cond until it holds or d passes.
func quicWaitFor(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return true
}

type quicPair struct {
	ln           *QUICListener
	a, b         *Link // a dialed b
	ctrlA, ctrlB chan []byte
	logs         *quicLogBuf // the listener's log
}

// newQUICPair connects two QUIC links over loopback; keyB (the listener's)
// may differ from keyA. refuse makes the listener refuse the dialer.
func newQUICPair(t testing.TB, keyA, keyB Key, refuse string) (*quicPair, error) {
	t.Helper()
	credA, _ := NewCredentials(keyA, "a")
	credB, _ := NewCredentials(keyB, "b")
	p := &quicPair{ctrlA: make(chan []byte, 100), ctrlB: make(chan []byte, 100), logs: &quicLogBuf{}}
	ln, err := ListenQUIC("127.0.0.1:0", credB, slog.New(slog.NewTextHandler(p.logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	p.ln = ln
	acc := make(chan *Link, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	go func() {
		in, err := ln.Accept(ctx)
		if err != nil {
			acc <- nil
			return
		}
		if refuse != "" {
			in.Refuse(Hello{Name: "b", Role: "proxy"}, refuse)
			acc <- nil
			return
		}
		l, _ := in.Accept(Hello{Name: "b", Role: "proxy"}, quietLog(),
			func(_ *Link, m []byte) { p.ctrlB <- append([]byte(nil), m...) })
		acc <- l
	}()
	a, err := DialQUIC(context.Background(), ln.Addr().String(), credA, Hello{Name: "a", Role: "host", Link: "fast-a-b"},
		quietLog(), func(_ *Link, m []byte) { p.ctrlA <- append([]byte(nil), m...) })
	if err != nil {
		cancel() // nothing more will come
	}
	b := <-acc
	p.a, p.b = a, b
	t.Cleanup(func() {
		if a != nil {
			a.Close()
		}
		if b != nil {
			b.Close()
		}
		ln.Close()
	})
	return p, err
}

func quicOf(l *Link) *quicTransport { return l.t.(*quicTransport) }

// Test frames: seq (4 bytes), CRC-32 of the rest (4 bytes), then a stretch
// of quicPattern that depends on seq, so a receiver can check every byte and
// the length.
var quicPattern = func() []byte {
	b := make([]byte, 4096+bridge.MaxFrame)
	x := uint32(2463534242)
	for i := range b {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		b[i] = byte(x)
	}
	return b
}()

func quicBody(seq uint32, n int) []byte {
	off := int(seq*7919) % 4096
	return quicPattern[off : off+n]
}

func quicFill(b []byte, seq uint32) {
	binary.BigEndian.PutUint32(b, seq)
	copy(b[8:], quicBody(seq, len(b)-8))
	binary.BigEndian.PutUint32(b[4:], crc32.ChecksumIEEE(b[8:]))
}

// quicSink reads a link until it closes and checks every frame.
type quicSink struct {
	size  func(seq uint32) int // the length frame seq must have
	n     int                  // frames expected
	seen  []atomic.Bool
	got   atomic.Int64 // good frames
	bad   atomic.Int64 // corrupt, wrong length, duplicate, unexpected
	mu    sync.Mutex
	first string // first problem
	done  chan struct{}
}

func newQUICSink(n int, size func(seq uint32) int) *quicSink {
	return &quicSink{size: size, n: n, seen: make([]atomic.Bool, n), done: make(chan struct{})}
}

func (s *quicSink) fail(format string, args ...any) {
	s.bad.Add(1)
	s.mu.Lock()
	if s.first == "" {
		s.first = fmt.Sprintf(format, args...)
	}
	s.mu.Unlock()
}

func (s *quicSink) check(f []byte) {
	if len(f) < bridge.MinFrame {
		s.fail("runt of %d bytes", len(f))
		return
	}
	seq := binary.BigEndian.Uint32(f)
	if int(seq) >= s.n {
		s.fail("unexpected seq %d", seq)
		return
	}
	if want := s.size(seq); len(f) != want {
		s.fail("frame %d: %d bytes, want %d", seq, len(f), want)
		return
	}
	if !bytes.Equal(f[8:], quicBody(seq, len(f)-8)) || crc32.ChecksumIEEE(f[8:]) != binary.BigEndian.Uint32(f[4:]) {
		s.fail("frame %d (%d bytes) corrupted", seq, len(f))
		return
	}
	if s.seen[seq].Swap(true) {
		s.fail("frame %d duplicated", seq)
		return
	}
	s.got.Add(1)
}

func (s *quicSink) run(l *Link) {
	defer close(s.done)
	bufs := make([][]byte, l.BatchSize())
	sizes := make([]int, len(bufs))
	for i := range bufs {
		bufs[i] = make([]byte, bridge.BufSize)
	}
	for {
		n, err := l.Read(bufs, sizes, bridge.Headroom)
		for i := 0; i < n; i++ {
			s.check(bufs[i][bridge.Headroom : bridge.Headroom+sizes[i]])
		}
		if err != nil {
			return
		}
	}
}

func (s *quicSink) problem() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.first
}

// quicSeqs is 0..n-1.
func quicSeqs(n int) []uint32 {
	s := make([]uint32, n)
	for i := range s {
		s[i] = uint32(i)
	}
	return s
}

// quicSend writes frames seqs to l in batches. With window > 0 it keeps at
// most about window frames unacknowledged by sink (end-to-end flow control
// of the test's own, as TCP inside the VMs would do); frames that do not
// arrive within a few milliseconds are presumed lost and stop counting.
func quicSend(l *Link, seqs []uint32, size func(seq uint32) int, sink *quicSink, window int) error {
	const batch = 32
	pool := make([][]byte, batch)
	for i := range pool {
		pool[i] = make([]byte, bridge.BufSize)
	}
	bufs := make([][]byte, 0, batch)
	base := sink.got.Load()
	var lost int64
	for i := 0; i < len(seqs); {
		for window > 0 {
			last, since := sink.got.Load(), time.Now()
			inFlight := func() int64 { return int64(i) - (sink.got.Load() - base) - lost }
			for inFlight() > int64(window) {
				if g := sink.got.Load(); g != last {
					last, since = g, time.Now()
				} else if time.Since(since) > 20*time.Millisecond {
					lost += inFlight() - int64(window)
					break
				}
				time.Sleep(50 * time.Microsecond)
			}
			break
		}
		bufs = bufs[:0]
		for j := 0; j < batch && i+j < len(seqs); j++ {
			seq := seqs[i+j]
			b := pool[j][:bridge.Headroom+size(seq)]
			quicFill(b[bridge.Headroom:], seq)
			bufs = append(bufs, b)
		}
		if k, err := l.Write(bufs, bridge.Headroom); err != nil || k != len(bufs) {
			return fmt.Errorf("write at %d: %d %v", i, k, err)
		}
		i += len(bufs)
	}
	return nil
}

// quicSettle waits until sink has want good frames or stops receiving.
func quicSettle(sink *quicSink, want int64) {
	last := int64(-1)
	for sink.got.Load() < want && sink.got.Load() != last {
		last = sink.got.Load()
		time.Sleep(300 * time.Millisecond)
	}
}

// quicDeliverAll sends frames 0..n-1 over l until sink has them all,
// resending the lost ones (datagrams are unreliable) for a few rounds. It
// returns how many frames the first round lost.
func quicDeliverAll(l *Link, n int, size func(uint32) int, sink *quicSink, window int) (int, error) {
	missing := quicSeqs(n)
	firstLost := 0
	for round := 0; len(missing) > 0; round++ {
		if round == 10 {
			return firstLost, fmt.Errorf("%d frames still missing after %d rounds (first: %d)", len(missing), round, missing[0])
		}
		if err := quicSend(l, missing, size, sink, window); err != nil {
			return firstLost, err
		}
		quicSettle(sink, int64(n))
		if sink.bad.Load() > 0 {
			return firstLost, fmt.Errorf("%d bad frames, first: %s", sink.bad.Load(), sink.problem())
		}
		missing = missing[:0]
		for i := range n {
			if !sink.seen[i].Load() {
				missing = append(missing, uint32(i))
			}
		}
		if round == 0 {
			firstLost = len(missing)
		}
	}
	return firstLost, nil
}

func TestQUICHellos(t *testing.T) {
	k, _ := GenerateKey()
	p, err := newQUICPair(t, k, k, "")
	if err != nil {
		t.Fatal(err)
	}
	if p.a.Peer().Name != "b" || p.a.Peer().Role != "proxy" || p.b.Peer().Name != "a" || p.b.Peer().Link != "fast-a-b" {
		t.Fatalf("hellos: %+v %+v", p.a.Peer(), p.b.Peer())
	}
	if p.a.Kind() != "quic" || p.b.Kind() != "quic" {
		t.Fatalf("kinds %q %q", p.a.Kind(), p.b.Kind())
	}
	if p.a.RemoteAddr().String() != p.ln.Addr().String() || p.b.LocalAddr().String() != p.ln.Addr().String() ||
		p.b.RemoteAddr().(*net.UDPAddr).Port != p.a.LocalAddr().(*net.UDPAddr).Port {
		t.Fatalf("addresses: a %v->%v, b %v->%v, listener %v", p.a.LocalAddr(), p.a.RemoteAddr(), p.b.LocalAddr(), p.b.RemoteAddr(), p.ln.Addr())
	}
}

// TestQUICFramesAllSizes sends every frame size from 14 to bridge.MaxFrame
// both ways at once and checks each byte; no frame may be lost (the sender
// keeps a window, so nothing overruns a queue).
func TestQUICFramesAllSizes(t *testing.T) {
	k, _ := GenerateKey()
	p, err := newQUICPair(t, k, k, "")
	if err != nil {
		t.Fatal(err)
	}
	n := bridge.MaxFrame - bridge.MinFrame + 1
	size := func(seq uint32) int { return bridge.MinFrame + int(seq) }
	toB, toA := newQUICSink(n, size), newQUICSink(n, size)
	go toB.run(p.b)
	go toA.run(p.a)
	type result struct {
		dir  string
		lost int
		err  error
	}
	res := make(chan result, 2)
	go func() { lost, err := quicDeliverAll(p.a, n, size, toB, 32); res <- result{"a->b", lost, err} }()
	go func() { lost, err := quicDeliverAll(p.b, n, size, toA, 32); res <- result{"b->a", lost, err} }()
	for range 2 {
		r := <-res
		t.Logf("%s: %d of %d frames lost in the first round", r.dir, r.lost, n)
		if r.err != nil {
			t.Errorf("%s: %v", r.dir, r.err)
		}
	}
	for name, s := range map[string]*quicSink{"a->b": toB, "b->a": toA} {
		if s.got.Load() != int64(n) {
			t.Errorf("%s: %d of %d frames arrived", name, s.got.Load(), n)
		}
		if s.bad.Load() > 0 {
			t.Errorf("%s: %d bad frames, first: %s", name, s.bad.Load(), s.problem())
		}
	}
	for _, l := range []*Link{p.a, p.b} {
		tr := quicOf(l)
		t.Logf("%s: %v", l.Peer().Name, tr.Stats())
		if tr.txFragmented.Load() == 0 || tr.rxReassembled.Load() == 0 {
			t.Errorf("fragmentation not exercised")
		}
		if m := tr.maxPayload.Load(); m < quicInitialDatagram {
			t.Errorf("datagram budget %d below the initial one", m)
		}
	}
	// Every frame was sent at least once and received exactly once.
	total := uint64(n*bridge.MinFrame + n*(n-1)/2)
	if p.a.TxBytes() < total || p.b.TxBytes() < total || p.a.RxBytes() != total || p.b.RxBytes() != total {
		t.Errorf("byte counters: a tx %d rx %d, b tx %d rx %d, want rx %d", p.a.TxBytes(), p.a.RxBytes(), p.b.TxBytes(), p.b.RxBytes(), total)
	}
}

// TestQUICControl sends control messages of all sizes, up to MaxControl,
// both ways, interleaved with frames: all arrive, intact and in order.
func TestQUICControl(t *testing.T) {
	k, _ := GenerateKey()
	p, err := newQUICPair(t, k, k, "")
	if err != nil {
		t.Fatal(err)
	}
	toB, toA := newQUICSink(1000, func(uint32) int { return 1514 }), newQUICSink(1000, func(uint32) int { return 1514 })
	go toB.run(p.b)
	go toA.run(p.a)
	var msgs [][]byte
	for _, n := range []int{1, 13, 1500, 9000, 100 << 10, 64 << 10, MaxControl, 2} {
		m := make([]byte, n)
		for i := range m {
			m[i] = byte(i*7 + n)
		}
		msgs = append(msgs, m)
	}
	for i, m := range msgs {
		if err := p.a.SendControl(m); err != nil {
			t.Fatal(err)
		}
		if err := p.b.SendControl(m); err != nil {
			t.Fatal(err)
		}
		if err := quicSend(p.a, []uint32{uint32(i)}, func(uint32) int { return 1514 }, toB, 0); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.a.SendControl(make([]byte, MaxControl+1)); err == nil {
		t.Error("oversized control message accepted")
	}
	for dir, ch := range map[string]chan []byte{"a->b": p.ctrlB, "b->a": p.ctrlA} {
		for i, want := range msgs {
			select {
			case got := <-ch:
				if !bytes.Equal(got, want) {
					t.Fatalf("%s: control message %d: %d bytes, want %d (or content differs)", dir, i, len(got), len(want))
				}
			case <-time.After(5 * time.Second):
				t.Fatalf("%s: control message %d (%d bytes) not received", dir, i, len(want))
			}
		}
	}
	if toB.bad.Load() > 0 {
		t.Fatal(toB.problem())
	}
}

func TestQUICKeepalive(t *testing.T) {
	oldI, oldD := KeepaliveInterval, DeadAfter
	KeepaliveInterval, DeadAfter = 50*time.Millisecond, 300*time.Millisecond
	defer func() { KeepaliveInterval, DeadAfter = oldI, oldD }()
	k, _ := GenerateKey()
	p, err := newQUICPair(t, k, k, "")
	if err != nil {
		t.Fatal(err)
	}
	sa, sb := newQUICSink(0, nil), newQUICSink(0, nil)
	go sa.run(p.a)
	go sb.run(p.b)
	if !quicWaitFor(2*time.Second, func() bool { return p.a.RTT() > 0 && p.b.RTT() > 0 }) {
		t.Fatalf("no RTT measured: a %v b %v", p.a.RTT(), p.b.RTT())
	}
	time.Sleep(400 * time.Millisecond) // longer than DeadAfter: pongs keep both up
	select {
	case <-p.a.Done():
		t.Fatalf("healthy link died: %v", p.a.Err())
	case <-p.b.Done():
		t.Fatalf("healthy link died: %v", p.b.Err())
	default:
	}
	if rtt := p.a.RTT(); rtt > 100*time.Millisecond {
		t.Errorf("loopback RTT %v", rtt)
	}
	t.Logf("RTT a %v b %v", p.a.RTT(), p.b.RTT())
	p.b.Close()
	<-sb.done
	<-sa.done
}

func TestQUICSilentPeer(t *testing.T) {
	oldI, oldD := KeepaliveInterval, DeadAfter
	KeepaliveInterval, DeadAfter = 50*time.Millisecond, 300*time.Millisecond
	defer func() { KeepaliveInterval, DeadAfter = oldI, oldD }()
	k, _ := GenerateKey()
	p, err := newQUICPair(t, k, k, "")
	if err != nil {
		t.Fatal(err)
	}
	// Nobody reads b: it never answers pings (QUIC itself still acks).
	p.b.routineStop()
	sa := newQUICSink(0, nil)
	go sa.run(p.a)
	select {
	case <-p.a.Done():
		if !strings.Contains(fmt.Sprint(p.a.Err()), "keepalive timeout") {
			t.Fatalf("died for another reason: %v", p.a.Err())
		}
	case <-time.After(3 * time.Second):
		t.Fatal("silent peer not detected")
	}
	<-sa.done
}

func TestQUICWrongKey(t *testing.T) {
	k1, _ := GenerateKey()
	k2, _ := GenerateKey()
	p, err := newQUICPair(t, k1, k2, "")
	if err == nil || !errors.Is(err, ErrAuth) || !strings.Contains(err.Error(), "authentication failed") {
		t.Fatalf("dial with the wrong key: err = %v, want authentication failed", err)
	}
	if !IsAuthError(err) {
		t.Fatal("IsAuthError false")
	}
	if p.b != nil {
		t.Fatal("the listener accepted a peer with the wrong key")
	}
	if !quicWaitFor(3*time.Second, func() bool { return strings.Contains(p.logs.String(), "authentication failed") }) {
		t.Fatalf("listener did not log the failure; log:\n%s", p.logs.String())
	}
}

// TestQUICWrongKeyClientSkipsVerify: a peer that does not check our
// certificate, with one of another network, gets past its own side of the
// handshake; the listener must still refuse and log it.
func TestQUICWrongKeyClientSkipsVerify(t *testing.T) {
	k1, _ := GenerateKey()
	k2, _ := GenerateKey()
	credB, _ := NewCredentials(k1, "b")
	credX, _ := NewCredentials(k2, "intruder")
	logs := &quicLogBuf{}
	ln, err := ListenQUIC("127.0.0.1:0", credB, slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	tc := credX.ClientConfig()
	tc.InsecureSkipVerify = true
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	conn, err := quic.DialAddr(ctx, ln.Addr().String(), tc, quicConfig())
	if err == nil {
		s, err2 := conn.OpenStreamSync(ctx)
		if err2 == nil {
			s.Write([]byte{MsgControl, 0, 0, 2, '{', '}'})
			s.SetReadDeadline(time.Now().Add(3 * time.Second))
			_, err = s.Read(make([]byte, 10))
		} else {
			err = err2
		}
		conn.CloseWithError(0, "")
	}
	if !errors.Is(classifyTLSError(err), ErrAuth) {
		t.Errorf("intruder's error = %v, want an authentication failure", err)
	}
	actx, acancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer acancel()
	if in, err := ln.Accept(actx); err == nil {
		t.Fatalf("intruder got through: %+v", in.Hello)
	}
	if !quicWaitFor(3*time.Second, func() bool { return strings.Contains(logs.String(), "authentication failed") }) {
		t.Fatalf("listener did not log the failure; log:\n%s", logs.String())
	}
}

func TestQUICRefused(t *testing.T) {
	k, _ := GenerateKey()
	_, err := newQUICPair(t, k, k, "duplicate name")
	if err == nil || !strings.Contains(err.Error(), "refused by b: duplicate name") {
		t.Fatalf("err = %v", err)
	}
}

// TestQUICClose: closing either end ends both links; closing the listener
// leaves accepted links running, and its socket goes when the last one
// ends; no goroutine outlives it all.
func TestQUICClose(t *testing.T) {
	k, _ := GenerateKey()
	for _, closer := range []string{"dialer", "acceptor"} {
		p, err := newQUICPair(t, k, k, "")
		if err != nil {
			t.Fatal(err)
		}
		sa, sb := newQUICSink(0, nil), newQUICSink(0, nil)
		go sa.run(p.a)
		go sb.run(p.b)
		addr := p.ln.Addr().String()
		p.ln.Close()
		// The link outlives its listener.
		if err := p.a.SendControl([]byte(`{"op":"still-here"}`)); err != nil {
			t.Fatal(err)
		}
		select {
		case m := <-p.ctrlB:
			if string(m) != `{"op":"still-here"}` {
				t.Fatalf("control %q", m)
			}
		case <-time.After(3 * time.Second):
			t.Fatal("link died with its listener")
		}
		us, them := p.a, p.b
		if closer == "acceptor" {
			us, them = p.b, p.a
		}
		us.Close()
		select {
		case <-them.Done():
		case <-time.After(3 * time.Second):
			t.Fatalf("%s closed, the other end did not notice", closer)
		}
		if err := them.Err(); err == nil || !strings.Contains(err.Error(), "closed by peer") {
			t.Errorf("other end's reason: %v", err)
		}
		if us.Err() != nil {
			t.Errorf("closer's reason: %v", us.Err())
		}
		<-sa.done
		<-sb.done
		if err := us.SendControl([]byte("{}")); err == nil {
			t.Error("send on a closed link succeeded")
		}
		// The listener's socket is released once its last link is gone.
		if !quicWaitFor(3*time.Second, func() bool {
			c, err := net.ListenPacket("udp", addr)
			if err == nil {
				c.Close()
			}
			return err == nil
		}) {
			t.Errorf("listener's UDP socket %s still bound after its last link ended", addr)
		}
	}
	goleak.VerifyNone(t)
}

// TestQUICListenerCloseAbandonsHandshake: a peer that completes QUIC but
// never sends its Hello does not hold up Close.
func TestQUICListenerCloseAbandonsHandshake(t *testing.T) {
	k, _ := GenerateKey()
	cred, _ := NewCredentials(k, "x")
	ln, err := ListenQUIC("127.0.0.1:0", cred, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	conn, err := quic.DialAddr(ctx, ln.Addr().String(), cred.ClientConfig(), quicConfig())
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	start := time.Now()
	ln.Close()
	if d := time.Since(start); d > time.Second {
		t.Errorf("Close took %v", d)
	}
	select {
	case <-conn.Context().Done():
	case <-time.After(3 * time.Second):
		t.Error("the pending connection was not closed")
	}
	conn.CloseWithError(0, "")
}

// TestQUICBulk moves 20 MiB of 1514-byte frames as fast as the sender can
// go. Datagrams may be dropped under load (and are counted); every frame
// that arrives must be intact.
func TestQUICBulk(t *testing.T) {
	k, _ := GenerateKey()
	p, err := newQUICPair(t, k, k, "")
	if err != nil {
		t.Fatal(err)
	}
	n := (20 << 20) / 1514
	size := func(uint32) int { return 1514 }
	sink := newQUICSink(n, size)
	go sink.run(p.b)
	go newQUICSink(0, nil).run(p.a) // answers pings
	start := time.Now()
	if err := quicSend(p.a, quicSeqs(n), size, sink, 0); err != nil {
		t.Fatal(err)
	}
	quicSettle(sink, int64(n))
	elapsed := time.Since(start)
	got := sink.got.Load()
	ta, tb := quicOf(p.a), quicOf(p.b)
	t.Logf("%d of %d frames (%.2f%%) in %v, %.1f MB/s delivered; receiver: queue drops %d, bad %d; sender: budget %d, tx drops %d",
		got, n, 100*float64(got)/float64(n), elapsed.Round(time.Millisecond), float64(got*1514)/elapsed.Seconds()/1e6,
		tb.rxDrops.Load(), tb.rxBad.Load(), ta.maxPayload.Load(), ta.txDrops.Load())
	t.Logf("sender %v", ta.Stats())
	t.Logf("receiver %v", tb.Stats())
	if sink.bad.Load() > 0 {
		t.Fatalf("%d bad frames, first: %s", sink.bad.Load(), sink.problem())
	}
	if got < int64(n)/4 {
		t.Fatalf("only %d of %d frames arrived", got, n)
	}
}

// TestQUICDatagramBudget drives the sender's budget logic against a fake
// quic-go that refuses datagrams above a limit that changes (PMTUD up, a
// path change down), with a receiver attached: every frame arrives whole
// and intact, in as few datagrams as the limit allows.
func TestQUICDatagramBudget(t *testing.T) {
	tx, rx := newQUICState(), newQUICState()
	limit := 1200
	var sizes []int // datagrams accepted for the last frame
	tx.send = func(d []byte) error {
		if len(d) > limit {
			return &quic.DatagramTooLargeError{MaxDatagramPayloadSize: int64(limit)}
		}
		sizes = append(sizes, len(d))
		rx.handleDatagram(append([]byte(nil), d...))
		return nil
	}
	seq := uint32(0)
	// send writes one frame of n bytes and returns the datagram sizes used.
	send := func(n int) []int {
		t.Helper()
		sizes = nil
		seq++
		b := make([]byte, bridge.Headroom+n)
		quicFill(b[bridge.Headroom:], seq)
		want := append([]byte(nil), b[bridge.Headroom:]...)
		if err := tx.writeFrames([][]byte{b}, bridge.Headroom, false); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b[bridge.Headroom:], want) {
			t.Fatal("writeFrames changed the frame")
		}
		if len(sizes) > 0 {
			if !rx.more() {
				t.Fatalf("frame of %d bytes not delivered (datagrams %v)", n, sizes)
			}
			typ, got, err := rx.readMsg(make([]byte, bridge.BufSize), bridge.Headroom)
			if err != nil || typ != MsgFrame || !bytes.Equal(got, want) {
				t.Fatalf("frame of %d bytes: got %d bytes, type %d, %v", n, len(got), typ, err)
			}
		}
		if rx.more() {
			t.Fatal("extra message queued")
		}
		return sizes
	}
	check := func(what string, got []int, want ...int) {
		t.Helper()
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s: datagrams %v, want %v (budget %d)", what, got, want, tx.max)
		}
	}
	check("fits the initial budget", send(1000), 1005)
	check("probed whole", send(1150), 1155)
	check("probe fails, learns 1200", send(1514), 1200, 324)
	if tx.max != 1200 {
		t.Fatalf("budget %d, want 1200", tx.max)
	}
	check("jumbo", send(bridge.MaxFrame), 1200, 1200, 1200, 1200, 1200, 1200, 1200, 662)
	limit = 1400 // PMTUD raised it
	check("no probe within a second", send(1300), 1200, 110)
	tx.probed = time.Now().Add(-2 * quicProbeEvery)
	check("probe learns the rise", send(1300), 1305)
	check("stays whole", send(1250), 1255)
	tx.probed = time.Now()
	limit = 700 // the path shrank between probes
	check("starts over smaller", send(2000), 700, 700, 615)
	limit = 100 // too small to be worth it: the frame is dropped
	if got := send(1514); len(got) != 0 || tx.txDrops.Load() != 1 {
		t.Errorf("tiny budget: datagrams %v, tx drops %d", got, tx.txDrops.Load())
	}
	limit = 1400
	tx.probed = time.Time{}
	check("recovers", send(1514), 1400, 124)
	if n := tx.txFragmented.Load(); n != 5 {
		t.Errorf("%d frames fragmented, want 5", n)
	}
	tx.send = func([]byte) error { return net.ErrClosed }
	if err := tx.writeFrames([][]byte{make([]byte, bridge.Headroom+60)}, bridge.Headroom, false); !errors.Is(err, net.ErrClosed) {
		t.Errorf("send error not reported: %v", err)
	}
}

// FuzzQUICDatagrams feeds arbitrary datagrams to a QUIC link's receiver:
// it queues only well-formed frames and never panics.
func FuzzQUICDatagrams(f *testing.F) {
	dgram := func(id uint16, i, n uint8, chunk []byte) []byte {
		b := make([]byte, InnerHeaderLen+len(chunk))
		PutInner(b, MsgFrame, id, i, n)
		copy(b[InnerHeaderLen:], chunk)
		return b
	}
	seq := func(ds ...[]byte) []byte {
		var out []byte
		for _, d := range ds {
			out = binary.BigEndian.AppendUint16(out, uint16(len(d)))
			out = append(out, d...)
		}
		return out
	}
	frame := make([]byte, 1514)
	quicFill(frame, 1)
	f.Add(seq(dgram(0, 0, 1, frame[:60])))
	f.Add(seq(dgram(7, 0, 2, frame[:1100]), dgram(7, 1, 2, frame[1100:])))
	f.Add(seq(dgram(7, 1, 2, frame[1100:]), dgram(7, 0, 2, frame[:1100]), dgram(7, 0, 2, frame[:1100])))
	f.Add(seq(dgram(1, 0, 1, frame[:3]), []byte{9, 0, 0, 0, 1}, []byte{1, 0, 0, 5, 2}))
	f.Fuzz(func(t *testing.T, data []byte) {
		tr := newQUICState()
		for len(data) >= 2 {
			n := min(int(binary.BigEndian.Uint16(data)), len(data)-2)
			tr.handleDatagram(append([]byte(nil), data[2:2+n]...))
			data = data[2+n:]
			for tr.more() {
				typ, b, err := tr.readMsg(make([]byte, bridge.BufSize), bridge.Headroom)
				if err != nil || typ != MsgFrame || len(b) < bridge.MinFrame || len(b) > bridge.MaxFrame {
					t.Fatalf("queued %d/%d bytes/%v", typ, len(b), err)
				}
			}
		}
		if tr.reasm.Pending() > quicReasmPending {
			t.Fatalf("%d messages pending", tr.reasm.Pending())
		}
	})
}

// BenchmarkQUICLink moves 1514-byte frames one way over a loopback QUIC
// link (two fragments each). MB/s counts frames written; delivered-MB/s
// and drop-% what arrived.
func BenchmarkQUICLink(b *testing.B) {
	k, _ := GenerateKey()
	p, err := newQUICPair(b, k, k, "")
	if err != nil {
		b.Fatal(err)
	}
	var got atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		bufs := make([][]byte, p.b.BatchSize())
		sizes := make([]int, len(bufs))
		for i := range bufs {
			bufs[i] = make([]byte, bridge.BufSize)
		}
		for {
			n, err := p.b.Read(bufs, sizes, bridge.Headroom)
			got.Add(int64(n))
			if err != nil {
				return
			}
		}
	}()
	go newQUICSink(0, nil).run(p.a)
	bufs := make([][]byte, 64)
	for i := range bufs {
		bufs[i] = make([]byte, bridge.Headroom+1514)
		quicFill(bufs[i][bridge.Headroom:], uint32(i))
	}
	b.SetBytes(1514)
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for sent := 0; sent < b.N; sent += len(bufs) {
		batch := bufs[:min(len(bufs), b.N-sent)]
		if _, err := p.a.Write(batch, bridge.Headroom); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	last := int64(-1)
	for got.Load() < int64(b.N) && got.Load() != last {
		last = got.Load()
		time.Sleep(50 * time.Millisecond)
	}
	elapsed := time.Since(start)
	b.ReportMetric(float64(got.Load()*1514)/elapsed.Seconds()/1e6, "delivered-MB/s")
	b.ReportMetric(100*float64(int64(b.N)-got.Load())/float64(b.N), "drop-%")
	p.a.Close()
	p.b.Close()
	<-done
}
