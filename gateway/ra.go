package gateway

import (
	"encoding/binary"
	"net/netip"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
)

// This file is the gateway's IPv6 router role (RFC 4861): router
// advertisements that give the VMs the segment's prefix (for SLAAC when it
// is a /64), the gateway as default router, the MTU, and the gateway as DNS
// server (RFC 8106). gVisor's stack does not advertise, so the gateway
// builds them itself. There is no DHCPv6: the advertisement's M and O flags
// are clear.

// Router advertisement timing and lifetimes.
const (
	// raInterval is the period of unsolicited advertisements (RFC 4861
	// allows 4 s to 1800 s; Linux's radvd defaults to about 10 minutes). A
	// short one lets a VM that missed one learn the router soon.
	raInterval = 60 * time.Second
	// raMinGap is the least time between two advertisements: VMs that
	// solicit at once (a host of VMs booting) share one, multicast.
	raMinGap = 200 * time.Millisecond

	raRouterLifetime    = 1800  // s: the default route lasts three missed intervals and more
	raPrefixValid       = 86400 // s
	raPrefixPreferred   = 14400 // s
	raRDNSSLifetime     = 1800  // s: RFC 8106 asks at least the interval
	raHopLimit          = 64
	icmpv6RouterSolicit = 133
	icmpv6RouterAdvert  = 134
)

// advertiser sends the gateway's router advertisements: one at start, one
// every raInterval, and one soon after each router solicitation.
type advertiser struct {
	g    *Gateway
	kick chan struct{} // a solicitation arrived; capacity 1
	last time.Time     // when the last advertisement went out (serve's own)
}

func newAdvertiser(g *Gateway) *advertiser {
	return &advertiser{g: g, kick: make(chan struct{}, 1)}
}

// solicited notes a router solicitation. It never blocks: called from the
// switch's writer for the gateway's port.
func (a *advertiser) solicited() {
	a.g.stats.rss.Add(1)
	select {
	case a.kick <- struct{}{}:
	default:
	}
}

func (a *advertiser) serve() {
	tick := time.NewTicker(raInterval)
	defer tick.Stop()
	a.send()
	for {
		select {
		case <-a.g.ctx.Done():
			return
		case <-tick.C:
		case <-a.kick:
			if wait := raMinGap - time.Since(a.last); wait > 0 {
				select {
				case <-time.After(wait):
				case <-a.g.ctx.Done():
					return
				}
			}
		}
		a.send()
	}
}

func (a *advertiser) send() {
	g := a.g
	dns := netip.Addr{}
	if len(g.cfg.DNS) > 0 {
		dns = g.addr6
	}
	g.vm.Emit(routerAdvertisement([6]byte(g.vm.MAC()), g.vm.LinkLocal(), g.prefix6, g.cfg.MTU, dns))
	g.stats.ras.Add(1)
	a.last = time.Now()
}

// routerAdvertisement builds an Ethernet frame with a router advertisement
// from mac and link-local address src to all nodes: prefix (on-link, and
// autonomous when it is a /64), the MTU, and dns as recursive DNS server
// unless it is the zero Addr.
func routerAdvertisement(mac [6]byte, src netip.Addr, prefix netip.Prefix, mtu int, dns netip.Addr) []byte {
	const (
		raLen    = 16 // type, code, checksum, hop limit, flags, lifetime, reachable, retransmit
		sllaLen  = 8
		mtuLen   = 8
		pioLen   = 32
		rdnssLen = 24
	)
	icmpLen := raLen + sllaLen + mtuLen + pioLen
	if dns.IsValid() {
		icmpLen += rdnssLen
	}
	f := make([]byte, 14+40+icmpLen)
	copy(f[0:6], []byte{0x33, 0x33, 0, 0, 0, 1})
	copy(f[6:12], mac[:])
	binary.BigEndian.PutUint16(f[12:], 0x86dd)
	ip := f[14:]
	ip[0] = 0x60
	binary.BigEndian.PutUint16(ip[4:], uint16(icmpLen))
	ip[6], ip[7] = 58, 255 // ICMPv6; hop limit 255, as RFC 4861 requires
	s, d := src.As16(), netip.IPv6LinkLocalAllNodes().As16()
	copy(ip[8:24], s[:])
	copy(ip[24:40], d[:])
	m := ip[40:]
	m[0] = icmpv6RouterAdvert
	m[4] = raHopLimit
	binary.BigEndian.PutUint16(m[6:], raRouterLifetime)
	o := m[raLen:]
	o[0], o[1] = 1, 1 // source link-layer address
	copy(o[2:8], mac[:])
	o = o[sllaLen:]
	o[0], o[1] = 5, 1 // MTU
	binary.BigEndian.PutUint32(o[4:], uint32(mtu))
	o = o[mtuLen:]
	o[0], o[1], o[2] = 3, 4, byte(prefix.Bits()) // prefix information
	o[3] = 0x80                                  // on-link
	if prefix.Bits() == 64 {
		o[3] |= 0x40 // autonomous: SLAAC needs a 64-bit interface identifier
	}
	binary.BigEndian.PutUint32(o[4:], raPrefixValid)
	binary.BigEndian.PutUint32(o[8:], raPrefixPreferred)
	p := prefix.Masked().Addr().As16()
	copy(o[16:32], p[:])
	if dns.IsValid() {
		o = o[pioLen:]
		o[0], o[1] = 25, 3 // recursive DNS server, one address
		binary.BigEndian.PutUint32(o[4:], raRDNSSLifetime)
		a := dns.As16()
		copy(o[8:24], a[:])
	}
	binary.BigEndian.PutUint16(m[2:], ^icmpv6Sum(ip[8:40], m))
	return f
}

// icmpv6Sum is the ones'-complement sum of ICMPv6 message m with its
// pseudo-header (the source and destination addresses in addrs, the
// length, the next header).
func icmpv6Sum(addrs, m []byte) uint16 {
	var pseudo [8]byte
	binary.BigEndian.PutUint32(pseudo[0:], uint32(len(m)))
	pseudo[7] = 58
	sum := checksum.Checksum(addrs, 0)
	sum = checksum.Checksum(pseudo[:], sum)
	return checksum.Checksum(m, sum)
}

// isRouterSolicitation reports whether Ethernet frame f is an ICMPv6
// router solicitation (with no extension headers, as every host sends
// them).
func isRouterSolicitation(f []byte) bool {
	return len(f) >= 14+40+8 && f[12] == 0x86 && f[13] == 0xdd && f[14]>>4 == 6 &&
		f[14+6] == 58 && f[14+40] == icmpv6RouterSolicit && f[14+41] == 0
}
