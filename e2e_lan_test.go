package main

// End-to-end test of --lan-iface: the proxy bridges the segment into a
// "LAN" through an AF_PACKET socket on a veth.
//
//	switch ns:  br0 ── pup ── up (proxy, --lan-iface lan0) ── lan0 ═ eth0  ns lan: 10.88.0.100, a LAN machine
//	             └──── pu1 ── u1 (host h1; TAP t11 -> ns v11: 10.88.0.11)
//
// The VM and the LAN machine ping each other and move a checksummed TCP
// stream both ways. The LAN machine's veth keeps its offloads: it hands the
// packet socket whole TSO segments of up to 64 KB, which the port cuts back
// into frames, and leaves checksums to the "hardware", which the port
// completes. Needs root; skipped otherwise.

import (
	"testing"
	"time"
)

func TestE2ELAN(t *testing.T) {
	e := newE2ENet(t, "vl", 3*time.Minute, "network namespaces, veth pairs, TAP devices and a packet socket", nil,
		func(e *e2eNet) { e.dumpState(t) })
	lan := &e2eVM{name: "lan", ip: "10.88.0.100"}
	steps := []struct {
		name string
		f    func(t *testing.T)
	}{
		{"build", e.build},
		{"underlay", func(t *testing.T) {
			e.vmUnderlay(t, 1)
			lan.ns = e.addNS(t, "lan")
			if err := e.lab.Veth(e.ctx, e.nsProxy, "lan0", lan.ns, "eth0"); err != nil {
				t.Fatal(err)
			}
			e.run(t, e.nsProxy, "ip", "link", "set", "lan0", "up")
			e.run(t, lan.ns, "ip", "addr", "add", lan.ip+"/24", "dev", "eth0")
			e.run(t, lan.ns, "ip", "link", "set", "eth0", "up")
		}},
		{"daemons", func(t *testing.T) { e.vmDaemons(t, 1, 1, "--lan-iface", "lan0") }},
		{"ping", func(t *testing.T) {
			vm := e.vms[0]
			if err := e.ping(vm.ns, lan.ip, 15*time.Second); err != nil {
				t.Fatalf("VM -> LAN: %v", err)
			}
			if err := e.ping(lan.ns, vm.ip, 5*time.Second); err != nil {
				t.Fatalf("LAN -> VM: %v", err)
			}
		}},
		{"tcp", func(t *testing.T) {
			e.transfer(t, e.vms[0], lan, 32<<20)
			e.transfer(t, lan, e.vms[0], 32<<20)
		}},
		{"counters", func(t *testing.T) {
			var st struct {
				Ports []struct {
					Name     string            `json:"name"`
					RxFrames uint64            `json:"rx_frames"`
					TxFrames uint64            `json:"tx_frames"`
					Drops    map[string]uint64 `json:"drops"`
				} `json:"ports"`
			}
			if err := e.ctl(&st, "status"); err != nil {
				t.Fatal(err)
			}
			for _, p := range st.Ports {
				if p.Name == "lan-lan0" {
					t.Logf("port lan-lan0: rx %d, tx %d frames, drops %v", p.RxFrames, p.TxFrames, p.Drops)
					if p.RxFrames == 0 || p.TxFrames == 0 || p.Drops["merged"] > 0 {
						t.Errorf("port lan-lan0: rx %d, tx %d, drops %v", p.RxFrames, p.TxFrames, p.Drops)
					}
					return
				}
			}
			t.Errorf("no port lan-lan0 in the proxy's status: %+v", st.Ports)
		}},
	}
	for _, s := range steps {
		if !t.Run(s.name, s.f) {
			t.FailNow()
		}
	}
}
