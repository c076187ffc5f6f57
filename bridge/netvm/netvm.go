// Package netvm provides in-process "VMs" for the vnet switch: each VM is
// one gVisor netstack with one Ethernet NIC, and it is a bridge.Port, so the
// switch attaches it like a TAP device or a QEMU socket.
//
// A VM has a MAC address and one IP prefix (IPv4 with ARP, or IPv6 with
// NDP), and speaks TCP, UDP and ICMP echo. Code in the same process uses it
// through DialTCP, ListenTCP, DialUDP, ListenUDP and Ping, which return
// standard net types; gVisor types stay inside this package.
//
// Frame path (files):
//
//	switch --Write--> VM.Write (port.go): filter by destination MAC, copy
//	                  into a gVisor buffer, hand it to the stack
//	switch <--Read--- VM.Read (port.go) <- txQueue (link.go) <- stack
//
// The VM starts no goroutines of its own; gVisor's TCP workers stop in
// Close. Stack construction, with the reason for every option, is in
// stack.go.
package netvm

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/link/ethernet"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"vnet/bridge"
)

// Defaults and limits.
const (
	// DefaultMTU is the IP MTU a VM gets when Config.MTU is zero: the
	// Ethernet standard, so frames are at most 1514 bytes.
	DefaultMTU = 1500
	// MaxMTU is the largest IP MTU whose frames the switch carries.
	MaxMTU = bridge.MaxFrame - ethHeaderLen
	// minMTUv4 and minMTUv6 are the smallest MTUs the protocols allow
	// (RFC 791: 68; RFC 8200: 1280).
	minMTUv4 = 68
	minMTUv6 = 1280

	// BatchSize is the most frames Read returns at once and the batch the
	// VM asks Write for. 64 frames of 1514 bytes are about 100 KB: enough
	// to amortise the per-batch costs, small enough to keep latency low.
	BatchSize = 64

	// txQueueLen is how many frames the VM may have sent that nobody has
	// Read yet. When it is full, further frames are dropped and counted
	// (TxDropQueueFull), like a NIC whose transmit ring is full; TCP then
	// backs off. 1024 frames is about 1.5 MB at MTU 1500, more than one
	// default TCP window, so a switch that keeps up never drops.
	txQueueLen = 1024

	ethHeaderLen = 14
	nicID        = tcpip.NICID(1)
)

// Config describes one VM. The zero value is not usable: MAC and Addr are
// required.
type Config struct {
	// MAC is the NIC's address. It must be a 6-byte unicast address.
	MAC net.HardwareAddr
	// Addr is the VM's address and the prefix of its directly attached
	// subnet, e.g. 10.0.0.2/24 or fd00::2/64. An IPv4 VM resolves
	// neighbours with ARP, an IPv6 VM with NDP.
	Addr netip.Prefix
	// Gateway, if valid, is the next hop of a default route. It must be in
	// Addr's subnet. Without it the VM reaches only its own subnet.
	Gateway netip.Addr
	// Addr6, if valid, is an IPv6 address and subnet beside an IPv4 Addr:
	// the VM is then dual-stack. Its listeners stay on Addr; dialling and
	// pinging pick the address of the destination's family. A router-mode
	// VM with an IPv6 address also gets the link-local address derived
	// from its MAC (LinkLocal), the source of its router advertisements.
	Addr6 netip.Prefix
	// Gateway6, if valid, is the next hop of a dual-stack VM's IPv6
	// default route: an address in Addr6's subnet or a link-local one.
	Gateway6 netip.Addr
	// MTU is the IP MTU; 0 means DefaultMTU. Frames are MTU+14 bytes at
	// most, both ways: longer frames given to Write are dropped.
	MTU int
	// Router makes the VM the segment's gateway: it takes in packets for
	// any IP address (not only its own) and may answer from any, so that
	// HandleTCP and HandleUDP see the connections other VMs open to the
	// world (see router.go).
	Router bool
}

// VM is one in-process netstack host with a single Ethernet NIC. It
// implements bridge.Port. All methods are safe for concurrent use (Read and
// Write each by one goroutine at a time, as bridge.Port says).
type VM struct {
	mac       net.HardwareAddr
	prefix    netip.Prefix
	prefix6   netip.Prefix // a dual-stack VM's IPv6 address (Config.Addr6)
	linkLocal netip.Addr   // a router's fe80:: address, if it has IPv6
	mtu       int
	netProto  tcpip.NetworkProtocolNumber

	stack *stack.Stack
	link  *linkEndpoint // below the Ethernet endpoint; owns the tx queue
	eth   *ethernet.Endpoint

	// done is closed first thing in Close; it wakes Read and Ping.
	done      chan struct{}
	closeOnce sync.Once

	// write serialises Write batches against Close, so that once Close
	// has taken it no frame reaches a stack being torn down. Write holds
	// it shared for a whole batch; only the switch's writer for this port
	// takes it, so it is never contended on the hot path.
	write struct {
		mu     sync.RWMutex
		closed bool
	}

	pingSeq atomic.Uint32
	stats   counters
}

var _ bridge.Port = (*VM)(nil)

// New builds and starts a VM. It validates cfg completely before creating
// anything.
func New(cfg Config) (*VM, error) {
	v, err := newVM(cfg)
	if err != nil {
		return nil, err
	}
	if cfg.Router && (v.netProto == ipv6Proto || v.prefix6.IsValid()) {
		v.linkLocal = linkLocalOf(v.mac)
	}
	s, err := newStack(v.protos(), cfg.Router)
	if err != nil {
		return nil, err
	}
	v.stack = s
	if err := v.attachNIC(cfg.Gateway, cfg.Gateway6); err != nil {
		s.Destroy()
		return nil, err
	}
	if cfg.Router {
		// Promiscuous: deliver packets for foreign addresses to the
		// transport handlers; spoofing: answer from those addresses.
		if err := s.SetPromiscuousMode(nicID, true); err != nil {
			s.Destroy()
			return nil, fmt.Errorf("netvm: promiscuous mode: %s", err)
		}
		if err := s.SetSpoofing(nicID, true); err != nil {
			s.Destroy()
			return nil, fmt.Errorf("netvm: spoofing: %s", err)
		}
		// Everything is on-link for the router: it answers from any
		// address, and a reply's route is looked up from there.
		for _, p := range v.protos() {
			s.AddRoute(tcpip.Route{Destination: emptySubnet(p), NIC: nicID})
		}
	}
	return v, nil
}

// protos are the VM's network protocols: its primary one, then IPv6 for a
// dual-stack VM.
func (v *VM) protos() []tcpip.NetworkProtocolNumber {
	if v.prefix6.IsValid() {
		return []tcpip.NetworkProtocolNumber{ipv4Proto, ipv6Proto}
	}
	return []tcpip.NetworkProtocolNumber{v.netProto}
}

// linkLocalOf is the modified EUI-64 link-local address of mac (RFC 4291
// appendix A), what a Linux host would give the same NIC.
func linkLocalOf(mac net.HardwareAddr) netip.Addr {
	a := [16]byte{0: 0xfe, 1: 0x80}
	a[8], a[9], a[10], a[11] = mac[0]^2, mac[1], mac[2], 0xff
	a[12], a[13], a[14], a[15] = 0xfe, mac[3], mac[4], mac[5]
	return netip.AddrFrom16(a)
}

// newVM validates cfg and returns a VM without a stack.
func newVM(cfg Config) (*VM, error) {
	if len(cfg.MAC) != 6 {
		return nil, fmt.Errorf("netvm: MAC %q: want 6 bytes", cfg.MAC)
	}
	if cfg.MAC[0]&1 != 0 {
		return nil, fmt.Errorf("netvm: MAC %s is a group address, want unicast", cfg.MAC)
	}
	if [6]byte(cfg.MAC) == [6]byte{} {
		return nil, errors.New("netvm: MAC 00:00:00:00:00:00 is not a usable address")
	}
	if !cfg.Addr.IsValid() {
		return nil, errors.New("netvm: Addr is not set (want e.g. 10.0.0.2/24)")
	}
	addr := cfg.Addr.Addr().Unmap()
	bits := cfg.Addr.Bits()
	if cfg.Addr.Addr().Is4In6() {
		bits -= 96
	}
	prefix := netip.PrefixFrom(addr, bits)
	if bits < 0 || !prefix.IsValid() {
		return nil, fmt.Errorf("netvm: Addr %s is not a valid prefix", cfg.Addr)
	}
	if addr.IsUnspecified() || addr.IsMulticast() || addr.IsLoopback() {
		return nil, fmt.Errorf("netvm: Addr %s cannot be a host address", cfg.Addr)
	}
	if cfg.Gateway.IsValid() {
		gw := cfg.Gateway.Unmap()
		if gw == addr || !prefix.Contains(gw) {
			return nil, fmt.Errorf("netvm: Gateway %s must be another address in %s", cfg.Gateway, prefix.Masked())
		}
	}
	mtu := cfg.MTU
	if mtu == 0 {
		mtu = DefaultMTU
	}
	minMTU, netProto := minMTUv4, ipv4Proto
	if addr.Is6() {
		minMTU, netProto = minMTUv6, ipv6Proto
	}
	var prefix6 netip.Prefix
	if cfg.Addr6.IsValid() {
		a6 := cfg.Addr6.Addr()
		switch {
		case !addr.Is4():
			return nil, fmt.Errorf("netvm: Addr6 %s needs an IPv4 Addr beside it (Addr is %s)", cfg.Addr6, cfg.Addr)
		case !a6.Is6() || a6.Is4In6():
			return nil, fmt.Errorf("netvm: Addr6 %s is not an IPv6 prefix", cfg.Addr6)
		case a6.IsUnspecified() || a6.IsMulticast() || a6.IsLoopback() || a6.IsLinkLocalUnicast():
			return nil, fmt.Errorf("netvm: Addr6 %s cannot be a host address", cfg.Addr6)
		}
		prefix6 = cfg.Addr6
		minMTU = minMTUv6
	}
	if cfg.Gateway6.IsValid() {
		gw := cfg.Gateway6
		if !prefix6.IsValid() || !gw.Is6() || gw == prefix6.Addr() || !(prefix6.Contains(gw) || gw.IsLinkLocalUnicast()) {
			return nil, fmt.Errorf("netvm: Gateway6 %s must be another address in Addr6's subnet %s, or link-local", gw, prefix6.Masked())
		}
	}
	if mtu < minMTU || mtu > MaxMTU {
		return nil, fmt.Errorf("netvm: MTU %d out of range [%d, %d]", mtu, minMTU, MaxMTU)
	}
	return &VM{
		mac:      append(net.HardwareAddr(nil), cfg.MAC...),
		prefix:   prefix,
		prefix6:  prefix6,
		mtu:      mtu,
		netProto: netProto,
		done:     make(chan struct{}),
	}, nil
}

// attachNIC creates the NIC, its address and the routes.
func (v *VM) attachNIC(gateway, gateway6 netip.Addr) error {
	v.link = newLinkEndpoint(uint32(v.mtu+ethHeaderLen), tcpip.LinkAddress(v.mac), txQueueLen, &v.stats.txDropQueueFull)
	v.eth = ethernet.New(v.link)
	if err := v.stack.CreateNIC(nicID, v.eth); err != nil {
		return fmt.Errorf("netvm: create NIC: %s", err)
	}
	// The attached subnets are on-link; gVisor adds no route for them by
	// itself.
	var routes []tcpip.Route
	for _, p := range []netip.Prefix{v.prefix, v.prefix6, netip.PrefixFrom(v.linkLocal, 64)} {
		if !p.IsValid() {
			continue
		}
		pa := tcpip.ProtocolAddress{
			Protocol:          protoOf(p.Addr()),
			AddressWithPrefix: tcpip.AddressWithPrefix{Address: tcpipAddr(p.Addr()), PrefixLen: p.Bits()},
		}
		if err := v.stack.AddProtocolAddress(nicID, pa, stack.AddressProperties{}); err != nil {
			return fmt.Errorf("netvm: add address %s: %s", p, err)
		}
		routes = append(routes, tcpip.Route{Destination: pa.AddressWithPrefix.Subnet(), NIC: nicID})
	}
	if gateway.IsValid() {
		routes = append(routes, tcpip.Route{
			Destination: emptySubnet(v.netProto),
			Gateway:     tcpipAddr(gateway.Unmap()),
			NIC:         nicID,
		})
	}
	if gateway6.IsValid() {
		routes = append(routes, tcpip.Route{Destination: emptySubnet(ipv6Proto), Gateway: tcpipAddr(gateway6), NIC: nicID})
	}
	v.stack.SetRouteTable(routes)
	return nil
}

// MAC returns the NIC's hardware address.
func (v *VM) MAC() net.HardwareAddr { return append(net.HardwareAddr(nil), v.mac...) }

// Addr returns the VM's IP address.
func (v *VM) Addr() netip.Addr { return v.prefix.Addr() }

// Prefix returns the VM's address with the length of its subnet.
func (v *VM) Prefix() netip.Prefix { return v.prefix }

// Prefix6 returns a dual-stack VM's IPv6 address and subnet (Config.Addr6),
// or the zero Prefix.
func (v *VM) Prefix6() netip.Prefix { return v.prefix6 }

// LinkLocal returns a router-mode VM's IPv6 link-local address, or the zero
// Addr if it has none.
func (v *VM) LinkLocal() netip.Addr { return v.linkLocal }

// Emit sends frame f from the VM as if its stack had (a router's
// advertisements, which gVisor does not make). f is copied.
func (v *VM) Emit(f []byte) { v.send(f) }

// MTU returns the IP MTU; frames are at most MTU()+14 bytes.
func (v *VM) MTU() int { return v.mtu }

// String names the VM for logs: its MAC and address.
func (v *VM) String() string { return fmt.Sprintf("netvm(%s %s)", v.mac, v.prefix) }

// Close stops the VM: blocked and later Reads return net.ErrClosed, Writes
// fail, open connections and listeners are aborted, and gVisor's worker
// goroutines have exited when Close returns. Frames still queued are
// dropped. Close is safe to call more than once; it always returns nil.
func (v *VM) Close() error {
	v.closeOnce.Do(func() {
		close(v.done)
		v.write.mu.Lock()
		v.write.closed = true
		v.write.mu.Unlock()
		// Destroy aborts all endpoints, stops the TCP workers and waits
		// for them, and removes the NIC, which closes v.link and drains
		// its queue.
		v.stack.Destroy()
	})
	return nil
}

func (v *VM) isClosed() bool {
	select {
	case <-v.done:
		return true
	default:
		return false
	}
}

// protoOf is the network protocol of address a.
func protoOf(a netip.Addr) tcpip.NetworkProtocolNumber {
	if a.Unmap().Is4() {
		return ipv4Proto
	}
	return ipv6Proto
}

// tcpipAddr converts an unmapped netip.Addr.
func tcpipAddr(a netip.Addr) tcpip.Address { return tcpip.AddrFromSlice(a.AsSlice()) }
