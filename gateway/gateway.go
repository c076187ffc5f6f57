// Package gateway is the proxy's rootless presence on the virtual segment
// (`vnet proxy --netstack CIDR`): a gVisor netstack router, attached to the
// proxy's switch like any VM, that
//
//   - hands out addresses, the router, the DNS server and the MTU by DHCP
//     (dhcp.go), and for an IPv6 prefix by router advertisements (ra.go);
//   - answers DNS at its own address by relaying queries to the proxy
//     machine's resolvers (dns.go);
//   - carries the VMs' TCP and UDP to the real network through the proxy's
//     own sockets, a userspace NAT as in slirp4netns and gvisor-tap-vsock
//     (nat.go); connections to the gateway's own address go to the proxy
//     machine's loopback, as slirp's 10.0.2.2 does;
//   - publishes VM services on the proxy machine: --forward tcp:8080=VMIP:80
//     (forward.go).
//
// Nothing here needs root: only ordinary sockets on the proxy machine.
package gateway

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"vnet/bridge"
	"vnet/bridge/netvm"
)

// Defaults.
const (
	DefaultLease   = time.Hour
	DefaultUDPIdle = time.Minute      // a UDP flow with no datagram either way this long is closed
	dnsIdle        = 10 * time.Second // a DNS flow: one query, one answer
	dialTimeout    = 10 * time.Second
)

// Config configures a Gateway.
type Config struct {
	// Prefix is the segment and the gateway's place in it: 10.0.0.1/24
	// puts the gateway at 10.0.0.1; a bare network (10.0.0.0/24) puts it
	// at the first address. IPv4.
	Prefix netip.Prefix
	// Prefix6, if valid, makes the segment dual-stack: the gateway's IPv6
	// address and prefix (fd00:1::1/64; a bare prefix puts the gateway at
	// ::1). It is announced in router advertisements, with the gateway as
	// default router and DNS server; a /64 lets the VMs configure their
	// own addresses (SLAAC).
	Prefix6 netip.Prefix
	// MAC is the gateway's NIC address (default: a locally administered
	// address derived from Prefix, stable across restarts).
	MAC net.HardwareAddr
	// MTU is the segment's IP MTU, announced by DHCP (default 1500).
	MTU int
	// DNS are the resolvers queries are relayed to (default: those of
	// /etc/resolv.conf). With none, DNS queries go unanswered.
	DNS []netip.AddrPort
	// Forwards publish VM services on the proxy machine.
	Forwards []Forward
	// Lease is the DHCP lease time (default DefaultLease).
	Lease time.Duration
	// InUse, if set, tells DHCP an address some VM already uses (a static
	// address the proxy has seen), so it is not handed out.
	InUse func(netip.Addr) bool
	// UDPIdle closes a NAT'd UDP flow idle this long (default DefaultUDPIdle).
	UDPIdle time.Duration
	// Dial opens the proxy machine's side of a NAT'd connection (default
	// net.Dialer); tests may restrict where it goes.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Log receives what happened (default: discarded).
	Log *slog.Logger
}

// Stats are the gateway's counters.
type Stats struct {
	TCPConns     uint64 `json:"tcp_conns"`      // NAT'd TCP connections opened
	TCPRefused   uint64 `json:"tcp_refused"`    // ... refused (dial failed: the VM got a reset)
	UDPFlows     uint64 `json:"udp_flows"`      // NAT'd UDP flows
	UDPDropped   uint64 `json:"udp_dropped"`    // datagrams not delivered (dial failed, socket error)
	DNSQueries   uint64 `json:"dns_queries"`    // queries relayed
	DHCPLeases   uint64 `json:"dhcp_leases"`    // ACKs sent
	DHCPBad      uint64 `json:"dhcp_bad"`       // malformed or unanswerable DHCP messages
	RAs          uint64 `json:"ras"`            // router advertisements sent
	RSs          uint64 `json:"rss"`            // router solicitations received
	ForwardConns uint64 `json:"forward_conns"`  // connections / flows through --forward
	ForwardFails uint64 `json:"forward_failed"` // ... that could not reach the VM
}

type counters struct {
	tcpConns, tcpRefused, udpFlows, udpDropped, dnsQueries, dhcpLeases, dhcpBad, fwdConns, fwdFails, ras, rss atomic.Uint64
}

// Gateway is the router. It is a bridge.Port: attach it to the switch;
// closing it (the switch does, when the port is removed) stops everything.
type Gateway struct {
	cfg     Config
	vm      *netvm.VM
	addr    netip.Addr
	prefix  netip.Prefix // masked
	addr6   netip.Addr   // zero without Config.Prefix6
	prefix6 netip.Prefix // masked
	dhcp    *dhcpServer
	ra      *advertiser // nil without Config.Prefix6

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	closers []func() error // listeners and sockets to close on Close

	closeOnce sync.Once
	stats     counters
}

var _ bridge.Port = (*Gateway)(nil)

// New builds and starts the gateway: its stack, the DHCP and DNS servers,
// the NAT and the published ports. It fails, having opened nothing, on a
// bad configuration or a forward it cannot listen on.
func New(cfg Config) (*Gateway, error) {
	addr, prefix, err := gatewayAddr(cfg.Prefix)
	if err != nil {
		return nil, err
	}
	var addr6 netip.Addr
	var prefix6 netip.Prefix
	if cfg.Prefix6.IsValid() {
		if addr6, prefix6, err = gatewayAddr6(cfg.Prefix6); err != nil {
			return nil, err
		}
	}
	if cfg.MAC == nil {
		cfg.MAC = derivedMAC(prefix)
	}
	if cfg.MTU == 0 {
		cfg.MTU = netvm.DefaultMTU
	}
	if cfg.Lease <= 0 {
		cfg.Lease = DefaultLease
	}
	if cfg.UDPIdle <= 0 {
		cfg.UDPIdle = DefaultUDPIdle
	}
	if cfg.DNS == nil {
		cfg.DNS = systemResolvers("/etc/resolv.conf")
	}
	if cfg.Dial == nil {
		d := &net.Dialer{Timeout: dialTimeout}
		cfg.Dial = d.DialContext
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	for _, f := range cfg.Forwards {
		to := f.To.Addr().Unmap()
		if !(prefix.Contains(to) && to != addr) && !(prefix6.IsValid() && prefix6.Contains(to) && to != addr6) {
			segs := prefix.String()
			if prefix6.IsValid() {
				segs += " or " + prefix6.String()
			}
			return nil, fmt.Errorf("gateway: forward %s: %s is not a VM address in %s", f, f.To.Addr(), segs)
		}
	}
	vcfg := netvm.Config{MAC: cfg.MAC, Addr: netip.PrefixFrom(addr, prefix.Bits()), MTU: cfg.MTU, Router: true}
	if addr6.IsValid() {
		vcfg.Addr6 = netip.PrefixFrom(addr6, prefix6.Bits())
	}
	vm, err := netvm.New(vcfg)
	if err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	g := &Gateway{cfg: cfg, vm: vm, addr: addr, prefix: prefix, addr6: addr6, prefix6: prefix6}
	g.ctx, g.cancel = context.WithCancel(context.Background())
	ok := false
	defer func() {
		if !ok {
			g.Close()
		}
	}()
	vm.HandleTCP(g.natTCP)
	vm.HandleUDP(g.natUDP)
	if g.dhcp, err = newDHCPServer(g); err != nil {
		return nil, err
	}
	for _, f := range cfg.Forwards {
		if err := g.publish(f); err != nil {
			return nil, err
		}
	}
	if addr6.IsValid() {
		g.ra = newAdvertiser(g)
		if !g.goServe(g.ra.serve) {
			return nil, net.ErrClosed
		}
	}
	ok = true
	cfg.Log.Info("netstack gateway up", "addr", addr, "segment", prefix, "mac", cfg.MAC.String(), "mtu", cfg.MTU,
		"dns", fmt.Sprint(cfg.DNS), "forwards", len(cfg.Forwards))
	if addr6.IsValid() {
		cfg.Log.Info("netstack gateway: IPv6 by router advertisements", "addr", addr6, "segment", prefix6,
			"router", vm.LinkLocal(), "slaac", prefix6.Bits() == 64)
	}
	return g, nil
}

// gatewayAddr splits p into the gateway's address and the masked segment.
func gatewayAddr(p netip.Prefix) (netip.Addr, netip.Prefix, error) {
	if !p.IsValid() {
		return netip.Addr{}, netip.Prefix{}, errors.New("gateway: no segment (want e.g. 10.0.0.1/24)")
	}
	a := p.Addr().Unmap()
	if !a.Is4() {
		return netip.Addr{}, netip.Prefix{}, fmt.Errorf("gateway: %s: only IPv4 segments are supported", p)
	}
	bits := p.Bits()
	if p.Addr().Is4In6() {
		bits -= 96
	}
	if bits > 30 || bits < 8 {
		return netip.Addr{}, netip.Prefix{}, fmt.Errorf("gateway: %s: want a prefix length from /8 to /30", p)
	}
	masked := netip.PrefixFrom(a, bits).Masked()
	if a == masked.Addr() {
		a = a.Next()
	}
	if a == broadcast(masked) {
		return netip.Addr{}, netip.Prefix{}, fmt.Errorf("gateway: %s is the segment's broadcast address", a)
	}
	return a, masked, nil
}

// gatewayAddr6 splits p into the gateway's IPv6 address and the masked
// prefix.
func gatewayAddr6(p netip.Prefix) (netip.Addr, netip.Prefix, error) {
	a := p.Addr()
	if !a.Is6() || a.Is4In6() {
		return netip.Addr{}, netip.Prefix{}, fmt.Errorf("gateway: %s is not an IPv6 prefix", p)
	}
	if a.IsLinkLocalUnicast() || a.IsMulticast() || a.IsLoopback() {
		return netip.Addr{}, netip.Prefix{}, fmt.Errorf("gateway: %s: want a global or unique-local prefix (e.g. fd00:1::1/64)", p)
	}
	if p.Bits() < 16 || p.Bits() > 126 {
		return netip.Addr{}, netip.Prefix{}, fmt.Errorf("gateway: %s: want a prefix length from /16 to /126 (/64 for SLAAC)", p)
	}
	masked := p.Masked()
	if a == masked.Addr() {
		a = a.Next()
	}
	return a, masked, nil
}

// broadcast is the last address of an IPv4 prefix.
func broadcast(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]) | host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// derivedMAC is a locally administered unicast MAC from the segment, so a
// restarted proxy keeps the address the VMs' ARP caches hold.
func derivedMAC(p netip.Prefix) net.HardwareAddr {
	h := sha256.Sum256([]byte("vnet-gateway " + p.String()))
	return net.HardwareAddr{0x02, h[0], h[1], h[2], h[3], h[4]}
}

// Addr is the gateway's address on the segment.
func (g *Gateway) Addr() netip.Addr { return g.addr }

// Addr6 is the gateway's IPv6 address on the segment (zero without
// Config.Prefix6); its router advertisements come from LinkLocal.
func (g *Gateway) Addr6() netip.Addr { return g.addr6 }

// LinkLocal is the gateway's IPv6 link-local address, the VMs' default
// router (zero without Config.Prefix6).
func (g *Gateway) LinkLocal() netip.Addr { return g.vm.LinkLocal() }

// MAC is the gateway's NIC address.
func (g *Gateway) MAC() net.HardwareAddr { return g.vm.MAC() }

// Stats returns the counters.
func (g *Gateway) Stats() Stats {
	c := &g.stats
	return Stats{TCPConns: c.tcpConns.Load(), TCPRefused: c.tcpRefused.Load(), UDPFlows: c.udpFlows.Load(),
		UDPDropped: c.udpDropped.Load(), DNSQueries: c.dnsQueries.Load(), DHCPLeases: c.dhcpLeases.Load(),
		DHCPBad: c.dhcpBad.Load(), ForwardConns: c.fwdConns.Load(), ForwardFails: c.fwdFails.Load(),
		RAs: c.ras.Load(), RSs: c.rss.Load()}
}

// Read, Write and BatchSize make the gateway a bridge.Port (its NIC).
func (g *Gateway) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	return g.vm.Read(bufs, sizes, offset)
}
func (g *Gateway) Write(bufs [][]byte, offset int) (int, error) {
	if g.ra != nil {
		for _, b := range bufs {
			if isRouterSolicitation(b[offset:]) {
				g.ra.solicited()
			}
		}
	}
	return g.vm.Write(bufs, offset)
}
func (g *Gateway) BatchSize() int { return g.vm.BatchSize() }

// QuickWrites makes the gateway, like its VM, a bridge.QuickPort.
func (g *Gateway) QuickWrites() bool { return g.vm.QuickWrites() }

// Close stops the servers, the NAT and the published ports, and waits for
// their goroutines. Safe to call more than once.
func (g *Gateway) Close() error {
	g.closeOnce.Do(func() {
		g.mu.Lock()
		g.cancel() // under mu: no goServe adds to wg once Wait may run
		closers := g.closers
		g.closers = nil
		g.mu.Unlock()
		for _, c := range closers {
			c()
		}
		g.vm.Close() // aborts every NAT'd connection inside the stack
		g.wg.Wait()
	})
	return nil
}

// onClose registers c to be closed by Close; if Close has run, it closes c
// now and reports false.
func (g *Gateway) onClose(c func() error) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.ctx.Err() != nil {
		c()
		return false
	}
	g.closers = append(g.closers, c)
	return true
}

// goServe runs f in a goroutine Close waits for; after Close it runs
// nothing and reports false.
func (g *Gateway) goServe(f func()) bool {
	g.mu.Lock()
	if g.ctx.Err() != nil {
		g.mu.Unlock()
		return false
	}
	g.wg.Add(1)
	g.mu.Unlock()
	go func() {
		defer g.wg.Done()
		f()
	}()
	return true
}
