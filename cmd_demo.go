package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"vnet/appliance"
	"vnet/bridge"
	"vnet/bridge/netvm"
	"vnet/infer"
	"vnet/patterns"
	"vnet/tunnel"
)

func runDemo(ctx context.Context, args []string) error {
	fs := newFlags("demo", "[flags]", `
Run a whole vnet network inside this process, on loopback, with no root: a
proxy, a few hosts, and VMs built on gVisor's netstack (a userspace TCP/IP
stack per VM) attached to the hosts' switches. Every VM pair exchanges real TCP
traffic through the star (VM -> host -> proxy -> host -> VM), checked byte for
byte; then fast-path links join the hosts directly and the traffic runs again.
The demo prints the routes, links and bytes per VM pair.

Examples:
  vnet demo
  vnet demo --hosts 4 --vms 2 --bytes 4MiB
  vnet demo --keep      # then, in another terminal: vnet ctl --api ADDR links`)
	nHosts := fs.Int("hosts", 3, "number of hosts (2..9)")
	nVMs := fs.Int("vms", 2, "VMs per host (1..9)")
	sizeStr := fs.String("bytes", "1MiB", "bytes each VM sends to each other VM per phase (e.g. 256KiB, 4MiB)")
	api := fs.String("api", "127.0.0.1:0", "control API of the demo's proxy")
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
	msgSize, err := parseSize(*sizeStr)
	if err != nil {
		return usageErr("--bytes: %v", err)
	}
	log, err := mkLog()
	if err != nil {
		return err
	}
	d := &demo{out: os.Stdout, log: log, size: msgSize}
	defer d.close()
	if err := d.build(*nHosts, *nVMs, *api); err != nil {
		return err
	}
	if err := d.run(ctx); err != nil {
		return err
	}
	if *keep {
		fmt.Fprintf(d.out, "\nthe network keeps running; try: vnet ctl --api %s links   (Ctrl-C to stop)\n", d.proxy.APIAddr())
		<-ctx.Done()
	}
	return nil
}

// demoAccount makes inference react within a second, for a short demo.
var demoAccount = infer.AccountConfig{TimeBound: 250 * time.Millisecond, TMax: 250 * time.Millisecond, TWait: 2 * time.Second}

// loopbackListen keeps the demo's hosts on loopback.
var loopbackListen = []tunnel.Endpoint{{Kind: "tcp", Addr: "127.0.0.1:0"}, {Kind: "udp", Addr: "127.0.0.1:0"}}

type demoVM struct {
	*netvm.VM
	host string
	ln   net.Listener
}

type demo struct {
	out   io.Writer
	log   *slog.Logger
	size  int
	proxy *appliance.Proxy
	hosts []*appliance.Host
	names []string
	vms   []*demoVM

	mu    sync.Mutex
	pairs map[[2]int]int64 // bytes sent, by (from, to) VM index
}

func (d *demo) build(nHosts, nVMs int, api string) error {
	key, err := tunnel.GenerateKey()
	if err != nil {
		return err
	}
	d.proxy, err = appliance.NewProxy(appliance.ProxyConfig{Key: key, API: api, Log: d.log, Infer: demoAccount,
		Global: infer.GlobalConfig{Window: 3 * time.Second},
		Listen: []tunnel.Endpoint{{Kind: "udp", Addr: "127.0.0.1:0"}, {Kind: "tcp", Addr: "127.0.0.1:0"}}})
	if err != nil {
		return err
	}
	proxyEP := tunnel.Endpoint{Kind: "udp", Addr: d.proxy.Addrs()[0]}
	fmt.Fprintf(d.out, "vnet demo: a proxy, %d hosts and %d netstack VMs on loopback\n", nHosts, nHosts*nVMs)
	fmt.Fprintf(d.out, "  proxy  star links on %s, control API on %s\n", strings.Join(d.proxy.Addrs(), " "), d.proxy.APIAddr())
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
		host, err := appliance.NewHost(appliance.HostConfig{Name: name, Proxies: []tunnel.Endpoint{proxyEP}, Key: key, Infer: demoAccount,
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

func (d *demo) run(ctx context.Context) error {
	d.pairs = map[[2]int]int64{}
	n := len(d.vms)
	total := int64(n*(n-1)) * int64(d.size) * 2 // each byte goes there and back
	a, b := d.vms[0], d.vms[len(d.vms)-1]

	fmt.Fprintf(d.out, "\nphase 1: every VM pair (%d) exchanges %s over the star, echoed and checked byte for byte\n",
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

	fmt.Fprintf(d.out, "\nphase 2: fast-path links between every pair of hosts\n")
	start := time.Now()
	var want []string
	for i := range d.names {
		for j := i + 1; j < len(d.names); j++ {
			name, err := d.proxy.AddLink(d.names[i], d.names[j])
			if err != nil {
				return err
			}
			want = append(want, name)
		}
	}
	if err := d.waitFor("the fast paths", 15*time.Second, func() bool {
		up := 0
		for _, l := range d.proxy.Links() {
			if l.Role == "fast" && l.State == "up" {
				up++
			}
		}
		return up == len(want)
	}); err != nil {
		return err
	}
	fmt.Fprintf(d.out, "  %d fast paths up in %v\n", len(want), time.Since(start).Round(time.Millisecond))
	el2, err := d.traffic(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(d.out, "  the same traffic again: done in %v, %.0f Mbit/s in all (star: %v)\n", el2.Round(time.Millisecond),
		float64(total)*8/el2.Seconds()/1e6, el.Round(time.Millisecond))
	d.printRoute(ctx, a, b)

	if err := d.inference(ctx); err != nil {
		return err
	}
	// Let the hosts report their final counters.
	time.Sleep(appliance.StatusInterval + 200*time.Millisecond)
	d.printSummary()
	return nil
}

// inference runs the BSP workload as a ring, then all-to-all, and shows
// the proxy inferring each from the VMs' frames alone.
func (d *demo) inference(ctx context.Context) error {
	fmt.Fprintf(d.out, "\nphase 3: the VMs run the BSP workload (vnet patterns); vnet infers its topology from their frames\n")
	for i, topo := range []string{"ring", "all2all"} {
		var peers []string
		for _, vm := range d.vms {
			peers = append(peers, netip.AddrPortFrom(vm.Addr(), uint16(7100+i)).String())
		}
		pctx, cancel := context.WithCancel(ctx)
		done := make(chan error, len(d.vms))
		start := time.Now()
		for r, vm := range d.vms {
			go func() {
				_, err := patterns.Run(pctx, patterns.Config{Rank: r, Peers: peers, Topology: topo, Iters: 1 << 30,
					Size: 32 << 10, Net: vm.VM, Timeout: 30 * time.Second})
				done <- err
			}()
		}
		err := d.waitFor("the "+topo+" topology", 30*time.Second, func() bool {
			t := d.proxy.Topology()
			return t.Archetype == topo && len(t.Nodes) == len(d.vms)
		})
		took := time.Since(start)
		cancel()
		for range d.vms {
			<-done
		}
		if err != nil {
			return err
		}
		t := d.proxy.Topology()
		fmt.Fprintf(d.out, "  %-8s inferred %v after the workload started: %s, confidence %.2f, %d edges\n", topo,
			took.Round(time.Millisecond), t.Archetype, t.Confidence, len(t.Edges))
	}
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

func (d *demo) printSummary() {
	tw := tabwriter.NewWriter(d.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(d.out, "\nlinks:")
	fmt.Fprintln(tw, "  NAME\tROLE\tSTATE\tRTT\tTX\tRX")
	for _, l := range d.proxy.Links() {
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\n", l.Name, l.Role, l.State, rtt(l.RTTus), size(l.TxBytes), size(l.RxBytes))
	}
	tw.Flush()
	fmt.Fprintln(d.out, "\nbytes sent per VM pair (both phases; each echoed back too):")
	fmt.Fprint(tw, "  from \\ to")
	for _, b := range d.vms {
		fmt.Fprintf(tw, "\t%s", b.Addr())
	}
	fmt.Fprintln(tw)
	for i, a := range d.vms {
		fmt.Fprintf(tw, "  %s (%s)", a.Addr(), a.host)
		for j := range d.vms {
			if i == j {
				fmt.Fprint(tw, "\t-")
				continue
			}
			fmt.Fprintf(tw, "\t%s", sizeString(d.pairs[[2]int{i, j}]))
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()
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
