package nat_test

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/pion/stun/v3"

	"vnet/nat"
)

// fuzzSeeds are valid encodings and near misses, for both fuzz targets
// (the checked-in corpus under testdata/fuzz holds more).
func fuzzSeeds(f *testing.F) [][]byte {
	pub4 := &stun.XORMappedAddress{IP: net.IPv4(203, 0, 113, 7), Port: 40000}
	pub6 := &stun.XORMappedAddress{IP: net.ParseIP("2001:db8:1::7"), Port: 5000}
	return [][]byte{
		mustBuild(f, stun.TransactionID, stun.BindingRequest, stun.Fingerprint),
		mustBuild(f, stun.TransactionID, stun.BindingRequest, stun.NewSoftware("tailnode"), stun.Fingerprint),
		mustBuild(f, stun.TransactionID, stun.BindingRequest),
		mustBuild(f, stun.TransactionID, stun.BindingRequest, stun.NewUsername("u")),
		mustBuild(f, stun.TransactionID, stun.BindingSuccess, pub4, &stun.MappedAddress{IP: pub4.IP, Port: pub4.Port}, stun.NewSoftware("vnet"), stun.Fingerprint),
		mustBuild(f, stun.TransactionID, stun.BindingSuccess, pub6, stun.Fingerprint),
		mustBuild(f, stun.TransactionID, stun.BindingSuccess, &stun.MappedAddress{IP: pub4.IP, Port: pub4.Port}),
		mustBuild(f, stun.TransactionID, stun.BindingError, stun.CodeBadRequest, stun.Fingerprint),
		mustBuild(f, stun.TransactionID, stun.BindingSuccess, stun.RawAttribute{Type: stun.AttrXORMappedAddress, Value: []byte{0, 2, 0, 1, 2, 3}}),
		{0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42},
		[]byte("hello, world"),
	}
}

// FuzzServerHandle: arbitrary bytes never panic the server; whatever it
// answers is a Binding success response to that request reporting from,
// no more than MaxResponseGrowth bytes longer; every input is counted once.
func FuzzServerHandle(f *testing.F) {
	for _, b := range fuzzSeeds(f) {
		f.Add(b, false)
		f.Add(b, true)
	}
	f.Fuzz(func(t *testing.T, b []byte, v6 bool) {
		from := ap("203.0.113.7:40000")
		if v6 {
			from = ap("[2001:db8:1::7]:5000")
		}
		orig := string(b)
		var srv nat.Server
		resp, ok := srv.Handle(b, from)
		if string(b) != orig {
			t.Fatal("request modified")
		}
		st := srv.Stats()
		if st["requests"]+st["malformed"]+st["ignored"] != 1 {
			t.Fatalf("stats %v after one input", st)
		}
		if !ok {
			if resp != nil || st["requests"] != 0 {
				t.Fatalf("ok=false with response %x, stats %v", resp, st)
			}
			return
		}
		if !nat.IsSTUN(b) {
			t.Fatalf("answered non-STUN %x", b)
		}
		checkResponse(t, b, resp, from)
	})
}

// FuzzClientHandle: with a probe pending, arbitrary bytes (carrying the
// pending transaction's ID when long enough) never panic the client; Handle
// takes only STUN Binding responses with that ID; and when the probe
// reports an address, the input held exactly that address.
func FuzzClientHandle(f *testing.F) {
	for _, b := range fuzzSeeds(f) {
		f.Add(b)
	}
	server := ap("198.51.100.1:3478")
	f.Fuzz(func(t *testing.T, b []byte) {
		sent := make(chan []byte, 1)
		handled := make(chan struct{})
		c := nat.NewClient(func(req []byte, _ netip.AddrPort) error {
			select {
			case sent <- req:
			default:
				<-handled // hold the probe pending until Handle has run
			}
			return nil
		})
		ctx, cancel := context.WithCancel(context.Background())
		type probed struct {
			res nat.Result
			err error
		}
		done := make(chan probed, 1)
		go func() {
			res, err := c.Probe(ctx, []netip.AddrPort{server})
			done <- probed{res, err}
		}()
		req := <-sent
		in := append([]byte(nil), b...)
		if len(in) >= 20 {
			copy(in[8:20], req[8:20])
		}
		took := c.Handle(in, server)
		close(handled)
		cancel()
		p := <-done

		if took {
			// Ours by the header: even a response whose attributes do not
			// parse is consumed (and counted), not passed on.
			var typ stun.MessageType
			typ.ReadValue(uint16(in[0])<<8 | uint16(in[1]))
			if !nat.IsSTUN(in) || typ.Method != stun.MethodBinding ||
				(typ.Class != stun.ClassSuccessResponse && typ.Class != stun.ClassErrorResponse) {
				t.Fatalf("took %x, not a Binding response", in)
			}
		}
		got, answered := p.res.PerServer[server]
		if (p.err == nil) != answered {
			t.Fatalf("probe: %+v, %v", p.res, p.err)
		}
		if !answered {
			return
		}
		var m stun.Message
		if err := stun.Decode(in, &m); err != nil || !took || m.Type != stun.BindingSuccess {
			t.Fatalf("probe got %v from %x, which Handle did not take as a success", got, in)
		}
		var xa stun.XORMappedAddress
		var ma stun.MappedAddress
		var want netip.AddrPort
		if m.Contains(stun.AttrXORMappedAddress) {
			if err := xa.GetFrom(&m); err != nil {
				t.Fatalf("took unparsable XOR-MAPPED-ADDRESS: %v", err)
			}
			ip, _ := netip.AddrFromSlice(xa.IP)
			want = netip.AddrPortFrom(ip.Unmap(), uint16(xa.Port))
		} else {
			if err := ma.GetFrom(&m); err != nil {
				t.Fatalf("took unparsable MAPPED-ADDRESS: %v", err)
			}
			ip, _ := netip.AddrFromSlice(ma.IP)
			want = netip.AddrPortFrom(ip.Unmap(), uint16(ma.Port))
		}
		if got != want || !got.IsValid() || got.Port() == 0 {
			t.Fatalf("probe reported %v, message holds %v", got, want)
		}
		if p.res.Mapping != nat.MappingUnknown {
			t.Fatalf("mapping %q from one answer", p.res.Mapping)
		}
	})
}

// FuzzLocalCandidates: whatever candidates, public IPs and prefixes a host
// is handed (space-separated, as a proxy or a peer might report them), the
// choice of local candidates never panics, picks only from the peer's
// candidates, once each, never one of the peer's NAT mappings, gives a
// reason exactly when it picks some, and PathOf calls every pick local.
func FuzzLocalCandidates(f *testing.F) {
	f.Add("203.0.113.50:4000 10.50.0.3:4000 [fd00::3]:4000", "203.0.113.50", "203.0.113.50", "10.50.0.2/24", false)
	f.Add("[::ffff:10.0.0.1]:1 10.0.0.1:1 127.0.0.1:2 [fe80::1%eth0]:3", "", "", "0.0.0.0/0 127.0.0.1/8", true)
	f.Add("100.64.0.1:9 192.168.1.2:0 0.0.0.0:1", "198.51.100.1", "198.51.100.2", "::/0", true)
	f.Add("", "", "", "", false)
	f.Fuzz(func(t *testing.T, peerS, selfPubS, peerPubS, onLinkS string, same bool) {
		var peer []netip.AddrPort
		for _, s := range strings.Fields(peerS) {
			if a, err := netip.ParseAddrPort(s); err == nil {
				peer = append(peer, a)
			}
		}
		parseIPs := func(s string) []netip.Addr {
			var out []netip.Addr
			for _, f := range strings.Fields(s) {
				if a, err := netip.ParseAddr(f); err == nil {
					out = append(out, a)
				}
			}
			return out
		}
		var onLink []netip.Prefix
		for _, s := range strings.Fields(onLinkS) {
			if p, err := netip.ParsePrefix(s); err == nil {
				onLink = append(onLink, p)
			}
		}
		h := nat.LocalHint{SelfPublic: parseIPs(selfPubS), PeerPublic: parseIPs(peerPubS), SamePublic: same, OnLink: onLink}
		got, why := nat.LocalCandidates(peer, h)
		if (len(got) == 0) != (why == "") {
			t.Fatalf("picked %v with reason %q", got, why)
		}
		norm := func(a netip.AddrPort) netip.AddrPort {
			return netip.AddrPortFrom(a.Addr().Unmap().WithZone(""), a.Port())
		}
		seen := map[netip.AddrPort]bool{}
		for _, g := range got {
			if seen[g] {
				t.Fatalf("%v picked twice: %v", g, got)
			}
			seen[g] = true
			if !slices.ContainsFunc(peer, func(p netip.AddrPort) bool { return norm(p) == g }) {
				t.Fatalf("picked %v, not one of the candidates %v", g, peer)
			}
			if slices.ContainsFunc(h.PeerPublic, func(a netip.Addr) bool { return a.Unmap().WithZone("") == g.Addr() }) {
				t.Fatalf("picked the peer's NAT mapping %v", g)
			}
			if g.Port() == 0 || g.Addr().IsUnspecified() || g.Addr().IsLinkLocalUnicast() {
				t.Fatalf("picked %v, which cannot be sent to", g)
			}
			if p := nat.PathOf(g, got, nil); p != nat.PathLocal {
				t.Fatalf("PathOf(%v) = %q among the picks", g, p)
			}
		}
	})
}
