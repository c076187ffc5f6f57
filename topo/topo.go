// Package topo is the vnet topology language: a small, line-oriented text
// format that describes the hosts of a vnet, where each VM runs, the
// fast-path links between hosts and the forwarding rules. It is what a user
// writes for `vnet ctl apply FILE` and what a daemon exports; one fact per
// line and a canonical, sorted output make such files easy to read, to
// review and to diff.
//
// The package is a pure codec: [Parse] turns bytes into a [Topology],
// [Topology.Format] turns it back into canonical text, and [Diff] says what
// to change to turn one topology into another. It does no I/O beyond the
// io.Reader and io.Writer it is given, and it does not check facts only a
// daemon knows (whether a link named in a rule exists, whether a host is
// up).
//
// # Format
//
// A file is a sequence of lines. Fields are separated by spaces or tabs (a
// "\r" counts as one too, so CRLF files read the same). A `#` starts a
// comment that runs to the end of the line (no name, MAC or keyword contains
// `#`); blank lines are ignored. Keywords are lower case. Each remaining
// line is one fact:
//
//	host NAME
//	vm MAC on HOST [port PORT]
//	link HOST HOST [kind tcp|udp|quic]
//	rule HOST MATCH MATCH [FILTER] -> TARGET
//
// where
//
//	NAME, HOST  a host name: 1 to 63 characters from [A-Za-z0-9_.-],
//	            starting with a letter or digit; case matters. "proxy"
//	            names the proxy itself.
//	PORT        a port name: 1 to 255 characters from [A-Za-z0-9_./-],
//	            not starting with "-" (tap0, qemu.sock, /run/vm1.sock).
//	MAC         six bytes as two hex digits each, separated by ":" or by
//	            "-" (one kind per MAC), any case; always written back in
//	            lower case with ":".
//	MATCH       MAC, "any" or "not:MAC" (every frame whose address is not
//	            MAC). The first MATCH is the source, the second the
//	            destination.
//	TARGET      "link:NAME" or "port:NAME" where NAME is a link or port, or an
//	            access decision: "deny" drops the pair's frames, "allow" lets
//	            them through as if no rule matched (deny wins a tie, then
//	            allow: "rule h1 any any -> deny" with "rule h1 A B -> allow")
//	            name (same characters as PORT). A fast-path link between
//	            hosts A and B is named "A-B" with A < B (see [Link.Name]);
//	            the star link of host H is named "star-H" (see
//	            [StarLinkName]).
//	FILTER      for deny and allow only: clauses that make the rule match
//	            only some IP frames, each at most once, in any order:
//	            "ip", "ip4" or "ip6" (the family), "proto P" (tcp, udp,
//	            icmp, icmpv6 or 0-255), "from ADDR[/LEN]", "to ADDR[/LEN]"
//	            and "port N[-M]" (the destination port; needs proto tcp or
//	            udp). Written back as family, proto, from, to, port, with
//	            prefixes masked (see package vnet/bridge/ipfilter).
//
// The facts:
//
//   - host NAME declares a host. Hosts named by vm, link and rule lines
//     need not be declared; the canonical form declares every host named
//     anywhere, so an export describes itself.
//   - vm MAC on HOST [port PORT] says the VM with that MAC runs on HOST,
//     optionally attached to port PORT there. A VM MAC must be unicast and
//     not all zeros. A VM is in one place: two vm lines for the same MAC
//     must say the same thing.
//   - link A B [kind K] is a fast-path link between hosts A and B. "link A
//     B" and "link B A" are the same link. A and B differ and neither is
//     "proxy": the proxy is reached by the star links every host keeps
//     anyway. K is tcp, udp or quic; without it the daemon picks its
//     default. Two lines for the same pair must give the same kind.
//   - rule HOST SRC DST -> TARGET is a forwarding rule on HOST (which may
//     be "proxy"): frames whose source matches SRC and destination matches
//     DST go to TARGET. Several rules may match the same frames; every rule
//     tied at the highest specificity fires, which gives deliberate
//     fan-out (see the bridge package for the scores). not: on both sides
//     is allowed.
//   - rule HOST SRC DST FILTER -> deny|allow is an access rule that applies
//     only to the IP frames FILTER matches ("rule h1 any any proto tcp to
//     10.0.0.5 port 22 -> deny"); frames that are not IP (ARP) never match
//     it. It ranks above a rule with the same MAC matches and no filter,
//     below rules with more specific MACs.
//
// Identical lines are merged. Everything else that breaks the rules above
// is an error naming the line and what was expected there, for example
//
//	line 7: expected `->` after destination, got "foo"
//
// # Example
//
//	# vnet topology
//
//	host h1
//	host h2
//	host h3
//	host proxy
//
//	vm 52:54:00:00:00:01 on h1 port tap0
//	vm 52:54:00:00:00:02 on h2
//	vm 52:54:00:00:00:03 on h3 port qemu.sock
//
//	link h1 h2 kind tcp
//	link h2 h3
//
//	rule h1 52:54:00:00:00:01 52:54:00:00:00:04 -> deny
//	rule h1 any 52:54:00:00:00:02 -> link:h1-h2
//	rule h1 any 52:54:00:00:00:02 ip4 proto tcp port 22 -> deny
//	rule h2 52:54:00:00:00:02 52:54:00:00:00:01 -> link:h1-h2
//	rule h2 not:52:54:00:00:00:09 any -> port:tap1
//	rule proxy any 52:54:00:00:00:03 -> link:star-h3
//
// # Canonical form
//
// [Topology.Canonical] normalises MACs and matches, orders each link's hosts,
// adds every host named anywhere to Hosts, then sorts each list and drops
// duplicates. [Topology.Format] writes the canonical form of a topology: the
// header comment "# vnet topology", then the host, vm, link and rule lines
// in that order, each group sorted and followed by a blank line. Parsing
// that text gives the canonical topology back, and formatting it again
// gives the same bytes.
//
// # Diff
//
// [Diff] compares a live topology (what the daemons report) with a desired
// one (a file) and lists the changes that turn live into desired: links and
// rules to delete and add, VMs to move to another host or port, VMs to
// record. Hosts are never added or removed, and VMs present only in live
// are never removed: hosts join and leave by themselves and VMs are found by
// learning, so a desired file need not list them all.
//
// # Limits
//
// Against hostile input a line may be at most [MaxLineLen] bytes and a file
// at most [MaxLines] lines; [Parse] reports at most [MaxErrors] errors.
package topo

import (
	"cmp"
	"slices"
)

// Limits on input that [Parse] accepts.
const (
	// MaxLineLen is the longest line in bytes, without its "\n".
	MaxLineLen = 4096
	// MaxLines is the most lines, including comments and blank lines.
	MaxLines = 100000
	// MaxErrors is the most errors Parse reports before it gives up.
	MaxErrors = 10
)

// Limits on names.
const (
	// MaxHostLen is the longest host name.
	MaxHostLen = 63
	// MaxNameLen is the longest port or link name.
	MaxNameLen = 255
)

// ProxyHost is the host name of the proxy. Rules and VMs may be placed on
// it; links may not end at it.
const ProxyHost = "proxy"

// Link kinds. The empty kind means "the daemon's default".
const (
	KindDefault = ""
	KindTCP     = "tcp"
	KindUDP     = "udp"
	KindQUIC    = "quic"
)

// Topology is a whole topology: hosts, VM placement, fast-path links and
// forwarding rules. A Topology returned by [Parse] is canonical (see
// [Topology.Canonical]); empty lists are nil. A Topology is a plain value;
// it is not safe for concurrent modification.
type Topology struct {
	Hosts []string `json:"hosts"`
	VMs   []VM     `json:"vms"`
	Links []Link   `json:"links"`
	Rules []Rule   `json:"rules"`
}

// VM places a VM, known by its MAC, on a host and optionally a port there.
type VM struct {
	MAC  string `json:"mac"`  // lower-case colon form
	Host string `json:"host"` // host name
	Port string `json:"port"` // port name, or "" when not stated
}

// Link is a fast-path link between two hosts. In canonical form A < B.
type Link struct {
	A    string `json:"a"`
	B    string `json:"b"`
	Kind string `json:"kind"` // KindTCP, KindUDP, KindQUIC or KindDefault ("")
}

// Rule is a forwarding rule placed on Host: frames whose source matches Src
// and destination matches Dst go to To. Src and Dst are "any", a MAC or
// "not:MAC" (MACs in lower-case colon form); To is "link:NAME",
// "port:NAME", "deny" or "allow"; a deny or allow may have an IP Filter.
type Rule struct {
	Host string `json:"host"`
	Src  string `json:"src"`
	Dst  string `json:"dst"`
	To   string `json:"to"`
	// Filter is an access rule's IP filter in canonical form (see
	// [ParseFilter]), or "" for none.
	Filter string `json:"filter,omitempty"`
}

// Name returns the link's name as rules refer to it: "A-B" with the host
// names in sorted order.
func (l Link) Name() string {
	a, b := l.A, l.B
	if b < a {
		a, b = b, a
	}
	return a + "-" + b
}

// StarLinkName returns the name of the star link between host and the
// proxy: "star-HOST".
func StarLinkName(host string) string { return "star-" + host }

// String returns v as a line of the topology language.
func (v VM) String() string {
	s := "vm " + v.MAC + " on " + v.Host
	if v.Port != "" {
		s += " port " + v.Port
	}
	return s
}

// String returns l as a line of the topology language.
func (l Link) String() string {
	s := "link " + l.A + " " + l.B
	if l.Kind != "" {
		s += " kind " + l.Kind
	}
	return s
}

// String returns r as a line of the topology language.
func (r Rule) String() string {
	s := "rule " + r.Host + " " + r.Src + " " + r.Dst
	if r.Filter != "" {
		s += " " + r.Filter
	}
	return s + " -> " + r.To
}

// Canonical puts t in canonical form, in place: MACs (in VMs and in rule
// matches) in lower-case colon form, each link's hosts in sorted order,
// every host named by a vm, link or rule line added to Hosts, and each list
// sorted with duplicates removed; empty lists become nil. Values that do not
// parse are left as they are, for [Topology.Validate] to report. Canonical
// does not resolve conflicts (a VM on two hosts stays twice).
func (t *Topology) Canonical() {
	for i := range t.VMs {
		v := &t.VMs[i]
		if m, err := ParseMAC(v.MAC); err == nil {
			v.MAC = m
		}
	}
	for i := range t.Links {
		l := &t.Links[i]
		if l.B < l.A {
			l.A, l.B = l.B, l.A
		}
	}
	for i := range t.Rules {
		r := &t.Rules[i]
		if m, err := ParseMatch(r.Src); err == nil {
			r.Src = m
		}
		if m, err := ParseMatch(r.Dst); err == nil {
			r.Dst = m
		}
		if f, err := ParseFilter(r.Filter); err == nil {
			r.Filter = f
		}
	}
	for _, v := range t.VMs {
		t.Hosts = append(t.Hosts, v.Host)
	}
	for _, l := range t.Links {
		t.Hosts = append(t.Hosts, l.A, l.B)
	}
	for _, r := range t.Rules {
		t.Hosts = append(t.Hosts, r.Host)
	}
	t.Hosts = sortUniq(t.Hosts, cmp.Compare[string])
	t.VMs = sortUniq(t.VMs, compareVM)
	t.Links = sortUniq(t.Links, compareLink)
	t.Rules = sortUniq(t.Rules, compareRule)
}

// Clone returns a deep copy of t.
func (t *Topology) Clone() *Topology {
	if t == nil {
		return &Topology{}
	}
	return &Topology{
		Hosts: slices.Clone(t.Hosts),
		VMs:   slices.Clone(t.VMs),
		Links: slices.Clone(t.Links),
		Rules: slices.Clone(t.Rules),
	}
}

// Validate reports whether t could have come from [Parse]: every name,
// MAC, match and target well formed, no link from a host to itself or to
// the proxy, no VM in two places and no pair of hosts with two link kinds.
// It checks t as it is; call [Topology.Canonical] first to accept MACs in
// other spellings. The error names the first offending item.
func (t *Topology) Validate() error {
	for _, h := range t.Hosts {
		if err := checkHost(h); err != nil {
			return err
		}
	}
	vms := make(map[string]VM, len(t.VMs))
	for _, v := range t.VMs {
		if err := checkVM(v); err != nil {
			return err
		}
		if old, ok := vms[v.MAC]; ok && old != v {
			return vmConflict(v, old)
		}
		vms[v.MAC] = v
	}
	links := make(map[[2]string]Link, len(t.Links))
	for _, l := range t.Links {
		if err := checkLink(l); err != nil {
			return err
		}
		k := pairKey(l)
		if old, ok := links[k]; ok && old.Kind != l.Kind {
			return linkConflict(l, old)
		}
		links[k] = l
	}
	for _, r := range t.Rules {
		if err := checkRule(r); err != nil {
			return err
		}
	}
	return nil
}

// Equal reports whether t and u hold the same facts once both are
// canonical. Neither is modified.
func (t *Topology) Equal(u *Topology) bool {
	a, b := t.Clone(), u.Clone()
	a.Canonical()
	b.Canonical()
	return slices.Equal(a.Hosts, b.Hosts) && slices.Equal(a.VMs, b.VMs) &&
		slices.Equal(a.Links, b.Links) && slices.Equal(a.Rules, b.Rules)
}

func compareVM(a, b VM) int {
	return cmp.Or(cmp.Compare(a.MAC, b.MAC), cmp.Compare(a.Host, b.Host), cmp.Compare(a.Port, b.Port))
}

func compareLink(a, b Link) int {
	return cmp.Or(cmp.Compare(a.A, b.A), cmp.Compare(a.B, b.B), cmp.Compare(a.Kind, b.Kind))
}

func compareRule(a, b Rule) int {
	return cmp.Or(cmp.Compare(a.Host, b.Host), cmp.Compare(a.Src, b.Src),
		cmp.Compare(a.Dst, b.Dst), cmp.Compare(a.Filter, b.Filter), cmp.Compare(a.To, b.To))
}

// sortUniq sorts s, drops duplicates and returns nil for an empty result.
func sortUniq[T comparable](s []T, compare func(a, b T) int) []T {
	slices.SortFunc(s, compare)
	s = slices.Compact(s)
	if len(s) == 0 {
		return nil
	}
	return slices.Clip(s)
}

// pairKey identifies a link by its hosts, in either order.
func pairKey(l Link) [2]string {
	if l.B < l.A {
		return [2]string{l.B, l.A}
	}
	return [2]string{l.A, l.B}
}
