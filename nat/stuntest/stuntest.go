// Package stuntest is an in-memory STUN lab for tests: nat.Servers at
// chosen addresses, one client socket behind a simulated NAT whose mapping
// behaviour (RFC 4787) the test picks, and optional loss. No sockets; each
// datagram is delivered on its own goroutine, as a socket reader would, and
// the lab waits for them all at test cleanup.
package stuntest

import (
	"net/netip"
	"sync"
	"testing"

	"vnet/nat"
)

// NAT returns the address a server at dst sees the client's socket as.
// It is called concurrently.
type NAT func(dst netip.AddrPort) netip.AddrPort

// Static is a NAT that always shows addr: no NAT at all (addr is the
// socket's own address) or an endpoint-independent mapping.
func Static(addr netip.AddrPort) NAT {
	return func(netip.AddrPort) netip.AddrPort { return addr }
}

// EndpointDependent is an address-and-port-dependent NAT (symmetric): the
// first packet to each new destination ip:port gets the next port, counting
// from firstPort, on ip.
func EndpointDependent(ip netip.Addr, firstPort uint16) NAT {
	var (
		mu    sync.Mutex
		ports = map[netip.AddrPort]uint16{}
		next  = firstPort
	)
	return func(dst netip.AddrPort) netip.AddrPort {
		mu.Lock()
		defer mu.Unlock()
		p, ok := ports[dst]
		if !ok {
			p = next
			next++
			ports[dst] = p
		}
		return netip.AddrPortFrom(ip, p)
	}
}

// Datagram is one request on its way to a server, for Lab.Drop.
type Datagram struct {
	To  netip.AddrPort // the server it is sent to
	Seq int            // how many datagrams were sent to To before this one
	B   []byte         // its bytes (a copy; read only)
}

// Lab connects one nat.Client to in-memory nat.Servers.
type Lab struct {
	tb  testing.TB
	nat NAT

	// Drop, if set before the client sends, is asked about every request;
	// true loses it. Responses are never lost (lose the request instead).
	Drop func(d Datagram) bool

	mu      sync.Mutex
	servers map[netip.AddrPort]*nat.Server
	sent    map[netip.AddrPort]int
	handle  func(b []byte, from netip.AddrPort) bool
	wg      sync.WaitGroup
}

// New returns a lab whose client is seen through n. Its cleanup waits for
// datagrams still being delivered.
func New(tb testing.TB, n NAT) *Lab {
	l := &Lab{tb: tb, nat: n, servers: map[netip.AddrPort]*nat.Server{}, sent: map[netip.AddrPort]int{}}
	tb.Cleanup(l.wg.Wait)
	return l
}

// AddServer starts answering at addr and returns the server (for Stats).
// Requests to an address with no server vanish, as to a silent host.
func (l *Lab) AddServer(addr netip.AddrPort) *nat.Server {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := new(nat.Server)
	l.servers[addr] = s
	return s
}

// Client returns a nat.Client whose requests go to the lab's servers and
// whose responses come back through its Handle.
func (l *Lab) Client() *nat.Client {
	c := nat.NewClient(l.Send)
	l.mu.Lock()
	l.handle = c.Handle
	l.mu.Unlock()
	return c
}

// Send is the client's send function: it copies b, counts it, asks Drop,
// and delivers it to the server at to on a new goroutine; the response goes
// to the client's Handle. It never fails, like UDP.
func (l *Lab) Send(b []byte, to netip.AddrPort) error {
	b = append([]byte(nil), b...)
	l.mu.Lock()
	seq := l.sent[to]
	l.sent[to]++
	srv := l.servers[to]
	handle := l.handle
	l.mu.Unlock()
	if l.Drop != nil && l.Drop(Datagram{To: to, Seq: seq, B: b}) {
		l.tb.Logf("stuntest: request %d to %v lost", seq, to)
		return nil
	}
	if srv == nil || handle == nil {
		return nil
	}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		if resp, ok := srv.Handle(b, l.nat(to)); ok {
			handle(resp, to)
		}
	}()
	return nil
}

// Sent reports how many requests the client sent to addr.
func (l *Lab) Sent(addr netip.AddrPort) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.sent[addr]
}
