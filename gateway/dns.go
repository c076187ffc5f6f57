package gateway

import (
	"bufio"
	"net/netip"
	"os"
	"strings"
)

// DNS: the gateway announces itself as the VMs' resolver (DHCP option 6)
// and relays every query, over UDP and TCP, to the proxy machine's
// resolver (natTarget maps port 53 of the gateway to Config.DNS[0]): the
// VMs resolve exactly what the proxy machine resolves, split-horizon and
// VPN names included, with nothing to configure.

// SystemResolvers returns this machine's resolvers (/etc/resolv.conf).
func SystemResolvers() []netip.AddrPort { return systemResolvers("/etc/resolv.conf") }

// systemResolvers reads the nameserver lines of a resolv.conf. A missing
// or unreadable file gives none (DNS then goes unanswered, and the log
// says so at start).
func systemResolvers(path string) []netip.AddrPort {
	f, err := os.Open(path)
	if err != nil {
		return []netip.AddrPort{}
	}
	defer f.Close()
	return parseResolvConf(bufio.NewScanner(f))
}

func parseResolvConf(sc *bufio.Scanner) []netip.AddrPort {
	out := []netip.AddrPort{}
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 || fields[0] != "nameserver" {
			continue
		}
		host, _, _ := strings.Cut(fields[1], "%") // a zone: the gateway relays over IPv4/IPv6 sockets anyway
		a, err := netip.ParseAddr(host)
		if err != nil {
			continue
		}
		out = append(out, netip.AddrPortFrom(a.Unmap(), 53))
	}
	return out
}
