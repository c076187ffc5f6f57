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
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"vnet/internal/netns"
)

func TestE2ELAN(t *testing.T) {
	if os.Getenv(e2eHelperEnv) != "" {
		t.Skip("running as TestE2EHelper")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: builds network namespaces, veth pairs, TAP devices and a packet socket")
	}
	var missing []string
	missing = append(missing, netns.Missing("ip", "ping", "go")...)
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		missing = append(missing, "/dev/net/tun")
	}
	if len(missing) > 0 {
		msg := fmt.Sprintf("needs %s (apt-get install iproute2 iputils-ping)", strings.Join(missing, ", "))
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	prefix := fmt.Sprintf("vl%d", os.Getpid())
	e := &e2eNet{ctx: ctx, lab: netns.New(prefix), dir: t.TempDir(), nsHost: map[string]string{},
		hosts: map[string]*netns.Proc{}, expect: map[*netns.Proc]bool{}}
	t.Cleanup(func() {
		if t.Failed() {
			e.dumpState(t)
		}
		if err := e.lab.Close(); err != nil {
			t.Errorf("cleanup: %v", err)
		}
		cctx, ccancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer ccancel()
		if left, err := netns.Leftovers(cctx, prefix); err == nil && len(left) > 0 {
			t.Errorf("cleanup left namespaces behind: %v", left)
		}
	})
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
