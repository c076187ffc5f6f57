package nat

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/stun/v3"
)

// ErrNoAnswer is returned (wrapped) by Probe when no server answered.
var ErrNoAnswer = errors.New("nat: no STUN server answered")

// Client learns its socket's reflexive (public) addresses from STUN servers
// and classifies the NAT's mapping behaviour. It owns no socket: it sends
// through the function given to NewClient, and the socket's reader hands it
// the datagrams it receives through Handle.
//
// Concurrency: Handle and Probe (several Probes too) may run at the same
// time from different goroutines; Handle never blocks on the network and
// never calls send.
type Client struct {
	// Local lists this socket's own addresses: the interface IPs it can send
	// from, each with the socket's port. Probe passes them to Classify so that
	// a host without NAT reports MappingNone. Set it before the first Probe and
	// do not change it while a Probe runs; ProbeLocal takes them as an
	// argument instead.
	Local []netip.AddrPort

	send func(b []byte, to netip.AddrPort) error

	mu      sync.Mutex
	pending map[[stun.TransactionIDSize]byte]*transaction // guarded by mu

	stats struct {
		requests    atomic.Uint64 // Binding requests sent, retransmissions included
		retransmits atomic.Uint64 // of which retransmissions
		responses   atomic.Uint64 // responses that completed a transaction
		unmatched   atomic.Uint64 // STUN messages for no pending transaction
		malformed   atomic.Uint64 // responses to a pending transaction that were unusable
	}
}

// transaction is one server's Binding request within one Probe. Its request
// is resent unchanged (same transaction ID) until answered.
type transaction struct {
	server netip.AddrPort // as passed to Probe: the send address and the PerServer key
	req    []byte         // encoded request; never modified after Probe builds it
	wake   chan struct{}  // the Probe's, capacity 1: poked when the transaction ends

	// guarded by Client.mu
	done      bool           // answered (success or error response)
	reflexive netip.AddrPort // valid after a success response
}

// NewClient returns a Client that sends its requests with send. send is
// called from Probe's goroutine; it must not modify b, and may keep it (the
// Client never modifies a request once built). A send error is remembered
// and the request is retried at the next interval, like a lost datagram.
func NewClient(send func(b []byte, to netip.AddrPort) error) *Client {
	return &Client{send: send, pending: make(map[[stun.TransactionIDSize]byte]*transaction)}
}

// Handle consumes b if it is a STUN response (success or error class,
// Binding method) whose transaction ID belongs to a request a running Probe
// sent, and reports true; a usable success response completes that
// server's transaction, an error response ends it without an address, and a
// malformed one is counted and dropped (the request keeps being resent).
// Anything else — requests (the proxy's Server wants those), unknown
// transaction IDs, responses arriving after their Probe returned, non-STUN
// data — gives false and leaves the datagram to the caller. b is not
// retained. The source address is not checked: the 96-bit random
// transaction ID is what ties a response to its request (RFC 5389 §7.3.3),
// and from is accepted in any form; it is unused.
func (c *Client) Handle(b []byte, from netip.AddrPort) bool {
	_ = from
	if !IsSTUN(b) {
		return false
	}
	var t stun.MessageType
	t.ReadValue(binary.BigEndian.Uint16(b[0:2]))
	if t.Method != stun.MethodBinding || (t.Class != stun.ClassSuccessResponse && t.Class != stun.ClassErrorResponse) {
		return false // requests are the Server's; indications are nobody's
	}
	c.mu.Lock()
	tx := c.pending[txID(b)]
	c.mu.Unlock()
	if tx == nil {
		c.stats.unmatched.Add(1)
		return false
	}
	var m stun.Message
	m.Raw = b // Decode only reads Raw; nothing aliasing b outlives this call.
	if err := m.Decode(); err != nil || !fingerprintOK(&m) {
		c.stats.malformed.Add(1)
		return true
	}
	var refl netip.AddrPort
	if t.Class == stun.ClassSuccessResponse {
		var ok bool
		if refl, ok = reflexiveAddr(&m); !ok {
			c.stats.malformed.Add(1)
			return true
		}
	}
	c.mu.Lock()
	first := !tx.done
	if first {
		tx.done, tx.reflexive = true, refl
	}
	c.mu.Unlock()
	if first {
		c.stats.responses.Add(1)
		select {
		case tx.wake <- struct{}{}:
		default: // a wake-up is already pending; Probe rechecks every transaction
		}
	}
	return true
}

// Probe is ProbeLocal with c.Local.
func (c *Client) Probe(ctx context.Context, servers []netip.AddrPort) (Result, error) {
	return c.ProbeLocal(ctx, servers, c.Local)
}

// ProbeLocal sends a Binding request to every server (duplicates, counting
// IPv4-mapped IPv6 as IPv4, are probed once) and resends it every ~200 ms,
// up to 4 sends, until that server answers; it returns when every server
// has answered, when ~400 ms have passed after the last send, or when ctx
// ends. local is this socket's own addresses, for Classify.
//
// The Result holds what the servers that answered reported; the error is
// non-nil (wrapping ErrNoAnswer, ctx's error if it ended, and the last send
// error if any) only if none answered. Responses that arrive after
// ProbeLocal returns are not consumed (Handle reports false).
func (c *Client) ProbeLocal(ctx context.Context, servers []netip.AddrPort, local []netip.AddrPort) (Result, error) {
	wake := make(chan struct{}, 1)
	txs := make([]*transaction, 0, len(servers))
	seen := make(map[netip.AddrPort]bool, len(servers))
	for _, s := range servers {
		if !s.IsValid() || seen[unmap(s)] {
			continue
		}
		seen[unmap(s)] = true
		req, err := stun.Build(stun.TransactionID, stun.BindingRequest, stun.Fingerprint)
		if err != nil { // only crypto/rand failing
			return Result{}, fmt.Errorf("nat: build binding request: %w", err)
		}
		txs = append(txs, &transaction{server: s, req: req.Raw, wake: wake})
	}
	if len(txs) == 0 {
		return Result{}, fmt.Errorf("%w: no server to probe", ErrNoAnswer)
	}
	if err := ctx.Err(); err != nil {
		return Result{}, fmt.Errorf("%w: %w", ErrNoAnswer, err)
	}

	c.mu.Lock()
	for _, tx := range txs {
		c.pending[txID(tx.req)] = tx
	}
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		for _, tx := range txs {
			delete(c.pending, txID(tx.req))
		}
		c.mu.Unlock()
	}()

	var sendErr error
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	unanswered := slices.Clone(txs) // filtered in place; txs stays whole
	for attempt := 0; attempt < probeAttempts && len(unanswered) > 0 && ctx.Err() == nil; attempt++ {
		for _, tx := range unanswered {
			c.stats.requests.Add(1)
			if attempt > 0 {
				c.stats.retransmits.Add(1)
			}
			if err := c.send(tx.req, tx.server); err != nil {
				sendErr = err
			}
		}
		wait := retransmitInterval
		if attempt == probeAttempts-1 {
			wait = finalWait
		}
		timer.Reset(wait)
	waiting:
		for {
			unanswered = c.unanswered(unanswered)
			if len(unanswered) == 0 {
				break
			}
			select {
			case <-ctx.Done():
				break waiting
			case <-timer.C:
				break waiting
			case <-wake:
			}
		}
	}

	res := Result{PerServer: make(map[netip.AddrPort]netip.AddrPort)}
	seenRefl := make(map[netip.AddrPort]bool)
	c.mu.Lock()
	for _, tx := range txs {
		if !tx.done || !tx.reflexive.IsValid() {
			continue
		}
		res.PerServer[tx.server] = tx.reflexive
		if !seenRefl[tx.reflexive] {
			seenRefl[tx.reflexive] = true
			res.Reflexive = append(res.Reflexive, tx.reflexive)
		}
	}
	c.mu.Unlock()
	res.Mapping = Classify(res.PerServer, local)
	if len(res.PerServer) == 0 {
		err := fmt.Errorf("%w (%d servers, %d sends each)", ErrNoAnswer, len(txs), probeAttempts)
		if ctx.Err() != nil {
			err = fmt.Errorf("%w: %w", err, ctx.Err())
		}
		if sendErr != nil {
			err = fmt.Errorf("%w; last send error: %w", err, sendErr)
		}
		return res, err
	}
	return res, nil
}

// unanswered returns the transactions of txs that are not done, reusing
// txs's array.
func (c *Client) unanswered(txs []*transaction) []*transaction {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := txs[:0]
	for _, tx := range txs {
		if !tx.done {
			out = append(out, tx)
		}
	}
	return out
}

// Stats returns the counters: "requests" (Binding requests sent,
// retransmissions included), "retransmits", "responses" (transactions
// completed), "unmatched" (STUN messages for no pending transaction) and
// "malformed" (unusable responses to a pending transaction).
func (c *Client) Stats() map[string]uint64 {
	return map[string]uint64{
		"requests":    c.stats.requests.Load(),
		"retransmits": c.stats.retransmits.Load(),
		"responses":   c.stats.responses.Load(),
		"unmatched":   c.stats.unmatched.Load(),
		"malformed":   c.stats.malformed.Load(),
	}
}

func txID(b []byte) (id [stun.TransactionIDSize]byte) {
	copy(id[:], b[8:headerLen])
	return id
}

// reflexiveAddr returns the address a success response reports:
// XOR-MAPPED-ADDRESS, or MAPPED-ADDRESS from an RFC 3489 server. The value
// must have exactly the length of its family (pion tolerates short ones).
func reflexiveAddr(m *stun.Message) (netip.AddrPort, bool) {
	if v, err := m.Get(stun.AttrXORMappedAddress); err == nil {
		if !addrValueOK(v) {
			return netip.AddrPort{}, false
		}
		var a stun.XORMappedAddress
		if err := a.GetFrom(m); err != nil {
			return netip.AddrPort{}, false
		}
		return addrPort(a.IP, a.Port)
	}
	if v, err := m.Get(stun.AttrMappedAddress); err == nil {
		if !addrValueOK(v) {
			return netip.AddrPort{}, false
		}
		var a stun.MappedAddress
		if err := a.GetFrom(m); err != nil {
			return netip.AddrPort{}, false
		}
		return addrPort(a.IP, a.Port)
	}
	return netip.AddrPort{}, false
}

// addrValueOK checks a (XOR-)MAPPED-ADDRESS value (RFC 5389 §15.1): a zero
// byte, family 1 with 4 address bytes or family 2 with 16.
func addrValueOK(v []byte) bool {
	if len(v) < 4 || v[0] != 0 {
		return false
	}
	switch v[1] {
	case 1:
		return len(v) == 4+4
	case 2:
		return len(v) == 4+16
	}
	return false
}

func addrPort(ip []byte, port int) (netip.AddrPort, bool) {
	a, ok := netip.AddrFromSlice(ip)
	if !ok || port <= 0 || port > 0xFFFF || a.IsUnspecified() {
		return netip.AddrPort{}, false
	}
	return unmap(netip.AddrPortFrom(a, uint16(port))), true
}
