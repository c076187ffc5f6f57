// Package appliance wires vnet's parts into daemons: the proxy (the hub of
// the resilient star, the control API, the authority on desired state) and
// the host (which dials the proxy, attaches VMs and opens fast paths when the
// proxy tells it to).
//
// Control flow. A host dials the proxy over a star link and sends a status
// message (its candidate addresses, VMs, links, rules) every second while it
// changes and every few seconds anyway. The proxy keeps the desired state
// (fast-path links and rules per host) and sends each host a config message
// whenever that host's part of it changes. Hosts reconcile: the
// lexicographically smaller end of a fast link dials the other's candidates;
// the other accepts only links it was told about. Over a fast link the two
// hosts announce their local VM MACs, which pins those MACs to the fast path
// in each switch. `vnet ctl route` asks each hop's switch, over the star,
// what it would do with a frame.
package appliance

import (
	"encoding/json"
	"time"

	"vnet/tunnel"
)

// The JSON shapes of the control API and `vnet ctl --json` (DESIGN.md).
// Fields may be added; none are renamed or removed.

// HostInfo is one row of `hosts`.
type HostInfo struct {
	Name     string    `json:"name"`
	Addrs    []string  `json:"addrs"`
	NAT      string    `json:"nat"`
	State    string    `json:"state"`
	VMs      []string  `json:"vms"`
	API      string    `json:"api,omitempty"`
	LastSeen time.Time `json:"last_seen,omitzero"`
}

// LinkInfo is one row of `links`.
type LinkInfo struct {
	Name    string `json:"name"`
	A       string `json:"a"`
	B       string `json:"b"`
	Kind    string `json:"kind"`
	Role    string `json:"role"`
	Via     string `json:"via"`
	State   string `json:"state"`
	RTTus   int64  `json:"rtt_us"` // path RTT: the smallest keepalive echo of the last half minute
	TxBytes uint64 `json:"tx_bytes"`
	RxBytes uint64 `json:"rx_bytes"`
	Error   string `json:"error,omitempty"`
	// Path (a fast link that is up): what the link's underlay path is,
	// nat.PathLocal ("local": the peer's address on a shared LAN, nothing
	// crosses a NAT), nat.PathNAT ("nat": a NAT mapping of the peer's) or
	// nat.PathPublic ("public"); Addr the peer's underlay address it uses,
	// as the reporting end (A for fast links) sees it.
	Path string `json:"path,omitempty"`
	Addr string `json:"addr,omitempty"`

	// Passive measurement (tunnel.Measurement). Tx is what the reporting
	// daemon sends (the proxy reports its star links and A the fast ones,
	// with what the other end measured merged in); zero is unknown.
	SRTTus         int64   `json:"srtt_us,omitempty"`          // smoothed echo RTT: queueing under load included
	TransportRTTus int64   `json:"transport_rtt_us,omitempty"` // the transport's own minimum (TCP_INFO, QUIC): a cross-check
	TxMbps         float64 `json:"tx_mbps"`                    // frame bytes in the last second
	RxMbps         float64 `json:"rx_mbps"`
	CapacityMbps   float64 `json:"capacity_mbps"`              // achievable throughput: the smaller known direction
	TxCapacityMbps float64 `json:"tx_capacity_mbps,omitempty"` // each direction's, from a sender that was backlogged
	RxCapacityMbps float64 `json:"rx_capacity_mbps,omitempty"` // or a receiver that saw loss or queueing
	Loss           float64 `json:"loss"`                       // fraction lost, the worse direction
}

// RuleInfo is one row of `rules`.
type RuleInfo struct {
	Host string `json:"host"`
	Src  string `json:"src"`
	Dst  string `json:"dst"`
	To   string `json:"to"`
	// Filter is a deny or allow rule's IP filter, e.g. "ip4 proto tcp to
	// 10.0.0.5 port 22" (see `vnet ctl --help`); absent: none.
	Filter string `json:"filter,omitempty"`
	// Hits counts the frames the rule decided, on the host that has it (in
	// `rules` answers and host reports; never an input).
	Hits uint64 `json:"hits,omitempty"`
}

// VMInfo is one row of `vms`.
type VMInfo struct {
	MAC  string   `json:"mac"`
	Host string   `json:"host"`
	Port string   `json:"port"`
	IPs  []string `json:"ips"`
}

// Hop is one step of a route.
type Hop struct {
	Host string `json:"host"`
	To   string `json:"to"`
	By   string `json:"by,omitempty"` // rule, mac, flood
	// Filters are the rules with an IP filter at this hop that decide
	// otherwise for the packets they match ("blocked for tcp/22 by the
	// rule ..."): the hop holds for every other packet.
	Filters []string `json:"filters,omitempty"`
}

// Route is the answer to `route SRC DST`.
type Route struct {
	Hops      []Hop  `json:"hops"`
	Delivered bool   `json:"delivered"`
	Note      string `json:"note,omitempty"`
	// Filtered says that rules with an IP filter on the way decide
	// otherwise for some packets (see each hop's filters).
	Filtered bool `json:"filtered,omitempty"`
}

// PortInfo is one switch port's counters (`vnet ctl status`).
type PortInfo struct {
	Name     string            `json:"name"`
	Role     string            `json:"role"`
	RxFrames uint64            `json:"rx_frames"`
	RxBytes  uint64            `json:"rx_bytes"`
	TxFrames uint64            `json:"tx_frames"`
	TxBytes  uint64            `json:"tx_bytes"`
	Drops    map[string]uint64 `json:"drops"`
}

// Status is the answer to `status`.
type Status struct {
	Role       string     `json:"role"`
	Name       string     `json:"name"`
	Version    string     `json:"version"`
	UptimeS    int64      `json:"uptime_s"`
	Listen     []string   `json:"listen,omitempty"`
	Proxy      string     `json:"proxy,omitempty"`
	ProxyState string     `json:"proxy_state,omitempty"`
	HostsUp    int        `json:"hosts_up"`
	HostsKnown int        `json:"hosts_known"`
	LinksUp    int        `json:"links_up"`
	MACs       int        `json:"macs"`
	Ports      []PortInfo `json:"ports"`
	// UDP counts the UDP socket's datagrams and drops by reason (stranger,
	// bad-mac, replay, handshake-bad, punch, frag-error, ...); STUN the
	// proxy's STUN answers and refusals.
	UDP  map[string]uint64 `json:"udp,omitempty"`
	STUN map[string]uint64 `json:"stun,omitempty"`
	// NAT and Reflexive (a host): its NAT's mapping behaviour and its UDP
	// socket's addresses as STUN servers saw them, IPv4 and IPv6.
	NAT       string   `json:"nat,omitempty"`
	Reflexive []string `json:"reflexive,omitempty"`
}

// ApplyResult is the answer to `apply`.
type ApplyResult struct {
	Changes []string `json:"changes"`
	DryRun  bool     `json:"dry_run,omitempty"`
}

// ReloadResult is the answer to `reload`: what re-reading the topology
// file and the config file changed.
type ReloadResult struct {
	Changes      []string `json:"changes"`       // topology changes applied, as `apply` prints them
	Applied      []string `json:"applied"`       // settings changed live, "NAME = VALUE"
	NeedsRestart []string `json:"needs_restart"` // settings changed in the file that take a restart: their names
}

// Control messages between a host and the proxy, and between two hosts on a
// fast link, carried as JSON in tunnel.MsgControl messages.
const (
	opStatus   = "status" // host -> proxy: hostStatus
	opConfig   = "config" // proxy -> host: hostConfig
	opLookup   = "lookup" // proxy -> host: lookupReq; answered by opLookupOK
	opLookupOK = "lookup-reply"
	opAnnounce = "announce" // host -> host over a fast link: the sender's VM MACs
	opMatrix   = "matrix"   // host -> proxy: matrixReport, its local traffic since the last one
	opForget   = "forget"   // proxy -> host: MACs that moved; drop what the switch learned of them
)

type ctrlMsg struct {
	Op       string        `json:"op"`
	ID       uint64        `json:"id,omitempty"`
	Status   *hostStatus   `json:"status,omitempty"`
	Config   *hostConfig   `json:"config,omitempty"`
	Lookup   *lookupReq    `json:"lookup,omitempty"`
	Decision *lookupReply  `json:"decision,omitempty"`
	MACs     []string      `json:"macs,omitempty"`
	Matrix   *matrixReport `json:"matrix,omitempty"`
	Error    string        `json:"error,omitempty"`
}

// hostStatus is what a host reports about itself.
type hostStatus struct {
	API       string     `json:"api,omitempty"`
	Listen    []string   `json:"listen"`              // TCP candidates for fast links (host:port)
	UDP       []string   `json:"udp,omitempty"`       // UDP candidates: reflexive first, then local
	Reflexive []string   `json:"reflexive,omitempty"` // UDP addresses as STUN servers saw them
	NAT       string     `json:"nat,omitempty"`       // mapping behaviour, see nat.Mapping
	VMs       []VMInfo   `json:"vms"`
	Links     []LinkInfo `json:"links"`          // its fast links
	Star      *LinkInfo  `json:"star,omitempty"` // its star link, for what it measured sending to the proxy
	Rules     []RuleInfo `json:"rules"`
	Ports     []PortInfo `json:"ports"`
}

// fastLink tells a host about one fast link it should have.
type fastLink struct {
	Name      string   `json:"name"`
	Peer      string   `json:"peer"`
	Kind      string   `json:"kind"`                // the kind tried first: "udp" (punched if need be) or "tcp"
	Dial      bool     `json:"dial"`                // this host dials; the peer accepts
	UDPAddrs  []string `json:"udp_addrs,omitempty"` // the peer's UDP candidates (dialer)
	TCPAddrs  []string `json:"tcp_addrs,omitempty"` // the peer's TCP candidates (dialer)
	Reflexive []string `json:"reflexive,omitempty"` // which of UDPAddrs (or Punch) are the peer's NAT mappings
	Punch     []string `json:"punch,omitempty"`     // the dialer's UDP candidates (acceptor): open our NAT towards them
	// SamePublic: the proxy sees both ends at one address (one NAT, or one
	// LAN with the proxy): their private candidates are probed first.
	SamePublic bool `json:"same_public,omitempty"`
}

// hostConfig is a host's share of the desired state.
type hostConfig struct {
	Links     []fastLink `json:"links"`
	Rules     []RuleInfo `json:"rules"`
	STUNPorts []uint16   `json:"stun_ports,omitempty"` // the proxy's STUN ports, on the proxy's address
	// Revoked lists the hosts cut off (vnet ctl hosts revoke): refuse them,
	// close links to them.
	Revoked   *tunnel.Revoked `json:"revoked,omitempty"`
	STUNAddrs []string        `json:"stun_addrs,omitempty"` // the IPs they answer on: hosts probe the other family there too
}

type lookupReq struct {
	In  string `json:"in"`
	Src string `json:"src"`
	Dst string `json:"dst"`
}

type lookupReply struct {
	Outputs []string `json:"outputs"`
	Roles   []string `json:"roles"`
	By      string   `json:"by"`
	Rule    string   `json:"rule,omitempty"` // the deciding rule
	// Filters: rules with an IP filter that decide instead for the frames
	// they match, e.g. "blocked for tcp/22 by the rule ...".
	Filters []string `json:"filters,omitempty"`
}

func encodeCtrl(m *ctrlMsg) []byte {
	b, err := json.Marshal(m)
	if err != nil {
		panic(err) // only plain types: cannot fail
	}
	return b
}
