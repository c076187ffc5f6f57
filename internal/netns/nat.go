package netns

import (
	"context"
	"fmt"
	"strings"
)

// NAT is the behaviour of a NAT router made with nftables masquerade.
type NAT string

const (
	// EIM maps a LAN socket to the same public port for every destination
	// (masquerade keeps the source port when it is free: endpoint-
	// independent mapping) and lets in only replies to what went out
	// (address-and-port-dependent filtering), like a typical home router.
	// Two hosts behind EIM routers can punch a hole to each other.
	EIM NAT = "eim"
	// Sym gives every new connection a random public port ("masquerade
	// random": endpoint-dependent mapping, a symmetric NAT), with the same
	// filtering as EIM. A peer cannot predict the port to punch to.
	Sym NAT = "sym"
	// Closed maps like EIM but lets in nothing at all except packets of
	// connections opened from inside (no related ICMP, no ping of the
	// router): outbound only.
	Closed NAT = "closed"
)

// NATRuleset is the nftables ruleset (for nft -f) of a router whose public
// interface is wan and whose private one is lan, in its own table named
// table (family ip).
//
// Every kind drops unsolicited traffic arriving on wan for the router
// itself in the input hook, not only traffic for the LAN in the forward
// hook. This matters for hole punching: conntrack creates an entry for
// every packet but keeps it only if the packet survives the last hook; an
// early punch from a peer that reached the router's own stack (and earned
// an ICMP port unreachable) would leave an entry whose reply tuple is
// exactly the mapping the LAN host is about to make, and masquerade would
// then pick another port for that one destination — an endpoint-dependent
// mapping that appears only when the peer's packet wins the race. Home
// routers filter their WAN input, so they do not have this problem.
func NATRuleset(table string, kind NAT, wan, lan string) (string, error) {
	var masq, state, ping string
	switch kind {
	case EIM:
		masq, state = "masquerade", "established,related"
		ping = fmt.Sprintf("\t\tiifname %q icmp type echo-request accept\n", wan)
	case Sym:
		masq, state = "masquerade random", "established,related"
		ping = fmt.Sprintf("\t\tiifname %q icmp type echo-request accept\n", wan)
	case Closed:
		masq, state = "masquerade", "established"
	default:
		return "", fmt.Errorf("unknown NAT kind %q (want %s, %s or %s)", kind, EIM, Sym, Closed)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "table ip %s {\n", table)
	fmt.Fprintf(&b, "\tchain natpost {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n")
	fmt.Fprintf(&b, "\t\toifname %q %s\n\t}\n", wan, masq)
	fmt.Fprintf(&b, "\tchain filterfwd {\n\t\ttype filter hook forward priority filter; policy drop;\n")
	fmt.Fprintf(&b, "\t\tct state %s accept\n", state)
	fmt.Fprintf(&b, "\t\tiifname %q oifname %q accept\n\t}\n", lan, wan)
	fmt.Fprintf(&b, "\tchain filterin {\n\t\ttype filter hook input priority filter; policy accept;\n")
	fmt.Fprintf(&b, "\t\tiifname %q ct state %s accept\n", wan, state)
	b.WriteString(ping)
	fmt.Fprintf(&b, "\t\tiifname %q drop\n\t}\n", wan)
	b.WriteString("}\n")
	return b.String(), nil
}

// SetNAT makes namespace ns a NAT router of the given kind between wan and
// lan: it turns on IPv4 forwarding there and loads NATRuleset into table,
// replacing what the table held (so a router can change its kind). Its
// connection-tracking entries are flushed so that no earlier mapping
// survives (ignored where the conntrack tool is missing).
func SetNAT(ctx context.Context, ns, table string, kind NAT, wan, lan string) error {
	rules, err := NATRuleset(table, kind, wan, lan)
	if err != nil {
		return err
	}
	// The write happens inside ns, so it reaches ns's own sysctl (no
	// dependency on procps' sysctl).
	if _, err := Run(ctx, ns, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"); err != nil {
		return err
	}
	// Creating the table first makes the delete succeed whether or not it
	// existed; one nft transaction then swaps the rules atomically.
	script := fmt.Sprintf("table ip %[1]s\ndelete table ip %[1]s\n%[2]s", table, rules)
	cmd := Command(ctx, ns, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nft -f (in %s): %w: %s\n%s", ns, err, strings.TrimSpace(string(out)), script)
	}
	if len(Missing("conntrack")) == 0 {
		Run(ctx, ns, "conntrack", "-F")
	}
	return nil
}

// BridgePort connects namespace ns to the bridge br in namespace brNS with
// a veth pair (brIf on the bridge's side, ifName in ns), gives ifName the
// address cidr (e.g. "203.0.113.11/24") and brings both ends up.
func (l *Lab) BridgePort(ctx context.Context, brNS, br, brIf, ns, ifName, cidr string) error {
	if err := l.Veth(ctx, brNS, brIf, ns, ifName); err != nil {
		return err
	}
	for _, argv := range [][]string{
		{"ip", "-n", brNS, "link", "set", brIf, "master", br, "up"},
		{"ip", "-n", ns, "addr", "add", cidr, "dev", ifName},
		{"ip", "-n", ns, "link", "set", ifName, "up"},
	} {
		if _, err := Run(ctx, "", argv...); err != nil {
			return err
		}
	}
	return nil
}
