package nat_test

import (
	"net/netip"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/pion/stun/v3"
	"go.uber.org/goleak"

	"vnet/nat"
)

// Shrunk probe timing for tests: 4 sends 20 ms apart, then 60 ms for late
// answers, about 120 ms for a probe nobody answers.
const (
	testInterval = 20 * time.Millisecond
	testFinal    = 60 * time.Millisecond
	testAttempts = 4
)

func TestMain(m *testing.M) {
	interval, final, attempts := nat.Timing()
	if interval != 200*time.Millisecond || final != 400*time.Millisecond || attempts != 4 {
		println("nat: default probe timing changed; update the doc comments")
		os.Exit(1)
	}
	nat.SetTiming(testInterval, testFinal, testAttempts)
	goleak.VerifyTestMain(m)
}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

func aps(ss ...string) []netip.AddrPort {
	var out []netip.AddrPort
	for _, s := range ss {
		out = append(out, ap(s))
	}
	return out
}

func mustBuild(t testing.TB, setters ...stun.Setter) []byte {
	t.Helper()
	m, err := stun.Build(setters...)
	if err != nil {
		t.Fatal(err)
	}
	return m.Raw
}

func TestIsSTUN(t *testing.T) {
	req := mustBuild(t, stun.TransactionID, stun.BindingRequest, stun.Fingerprint)
	bare := mustBuild(t, stun.TransactionID, stun.BindingRequest)
	mod := func(b []byte, f func([]byte)) []byte {
		b = slices.Clone(b)
		f(b)
		return b
	}
	for _, tc := range []struct {
		name string
		b    []byte
		want bool
	}{
		{"request with fingerprint", req, true},
		{"bare header", bare, true},
		{"nil", nil, false},
		{"short header", bare[:19], false},
		{"first bit set", mod(req, func(b []byte) { b[0] |= 0x80 }), false},
		{"second bit set", mod(req, func(b []byte) { b[0] |= 0x40 }), false},
		{"bad cookie", mod(req, func(b []byte) { b[4] ^= 1 }), false},
		{"length not multiple of 4", mod(bare, func(b []byte) { b[3] = 2 }), false},
		{"length beyond datagram", mod(bare, func(b []byte) { b[3] = 4 }), false},
		{"trailing bytes", append(slices.Clone(req), 0, 0, 0, 0), false},
		{"truncated", req[:len(req)-4], false},
		{"tunnel-looking frame", []byte{1, 0, 0, 14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, false},
	} {
		if got := nat.IsSTUN(tc.b); got != tc.want {
			t.Errorf("%s: IsSTUN = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestClassify(t *testing.T) {
	s1, s2, s3 := ap("198.51.100.1:3478"), ap("198.51.100.1:3479"), ap("198.51.100.2:3478")
	v6a, v6b := ap("[2001:db8::1]:3478"), ap("[2001:db8::1]:3479")
	pub, pub2 := ap("203.0.113.7:40000"), ap("203.0.113.7:40001")
	pub6, pub6b := ap("[2001:db8:1::7]:5000"), ap("[2001:db8:1::7]:5001")
	lan := ap("192.168.1.10:5000")
	for _, tc := range []struct {
		name  string
		per   map[netip.AddrPort]netip.AddrPort
		local []netip.AddrPort
		want  nat.Mapping
	}{
		{"nothing", nil, nil, nat.MappingUnknown},
		{"one translated", map[netip.AddrPort]netip.AddrPort{s1: pub}, nil, nat.MappingUnknown},
		{"one translated with other locals", map[netip.AddrPort]netip.AddrPort{s1: pub}, []netip.AddrPort{lan}, nat.MappingUnknown},
		{"one local", map[netip.AddrPort]netip.AddrPort{s1: lan}, []netip.AddrPort{lan}, nat.MappingNone},
		{"one local, mapped form", map[netip.AddrPort]netip.AddrPort{s1: ap("[::ffff:192.168.1.10]:5000")}, []netip.AddrPort{lan}, nat.MappingNone},
		{"local IP, other port", map[netip.AddrPort]netip.AddrPort{s1: ap("192.168.1.10:5001")}, []netip.AddrPort{lan}, nat.MappingUnknown},
		{"two local", map[netip.AddrPort]netip.AddrPort{s1: lan, s2: lan}, []netip.AddrPort{lan}, nat.MappingNone},
		{"same twice", map[netip.AddrPort]netip.AddrPort{s1: pub, s2: pub}, []netip.AddrPort{lan}, nat.MappingEndpointIndependent},
		{"same thrice", map[netip.AddrPort]netip.AddrPort{s1: pub, s2: pub, s3: pub}, nil, nat.MappingEndpointIndependent},
		{"ports differ", map[netip.AddrPort]netip.AddrPort{s1: pub, s2: pub2}, nil, nat.MappingEndpointDependent},
		{"IPs differ", map[netip.AddrPort]netip.AddrPort{s1: pub, s3: ap("203.0.113.8:40000")}, nil, nat.MappingEndpointDependent},
		{"one of three differs", map[netip.AddrPort]netip.AddrPort{s1: pub, s2: pub, s3: pub2}, nil, nat.MappingEndpointDependent},
		{"mapped and plain forms agree", map[netip.AddrPort]netip.AddrPort{s1: pub, s2: ap("[::ffff:203.0.113.7]:40000")}, nil, nat.MappingEndpointIndependent},
		{"one v4 one v6", map[netip.AddrPort]netip.AddrPort{s1: pub, v6a: pub6}, nil, nat.MappingUnknown},
		{"v6 pair same, v4 single", map[netip.AddrPort]netip.AddrPort{s1: pub, v6a: pub6, v6b: pub6}, nil, nat.MappingEndpointIndependent},
		{"v6 pair differs", map[netip.AddrPort]netip.AddrPort{s1: pub, v6a: pub6, v6b: pub6b}, nil, nat.MappingEndpointDependent},
		{"v4 pair differs, v6 pair same", map[netip.AddrPort]netip.AddrPort{s1: pub, s2: pub2, v6a: pub6, v6b: pub6}, nil, nat.MappingEndpointDependent},
		{"v6 no NAT, v4 single translated", map[netip.AddrPort]netip.AddrPort{s1: pub, v6a: pub6}, []netip.AddrPort{pub6}, nat.MappingUnknown},
		{"LAN server local, internet server translated", map[netip.AddrPort]netip.AddrPort{s1: lan, s3: pub}, []netip.AddrPort{lan}, nat.MappingUnknown},
		{"local plus translated pair", map[netip.AddrPort]netip.AddrPort{s1: lan, s2: pub, s3: pub}, []netip.AddrPort{lan}, nat.MappingEndpointIndependent},
		{"invalid entries skipped", map[netip.AddrPort]netip.AddrPort{s1: {}, {}: pub}, nil, nat.MappingUnknown},
	} {
		if got := nat.Classify(tc.per, tc.local); got != tc.want {
			t.Errorf("%s: Classify = %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestCandidates(t *testing.T) {
	for _, tc := range []struct {
		name             string
		reflexive, local []netip.AddrPort
		want             []netip.AddrPort
	}{
		{"empty", nil, nil, []netip.AddrPort{}},
		{"reflexive first", aps("203.0.113.7:40000"), aps("192.168.1.10:5000"), aps("203.0.113.7:40000", "192.168.1.10:5000")},
		{"no NAT: duplicate dropped", aps("198.51.100.9:5000"), aps("198.51.100.9:5000", "10.0.0.9:5000"), aps("198.51.100.9:5000", "10.0.0.9:5000")},
		{"both families kept, order kept",
			aps("203.0.113.7:40000", "[2001:db8::7]:5000"),
			aps("[fd00::7]:5000", "192.168.1.10:5000"),
			aps("203.0.113.7:40000", "[2001:db8::7]:5000", "[fd00::7]:5000", "192.168.1.10:5000")},
		{"mapped form is IPv4", aps("[::ffff:203.0.113.7]:40000"), aps("203.0.113.7:40000"), aps("203.0.113.7:40000")},
		{"unusable dropped", []netip.AddrPort{{}, ap("0.0.0.0:5000"), ap("[::]:5000"), ap("203.0.113.7:0")}, aps("192.168.1.10:5000"), aps("192.168.1.10:5000")},
		{"duplicates within a list", aps("203.0.113.7:40000", "203.0.113.7:40000", "203.0.113.7:40001"), nil, aps("203.0.113.7:40000", "203.0.113.7:40001")},
	} {
		in := slices.Clone(tc.reflexive)
		got := nat.Candidates(tc.reflexive, tc.local)
		if !slices.Equal(got, tc.want) || got == nil {
			t.Errorf("%s: Candidates = %v, want %v", tc.name, got, tc.want)
		}
		if !slices.Equal(in, tc.reflexive) {
			t.Errorf("%s: input modified", tc.name)
		}
	}
}
