package ipfilter

import (
	"encoding/binary"
	"net/netip"
	"strings"
	"testing"
)

func TestParseCanonical(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"", ""},
		{"ip", "ip"},
		{"proto tcp port 22", "ip proto tcp port 22"},
		{"port 22 proto 6", "ip proto tcp port 22"},
		{"from 10.0.0.7/24 to 10.0.0.5 proto tcp port 22", "ip4 proto tcp from 10.0.0.0/24 to 10.0.0.5 port 22"},
		{"ip4 to 10.0.0.5/32", "ip4 to 10.0.0.5"},
		{"proto icmp", "ip4 proto icmp"},
		{"proto 58", "ip6 proto icmpv6"},
		{"ip6 proto udp port 5000-5010", "ip6 proto udp port 5000-5010"},
		{"from fd77::1/64", "ip6 from fd77::/64"},
		{"to fd77::2 proto 47", "ip6 proto 47 to fd77::2"},
		{"proto udp port 53-53", "ip proto udp port 53"},
	} {
		f, err := Parse(c.in)
		if err != nil {
			t.Errorf("Parse(%q): %v", c.in, err)
			continue
		}
		if got := f.String(); got != c.want {
			t.Errorf("Parse(%q).String() = %q, want %q", c.in, got, c.want)
		}
		g, err := Parse(f.String())
		if err != nil || g != f {
			t.Errorf("Parse(%q) again = %+v, %v; want %+v", f.String(), g, err, f)
		}
	}
}

func TestParseErrors(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"port 22", "needs `proto tcp`"},
		{"proto icmp port 1", "needs `proto tcp`"},
		{"proto", "expected a value after `proto`"},
		{"proto tcpx", "expected a protocol"},
		{"proto 256", "expected a protocol"},
		{"from 10.0.0.1 to fd77::1", "write two rules"},
		{"ip6 from 10.0.0.1", "contradicts ip6"},
		{"ip4 proto icmpv6", "contradicts ip4"},
		{"ip ip4", "at most one of ip"},
		{"proto tcp proto udp", "given twice"},
		{"from 10.0.0.300", "expected an address"},
		{"from fe80::1%eth0", "expected an address"},
		{"from ::ffff:10.0.0.1", "IPv4-mapped"},
		{"proto tcp port 70000", "expected a port"},
		{"proto tcp port 30-20", "expected a port"},
		{"proto tcp port -5", "expected a port"},
		{"deny", "unknown word"},
	} {
		_, err := Parse(c.in)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Parse(%q) = %v, want an error with %q", c.in, err, c.want)
		}
	}
}

// frame4 builds an untagged IPv4 frame with ihl words of header.
func frame4(proto byte, src, dst string, ihl int, fragOff uint16, dport uint16, vlan bool) []byte {
	d := make([]byte, 14, 100)
	if vlan {
		d = append(d[:12], 0x81, 0x00, 0, 5, 0, 0)
	}
	binary.BigEndian.PutUint16(d[len(d)-2:], etherIPv4)
	ip := make([]byte, ihl*4)
	ip[0] = 0x40 | byte(ihl)
	ip[9] = proto
	binary.BigEndian.PutUint16(ip[6:], fragOff)
	copy(ip[12:], netip.MustParseAddr(src).AsSlice())
	copy(ip[16:], netip.MustParseAddr(dst).AsSlice())
	l4 := make([]byte, 20)
	binary.BigEndian.PutUint16(l4[0:], 40000)
	binary.BigEndian.PutUint16(l4[2:], dport)
	return append(append(d, ip...), l4...)
}

// frame6 builds an IPv6 frame whose extension headers are exts (next
// header numbers), each 8 bytes, then proto.
func frame6(proto byte, src, dst string, exts []byte, fragOff uint16, dport uint16) []byte {
	d := make([]byte, 14, 200)
	binary.BigEndian.PutUint16(d[12:], etherIPv6)
	ip := make([]byte, 40)
	ip[0] = 0x60
	copy(ip[8:], netip.MustParseAddr(src).AsSlice())
	copy(ip[24:], netip.MustParseAddr(dst).AsSlice())
	chain := append(append([]byte{}, exts...), proto)
	ip[6] = chain[0]
	d = append(d, ip...)
	for i := range exts {
		h := make([]byte, 8)
		h[0] = chain[i+1]
		if exts[i] == 44 {
			binary.BigEndian.PutUint16(h[2:], fragOff<<3)
		}
		if exts[i] == 51 {
			h[1] = 0 // (0+2)*4 = 8 bytes
		}
		d = append(d, h...)
	}
	l4 := make([]byte, 20)
	binary.BigEndian.PutUint16(l4[2:], dport)
	return append(d, l4...)
}

func TestClassifyAndMatch(t *testing.T) {
	arp := make([]byte, 60)
	binary.BigEndian.PutUint16(arp[12:], 0x0806)
	ssh := "proto tcp port 22"
	for _, c := range []struct {
		name   string
		frame  []byte
		filter string
		want   bool
	}{
		{"tcp22", frame4(6, "10.0.0.1", "10.0.0.5", 5, 0, 22, false), ssh, true},
		{"tcp80", frame4(6, "10.0.0.1", "10.0.0.5", 5, 0, 80, false), ssh, false},
		{"udp22", frame4(17, "10.0.0.1", "10.0.0.5", 5, 0, 22, false), ssh, false},
		{"options", frame4(6, "10.0.0.1", "10.0.0.5", 8, 0, 22, false), ssh, true},
		{"vlan", frame4(6, "10.0.0.1", "10.0.0.5", 5, 0, 22, true), ssh, true},
		{"first fragment", frame4(6, "10.0.0.1", "10.0.0.5", 5, 0x2000, 22, false), ssh, true},
		{"later fragment, port", frame4(6, "10.0.0.1", "10.0.0.5", 5, 0x0010, 22, false), ssh, false},
		{"later fragment, proto", frame4(6, "10.0.0.1", "10.0.0.5", 5, 0x0010, 22, false), "proto tcp", true},
		{"arp never", arp, "ip", false},
		{"arp no filter", arp, "", true},
		{"prefix in", frame4(1, "10.0.0.9", "10.0.0.5", 5, 0, 0, false), "from 10.0.0.0/24 to 10.0.0.5 proto icmp", true},
		{"prefix out", frame4(1, "10.0.1.9", "10.0.0.5", 5, 0, 0, false), "from 10.0.0.0/24", false},
		{"family", frame4(1, "10.0.0.9", "10.0.0.5", 5, 0, 0, false), "ip6", false},
		{"range", frame4(17, "10.0.0.1", "10.0.0.5", 5, 0, 5005, false), "proto udp port 5000-5010", true},
		{"v6 tcp", frame6(6, "fd77::1", "fd77::2", nil, 0, 22), ssh, true},
		{"v6 ext", frame6(6, "fd77::1", "fd77::2", []byte{0, 43, 60, 51}, 0, 22), "ip6 proto tcp port 22 to fd77::2", true},
		{"v6 frag first", frame6(6, "fd77::1", "fd77::2", []byte{44}, 0, 22), ssh, true},
		{"v6 frag later", frame6(6, "fd77::1", "fd77::2", []byte{44}, 3, 22), ssh, false},
		{"v6 frag later proto", frame6(6, "fd77::1", "fd77::2", []byte{44}, 3, 22), "proto tcp", true},
		{"v6 too many ext", frame6(6, "fd77::1", "fd77::2", []byte{60, 60, 60, 60, 60, 60, 60, 60, 60}, 0, 22), "proto tcp", false},
		{"v6 too many ext, address", frame6(6, "fd77::1", "fd77::2", []byte{60, 60, 60, 60, 60, 60, 60, 60, 60}, 0, 22), "from fd77::1", true},
		{"v6 icmp", frame6(58, "fd77::1", "fd77::2", nil, 0, 0), "proto icmpv6", true},
		{"short tcp", frame4(6, "10.0.0.1", "10.0.0.5", 5, 0, 22, false)[:14+20+3], ssh, false},
	} {
		f, err := Parse(c.filter)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		var p Packet
		Classify(c.frame, &p)
		if got := f.Match(&p); got != c.want {
			t.Errorf("%s: %q matches %+v = %v, want %v", c.name, c.filter, p, got, c.want)
		}
	}
}

func TestClassifyNoAlloc(t *testing.T) {
	fr := frame6(6, "fd77::1", "fd77::2", []byte{0, 44}, 0, 22)
	f, _ := Parse("ip6 proto tcp from fd77::/64 port 22")
	var p Packet
	if n := testing.AllocsPerRun(100, func() {
		Classify(fr, &p)
		f.Match(&p)
	}); n != 0 {
		t.Errorf("%v allocations per frame", n)
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"", "ip", "proto tcp port 22", "ip4 from 10.0.0.0/24 to 10.0.0.5 proto tcp port 22",
		"ip6 proto udp port 1-65535 from fd77::/64", "proto icmpv6", "proto 47 to ::1", "port 22", "from 1.2.3.4 to ::1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		flt, err := Parse(s)
		if err != nil {
			return
		}
		g, err := Parse(flt.String())
		if err != nil {
			t.Fatalf("canonical %q of %q does not parse: %v", flt.String(), s, err)
		}
		if g != flt {
			t.Fatalf("%q: round trip %+v != %+v", s, g, flt)
		}
		_ = flt.Short()
	})
}

func FuzzClassify(f *testing.F) {
	f.Add(frame4(6, "10.0.0.1", "10.0.0.5", 5, 0, 22, false))
	f.Add(frame4(6, "10.0.0.1", "10.0.0.5", 15, 0, 22, true))
	f.Add(frame6(6, "fd77::1", "fd77::2", []byte{0, 43, 44, 51, 60}, 0, 22))
	f.Add(frame6(17, "fd77::1", "fd77::2", []byte{44}, 7, 53))
	f.Add([]byte{})
	filters := []Filter{}
	for _, s := range []string{"ip", "proto tcp port 22", "ip6 from fd77::/64", "ip4 to 10.0.0.5 proto udp port 1-100"} {
		flt, _ := Parse(s)
		filters = append(filters, flt)
	}
	f.Fuzz(func(t *testing.T, d []byte) {
		var p Packet
		ok := Classify(d, &p)
		if ok != (p.Fam != FamNone) {
			t.Fatalf("Classify = %v with family %d", ok, p.Fam)
		}
		if !ok && (p.HasProto || p.HasPort) {
			t.Fatalf("not IP but %+v", p)
		}
		if p.HasPort && p.Proto != ProtoTCP && p.Proto != ProtoUDP {
			t.Fatalf("a port for protocol %d", p.Proto)
		}
		for i := range filters {
			if filters[i].Match(&p) && !ok {
				t.Fatalf("filter %s matched a non-IP frame", filters[i].String())
			}
		}
	})
}
