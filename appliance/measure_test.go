package appliance

import (
	"testing"
	"time"

	"vnet/adapt"
)

func TestMergeEnds(t *testing.T) {
	// A sends over UDP and cannot tell the path's capacity; B, receiving,
	// saw loss. B sends over a TCP socket that filled.
	a := LinkInfo{Name: "h1-h2", RTTus: 21000, TxMbps: 19, RxCapacityMbps: 0, Loss: 0}
	b := LinkInfo{Name: "h1-h2", RTTus: 20000, RxMbps: 18, RxCapacityMbps: 18, TxCapacityMbps: 90, Loss: 0.03,
		TransportRTTus: 19000}
	m := mergeEnds(a, b)
	if m.TxCapacityMbps != 18 || m.RxCapacityMbps != 90 || m.CapacityMbps != 18 {
		t.Errorf("capacities %v/%v/%v, want 18 (B's receiving) / 90 (B's sending) / 18", m.TxCapacityMbps,
			m.RxCapacityMbps, m.CapacityMbps)
	}
	if m.RTTus != 20000 || m.TransportRTTus != 19000 || m.Loss != 0.03 || m.TxMbps != 19 {
		t.Errorf("merged %+v", m)
	}
	// The receiver's estimate wins over the sender's for the same direction.
	a.TxCapacityMbps, b.RxCapacityMbps = 25, 19
	if m := mergeEnds(a, b); m.TxCapacityMbps != 19 {
		t.Errorf("tx capacity %v, want the receiver's 19", m.TxCapacityMbps)
	}
	// Nothing known stays unknown.
	if m := mergeEnds(LinkInfo{}, LinkInfo{}); m.CapacityMbps != 0 || m.RTTus != 0 {
		t.Errorf("merged nothing into %+v", m)
	}
}

func TestViaStar(t *testing.T) {
	a := adapt.Cost{RTT: 10 * time.Millisecond, Mbps: 20}
	b := adapt.Cost{RTT: 30 * time.Millisecond, Mbps: 100}
	if c := viaStar(a, b); c.RTT != 40*time.Millisecond || c.Mbps != 20 {
		t.Errorf("via the star: %+v", c)
	}
	if c := viaStar(a, adapt.Cost{RTT: time.Millisecond}); c.Mbps != 0 || c.RTT != 11*time.Millisecond {
		t.Errorf("one capacity unknown: %+v, want the throughput unknown", c)
	}
}

// The planner's input carries the measured RTTs: the star links', a fast
// link's own, and, for pairs without one, the sum of their star links'.
func TestAdaptInputMeasured(t *testing.T) {
	n := newTestNet(t, 3, 1)
	if _, err := n.proxy.addLink("h1", "h2", ""); err != nil {
		t.Fatal(err)
	}
	var in adapt.Input
	n.waitFor("measured star and fast links", 10*time.Second, func() bool {
		in, _ = n.proxy.adaptInput(AdaptConfig{}.withDefaults())
		if len(in.Hosts) != 3 || n.linkInfo("h1-h2").RTTus <= 0 {
			return false
		}
		for _, h := range in.Hosts {
			if in.StarCost[h].RTT <= 0 || n.linkInfo(StarLinkName(h)).TransportRTTus <= 0 {
				return false // over TCP, TCP_INFO's RTT is the cross-check
			}
		}
		return true
	})
	fast := n.linkInfo("h1-h2")
	if got := in.Costs[adapt.Pair("h1", "h2")].RTT; got != time.Duration(fast.RTTus)*time.Microsecond {
		t.Errorf("h1-h2 costs RTT %v, its link measured %dµs", got, fast.RTTus)
	}
	for _, p := range []adapt.HostPair{adapt.Pair("h1", "h3"), adapt.Pair("h2", "h3")} {
		if got, want := in.Costs[p].RTT, in.StarCost[p.A].RTT+in.StarCost[p.B].RTT; got != want {
			t.Errorf("%s: RTT %v, want the star links' sum %v", p.Name(), got, want)
		}
	}
}
