// Package adapt is vnet's planner: pure logic that turns an inferred VM traffic matrix, the
// VM-to-host mapping, host-pair measurements and a budget into a desired state (fast-path
// links, VNET forwarding rules, optionally a new VM-to-host mapping), diffs it against the
// live state, and damps the changes so the control loop does not oscillate. It does no I/O.
//
// # Objective
//
// The network is a graph over the hosts plus the proxy (the hub): every host has a star link
// to the proxy, and each planned fast link joins two hosts. A hop's base weight is its cost in
// seconds per byte:
//
//	w(hop) = 8/(Mbps·10⁶) + (RTT/2)/64 KiB
//
// (transfer time, plus one one-way latency paid per 64 KiB window in flight). Unknown costs
// get defaults: a star link without a measurement is DefaultStarCost; a host pair without a
// measurement is estimated from the two star links (RTT the mean of theirs, throughput the
// larger of the two). Routing runs twice: first with the base weights, to learn each hop's load
// (bytes that cross it); then with the weights inflated by load, w·(1 + load/T) where T is the
// total inter-host traffic, so a hop that would carry much of the traffic looks longer. The
// objective (Plan.Objective, Evaluate) is
//
//	Σ over demands of bytes × (length of the second-pass shortest path from src host to dst host)
//
// that is, approximately the seconds needed to move the window's inter-host bytes, with a
// congestion penalty. A star path costs two hops through the proxy; demands between VMs on
// the same host cost nothing; demands naming VMs that are not in the placement are ignored.
//
// # Budget
//
// A link set is within Budget when it has at most MaxLinks links, at most MaxPerHost links at
// any host, and, when Share > 0, no link is superfluous to reaching the share: the traffic
// between directly linked host pairs minus the smallest such pair's traffic is below
// Share × T ("stop adding links once Share of the inter-host traffic is on fast paths").
// Greedy, Improve and Exact all search within this same budget, so their objectives compare.
//
// # Algorithms
//
// Greedy: (a) host pairs are ordered by the traffic they exchange and fast links are added in
// that order until the budget is spent (pairs that would exceed MaxPerHost are skipped);
// (b) forwarding rules come from all-pairs shortest paths (Floyd–Warshall over hosts+proxy,
// weights as above); (c) with Migrate, VM pairs are taken by decreasing traffic and placed
// together when a host has room, otherwise on the best-connected host pair with room, ties
// to the least loaded host and then to the VM's current host (MaxVMsPerHost respected); the
// migrated plan is kept only if its objective beats the plan without migration.
//
// Improve: simulated annealing from a given plan over link sets (add, remove, swap a link)
// and, with Migrate, placements (move a VM, swap two VMs, swap the VMs of two hosts; a
// placement move also tries greedy links for the new placement), staying within budget and
// capacity; it returns the best state seen, and never anything worse than its input.
//
// Exact: brute force over every link set within budget (and every placement within capacity
// when Migrate); exponential, meant for instances of at most about 6 hosts (and 8 VMs with
// Migrate). It is the reference the other two are tested and benchmarked against.
//
// Rules: for every demand whose planned path uses a fast link, a rule on every hop of the path,
// Rule{Host, Src: "any", Dst: dst MAC, To: next link}; the proxy's last hop to the
// destination's own host is left to learning. Paths are destination-based (each node has one
// next hop per destination host), so rules from different demands never conflict. Demands that
// stay on the star need no rules.
//
// # Damping
//
// Damper.Filter decides which changes of Diff(current, desired) to apply now. Link
// additions, moves and rule changes are applied only when the desired plan improves on the
// current one by at least Hysteresis (a share of current.Objective; both objectives must be
// computed by the caller for the same, current demands, and by EvaluatePlan, which scores
// the paths a plan's rules make: scored by their link sets alone, two plans that differ
// only in rules would tie, and rules made for stale costs would never give way). A link is
// deleted only when it is at least MinDwell old and has not been in any desired plan for
// MinDwell; its rules go with it.
// Link additions, deletions and moves count against MaxChangesPerMinute (rules are cheap and
// follow links; one that points to a held link is held too). A workload that alternates
// patterns faster than MinDwell therefore keeps the union of the links its phases want: once
// the union is in place, no phase's plan gains enough to add anything and no link goes
// unwanted for MinDwell, so nothing is added or deleted any more. The union can exceed the
// budget of a single plan; it ages out MinDwell after a pattern stops wanting a link.
package adapt

import "time"

// HostPair names a pair of hosts, canonically with A < B (see Pair).
type HostPair struct{ A, B string }

// Name is "A-B", the fast link's name.
func (p HostPair) Name() string { return p.A + "-" + p.B }

// Pair returns the canonical HostPair of a and b.
func Pair(a, b string) HostPair {
	if b < a {
		a, b = b, a
	}
	return HostPair{a, b}
}

// Demand is VM-to-VM traffic (VM names are MACs) over a window.
type Demand struct {
	Src, Dst string
	Bytes    float64
}

// Cost is the measured or estimated cost of a path; a zero field is unknown.
type Cost struct {
	RTT  time.Duration
	Mbps float64
}

// DefaultStarCost is assumed for a star link without a measurement.
var DefaultStarCost = Cost{RTT: 2 * time.Millisecond, Mbps: 100}

// Budget limits the fast links of a plan (see the package doc).
type Budget struct {
	MaxLinks   int     // total fast links (0 = no limit)
	MaxPerHost int     // fast links per host (0 = no limit)
	Share      float64 // stop adding links once this share of inter-host traffic is on fast paths (0 = no limit)
}

// Input is what the planner knows.
type Input struct {
	Hosts         []string
	Proxy         string            // the hub; every host has a star link to it
	Placement     map[string]string // VM -> host
	Demands       []Demand
	Costs         map[HostPair]Cost // direct host-to-host paths (missing: estimated from star costs)
	StarCost      map[string]Cost   // each host's star link to the proxy (missing: DefaultStarCost)
	Links         []HostPair        // fast links that exist now
	Budget        Budget
	Migrate       bool // may the plan move VMs
	MaxVMsPerHost int  // capacity for migration (0 = no limit)
}

// Rule is a VNET forwarding rule: on Host, frames Src->Dst (VM MACs, Src may be "any") go to
// To: "link:A-B" for a fast link, "link:star-H" for host H's star link (on H or on the proxy).
// Filter is an operator's access rule's IP filter (canonical text; the
// controller's own rules have none), kept so the rule round-trips whole.
type Rule struct{ Host, Src, Dst, To, Filter string }

// Plan is a desired state.
type Plan struct {
	Links     []HostPair        // sorted
	Rules     []Rule            // sorted by Host, Dst, Src, To
	Placement map[string]string // VM -> host (a copy of the input's when !Migrate)
	Objective float64           // see the package doc
	Reasons   []string          // one line per decision
}

// Change is one step from a current state towards a desired one.
type Change struct {
	Op     string // "add-link", "del-link", "add-rule", "del-rule", "move"
	Link   *HostPair
	Rule   *Rule
	VM     string
	From   string
	To     string
	Reason string
}
