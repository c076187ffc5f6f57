package tunnel

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"vnet/bridge"
	"vnet/bridge/bridgetest"
)

// ---- fixtures ----

// logBuf collects a logger's output for assertions.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *logBuf) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func listenUDPTest(t testing.TB, k Key, log *slog.Logger) *UDPMux {
	t.Helper()
	if log == nil {
		log = quietLog()
	}
	m, err := ListenUDP("127.0.0.1:0", k, log)
	if err != nil {
		t.Fatal(err)
	}
	testMuxes.Store(m, true)
	t.Cleanup(func() { m.Close(); testMuxes.Delete(m) })
	return m
}

// testMuxes are the live muxes of the running test, for failure reports.
var testMuxes sync.Map

func apOf(a net.Addr) netip.AddrPort { return a.(*net.UDPAddr).AddrPort() }

type udpPair struct {
	a, b         *UDPMux
	la, lb       *Link // la dialed lb
	ctrlA, ctrlB chan string
}

// newUDPPair makes two muxes and links a (dialer) to b. to overrides the
// candidates a dials (default: b's address).
func newUDPPair(t testing.TB, keyA, keyB Key, to ...netip.AddrPort) (*udpPair, error) {
	t.Helper()
	p := &udpPair{a: listenUDPTest(t, keyA, nil), b: listenUDPTest(t, keyB, nil),
		ctrlA: make(chan string, 16), ctrlB: make(chan string, 16)}
	if len(to) == 0 {
		to = []netip.AddrPort{apOf(p.b.Addr())}
	}
	var err error
	p.la, p.lb, err = dialAccept(t, p.a, p.b, to, "a", p.ctrlA, p.ctrlB)
	return p, err
}

// dialAccept links dialer to acceptor; ctrl channels get control messages.
func dialAccept(t testing.TB, dialer, acceptor *UDPMux, to []netip.AddrPort, name string, ctrlD, ctrlA chan string) (*Link, *Link, error) {
	t.Helper()
	return dialAcceptHellos(t, dialer, acceptor, to, Hello{Name: name, Role: "host", Link: "fast-" + name},
		Hello{Name: "b", Role: "proxy"}, ctrlD, ctrlA)
}

// dialAcceptHellos is dialAccept with the two sides' hellos given.
func dialAcceptHellos(t testing.TB, dialer, acceptor *UDPMux, to []netip.AddrPort, dh, ah Hello, ctrlD, ctrlA chan string) (*Link, *Link, error) {
	t.Helper()
	acc := make(chan *Link, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	go func() {
		in, err := acceptor.Accept(ctx)
		if err != nil {
			acc <- nil
			return
		}
		l, _ := in.Accept(ah, quietLog(), func(_ *Link, m []byte) {
			if ctrlA != nil {
				ctrlA <- string(m)
			}
		})
		acc <- l
	}()
	la, err := dialer.Dial(ctx, to, dh, quietLog(),
		func(_ *Link, m []byte) {
			if ctrlD != nil {
				ctrlD <- string(m)
			}
		})
	if err != nil {
		cancel()
	}
	lb := <-acc
	for _, l := range []*Link{la, lb} {
		if l != nil {
			t.Cleanup(func() { l.Close() })
		}
	}
	return la, lb, err
}

// frameBatch makes frames of the given sizes at Headroom, with random bytes,
// in buffers of BufSize (as the switch's).
func frameBatch(sizes []int) ([][]byte, [][]byte) {
	bufs := make([][]byte, len(sizes))
	want := make([][]byte, len(sizes))
	for i, n := range sizes {
		b := make([]byte, bridge.Headroom+n, bridge.BufSize)
		rand.Read(b)
		bufs[i] = b
		want[i] = bytes.Clone(b[bridge.Headroom:])
	}
	return bufs, want
}

// sendAndCheck writes frames of every size from tx and checks each arrives
// byte for byte at rx (whose frames pump delivers to got), lock-step in
// batches so that nothing overflows.
func sendAndCheck(t *testing.T, tx *Link, got <-chan []byte, sizes []int) {
	t.Helper()
	stats := func() any {
		var out []map[string]uint64
		testMuxes.Range(func(k, _ any) bool {
			ms := k.(*UDPMux).Stats()
			for k, v := range ms {
				if v == 0 {
					delete(ms, k)
				}
			}
			out = append(out, ms)
			return true
		})
		return out
	}
	t.Helper()
	const batch = 32
	for len(sizes) > 0 {
		k := min(batch, len(sizes))
		bufs, want := frameBatch(sizes[:k])
		sizes = sizes[k:]
		if n, err := tx.Write(bufs, bridge.Headroom); n != k || err != nil {
			t.Fatalf("write: %d %v (link: %v; muxes %v)", n, err, tx.Err(), stats())
		}
		for i := range bufs {
			if !bytes.Equal(bufs[i][bridge.Headroom:], want[i]) {
				t.Fatalf("Write changed the caller's frame of %d bytes", len(want[i]))
			}
		}
		// UDP may reorder (loopback too, when the sender hops CPUs): match
		// the batch as a multiset.
		pending := map[string]int{}
		for _, w := range want {
			pending[string(w)]++
		}
		for range want {
			select {
			case g := <-got:
				if pending[string(g)] == 0 {
					t.Fatalf("a frame of %d bytes arrived that was not sent (or twice); muxes: %v", len(g), stats())
				}
				pending[string(g)]--
			case <-time.After(5 * time.Second):
				t.Fatalf("frames not received; muxes: %v", stats())
			}
		}
	}
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func shortKeepalive(t *testing.T, every, dead time.Duration) {
	oldI, oldD := KeepaliveInterval, DeadAfter
	KeepaliveInterval, DeadAfter = every, dead
	t.Cleanup(func() { KeepaliveInterval, DeadAfter = oldI, oldD })
}

// ---- links ----

func TestUDPLinkFramesAllSizes(t *testing.T) {
	k, _ := GenerateKey()
	p, err := newUDPPair(t, k, k)
	if err != nil {
		t.Fatal(err)
	}
	if p.la.Kind() != "udp" || p.la.Peer().Name != "b" || p.lb.Peer().Name != "a" || p.lb.Peer().Link != "fast-a" {
		t.Fatalf("kind %s, hellos %+v %+v", p.la.Kind(), p.la.Peer(), p.lb.Peer())
	}
	if apOf(p.la.RemoteAddr()) != apOf(p.b.Addr()) || apOf(p.lb.RemoteAddr()) != apOf(p.a.Addr()) {
		t.Fatalf("addresses: %v %v", p.la.RemoteAddr(), p.lb.RemoteAddr())
	}
	var wg sync.WaitGroup
	gotA, gotB := make(chan []byte, 64), make(chan []byte, 64)
	wg.Add(2)
	go pump(p.la, gotA, &wg)
	go pump(p.lb, gotB, &wg)
	var sizes []int
	for n := bridge.MinFrame; n <= bridge.MaxFrame; n++ {
		sizes = append(sizes, n)
	}
	// Mix them so that fragmented and whole frames share batches.
	mrand.New(mrand.NewPCG(1, 2)).Shuffle(len(sizes), func(i, j int) { sizes[i], sizes[j] = sizes[j], sizes[i] })
	sendAndCheck(t, p.la, gotB, sizes)
	sendAndCheck(t, p.lb, gotA, sizes)
	var total uint64
	for _, n := range sizes {
		total += uint64(n)
	}
	if p.la.TxBytes() != total || p.lb.RxBytes() != total || p.lb.TxBytes() != total || p.la.RxBytes() != total {
		t.Fatalf("byte counters: a tx %d rx %d, b tx %d rx %d, want %d", p.la.TxBytes(), p.la.RxBytes(), p.lb.TxBytes(), p.lb.RxBytes(), total)
	}
	st := p.b.Stats()
	if st["handshakes"] != 1 || st["bad-mac"] != 0 || st["replay"] != 0 || st["queue-full"] != 0 || st["frag-error"] != 0 {
		t.Fatalf("b stats: %v", st)
	}
	// Frames above one datagram travelled as several.
	if rx := st["rx-datagrams"]; rx <= uint64(len(sizes)) {
		t.Fatalf("b received %d datagrams for %d frames: no fragmentation?", rx, len(sizes))
	}
	p.la.Close()
	p.lb.Close()
	wg.Wait()
}

// A 1514-byte frame crosses a 1500-MTU underlay as exactly 2 datagrams,
// each within MaxUDPPayload.
func TestUDPFrameSplitsInTwo(t *testing.T) {
	k, _ := GenerateKey()
	p, err := newUDPPair(t, k, k)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	got := make(chan []byte, 4)
	wg.Add(1)
	go pump(p.lb, got, &wg)
	before := p.b.Stats()["rx-datagrams"]
	sendAndCheck(t, p.la, got, []int{1514})
	if d := p.b.Stats()["rx-datagrams"] - before; d != 2 {
		t.Fatalf("a 1514-byte frame took %d datagrams", d)
	}
	if MaxUDPPayload-udpOverhead >= 1514 || 2*(MaxUDPPayload-udpOverhead) < 1514 {
		t.Fatal("MaxUDPPayload no longer splits a 1514-byte frame in two")
	}
	p.lb.Close()
	wg.Wait()
}

func TestUDPControlAndKeepalive(t *testing.T) {
	shortKeepalive(t, 50*time.Millisecond, 2*time.Second)
	k, _ := GenerateKey()
	p, err := newUDPPair(t, k, k)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	gotA, gotB := make(chan []byte, 8), make(chan []byte, 8)
	wg.Add(2)
	go pump(p.la, gotA, &wg)
	go pump(p.lb, gotB, &wg)
	big := strings.Repeat("x", 50<<10)
	for _, msg := range []string{`{"op":"hi"}`, big, `{"op":"bye"}`} {
		if err := p.la.SendControl([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		select {
		case m := <-p.ctrlB:
			if m != msg {
				t.Fatalf("control message of %d bytes arrived as %d bytes", len(msg), len(m))
			}
		case <-time.After(3 * time.Second):
			t.Fatalf("control message of %d bytes lost", len(msg))
		}
	}
	if err := p.lb.SendControl([]byte(`{"op":"back"}`)); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-p.ctrlA:
		if m != `{"op":"back"}` {
			t.Fatalf("control = %q", m)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("control message lost")
	}
	// Above the UDP limit the transport refuses (the link would die on it:
	// check on the transport itself).
	s := p.la.t.(*udpSession)
	if err := s.writeMsg(MsgControl, make([]byte, udpMaxControl+1)); err == nil {
		t.Fatal("a control message above 60 KiB was accepted")
	}
	waitFor(t, "RTT from keepalives", func() bool { return p.la.RTT() > 0 && p.lb.RTT() > 0 })
	if rtt := p.la.RTT(); rtt > 500*time.Millisecond {
		t.Fatalf("loopback RTT %v", rtt)
	}
	select {
	case <-p.la.Done():
		t.Fatalf("healthy link died: %v", p.la.Err())
	default:
	}
	p.la.Close()
	p.lb.Close()
	wg.Wait()
}

func TestUDPWrongKey(t *testing.T) {
	k1, _ := GenerateKey()
	k2, _ := GenerateKey()
	var logs logBuf
	a := listenUDPTest(t, k1, nil)
	b := listenUDPTest(t, k2, logs.logger())
	ctx, cancel := context.WithTimeout(context.Background(), 600*time.Millisecond)
	defer cancel()
	l, err := a.Dial(ctx, []netip.AddrPort{apOf(b.Addr())}, Hello{Name: "a"}, quietLog(), nil)
	if err == nil {
		l.Close()
		t.Fatal("dial with the wrong key succeeded")
	}
	if !IsAuthError(err) && !strings.Contains(err.Error(), "no answer from any of") {
		t.Fatalf("error says neither authentication failed nor a clear timeout: %v", err)
	}
	t.Logf("dialer: %v", err)
	actx, acancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer acancel()
	if in, err := b.Accept(actx); err == nil {
		t.Fatalf("a peer without the key reached Accept: %+v", in.Hello)
	}
	if st := b.Stats(); st["handshake-bad"] < 3 || st["handshakes"] != 0 {
		t.Fatalf("responder stats: %v", st)
	}
	if a.Stats()["rx-datagrams"] != 0 {
		t.Fatalf("the responder answered a stranger: %v", a.Stats())
	}
	if b.sessionCount() != 0 || b.pendingCount() != 0 {
		t.Fatal("a stranger opened a session or a pending handshake")
	}
	if !strings.Contains(logs.String(), "authentication failed") {
		t.Fatalf("responder did not log it: %s", logs.String())
	}
}

func TestUDPRefused(t *testing.T) {
	k, _ := GenerateKey()
	a := listenUDPTest(t, k, nil)
	b := listenUDPTest(t, k, nil)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		if in, err := b.Accept(ctx); err == nil {
			in.Refuse(Hello{Name: "b"}, "no room")
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_, err := a.Dial(ctx, []netip.AddrPort{apOf(b.Addr())}, Hello{Name: "a"}, quietLog(), nil)
	if err == nil || err.Error() != "refused by b: no room" {
		t.Fatalf("err = %v", err)
	}
	if a.sessionCount() != 0 || b.sessionCount() != 0 {
		t.Fatal("a refusal left a session")
	}
}

// Only the last candidate answers; the link's remote address is that one.
func TestUDPDialCandidates(t *testing.T) {
	k, _ := GenerateKey()
	var holes []netip.AddrPort
	for i := 0; i < 2; i++ { // bound sockets that never answer
		c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		holes = append(holes, apOf(c.LocalAddr()))
	}
	b := listenUDPTest(t, k, nil)
	holes = append(holes, netip.MustParseAddrPort("127.0.0.1:9")) // discard port: likely closed
	to := append(holes, apOf(b.Addr()))
	a := listenUDPTest(t, k, nil)
	la, lb, err := dialAccept(t, a, b, to, "a", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := apOf(la.RemoteAddr()); got != apOf(b.Addr()) {
		t.Fatalf("remote %v, want %v", got, b.Addr())
	}
	_ = lb
	// Nobody answering at all: a clear timeout.
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err = a.Dial(ctx, holes, Hello{Name: "a", Link: "x"}, quietLog(), nil)
	if err == nil || !strings.Contains(err.Error(), "no answer from any of") {
		t.Fatalf("err = %v", err)
	}
}

// A dual-stack socket ("[::]:0") talks to IPv4 and IPv6 peers.
func TestUDPDualStack(t *testing.T) {
	k, _ := GenerateKey()
	b, err := ListenUDP("[::]:0", k, quietLog())
	if err != nil {
		t.Skipf("no IPv6: %v", err)
	}
	defer b.Close()
	port := apOf(b.Addr()).Port()
	a4 := listenUDPTest(t, k, nil)
	la, lb, err := dialAccept(t, a4, b, []netip.AddrPort{netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)}, "a4", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := apOf(lb.RemoteAddr()); got != apOf(a4.Addr()) {
		t.Fatalf("b sees a4 at %v, want %v", got, a4.Addr())
	}
	var wg sync.WaitGroup
	got := make(chan []byte, 8)
	wg.Add(1)
	go pump(la, got, &wg)
	sendAndCheck(t, lb, got, []int{100, 1514})
	la.Close()
	wg.Wait()
	a6, err := ListenUDP("[::1]:0", k, quietLog())
	if err != nil {
		t.Logf("no IPv6 loopback: %v", err)
		return
	}
	defer a6.Close()
	la6, lb6, err := dialAccept(t, a6, b, []netip.AddrPort{netip.AddrPortFrom(netip.IPv6Loopback(), port)}, "a6", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	got6 := make(chan []byte, 8)
	wg.Add(1)
	go pump(la6, got6, &wg)
	sendAndCheck(t, lb6, got6, []int{100, 1514})
	la6.Close()
	wg.Wait()
}

// ---- a relay between a and b, to capture, replay and re-bind ----

type udpRelay struct {
	front  *net.UDPConn // a talks to this
	target netip.AddrPort
	mu     sync.Mutex
	back   *net.UDPConn // b sees this as a
	client netip.AddrPort
	caught [][]byte // a -> b datagrams
	wg     sync.WaitGroup
	// pass (set under mu) decides which a -> b datagrams go through; then
	// none is captured.
	pass func(b []byte) bool
}

func newUDPRelay(t *testing.T, target netip.AddrPort) *udpRelay {
	r := &udpRelay{target: target}
	var err error
	if r.front, err = net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}); err != nil {
		t.Fatal(err)
	}
	r.rebind(t)
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		buf := make([]byte, 65536)
		for {
			n, from, err := r.front.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			r.mu.Lock()
			r.client = from
			ok := r.pass == nil || r.pass(buf[:n])
			if r.pass == nil {
				r.caught = append(r.caught, bytes.Clone(buf[:n]))
			}
			back := r.back
			r.mu.Unlock()
			if ok {
				back.WriteToUDPAddrPort(buf[:n], r.target)
			}
		}
	}()
	t.Cleanup(func() {
		r.front.Close()
		r.mu.Lock()
		r.back.Close()
		r.mu.Unlock()
		r.wg.Wait()
	})
	return r
}

// rebind moves the b-facing side to a new port, as a NAT that lost its
// mapping would.
func (r *udpRelay) rebind(t *testing.T) {
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	r.mu.Lock()
	old := r.back
	r.back = c
	r.mu.Unlock()
	if old != nil {
		old.Close()
	}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		buf := make([]byte, 65536)
		for {
			n, _, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			r.mu.Lock()
			client := r.client
			r.mu.Unlock()
			r.front.WriteToUDPAddrPort(buf[:n], client)
		}
	}()
}

func (r *udpRelay) addr() netip.AddrPort { return apOf(r.front.LocalAddr()) }

func (r *udpRelay) backAddr() netip.AddrPort {
	r.mu.Lock()
	defer r.mu.Unlock()
	return apOf(r.back.LocalAddr())
}

// inject sends b to the target from the relay's b-facing side.
func (r *udpRelay) inject(b []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.back.WriteToUDPAddrPort(b, r.target)
}

func (r *udpRelay) captured(typ byte) [][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out [][]byte
	for _, b := range r.caught {
		if len(b) > 0 && b[0] == typ {
			out = append(out, b)
		}
	}
	return out
}

func TestUDPReplayedDatagramDropped(t *testing.T) {
	k, _ := GenerateKey()
	a := listenUDPTest(t, k, nil)
	b := listenUDPTest(t, k, nil)
	r := newUDPRelay(t, apOf(b.Addr()))
	la, lb, err := dialAccept(t, a, b, []netip.AddrPort{r.addr()}, "a", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	got := make(chan []byte, 64)
	wg.Add(1)
	go pump(lb, got, &wg)
	sendAndCheck(t, la, got, []int{60, 1514, 100})
	// The 1514-byte frame went sealed whole (two type 5 datagrams).
	data := append(r.captured(udpMsgTransport), r.captured(udpMsgSealed)...)
	if len(data) < 4 {
		t.Fatalf("captured %d transport datagrams", len(data))
	}
	for _, d := range data {
		r.inject(d)
	}
	waitFor(t, "replays counted", func() bool { return b.Stats()["replay"] >= uint64(len(data)) })
	select {
	case f := <-got:
		t.Fatalf("a replayed frame of %d bytes was delivered", len(f))
	case <-time.After(100 * time.Millisecond):
	}
	// A tampered datagram fails authentication.
	bad := bytes.Clone(data[0])
	bad[len(bad)-1] ^= 1
	r.inject(bad)
	waitFor(t, "bad-mac", func() bool { return b.Stats()["bad-mac"] == 1 })
	// The link still works.
	sendAndCheck(t, la, got, []int{200})
	lb.Close()
	wg.Wait()
}

// TestUDPSealedOnlyWhenOffered: a message of several datagrams goes
// sealed whole (type 5) to a peer that offers it, and per datagram (type
// 4) to one from before type 5; both arrive.
func TestUDPSealedOnlyWhenOffered(t *testing.T) {
	for _, old := range []bool{false, true} {
		t.Run(fmt.Sprintf("old=%v", old), func(t *testing.T) {
			k, _ := GenerateKey()
			a, b := listenUDPTest(t, k, nil), listenUDPTest(t, k, nil)
			b.sealedOff = old
			r := newUDPRelay(t, apOf(b.Addr()))
			la, lb, err := dialAccept(t, a, b, []netip.AddrPort{r.addr()}, "a", nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			var wg sync.WaitGroup
			got := make(chan []byte, 64)
			wg.Add(1)
			go pump(lb, got, &wg)
			sendAndCheck(t, la, got, []int{1514, 60, 9000})
			sealed, plain := len(r.captured(udpMsgSealed)), len(r.captured(udpMsgTransport))
			if old && sealed != 0 || !old && sealed < 2+7 || plain < 1 {
				t.Errorf("to a peer that offers sealed messages: %v; %d type 5 and %d type 4 datagrams", !old, sealed, plain)
			}
			lb.Close()
			wg.Wait()
		})
	}
}

func TestUDPReplayedHandshake(t *testing.T) {
	k, _ := GenerateKey()
	a := listenUDPTest(t, k, nil)
	b := listenUDPTest(t, k, nil)
	r := newUDPRelay(t, apOf(b.Addr()))
	la, lb, err := dialAccept(t, a, b, []netip.AddrPort{r.addr()}, "a", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	got := make(chan []byte, 8)
	wg.Add(1)
	go pump(lb, got, &wg)
	sendAndCheck(t, la, got, []int{60}) // data flowed: b's session is confirmed
	inits := r.captured(udpMsgInit)
	if len(inits) == 0 {
		t.Fatal("no init captured")
	}
	r.inject(inits[0])
	waitFor(t, "handshake-replay", func() bool { return b.Stats()["handshake-replay"] == 1 })
	// A new dial of the same daemon and link is newer: accepted; the old
	// init, replayed after it, is older: refused.
	la2, lb2, err := dialAccept(t, a, b, []netip.AddrPort{r.addr()}, "a", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = la2, lb2
	before := b.Stats()["handshake-replay"]
	r.inject(inits[0])
	waitFor(t, "second handshake-replay", func() bool { return b.Stats()["handshake-replay"] == before+1 })
	actx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if in, err := b.Accept(actx); err == nil {
		t.Fatalf("a replayed init reached Accept: %+v", in.Hello)
	}
	if n := b.sessionCount(); n != 2 {
		t.Fatalf("%d sessions, want 2", n)
	}
	lb.Close()
	wg.Wait()
}

// A NAT re-binding moves a's address as b sees it: b follows after the
// first authenticated datagram from the new address.
func TestUDPRoaming(t *testing.T) {
	k, _ := GenerateKey()
	a := listenUDPTest(t, k, nil)
	b := listenUDPTest(t, k, nil)
	r := newUDPRelay(t, apOf(b.Addr()))
	la, lb, err := dialAccept(t, a, b, []netip.AddrPort{r.addr()}, "a", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	gotA, gotB := make(chan []byte, 8), make(chan []byte, 8)
	wg.Add(2)
	go pump(la, gotA, &wg)
	go pump(lb, gotB, &wg)
	sendAndCheck(t, la, gotB, []int{100})
	sendAndCheck(t, lb, gotA, []int{100})
	r.rebind(t)
	sendAndCheck(t, la, gotB, []int{100})
	if got := apOf(lb.RemoteAddr()); got != r.backAddr() {
		t.Fatalf("b still sends to %v, want %v", got, r.backAddr())
	}
	sendAndCheck(t, lb, gotA, []int{1514, 9000})
	if b.Stats()["roam"] != 1 {
		t.Fatalf("stats: %v", b.Stats())
	}
	la.Close()
	lb.Close()
	wg.Wait()
}

// ---- hostile and odd traffic ----

func TestUDPGarbageFlood(t *testing.T) {
	k, _ := GenerateKey()
	p, err := newUDPPair(t, k, k)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	got := make(chan []byte, 64)
	wg.Add(1)
	go pump(p.lb, got, &wg)
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	to := apOf(p.b.Addr())
	rng := mrand.New(mrand.NewPCG(5, 6))
	idx := p.lb.t.(*udpSession).local
	const flood = 20000
	buf := make([]byte, 3000)
	for i := 0; i < flood; i++ {
		n := rng.IntN(len(buf))
		rand.Read(buf[:n])
		if n > 0 {
			buf[0] = byte(rng.IntN(6))
		}
		if n >= 5 && i%3 == 0 { // aim at the live session
			binary.BigEndian.PutUint32(buf[1:], idx)
			buf[0] = udpMsgTransport
		}
		c.WriteToUDPAddrPort(buf[:n], to)
		if i%100 == 0 {
			time.Sleep(time.Millisecond) // let the reader keep up (under -race too): this tests handling, not overflow
		}
	}
	waitFor(t, "the flood to be processed", func() bool {
		st := p.b.Stats()
		var n uint64
		for _, k := range []string{"stranger", "bad-mac", "truncated", "unknown-session", "handshake-bad", "punch", "too-big", "stun"} {
			n += st[k]
		}
		return n >= flood*9/10
	})
	t.Logf("after the flood: %v", p.b.Stats())
	if p.b.sessionCount() != 1 || p.b.pendingCount() != 0 || p.b.Stats()["handshakes"] != 1 {
		t.Fatalf("the flood opened something: %d sessions, %d pending", p.b.sessionCount(), p.b.pendingCount())
	}
	select {
	case f := <-got:
		t.Fatalf("garbage delivered as a frame of %d bytes", len(f))
	default:
	}
	sendAndCheck(t, p.la, got, []int{64, 1514})
	p.lb.Close()
	wg.Wait()
}

func TestUDPPunchCounted(t *testing.T) {
	k, _ := GenerateKey()
	a := listenUDPTest(t, k, nil)
	b := listenUDPTest(t, k, nil)
	a.Punch([]netip.AddrPort{apOf(b.Addr())}, 350*time.Millisecond)
	waitFor(t, "punches", func() bool { return b.Stats()["punch"] >= 3 })
	time.Sleep(300 * time.Millisecond)
	n := b.Stats()["punch"]
	time.Sleep(300 * time.Millisecond)
	if b.Stats()["punch"] != n || n > 6 {
		t.Fatalf("punching went on: %d", n)
	}
	if b.sessionCount() != 0 || b.pendingCount() != 0 || a.Stats()["rx-datagrams"] != 0 {
		t.Fatal("a punch was answered or opened something")
	}
	// Punching on a closed mux does nothing (and leaks nothing).
	a.Close()
	a.Punch([]netip.AddrPort{apOf(b.Addr())}, time.Second)
}

func TestUDPSTUNHandler(t *testing.T) {
	k, _ := GenerateKey()
	m := listenUDPTest(t, k, nil)
	type pkt struct {
		b    []byte
		from netip.AddrPort
	}
	got := make(chan pkt, 4)
	m.SetPacketHandler(func(b []byte, from netip.AddrPort) { got <- pkt{bytes.Clone(b), from} })
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// A binding request (type 0x0001) and a success response (0x0101,
	// whose first byte is our init type).
	for _, typ := range []uint16{0x0001, 0x0101} {
		req := make([]byte, 20)
		binary.BigEndian.PutUint16(req[0:], typ)
		binary.BigEndian.PutUint32(req[4:], stunMagicCookie)
		rand.Read(req[8:])
		c.WriteToUDPAddrPort(req, apOf(m.Addr()))
		select {
		case p := <-got:
			if !bytes.Equal(p.b, req) || p.from != apOf(c.LocalAddr()) {
				t.Fatalf("handler got %x from %v", p.b, p.from)
			}
		case <-time.After(2 * time.Second):
			t.Fatal("STUN message did not reach the handler")
		}
	}
	if err := m.WriteTo([]byte("reply"), apOf(c.LocalAddr())); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 100)
	n, _, err := c.ReadFromUDPAddrPort(buf)
	if err != nil || string(buf[:n]) != "reply" {
		t.Fatalf("WriteTo: %q %v", buf[:n], err)
	}
	if m.Stats()["stun"] != 2 || m.Stats()["handshake-bad"] != 0 {
		t.Fatalf("stats: %v", m.Stats())
	}
}

func TestUDPCloseOneSessionOthersWork(t *testing.T) {
	shortKeepalive(t, 50*time.Millisecond, 400*time.Millisecond)
	k, _ := GenerateKey()
	b := listenUDPTest(t, k, nil)
	a1 := listenUDPTest(t, k, nil)
	a2 := listenUDPTest(t, k, nil)
	to := []netip.AddrPort{apOf(b.Addr())}
	l1, r1, err := dialAccept(t, a1, b, to, "a1", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	l2, r2, err := dialAccept(t, a2, b, to, "a2", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	got1, got2, back2 := make(chan []byte, 8), make(chan []byte, 8), make(chan []byte, 8)
	wg.Add(4)
	go pump(l1, got1, &wg)
	go pump(r2, got2, &wg)
	go pump(l2, back2, &wg)
	go pump(r1, make(chan []byte, 8), &wg)
	if b.sessionCount() != 2 {
		t.Fatalf("%d sessions", b.sessionCount())
	}
	r1.Close()
	waitFor(t, "the session to go", func() bool { return b.sessionCount() == 1 })
	select { // its peer notices by keepalive
	case <-l1.Done():
		t.Logf("a1's link: %v", l1.Err())
	case <-time.After(3 * time.Second):
		t.Fatal("the closed session's peer did not notice")
	}
	sendAndCheck(t, l2, got2, []int{100, 1514})
	sendAndCheck(t, r2, back2, []int{100, 1514})
	// Closing the mux ends the rest; Accept and Dial report net.ErrClosed.
	b.Close()
	<-r2.Done()
	if _, err := b.Accept(context.Background()); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after Close: %v", err)
	}
	if _, err := b.Dial(context.Background(), to, Hello{Name: "b"}, nil, nil); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Dial after Close: %v", err)
	}
	l2.Close()
	wg.Wait()
}

// An Incoming nobody answers expires and frees its slot.
func TestUDPPendingExpires(t *testing.T) {
	old := HandshakeTimeout
	HandshakeTimeout = 300 * time.Millisecond
	defer func() { HandshakeTimeout = old }()
	k, _ := GenerateKey()
	a := listenUDPTest(t, k, nil)
	b := listenUDPTest(t, k, nil)
	_, err := a.Dial(context.Background(), []netip.AddrPort{apOf(b.Addr())}, Hello{Name: "a"}, quietLog(), nil)
	if err == nil || !strings.Contains(err.Error(), "no answer") {
		t.Fatalf("err = %v", err)
	}
	if b.Stats()["handshake-dup"] == 0 {
		t.Fatalf("re-sent inits not recognised: %v", b.Stats())
	}
	waitFor(t, "expiry", func() bool { return b.pendingCount() == 0 })
	in, err := b.Accept(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := in.Accept(Hello{Name: "b"}, quietLog(), nil); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("late accept: %v", err)
	}
	if b.sessionCount() != 0 {
		t.Fatal("late accept opened a session")
	}
}

// ---- bulk ----

type streamResult struct {
	sent, recv       int
	sumSent, sumRecv uint64
	elapsed          time.Duration
}

// streamFrames sends n frames of size bytes from tx to rx like a windowed
// stream (at most window frames in flight, as TCP would keep), each frame
// numbered; the checksums are sums of per-frame CRCs. Frames lost on the way
// leave recv < sent. Both links are closed at the end (tx is read
// meanwhile, so that its keepalives see the peer).
func streamFrames(tb testing.TB, tx, rx *Link, n, size int, checksum bool) streamResult {
	const window = 256
	var wg sync.WaitGroup
	wg.Add(1)
	go pump(tx, make(chan []byte, 16), &wg)
	defer wg.Wait()
	defer tx.Close()
	var recv atomic.Int64
	var sumRecv uint64
	done := make(chan struct{})
	go func() {
		defer close(done)
		bufs := make([][]byte, rx.BatchSize())
		sizes := make([]int, len(bufs))
		for i := range bufs {
			bufs[i] = make([]byte, bridge.BufSize)
		}
		for {
			k, err := rx.Read(bufs, sizes, bridge.Headroom)
			for i := 0; i < k; i++ {
				if checksum {
					sumRecv += uint64(crc32.ChecksumIEEE(bufs[i][bridge.Headroom : bridge.Headroom+sizes[i]]))
				}
			}
			if recv.Add(int64(k)) >= int64(n) || err != nil {
				return
			}
		}
	}()
	bufs := make([][]byte, linkBatch)
	for i := range bufs {
		bufs[i] = make([]byte, bridge.Headroom+size, bridge.BufSize)
		rand.Read(bufs[i])
	}
	var res streamResult
	lost := 0 // frames given up on
	start := time.Now()
	for res.sent < n {
		for stall := time.Now(); res.sent-lost-int(recv.Load()) > window-linkBatch; {
			if time.Since(stall) > time.Second { // lost in flight: write them off
				lost = res.sent - int(recv.Load())
				break
			}
			time.Sleep(20 * time.Microsecond)
		}
		k := min(linkBatch, n-res.sent)
		for i := 0; i < k; i++ {
			binary.BigEndian.PutUint64(bufs[i][bridge.Headroom+14:], uint64(res.sent+i))
			if checksum {
				res.sumSent += uint64(crc32.ChecksumIEEE(bufs[i][bridge.Headroom:]))
			}
		}
		if _, err := tx.Write(bufs[:k], bridge.Headroom); err != nil {
			tb.Fatalf("write: %v", err)
		}
		res.sent += k
	}
	for last, at := recv.Load(), time.Now(); recv.Load() < int64(n); {
		if r := recv.Load(); r != last {
			last, at = r, time.Now()
		} else if time.Since(at) > 500*time.Millisecond {
			break
		}
		time.Sleep(time.Millisecond)
	}
	res.elapsed = time.Since(start)
	rx.Close()
	<-done
	res.recv, res.sumRecv = int(recv.Load()), sumRecv
	return res
}

func TestUDPBulkStream(t *testing.T) {
	k, _ := GenerateKey()
	p, err := newUDPPair(t, k, k)
	if err != nil {
		t.Fatal(err)
	}
	const size = 1514
	n := (50 << 20) / size
	res := streamFrames(t, p.la, p.lb, n, size, true)
	drops := res.sent - res.recv
	mbps := float64(res.recv*size*8) / res.elapsed.Seconds() / 1e6
	t.Logf("%d frames (%d MiB) in %v: %.0f Mbit/s, %d dropped; b stats %v", res.sent, res.sent*size>>20, res.elapsed.Round(time.Millisecond), mbps, drops, p.b.Stats())
	if drops == 0 && res.sumRecv != res.sumSent {
		t.Fatalf("every frame arrived but the checksums differ: %x != %x", res.sumRecv, res.sumSent)
	}
	if drops < 0 || drops > n/100 {
		t.Fatalf("%d of %d frames dropped on loopback", drops, n)
	}
	if st := p.b.Stats(); st["bad-mac"] != 0 || st["replay"] != 0 || st["frag-error"] != 0 {
		t.Fatalf("stats: %v", st)
	}
}

func TestUDPLinkZeroAlloc(t *testing.T) {
	if udpRaceEnabled {
		t.Skip("allocation counts are meaningless under the race detector")
	}
	shortKeepalive(t, time.Hour, time.Hour) // no pings during the count
	k, _ := GenerateKey()
	p, err := newUDPPair(t, k, k)
	if err != nil {
		t.Fatal(err)
	}
	wsizes := make([]int, linkBatch)
	for i := range wsizes {
		wsizes[i] = []int{1514, 60, 9000, 1400}[i%4]
	}
	wbufs, _ := frameBatch(wsizes)
	rbufs := make([][]byte, linkBatch)
	sizes := make([]int, linkBatch)
	for i := range rbufs {
		rbufs[i] = make([]byte, bridge.BufSize)
	}
	watchdog := time.AfterFunc(20*time.Second, func() { p.lb.Close() })
	defer watchdog.Stop()
	round := func() {
		if _, err := p.la.Write(wbufs, bridge.Headroom); err != nil {
			t.Fatal(err)
		}
		for got := 0; got < len(wbufs); {
			n, err := p.lb.Read(rbufs, sizes, bridge.Headroom)
			if err != nil {
				t.Fatal("read failed (a datagram lost?)")
			}
			got += n
		}
	}
	for i := 0; i < 20; i++ {
		round()
	}
	allocs := testing.AllocsPerRun(100, round)
	if allocs != 0 {
		t.Fatalf("%.2f allocations per batch of %d frames, want 0", allocs, linkBatch)
	}
}

// BenchmarkUDPLink moves 1514-byte frames through a link pair on loopback,
// windowed as a stream would be; MB/s counts frame bytes delivered.
func BenchmarkUDPLink(b *testing.B) {
	k, _ := GenerateKey()
	p, err := newUDPPair(b, k, k)
	if err != nil {
		b.Fatal(err)
	}
	const size = 1514
	b.SetBytes(size)
	b.ReportAllocs()
	b.ResetTimer()
	res := streamFrames(b, p.la, p.lb, b.N, size, false)
	b.StopTimer()
	b.ReportMetric(float64(res.recv)/res.elapsed.Seconds(), "frames/s")
	b.ReportMetric(float64(res.recv*size*8)/res.elapsed.Seconds()/1e6, "Mbit/s")
	b.ReportMetric(100*float64(res.sent-res.recv)/float64(res.sent), "loss%")
}

// A UDP link in a switch takes the push path for frames that come alone:
// every frame arrives once, in order when sent one at a time, and the mux
// counts the pushed ones.
func TestUDPLinkPushPath(t *testing.T) {
	k, _ := GenerateKey()
	p, err := newUDPPair(t, k, k)
	if err != nil {
		t.Fatal(err)
	}
	sw := bridge.New(bridge.Config{})
	defer sw.Close()
	vm := bridgetest.NewChanPort(4096)
	if err := sw.AddPort("link", bridge.RoleFast, p.la); err != nil {
		t.Fatal(err)
	}
	if err := sw.AddPort("vm", bridge.RoleLocal, vm); err != nil {
		t.Fatal(err)
	}
	a, b := [6]byte{0x02, 0, 0, 0, 0, 1}, [6]byte{0x02, 0, 0, 0, 0, 2}
	vm.Inject(bridgetest.Frame(a, b, make([]byte, 46))) // b is on vm
	const n = 400
	for i := range n {
		payload := make([]byte, 46)
		binary.BigEndian.PutUint32(payload, uint32(i))
		f := bridgetest.Frame(b, a, payload)
		buf := make([]byte, bridge.Headroom+len(f), bridge.BufSize)
		copy(buf[bridge.Headroom:], f)
		if _, err := p.lb.Write([][]byte{buf}, bridge.Headroom); err != nil {
			t.Fatal(err)
		}
		got, ok := vm.Expect(5 * time.Second)
		if !ok {
			t.Fatalf("frame %d never reached the VM port", i)
		}
		if seq := binary.BigEndian.Uint32(got[14:]); seq != uint32(i) {
			t.Fatalf("frame %d arrived where %d was due", seq, i)
		}
	}
	st := p.a.Stats()
	if st["pushed"] == 0 {
		t.Fatalf("no frame took the push path: %v", st)
	}
	// The mux counts a pushed frame's bytes just after the switch took it,
	// which may be after it arrived.
	waitFor(t, "the link's counters", func() bool {
		ps, _ := sw.PortStats("link")
		return ps.RxFrames == n && p.la.RxBytes() == uint64(n*60)
	})
	t.Logf("%d of %d lone frames pushed", st["pushed"], n)
}

// A UDP link that carries super-frames pushes them to the switch even when
// they do not come alone (each is many datagrams): every one arrives whole
// and in order, and the mux counts them pushed. One whose ciphertext was
// tampered with on the way is counted and goes nowhere, and the next one
// still takes the push path.
func TestUDPLinkPushesSuperFrames(t *testing.T) {
	k, _ := GenerateKey()
	a, b := listenUDPTest(t, k, nil), listenUDPTest(t, k, nil)
	r := newUDPRelay(t, apOf(a.Addr()))
	var tamper atomic.Bool
	r.mu.Lock()
	r.pass = func(d []byte) bool {
		if tamper.Load() && d[0] == udpMsgSealed {
			d[len(d)-1] ^= 1
		}
		return true
	}
	r.mu.Unlock()
	lb, la, err := dialAcceptHellos(t, b, a, []netip.AddrPort{r.addr()},
		Hello{Name: "a", Role: "host", Link: "fast-a", Offload: true}, Hello{Name: "b", Role: "host", Offload: true}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !la.Offloads() || !lb.Offloads() {
		t.Fatal("a loopback link between two offering daemons carries no super-frames")
	}
	sw := bridge.New(bridge.Config{})
	defer sw.Close()
	vm := bridgetest.NewOffloadChanPort(64)
	if err := sw.AddPort("link", bridge.RoleFast, la); err != nil {
		t.Fatal(err)
	}
	if err := sw.AddPort("vm", bridge.RoleLocal, vm); err != nil {
		t.Fatal(err)
	}
	src, dst := [6]byte{0x02, 0, 0, 0, 0, 1}, [6]byte{0x02, 0, 0, 0, 0, 2}
	vm.Inject(append(make([]byte, bridge.VnetHdrLen), bridgetest.Frame(src, dst, make([]byte, 46))...)) // dst is on vm
	const n = 40
	var want uint64
	for i := range n + 1 {
		buf, _ := benchFrame(bridge.MaxFrame + 1000*i)
		copy(buf[bridge.Headroom:], dst[:])
		copy(buf[bridge.Headroom+6:], src[:])
		binary.BigEndian.PutUint32(buf[bridge.Headroom+14:], uint32(i))
		tamper.Store(i == n/2)
		if i != n/2 {
			want += uint64(len(buf) - bridge.Headroom)
		}
		if _, err := lb.Write([][]byte{buf}, bridge.Headroom); err != nil {
			t.Fatal(err)
		}
		if i == n/2 {
			waitFor(t, "the tampered super-frame counted", func() bool { return a.Stats()["bad-mac"] == 1 })
			continue
		}
		expectSuper(t, vm, buf, i)
	}
	if st := a.Stats(); st["pushed"] < n/2 {
		t.Fatalf("%d of %d super-frames took the push path: %v", st["pushed"], n, st)
	}
	waitFor(t, "the link's counters", func() bool { // see TestUDPLinkPushPath
		ps, _ := sw.PortStats("link")
		return ps.RxFrames == n && la.RxBytes() == want
	})
	t.Logf("%d of %d super-frames pushed", a.Stats()["pushed"], n)
}
