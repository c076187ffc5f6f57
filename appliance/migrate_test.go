package appliance

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"vnet/adapt"
	"vnet/infer"
)

// TestMigrateInProcess moves a netstack VM from h2 to h3 while a TCP
// stream from h1's VM to it runs: the VM keeps its MAC and IP, the stream
// goes on intact, and the proxy sees the VM on h3.
func TestMigrateInProcess(t *testing.T) {
	n := newTestNet(t, 3, 1)
	a, b := n.vms[0], n.vms[1] // on h1 and h2
	ctx := context.Background()
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := a.DialTCP(dctx, netip.AddrPortFrom(b.Addr(), 7000))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// A steady echo stream: 4 KiB chunks, each checked when it comes back;
	// maxGap is the longest wait for one: the outage the move caused.
	var echoed, maxGap atomic.Int64
	errc := make(chan error, 1)
	stop := make(chan struct{})
	go func() {
		out, in := make([]byte, 4096), make([]byte, 4096)
		prev := time.Now()
		for {
			select {
			case <-stop:
				errc <- nil
				return
			default:
			}
			rand.Read(out)
			c.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := c.Write(out); err != nil {
				errc <- err
				return
			}
			if _, err := io.ReadFull(c, in); err != nil {
				errc <- err
				return
			}
			if !bytes.Equal(in, out) {
				errc <- io.ErrUnexpectedEOF
				return
			}
			echoed.Add(int64(len(in)))
			now := time.Now()
			if gap := now.Sub(prev).Nanoseconds(); gap > maxGap.Load() {
				maxGap.Store(gap)
			}
			prev = now
		}
	}()
	n.waitFor("the stream to flow", 5*time.Second, func() bool { return echoed.Load() > 64<<10 })
	n.waitFor("the proxy to know both VMs", 5*time.Second, func() bool { return len(n.proxy.vms()) >= 2 })
	if _, err := n.proxy.Migrate(ctx, b.MAC().String(), "h3"); err == nil || !strings.Contains(err.Error(), "--migrate-cmd") {
		t.Fatalf("migrate without a migrator: %v, want an error naming --migrate-cmd", err)
	}
	n.proxy.SetMigrator(InProcessMigrator(n.hosts["h1"], n.hosts["h2"], n.hosts["h3"]))
	for _, bad := range []struct{ vm, host, want string }{
		{b.MAC().String(), "h2", "already"},
		{b.MAC().String(), "h9", "not up"},
		{"10.77.0.99", "h3", "no VM"},
		{"nonsense", "h3", "MAC or IP"},
	} {
		if _, err := n.proxy.Migrate(ctx, bad.vm, bad.host); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("migrate %s %s: %v, want an error with %q", bad.vm, bad.host, err, bad.want)
		}
	}

	res, err := n.proxy.Migrate(ctx, b.Addr().String(), "h3")
	if err != nil {
		t.Fatal(err)
	}
	if res.From != "h2" || res.To != "h3" || res.VM != b.MAC().String() {
		t.Errorf("migrate result %+v", res)
	}
	before := echoed.Load()
	n.waitFor("the stream to go on after the move", 10*time.Second, func() bool { return echoed.Load() > before+256<<10 })
	close(stop)
	if err := <-errc; err != nil {
		t.Fatalf("the stream broke across the migration: %v", err)
	}
	t.Logf("MIGRATE: move %d ms, seen on h3 %d ms after; longest wait for an echo of the stream: %v",
		res.MoveMS, res.ReachableMS, time.Duration(maxGap.Load()).Round(time.Millisecond))

	n.waitFor("the proxy to list the VM on h3", 5*time.Second, func() bool {
		for _, vm := range n.proxy.vms() {
			if vm.MAC == b.MAC().String() {
				return vm.Host == "h3"
			}
		}
		return false
	})
	// Everyone reaches it at its new place.
	for _, from := range []*testVM{n.vms[0], n.vms[2]} {
		if err := exchange(from, b, 64<<10); err != nil {
			t.Errorf("after the move: %v", err)
		}
	}
	var notes []string
	for _, ev := range n.proxy.agg.Events(0) {
		if ev.Kind == "migrate" {
			notes = append(notes, ev.Note)
		}
	}
	if len(notes) != 2 || !strings.HasPrefix(notes[1], "moved "+b.MAC().String()+" from h2 to h3") {
		t.Errorf("migrate events %q", notes)
	}
}

// TestAdaptMigrates lets the controller move VMs (--adapt-migrate): h1 has
// VMs A and B, h2 has C and D; A talks heavily with C and B a little with
// D. Capacity stays at two VMs per host, so the best placement swaps C and
// B, and the controller does that by itself while A's stream to C runs.
func TestAdaptMigrates(t *testing.T) {
	old := ReportInterval
	ReportInterval = 100 * time.Millisecond
	defer func() { ReportInterval = old }()
	acct := infer.AccountConfig{TimeBound: 200 * time.Millisecond, TMax: 200 * time.Millisecond, TWait: time.Second}
	n := newTestNetInfer(t, 2, 2, acct, infer.GlobalConfig{Window: 2 * time.Second}, func(pc *ProxyConfig) {
		pc.Adapt = AdaptConfig{Enabled: true, Migrate: true, Interval: 500 * time.Millisecond, Window: 3 * time.Second,
			Budget: adapt.Budget{MaxPerHost: 1},
			Damp:   adapt.DampConfig{MinDwell: time.Minute, Hysteresis: 0.01, MaxChangesPerMinute: 100}}
	})
	n.proxy.SetMigrator(InProcessMigrator(n.hosts["h1"], n.hosts["h2"]))
	a, b, c, d := n.vms[0], n.vms[1], n.vms[2], n.vms[3]
	stream := func(from, to *testVM, chunk int, pause time.Duration) (stop func() (int64, error)) {
		ctx, cancel := context.WithCancel(context.Background())
		conn, err := from.DialTCP(ctx, netip.AddrPortFrom(to.Addr(), 7000))
		if err != nil {
			t.Fatal(err)
		}
		var echoed atomic.Int64
		errc := make(chan error, 1)
		go func() {
			out, in := make([]byte, chunk), make([]byte, chunk)
			for ctx.Err() == nil {
				rand.Read(out)
				conn.SetDeadline(time.Now().Add(10 * time.Second))
				if _, err := conn.Write(out); err != nil {
					errc <- err
					return
				}
				if _, err := io.ReadFull(conn, in); err != nil {
					errc <- err
					return
				}
				if !bytes.Equal(in, out) {
					errc <- io.ErrUnexpectedEOF
					return
				}
				echoed.Add(int64(chunk))
				time.Sleep(pause)
			}
			errc <- nil
		}()
		return func() (int64, error) {
			cancel()
			err := <-errc
			conn.Close()
			return echoed.Load(), err
		}
	}
	stopAC := stream(a, c, 32<<10, 0)
	stopBD := stream(b, d, 1<<10, 20*time.Millisecond)
	hostOf := func(vm *testVM) string { // "" while hosts disagree (a move is being reported)
		where := ""
		for _, v := range n.proxy.vms() {
			if v.MAC == vm.MAC().String() {
				if where != "" {
					return ""
				}
				where = v.Host
			}
		}
		return where
	}
	moved := func() (moves []string) {
		for _, ev := range n.proxy.agg.Events(0) {
			if ev.Kind == "migrate" && strings.HasPrefix(ev.Note, "moved ") {
				moves = append(moves, ev.Note)
			}
		}
		return moves
	}
	n.waitFor("the controller to put A with C and B with D", 30*time.Second, func() bool {
		return hostOf(a) != "" && hostOf(a) == hostOf(c) && hostOf(b) == hostOf(d) && hostOf(a) != hostOf(b) &&
			len(moved()) > 0
	})
	time.Sleep(500 * time.Millisecond)
	ac, err := stopAC()
	if err != nil {
		t.Fatalf("A's stream to C broke across the migration: %v", err)
	}
	bd, err := stopBD()
	if err != nil {
		t.Fatalf("B's stream to D broke across the migration: %v", err)
	}
	moves := moved()
	t.Logf("placement A,C on %s, B,D on %s; moves %q; echoed A-C %d B, B-D %d B", hostOf(a), hostOf(b), moves, ac, bd)
	if len(moves) == 0 {
		t.Error("no migration event")
	}
}
