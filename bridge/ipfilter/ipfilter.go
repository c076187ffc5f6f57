// Package ipfilter is the IP part of vnet's access rules: a filter on IP
// frames by address or prefix, protocol and destination port, its text form
// (shared by the topology language and `vnet ctl rule`), and the classifier
// that reads those fields from an Ethernet frame without allocating.
//
// # Syntax
//
// A filter is a sequence of clauses, each at most once, in any order:
//
//	ip | ip4 | ip6      IP frames of either family, IPv4 only, IPv6 only
//	proto P             tcp, udp, icmp, icmpv6 or a number 0-255
//	from ADDR[/LEN]     source address or prefix (IPv4 or IPv6)
//	to ADDR[/LEN]       destination address or prefix
//	port N[-M]          destination port or range (needs proto tcp or udp)
//
// for example "proto tcp from 10.0.0.0/24 to 10.0.0.5 port 22". The family
// follows from the addresses and from icmp (IPv4) or icmpv6 (IPv6) when not
// given; a filter whose parts name both families is an error. The canonical
// form (String) starts with the family word, then proto, from, to and port,
// with prefixes masked ("10.0.0.7/24" is written 10.0.0.0/24), full-length
// prefixes written as addresses and the protocols 1, 6, 17 and 58 by name.
//
// # What matches
//
// Only IP frames match a filter: ARP and every other EtherType never do, so
// a rule that denies "proto tcp port 22" leaves ARP working (NDP is ICMPv6:
// a filter on IPv6 frames without proto can block it). Untagged Ethernet and up to two VLAN tags (802.1Q,
// 802.1ad) are read. IPv4 options are skipped (IHL). IPv6 extension headers
// hop-by-hop, routing, fragment, destination options and AH are skipped (up
// to 8 of them) to find the upper-layer protocol; a chain longer than that,
// or cut short, leaves the protocol unknown, and such a frame matches only
// filters without proto and port. A fragment other than the first (IPv4 or
// IPv6) carries no ports: it matches filters by address and protocol but
// never a filter with a port, as without connection tracking in other
// filters; nor does a packet too short to hold its ports.
package ipfilter

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Family values of Filter.Fam and Packet.Fam.
const (
	FamNone uint8 = iota // no filter (Filter), not an IP frame (Packet)
	FamAny               // ip: either family
	Fam4                 // IPv4
	Fam6                 // IPv6
)

// Protocol numbers with names.
const (
	ProtoICMP   = 1
	ProtoTCP    = 6
	ProtoUDP    = 17
	ProtoICMPv6 = 58
)

// Filter matches IP frames. The zero Filter is "no filter" (IsZero); it is
// comparable, so rules holding one compare with ==.
type Filter struct {
	Fam      uint8
	HasProto bool
	Proto    uint8
	Src, Dst netip.Prefix // invalid (zero): any address
	HasPort  bool
	PortLo   uint16
	PortHi   uint16
}

// IsZero reports whether f is no filter at all.
func (f Filter) IsZero() bool { return f.Fam == FamNone }

// Parse parses a filter from its space-separated text (see the package
// documentation). The empty text is the zero Filter.
func Parse(s string) (Filter, error) {
	return ParseFields(strings.Fields(s))
}

// maxFieldLen bounds a field quoted in an error.
const maxFieldLen = 40

func quote(s string) string {
	if len(s) > maxFieldLen {
		return fmt.Sprintf("%q...", s[:maxFieldLen])
	}
	return fmt.Sprintf("%q", s)
}

// ParseFields parses a filter given as fields.
func ParseFields(toks []string) (Filter, error) {
	var f Filter
	if len(toks) == 0 {
		return f, nil
	}
	fam := FamAny
	seen := map[string]bool{}
	for i := 0; i < len(toks); i++ {
		kw := toks[i]
		key := kw
		if kw == "ip" || kw == "ip4" || kw == "ip6" {
			key = "family"
		}
		if seen[key] {
			if key == "family" {
				return Filter{}, errors.New("filter: at most one of ip, ip4 and ip6")
			}
			return Filter{}, fmt.Errorf("filter: %s given twice", quote(kw))
		}
		seen[key] = true
		var arg string
		switch kw {
		case "ip":
			continue
		case "ip4":
			fam = Fam4
			continue
		case "ip6":
			fam = Fam6
			continue
		case "proto", "from", "to", "port":
			if i+1 >= len(toks) {
				return Filter{}, fmt.Errorf("filter: expected a value after `%s`, got end of rule", kw)
			}
			i++
			arg = toks[i]
		default:
			return Filter{}, fmt.Errorf("filter: unknown word %s, expected ip, ip4, ip6, proto, from, to or port", quote(kw))
		}
		switch kw {
		case "proto":
			p, err := parseProto(arg)
			if err != nil {
				return Filter{}, err
			}
			f.HasProto, f.Proto = true, p
		case "from", "to":
			p, err := parsePrefix(arg)
			if err != nil {
				return Filter{}, fmt.Errorf("filter: after `%s`: %w", kw, err)
			}
			if kw == "from" {
				f.Src = p
			} else {
				f.Dst = p
			}
		case "port":
			lo, hi, err := parsePorts(arg)
			if err != nil {
				return Filter{}, err
			}
			f.HasPort, f.PortLo, f.PortHi = true, lo, hi
		}
	}
	// The family, from what the parts imply.
	implied := map[uint8]string{}
	for _, p := range [2]netip.Prefix{f.Src, f.Dst} {
		if p.IsValid() {
			implied[famOf(p.Addr())] = p.String()
		}
	}
	if f.HasProto && f.Proto == ProtoICMP {
		implied[Fam4] = "icmp"
	}
	if f.HasProto && f.Proto == ProtoICMPv6 {
		implied[Fam6] = "icmpv6"
	}
	if len(implied) > 1 {
		return Filter{}, fmt.Errorf("filter: %s is IPv4 and %s IPv6; a rule matches one family (write two rules)", implied[Fam4], implied[Fam6])
	}
	for g, what := range implied {
		if fam != FamAny && fam != g {
			return Filter{}, fmt.Errorf("filter: %s contradicts %s", what, famName(fam))
		}
		fam = g
	}
	f.Fam = fam
	if f.HasPort && (!f.HasProto || (f.Proto != ProtoTCP && f.Proto != ProtoUDP)) {
		return Filter{}, errors.New("filter: `port` needs `proto tcp` or `proto udp`")
	}
	return f, nil
}

func famOf(a netip.Addr) uint8 {
	if a.Is4() {
		return Fam4
	}
	return Fam6
}

func famName(f uint8) string {
	switch f {
	case Fam4:
		return "ip4"
	case Fam6:
		return "ip6"
	}
	return "ip"
}

func parseProto(s string) (uint8, error) {
	switch s {
	case "tcp":
		return ProtoTCP, nil
	case "udp":
		return ProtoUDP, nil
	case "icmp":
		return ProtoICMP, nil
	case "icmpv6", "ipv6-icmp":
		return ProtoICMPv6, nil
	}
	n, err := strconv.ParseUint(s, 10, 8)
	if err != nil {
		return 0, fmt.Errorf("filter: expected a protocol (tcp, udp, icmp, icmpv6 or 0-255) after `proto`, got %s", quote(s))
	}
	return uint8(n), nil
}

func parsePrefix(s string) (netip.Prefix, error) {
	var p netip.Prefix
	if strings.Contains(s, "/") {
		var err error
		if p, err = netip.ParsePrefix(s); err != nil {
			return p, fmt.Errorf("expected an address or ADDR/LEN, got %s", quote(s))
		}
	} else {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			return p, fmt.Errorf("expected an address or ADDR/LEN, got %s", quote(s))
		}
		p = netip.PrefixFrom(a, a.BitLen())
	}
	if p.Addr().Is4In6() {
		return netip.Prefix{}, fmt.Errorf("%s is an IPv4-mapped IPv6 address; write the IPv4 address", quote(s))
	}
	return p.Masked(), nil
}

func parsePorts(s string) (lo, hi uint16, err error) {
	a, b, rng := strings.Cut(s, "-")
	l, err1 := strconv.ParseUint(a, 10, 16)
	h, err2 := l, error(nil)
	if rng {
		h, err2 = strconv.ParseUint(b, 10, 16)
	}
	if err1 != nil || err2 != nil || l > h {
		return 0, 0, fmt.Errorf("filter: expected a port 0-65535 or a range LOW-HIGH after `port`, got %s", quote(s))
	}
	return uint16(l), uint16(h), nil
}

// String returns f in canonical form; "" for the zero Filter.
func (f Filter) String() string {
	if f.IsZero() {
		return ""
	}
	var b strings.Builder
	b.WriteString(famName(f.Fam))
	if f.HasProto {
		b.WriteString(" proto ")
		b.WriteString(ProtoName(f.Proto))
	}
	for _, x := range [2]struct {
		kw string
		p  netip.Prefix
	}{{"from", f.Src}, {"to", f.Dst}} {
		if !x.p.IsValid() {
			continue
		}
		b.WriteString(" " + x.kw + " ")
		if x.p.IsSingleIP() {
			b.WriteString(x.p.Addr().String())
		} else {
			b.WriteString(x.p.String())
		}
	}
	if f.HasPort {
		b.WriteString(" port " + strconv.Itoa(int(f.PortLo)))
		if f.PortHi != f.PortLo {
			b.WriteString("-" + strconv.Itoa(int(f.PortHi)))
		}
	}
	return b.String()
}

// Short describes what f matches in a few words for `vnet ctl route`, e.g.
// "tcp/22", "udp/5000-5010 to 10.0.0.5", "icmp", "ip6".
func (f Filter) Short() string {
	var parts []string
	switch {
	case f.HasPort:
		p := ProtoName(f.Proto) + "/" + strconv.Itoa(int(f.PortLo))
		if f.PortHi != f.PortLo {
			p += "-" + strconv.Itoa(int(f.PortHi))
		}
		parts = append(parts, p)
	case f.HasProto:
		parts = append(parts, ProtoName(f.Proto))
	default:
		parts = append(parts, famName(f.Fam))
	}
	if f.Src.IsValid() {
		parts = append(parts, "from "+f.Src.String())
	}
	if f.Dst.IsValid() {
		parts = append(parts, "to "+f.Dst.String())
	}
	return strings.Join(parts, " ")
}

// ProtoName names an IP protocol number as a filter writes it.
func ProtoName(p uint8) string {
	switch p {
	case ProtoTCP:
		return "tcp"
	case ProtoUDP:
		return "udp"
	case ProtoICMP:
		return "icmp"
	case ProtoICMPv6:
		return "icmpv6"
	}
	return strconv.Itoa(int(p))
}

// Packet is what Classify read from a frame.
type Packet struct {
	Fam      uint8 // FamNone: not an IP frame (nothing else is set)
	HasProto bool  // the upper-layer protocol is known
	Proto    uint8
	HasPort  bool // a TCP or UDP destination port was read
	Port     uint16
	Src, Dst Addr
}

// Addr is an IP address as two big-endian halves; an IPv4 address is in the
// low 32 bits of the second, the rest zero.
type Addr [2]uint64

func addrOf(a netip.Addr) Addr {
	if a.Is4() {
		b := a.As4()
		return Addr{0, uint64(binary.BigEndian.Uint32(b[:]))}
	}
	b := a.As16()
	return Addr{binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])}
}

// Matcher is a Filter compiled for matching frames quickly.
type Matcher struct {
	fam, proto                 uint8
	hasProto, hasPort          bool
	hasSrc, hasDst             bool
	lo, hi                     uint16
	src, srcMask, dst, dstMask Addr
}

func mask(p netip.Prefix) Addr {
	bits, total := p.Bits(), p.Addr().BitLen()
	var m Addr
	// The address's bits sit at the end of the 128 (IPv4: its 32 low bits).
	off := 128 - total
	for i := 0; i < bits; i++ {
		b := off + i
		m[b/64] |= 1 << (63 - b%64)
	}
	return m
}

// Compile returns f's Matcher.
func (f Filter) Compile() Matcher {
	m := Matcher{fam: f.Fam, proto: f.Proto, hasProto: f.HasProto, hasPort: f.HasPort, lo: f.PortLo, hi: f.PortHi}
	if f.Src.IsValid() {
		m.hasSrc, m.src, m.srcMask = true, addrOf(f.Src.Addr()), mask(f.Src)
	}
	if f.Dst.IsValid() {
		m.hasDst, m.dst, m.dstMask = true, addrOf(f.Dst.Addr()), mask(f.Dst)
	}
	return m
}

// Match reports whether the classified packet p matches m. The Matcher of
// the zero Filter matches everything; any other matches IP packets only.
func (m *Matcher) Match(p *Packet) bool {
	if m.fam == FamNone {
		return true
	}
	if p.Fam == FamNone || (m.fam != FamAny && m.fam != p.Fam) {
		return false
	}
	if m.hasProto && (!p.HasProto || p.Proto != m.proto) {
		return false
	}
	if m.hasPort && (!p.HasPort || p.Port < m.lo || p.Port > m.hi) {
		return false
	}
	if m.hasDst && (p.Dst[0]&m.dstMask[0] != m.dst[0] || p.Dst[1]&m.dstMask[1] != m.dst[1]) {
		return false
	}
	if m.hasSrc && (p.Src[0]&m.srcMask[0] != m.src[0] || p.Src[1]&m.srcMask[1] != m.src[1]) {
		return false
	}
	return true
}

// Match reports whether the classified packet p matches f (see
// Matcher.Match; compile once to match many).
func (f Filter) Match(p *Packet) bool {
	m := f.Compile()
	return m.Match(p)
}

// Ethernet and IP constants.
const (
	etherIPv4  = 0x0800
	etherIPv6  = 0x86dd
	ether8021Q = 0x8100
	ether8021D = 0x88a8
	maxExtHdrs = 8
)

// Classify reads the IP fields of Ethernet frame d (starting at the
// destination MAC) into p, without allocating. It reports whether d is an IP
// frame; p.Fam is FamNone when it is not.
func Classify(d []byte, p *Packet) bool {
	*p = Packet{}
	if len(d) < 14 {
		return false
	}
	off := 12
	et := binary.BigEndian.Uint16(d[off:])
	for tags := 0; (et == ether8021Q || et == ether8021D) && tags < 2; tags++ {
		off += 4
		if len(d) < off+2 {
			return false
		}
		et = binary.BigEndian.Uint16(d[off:])
	}
	ip := d[off+2:]
	switch et {
	case etherIPv4:
		return classify4(ip, p)
	case etherIPv6:
		return classify6(ip, p)
	}
	return false
}

func classify4(ip []byte, p *Packet) bool {
	if len(ip) < 20 || ip[0]>>4 != 4 {
		return false
	}
	ihl := int(ip[0]&0x0f) * 4
	if ihl < 20 || len(ip) < ihl {
		return false
	}
	p.Fam = Fam4
	p.Src = Addr{0, uint64(binary.BigEndian.Uint32(ip[12:16]))}
	p.Dst = Addr{0, uint64(binary.BigEndian.Uint32(ip[16:20]))}
	p.HasProto, p.Proto = true, ip[9]
	if binary.BigEndian.Uint16(ip[6:8])&0x1fff != 0 { // not the first fragment
		return true
	}
	readPort(ip[ihl:], p)
	return true
}

func classify6(ip []byte, p *Packet) bool {
	if len(ip) < 40 || ip[0]>>4 != 6 {
		return false
	}
	p.Fam = Fam6
	p.Src = Addr{binary.BigEndian.Uint64(ip[8:16]), binary.BigEndian.Uint64(ip[16:24])}
	p.Dst = Addr{binary.BigEndian.Uint64(ip[24:32]), binary.BigEndian.Uint64(ip[32:40])}
	nh, rest := ip[6], ip[40:]
	first := true
	for range maxExtHdrs + 1 {
		var n int
		switch nh {
		case 0, 43, 60: // hop-by-hop, routing, destination options
			if len(rest) < 8 {
				return true
			}
			n = (int(rest[1]) + 1) * 8
		case 44: // fragment
			if len(rest) < 8 {
				return true
			}
			n = 8
			if binary.BigEndian.Uint16(rest[2:4])>>3 != 0 {
				first = false
			}
		case 51: // authentication header
			if len(rest) < 8 {
				return true
			}
			n = (int(rest[1]) + 2) * 4
		default:
			p.HasProto, p.Proto = true, nh
			if first {
				readPort(rest, p)
			}
			return true
		}
		if len(rest) < n {
			return true
		}
		nh, rest = rest[0], rest[n:]
	}
	return true // too many extension headers: the protocol stays unknown
}

func readPort(l4 []byte, p *Packet) {
	if (p.Proto == ProtoTCP || p.Proto == ProtoUDP) && len(l4) >= 4 {
		p.HasPort, p.Port = true, binary.BigEndian.Uint16(l4[2:4])
	}
}
