package tunnel

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"vnet/bridge"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestKeyRoundTrip(t *testing.T) {
	k, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	k2, err := ParseKey(" " + k.String() + "\n")
	if err != nil || k2 != k {
		t.Fatalf("round trip: %v %v", err, k2 == k)
	}
	for _, bad := range []string{"", "hello", keyPrefix, keyPrefix + "AAAA", k.String()[:20]} {
		if _, err := ParseKey(bad); err == nil {
			t.Errorf("ParseKey(%q) accepted", bad)
		}
	}
}

func TestParseEndpoint(t *testing.T) {
	good := map[string]Endpoint{
		"tcp://127.0.0.1:5000": {"tcp", "127.0.0.1:5000"},
		"tcp://:5000":          {"tcp", ":5000"},
		"tcp://[::1]:5000":     {"tcp", "[::1]:5000"},
	}
	for s, want := range good {
		if got, err := ParseEndpoint(s); err != nil || got != want {
			t.Errorf("ParseEndpoint(%q) = %v, %v", s, got, err)
		}
	}
	for _, s := range []string{"127.0.0.1:5000", "tcp://host", "foo://a:1", "tcp://a:1/x", "udp://a"} {
		if _, err := ParseEndpoint(s); err == nil {
			t.Errorf("ParseEndpoint(%q) accepted", s)
		}
	}
}

func TestHeader(t *testing.T) {
	var b [HeaderLen]byte
	PutHeader(b[:], MsgFrame, 1514)
	typ, n, err := ParseHeader(b[:])
	if err != nil || typ != MsgFrame || n != 1514 {
		t.Fatalf("got %d %d %v", typ, n, err)
	}
	for _, c := range []struct {
		typ byte
		n   int
	}{{MsgFrame, 3}, {MsgFrame, bridge.MaxFrame + 1}, {MsgControl, 0}, {MsgControl, MaxControl + 1}, {MsgPing, 7}, {9, 10}} {
		PutHeader(b[:], c.typ, c.n)
		if _, _, err := ParseHeader(b[:]); err == nil {
			t.Errorf("header %d/%d accepted", c.typ, c.n)
		}
	}
}

func FuzzHeader(f *testing.F) {
	f.Add([]byte{1, 0, 5, 0xea})
	f.Add([]byte{2, 0, 0, 10})
	f.Add([]byte{3, 0, 0, 8})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		typ, n, err := ParseHeader(b)
		if err != nil {
			return
		}
		var out [HeaderLen]byte
		PutHeader(out[:], typ, n)
		if !bytes.Equal(out[:], b[:HeaderLen]) {
			t.Fatalf("re-encoding %x gave %x", b[:HeaderLen], out)
		}
		if typ == MsgFrame && (n < bridge.MinFrame || n > bridge.MaxFrame) {
			t.Fatalf("accepted frame size %d", n)
		}
	})
}

type pair struct {
	ln      *Listener
	a, b    *Link // a dialed b
	ctrlA   chan string
	ctrlB   chan string
	closeFn func()
}

func quietLog() *slog.Logger { return slog.New(slog.DiscardHandler) }

// newPair connects two links over loopback; keyB may differ from keyA.
func newPair(t *testing.T, keyA, keyB Key) (*pair, error) {
	t.Helper()
	credA, _ := NewCredentials(keyA, "a")
	credB, _ := NewCredentials(keyB, "b")
	ep, _ := ParseEndpoint("tcp://127.0.0.1:0")
	ln, err := Listen(ep, credB, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	p := &pair{ln: ln, ctrlA: make(chan string, 10), ctrlB: make(chan string, 10)}
	acc := make(chan *Link, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		in, err := ln.Accept(ctx)
		if err != nil {
			acc <- nil
			return
		}
		l, _ := in.Accept(Hello{Name: "b", Role: "proxy"}, quietLog(), func(_ *Link, m []byte) { p.ctrlB <- string(m) })
		acc <- l
	}()
	dep := Endpoint{"tcp", ln.Addr().String()}
	a, err := Dial(context.Background(), dep, credA, Hello{Name: "a", Role: "host", Link: "star-a"}, quietLog(),
		func(_ *Link, m []byte) { p.ctrlA <- string(m) })
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

// pump reads frames from l until it closes, sending copies to ch.
func pump(l *Link, ch chan<- []byte, wg *sync.WaitGroup) {
	defer wg.Done()
	bufs := make([][]byte, l.BatchSize())
	sizes := make([]int, len(bufs))
	for i := range bufs {
		bufs[i] = make([]byte, bridge.BufSize)
	}
	for {
		n, err := l.Read(bufs, sizes, bridge.Headroom)
		for i := 0; i < n; i++ {
			ch <- append([]byte(nil), bufs[i][bridge.Headroom:bridge.Headroom+sizes[i]]...)
		}
		if err != nil {
			close(ch)
			return
		}
	}
}

func TestLinkCarriesFramesAndControl(t *testing.T) {
	k, _ := GenerateKey()
	p, err := newPair(t, k, k)
	if err != nil {
		t.Fatal(err)
	}
	if p.a.Peer().Name != "b" || p.b.Peer().Name != "a" || p.b.Peer().Link != "star-a" {
		t.Fatalf("hellos: %+v %+v", p.a.Peer(), p.b.Peer())
	}
	var wg sync.WaitGroup
	gotB := make(chan []byte, 1000)
	wg.Add(1)
	go pump(p.b, gotB, &wg)
	var sent [][]byte
	for batch := 0; batch < 20; batch++ {
		bufs := make([][]byte, 10)
		for i := range bufs {
			size := bridge.MinFrame + (batch*10+i)*7%1500
			if batch == 19 && i == 9 {
				size = bridge.MaxFrame
			}
			b := make([]byte, bridge.Headroom+size)
			rand.Read(b[bridge.Headroom:])
			sent = append(sent, append([]byte(nil), b[bridge.Headroom:]...))
			bufs[i] = b
		}
		if n, err := p.a.Write(bufs, bridge.Headroom); n != 10 || err != nil {
			t.Fatalf("write: %d %v", n, err)
		}
		if batch == 5 {
			p.a.SendControl([]byte(`{"op":"test"}`))
		}
	}
	for i, want := range sent {
		select {
		case got := <-gotB:
			if !bytes.Equal(got, want) {
				t.Fatalf("frame %d differs", i)
			}
		case <-time.After(3 * time.Second):
			t.Fatalf("frame %d not received", i)
		}
	}
	select {
	case m := <-p.ctrlB:
		if m != `{"op":"test"}` {
			t.Fatalf("control = %q", m)
		}
	case <-time.After(time.Second):
		t.Fatal("control message lost")
	}
	if p.a.TxBytes() == 0 || p.a.TxBytes() != p.b.RxBytes() {
		t.Fatalf("byte counters: tx %d rx %d", p.a.TxBytes(), p.b.RxBytes())
	}
	p.a.Close()
	wg.Wait()
}

func TestWrongKeyRefused(t *testing.T) {
	k1, _ := GenerateKey()
	k2, _ := GenerateKey()
	_, err := newPair(t, k1, k2)
	if err == nil || !errors.Is(err, ErrAuth) {
		t.Fatalf("dial with the wrong key: err = %v, want authentication failed", err)
	}
	if !strings.Contains(err.Error(), "authentication failed") {
		t.Fatalf("error does not say so: %v", err)
	}
}

func TestPlainTCPRefused(t *testing.T) {
	k, _ := GenerateKey()
	cred, _ := NewCredentials(k, "b")
	ln, err := Listen(Endpoint{"tcp", "127.0.0.1:0"}, cred, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte{1, 0, 0, 20, 'i', 'n', 'j', 'e', 'c', 't'})
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	io.Copy(io.Discard, c) // the listener hangs up
	c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if in, err := ln.Accept(ctx); err == nil {
		t.Fatalf("a plain TCP peer got through: %+v", in.Hello)
	}
}

func TestKeepaliveDetectsDeadPeer(t *testing.T) {
	oldI, oldD := KeepaliveInterval, DeadAfter
	KeepaliveInterval, DeadAfter = 50*time.Millisecond, 300*time.Millisecond
	defer func() { KeepaliveInterval, DeadAfter = oldI, oldD }()
	k, _ := GenerateKey()
	p, err := newPair(t, k, k)
	if err != nil {
		t.Fatal(err)
	}
	// b reads (and so answers pings), a reads too: both stay up.
	var wg sync.WaitGroup
	ga, gb := make(chan []byte, 10), make(chan []byte, 10)
	wg.Add(2)
	go pump(p.a, ga, &wg)
	go pump(p.b, gb, &wg)
	time.Sleep(500 * time.Millisecond)
	select {
	case <-p.a.Done():
		t.Fatalf("healthy link died: %v", p.a.Err())
	default:
	}
	if p.a.RTT() <= 0 {
		t.Fatal("no RTT measured")
	}
	// b goes silent without closing: a must notice.
	p.b.fail(nil) // closes b's socket... which a sees as EOF; test the silent case below instead
	select {
	case <-p.a.Done():
	case <-time.After(2 * time.Second):
		t.Fatal("a did not notice b's death")
	}
	wg.Wait()
}

func TestKeepaliveDetectsSilentPeer(t *testing.T) {
	oldI, oldD := KeepaliveInterval, DeadAfter
	KeepaliveInterval, DeadAfter = 50*time.Millisecond, 300*time.Millisecond
	defer func() { KeepaliveInterval, DeadAfter = oldI, oldD }()
	k, _ := GenerateKey()
	p, err := newPair(t, k, k)
	if err != nil {
		t.Fatal(err)
	}
	// Nobody reads b: b never answers pings and never sends, like a cut cable.
	p.b.routineStop()
	var wg sync.WaitGroup
	ga := make(chan []byte, 10)
	wg.Add(1)
	go pump(p.a, ga, &wg)
	select {
	case <-p.a.Done():
		if !strings.Contains(p.a.Err().Error(), "keepalive timeout") {
			t.Fatalf("died for another reason: %v", p.a.Err())
		}
	case <-time.After(3 * time.Second):
		t.Fatal("silent peer not detected")
	}
	wg.Wait()
}

// A link that is sending gives up on a silent peer after BusyDeadAfter; an
// idle one waits for DeadAfter.
func TestKeepaliveBusyLinkFailsSooner(t *testing.T) {
	oldI, oldD, oldB := KeepaliveInterval, DeadAfter, BusyDeadAfter
	KeepaliveInterval, DeadAfter, BusyDeadAfter = 50*time.Millisecond, time.Minute, 300*time.Millisecond
	defer func() { KeepaliveInterval, DeadAfter, BusyDeadAfter = oldI, oldD, oldB }()
	k, _ := GenerateKey()
	p, err := newPair(t, k, k)
	if err != nil {
		t.Fatal(err)
	}
	p.b.routineStop() // b never answers and never sends
	var wg sync.WaitGroup
	ga := make(chan []byte, 10)
	wg.Add(1)
	go pump(p.a, ga, &wg)
	time.Sleep(time.Second) // idle: more than BusyDeadAfter of silence, far less than DeadAfter
	select {
	case <-p.a.Done():
		t.Fatalf("an idle link died after a second, DeadAfter is a minute: %v", p.a.Err())
	default:
	}
	frame := make([]byte, bridge.Headroom+100)
	stop := time.After(5 * time.Second)
	for {
		if _, err := p.a.Write([][]byte{frame}, bridge.Headroom); err != nil {
			break
		}
		select {
		case <-p.a.Done():
		case <-stop:
			t.Fatal("a sending link kept a silent peer for 5 s")
		case <-time.After(10 * time.Millisecond):
			continue
		}
		break
	}
	<-p.a.Done()
	if err := p.a.Err(); err == nil || !strings.Contains(err.Error(), "while sending") {
		t.Fatalf("died for another reason: %v", err)
	}
	wg.Wait()
}

func TestBackoff(t *testing.T) {
	b := Backoff{Min: 100 * time.Millisecond, Max: time.Second}
	var last time.Duration
	for i := 0; i < 10; i++ {
		d := b.Next()
		if d < 50*time.Millisecond || d > time.Second {
			t.Fatalf("delay %v out of range", d)
		}
		last = d
	}
	if last < 500*time.Millisecond {
		t.Fatalf("did not grow: %v", last)
	}
	b.Reset()
	if d := b.Next(); d > 100*time.Millisecond {
		t.Fatalf("after reset: %v", d)
	}
}
