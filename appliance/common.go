package appliance

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sort"
	"strings"

	"vnet/bridge"
	"vnet/topo"
)

// Version is set by main from the build.
var Version = "dev"

// LocalPort is a VM-facing port to attach to a daemon's switch.
type LocalPort struct {
	Name string
	Port bridge.Port
}

// StarLinkName is the name of host's link to the proxy, on both ends.
func StarLinkName(host string) string { return topo.StarLinkName(host) }

// FastLinkName is the name of the fast link between hosts a and b.
func FastLinkName(a, b string) string { return topo.Link{A: min(a, b), B: max(a, b)}.Name() }

// ValidName checks a host name as the topology language does.
func ValidName(name string) error {
	if name == topo.ProxyHost || name == "star" {
		return fmt.Errorf("host name %q is reserved", name)
	}
	t := &topo.Topology{Hosts: []string{name}}
	if err := t.Validate(); err != nil {
		return fmt.Errorf("invalid host name %q: %w", name, err)
	}
	return nil
}

func portInfos(sw *bridge.Switch) []PortInfo {
	var out []PortInfo
	for _, st := range sw.Stats() {
		out = append(out, PortInfo{Name: st.Name, Role: st.Role.String(), RxFrames: st.RxFrames, RxBytes: st.RxBytes,
			TxFrames: st.TxFrames, TxBytes: st.TxBytes, Drops: st.Drops})
	}
	return out
}

// localVMs lists the MACs learned on VM-facing ports.
func localVMs(sw *bridge.Switch, host string) []VMInfo {
	var out []VMInfo
	for _, e := range sw.MACs() {
		if e.Role != bridge.RoleLocal || e.Announced {
			continue
		}
		vm := VMInfo{MAC: e.MAC.String(), Host: host, Port: e.Port, IPs: []string{}}
		for _, ip := range []netip.Addr{e.IP, e.IP6} {
			if ip.IsValid() {
				vm.IPs = append(vm.IPs, ip.String())
			}
		}
		out = append(out, vm)
	}
	return out
}

func ruleInfos(host string, rules []bridge.Rule) []RuleInfo {
	out := []RuleInfo{}
	for _, r := range rules {
		out = append(out, RuleInfo{Host: host, Src: r.Src.String(), Dst: r.Dst.String(), To: r.To.String(), Filter: r.IP.String()})
	}
	return out
}

// ruleInfosHits is ruleInfos with each rule's frame count.
func ruleInfosHits(host string, sw *bridge.Switch) []RuleInfo {
	out := ruleInfos(host, sw.Rules())
	hits := sw.RuleHits()
	for i := range out {
		if i < len(hits) {
			out[i].Hits = hits[i]
		}
	}
	return out
}

func parseRuleInfo(r RuleInfo) (bridge.Rule, error) {
	return bridge.ParseRuleFilter(r.Src, r.Dst, r.Filter, r.To)
}

// String is the rule as `vnet ctl rule add` takes it, after its host:
// "HOST: SRC DST [FILTER] -> TO".
func (r RuleInfo) String() string {
	s := r.Host + ": " + r.Src + " " + r.Dst
	if r.Filter != "" {
		s += " " + r.Filter
	}
	return s + " -> " + r.To
}

func parseRuleInfos(rs []RuleInfo) ([]bridge.Rule, error) {
	var out []bridge.Rule
	var errs []error
	for _, r := range rs {
		br, err := parseRuleInfo(r)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, br)
	}
	return out, errors.Join(errs...)
}

// candidateAddrs lists host:port candidates for a listener bound to bound:
// the extra addresses first, then (if bound to the unspecified address)
// every usable interface address except those of the interfaces named in
// own (the daemon's own TAP ports: an address there is a VM's, reached
// through the overlay, and a link dialled to it would run inside itself).
// Loopback addresses are included only when withLoopback is set
// (everything on one machine, as in `vnet demo`): a remote peer must not
// dial its own loopback.
func candidateAddrs(bound net.Addr, withLoopback bool, own map[string]bool, extra ...netip.Addr) []string {
	ap, err := netip.ParseAddrPort(bound.String())
	if err != nil {
		return nil
	}
	seen := map[string]bool{}
	var out []string
	add := func(ip netip.Addr) {
		if ip.IsLoopback() && !withLoopback {
			return
		}
		s := netip.AddrPortFrom(ip.Unmap(), ap.Port()).String()
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	for _, ip := range extra {
		if ip.IsValid() && !ip.IsUnspecified() {
			add(ip)
		}
	}
	if !ap.Addr().IsUnspecified() {
		add(ap.Addr())
		return out
	}
	ifaces, _ := net.Interfaces()
	for _, ifc := range ifaces {
		if own[ifc.Name] {
			continue
		}
		addrs, _ := ifc.Addrs()
		for _, a := range addrs {
			pfx, err := netip.ParsePrefix(a.String())
			if err != nil {
				continue
			}
			if ip := pfx.Addr(); !ip.IsLinkLocalUnicast() && !ip.IsMulticast() {
				add(ip)
			}
		}
	}
	return out
}

// onLinkPrefixes lists this machine's interface addresses with their
// prefix lengths (e.g. 10.50.0.2/24), for nat.LocalCandidates: not those of the daemon's own
// devices (own), never link-local ones, loopback ones only withLoopback.
func onLinkPrefixes(own map[string]bool, withLoopback bool) []netip.Prefix {
	ifaces, _ := net.Interfaces()
	var out []netip.Prefix
	for _, ifc := range ifaces {
		if own[ifc.Name] || ifc.Flags&net.FlagUp == 0 {
			continue
		}
		addrs, _ := ifc.Addrs()
		for _, a := range addrs {
			pfx, err := netip.ParsePrefix(a.String())
			if err != nil {
				continue
			}
			ip := pfx.Addr()
			if ip.IsLinkLocalUnicast() || ip.IsMulticast() || (ip.IsLoopback() && !withLoopback) {
				continue
			}
			out = append(out, netip.PrefixFrom(ip.Unmap(), pfx.Bits()))
		}
	}
	return out
}

// ownDevices names the network devices of ports, for candidateAddrs.
func ownDevices(ports []LocalPort) map[string]bool {
	own := map[string]bool{}
	for _, lp := range ports {
		if tap, ok := lp.Port.(*bridge.TAPPort); ok && tap.Name() != "" {
			own[tap.Name()] = true
		}
	}
	return own
}

func addrIP(a net.Addr) netip.Addr {
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func discardIfNil(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return strings.TrimSpace(err.Error())
}

func mac6(hw net.HardwareAddr) bridge.MAC {
	var m bridge.MAC
	copy(m[:], hw)
	return m
}
