// Package nat finds out how vnet daemons can reach each other across NATs:
// a STUN codec, the STUN server the proxy runs, the STUN client hosts run,
// classification of a NAT's mapping behaviour, and the ordering of the
// addresses worth trying when two hosts build a fast path.
//
// # The NAT model (RFC 4787)
//
// A NAT gives an inside socket (local ip:port) a public ip:port, the
// mapping, when that socket first sends to some outside endpoint. RFC 4787
// §4.1 names three mapping behaviours, by what decides whether a later
// packet to another outside endpoint reuses the mapping:
//
//   - endpoint-independent: the same public ip:port for every destination
//     ("full cone", "restricted cone", "port-restricted cone" in RFC 3489
//     terms). What one STUN server reports is what every peer will see, so a
//     peer can be told that address and both sides can punch.
//   - address-dependent and address-and-port-dependent: a new public port
//     (or ip) per destination ip, or per destination ip:port ("symmetric
//     NAT"). What a STUN server reports is useless to a third party; punching
//     only works if the other side is endpoint-independent and lucky, and
//     the dependable path is a relay.
//
// This package reports the second and third together as
// [MappingEndpointDependent]: two STUN ports on the same proxy IP tell
// endpoint-independent from address-and-port-dependent, which is the
// distinction punching needs; they cannot tell address-dependent from
// address-and-port-dependent, and vnet does not need to. A socket whose
// reflexive address is one of its own local addresses is [MappingNone] (no
// NAT; reachable directly as far as mapping goes). Filtering behaviour
// (RFC 4787 §5, what inbound packets a mapping admits) is not measured: vnet
// punches from both sides, which opens any filter.
//
// # How vnet uses it
//
//  1. The proxy runs a [Server] on its UDP port (tunnel.UDPMux hands it every
//     datagram for which [IsSTUN] is true) and a second [Server] on a second
//     UDP port, so no outside STUN server is needed. [Server] keeps no state
//     per request and answers with at most [MaxResponseGrowth] bytes more than
//     it received, so it is no amplifier.
//  2. A host probes both proxy ports from its one UDP socket — the socket its
//     star link and fast paths use, so the mappings learned are the ones
//     peers will hit — with a [Client]: its reader goroutine offers every
//     STUN datagram to [Client.Handle] first (responses), and the result is
//     the host's reflexive addresses plus a [Mapping]. The probe is repeated
//     when the network changes and mappings are refreshed by the star link's
//     keepalives (well inside the ~30 s UDP mapping timeout of RFC 4787 §4.3).
//  3. Each host reports its reflexive and local addresses and its Mapping to
//     the proxy over the star link (the hosts JSON "addrs" and "nat").
//  4. When adaptation wants a fast path A–B, the proxy plays lighthouse: it
//     tells A B's [Candidates] and B A's; both send authenticated handshakes
//     to every candidate at once, so each side's outbound packet opens its own
//     NAT for the other's (hole punching), and the first handshake that
//     completes picks the address ("via": "punched", or "direct" with no NAT).
//     Before that, the dialer probes briefly the peer's candidates on a LAN
//     the two share ([LocalCandidates]: the same subnet, or private
//     addresses behind one public IP), so that hosts behind one NAT talk
//     over their private addresses instead of through a NAT that may not
//     hairpin; [PathOf] names the path a link took ("path": "local", "nat",
//     "public").
//  5. If neither side can be reached — typically both endpoint-dependent, or
//     UDP blocked — the fast path is carried over the star through the proxy
//     ("via": "relayed"); the star is always there, so correctness never
//     depends on punching.
//
// Everything here is pure logic over byte slices and small function types:
// the package opens no sockets and starts no goroutines of its own.
// nat/stuntest is an in-memory STUN lab (servers behind a simulated NAT,
// with loss) for tests.
package nat

import (
	"encoding/binary"
	"net/netip"
	"time"
)

// STUN header layout (RFC 5389 §6):
//
//	 0                   1                   2                   3
//	 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|0 0|     STUN Message Type     |         Message Length        |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                         Magic Cookie                          |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                     Transaction ID (96 bits)                  |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//
// Message Length counts the attributes after the header, a multiple of 4.
const (
	headerLen   = 20
	magicCookie = 0x2112A442
)

// Software is the SOFTWARE attribute the server puts in its responses.
const Software = "vnet"

// IsSTUN reports whether b looks like one STUN message (RFC 5389 §6): the
// first two bits are 0, bytes 4..8 hold the magic cookie 0x2112A442, and the
// length field is a multiple of 4 and equals len(b)-20 (a datagram carries
// exactly one message). It does not parse the attributes. It lets a socket's
// reader tell STUN apart from tunnel traffic.
func IsSTUN(b []byte) bool {
	if len(b) < headerLen || b[0]&0xC0 != 0 {
		return false
	}
	if binary.BigEndian.Uint32(b[4:8]) != magicCookie {
		return false
	}
	n := int(binary.BigEndian.Uint16(b[2:4]))
	return n%4 == 0 && headerLen+n == len(b)
}

// Probe timing. RFC 5389 §7.2.1 starts at RTO 500 ms and doubles over 7
// sends (39.5 s). vnet probes its own proxy, at start and when the network
// changes, and wants an answer within about a second; a lost request is
// more likely than a path slower than 200 ms, so requests are resent at a
// short fixed interval with the same transaction ID (a response to any copy
// counts). Variables so tests can shrink them.
var (
	// retransmitInterval is the wait between sends of one request.
	retransmitInterval = 200 * time.Millisecond
	// probeAttempts is how many times one request is sent at most.
	probeAttempts = 4
	// finalWait is how long Probe waits for late responses after the last send.
	finalWait = 400 * time.Millisecond
)

// Mapping is a NAT's mapping behaviour as seen from one socket. The values
// are the strings of the control API's hosts "nat" field.
type Mapping string

const (
	// MappingUnknown: fewer than two servers (distinct ip:port) answered,
	// and the one that did saw a translated address.
	MappingUnknown Mapping = "unknown"
	// MappingNone: every reflexive address equals a local address of the
	// socket: no NAT on the way to the servers. One answer is enough.
	MappingNone Mapping = "none"
	// MappingEndpointIndependent: every server saw the same ip:port.
	MappingEndpointIndependent Mapping = "endpoint-independent"
	// MappingEndpointDependent: servers saw different ports or IPs
	// (address- or address-and-port-dependent mapping, "symmetric NAT").
	MappingEndpointDependent Mapping = "endpoint-dependent"
)

// Result is what a Probe learned.
type Result struct {
	// Reflexive lists the distinct reflexive (public) addresses seen, in the
	// order of the servers that reported them.
	Reflexive []netip.AddrPort
	// PerServer maps each server that answered (as passed to Probe) to the
	// reflexive address it reported.
	PerServer map[netip.AddrPort]netip.AddrPort
	// Mapping is Classify(PerServer, local).
	Mapping Mapping
}

// Classify is the pure function behind Probe's Mapping. perServer holds the
// reflexive address each answering server reported; local holds this
// socket's own addresses (interface IPs with the socket's port). IPv4-mapped
// IPv6 addresses count as IPv4.
//
//   - No valid answer: MappingUnknown.
//   - Every reflexive address is local: MappingNone (even with one answer).
//   - Otherwise only translated answers count, grouped by address family
//     (an IPv4 and an IPv6 server naturally see different addresses): if any
//     family has two servers that saw different addresses,
//     MappingEndpointDependent; else if any family has two servers,
//     MappingEndpointIndependent; else MappingUnknown.
func Classify(perServer map[netip.AddrPort]netip.AddrPort, local []netip.AddrPort) Mapping {
	isLocal := make(map[netip.AddrPort]bool, len(local))
	for _, a := range local {
		isLocal[unmap(a)] = true
	}
	type group struct {
		first netip.AddrPort
		n     int
		same  bool
	}
	var (
		answers int
		fam     [2]group // 0: IPv4, 1: IPv6
	)
	for server, refl := range perServer {
		refl = unmap(refl)
		if !server.IsValid() || !refl.IsValid() {
			continue
		}
		answers++
		if isLocal[refl] {
			continue
		}
		g := &fam[1]
		if refl.Addr().Is4() {
			g = &fam[0]
		}
		if g.n == 0 {
			g.first, g.same = refl, true
		} else if refl != g.first {
			g.same = false
		}
		g.n++
	}
	if answers == 0 {
		return MappingUnknown
	}
	if fam[0].n == 0 && fam[1].n == 0 {
		return MappingNone
	}
	m := MappingUnknown
	for _, g := range fam {
		if g.n < 2 {
			continue
		}
		if !g.same {
			return MappingEndpointDependent
		}
		m = MappingEndpointIndependent
	}
	return m
}

// Candidates orders the addresses worth trying to reach a peer: its
// reflexive addresses first (they work across NATs), then its local ones
// (same LAN), without duplicates. IPv4 and IPv6 are both kept; IPv4-mapped
// IPv6 addresses are reduced to IPv4 and IPv6 zones dropped (a zone names
// an interface of the host that reported it, not of the peer that dials
// it). Addresses that cannot be sent to
// (invalid, unspecified IP, port 0) are dropped. The inputs are not modified.
func Candidates(reflexive, local []netip.AddrPort) []netip.AddrPort {
	out := make([]netip.AddrPort, 0, len(reflexive)+len(local))
	seen := make(map[netip.AddrPort]bool, cap(out))
	for _, list := range [][]netip.AddrPort{reflexive, local} {
		for _, a := range list {
			a = unmap(a)
			if !a.IsValid() || a.Addr().IsUnspecified() || a.Port() == 0 || seen[a] {
				continue
			}
			seen[a] = true
			out = append(out, a)
		}
	}
	return out
}

// unmap reduces an IPv4-mapped IPv6 address to IPv4 (what a dual-stack
// socket reports for IPv4 peers) and drops IPv6 zones, so that the same
// endpoint compares equal however it was obtained.
func unmap(a netip.AddrPort) netip.AddrPort {
	if !a.IsValid() {
		return a
	}
	return netip.AddrPortFrom(a.Addr().Unmap().WithZone(""), a.Port())
}
