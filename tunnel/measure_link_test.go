package tunnel

import (
	"net/netip"
	"sync"
	"testing"
	"time"

	"vnet/bridge"
)

// readPaced reads frames from l at rate Mbit/s of frame bytes until l
// closes: a slow receiver, which the sender's transport must wait for.
func readPaced(l *Link, rate float64, wg *sync.WaitGroup) {
	defer wg.Done()
	bufs := make([][]byte, l.BatchSize())
	sizes := make([]int, len(bufs))
	for i := range bufs {
		bufs[i] = make([]byte, bridge.BufSize)
	}
	start, got := time.Now(), 0
	for {
		n, err := l.Read(bufs, sizes, bridge.Headroom)
		if err != nil {
			return
		}
		for _, s := range sizes[:n] {
			got += s
		}
		time.Sleep(time.Until(start.Add(time.Duration(float64(got) * 8 / rate * 1e3))))
	}
}

// writeFor writes batches of 1514-byte frames to l for d, every gap (0:
// back to back).
func writeFor(t *testing.T, l *Link, d, gap time.Duration, batch int) {
	bufs := make([][]byte, batch)
	for i := range bufs {
		bufs[i] = make([]byte, bridge.Headroom+1514, bridge.BufSize)
		copy(bufs[i][bridge.Headroom:], []byte{2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 8, 0})
	}
	for end := time.Now().Add(d); time.Now().Before(end); {
		if _, err := l.Write(bufs, bridge.Headroom); err != nil {
			t.Fatalf("write: %v", err)
		}
		time.Sleep(gap)
	}
}

// A TCP link whose peer reads slowly: the writer waits for the socket, but
// TCP says it waited for the receiver's window, so the sender claims no
// capacity; the receiver, whose peer's pings queue, measures the rate it
// reads at.
func TestLinkMeasuresTCPBacklog(t *testing.T) {
	shortKeepalive(t, 200*time.Millisecond, 10*time.Second)
	k, _ := GenerateKey()
	p, err := newPair(t, k, k)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go pump(p.a, make(chan []byte, 16), &wg)
	go readPaced(p.b, 50, &wg)
	defer wg.Wait()
	defer p.a.Close()
	waitFor(t, "idle echoes both ways", func() bool { return p.a.RTT() > 0 && p.b.RTT() > 0 })
	time.Sleep(500 * time.Millisecond) // a few more: the quickest one-way delay
	writeFor(t, p.a, 3*time.Second, 0, linkBatch)
	ma, mb := p.a.Measurement(), p.b.Measurement()
	t.Logf("sender %+v", ma)
	t.Logf("receiver %+v", mb)
	if ma.TxCapacityMbps != 0 {
		t.Errorf("receiver-limited sender: capacity %.1f Mbit/s, want none", ma.TxCapacityMbps)
	}
	if !near(mb.RxCapacityMbps, 50, 0.15) {
		t.Errorf("receiver's capacity %.1f Mbit/s, want 50 ± 15%%", mb.RxCapacityMbps)
	}
	if ma.TransportRTT <= 0 || ma.TransportRTT > 100*time.Millisecond {
		t.Errorf("TCP_INFO's min RTT on loopback: %v", ma.TransportRTT)
	}
	if ma.TxLoss > 0.01 {
		t.Errorf("retransmits on loopback: loss %v", ma.TxLoss)
	}
}

// A UDP link whose path drops every 50th datagram: the receiver counts 2 %
// loss from the gaps in the counters, and calls the path full.
func TestLinkMeasuresUDPLoss(t *testing.T) {
	shortKeepalive(t, 200*time.Millisecond, 10*time.Second)
	k, _ := GenerateKey()
	a, b := listenUDPTest(t, k, nil), listenUDPTest(t, k, nil)
	relay := newUDPRelay(t, apOf(b.Addr()))
	n := 0
	relay.mu.Lock()
	relay.pass = func(d []byte) bool {
		if d[0] != udpMsgTransport && d[0] != udpMsgSealed {
			return true
		}
		n++
		return n%50 != 0
	}
	relay.mu.Unlock()
	la, lb, err := dialAccept(t, a, b, []netip.AddrPort{relay.addr()}, "a", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go pump(la, make(chan []byte, 16), &wg)
	go pump(lb, make(chan []byte, 1<<16), &wg)
	defer wg.Wait()
	defer la.Close()
	defer lb.Close()
	writeFor(t, la, 2*time.Second, 2*time.Millisecond, 8)
	m := lb.Measurement()
	t.Logf("receiver %+v", m)
	if m.RxLoss < 0.01 || m.RxLoss > 0.03 {
		t.Errorf("loss %.4f, want 0.02 ± 0.01", m.RxLoss)
	}
	if m.RxCapacityMbps <= 0 {
		t.Errorf("a lossy path is a full one: no capacity estimate")
	}
	if m.TransportRTT != 0 || la.Measurement().TxLoss != 0 {
		t.Errorf("UDP has no transport RTT nor sender-side loss: %+v", la.Measurement())
	}
}

func TestLinkMeasuresQUICRTT(t *testing.T) {
	k, _ := GenerateKey()
	p, err := newQUICPair(t, k, k, "")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go pump(p.a, make(chan []byte, 16), &wg)
	go pump(p.b, make(chan []byte, 16), &wg)
	defer wg.Wait()
	defer p.a.Close()
	defer p.b.Close()
	p.a.measureTick(p.a.since())
	if m := p.a.Measurement(); m.TransportRTT <= 0 || m.TransportRTT > 100*time.Millisecond {
		t.Fatalf("quic-go's min RTT on loopback: %+v", m)
	}
}
