package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"vnet/adapt"
	"vnet/appliance"
	"vnet/bridge"
	"vnet/bridge/netvm"
	"vnet/patterns"
	"vnet/tunnel"
)

func runDemo(ctx context.Context, args []string) error { return runDemoTo(ctx, args, os.Stdout) }

func runDemoTo(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlags("demo", "[flags]", `
Run a whole vnet network inside this process, on loopback, with no root: a
proxy, hosts, and VMs built on gVisor's netstack (a userspace TCP/IP stack per
VM) attached to the hosts' switches. The proxy's links are held to --star-mbit
in user space, standing in for the WAN between the sites; host-to-host paths
are not. The demo:
  1. checks every VM pair over the star (TCP, echoed and checked byte for byte);
  2. runs the BSP workload (vnet patterns) through each --phases topology:
     first on the star alone, then with adaptation on, where the proxy infers
     the topology from the VMs' frames, adds fast paths between the hosts that
     talk most and rewrites the forwarding rules by itself; it measures the
     workload's iterations per second both ways;
  3. migrates a VM to another host while a TCP stream to it runs;
  4. prints the speedup adaptation gave each phase.
A web dashboard shows it all live: open the URL it prints.

Examples:
  vnet demo
  vnet demo --hosts 4 --vms 2 --phases ring,all2all,mesh2d --measure 5s
  vnet demo --keep      # then: vnet ctl --api ADDR links, or the dashboard`)
	nHosts := fs.Int("hosts", 4, "number of hosts (2..9)")
	nVMs := fs.Int("vms", 2, "VMs per host (1..9)")
	sizeStr := fs.String("bytes", "256KiB", "bytes each VM sends to each other VM in the connectivity check")
	phasesStr := fs.StringSlice("phases", []string{"ring", "all2all"}, "the workload's topologies, in order: "+strings.Join(patterns.Topologies, ", "))
	msgStr := fs.String("size", "64KiB", "the workload's message size")
	measure := fs.Duration("measure", 4*time.Second, "how long each rate is measured (star, then adapted)")
	starMbit := fs.Float64("star-mbit", 200, "the proxy's links, all together, carry at most this many Mbit/s (0: no limit)")
	api := fs.String("api", "127.0.0.1:0", "control API and dashboard of the demo's proxy")
	keep := fs.Bool("keep", false, "keep the network running after the demo, until Ctrl-C")
	mkLog := logFlags(fs)
	fs.Lookup("log-level").DefValue = "warn"
	fs.Set("log-level", "warn")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *nHosts < 2 || *nHosts > 9 || *nVMs < 1 || *nVMs > 9 {
		return usageErr("--hosts must be 2..9 and --vms 1..9")
	}
	for _, p := range *phasesStr {
		if !slices.Contains(patterns.Topologies, p) {
			return usageErr("--phases: unknown topology %q (want %s)", p, strings.Join(patterns.Topologies, ", "))
		}
	}
	if *measure < 500*time.Millisecond {
		return usageErr("--measure: at least 500ms")
	}
	checkSize, err := parseSize(*sizeStr)
	if err != nil {
		return usageErr("--bytes: %v", err)
	}
	msgSize, err := parseSize(*msgStr)
	if err != nil {
		return usageErr("--size: %v", err)
	}
	log, err := mkLog()
	if err != nil {
		return err
	}
	d := &demo{out: out, log: log, size: checkSize, msgSize: msgSize, measure: *measure, starMbit: *starMbit}
	defer d.close()
	if err := d.build(*nHosts, *nVMs, *api); err != nil {
		return err
	}
	if err := d.run(ctx, *phasesStr); err != nil {
		return err
	}
	if *keep {
		fmt.Fprintf(d.out, "\nthe network keeps running (adaptation on); dashboard http://%s/ , or: vnet ctl --api %s links   (Ctrl-C to stop)\n",
			d.proxy.APIAddr(), d.proxy.APIAddr())
		d.proxy.SetAdapting(true)
		<-ctx.Done()
	}
	return nil
}

// demoAdapt re-plans often and damps little: a demo changes its pattern
// every few seconds on purpose.
var demoAdapt = appliance.AdaptConfig{Enabled: false, Interval: time.Second, Window: 3 * time.Second,
	Budget: adapt.Budget{MaxPerHost: 3, Share: 0.9},
	Damp:   adapt.DampConfig{MinDwell: 10 * time.Second, Hysteresis: 0.02, MaxChangesPerMinute: 200}}

// loopbackListen keeps the demo's hosts on loopback.
var loopbackListen = []tunnel.Endpoint{{Kind: "tcp", Addr: "127.0.0.1:0"}, {Kind: "udp", Addr: "127.0.0.1:0"}}

type demoVM struct {
	*netvm.VM
	host string
	ln   net.Listener
}

type demo struct {
	out      io.Writer
	log      *slog.Logger
	size     int // bytes per pair in the connectivity check
	msgSize  int // the workload's message size
	measure  time.Duration
	starMbit float64
	proxy    *appliance.Proxy
	hosts    []*appliance.Host
	names    []string
	vms      []*demoVM

	mu    sync.Mutex
	pairs map[[2]int]int64 // bytes sent, by (from, to) VM index
}

func (d *demo) build(nHosts, nVMs int, api string) error {
	key, err := tunnel.GenerateKey()
	if err != nil {
		return err
	}
	d.proxy, err = appliance.NewProxy(appliance.ProxyConfig{Key: key, API: api, Log: d.log,
		Adapt: demoAdapt, StarMbps: d.starMbit,
		Listen: []tunnel.Endpoint{{Kind: "udp", Addr: "127.0.0.1:0"}, {Kind: "tcp", Addr: "127.0.0.1:0"}}})
	if err != nil {
		return err
	}
	proxyEP := tunnel.Endpoint{Kind: "udp", Addr: d.proxy.Addrs()[0]}
	fmt.Fprintf(d.out, "vnet demo: a proxy, %d hosts and %d netstack VMs on loopback\n", nHosts, nHosts*nVMs)
	fmt.Fprintf(d.out, "  proxy  star links on %s, control API on %s\n", strings.Join(d.proxy.Addrs(), " "), d.proxy.APIAddr())
	fmt.Fprintf(d.out, "  dashboard  http://%s/\n", d.proxy.APIAddr())
	if d.starMbit > 0 {
		fmt.Fprintf(d.out, "  the proxy's links carry at most %g Mbit/s in all (an emulated WAN); host-to-host paths are not limited\n", d.starMbit)
	}
	for h := 1; h <= nHosts; h++ {
		name := fmt.Sprintf("h%d", h)
		var ports []appliance.LocalPort
		var desc []string
		for v := 1; v <= nVMs; v++ {
			vm, err := netvm.New(netvm.Config{MAC: net.HardwareAddr{0x52, 0x54, 0, 0, byte(h), byte(v)},
				Addr: netip.MustParsePrefix(fmt.Sprintf("10.77.0.%d/24", h*10+v))})
			if err != nil {
				return err
			}
			ln, err := vm.ListenTCP(7000)
			if err != nil {
				vm.Close()
				return err
			}
			dv := &demoVM{VM: vm, host: name, ln: ln}
			d.vms = append(d.vms, dv)
			go d.serve(dv)
			// Through a cable, so that the VM can migrate in-process.
			ports = append(ports, appliance.LocalPort{Name: fmt.Sprintf("vm%d", v), Port: vm.Plug()})
			desc = append(desc, fmt.Sprintf("%s (%s)", vm.Addr(), vm.MAC()))
		}
		host, err := appliance.NewHost(appliance.HostConfig{Name: name, Proxies: []tunnel.Endpoint{proxyEP}, Key: key,
			Listen: loopbackListen, Ports: ports, Log: d.log})
		if err != nil {
			return err
		}
		d.hosts = append(d.hosts, host)
		d.names = append(d.names, name)
		fmt.Fprintf(d.out, "  host %s VMs %s\n", name, strings.Join(desc, ", "))
	}
	d.proxy.SetMigrator(appliance.InProcessMigrator(d.hosts...))
	return d.waitFor("every host to join the proxy", 10*time.Second, func() bool {
		up := 0
		for _, h := range d.proxy.Hosts() {
			if h.State == "up" {
				up++
			}
		}
		return up == nHosts
	})
}

func (d *demo) close() {
	for _, vm := range d.vms {
		vm.ln.Close()
	}
	for _, h := range d.hosts {
		h.Close() // unplugs its VMs
	}
	if d.proxy != nil {
		d.proxy.Close()
	}
	for _, vm := range d.vms {
		vm.Close()
	}
}

// serve echoes every connection back, counting nothing: the sender counts.
func (d *demo) serve(vm *demoVM) {
	for {
		c, err := vm.ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			io.Copy(c, c)
		}()
	}
}

func (d *demo) waitFor(what string, limit time.Duration, ok func() bool) error {
	deadline := time.Now().Add(limit)
	for !ok() {
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %v waiting for %s", limit, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

// traffic makes every VM send d.size random bytes to every other VM's echo
// server and checks every byte that comes back.
func (d *demo) traffic(ctx context.Context) (time.Duration, error) {
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, len(d.vms)*len(d.vms))
	for i, a := range d.vms {
		for j, b := range d.vms {
			if i == j {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := d.exchange(ctx, a, b); err != nil {
					errs <- err
					return
				}
				d.mu.Lock()
				d.pairs[[2]int{i, j}] += int64(d.size)
				d.mu.Unlock()
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		return 0, err
	}
	return time.Since(start), nil
}

func (d *demo) exchange(ctx context.Context, a, b *demoVM) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	c, err := a.DialTCP(ctx, netip.AddrPortFrom(b.Addr(), 7000))
	if err != nil {
		return fmt.Errorf("%s -> %s: %w", a.Addr(), b.Addr(), err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	data := make([]byte, d.size)
	rand.Read(data)
	werr := make(chan error, 1)
	go func() { _, err := c.Write(data); werr <- err }()
	got := make([]byte, d.size)
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("%s -> %s: %w", a.Addr(), b.Addr(), err)
	}
	if err := <-werr; err != nil {
		return fmt.Errorf("%s -> %s: %w", a.Addr(), b.Addr(), err)
	}
	if !bytes.Equal(got, data) {
		return fmt.Errorf("%s -> %s: the data came back corrupted", a.Addr(), b.Addr())
	}
	return nil
}

// phaseResult is what one workload phase measured.
type phaseResult struct {
	topo          string
	star, adapted float64       // iterations per second
	inferred      time.Duration // from the workload's start to the right topology at the proxy
	settled       time.Duration // from adaptation on to the controller's fast paths being up and stable
	links         int           // fast paths up
}

func (d *demo) run(ctx context.Context, phases []string) error {
	d.pairs = map[[2]int]int64{}
	n := len(d.vms)
	total := int64(n*(n-1)) * int64(d.size) * 2 // each byte goes there and back
	a, b := d.vms[0], d.vms[len(d.vms)-1]

	fmt.Fprintf(d.out, "\nstep 1: every VM pair (%d) exchanges %s over the star, echoed and checked byte for byte\n",
		n*(n-1), sizeString(int64(d.size)))
	el, err := d.traffic(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(d.out, "  done in %v: %s moved, %.0f Mbit/s in all\n", el.Round(time.Millisecond), sizeString(total),
		float64(total)*8/el.Seconds()/1e6)
	if err := d.waitFor("the hosts to report their VMs", 5*time.Second, func() bool {
		return len(d.proxy.VMs()) == len(d.vms)
	}); err != nil {
		return err
	}
	d.printRoute(ctx, a, b)

	fmt.Fprintf(d.out, "\nstep 2: the BSP workload (vnet patterns, %s messages, one rank per VM) as %s;\n"+
		"  each first on the star alone, then with adaptation on: the proxy infers the topology from the\n"+
		"  frames and adds fast paths and forwarding rules by itself\n", sizeString(int64(d.msgSize)), strings.Join(phases, ", then "))
	var results []phaseResult
	for i, topo := range phases {
		r, err := d.phase(ctx, topo, 7100+i)
		if err != nil {
			return err
		}
		results = append(results, r)
	}
	d.printRoute(ctx, a, b)

	fmt.Fprintf(d.out, "\nstep 3: live migration of a VM while a TCP stream to it runs\n")
	if err := d.migration(ctx); err != nil {
		return err
	}
	time.Sleep(appliance.StatusInterval + 200*time.Millisecond) // final counters from the hosts
	d.printSummary(results)
	return nil
}

// phase runs topo on the star alone, then with adaptation, and measures
// the workload's rate both ways.
func (d *demo) phase(ctx context.Context, topo string, port int) (phaseResult, error) {
	res := phaseResult{topo: topo}
	d.proxy.SetAdapting(false)
	if err := d.proxy.DropAdapted(); err != nil {
		return res, err
	}
	if err := d.waitFor("the previous fast paths to close", 15*time.Second, func() bool { return d.fastUp() == 0 }); err != nil {
		return res, err
	}
	var peers []string
	for _, vm := range d.vms {
		peers = append(peers, netip.AddrPortFrom(vm.Addr(), uint16(port)).String())
	}
	pctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var iters atomic.Int64
	done := make(chan error, len(d.vms))
	for r, vm := range d.vms {
		cfg := patterns.Config{Rank: r, Peers: peers, Topology: topo, Iters: 1 << 30, Size: d.msgSize, Net: vm.VM,
			Timeout: 30 * time.Second}
		if r == 0 { // BSP: every rank goes at the pace of the slowest, so one counts for all
			cfg.OnIter = func(n int) { iters.Store(int64(n)) }
		}
		go func() {
			_, err := patterns.Run(pctx, cfg)
			done <- err
		}()
	}
	started := time.Now()
	var inferredNS atomic.Int64 // the proxy infers while the controller is paused too
	go func() {
		for pctx.Err() == nil {
			if t := d.proxy.Topology(); t.Archetype == topo && len(t.Nodes) == len(d.vms) {
				inferredNS.Store(int64(time.Since(started)))
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	defer func() {
		cancel()
		for range d.vms {
			<-done
		}
	}()
	failed := func() error {
		select {
		case err := <-done:
			return fmt.Errorf("the %s workload stopped: %v", topo, err)
		default:
			return nil
		}
	}
	rate := func() (float64, error) {
		i0, t0 := iters.Load(), time.Now()
		select {
		case <-time.After(d.measure):
		case <-ctx.Done():
			return 0, ctx.Err()
		}
		return float64(iters.Load()-i0) / time.Since(t0).Seconds(), failed()
	}
	if err := d.waitFor("the workload's first iteration", 30*time.Second, func() bool { return iters.Load() > 0 || failed() != nil }); err != nil {
		return res, err
	}
	var err error
	if res.star, err = rate(); err != nil {
		return res, err
	}
	fmt.Fprintf(d.out, "  %s on the star: %.1f iterations/s\n", topo, res.star)

	d.proxy.SetAdapting(true)
	fmt.Fprintf(d.out, "  %s: adaptation on\n", topo)
	on := time.Now()
	next := on.Add(time.Second)
	var stableSince time.Time
	last := -1
	for {
		now := time.Now()
		t := d.proxy.Topology()
		if ns := inferredNS.Load(); res.inferred == 0 && ns > 0 {
			res.inferred = time.Duration(ns)
			fmt.Fprintf(d.out, "    the proxy inferred %s %v after the workload started (now: confidence %.2f, %d edges)\n",
				topo, res.inferred.Round(time.Millisecond), t.Confidence, len(t.Edges))
		}
		up := d.fastUp()
		if up != last {
			last, stableSince = up, now
		}
		// Settled: fast paths up and no change for two re-plans.
		if up > 0 && res.inferred > 0 && now.Sub(stableSince) > 2*time.Second {
			res.settled, res.links = stableSince.Sub(on), up
			break
		}
		if now.After(next) {
			name := t.Archetype
			if name == "" {
				name = "(none yet)"
			}
			fmt.Fprintf(d.out, "    +%.0fs  topology %s, %d fast paths up, %d iterations done\n", now.Sub(on).Seconds(), name, up, iters.Load())
			next = next.Add(time.Second)
		}
		if now.Sub(on) > 30*time.Second {
			return res, fmt.Errorf("adaptation to %s did not settle within 30 s (topology %q, %d fast paths)", topo, t.Archetype, up)
		}
		if err := failed(); err != nil {
			return res, err
		}
		time.Sleep(50 * time.Millisecond)
	}
	fmt.Fprintf(d.out, "    %d fast paths up %.1fs after adaptation was turned on, and stable since\n", res.links, res.settled.Seconds())
	if res.adapted, err = rate(); err != nil {
		return res, err
	}
	fmt.Fprintf(d.out, "  %s adapted: %.1f iterations/s, %.2fx the star\n", topo, res.adapted, res.adapted/res.star)
	return res, nil
}

func (d *demo) fastUp() int {
	up := 0
	for _, l := range d.proxy.Links() {
		if l.Role == "fast" && l.State == "up" {
			up++
		}
	}
	return up
}

// migration moves the last VM to the first VM's host while the first
// streams to it, and reports the outage.
func (d *demo) migration(ctx context.Context) error {
	a, b := d.vms[0], d.vms[len(d.vms)-1]
	to := a.host
	if b.host == to {
		to = d.vms[1].host
	}
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	c, err := a.DialTCP(sctx, netip.AddrPortFrom(b.Addr(), 7000))
	if err != nil {
		return err
	}
	defer c.Close()
	var echoed, maxGap atomic.Int64
	stop, errc := make(chan struct{}), make(chan error, 1)
	go func() {
		out, in := make([]byte, 16<<10), make([]byte, 16<<10)
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
				errc <- errors.New("the stream came back corrupted")
				return
			}
			echoed.Add(int64(len(in)))
			now := time.Now()
			maxGap.Store(max(maxGap.Load(), int64(now.Sub(prev))))
			prev = now
		}
	}()
	time.Sleep(500 * time.Millisecond)
	from := b.host
	r, err := d.proxy.Migrate(ctx, b.MAC().String(), to)
	if err != nil {
		close(stop)
		<-errc
		return err
	}
	b.host = to
	time.Sleep(time.Second)
	close(stop)
	if err := <-errc; err != nil {
		return fmt.Errorf("the TCP stream broke across the migration: %w", err)
	}
	fmt.Fprintf(d.out, "  moved %s (%s) from %s to %s: the proxy saw it there %d ms after the move; the stream from %s\n"+
		"  paused at most %v and went on intact (%s echoed and checked)\n", b.Addr(), b.MAC(), from, to, r.ReachableMS,
		a.Addr(), time.Duration(maxGap.Load()).Round(time.Millisecond), sizeString(echoed.Load()))
	d.printRoute(ctx, a, b)
	return nil
}

func (d *demo) printRoute(ctx context.Context, a, b *demoVM) {
	var src, dst bridge.MAC
	copy(src[:], a.MAC())
	copy(dst[:], b.MAC())
	r, err := d.proxy.Route(ctx, src, dst)
	if err != nil {
		fmt.Fprintf(d.out, "  route %s -> %s: %v\n", a.Addr(), b.Addr(), err)
		return
	}
	var hops []string
	for _, h := range r.Hops {
		hops = append(hops, h.Host+" "+h.To)
	}
	fmt.Fprintf(d.out, "  route %s -> %s: %s (delivered: %v)\n", a.Addr(), b.Addr(), strings.Join(hops, " => "), r.Delivered)
}

func (d *demo) printSummary(results []phaseResult) {
	tw := tabwriter.NewWriter(d.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(d.out, "\nlinks:")
	fmt.Fprintln(tw, "  NAME\tROLE\tSTATE\tRTT\tTX\tRX")
	for _, l := range d.proxy.Links() {
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\n", l.Name, l.Role, l.State, rtt(l.RTTus), size(l.TxBytes), size(l.RxBytes))
	}
	tw.Flush()
	fmt.Fprintln(d.out, "\nthe workload, iterations per second (measured over", d.measure, "each):")
	fmt.Fprintln(tw, "  TOPOLOGY\tSTAR\tADAPTED\tSPEEDUP\tINFERRED AFTER\tFAST PATHS\tSETTLED AFTER")
	logSum := 0.0
	for _, r := range results {
		fmt.Fprintf(tw, "  %s\t%.2f\t%.2f\t%.2fx\t%v\t%d\t%v\n", r.topo, r.star, r.adapted, r.adapted/r.star,
			r.inferred.Round(10*time.Millisecond), r.links, r.settled.Round(10*time.Millisecond))
		logSum += math.Log(r.adapted / r.star)
	}
	tw.Flush()
	if len(results) > 0 {
		fmt.Fprintf(d.out, "\nspeedup from adaptation: %.2fx (geometric mean over %d phases)\n", math.Exp(logSum/float64(len(results))), len(results))
	}
}

func sizeString(b int64) string { return size(uint64(b)) }

// parseSize parses 123, 64KiB, 4MiB, 1GiB (also K, M, G, KB, MB).
func parseSize(s string) (int, error) {
	mult := 1
	t := strings.ToUpper(strings.TrimSpace(s))
	for _, u := range []struct {
		suffix string
		m      int
	}{{"GIB", 1 << 30}, {"MIB", 1 << 20}, {"KIB", 1 << 10}, {"GB", 1 << 30}, {"MB", 1 << 20}, {"KB", 1 << 10},
		{"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}, {"B", 1}} {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSuffix(t, u.suffix), u.m
			break
		}
	}
	var n int
	if _, err := fmt.Sscan(t, &n); err != nil || n <= 0 || n > (1<<30)/mult {
		return 0, fmt.Errorf("%q is not a size like 256KiB or 4MiB", s)
	}
	return n * mult, nil
}
