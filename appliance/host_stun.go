package appliance

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"time"
)

// NAT discovery: STUN against the proxy's two ports, and the candidate
// addresses a host reports for its UDP socket.

// proxyOnLoopback reports whether the proxy is on this machine's loopback:
// then so are the other hosts, and loopback candidates make sense.
func (h *Host) proxyOnLoopback() bool {
	h.mu.Lock()
	star := h.mu.star
	h.mu.Unlock()
	if star != nil {
		return addrIP(star.RemoteAddr()).IsLoopback()
	}
	ap, err := netip.ParseAddrPort(h.cfg.Proxies[0].Addr)
	return err == nil && ap.Addr().IsLoopback()
}

func (h *Host) triggerSTUN() {
	select {
	case h.kickSTUN <- struct{}{}:
	default:
	}
}

// routineSTUN learns the UDP socket's reflexive addresses and NAT mapping
// from the proxy's two STUN ports (and --stun servers), when the proxy
// tells us its ports and every STUNInterval after.
func (h *Host) routineSTUN() {
	defer h.wg.Done()
	if h.mux == nil {
		return
	}
	t := time.NewTicker(STUNInterval)
	defer t.Stop()
	for {
		select {
		case <-h.ctx.Done():
			return
		case <-h.kickSTUN:
		case <-t.C:
		}
		servers := h.stunServers()
		if len(servers) == 0 {
			continue
		}
		ctx, cancel := context.WithTimeout(h.ctx, 3*time.Second)
		res, err := h.stunc.ProbeLocal(ctx, servers, h.localUDP())
		cancel()
		if err != nil {
			h.log.Info("STUN: no answer", "servers", servers, "err", err)
			continue
		}
		h.mu.Lock()
		changed := h.mu.nat.Mapping != res.Mapping || !slices.Equal(h.mu.nat.Reflexive, res.Reflexive)
		h.mu.nat = res
		h.mu.Unlock()
		if changed {
			h.log.Info("NAT learned", "mapping", res.Mapping, "reflexive", res.Reflexive)
			h.kickStatus()
		}
	}
}

// stunServers are the proxy's STUN ports on the address we reach it at,
// then on its addresses of the other IP family (so that a host learns its
// IPv6 mapping beside its IPv4 one, or the reverse), then the --stun
// servers.
func (h *Host) stunServers() []netip.AddrPort {
	h.mu.Lock()
	star, ports, addrs := h.mu.star, h.mu.stunPorts, h.mu.stunAddrs
	h.mu.Unlock()
	var out []netip.AddrPort
	if star != nil {
		if ip := addrIP(star.RemoteAddr()); ip.IsValid() {
			for _, a := range append([]netip.Addr{ip}, otherFamily(ip, addrs, h.mux.DualStack())...) {
				for _, p := range ports {
					out = append(out, netip.AddrPortFrom(a, p))
				}
			}
		}
	}
	for _, s := range h.cfg.STUN {
		if ua, err := net.ResolveUDPAddr("udp", s); err == nil {
			out = append(out, ua.AddrPort())
		}
	}
	return out
}

// maxOtherFamily bounds the proxy addresses of the other family probed.
const maxOtherFamily = 4

// otherFamily picks from the proxy's STUN addresses those of the family
// that star (the address we reach the proxy at) is not: loopback ones only
// if star is loopback too, never link-local ones (they need a zone), and
// only from a dual-stack socket (one bound to a single address, or to
// IPv4's, reaches one family).
func otherFamily(star netip.Addr, addrs []string, dualStack bool) []netip.Addr {
	if !dualStack {
		return nil
	}
	var out []netip.Addr
	for _, s := range addrs {
		a, err := netip.ParseAddr(s)
		if err != nil {
			continue
		}
		a = a.Unmap()
		if a.Is4() == star.Is4() || a.IsLoopback() != star.IsLoopback() || a.IsLinkLocalUnicast() ||
			a.IsUnspecified() || a.IsMulticast() {
			continue
		}
		if out = append(out, a); len(out) == maxOtherFamily {
			break
		}
	}
	return out
}

// localUDP lists the UDP socket's local candidate addresses.
func (h *Host) localUDP() []netip.AddrPort {
	if h.mux == nil {
		return nil
	}
	h.mu.Lock()
	star := h.mu.star
	h.mu.Unlock()
	var extra []netip.Addr
	if star != nil {
		extra = append(extra, addrIP(star.LocalAddr()))
	}
	return parseAddrPorts(candidateAddrs(h.mux.Addr(), h.proxyOnLoopback(), h.ownDevices(), extra...))
}
