package netvm

import (
	"fmt"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
)

const (
	ipv4Proto = ipv4.ProtocolNumber
	ipv6Proto = ipv6.ProtocolNumber
)

// TCP buffer ranges (bytes): min, default, max per connection. The defaults
// are gVisor's; the maxima are what tailscale settled on for netstack
// (wgengine/netstack: 8 MiB receive, 6 MiB send): enough for a few
// hundred Mbit/s over tens of milliseconds of RTT, the paths a vnet fast
// path or star link crosses, and receive auto-tuning grows a connection's
// buffer there only when its bandwidth-delay product asks for it.
const (
	tcpRXBufMin = tcp.MinBufferSize
	tcpRXBufDef = tcp.DefaultReceiveBufferSize
	tcpRXBufMax = 8 << 20
	tcpTXBufMin = tcp.MinBufferSize
	tcpTXBufDef = tcp.DefaultSendBufferSize
	tcpTXBufMax = 6 << 20
)

// newStack builds the netstack of one VM for its network protocols (IPv4,
// IPv6 or both). Every option is set explicitly, with its reason, so that a
// gVisor upgrade that changes a default does not silently change vnet's VMs.
func newStack(protos []tcpip.NetworkProtocolNumber, router bool) (*stack.Stack, error) {
	opts := stack.Options{
		// HandleLocal: traffic from the VM to its own address stays inside
		// the stack, as on a real host, instead of going out on the wire.
		// Not for a router: in promiscuous mode every address is its own,
		// and its answers to the VMs would loop back inside it.
		HandleLocal: !router,
		// UDP and TCP always; the other transports are chosen below.
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol},
	}
	for _, netProto := range protos {
		switch netProto {
		case ipv4Proto:
			opts.NetworkProtocols = append(opts.NetworkProtocols,
				// IGMP off: vnet floods multicast on the star anyway, so
				// membership reports would only add traffic to the matrix
				// that inference reads.
				ipv4.NewProtocolWithOptions(ipv4.Options{IGMP: ipv4.IGMPOptions{Enabled: false}}),
				// ARP resolves neighbours on the Ethernet NIC; the ethernet
				// endpoint marks the NIC as needing resolution.
				arp.NewProtocol,
			)
			// Ping sockets (ICMP echo from the VM); the stack answers echo
			// requests itself either way.
			opts.TransportProtocols = append(opts.TransportProtocols, icmp.NewProtocol4)
		case ipv6Proto:
			opts.NetworkProtocols = append(opts.NetworkProtocols,
				// The zero Options keep the VM quiet and its address usable at
				// once: no duplicate-address detection (vnet assigns the
				// addresses, and DAD would hold the address tentative for a
				// second), no router solicitations or RA handling (vnet has no
				// routers; Config.Gateway is the only route), no MLD reports
				// (multicast is flooded), no auto-generated link-local
				// address. NDP itself (neighbour solicitation/advertisement)
				// stays on: it is how the VM resolves MACs.
				ipv6.NewProtocolWithOptions(ipv6.Options{}),
			)
			opts.TransportProtocols = append(opts.TransportProtocols, icmp.NewProtocol6)
		default:
			return nil, fmt.Errorf("netvm: unsupported network protocol %d", netProto)
		}
	}
	s := stack.New(opts)
	if err := setTCPOptions(s); err != nil {
		s.Destroy()
		return nil, err
	}
	return s, nil
}

// setTCPOptions tunes TCP as tailscale's wgengine/netstack does.
func setTCPOptions(s *stack.Stack) error {
	set := func(what string, opt tcpip.SettableTransportProtocolOption) error {
		if err := s.SetTransportProtocolOption(tcp.ProtocolNumber, opt); err != nil {
			return fmt.Errorf("netvm: TCP option %s: %s", what, err)
		}
		return nil
	}
	// SACK (off by default in gVisor): vnet paths lose and, over datagram
	// links, reorder frames; SACK repairs several holes per round trip.
	sack := tcpip.TCPSACKEnabled(true)
	if err := set("SACK", &sack); err != nil {
		return err
	}
	// RACK off: gVisor's RACK handles ACKs late, which causes spurious
	// retransmissions and a shrunken congestion window
	// (tailscale/tailscale#9707); classic duplicate-ACK recovery with SACK
	// does better.
	recovery := tcpip.TCPRecovery(0)
	if err := set("recovery (RACK off)", &recovery); err != nil {
		return err
	}
	// Reno, named explicitly: it is gVisor's default today, and CUBIC has
	// an overflow in the congestion window arithmetic
	// (google/gvisor#11632).
	reno := tcpip.CongestionControlOption("reno")
	if err := set("congestion control", &reno); err != nil {
		return err
	}
	rx := tcpip.TCPReceiveBufferSizeRangeOption{Min: tcpRXBufMin, Default: tcpRXBufDef, Max: tcpRXBufMax}
	if err := set("receive buffer range", &rx); err != nil {
		return err
	}
	tx := tcpip.TCPSendBufferSizeRangeOption{Min: tcpTXBufMin, Default: tcpTXBufDef, Max: tcpTXBufMax}
	if err := set("send buffer range", &tx); err != nil {
		return err
	}
	// Receive buffer auto-tuning: a connection starts at the default and
	// grows towards the maximum only as its measured bandwidth-delay
	// product needs, so idle VMs with many connections stay small.
	moderate := tcpip.TCPModerateReceiveBufferOption(true)
	return set("receive buffer moderation", &moderate)
}

// emptySubnet is the default-route destination for netProto.
func emptySubnet(netProto tcpip.NetworkProtocolNumber) tcpip.Subnet {
	if netProto == ipv6Proto {
		return header.IPv6EmptySubnet
	}
	return header.IPv4EmptySubnet
}
