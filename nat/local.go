package nat

import (
	"fmt"
	"net/netip"
)

// Hosts behind one NAT, or on one LAN, should reach each other over their
// private addresses: a path through the NAT's public address needs the NAT
// to hairpin (many do not, and those that do carry the traffic twice
// through the router). The peer's candidates hold its private addresses
// beside its mappings; LocalCandidates says which of them are worth a short
// local probe before anything else, and PathOf names the path a link took.

// Path names, the values of the control API's links "path" field.
const (
	// PathLocal: the peer's address on a LAN this host shares (the same
	// subnet, or private addresses behind the same NAT); nothing crosses a
	// NAT.
	PathLocal = "local"
	// PathNAT: one of the peer's NAT mappings (its reflexive address): a
	// punched hole, or a hairpin through a NAT both share.
	PathNAT = "nat"
	// PathPublic: the peer's own address across the underlay, no mapping on
	// its side.
	PathPublic = "public"
)

// LocalHint is what a host knows about where it and a fast path's peer
// sit, for LocalCandidates.
type LocalHint struct {
	// SelfPublic are this host's public IPs: its NAT mappings' addresses
	// (reflexive addresses that are not its own).
	SelfPublic []netip.Addr
	// PeerPublic are the peer's (the IPs of its NAT mappings).
	PeerPublic []netip.Addr
	// SamePublic: the proxy sees both ends at one public IP (their star
	// links come from one address), which covers hosts without STUN.
	SamePublic bool
	// OnLink are this host's interface addresses with their prefix lengths
	// (e.g. 10.50.0.2/24): a peer address inside one of the prefixes is on
	// this host's LAN. A peer address equal to one of this host's own
	// (docker0's 172.17.0.1 is on every Docker machine) is another
	// machine's copy of a private address, never local (loopback aside:
	// hosts on one machine share it).
	OnLink []netip.Prefix
}

// LocalCandidates picks from the peer's candidates (peer, in the proxy's
// order) those on a LAN this host shares, to probe before the others, and
// says why (empty when none). A candidate is local when it lies in one of
// this host's on-link prefixes ("same subnet"), or when both hosts sit
// behind one public IP and the candidate is a private address ("same
// NAT"), which also finds a peer on another subnet behind the same router.
// On-link ones come first; otherwise the peer's order is kept. Candidates
// that cannot be sent to, link-local ones (they need a zone) and the
// peer's own NAT mappings are never local; IPv4-mapped addresses count as
// IPv4. The inputs are not modified.
func LocalCandidates(peer []netip.AddrPort, h LocalHint) ([]netip.AddrPort, string) {
	shared, same := sharedPublic(h)
	peerPublic := make(map[netip.Addr]bool, len(h.PeerPublic))
	for _, a := range h.PeerPublic {
		peerPublic[a.Unmap().WithZone("")] = true
	}
	var onLink, private []netip.AddrPort
	var why string
	seen := map[netip.AddrPort]bool{}
	for _, c := range peer {
		c = unmap(c)
		ip := c.Addr()
		if !c.IsValid() || ip.IsUnspecified() || c.Port() == 0 || ip.IsMulticast() || ip.IsLinkLocalUnicast() ||
			peerPublic[ip] || seen[c] {
			continue
		}
		seen[c] = true
		if isOwn(ip, h.OnLink) {
			continue
		}
		if p, ok := onLinkPrefix(ip, h.OnLink); ok {
			if len(onLink) == 0 {
				why = fmt.Sprintf("same subnet: the peer's %s is on this host's %s", ip, p)
			}
			onLink = append(onLink, c)
			continue
		}
		if same && (ip.IsPrivate() || isShared(ip)) && !ip.IsLoopback() {
			private = append(private, c)
		}
	}
	if len(onLink) == 0 && len(private) > 0 {
		if shared.IsValid() {
			why = fmt.Sprintf("same NAT: both hosts are seen at %s; the peer's private %s", shared, private[0].Addr())
		} else {
			why = fmt.Sprintf("same NAT: the proxy sees both hosts at one address; the peer's private %s", private[0].Addr())
		}
	}
	return append(onLink, private...), why
}

// sharedPublic reports whether both ends sit behind one public IP, and
// which (invalid when only the proxy's hint says so).
func sharedPublic(h LocalHint) (netip.Addr, bool) {
	for _, a := range h.SelfPublic {
		a = a.Unmap().WithZone("")
		if !a.IsValid() || a.IsUnspecified() {
			continue
		}
		for _, b := range h.PeerPublic {
			if a == b.Unmap().WithZone("") {
				return a, true
			}
		}
	}
	return netip.Addr{}, h.SamePublic
}

func isOwn(ip netip.Addr, prefixes []netip.Prefix) bool {
	if ip.IsLoopback() {
		return false
	}
	for _, p := range prefixes {
		if p.Addr().Unmap().WithZone("") == ip {
			return true
		}
	}
	return false
}

func onLinkPrefix(ip netip.Addr, prefixes []netip.Prefix) (netip.Prefix, bool) {
	for _, p := range prefixes {
		if p = p.Masked(); p.IsValid() && p.Bits() > 0 && p.Contains(ip) {
			return p, true
		}
	}
	return netip.Prefix{}, false
}

// cgnat is RFC 6598's shared address space, which carrier NATs and some
// LANs (Tailscale, Kubernetes) use like private addresses.
var cgnat = netip.MustParsePrefix("100.64.0.0/10")

func isShared(ip netip.Addr) bool { return cgnat.Contains(ip) }

// PathOf names the path of a link that ended up at remote: PathLocal if
// remote is one of local (from LocalCandidates), PathNAT if it is one of
// the peer's NAT mappings (reflexive), else PathPublic. An invalid remote
// has no path ("").
func PathOf(remote netip.AddrPort, local, reflexive []netip.AddrPort) string {
	remote = unmap(remote)
	if !remote.IsValid() {
		return ""
	}
	for _, a := range local {
		if unmap(a) == remote {
			return PathLocal
		}
	}
	for _, a := range reflexive {
		if unmap(a) == remote {
			return PathNAT
		}
	}
	return PathPublic
}
