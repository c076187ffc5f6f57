package bridge

import (
	"encoding/binary"
	"net/netip"
	"testing"
)

// ndpFrame builds a minimal NDP frame: Ethernet, IPv6 from src with next
// header nh, and an ICMPv6 header of type typ.
func ndpFrame(src netip.Addr, nh, typ byte) []byte {
	f := make([]byte, 14+40+24)
	binary.BigEndian.PutUint16(f[12:], 0x86dd)
	f[14] = 0x60
	f[14+6] = nh
	s := src.As16()
	copy(f[14+8:], s[:])
	f[14+40] = typ
	return f
}

func arpFrame(sender netip.Addr) []byte {
	f := make([]byte, 14+28)
	binary.BigEndian.PutUint16(f[12:], 0x0806)
	s := sender.As4()
	copy(f[14+14:], s[:])
	return f
}

func TestVMAddr(t *testing.T) {
	g := netip.MustParseAddr("fd00::5")
	cases := []struct {
		name  string
		frame []byte
		want  netip.Addr
	}{
		{"arp", arpFrame(netip.MustParseAddr("10.0.0.5")), netip.MustParseAddr("10.0.0.5")},
		{"arp unspecified", arpFrame(netip.IPv4Unspecified()), netip.Addr{}},
		{"arp short", arpFrame(netip.MustParseAddr("10.0.0.5"))[:30], netip.Addr{}},
		{"neighbour solicitation", ndpFrame(g, 58, 135), g},
		{"neighbour advertisement", ndpFrame(g, 58, 136), g},
		{"router solicitation", ndpFrame(g, 58, 133), netip.Addr{}},
		{"echo request", ndpFrame(g, 58, 128), netip.Addr{}},
		{"not icmpv6", ndpFrame(g, 6, 135), netip.Addr{}},
		{"duplicate address detection", ndpFrame(netip.IPv6Unspecified(), 58, 135), netip.Addr{}},
		{"link-local", ndpFrame(netip.MustParseAddr("fe80::1"), 58, 135), netip.Addr{}},
		{"v4-mapped", ndpFrame(netip.MustParseAddr("::ffff:10.0.0.1"), 58, 135), netip.Addr{}},
		{"short ndp", ndpFrame(g, 58, 135)[:14+40+2], netip.Addr{}},
	}
	for _, c := range cases {
		got, ok := vmAddr(c.frame)
		if ok != c.want.IsValid() || (ok && got != c.want) {
			t.Errorf("%s: vmAddr = %v %v, want %v", c.name, got, ok, c.want)
		}
	}
}

func FuzzVMAddr(f *testing.F) {
	f.Add(arpFrame(netip.MustParseAddr("10.0.0.5")))
	f.Add(ndpFrame(netip.MustParseAddr("fd00::5"), 58, 135))
	f.Add(ndpFrame(netip.MustParseAddr("fe80::5"), 58, 136))
	f.Add(make([]byte, 14))
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) < 14 {
			return // the switch drops runts before vmAddr
		}
		if ip, ok := vmAddr(b); ok && (!ip.IsValid() || ip.IsUnspecified()) {
			t.Fatalf("vmAddr reported %v", ip)
		}
	})
}
