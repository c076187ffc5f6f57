package nat_test

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"vnet/nat"
)

func ips(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func prefixes(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

func TestLocalCandidates(t *testing.T) {
	// The peer's UDP candidates as the proxy orders them: its NAT mapping
	// first, then its local addresses.
	peer := aps("203.0.113.50:4000", "10.50.0.3:4000", "172.17.0.1:4000", "[fd00:50::3]:4000")
	for _, c := range []struct {
		name string
		peer []netip.AddrPort
		h    nat.LocalHint
		want []netip.AddrPort
		why  string // a part of the reason; "" for none
	}{
		{"different NATs, different subnets: nothing local", peer,
			nat.LocalHint{SelfPublic: ips("203.0.113.60"), PeerPublic: ips("203.0.113.50"), OnLink: prefixes("10.60.0.2/24")},
			nil, ""},
		{"same NAT from STUN: every private candidate, the mapping never", peer,
			nat.LocalHint{SelfPublic: ips("203.0.113.50"), PeerPublic: ips("203.0.113.50"), OnLink: prefixes("10.60.0.2/24")},
			aps("10.50.0.3:4000", "172.17.0.1:4000", "[fd00:50::3]:4000"), "same NAT: both hosts are seen at 203.0.113.50"},
		{"same NAT from the proxy's hint alone (no STUN: a TCP-only host)", peer,
			nat.LocalHint{SamePublic: true},
			aps("10.50.0.3:4000", "172.17.0.1:4000", "[fd00:50::3]:4000"), "the proxy sees both hosts at one address"},
		{"same subnet: on-link first, then the other private ones", peer,
			nat.LocalHint{SelfPublic: ips("203.0.113.50"), PeerPublic: ips("203.0.113.50"),
				OnLink: prefixes("10.50.0.2/24", "fd00:50::2/64")},
			aps("10.50.0.3:4000", "[fd00:50::3]:4000", "172.17.0.1:4000"), "same subnet: the peer's 10.50.0.3 is on this host's 10.50.0.0/24"},
		{"same subnet without a NAT in common: only the on-link ones", peer,
			nat.LocalHint{OnLink: prefixes("172.17.0.9/16")},
			aps("172.17.0.1:4000"), "172.17.0.0/16"},
		{"no NAT at all, one LAN: the peer's own address is local although it is its reflexive one",
			aps("192.168.250.12:5000"),
			nat.LocalHint{OnLink: prefixes("192.168.250.11/24")},
			aps("192.168.250.12:5000"), "same subnet"},
		{"the peer's mapping is never local, even on-link (a public LAN)",
			aps("198.51.100.7:5000", "10.0.0.7:5000"),
			nat.LocalHint{SelfPublic: ips("198.51.100.7"), PeerPublic: ips("198.51.100.7"), OnLink: prefixes("198.51.100.0/24")},
			aps("10.0.0.7:5000"), "same NAT"},
		{"same NAT: public, loopback and link-local candidates are not probed",
			aps("198.51.100.9:1", "127.0.0.1:2", "[fe80::1]:3", "[2001:db8::9]:4", "100.64.1.2:5", "0.0.0.0:6", "10.0.0.1:0"),
			nat.LocalHint{SamePublic: true},
			aps("100.64.1.2:5"), "same NAT"},
		{"IPv4-mapped candidates and public IPs count as IPv4, duplicates once",
			aps("[::ffff:203.0.113.50]:4000", "[::ffff:10.50.0.3]:4000", "10.50.0.3:4000"),
			nat.LocalHint{SelfPublic: ips("::ffff:203.0.113.50"), PeerPublic: ips("203.0.113.50")},
			aps("10.50.0.3:4000"), "203.0.113.50"},
		{"a zero-length prefix (a default route) makes nothing on-link",
			aps("203.0.113.9:1"), nat.LocalHint{OnLink: prefixes("0.0.0.0/0", "::/0")}, nil, ""},
		{"loopback: hosts on one machine reach each other on lo",
			aps("127.0.0.1:4001"), nat.LocalHint{OnLink: prefixes("127.0.0.1/8")}, aps("127.0.0.1:4001"), "same subnet"},
		{"no candidates", nil, nat.LocalHint{SamePublic: true}, nil, ""},
		{"a peer at one of this host's own addresses (docker0 everywhere) is not local",
			aps("172.17.0.1:4000", "10.50.0.3:4000"),
			nat.LocalHint{SamePublic: true, OnLink: prefixes("172.17.0.1/16", "10.50.0.2/24")},
			aps("10.50.0.3:4000"), "same subnet: the peer's 10.50.0.3"},
	} {
		t.Run(c.name, func(t *testing.T) {
			in := slices.Clone(c.peer)
			got, why := nat.LocalCandidates(c.peer, c.h)
			if !slices.Equal(got, c.want) {
				t.Errorf("LocalCandidates = %v, want %v", got, c.want)
			}
			if (c.why == "") != (why == "") || !strings.Contains(why, c.why) {
				t.Errorf("reason %q, want one containing %q", why, c.why)
			}
			if !slices.Equal(in, c.peer) {
				t.Errorf("the input was modified: %v, was %v", c.peer, in)
			}
		})
	}
}

func TestPathOf(t *testing.T) {
	local := aps("10.50.0.3:4000")
	refl := aps("203.0.113.50:4000")
	for _, c := range []struct {
		remote string
		want   string
	}{
		{"10.50.0.3:4000", nat.PathLocal},
		{"[::ffff:10.50.0.3]:4000", nat.PathLocal},
		{"203.0.113.50:4000", nat.PathNAT},
		{"198.51.100.1:5000", nat.PathPublic},
		{"10.50.0.3:4001", nat.PathPublic}, // another port: not the candidate the probe confirmed
	} {
		if got := nat.PathOf(ap(c.remote), local, refl); got != c.want {
			t.Errorf("PathOf(%s) = %q, want %q", c.remote, got, c.want)
		}
	}
	if got := nat.PathOf(netip.AddrPort{}, local, refl); got != "" {
		t.Errorf("PathOf(invalid) = %q, want \"\"", got)
	}
}
