package netvm

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// This file is networking from inside the VM: gonet connections for TCP
// and UDP, and ICMP echo through a ping endpoint.

// DialTCP connects from the VM to addr. It resolves the neighbour (ARP or
// NDP) through the switch; ctx bounds the whole dial. The connection also
// has CloseRead and CloseWrite methods (half-close), as *net.TCPConn does.
func (v *VM) DialTCP(ctx context.Context, addr netip.AddrPort) (net.Conn, error) {
	fa, err := v.remote(addr.Addr(), addr.Port())
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: "tcp", Addr: net.TCPAddrFromAddrPort(addr), Err: err}
	}
	c, err := gonet.DialContextTCP(ctx, v.stack, fa, protoOf(addr.Addr()))
	if err != nil {
		return nil, err
	}
	return c, nil
}

// ListenTCP listens on the VM's address at port (0 picks a free port; see
// the listener's Addr).
func (v *VM) ListenTCP(port uint16) (net.Listener, error) {
	if v.isClosed() {
		return nil, net.ErrClosed
	}
	l, err := gonet.ListenTCP(v.stack, v.local(port), v.netProto)
	if err != nil {
		return nil, err
	}
	return l, nil
}

// DialUDP returns a UDP socket of the VM connected to addr, from a free
// local port. Its Write sends datagrams; the neighbour is resolved on the
// first one.
func (v *VM) DialUDP(addr netip.AddrPort) (net.Conn, error) {
	fa, err := v.remote(addr.Addr(), addr.Port())
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: "udp", Addr: net.UDPAddrFromAddrPort(addr), Err: err}
	}
	c, err := gonet.DialUDP(v.stack, nil, &fa, protoOf(addr.Addr()))
	if err != nil {
		return nil, err
	}
	return c, nil
}

// ListenUDP returns an unconnected UDP socket of the VM bound to port on
// the VM's address (0 picks a free port).
func (v *VM) ListenUDP(port uint16) (net.PacketConn, error) {
	if v.isClosed() {
		return nil, net.ErrClosed
	}
	la := v.local(port)
	c, err := gonet.DialUDP(v.stack, &la, nil, v.netProto)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// Ping sends one ICMP echo request from the VM to dst and waits for the
// matching reply. It returns the round-trip time, ctx's error if ctx ends
// first, or net.ErrClosed if the VM is closed meanwhile. The first ping to
// a neighbour includes ARP/NDP resolution.
func (v *VM) Ping(ctx context.Context, dst netip.Addr) (time.Duration, error) {
	fa, err := v.remote(dst, 0)
	if err != nil {
		return 0, fmt.Errorf("netvm: ping %s: %w", dst, err)
	}
	transProto, echoRequest, echoReply := icmp.ProtocolNumber4, uint8(header.ICMPv4Echo), uint8(header.ICMPv4EchoReply)
	netProto := protoOf(dst)
	if netProto == ipv6Proto {
		transProto, echoRequest, echoReply = icmp.ProtocolNumber6, uint8(header.ICMPv6EchoRequest), uint8(header.ICMPv6EchoReply)
	}

	var wq waiter.Queue
	ep, terr := v.stack.NewEndpoint(transProto, netProto, &wq)
	if terr != nil {
		return 0, fmt.Errorf("netvm: ping %s: %s", dst, terr)
	}
	defer ep.Close()
	we, readable := waiter.NewChannelEntry(waiter.ReadableEvents)
	wq.EventRegister(&we)
	defer wq.EventUnregister(&we)
	// Connect binds a free ident (the ping socket's "port"); the stack
	// writes it into every request and delivers only replies carrying it.
	if terr := ep.Connect(fa); terr != nil {
		return 0, fmt.Errorf("netvm: ping %s: %s", dst, terr)
	}

	// Echo message: type, code, checksum, ident (set by the stack),
	// sequence, then a random token that the reply must carry back.
	const tokenLen = 16
	req := make([]byte, header.ICMPv4MinimumSize+tokenLen)
	req[0] = echoRequest
	seq := uint16(v.pingSeq.Add(1))
	req[6], req[7] = byte(seq>>8), byte(seq)
	token := req[header.ICMPv4MinimumSize:]
	rand.Read(token)

	start := time.Now()
	if _, terr := ep.Write(bytes.NewReader(req), tcpip.WriteOptions{}); terr != nil {
		return 0, fmt.Errorf("netvm: ping %s: send: %s", dst, terr)
	}
	reply := make([]byte, len(req)+64)
	for {
		w := tcpip.SliceWriter(reply)
		res, terr := ep.Read(&w, tcpip.ReadOptions{})
		if _, ok := terr.(*tcpip.ErrWouldBlock); ok {
			select {
			case <-readable:
				continue
			case <-ctx.Done():
				return 0, fmt.Errorf("netvm: ping %s: %w", dst, ctx.Err())
			case <-v.done:
				return 0, fmt.Errorf("netvm: ping %s: %w", dst, net.ErrClosed)
			}
		}
		if terr != nil {
			return 0, fmt.Errorf("netvm: ping %s: receive: %s", dst, terr)
		}
		// Data starts with the ICMP header, as on Linux ping sockets.
		r := reply[:min(res.Count, len(reply))]
		if len(r) == len(req) && r[0] == echoReply && r[1] == 0 &&
			r[6] == req[6] && r[7] == req[7] && bytes.Equal(r[header.ICMPv4MinimumSize:], token) {
			return time.Since(start), nil
		}
		// Not ours (a late reply to an earlier ping): keep waiting.
	}
}

// errFamily is returned for an address of the other IP version.
var errFamily = errors.New("address family differs from the VM's")

// remote checks that a is usable from this VM and returns it as a gVisor
// address.
func (v *VM) remote(a netip.Addr, port uint16) (tcpip.FullAddress, error) {
	if v.isClosed() {
		return tcpip.FullAddress{}, net.ErrClosed
	}
	a = a.Unmap()
	if !a.IsValid() {
		return tcpip.FullAddress{}, errors.New("invalid address")
	}
	if a.Is4() != v.prefix.Addr().Is4() && !(a.Is6() && v.prefix6.IsValid()) {
		return tcpip.FullAddress{}, errFamily
	}
	return tcpip.FullAddress{NIC: nicID, Addr: tcpipAddr(a), Port: port}, nil
}

func (v *VM) local(port uint16) tcpip.FullAddress {
	return tcpip.FullAddress{NIC: nicID, Addr: tcpipAddr(v.prefix.Addr()), Port: port}
}

// Dial connects over TCP to addr ("IP:port") from inside the VM. With Listen
// it lets code written against address strings (such as the patterns
// workload's Net) run inside the VM.
func (v *VM) Dial(ctx context.Context, addr string) (net.Conn, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, fmt.Errorf("netvm dial %q: %w", addr, err)
	}
	return v.DialTCP(ctx, ap)
}

// Listen listens for TCP on addr's port ("host:port"; the host part is
// ignored: the VM has one address).
func (v *VM) Listen(addr string) (net.Listener, error) {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("netvm listen %q: %w", addr, err)
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return nil, fmt.Errorf("netvm listen %q: bad port", addr)
	}
	return v.ListenTCP(uint16(p))
}
