package bridge_test

import (
	"bytes"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"vnet/bridge"
	"vnet/bridge/bridgetest"
)

const wait = 2 * time.Second
const quiet = 50 * time.Millisecond

func mac(b byte) bridge.MAC { return bridge.MAC{0x52, 0x54, 0, 0, 0, b} }

type rig struct {
	t     *testing.T
	sw    *bridge.Switch
	ports map[string]*bridgetest.ChanPort
}

// newRig builds a switch with the named ports; role by prefix: v* local,
// s* star, f* fast.
func newRig(t *testing.T, names ...string) *rig {
	t.Helper()
	return newRigConfig(t, bridge.Config{}, names...)
}

func newRigConfig(t *testing.T, cfg bridge.Config, names ...string) *rig {
	t.Helper()
	r := &rig{t: t, sw: bridge.New(cfg), ports: map[string]*bridgetest.ChanPort{}}
	for _, n := range names {
		r.add(n)
	}
	t.Cleanup(r.sw.Close)
	return r
}

func (r *rig) add(n string) {
	role := map[byte]bridge.Role{'v': bridge.RoleLocal, 's': bridge.RoleStar, 'f': bridge.RoleFast}[n[0]]
	p := bridgetest.NewChanPort(64)
	if err := r.sw.AddPort(n, role, p); err != nil {
		r.t.Fatal(err)
	}
	r.ports[n] = p
}

func (r *rig) remove(n string) {
	r.sw.RemovePort(n)
	delete(r.ports, n)
}

// send injects a frame src->dst on port in and returns the set of ports it
// came out of (waiting a moment for stragglers).
func (r *rig) send(in string, src, dst bridge.MAC) map[string]bool {
	r.t.Helper()
	payload := []byte(fmt.Sprintf("payload %s->%s via %s %d", src, dst, in, time.Now().UnixNano()))
	return r.sendFrame(in, bridgetest.Frame(dst, src, payload))
}

// sendFrame injects frame f on port in and returns the set of ports it came
// out of.
func (r *rig) sendFrame(in string, f []byte) map[string]bool {
	r.t.Helper()
	r.ports[in].Inject(f)
	got := map[string]bool{}
	deadline := time.After(quiet * 4)
	for {
		progress := false
		for name, p := range r.ports {
			select {
			case o := <-p.Out:
				if !bytes.Equal(o, f) {
					r.t.Fatalf("port %s got a different frame: %x", name, o)
				}
				if got[name] {
					r.t.Fatalf("port %s got the frame twice", name)
				}
				got[name] = true
				progress = true
			default:
			}
		}
		if !progress {
			select {
			case <-deadline:
				return got
			case <-time.After(time.Millisecond):
			}
		}
	}
}

func keys(m map[string]bool) string {
	var s []string
	for _, n := range []string{"v1", "v2", "v3", "s1", "s2", "f1", "f2"} {
		if m[n] {
			s = append(s, n)
		}
	}
	return fmt.Sprint(s)
}

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestLearningAndFlooding(t *testing.T) {
	r := newRig(t, "v1", "v2", "s1", "f1")
	// Unknown destination: flood on the star, never back out v1, never on the fast path.
	if got := keys(r.send("v1", mac(1), mac(2))); got != "[v2 s1]" {
		t.Fatalf("flood from v1 went to %s", got)
	}
	// mac(1) is now learned on v1: a reply goes only there.
	if got := keys(r.send("s1", mac(2), mac(1))); got != "[v1]" {
		t.Fatalf("reply went to %s", got)
	}
	// and mac(2) was learned on s1.
	if got := keys(r.send("v2", mac(3), mac(2))); got != "[s1]" {
		t.Fatalf("unicast to learned mac went to %s", got)
	}
	// Broadcast is flooded even when learned.
	if got := keys(r.send("v1", mac(1), bridge.Broadcast)); got != "[v2 s1]" {
		t.Fatalf("broadcast went to %s", got)
	}
	// A flood arriving on a fast path goes to local ports only: no loop through the star.
	if got := keys(r.send("f1", mac(9), bridge.Broadcast)); got != "[v1 v2]" {
		t.Fatalf("flood from fast path went to %s", got)
	}
	// A destination learned on the ingress port is not sent back.
	if got := keys(r.send("v1", mac(5), mac(1))); got != "[]" {
		t.Fatalf("frame to a MAC behind its own port went to %s", got)
	}
}

func TestStarFloodOnProxy(t *testing.T) {
	// The proxy: several star links; a broadcast from one reaches all others once.
	r := newRig(t, "s1", "s2", "v1")
	if got := keys(r.send("s1", mac(1), bridge.Broadcast)); got != "[v1 s2]" {
		t.Fatalf("got %s", got)
	}
}

func TestBadFramesCounted(t *testing.T) {
	r := newRig(t, "v1", "v2")
	r.ports["v1"].Inject([]byte{1, 2, 3})
	r.ports["v1"].Inject(bridgetest.Frame(mac(2), bridge.Broadcast, nil)) // multicast source
	if _, ok := r.ports["v2"].Expect(quiet * 2); ok {
		t.Fatal("bad frame was forwarded")
	}
	st, _ := r.sw.PortStats("v1")
	if st.Drops["runt"] != 1 || st.Drops["bad-source"] != 1 {
		t.Fatalf("drops = %v", st.Drops)
	}
}

func TestRulesOverrideLearning(t *testing.T) {
	r := newRig(t, "v1", "v2", "s1", "f1")
	r.send("s1", mac(2), bridge.Broadcast) // learn mac(2) on s1
	rule, err := bridge.ParseRule("any", mac(2).String(), "link:f1")
	if err != nil {
		t.Fatal(err)
	}
	if err := r.sw.SetRules([]bridge.Rule{rule}); err != nil {
		t.Fatal(err)
	}
	if got := keys(r.send("v1", mac(1), mac(2))); got != "[f1]" {
		t.Fatalf("rule ignored: went to %s", got)
	}
	// The fast path goes away: the rule is inactive, learning takes over again.
	r.sw.RemovePort("f1")
	delete(r.ports, "f1")
	if got := keys(r.send("v1", mac(1), mac(2))); got != "[s1]" {
		t.Fatalf("after fast path removal went to %s", got)
	}
	// It comes back: the rule fires again (the decision cache was flushed).
	r.add("f1")
	if got := keys(r.send("v1", mac(1), mac(2))); got != "[f1]" {
		t.Fatalf("after fast path re-add went to %s", got)
	}
}

func TestRulePrecedenceAndFanOut(t *testing.T) {
	r := newRig(t, "v1", "v2", "v3", "s1", "f1", "f2")
	must := func(src, dst, to string) bridge.Rule {
		rl, err := bridge.ParseRule(src, dst, to)
		if err != nil {
			t.Fatal(err)
		}
		return rl
	}
	a, b, c := mac(1), mac(2), mac(3)
	rules := []bridge.Rule{
		must("any", "any", "link:s1"),                  // 6
		must(a.String(), "any", "link:f1"),             // 8
		must("not:"+a.String(), "any", "port:v3"),      // 5
		must("not:"+a.String(), c.String(), "link:f2"), // 7
		must(b.String(), c.String(), "link:f1"),        // 8
		must(b.String(), c.String(), "link:f2"),        // 8: tie, fan-out
	}
	if err := r.sw.SetRules(rules); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		in       string
		src, dst bridge.MAC
		want     string
	}{
		{"v1", a, b, "[f1]"},           // exact/any beats any/any
		{"v2", b, c, "[f1 f2]"},        // exact/exact tie: both fire
		{"v2", mac(4), c, "[f2]"},      // not/exact (7) beats any/any (6) and not/any (5)
		{"v2", mac(4), mac(5), "[s1]"}, // any/any (6) beats not/any (5)
		{"v1", a, a, "[f1]"},
	}
	for _, tc := range cases {
		if got := keys(r.send(tc.in, tc.src, tc.dst)); got != tc.want {
			t.Errorf("%s %s->%s: went to %s, want %s", tc.in, tc.src, tc.dst, got, tc.want)
		}
	}
	// A rule whose target is the ingress port does not send back.
	if got := keys(r.send("s1", mac(4), mac(5))); got != "[]" {
		t.Errorf("rule sent a frame back out its ingress port: %s", got)
	}
	if err := r.sw.SetRules([]bridge.Rule{rules[0], rules[0]}); err == nil {
		t.Error("duplicate rules accepted")
	}
	d := r.sw.Lookup("v2", b, c)
	if d.By != "rule" || fmt.Sprint(d.Outputs) != "[f1 f2]" {
		t.Errorf("Lookup = %+v", d)
	}
}

func TestAnnouncedBeatsStarLearning(t *testing.T) {
	r := newRig(t, "v1", "s1", "f1")
	r.send("s1", mac(2), bridge.Broadcast) // mac(2) learned via the star
	if err := r.sw.Announce("f1", []bridge.MAC{mac(2)}); err != nil {
		t.Fatal(err)
	}
	if got := keys(r.send("v1", mac(1), mac(2))); got != "[f1]" {
		t.Fatalf("announced MAC reached via %s", got)
	}
	// More frames from mac(2) over the star do not undo the announcement.
	r.send("s1", mac(2), bridge.Broadcast)
	if got := keys(r.send("v1", mac(1), mac(2))); got != "[f1]" {
		t.Fatalf("after star traffic: %s", got)
	}
	// Fast path gone: back to flooding, then learning.
	r.remove("f1")
	if got := keys(r.send("v1", mac(1), mac(2))); got != "[s1]" {
		t.Fatalf("after fast path loss: %s", got)
	}
}

// TestLoopedFramesDropped: a frame that comes back in on a link with the
// source address of a VM that just sent on a local port went round a
// loop (a fast path and the star, with a stale entry after a migration).
// It is dropped and counted, and the VM's address stays on its port;
// once the VM's port is gone, a link may take the address.
func TestLoopedFramesDropped(t *testing.T) {
	r := newRig(t, "v1", "v2", "s1", "f1")
	r.send("v1", mac(1), bridge.Broadcast)
	if got := keys(r.send("f1", mac(1), mac(2))); got != "[]" {
		t.Fatalf("the looped frame went out of %s", got)
	}
	if got := keys(r.send("s1", mac(1), mac(2))); got != "[]" {
		t.Fatalf("the looped frame (star) went out of %s", got)
	}
	if got := keys(r.send("v2", mac(2), mac(1))); got != "[v1]" {
		t.Fatalf("a frame to the VM went to %s, want its port v1", got)
	}
	st, _ := r.sw.PortStats("f1")
	if st.Drops["looped"] != 1 {
		t.Fatalf("f1 drops %v, want 1 looped", st.Drops)
	}
	r.remove("v1")
	r.send("s1", mac(1), mac(2))
	if got := keys(r.send("v2", mac(2), mac(1))); got != "[s1]" {
		t.Fatalf("after the VM's port left, its address is reached via %s, want s1", got)
	}
}

// TestOnNewLocal: the hook fires when a VM port gains an address (new, or
// moved there), and not for more frames from it or for addresses on links.
func TestOnNewLocal(t *testing.T) {
	var calls atomic.Int32
	r := newRigConfig(t, bridge.Config{OnNewLocal: func() { calls.Add(1) }}, "v1", "v2", "s1")
	want := func(n int32, after string) {
		t.Helper()
		if got := calls.Load(); got != n {
			t.Fatalf("after %s: OnNewLocal called %d times, want %d", after, got, n)
		}
	}
	r.send("v1", mac(1), bridge.Broadcast)
	want(1, "a new VM")
	r.send("v1", mac(1), bridge.Broadcast)
	want(1, "a second frame from it")
	r.send("s1", mac(2), mac(1))
	want(1, "an address learned on the star")
	r.send("v2", mac(2), mac(1))
	want(2, "that address on a VM port")
	r.send("v2", mac(1), mac(2))
	want(3, "a VM that moved to another port")
}

// TestFastLinksDoNotLearn: a frame relayed over a fast link does not teach
// the switch its source (the VM may be anywhere); the peer's announcement
// does, and a frame from an announced VM refreshes nothing it should not.
func TestFastLinksDoNotLearn(t *testing.T) {
	r := newRig(t, "v1", "s1", "f1")
	r.send("s1", mac(2), bridge.Broadcast) // mac(2) learned via the star
	r.send("f1", mac(2), mac(1))           // relayed to us over the fast path
	if got := keys(r.send("v1", mac(1), mac(2))); got != "[s1]" {
		t.Fatalf("a VM seen on a fast link is reached via %s, want s1 (where it was learned)", got)
	}
	r.send("f1", mac(3), mac(1)) // never seen elsewhere
	if got := keys(r.send("v1", mac(1), mac(3))); got != "[s1]" {
		t.Fatalf("a VM seen only on a fast link is reached via %s, want a flood on the star [s1]", got)
	}
	if err := r.sw.Announce("f1", []bridge.MAC{mac(3)}); err != nil {
		t.Fatal(err)
	}
	r.send("f1", mac(3), mac(1))
	if got := keys(r.send("v1", mac(1), mac(3))); got != "[f1]" {
		t.Fatalf("an announced VM is reached via %s, want f1", got)
	}
}

// A VM's broadcast storm is cut to its port's rate and counted; its
// unicast, and other VMs' broadcasts, still pass.
func TestBroadcastStormLimited(t *testing.T) {
	const rate = 100
	sw := bridge.New(bridge.Config{BroadcastRate: rate})
	defer sw.Close()
	storm, quiet, peer := bridgetest.NewChanPort(4096), bridgetest.NewChanPort(64), bridgetest.NewChanPort(4096)
	sw.AddPort("v1", bridge.RoleLocal, storm)
	sw.AddPort("v2", bridge.RoleLocal, quiet)
	sw.AddPort("s1", bridge.RoleStar, peer)
	const sent = 3000
	start := time.Now()
	for i := 0; i < sent; i++ {
		storm.Inject(bridgetest.Frame(bridge.Broadcast, mac(1), nil))
	}
	waitFor(t, "the storm counted", func() bool {
		st, _ := sw.PortStats("v1")
		return st.RxFrames == sent
	})
	elapsed := time.Since(start)
	st, _ := sw.PortStats("v1")
	passed := sent - int(st.Drops["broadcast-limit"])
	if bound := rate + int(rate*elapsed.Seconds()) + 1; passed > bound || passed < rate {
		t.Fatalf("%d of %d broadcast frames passed in %v; want %d to %d", passed, sent, elapsed, rate, bound)
	}
	// Unicast from the storming VM and broadcasts of another VM pass.
	peer.Inject(bridgetest.Frame(mac(1), mac(3), nil)) // the star learns mac(3)
	storm.Inject(bridgetest.Frame(mac(3), mac(1), nil))
	quiet.Inject(bridgetest.Frame(bridge.Broadcast, mac(2), nil))
	waitFor(t, "unicast and the other VM's broadcast", func() bool {
		st1, _ := sw.PortStats("v1")
		st2, _ := sw.PortStats("v2")
		sst, _ := sw.PortStats("s1")
		return st1.RxFrames == sent+1 && st2.RxFrames == 1 && sst.TxFrames >= uint64(passed)+2
	})
	if st2, _ := sw.PortStats("v2"); st2.Drops["broadcast-limit"] != 0 {
		t.Fatalf("v2's broadcast was limited: %v", st2.Drops)
	}
	if st, _ := sw.PortStats("v1"); int(st.Drops["broadcast-limit"]) != sent-passed {
		t.Fatalf("v1 drops %v after its unicast, want only the %d broadcast-limit drops", st.Drops, sent-passed)
	}
}

// SetBroadcastRate changes the limit on a running switch: lifted, a storm
// passes whole; set again, it is cut.
func TestSetBroadcastRate(t *testing.T) {
	sw := bridge.New(bridge.Config{BroadcastRate: 10})
	defer sw.Close()
	storm, peer := bridgetest.NewChanPort(4096), bridgetest.NewChanPort(4096)
	sw.AddPort("v1", bridge.RoleLocal, storm)
	sw.AddPort("s1", bridge.RoleStar, peer)
	burst := func(n int) (dropped uint64) {
		before, _ := sw.PortStats("v1")
		for range n {
			storm.Inject(bridgetest.Frame(bridge.Broadcast, mac(1), nil))
		}
		waitFor(t, "the burst counted", func() bool {
			st, _ := sw.PortStats("v1")
			return st.RxFrames == before.RxFrames+uint64(n)
		})
		st, _ := sw.PortStats("v1")
		return st.Drops["broadcast-limit"] - before.Drops["broadcast-limit"]
	}
	sw.SetBroadcastRate(-1)
	if d := burst(1000); d != 0 {
		t.Fatalf("no limit: %d of 1000 broadcasts dropped", d)
	}
	sw.SetBroadcastRate(10)
	if d := burst(1000); d < 1000-10-10 {
		t.Fatalf("10/s again: only %d of 1000 broadcasts dropped", d)
	}
}

func TestMACTableBounded(t *testing.T) {
	sw := bridge.New(bridge.Config{MaxMACs: 16})
	defer sw.Close()
	p := bridgetest.NewChanPort(1024)
	q := bridgetest.NewChanPort(1024)
	sw.AddPort("v1", bridge.RoleLocal, p)
	sw.AddPort("v2", bridge.RoleLocal, q)
	for i := 0; i < 200; i++ {
		p.Inject(bridgetest.Frame(bridge.Broadcast, bridge.MAC{2, 0, 0, 0, byte(i >> 8), byte(i)}, nil))
	}
	for i := 0; i < 200; i++ {
		if _, ok := q.Expect(wait); !ok {
			t.Fatalf("frame %d not flooded", i)
		}
	}
	if n := len(sw.MACs()); n > 16 {
		t.Fatalf("table holds %d entries, bound 16", n)
	}
	if ev, _ := sw.MACStats(); ev < 200-16 {
		t.Fatalf("evicted %d, want >= %d", ev, 200-16)
	}
}

func TestParseRuleErrors(t *testing.T) {
	for _, c := range [][3]string{
		{"any", "zz:zz", "link:x"},
		{"not:", "any", "link:x"},
		{"any", "any", "links:x"},
		{"any", "any", "link:"},
		{"52:54:00:00:00", "any", "port:v"},
	} {
		if _, err := bridge.ParseRule(c[0], c[1], c[2]); err == nil {
			t.Errorf("ParseRule(%q) accepted", c)
		}
	}
	r, err := bridge.ParseRule("52-54-00-AA-BB-CC", "NOT:52:54:00:00:00:01", "port:tap0")
	if err != nil || r.String() != "52:54:00:aa:bb:cc not:52:54:00:00:00:01 -> port:tap0" {
		t.Fatalf("got %v, %v", r, err)
	}
}

// TestAccessRules: deny drops a pair's frames (counted per rule and as the
// port's "denied" drops) and leaves other pairs alone; a more specific
// allow opens a hole in a wider deny; deny beats a tied forwarding rule.
func TestAccessRules(t *testing.T) {
	r := newRig(t, "v1", "v2", "s1", "f1")
	r.send("s1", mac(3), bridge.Broadcast) // mac(3) behind s1
	r.send("v2", mac(2), bridge.Broadcast)
	rule := func(src, dst, to string) bridge.Rule {
		t.Helper()
		ru, err := bridge.ParseRule(src, dst, to)
		if err != nil {
			t.Fatal(err)
		}
		return ru
	}
	if err := r.sw.SetRules([]bridge.Rule{rule(mac(1).String(), mac(3).String(), "deny")}); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if got := keys(r.send("v1", mac(1), mac(3))); got != "[]" {
			t.Fatalf("denied frame went to %s", got)
		}
	}
	if got := keys(r.send("v1", mac(1), mac(2))); got != "[v2]" {
		t.Fatalf("another pair: went to %s", got)
	}
	if got := keys(r.send("v2", mac(2), mac(3))); got != "[s1]" {
		t.Fatalf("another source: went to %s", got)
	}
	if hits := r.sw.RuleHits(); len(hits) != 1 || hits[0] != 3 {
		t.Errorf("rule hits %v, want [3]", hits)
	}
	if st, _ := r.sw.PortStats("v1"); st.Drops["denied"] != 3 {
		t.Errorf("v1's drops %v, want denied 3", st.Drops)
	}
	if d := r.sw.Lookup("v1", mac(1), mac(3)); d.By != "deny" || len(d.Outputs) != 0 || !strings.Contains(d.Rule, "deny") {
		t.Errorf("route of a denied pair: %+v", d)
	}

	// Deny everything but one pair.
	if err := r.sw.SetRules([]bridge.Rule{rule("any", "any", "deny"), rule(mac(1).String(), mac(3).String(), "allow")}); err != nil {
		t.Fatal(err)
	}
	if got := keys(r.send("v1", mac(1), mac(3))); got != "[s1]" {
		t.Fatalf("allowed pair went to %s", got)
	}
	if got := keys(r.send("v1", mac(1), mac(2))); got != "[]" {
		t.Fatalf("pair under the wide deny went to %s", got)
	}
	// A deny tied with a forwarding rule wins.
	if err := r.sw.SetRules([]bridge.Rule{rule("any", mac(3).String(), "link:f1"), rule("any", mac(3).String(), "deny")}); err != nil {
		t.Fatal(err)
	}
	if got := keys(r.send("v1", mac(1), mac(3))); got != "[]" {
		t.Fatalf("deny tied with link:f1: went to %s", got)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// stuckPort is a port whose writes block until release is closed: a peer
// that stopped reading.
type stuckPort struct {
	*bridgetest.ChanPort
	release chan struct{}
}

func (p *stuckPort) Write(bufs [][]byte, offset int) (int, error) {
	<-p.release
	return p.ChanPort.Write(bufs, offset)
}

// A stuck port loses its own frames (counted as queue-full) and nobody
// waits for it: every frame for the healthy port still arrives.
func TestStuckPortDroppedNotWaitedFor(t *testing.T) {
	sw := bridge.New(bridge.Config{})
	src, ok := bridgetest.NewChanPort(64), bridgetest.NewChanPort(16*bridge.QueueLen) // ok: room for all it gets
	stuck := &stuckPort{ChanPort: bridgetest.NewChanPort(64), release: make(chan struct{})}
	sw.AddPort("v1", bridge.RoleLocal, src)
	sw.AddPort("v2", bridge.RoleLocal, ok)
	sw.AddPort("s1", bridge.RoleStar, stuck)
	defer func() {
		close(stuck.release)
		sw.Close()
	}()
	ok.Inject(bridgetest.Frame(mac(1), mac(2), nil))    // learn mac(2) on v2
	stuck.Inject(bridgetest.Frame(mac(1), mac(3), nil)) // and mac(3) on the stuck port
	waitFor(t, "both learned", func() bool {
		a, _ := sw.Where(mac(2))
		b, _ := sw.Where(mac(3))
		return a == "v2" && b == "s1"
	})
	for len(src.Out) > 0 { // the learning frames' copies
		<-src.Out
	}
	// Rounds of half a queue, each waited for at the healthy port, so that
	// its own writer never falls a queue behind (that would be a drop too,
	// and a correct one): what is tested is that the stuck port's full
	// queue holds nobody up.
	n, round := 4*bridge.QueueLen, bridge.QueueLen/2
	for i := 0; i < n; i += round {
		for j := i; j < i+round; j++ {
			src.Inject(bridgetest.Frame(mac(3), mac(1), []byte{byte(j)}))
			src.Inject(bridgetest.Frame(mac(2), mac(1), []byte{byte(j)}))
		}
		for j := i; j < i+round; j++ {
			if _, more := ok.Expect(5 * time.Second); !more {
				st, _ := sw.PortStats("v2")
				t.Fatalf("the healthy port got %d of %d frames while another was stuck; its counters %+v", j, n, st)
			}
		}
	}
	st, _ := sw.PortStats("s1")
	if full := st.Drops["queue-full"]; full < uint64(n-2*bridge.QueueLen) {
		t.Fatalf("the stuck port's drops are %v; want at least %d queue-full", st.Drops, n-2*bridge.QueueLen)
	}
}
