package nat

import (
	"net/netip"
	"sync/atomic"

	"github.com/pion/stun/v3"
)

// MaxResponseGrowth bounds how many bytes a Server's response may exceed
// the request it answers by: the smallest request is a bare 20-byte header,
// the largest response (IPv6) is 20 + XOR-MAPPED-ADDRESS 24 + MAPPED-ADDRESS
// 24 + SOFTWARE 8 + FINGERPRINT 8 = 84 bytes.
const MaxResponseGrowth = 64

// Server answers STUN Binding requests (RFC 5389 §7.3.1) with the address
// they came from. The proxy runs one on its UDP port and one on a second
// port, so hosts need no outside STUN server.
//
// The zero value is ready to use. Handle keeps no state per request (a flood
// costs CPU, no memory) and is safe for concurrent use; a Server opens no
// socket: the caller's reader passes datagrams in and sends the response.
type Server struct {
	requests  atomic.Uint64 // Binding requests answered
	malformed atomic.Uint64 // not a well-formed STUN message
	ignored   atomic.Uint64 // well-formed, but not a request we answer
}

// Handle returns the response to a Binding request received from `from`:
// a Binding success response with the request's transaction ID,
// XOR-MAPPED-ADDRESS and (for RFC 3489 clients) MAPPED-ADDRESS set to from,
// SOFTWARE "vnet" and FINGERPRINT. The response is a new slice owned by the
// caller, at most MaxResponseGrowth bytes longer than b; b is not retained
// or modified.
//
// Everything else gives ok=false and is counted, never a panic:
//   - "malformed": not [IsSTUN], attributes that do not parse, or a
//     FINGERPRINT that is wrong or not last;
//   - "ignored": responses, indications, other methods, requests with a
//     comprehension-required attribute (type < 0x8000: RFC 5389 would have
//     us answer 420; staying silent is safe and cheaper), or an invalid from.
func (s *Server) Handle(b []byte, from netip.AddrPort) (resp []byte, ok bool) {
	if !IsSTUN(b) {
		s.malformed.Add(1)
		return nil, false
	}
	var req stun.Message
	req.Raw = b // Decode only reads Raw; attribute values alias b until we return.
	if err := req.Decode(); err != nil || !fingerprintOK(&req) {
		s.malformed.Add(1)
		return nil, false
	}
	if req.Type != stun.BindingRequest || !from.IsValid() || from.Port() == 0 {
		s.ignored.Add(1)
		return nil, false
	}
	for _, a := range req.Attributes {
		if a.Type.Required() {
			s.ignored.Add(1)
			return nil, false
		}
	}
	from = unmap(from)
	ip := from.Addr().AsSlice()
	port := int(from.Port())
	res, err := stun.Build(
		stun.BindingSuccess,
		stun.NewTransactionIDSetter(req.TransactionID),
		&stun.XORMappedAddress{IP: ip, Port: port},
		&stun.MappedAddress{IP: ip, Port: port},
		stun.NewSoftware(Software),
		stun.Fingerprint,
	)
	if err != nil { // cannot happen: ip has 4 or 16 bytes
		s.ignored.Add(1)
		return nil, false
	}
	s.requests.Add(1)
	return res.Raw, true
}

// Stats returns the counters: "requests" (Binding requests answered),
// "malformed" and "ignored" (see Handle).
func (s *Server) Stats() map[string]uint64 {
	return map[string]uint64{
		"requests":  s.requests.Load(),
		"malformed": s.malformed.Load(),
		"ignored":   s.ignored.Load(),
	}
}

// fingerprintOK reports whether m has no FINGERPRINT, or exactly one, last,
// with the right CRC (RFC 5389 §15.5). m.Raw must be exactly the message,
// which IsSTUN ensures.
func fingerprintOK(m *stun.Message) bool {
	for i, a := range m.Attributes {
		if a.Type == stun.AttrFingerprint && i != len(m.Attributes)-1 {
			return false
		}
	}
	if n := len(m.Attributes); n == 0 || m.Attributes[n-1].Type != stun.AttrFingerprint {
		return true
	}
	return stun.Fingerprint.Check(m) == nil
}
