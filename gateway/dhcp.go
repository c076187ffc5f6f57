package gateway

import (
	"encoding/binary"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// dhcpServer hands out addresses of the segment (RFC 2131, the subset a
// VM's client uses: DISCOVER/OFFER, REQUEST/ACK or NAK, RELEASE, DECLINE).
// Leases are by client MAC and live in memory: a restarted proxy hands a
// VM that renews its old address back when it is free (REQUEST in
// INIT-REBOOT or RENEWING state is honoured for any free address).
type dhcpServer struct {
	g    *Gateway
	conn net.PacketConn

	mu     sync.Mutex
	byMAC  map[[6]byte]lease
	byAddr map[netip.Addr][6]byte
	next   netip.Addr // where the search for a free address starts
}

type lease struct {
	addr    netip.Addr
	expires time.Time // zero: offered, not yet acknowledged
}

// offerHold is how long an offered address stays reserved for its client.
const offerHold = 30 * time.Second

func newDHCPServer(g *Gateway) (*dhcpServer, error) {
	conn, err := g.vm.ListenUDPAll(dhcpv4.ServerPort)
	if err != nil {
		return nil, err
	}
	s := &dhcpServer{g: g, conn: conn, byMAC: map[[6]byte]lease{}, byAddr: map[netip.Addr][6]byte{},
		next: g.prefix.Addr().Next()}
	if !g.onClose(conn.Close) {
		return nil, net.ErrClosed
	}
	g.goServe(s.serve)
	return s, nil
}

func (s *dhcpServer) serve() {
	buf := make([]byte, 1500)
	for {
		n, _, err := s.conn.ReadFrom(buf)
		if err != nil {
			return // closed
		}
		req, err := dhcpv4.FromBytes(buf[:n])
		if err != nil || req.OpCode != dhcpv4.OpcodeBootRequest || len(req.ClientHWAddr) != 6 {
			s.g.stats.dhcpBad.Add(1)
			continue
		}
		reply := s.handle(req, time.Now())
		if reply == nil {
			continue
		}
		// Clients without an address cannot take unicast before ARP
		// works; broadcast is what every client accepts (RFC 2131 4.1).
		dst := &net.UDPAddr{IP: net.IPv4bcast, Port: dhcpv4.ClientPort}
		if !req.ClientIPAddr.IsUnspecified() && req.ClientIPAddr != nil {
			dst.IP = req.ClientIPAddr
		}
		if _, err := s.conn.WriteTo(reply.ToBytes(), dst); err != nil {
			s.g.cfg.Log.Debug("dhcp: reply not sent", "client", req.ClientHWAddr, "err", err)
		}
	}
}

// handle answers one request (nil: no answer).
func (s *dhcpServer) handle(req *dhcpv4.DHCPv4, now time.Time) *dhcpv4.DHCPv4 {
	mac := [6]byte(req.ClientHWAddr)
	s.mu.Lock()
	defer s.mu.Unlock()
	switch req.MessageType() {
	case dhcpv4.MessageTypeDiscover:
		a, ok := s.pick(mac, ipOf(req.RequestedIPAddress()), now)
		if !ok {
			s.g.stats.dhcpBad.Add(1)
			s.g.cfg.Log.Warn("dhcp: no free address", "client", req.ClientHWAddr.String())
			return nil
		}
		s.bind(mac, lease{addr: a, expires: now.Add(offerHold)})
		return s.reply(req, dhcpv4.MessageTypeOffer, a)
	case dhcpv4.MessageTypeRequest:
		if sid := req.ServerIdentifier(); sid != nil && !sid.IsUnspecified() && ipOf(sid) != s.g.addr {
			s.release(mac) // the client chose another server
			return nil
		}
		want := ipOf(req.RequestedIPAddress())
		if !want.IsValid() {
			want = ipOf(req.ClientIPAddr) // RENEWING / REBINDING
		}
		if !want.IsValid() || !s.usable(mac, want, now) {
			s.g.stats.dhcpBad.Add(1)
			return s.nak(req)
		}
		s.bind(mac, lease{addr: want, expires: now.Add(s.g.cfg.Lease)})
		s.g.stats.dhcpLeases.Add(1)
		s.g.cfg.Log.Info("dhcp: lease", "client", req.ClientHWAddr.String(), "addr", want, "hostname", req.HostName())
		return s.reply(req, dhcpv4.MessageTypeAck, want)
	case dhcpv4.MessageTypeRelease:
		s.release(mac)
	case dhcpv4.MessageTypeDecline:
		// The client found the address in use: keep it reserved for a
		// lease time under nobody's MAC, so it is not offered again soon.
		if l, ok := s.byMAC[mac]; ok {
			delete(s.byMAC, mac)
			s.byAddr[l.addr] = [6]byte{}
			s.byMAC[[6]byte{}] = lease{addr: l.addr, expires: now.Add(s.g.cfg.Lease)}
		}
	default:
		s.g.stats.dhcpBad.Add(1)
	}
	return nil
}

// pick chooses the address to offer mac: its lease, else the one it asks
// for if free, else the next free one.
func (s *dhcpServer) pick(mac [6]byte, want netip.Addr, now time.Time) (netip.Addr, bool) {
	if l, ok := s.byMAC[mac]; ok {
		return l.addr, true
	}
	if want.IsValid() && s.usable(mac, want, now) {
		return want, true
	}
	bc := broadcast(s.g.prefix)
	a := s.next
	for range 1 << min(32-s.g.prefix.Bits(), 24) {
		if !s.g.prefix.Contains(a) || a == bc {
			a = s.g.prefix.Addr().Next()
		}
		cand := a
		a = a.Next()
		if s.usable(mac, cand, now) {
			s.next = a
			return cand, true
		}
	}
	return netip.Addr{}, false
}

// usable says whether mac may have a: in the segment, not the gateway, the
// network or the broadcast address, not leased to another client (expired
// leases are reclaimed), and not seen in use by some VM.
func (s *dhcpServer) usable(mac [6]byte, a netip.Addr, now time.Time) bool {
	p := s.g.prefix
	if !p.Contains(a) || a == p.Addr() || a == broadcast(p) || a == s.g.addr {
		return false
	}
	if holder, ok := s.byAddr[a]; ok && holder != mac {
		if l := s.byMAC[holder]; l.addr == a && now.Before(l.expires) {
			return false
		}
		s.release(holder)
	}
	if l, ok := s.byMAC[mac]; ok && l.addr == a {
		return true
	}
	return s.g.cfg.InUse == nil || !s.g.cfg.InUse(a)
}

func (s *dhcpServer) bind(mac [6]byte, l lease) {
	if old, ok := s.byMAC[mac]; ok && old.addr != l.addr {
		delete(s.byAddr, old.addr)
	}
	s.byMAC[mac] = l
	s.byAddr[l.addr] = mac
}

func (s *dhcpServer) release(mac [6]byte) {
	if l, ok := s.byMAC[mac]; ok {
		delete(s.byMAC, mac)
		if s.byAddr[l.addr] == mac {
			delete(s.byAddr, l.addr)
		}
	}
}

// leaseOf returns mac's acknowledged address (tests, status).
func (s *dhcpServer) leaseOf(mac net.HardwareAddr) (netip.Addr, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	l, ok := s.byMAC[[6]byte(mac)]
	return l.addr, ok
}

func (s *dhcpServer) reply(req *dhcpv4.DHCPv4, t dhcpv4.MessageType, a netip.Addr) *dhcpv4.DHCPv4 {
	gw := net.IP(s.g.addr.AsSlice())
	mask := net.CIDRMask(s.g.prefix.Bits(), 32)
	mtu := make([]byte, 2)
	binary.BigEndian.PutUint16(mtu, uint16(s.g.cfg.MTU))
	r, err := dhcpv4.NewReplyFromRequest(req,
		dhcpv4.WithMessageType(t),
		dhcpv4.WithYourIP(net.IP(a.AsSlice())),
		dhcpv4.WithServerIP(gw),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(gw)),
		dhcpv4.WithNetmask(mask),
		dhcpv4.WithRouter(gw),
		dhcpv4.WithDNS(gw),
		dhcpv4.WithOption(dhcpv4.OptBroadcastAddress(net.IP(broadcast(s.g.prefix).AsSlice()))),
		dhcpv4.WithOption(dhcpv4.OptGeneric(dhcpv4.OptionInterfaceMTU, mtu)),
		dhcpv4.WithLeaseTime(uint32(s.g.cfg.Lease/time.Second)),
	)
	if err != nil {
		s.g.stats.dhcpBad.Add(1)
		return nil
	}
	return r
}

func (s *dhcpServer) nak(req *dhcpv4.DHCPv4) *dhcpv4.DHCPv4 {
	r, err := dhcpv4.NewReplyFromRequest(req, dhcpv4.WithMessageType(dhcpv4.MessageTypeNak),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IP(s.g.addr.AsSlice()))))
	if err != nil {
		return nil
	}
	return r
}

// ipOf converts an IPv4 net.IP (nil or unspecified: invalid).
func ipOf(ip net.IP) netip.Addr {
	v4 := ip.To4()
	if v4 == nil || v4.IsUnspecified() {
		return netip.Addr{}
	}
	return netip.AddrFrom4([4]byte(v4))
}
