package bridge

import (
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// nullPort discards what it is given and reads nothing until closed.
type nullPort struct {
	once   sync.Once
	done   chan struct{}
	frames atomic.Uint64
}

func newNullPort() *nullPort { return &nullPort{done: make(chan struct{})} }

func (p *nullPort) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	<-p.done
	return 0, net.ErrClosed
}
func (p *nullPort) Write(bufs [][]byte, offset int) (int, error) {
	p.frames.Add(uint64(len(bufs)))
	return len(bufs), nil
}
func (p *nullPort) BatchSize() int { return 64 }
func (p *nullPort) Close() error   { p.once.Do(func() { close(p.done) }); return nil }

// genPort returns the same frame forever, a full batch per Read.
type genPort struct {
	nullPort
	frame []byte
}

func (p *genPort) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	select {
	case <-p.done:
		return 0, net.ErrClosed
	default:
	}
	for i := range bufs {
		sizes[i] = copy(bufs[i][offset:], p.frame)
	}
	return len(bufs), nil
}

func testFrame(dst, src MAC, n int) []byte {
	f := make([]byte, n)
	copy(f, dst[:])
	copy(f[6:], src[:])
	f[12], f[13] = 0x08, 0x00
	return f
}

// forwardRig returns a switch with local port "v1" and link "s1" where
// dst is learned on s1, plus a reader for frames entering at v1.
func forwardRig(tb testing.TB, withRules bool) (*Switch, *reader, *nullPort, MAC, MAC) {
	s := New(Config{})
	in, out := newNullPort(), newNullPort()
	s.AddPort("v1", RoleLocal, in)
	s.AddPort("s1", RoleStar, out)
	src, dst := MAC{0x52, 0x54, 0, 0, 0, 1}, MAC{0x52, 0x54, 0, 0, 0, 2}
	set := s.ports.Load()
	s.macs.learn(dst, set.byName["s1"], time.Now().UnixNano())
	if withRules {
		r, _ := ParseRule("any", dst.String(), "link:s1")
		r2, _ := ParseRule("not:"+dst.String(), "any", "link:s1")
		if err := s.SetRules([]Rule{r, r2}); err != nil {
			tb.Fatal(err)
		}
	}
	r := &reader{s: s, in: set.byName["v1"], cache: map[cacheKey]*decision{}, outs: make([]*portState, 0, 64)}
	return s, r, out, src, dst
}

func TestForwardZeroAlloc(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are meaningless under -race")
	}
	for _, withRules := range []bool{false, true} {
		s, r, out, src, dst := forwardRig(t, withRules)
		raw := testFrame(dst, src, 1514)
		forwardOne := func() {
			f := s.getFrame()
			f.n = copy(f.buf[Headroom:], raw)
			if !r.forward(f, time.Now().UnixNano()) {
				t.Fatal("frame not forwarded")
			}
		}
		for i := 0; i < 100; i++ { // warm the pool and the cache
			forwardOne()
		}
		time.Sleep(10 * time.Millisecond)
		if n := testing.AllocsPerRun(1000, forwardOne); n != 0 {
			t.Errorf("rules=%v: %.2f allocations per forwarded frame, want 0", withRules, n)
		}
		for deadline := time.Now().Add(time.Second); out.frames.Load() < 1100 && time.Now().Before(deadline); {
			time.Sleep(time.Millisecond)
		}
		if out.frames.Load() < 1100 {
			t.Errorf("only %d frames reached the output", out.frames.Load())
		}
		s.Close()
	}
}

// BenchmarkForward measures the decision and hand-off cost of one frame on
// the reader goroutine (learning, rules or MAC lookup, queueing).
func BenchmarkForward(b *testing.B) {
	for _, withRules := range []bool{false, true} {
		name := "learned"
		if withRules {
			name = "rules"
		}
		b.Run(name, func(b *testing.B) {
			s, r, _, src, dst := forwardRig(b, withRules)
			defer s.Close()
			raw := testFrame(dst, src, 1514)
			b.ReportAllocs()
			b.SetBytes(int64(len(raw)))
			for b.Loop() {
				f := s.getFrame()
				f.n = copy(f.buf[Headroom:], raw)
				r.forward(f, time.Now().UnixNano())
			}
		})
	}
}

// BenchmarkSwitchPipeline pushes frames through the whole switch: a port's
// reader goroutine, the output queue, and the output's writer goroutine.
func BenchmarkSwitchPipeline(b *testing.B) {
	src, dst := MAC{0x52, 0x54, 0, 0, 0, 1}, MAC{0x52, 0x54, 0, 0, 0, 2}
	s := New(Config{})
	out := newNullPort()
	s.AddPort("s1", RoleStar, out)
	s.macs.learn(dst, s.ports.Load().byName["s1"], time.Now().UnixNano())
	gen := &genPort{nullPort: nullPort{done: make(chan struct{})}, frame: testFrame(dst, src, 1514)}
	b.ReportAllocs()
	b.SetBytes(1514)
	start := time.Now()
	s.AddPort("v1", RoleLocal, gen)
	for out.frames.Load() < uint64(b.N) {
		time.Sleep(100 * time.Microsecond)
	}
	el := time.Since(start)
	s.Close()
	b.ReportMetric(float64(el.Nanoseconds())/float64(b.N), "ns/frame")
	st := s.Stats()
	_ = st
}
