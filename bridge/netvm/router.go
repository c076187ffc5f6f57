package netvm

import (
	"errors"
	"net"
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// This file is the router mode of a VM (Config.Router): the VM is the
// segment's gateway. It takes in IP packets for any address, and hands each
// TCP connection and UDP flow that other VMs open — to whatever address —
// to a handler, which decides where it really goes (a userspace NAT, as
// slirp4netns and gvisor-tap-vsock do).

// Limits of the router mode.
const (
	// tcpForwarderWindow is the receive window of a connection not yet
	// accepted (0: gVisor's default).
	tcpForwarderWindow = 0
	// tcpForwarderMaxInFlight bounds half-open connections (SYN received,
	// handler not yet decided): a VM scanning ports cannot make the
	// gateway hold unbounded state.
	tcpForwarderMaxInFlight = 1024
)

// TCPRequest is a connection a VM on the segment opens through the router,
// before the router has answered its SYN. The handler calls exactly one of
// Accept or Reject, from any goroutine.
type TCPRequest struct {
	Src, Dst netip.AddrPort // the VM's end and the address it dialled
	req      *tcp.ForwarderRequest
}

// Accept completes the handshake and returns the connection, whose local
// address is Dst (the router answers in the name of the address the VM
// dialled).
func (r *TCPRequest) Accept() (net.Conn, error) {
	var wq waiter.Queue
	ep, err := r.req.CreateEndpoint(&wq)
	if err != nil {
		r.req.Complete(true)
		return nil, errors.New(err.String())
	}
	r.req.Complete(false)
	return gonet.NewTCPConn(&wq, ep), nil
}

// Reject answers the SYN with a reset: the VM sees "connection refused".
func (r *TCPRequest) Reject() { r.req.Complete(true) }

// UDPFlow is the first datagram of a new UDP flow (source, destination)
// through the router. Accept returns a socket connected to the VM's end
// whose local address is Dst; the first datagram is its first Read.
type UDPFlow struct {
	Src, Dst netip.AddrPort
	req      *udp.ForwarderRequest
}

// Accept returns the flow's socket; nil, err when gVisor cannot make one
// (the datagram is then dropped).
func (f *UDPFlow) Accept() (net.Conn, error) {
	var wq waiter.Queue
	ep, err := f.req.CreateEndpoint(&wq)
	if err != nil {
		return nil, errors.New(err.String())
	}
	return gonet.NewUDPConn(&wq, ep), nil
}

// HandleTCP makes the router pass every TCP connection a VM opens to an
// address the router does not listen on to h, each in its own goroutine.
// Only a VM built with Config.Router sees connections to foreign
// addresses.
func (v *VM) HandleTCP(h func(*TCPRequest)) {
	fwd := tcp.NewForwarder(v.stack, tcpForwarderWindow, tcpForwarderMaxInFlight, func(req *tcp.ForwarderRequest) {
		id := req.ID()
		r := &TCPRequest{Src: addrPort(id.RemoteAddress, id.RemotePort), Dst: addrPort(id.LocalAddress, id.LocalPort),
			req: req}
		go h(r)
	})
	v.stack.SetTransportProtocolHandler(tcp.ProtocolNumber, fwd.HandlePacket)
}

// HandleUDP makes the router pass the first datagram of every UDP flow to
// an address and port it has no socket on to h (in the stack's goroutine:
// h must not block; start one to serve the flow).
func (v *VM) HandleUDP(h func(*UDPFlow)) {
	fwd := udp.NewForwarder(v.stack, func(req *udp.ForwarderRequest) bool {
		id := req.ID()
		h(&UDPFlow{Src: addrPort(id.RemoteAddress, id.RemotePort), Dst: addrPort(id.LocalAddress, id.LocalPort), req: req})
		return true
	})
	v.stack.SetTransportProtocolHandler(udp.ProtocolNumber, fwd.HandlePacket)
}

// ListenUDPAll returns a UDP socket bound to port on every address of the
// VM, broadcast included, that may send to the broadcast address: what a
// DHCP server needs (clients without an address send from 0.0.0.0 to
// 255.255.255.255).
func (v *VM) ListenUDPAll(port uint16) (net.PacketConn, error) {
	if v.isClosed() {
		return nil, net.ErrClosed
	}
	var wq waiter.Queue
	ep, terr := v.stack.NewEndpoint(udp.ProtocolNumber, v.netProto, &wq)
	if terr != nil {
		return nil, errors.New(terr.String())
	}
	ep.SocketOptions().SetBroadcast(true)
	if terr := ep.Bind(tcpip.FullAddress{NIC: nicID, Port: port}); terr != nil {
		ep.Close()
		return nil, errors.New(terr.String())
	}
	return gonet.NewUDPConn(&wq, ep), nil
}

func addrPort(a tcpip.Address, port uint16) netip.AddrPort {
	ip, _ := netip.AddrFromSlice(a.AsSlice())
	return netip.AddrPortFrom(ip.Unmap(), port)
}
