package appliance

import (
	"slices"
	"strings"
	"testing"
	"time"

	"vnet/adapt"
	"vnet/infer"
	"vnet/topo"
)

// TestAdaptBuildsFastPaths runs a ring across four hosts with the
// controller on: it must add fast paths between the hosts the ring joins,
// and the VMs' frames must then take them.
func TestAdaptBuildsFastPaths(t *testing.T) {
	old := ReportInterval
	ReportInterval = 100 * time.Millisecond
	defer func() { ReportInterval = old }()
	acct := infer.AccountConfig{TimeBound: 200 * time.Millisecond, TMax: 200 * time.Millisecond, TWait: time.Second}
	n := newTestNetInfer(t, 4, 2, acct, infer.GlobalConfig{Window: 2 * time.Second}, func(pc *ProxyConfig) {
		pc.Adapt = AdaptConfig{Enabled: true, Interval: 500 * time.Millisecond, Window: 3 * time.Second,
			Budget: adapt.Budget{MaxPerHost: 2},
			Damp:   adapt.DampConfig{MinDwell: 5 * time.Second, Hysteresis: 0.01, MaxChangesPerMinute: 100}}
	})
	// The operator's own link: the controller must leave it alone.
	if err := n.proxy.change(func(d *desired) error {
		d.links["h1-h3"] = topo.Link{A: "h1", B: "h3"}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// VMs are ordered h1/vm1, h1/vm2, h2/vm1, ...: a ring over them joins
	// h1-h2, h2-h3, h3-h4 and h4-h1.
	stop := n.runPattern("ring", 7300)
	want := []string{"h1-h2", "h1-h4", "h2-h3", "h3-h4"}
	n.waitFor("fast paths along the ring", 30*time.Second, func() bool {
		up := map[string]bool{}
		for _, l := range n.proxy.Links() {
			if l.Role == "fast" && l.State == "up" {
				up[l.Name] = true
			}
		}
		for _, w := range want {
			if !up[w] {
				return false
			}
		}
		return true
	})
	// Frames from h1's second VM to h2's first now go direct.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		route := n.route(n.vms[1], n.vms[2])
		if strings.HasPrefix(route, "h1:link:h1-h2 h2:port:vm1") {
			break
		}
		if time.Now().After(deadline) {
			var evs []string
			for _, ev := range n.proxy.agg.Events(0) {
				evs = append(evs, ev.Kind+": "+ev.Note)
			}
			plan := n.proxy.planResult()
			t.Fatalf("after 30 s the ring's traffic still does not take the fast path: route %s\nlinks %+v\nrules %+v\nplan %+v\nmatrix %+v\nevents %s",
				route, n.proxy.Links(), n.proxy.rules(), plan, n.proxy.agg.Matrix(3*time.Second).Entries, strings.Join(evs, "\n"))
		}
	}
	var acts []string
	for _, ev := range n.proxy.agg.Events(0) {
		if ev.Kind == "adapt" {
			acts = append(acts, ev.Note)
		}
	}
	if len(acts) < len(want) {
		t.Errorf("adaptation events: %v", acts)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	// Without traffic the controller's fast paths age out after the dwell;
	// the operator's stays.
	n.waitFor("the ring's fast paths to age out", 30*time.Second, func() bool {
		var names []string
		for _, l := range n.proxy.Links() {
			if l.Role == "fast" {
				names = append(names, l.Name)
			}
		}
		return slices.Equal(names, []string{"h1-h3"})
	})
}
