package appliance

import (
	"net/netip"
	"slices"
	"testing"

	"vnet/topo"
	"vnet/tunnel"
)

// TestFastLinkConfigLocal: the proxy tells both ends of a fast link
// whether it sees them at one address (same_public), and lists as the
// peer's NAT mappings only reflexive addresses that are not its own.
func TestFastLinkConfigLocal(t *testing.T) {
	key, _ := tunnel.GenerateKey()
	p, err := NewProxy(ProxyConfig{Listen: []tunnel.Endpoint{{Kind: "tcp", Addr: "127.0.0.1:0"}}, Key: key})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	nat := netip.MustParseAddr("203.0.113.50")
	p.mu.Lock()
	p.mu.hosts["ha"] = &hostRec{name: "ha", addr: nat, status: hostStatus{NAT: "endpoint-independent",
		UDP: []string{"10.50.0.2:4000"}, Reflexive: []string{"203.0.113.50:4000"}}}
	p.mu.hosts["hb"] = &hostRec{name: "hb", addr: nat, status: hostStatus{NAT: "endpoint-independent",
		UDP: []string{"10.50.0.3:4001"}, Reflexive: []string{"203.0.113.50:4001"}}}
	// hc has no NAT: STUN saw its own address.
	p.mu.hosts["hc"] = &hostRec{name: "hc", addr: netip.MustParseAddr("198.51.100.7"), status: hostStatus{NAT: "none",
		UDP: []string{"198.51.100.7:5000"}, Reflexive: []string{"198.51.100.7:5000"}}}
	p.mu.links["ha-hb"] = topo.Link{A: "ha", B: "hb"}
	p.mu.links["ha-hc"] = topo.Link{A: "ha", B: "hc"}
	ca, cb := p.configLocked("ha"), p.configLocked("hb")
	p.mu.Unlock()
	find := func(c hostConfig, name string) fastLink {
		for _, fl := range c.Links {
			if fl.Name == name {
				return fl
			}
		}
		t.Fatalf("no link %s in %+v", name, c.Links)
		return fastLink{}
	}
	ab, ba, ac := find(ca, "ha-hb"), find(cb, "ha-hb"), find(ca, "ha-hc")
	if !ab.SamePublic || !ba.SamePublic || ac.SamePublic {
		t.Errorf("same_public: ha-hb %v at ha, %v at hb; ha-hc %v; want true, true, false", ab.SamePublic, ba.SamePublic,
			ac.SamePublic)
	}
	if want := []string{"203.0.113.50:4001", "10.50.0.3:4001"}; !slices.Equal(ab.UDPAddrs, want) {
		t.Errorf("ha's candidates for hb: %v, want %v", ab.UDPAddrs, want)
	}
	if !slices.Equal(ab.Reflexive, []string{"203.0.113.50:4001"}) || !slices.Equal(ba.Reflexive, []string{"203.0.113.50:4000"}) {
		t.Errorf("mappings: hb's %v (to ha), ha's %v (to hb, with punch %v)", ab.Reflexive, ba.Reflexive, ba.Punch)
	}
	if len(ac.Reflexive) != 0 || !slices.Equal(ac.UDPAddrs, []string{"198.51.100.7:5000"}) {
		t.Errorf("hc (no NAT): candidates %v, mappings %v; want its address, no mapping", ac.UDPAddrs, ac.Reflexive)
	}
}
