package bridge

import (
	"fmt"
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

// attachIdle attaches a port without its goroutines: the test drains the
// port's queue itself, so nothing runs concurrently with the measurement.
func (s *Switch) attachIdle(name string, role Role) *portState {
	ps := &portState{name: name, role: role, port: newNullPort(), queue: make(chan *frame, QueueLen), done: make(chan struct{})}
	s.mu.Lock()
	s.publishLocked(s.ports.Load(), ps, "")
	s.mu.Unlock()
	return ps
}

// forwardRig returns a switch with local port "v1" and link "s1" where
// dst is learned on s1, plus a reader for frames entering at v1.
func forwardRig(tb testing.TB, withRules bool) (*Switch, *reader, *portState, MAC, MAC) {
	s := New(Config{})
	in := s.attachIdle("v1", RoleLocal)
	out := s.attachIdle("s1", RoleStar)
	src, dst := MAC{0x52, 0x54, 0, 0, 0, 1}, MAC{0x52, 0x54, 0, 0, 0, 2}
	s.macs.learn(dst, out, time.Now().UnixNano())
	if withRules {
		r, _ := ParseRule("any", dst.String(), "link:s1")
		r2, _ := ParseRule("not:"+dst.String(), "any", "link:s1")
		if err := s.SetRules([]Rule{r, r2}); err != nil {
			tb.Fatal(err)
		}
	}
	r := &reader{s: s, in: in, cache: map[cacheKey]*decision{}, outs: make([]*portState, 0, 64)}
	return s, r, out, src, dst
}

// forwardOne forwards one copy of raw from v1 and takes it off s1's queue,
// returning the buffer to the pool, as s1's writer would.
func forwardOne(tb testing.TB, s *Switch, r *reader, out *portState, raw []byte) {
	f := s.getFrame(false)
	f.n = copy(f.buf[Headroom:], raw)
	if !r.forward(f, time.Now().UnixNano()) {
		tb.Fatal("frame not forwarded")
	}
	select {
	case g := <-out.queue:
		if g.n != len(raw) {
			tb.Fatalf("forwarded %d bytes, want %d", g.n, len(raw))
		}
		s.putFrame(g)
	default:
		tb.Fatal("frame did not reach the output queue")
	}
}

func TestForwardZeroAlloc(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are meaningless under -race")
	}
	for _, withRules := range []bool{false, true} {
		s, r, out, src, dst := forwardRig(t, withRules)
		raw := testFrame(dst, src, 1514)
		for i := 0; i < 100; i++ { // warm the pool and the cache
			forwardOne(t, s, r, out, raw)
		}
		if n := testing.AllocsPerRun(1000, func() { forwardOne(t, s, r, out, raw) }); n != 0 {
			t.Errorf("rules=%v: %.2f allocations per forwarded frame, want 0", withRules, n)
		}
	}
}

// BenchmarkForward measures the decision and hand-off cost of one frame on
// the reader goroutine (learning, rules or MAC lookup, queueing), with the
// frame copied in and taken off the output queue.
func BenchmarkForward(b *testing.B) {
	for _, withRules := range []bool{false, true} {
		name := "learned"
		if withRules {
			name = "rules"
		}
		b.Run(name, func(b *testing.B) {
			s, r, out, src, dst := forwardRig(b, withRules)
			raw := testFrame(dst, src, 1514)
			b.ReportAllocs()
			b.SetBytes(int64(len(raw)))
			for b.Loop() {
				forwardOne(b, s, r, out, raw)
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
}

// accessRig is forwardRig with n access rules on v1, none of which denies
// the benchmarked pair: n-1 deny rules for other pairs, and an allow for
// it, so every rule is scanned when a decision is (re)computed.
func accessRig(tb testing.TB, n int) (*Switch, *reader, *portState, MAC, MAC) {
	s, r, out, src, dst := forwardRig(tb, false)
	var rules []Rule
	for i := 0; i < n-1; i++ {
		other := MAC{0x52, 0x54, 1, byte(i >> 16), byte(i >> 8), byte(i)}
		ru, _ := ParseRule(other.String(), dst.String(), "deny")
		rules = append(rules, ru)
	}
	if n > 0 {
		ru, _ := ParseRule(src.String(), dst.String(), "allow")
		rules = append(rules, ru)
	}
	if err := s.SetRules(rules); err != nil {
		tb.Fatal(err)
	}
	return s, r, out, src, dst
}

// TestAccessRulesNoAlloc: access rules cost no allocation per frame.
func TestAccessRulesNoAlloc(t *testing.T) {
	s, r, out, src, dst := accessRig(t, 1000)
	raw := testFrame(dst, src, 1514)
	forwardOne(t, s, r, out, raw)
	if n := testing.AllocsPerRun(1000, func() { forwardOne(t, s, r, out, raw) }); n != 0 {
		t.Fatalf("%v allocations per frame with 1000 access rules", n)
	}
}

// BenchmarkAccessRules is the per-frame cost of access rules: 0, 10 and
// 1000 of them, with the decision cached (steady traffic) and recomputed
// for every frame (the rule set changing under it, the worst case).
//
//	go test ./bridge -run XXX -bench AccessRules -benchmem
func BenchmarkAccessRules(b *testing.B) {
	for _, n := range []int{0, 10, 1000} {
		for _, cached := range []bool{true, false} {
			name := fmt.Sprintf("rules=%d/cached=%v", n, cached)
			b.Run(name, func(b *testing.B) {
				s, r, out, src, dst := accessRig(b, n)
				raw := testFrame(dst, src, 1514)
				b.ReportAllocs()
				b.SetBytes(int64(len(raw)))
				for b.Loop() {
					if !cached {
						s.gen.Add(1)
					}
					forwardOne(b, s, r, out, raw)
				}
			})
		}
	}
}

// tcpTestFrame is testFrame as an IPv4 TCP segment from 10.0.0.1 to
// 10.0.0.2, port 22.
func tcpTestFrame(dst, src MAC, n int) []byte {
	f := testFrame(dst, src, n)
	ip := f[14:]
	ip[0], ip[9] = 0x45, 6
	copy(ip[12:], []byte{10, 0, 0, 1, 10, 0, 0, 2})
	ip[22], ip[23] = 0, 22
	return f
}

// filterRig is forwardRig with n rules with an IP filter, none of which
// matches the benchmarked frame (tcpTestFrame): each denies TCP to port 22
// of another address, for any MACs, so every rule is tried on every frame.
func filterRig(tb testing.TB, n int) (*Switch, *reader, *portState, MAC, MAC) {
	s, r, out, src, dst := forwardRig(tb, false)
	var rules []Rule
	for i := range n {
		ru, err := ParseRuleFilter("any", "any", fmt.Sprintf("proto tcp to 10.9.%d.%d port 22", i>>8, i&0xff), "deny")
		if err != nil {
			tb.Fatal(err)
		}
		rules = append(rules, ru)
	}
	if err := s.SetRules(rules); err != nil {
		tb.Fatal(err)
	}
	return s, r, out, src, dst
}

// TestIPFilterRulesNoAlloc: rules with an IP filter cost no allocation per
// frame, with the frame classified against 1000 of them.
func TestIPFilterRulesNoAlloc(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are meaningless under -race")
	}
	s, r, out, src, dst := filterRig(t, 1000)
	raw := tcpTestFrame(dst, src, 1514)
	forwardOne(t, s, r, out, raw)
	if n := testing.AllocsPerRun(1000, func() { forwardOne(t, s, r, out, raw) }); n != 0 {
		t.Fatalf("%v allocations per frame with 1000 IP-filter rules", n)
	}
	// And one that matches: denied, counted, no allocation.
	ru, _ := ParseRuleFilter("any", "any", "proto tcp port 22", "deny")
	if err := s.SetRules([]Rule{ru}); err != nil {
		t.Fatal(err)
	}
	f := s.getFrame(false)
	f.n = copy(f.buf[Headroom:], raw)
	if n := testing.AllocsPerRun(1000, func() {
		if r.forward(f, time.Now().UnixNano()) {
			t.Fatal("denied frame forwarded")
		}
	}); n != 0 {
		t.Fatalf("%v allocations per denied frame", n)
	}
	if h := s.RuleHits(); h[0] < 1000 {
		t.Fatalf("rule hits %v", h)
	}
}

// BenchmarkIPFilterRules is the per-frame cost of rules with an IP filter:
// 0, 10 and 1000 of them, none matching, all tried on every frame.
//
//	go test ./bridge -run XXX -bench IPFilterRules -benchmem -benchtime 1s
func BenchmarkIPFilterRules(b *testing.B) {
	for _, n := range []int{0, 10, 1000} {
		b.Run(fmt.Sprintf("rules=%d", n), func(b *testing.B) {
			s, r, out, src, dst := filterRig(b, n)
			raw := tcpTestFrame(dst, src, 1514)
			b.ReportAllocs()
			b.SetBytes(int64(len(raw)))
			for b.Loop() {
				forwardOne(b, s, r, out, raw)
			}
		})
	}
}
