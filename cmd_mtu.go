package main

import (
	"github.com/spf13/pflag"

	"vnet/tunnel"
)

// mtuFlags adds --fragment and --underlay-mtu, shared by host and proxy.
func mtuFlags(fs *pflag.FlagSet) func() tunnel.UDPOptions {
	fragment := fs.Bool("fragment", true, "udp:// links split a VM frame that does not fit one datagram and reassemble it (false:\n"+
		"never split beyond IPv6's 1280-byte minimum; instead the switch clamps TCP MSS on SYNs and\n"+
		"answers oversize packets with ICMP \"fragmentation needed\" / ICMPv6 \"packet too big\", as a\n"+
		"router would, so the VMs' path-MTU discovery fits their packets to the path; other oversize\n"+
		"frames are dropped and counted as too-big; no 64 KB super-frames cross udp:// links)")
	underlay := fs.Int("underlay-mtu", 0, "the IP MTU of the network between the daemons: udp:// datagrams fit it whole\n"+
		"(0: a 1500-byte network, datagrams of 1452 bytes; a VM frame of at most MTU-62 bytes\n"+
		"on an IPv4-only socket, MTU-82 on a dual-stack one, crosses in one datagram)")
	return func() tunnel.UDPOptions { return tunnel.UDPOptions{UnderlayMTU: *underlay, NoFragment: !*fragment} }
}
