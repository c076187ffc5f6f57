package bridge_test

import (
	"encoding/binary"
	"math/rand/v2"
	"testing"
	"time"

	"vnet/bridge"
	"vnet/bridge/bridgetest"
)

// quickPort is a ChanPort that says its writes are quick, with a Write
// that sometimes dawdles, so frames queue behind it while lone ones arrive.
type quickPort struct {
	*bridgetest.ChanPort
	slow *rand.Rand // used by the writer side only, one at a time
}

func (q *quickPort) QuickWrites() bool { return true }

func (q *quickPort) Write(bufs [][]byte, offset int) (int, error) {
	if q.slow.IntN(4) == 0 {
		time.Sleep(time.Duration(q.slow.IntN(300)) * time.Microsecond)
	}
	return q.ChanPort.Write(bufs, offset)
}

// TestQuickPortKeepsOrder: frames to a quick port arrive in the order they
// were sent, whether a reader wrote them itself (lone frames to an idle
// writer) or queued them (bursts, or a writer still busy), and none is lost.
func TestQuickPortKeepsOrder(t *testing.T) {
	const n = 3000
	sw := bridge.New(bridge.Config{})
	t.Cleanup(sw.Close)
	in := bridgetest.NewChanPort(n)
	out := &quickPort{ChanPort: bridgetest.NewChanPort(n), slow: rand.New(rand.NewPCG(1, 2))}
	if err := sw.AddPort("in", bridge.RoleLocal, in); err != nil {
		t.Fatal(err)
	}
	if err := sw.AddPort("out", bridge.RoleLocal, out); err != nil {
		t.Fatal(err)
	}
	a, b := [6]byte{0x02, 0, 0, 0, 0, 1}, [6]byte{0x02, 0, 0, 0, 0, 2}
	// b speaks first, so the switch knows where it is.
	out.Inject(bridgetest.Frame(a, b, make([]byte, 46)))
	if _, ok := in.Expect(5 * time.Second); !ok {
		t.Fatal("the first frame was not flooded")
	}
	sendNumbered(n, b, a, func(f []byte, _ bool) { in.Inject(f) })
	expectInOrder(t, out.ChanPort, n)
	st, _ := sw.PortStats("out")
	if st.TxFrames != n || len(st.Drops) != 0 {
		t.Fatalf("out: %d frames written, drops %v; want %d, none", st.TxFrames, st.Drops, n)
	}
}

// sendNumbered sends n frames dst <- src numbered 0..n-1 (the first four
// payload bytes), mostly one at a time with short pauses, sometimes in
// bursts; lone says a frame is alone in its burst.
func sendNumbered(n int, dst, src [6]byte, send func(frame []byte, lone bool)) {
	payload := make([]byte, 46)
	sendNumberedWith(n, func(i int) []byte {
		binary.BigEndian.PutUint32(payload, uint32(i))
		return bridgetest.Frame(dst, src, payload)
	}, send)
}

// sendNumberedWith is sendNumbered with frame i made by frame(i).
func sendNumberedWith(n int, frame func(i int) []byte, send func(frame []byte, lone bool)) {
	rng := rand.New(rand.NewPCG(3, 4))
	for i := 0; i < n; {
		burst := 1 + rng.IntN(3)*rng.IntN(8) // mostly lone frames, sometimes bursts
		for j := 0; j < burst && i < n; j++ {
			send(frame(i), burst == 1)
			i++
		}
		if rng.IntN(3) == 0 {
			time.Sleep(time.Duration(rng.IntN(200)) * time.Microsecond)
		}
	}
}

// expectInOrder checks that out receives frames numbered 0..n-1, in order.
func expectInOrder(t *testing.T, out *bridgetest.ChanPort, n int) {
	t.Helper()
	for want := 0; want < n; want++ {
		f, ok := out.Expect(5 * time.Second)
		if !ok {
			t.Fatalf("frame %d of %d never arrived", want, n)
		}
		if got := int(binary.BigEndian.Uint32(f[14:])); got != want {
			t.Fatalf("frame %d arrived where %d was due", got, want)
		}
	}
}
