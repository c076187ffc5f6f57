package nat_test

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"testing"

	"github.com/pion/stun/v3"

	"vnet/nat"
)

// checkResponse decodes resp independently of the server and checks it is
// the Binding success response to req reporting want.
func checkResponse(t testing.TB, req, resp []byte, want netip.AddrPort) {
	t.Helper()
	if !nat.IsSTUN(resp) {
		t.Fatalf("response is not STUN: %x", resp)
	}
	if len(resp) > len(req)+nat.MaxResponseGrowth {
		t.Fatalf("response %d bytes for a %d-byte request (amplification)", len(resp), len(req))
	}
	m := new(stun.Message)
	if err := stun.Decode(resp, m); err != nil {
		t.Fatalf("decode response: %v", err)
	}
	if m.Type != stun.BindingSuccess {
		t.Fatalf("response type %v", m.Type)
	}
	if !slices.Equal(m.TransactionID[:], req[8:20]) {
		t.Fatalf("transaction ID %x, want %x", m.TransactionID, req[8:20])
	}
	if err := stun.Fingerprint.Check(m); err != nil {
		t.Fatalf("fingerprint: %v", err)
	}
	var xa stun.XORMappedAddress
	if err := xa.GetFrom(m); err != nil {
		t.Fatalf("XOR-MAPPED-ADDRESS: %v", err)
	}
	var ma stun.MappedAddress
	if err := ma.GetFrom(m); err != nil {
		t.Fatalf("MAPPED-ADDRESS: %v", err)
	}
	wantIP := net.IP(want.Addr().Unmap().AsSlice())
	if !xa.IP.Equal(wantIP) || xa.Port != int(want.Port()) {
		t.Fatalf("XOR-MAPPED-ADDRESS %v, want %v", xa, want)
	}
	if len(xa.IP) != len(wantIP) {
		t.Fatalf("XOR-MAPPED-ADDRESS family: %d-byte IP for %v", len(xa.IP), want)
	}
	if !ma.IP.Equal(wantIP) || ma.Port != int(want.Port()) {
		t.Fatalf("MAPPED-ADDRESS %v, want %v", ma, want)
	}
	var sw stun.Software
	if err := sw.GetFrom(m); err != nil || sw.String() != "vnet" {
		t.Fatalf("SOFTWARE %q (%v)", sw, err)
	}
}

// TestServerAnswersClient runs the client's codec against the server: the
// request Probe builds is answered with the address it came from, IPv4 and
// IPv6, and the client reads that address back.
func TestServerAnswersClient(t *testing.T) {
	for _, from := range aps("203.0.113.7:40000", "[2001:db8:1::7]:5000", "[::ffff:203.0.113.8]:40001", "192.168.1.10:65535") {
		t.Run(from.String(), func(t *testing.T) {
			var srv nat.Server
			server := ap("198.51.100.1:3478")
			var c *nat.Client
			var req, resp []byte
			c = nat.NewClient(func(b []byte, to netip.AddrPort) error {
				if to != server {
					t.Errorf("sent to %v", to)
				}
				req = slices.Clone(b)
				var ok bool
				if resp, ok = srv.Handle(b, from); !ok {
					t.Fatalf("server did not answer %x", b)
				}
				if !c.Handle(resp, server) {
					t.Errorf("client did not take the response")
				}
				return nil
			})
			res, err := c.Probe(context.Background(), []netip.AddrPort{server})
			if err != nil {
				t.Fatal(err)
			}
			checkResponse(t, req, resp, from)
			want := netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
			if res.PerServer[server] != want || !slices.Equal(res.Reflexive, []netip.AddrPort{want}) {
				t.Fatalf("result %+v, want %v", res, want)
			}
			if res.Mapping != nat.MappingUnknown {
				t.Fatalf("mapping %q with one translated answer", res.Mapping)
			}
			if st := srv.Stats(); st["requests"] != 1 || st["malformed"] != 0 || st["ignored"] != 0 {
				t.Fatalf("server stats %v", st)
			}
			if st := c.Stats(); st["requests"] != 1 || st["responses"] != 1 || st["retransmits"] != 0 {
				t.Fatalf("client stats %v", st)
			}
		})
	}
}

// TestServerForeignClient answers a request as other STUN clients build it
// (SOFTWARE, no FINGERPRINT) and a bare RFC 3489-style header.
func TestServerForeignClient(t *testing.T) {
	var srv nat.Server
	from := ap("203.0.113.7:40000")
	for _, req := range [][]byte{
		mustBuild(t, stun.TransactionID, stun.BindingRequest, stun.NewSoftware("tailnode"), stun.Fingerprint),
		mustBuild(t, stun.TransactionID, stun.BindingRequest, stun.NewSoftware("x")),
		mustBuild(t, stun.TransactionID, stun.BindingRequest),
	} {
		resp, ok := srv.Handle(req, from)
		if !ok {
			t.Fatalf("no answer to %x", req)
		}
		checkResponse(t, req, resp, from)
	}
	if got := srv.Stats()["requests"]; got != 3 {
		t.Fatalf("requests = %d", got)
	}
}

func TestServerRejects(t *testing.T) {
	from := ap("203.0.113.7:40000")
	req := mustBuild(t, stun.TransactionID, stun.BindingRequest, stun.Fingerprint)
	mod := func(b []byte, f func([]byte)) []byte {
		b = slices.Clone(b)
		f(b)
		return b
	}
	badAttr := mustBuild(t, stun.TransactionID, stun.BindingRequest)
	badAttr = append(badAttr, 0x80, 0x22, 0, 9, 'x', 0, 0, 0) // SOFTWARE claims 9 bytes, has 4
	badAttr[3] = 8
	fpFirst := mustBuild(t, stun.TransactionID, stun.BindingRequest, stun.Fingerprint, stun.NewSoftware("late"))
	success := mustBuild(t, stun.TransactionID, stun.BindingSuccess, &stun.XORMappedAddress{IP: net.IPv4(1, 2, 3, 4), Port: 5}, stun.Fingerprint)
	for _, tc := range []struct {
		name string
		b    []byte
		from netip.AddrPort
		stat string
	}{
		{"empty", nil, from, "malformed"},
		{"garbage", []byte("GET / HTTP/1.1\r\n\r\n  "), from, "malformed"},
		{"truncated", req[:len(req)-1], from, "malformed"},
		{"bad cookie", mod(req, func(b []byte) { b[5] ^= 0xff }), from, "malformed"},
		{"attribute overruns message", badAttr, from, "malformed"},
		{"wrong fingerprint", mod(req, func(b []byte) { b[len(b)-1] ^= 1 }), from, "malformed"},
		{"fingerprint not last", fpFirst, from, "malformed"},
		{"fingerprint covers other bytes", mod(req, func(b []byte) { b[10] ^= 1 }), from, "malformed"},
		{"success response", success, from, "ignored"},
		{"error response", mustBuild(t, stun.TransactionID, stun.BindingError, stun.CodeBadRequest), from, "ignored"},
		{"indication", mustBuild(t, stun.TransactionID, stun.NewType(stun.MethodBinding, stun.ClassIndication)), from, "ignored"},
		{"allocate request", mustBuild(t, stun.TransactionID, stun.NewType(stun.MethodAllocate, stun.ClassRequest)), from, "ignored"},
		{"comprehension-required attribute", mustBuild(t, stun.TransactionID, stun.BindingRequest, stun.NewUsername("u")), from, "ignored"},
		{"CHANGE-REQUEST", mustBuild(t, stun.TransactionID, stun.BindingRequest, stun.RawAttribute{Type: 0x0003, Value: []byte{0, 0, 0, 6}}), from, "ignored"},
		{"invalid from", req, netip.AddrPort{}, "ignored"},
		{"port 0", req, ap("203.0.113.7:0"), "ignored"},
	} {
		var srv nat.Server
		resp, ok := srv.Handle(tc.b, tc.from)
		if ok || resp != nil {
			t.Errorf("%s: answered %x", tc.name, resp)
		}
		st := srv.Stats()
		if st[tc.stat] != 1 || st["requests"] != 0 || st["malformed"]+st["ignored"] != 1 {
			t.Errorf("%s: stats %v, want %s=1", tc.name, st, tc.stat)
		}
	}
}

func TestServerConcurrent(t *testing.T) {
	var srv nat.Server
	req := mustBuild(t, stun.TransactionID, stun.BindingRequest, stun.Fingerprint)
	done := make(chan struct{})
	for g := range 4 {
		go func() {
			defer func() { done <- struct{}{} }()
			from := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(g)}), 1000)
			for range 200 {
				resp, ok := srv.Handle(req, from)
				if !ok {
					t.Error("no answer")
					return
				}
				if req[0] != 0 || req[1] != 1 {
					t.Error("request modified")
					return
				}
				checkResponse(t, req, resp, from)
			}
		}()
	}
	for range 4 {
		<-done
	}
	if got := srv.Stats()["requests"]; got != 800 {
		t.Fatalf("requests = %d", got)
	}
}

func BenchmarkServerHandle(b *testing.B) {
	var srv nat.Server
	req := mustBuild(b, stun.TransactionID, stun.BindingRequest, stun.Fingerprint)
	from := ap("203.0.113.7:40000")
	b.ReportAllocs()
	for b.Loop() {
		if _, ok := srv.Handle(req, from); !ok {
			b.Fatal("no answer")
		}
	}
}
