package gateway

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Forward publishes a VM's service on the proxy machine: connections (tcp)
// or datagrams (udp) to Listen reach To on the segment, from the gateway's
// address.
type Forward struct {
	Proto  string // "tcp" or "udp"
	Listen string // host:port on the proxy machine; ":8080" is every interface
	To     netip.AddrPort
}

func (f Forward) String() string { return f.Proto + ":" + f.Listen + "=" + f.To.String() }

// ParseForward parses --forward's PROTO:[ADDR:]PORT=VMIP:PORT, e.g.
// tcp:8080=10.0.0.5:80 or udp:127.0.0.1:5353=10.0.0.5:53.
func ParseForward(s string) (Forward, error) {
	bad := func(why string) (Forward, error) {
		return Forward{}, fmt.Errorf("forward %q: %s (want PROTO:[ADDR:]PORT=VMIP:PORT, e.g. tcp:8080=10.0.0.5:80)", s, why)
	}
	proto, rest, ok := strings.Cut(s, ":")
	if !ok || proto != "tcp" && proto != "udp" {
		return bad("protocol must be tcp or udp")
	}
	listen, to, ok := strings.Cut(rest, "=")
	if !ok {
		return bad("no '='")
	}
	if _, err := strconv.ParseUint(listen, 10, 16); err == nil {
		listen = ":" + listen
	}
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return bad("listen address: " + err.Error())
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
		return bad("listen port must be 1-65535")
	}
	if host != "" {
		if _, err := netip.ParseAddr(host); err != nil {
			return bad("listen address must be an IP address")
		}
	}
	dst, err := netip.ParseAddrPort(to)
	if err != nil || dst.Port() == 0 || !dst.Addr().Is4() {
		return bad("target must be an IPv4 VMIP:PORT")
	}
	return Forward{Proto: proto, Listen: listen, To: dst}, nil
}

// publish opens f's listener on the proxy machine and serves it.
func (g *Gateway) publish(f Forward) error {
	switch f.Proto {
	case "tcp":
		ln, err := net.Listen("tcp", f.Listen)
		if err != nil {
			return fmt.Errorf("gateway: forward %s: %w", f, err)
		}
		if !g.onClose(ln.Close) {
			return net.ErrClosed
		}
		g.goServe(func() { g.serveTCPForward(ln, f) })
	case "udp":
		pc, err := net.ListenPacket("udp", f.Listen)
		if err != nil {
			return fmt.Errorf("gateway: forward %s: %w", f, err)
		}
		if !g.onClose(pc.Close) {
			return net.ErrClosed
		}
		g.goServe(func() { g.serveUDPForward(pc, f) })
	default:
		return fmt.Errorf("gateway: forward %s: unknown protocol", f)
	}
	g.cfg.Log.Info("forward published", "listen", f.Listen, "proto", f.Proto, "to", f.To)
	return nil
}

func (g *Gateway) serveTCPForward(ln net.Listener, f Forward) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		g.stats.fwdConns.Add(1)
		ok := g.goServe(func() {
			ctx, cancel := context.WithTimeout(g.ctx, dialTimeout)
			vmc, err := g.vm.DialTCP(ctx, f.To)
			cancel()
			if err != nil {
				g.stats.fwdFails.Add(1)
				g.cfg.Log.Debug("forward: VM not reached", "to", f.To, "from", c.RemoteAddr(), "err", err)
				c.Close()
				return
			}
			g.splice(c, vmc)
		})
		if !ok {
			c.Close()
		}
	}
}

// serveUDPForward relays datagrams: each client address on the proxy
// machine gets its own socket on the segment, so the VM's answers find
// their way back; a client idle for UDPIdle is forgotten.
func (g *Gateway) serveUDPForward(pc net.PacketConn, f Forward) {
	var mu sync.Mutex
	flows := map[string]net.Conn{}
	buf := make([]byte, 65535)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			mu.Lock()
			for _, c := range flows {
				c.Close()
			}
			mu.Unlock()
			return
		}
		key := from.String()
		mu.Lock()
		vmc := flows[key]
		mu.Unlock()
		if vmc == nil {
			if vmc, err = g.vm.DialUDP(f.To); err != nil {
				g.stats.fwdFails.Add(1)
				continue
			}
			g.stats.fwdConns.Add(1)
			mu.Lock()
			flows[key] = vmc
			mu.Unlock()
			started := g.goServe(func() {
				g.answerUDPForward(pc, from, vmc)
				mu.Lock()
				delete(flows, key)
				mu.Unlock()
			})
			if !started {
				vmc.Close()
				return
			}
		}
		if _, err := vmc.Write(buf[:n]); err != nil {
			g.stats.fwdFails.Add(1)
		}
	}
}

// answerUDPForward carries the VM's datagrams back to the client at to
// until the VM has sent none for UDPIdle; the client's next datagram then
// opens a new flow (a request/response service never notices).
func (g *Gateway) answerUDPForward(pc net.PacketConn, to net.Addr, vmc net.Conn) {
	defer vmc.Close()
	buf := make([]byte, 65535)
	for {
		vmc.SetReadDeadline(time.Now().Add(g.cfg.UDPIdle))
		n, err := vmc.Read(buf)
		if err != nil {
			return
		}
		if _, err := pc.WriteTo(buf[:n], to); err != nil {
			g.stats.fwdFails.Add(1)
		}
	}
}
