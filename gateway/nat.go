package gateway

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"vnet/bridge/netvm"
)

// natTarget is where the proxy machine's side of a flow to dst goes:
// the gateway's own address means the proxy machine itself (its loopback),
// DNS at the gateway means the upstream resolver; a segment address other
// than the gateway's is no flow of the gateway's (the VMs reach each other
// directly). ok is false for destinations not to be carried.
func (g *Gateway) natTarget(dst netip.AddrPort) (target string, dns, ok bool) {
	a := dst.Addr()
	own := a == g.addr || (g.addr6.IsValid() && (a == g.addr6 || a == g.vm.LinkLocal()))
	switch {
	case own && dst.Port() == 53:
		if len(g.cfg.DNS) == 0 {
			return "", true, false
		}
		return g.cfg.DNS[0].String(), true, true
	case own && a.Is6():
		return netip.AddrPortFrom(netip.IPv6Loopback(), dst.Port()).String(), false, true
	case own:
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), dst.Port()).String(), false, true
	case g.prefix.Contains(a), g.prefix6.IsValid() && g.prefix6.Contains(a),
		!a.IsValid(), a.IsMulticast(), a.IsUnspecified(), a.Is6() && (a.IsLinkLocalUnicast() || a.IsLoopback()),
		a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return "", false, false
	}
	return dst.String(), false, true
}

// natTCP carries one connection a VM opens: dial first, then answer the
// SYN (so a refused or unreachable destination is a reset for the VM, as
// with a real router, not an accepted connection that dies at once).
func (g *Gateway) natTCP(r *netvm.TCPRequest) {
	target, _, ok := g.natTarget(r.Dst)
	if !ok {
		g.stats.tcpRefused.Add(1)
		r.Reject()
		return
	}
	ctx, cancel := context.WithTimeout(g.ctx, dialTimeout)
	out, err := g.cfg.Dial(ctx, "tcp", target)
	cancel()
	if err != nil {
		g.stats.tcpRefused.Add(1)
		g.cfg.Log.Debug("nat: tcp dial failed", "vm", r.Src, "dst", r.Dst, "via", target, "err", err)
		r.Reject()
		return
	}
	in, err := r.Accept()
	if err != nil {
		out.Close()
		g.stats.tcpRefused.Add(1)
		return
	}
	g.stats.tcpConns.Add(1)
	if !g.goServe(func() { g.splice(in, out) }) {
		in.Close()
		out.Close()
	}
}

// splice copies both ways until both directions are done, passing on
// half-closes; Close of the gateway ends it.
func (g *Gateway) splice(a, b net.Conn) {
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		io.Copy(dst, src)
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		} else {
			dst.Close()
		}
		done <- struct{}{}
	}
	go cp(a, b)
	go cp(b, a)
	for n := 0; n < 2; {
		select {
		case <-done:
			n++
		case <-g.ctx.Done():
			a.Close()
			b.Close()
			for ; n < 2; n++ {
				<-done
			}
			return
		}
	}
	a.Close()
	b.Close()
}

// natUDP starts a flow for the first datagram from a VM to a new
// destination (called in the stack's goroutine: it must not block).
func (g *Gateway) natUDP(f *netvm.UDPFlow) {
	target, dns, ok := g.natTarget(f.Dst)
	if !ok {
		g.stats.udpDropped.Add(1)
		return
	}
	in, err := f.Accept()
	if err != nil {
		g.stats.udpDropped.Add(1)
		return
	}
	g.stats.udpFlows.Add(1)
	idle := g.cfg.UDPIdle
	if dns {
		idle = dnsIdle
	}
	if !g.goServe(func() { g.relayUDP(in, target, dns, idle) }) {
		in.Close()
	}
}

// relayUDP relays one flow between the VM's socket and one on the proxy
// machine connected to target, until it is idle for idle.
func (g *Gateway) relayUDP(in net.Conn, target string, dns bool, idle time.Duration) {
	defer in.Close()
	ctx, cancel := context.WithTimeout(g.ctx, dialTimeout)
	out, err := g.cfg.Dial(ctx, "udp", target)
	cancel()
	if err != nil {
		g.stats.udpDropped.Add(1)
		g.cfg.Log.Debug("nat: udp dial failed", "dst", target, "err", err)
		return
	}
	defer out.Close()
	var count *atomic.Uint64
	if dns {
		count = &g.stats.dnsQueries
	}
	g.relayPackets(in, out, idle, count)
}

// relayPackets copies datagrams both ways between two connected sockets
// until neither has carried one for idle, or the gateway closes, and
// closes both. Each datagram from a is counted in count (if set).
func (g *Gateway) relayPackets(a, b net.Conn, idle time.Duration, count *atomic.Uint64) {
	var last atomic.Int64
	last.Store(time.Now().UnixNano())
	stop := make(chan struct{})
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn, count *atomic.Uint64) {
		defer func() { done <- struct{}{} }()
		buf := make([]byte, 65535)
		for {
			src.SetReadDeadline(time.Now().Add(idle))
			n, err := src.Read(buf)
			if err != nil {
				select {
				case <-stop:
					return
				default:
				}
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() && time.Since(time.Unix(0, last.Load())) < idle {
					continue // the other direction is alive
				}
				return
			}
			last.Store(time.Now().UnixNano())
			if count != nil {
				count.Add(1)
			}
			if _, err := dst.Write(buf[:n]); err != nil {
				g.stats.udpDropped.Add(1)
			}
			select {
			case <-stop:
				return
			default:
			}
		}
	}
	go cp(b, a, count)
	go cp(a, b, nil)
	finished := 0
	select {
	case <-done:
		finished++
	case <-g.ctx.Done():
	}
	// One direction ended (idle, error) or the gateway closes: the flow
	// is over; closing both sockets ends the other copier's Read.
	close(stop)
	a.Close()
	b.Close()
	for ; finished < 2; finished++ {
		<-done
	}
}
