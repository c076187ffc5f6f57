package patterns

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func testCtx(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// TestRunTopologies runs every topology with all ranks in this process over
// loopback TCP and checks that every rank finishes and moved exactly one
// message per neighbour per iteration each way.
func TestRunTopologies(t *testing.T) {
	for _, tc := range []struct {
		topo string
		n    int
		dims []int
		size int
	}{
		{"ring", 8, nil, 1000},
		{"ring", 2, nil, 1},
		{"bus", 8, nil, 4096},
		{"mesh2d", 9, nil, 1000},
		{"mesh3d", 8, nil, 1000},
		{"torus2d", 6, []int{2, 3}, 1000},
		{"torus3d", 18, []int{3, 2, 3}, 7},
		{"hypercube", 8, nil, 20000},
		{"tree", 7, nil, 1000},
		{"tree", 10, nil, 9},
		{"all2all", 6, nil, 1000},
		{"neighbor", 8, nil, 1000},
		{"ring", 1, nil, 100},
	} {
		t.Run(tc.topo+"/"+FormatDims([]int{tc.n}), func(t *testing.T) {
			t.Parallel()
			const iters = 6
			cfg := Config{Topology: tc.topo, Dims: tc.dims, Iters: iters, Size: tc.size, Timeout: 20 * time.Second}
			res, err := RunLocal(testCtx(t, 30*time.Second), tc.n, cfg)
			if err != nil {
				t.Fatal(err)
			}
			for r, res := range res {
				nb, _ := NeighborsDims(tc.topo, tc.n, r, tc.dims)
				want := uint64(iters * tc.size * len(nb))
				if res.Rank != r || !slices.Equal(res.Peers, nb) || res.Iters != iters || res.Ranks != tc.n {
					t.Errorf("rank %d: result %+v, want peers %v", r, res, nb)
				}
				if res.Bytes != want || res.BytesRecv != want {
					t.Errorf("rank %d: sent %d, received %d bytes, want %d each", r, res.Bytes, res.BytesRecv, want)
				}
				if res.ItersPerS <= 0 || res.Seconds <= 0 {
					t.Errorf("rank %d: %v iterations/s in %v s", r, res.ItersPerS, res.Seconds)
				}
			}
		})
	}
}

// TestRunCompute checks that the compute phase runs and is accounted for.
func TestRunCompute(t *testing.T) {
	res, err := RunLocal(testCtx(t, 30*time.Second), 3, Config{
		Topology: "ring", Iters: 3, Size: 100, Flops: 8, Reads: 3, Writes: 2, Elements: 1000,
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range res {
		if r.Checksum == 0 || r.ComputeSeconds <= 0 {
			t.Errorf("rank %d: checksum %v, compute %v s", r.Rank, r.Checksum, r.ComputeSeconds)
		}
	}
	// Same work, same checksum on every rank.
	if res[0].Checksum != res[1].Checksum {
		t.Errorf("checksums differ: %v, %v", res[0].Checksum, res[1].Checksum)
	}
	buf := []float64{1, 2, 3}
	if computePhase(buf, 0, 0, 1) != 3 || !slices.Equal(buf, []float64{1, 1, 1}) {
		t.Errorf("writes: %v", buf)
	}
}

// freeAddrs returns n loopback addresses nobody listens on (yet).
func freeAddrs(t *testing.T, n int) []string {
	var out []string
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, ln.Addr().String())
		ln.Close()
	}
	return out
}

// TestRunStaggered starts the ranks at different times, highest rank last,
// in reverse: dials to ranks that are not up yet must be retried.
func TestRunStaggered(t *testing.T) {
	const n = 4
	peers := freeAddrs(t, n)
	ctx := testCtx(t, 30*time.Second)
	var wg sync.WaitGroup
	errs := make([]error, n)
	for r := range n {
		wg.Go(func() {
			time.Sleep(time.Duration(r) * 150 * time.Millisecond)
			_, errs[r] = Run(ctx, Config{Rank: r, Peers: peers, Topology: "all2all", Iters: 3, Size: 500, Timeout: 10 * time.Second})
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
}

// fakePeer is rank 1 of a two-rank ring that rank 0 dials: it does the
// handshake and then answers iteration 0 with whatever msg builds.
func fakePeer(t *testing.T, cfg Config, msg func() []byte) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	done := make(chan struct{})
	t.Cleanup(func() { <-done })
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		if _, err := readHello(c); err != nil {
			t.Errorf("fake peer: %v", err)
			return
		}
		me := cfg
		me.Rank = 1
		c.Write(me.hello().encode())
		if msg == nil {
			return
		}
		// Read rank 0's first message, then send ours, then wait for
		// rank 0 to hang up.
		io.ReadFull(c, make([]byte, headerLen+cfg.Size))
		c.Write(msg())
		io.Copy(io.Discard, c)
	}()
	return ln.Addr().String()
}

func message(from int, it uint32, size int, corrupt bool) []byte {
	b := make([]byte, headerLen+size)
	binary.BigEndian.PutUint32(b[0:], msgMagic)
	binary.BigEndian.PutUint32(b[4:], it)
	binary.BigEndian.PutUint32(b[8:], uint32(from))
	binary.BigEndian.PutUint32(b[12:], uint32(size))
	fill(b[headerLen:], from)
	stamp(b[headerLen:], from, it)
	if corrupt {
		b[len(b)-3] ^= 0x40
	}
	return b
}

// TestRunDetectsBadMessages checks that a misordered, misaddressed,
// resized or corrupted message fails the run with a clear error, and that
// a correct one from the same fake passes.
func TestRunDetectsBadMessages(t *testing.T) {
	const size = 64
	for _, tc := range []struct {
		name string
		msg  func() []byte
		want string
	}{
		{"good", func() []byte { return message(1, 0, size, false) }, ""},
		{"next iteration", func() []byte { return message(1, 1, size, false) }, "got iteration 1, want 0"},
		{"other sender", func() []byte { return message(2, 0, size, false) }, "claims to be from rank 2"},
		{"corrupt payload", func() []byte { return message(1, 0, size, true) }, "payload corrupt"},
		{"stale stamp", func() []byte {
			b := message(1, 0, size, false)
			stamp(b[headerLen:], 1, 7) // header says 0, payload 7
			return b
		}, "payload corrupt"},
		{"wrong length", func() []byte {
			b := message(1, 0, size, false)
			binary.BigEndian.PutUint32(b[12:], size+1)
			return b
		}, "65 bytes, want 64"},
		{"garbage", func() []byte { return make([]byte, headerLen+size) }, "bad message header"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{Topology: "ring", Iters: 1, Size: size, Timeout: 10 * time.Second}
			self, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			cfg.Peers = []string{self.Addr().String(), ""}
			cfg.Peers[1] = fakePeer(t, cfg, tc.msg)
			cfg.Listener = self
			res, err := Run(testCtx(t, 20*time.Second), cfg)
			if tc.want == "" {
				if err != nil || res.BytesRecv != size {
					t.Fatalf("good message: %v, %+v", err, res)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// TestRunPeerHangsUp: a peer that closes instead of sending is an error.
func TestRunPeerHangsUp(t *testing.T) {
	cfg := Config{Topology: "ring", Iters: 2, Size: 10, Timeout: 10 * time.Second}
	cfg.Peers = []string{"127.0.0.1:1", ""}
	cfg.Peers[1] = fakePeer(t, cfg, nil)
	_, err := Run(testCtx(t, 20*time.Second), Config{Rank: 0, Peers: cfg.Peers, Topology: "ring", Iters: 2, Size: 10, Timeout: 10 * time.Second, Listen: "127.0.0.1:0"})
	if err == nil || !strings.Contains(err.Error(), "receive from rank 1") {
		t.Fatalf("error %v, want a receive error", err)
	}
}

// TestRunMismatchedConfig: ranks run with different settings refuse each
// other at set-up.
func TestRunMismatchedConfig(t *testing.T) {
	peers := freeAddrs(t, 2)
	ctx := testCtx(t, 20*time.Second)
	var errs [2]error
	var wg sync.WaitGroup
	for r, size := range []int{100, 200} {
		wg.Go(func() {
			_, errs[r] = Run(ctx, Config{Rank: r, Peers: peers, Topology: "bus", Iters: 2, Size: size, Timeout: 3 * time.Second})
		})
	}
	wg.Wait()
	for r, err := range errs {
		if err == nil || !strings.Contains(err.Error(), "byte messages") {
			t.Errorf("rank %d: error %v, want a size mismatch", r, err)
		}
	}
}

// TestRunPeerNeverUp: set-up gives up after Timeout and names the peer.
func TestRunPeerNeverUp(t *testing.T) {
	peers := freeAddrs(t, 3)
	start := time.Now()
	_, err := Run(testCtx(t, 20*time.Second), Config{Rank: 1, Peers: peers, Topology: "bus", Iters: 1, Size: 1, Timeout: 400 * time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), "not up within") || !strings.Contains(err.Error(), "[0 2]") {
		t.Fatalf("error %v, want neighbours [0 2] not up", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("gave up after %v", d)
	}
}

// TestRunCancel: cancelling the context stops a long run promptly.
func TestRunCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	time.AfterFunc(300*time.Millisecond, cancel)
	start := time.Now()
	_, err := RunLocal(ctx, 4, Config{Topology: "ring", Iters: 1 << 30, Size: 1000})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("error %v, want context.Canceled", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("stopped after %v", d)
	}
}

func TestRunConfigErrors(t *testing.T) {
	ok := Config{Rank: 0, Peers: []string{"127.0.0.1:1", "127.0.0.1:2"}, Topology: "ring", Iters: 1, Size: 1}
	for _, tc := range []struct {
		mod  func(*Config)
		want string
	}{
		{func(c *Config) { c.Peers = nil }, "no peers"},
		{func(c *Config) { c.Rank = 2 }, "out of range"},
		{func(c *Config) { c.Iters = 0 }, "iterations"},
		{func(c *Config) { c.Size = 0 }, "message size"},
		{func(c *Config) { c.Flops = -1 }, "negative"},
		{func(c *Config) { c.Topology = "hypercube"; c.Peers = append(c.Peers, "127.0.0.1:3") }, "power of two"},
		{func(c *Config) { c.Peers[1] = "nohost" }, "address of rank 1"},
	} {
		c := ok
		c.Peers = slices.Clone(ok.Peers)
		tc.mod(&c)
		if _, err := Run(context.Background(), c); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("error %v, want one containing %q", err, tc.want)
		}
	}
}

func TestStamp(t *testing.T) {
	for _, size := range []int{1, 7, 8, 9, 15, 16, 17, 100} {
		b := make([]byte, size)
		stamp(b, 3, 9)
		if err := checkStamp(b, 3, 9); err != nil {
			t.Errorf("size %d: %v", size, err)
		}
		if checkStamp(b, 3, 10) == nil || checkStamp(b, 4, 9) == nil {
			t.Errorf("size %d: another stamp passes", size)
		}
		b[size-1] ^= 1
		if checkStamp(b, 3, 9) == nil {
			t.Errorf("size %d: corrupt last byte passes", size)
		}
	}
}
