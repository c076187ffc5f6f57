package appliance

import (
	"testing"
	"time"

	"vnet/bridge"
)

// TestProxyPinsVMsToTheirHosts: a planned path that crosses a fast link and
// then the star brings a VM's frames to the proxy from a host that does not
// have it. The proxy must keep sending the VM's frames to its own host, so
// that when the path goes away the VM is still reached, though it sends
// nothing that would teach the proxy again.
func TestProxyPinsVMsToTheirHosts(t *testing.T) {
	n := newTestNetKind(t, "tcp", 3, 1)
	n.allPairs(16 << 10)
	a, b := n.vms[0], n.vms[1] // h1/vm1, h2/vm1
	n.waitFor("hosts to report their VMs", 5*time.Second, func() bool { return len(n.proxy.VMs()) == len(n.vms) })
	if _, err := n.proxy.addLink("h2", "h3", ""); err != nil {
		t.Fatal(err)
	}
	n.waitFor("fast link h2-h3 up", 10*time.Second, func() bool { return n.linkInfo("h2-h3").State == "up" })
	// b's frames to a go h2 -> h3 -> proxy -> h1.
	rules := []RuleInfo{
		{Host: "h2", Src: "any", Dst: a.MAC().String(), To: "link:h2-h3"},
		{Host: "h3", Src: "any", Dst: a.MAC().String(), To: "link:star-h3"},
	}
	for _, r := range rules {
		if err := n.proxy.addRule(r); err != nil {
			t.Fatal(err)
		}
	}
	const detour = "h2:link:h2-h3 h3:link:star-h3 proxy:link:star-h1 h1:port:vm1 delivered=true"
	n.waitFor("the detour in force", 5*time.Second, func() bool { return n.route(b, a) == detour })
	if err := exchange(b, a, 256<<10); err != nil {
		t.Fatal(err)
	}
	if err := exchange(a, b, 256<<10); err != nil {
		t.Fatal(err)
	}
	if got, _ := n.proxy.sw.Where(mac6(b.MAC())); got != "star-h2" {
		t.Errorf("after b's frames came in from h3, the proxy sends b's frames to %q, want star-h2", got)
	}
	// The detour goes; b stays silent.
	for _, r := range rules {
		if err := n.proxy.delRule(r); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := n.proxy.delLink("h2", "h3"); err != nil {
		t.Fatal(err)
	}
	n.waitFor("the link gone", 5*time.Second, func() bool { return n.linkInfo("h2-h3").State != "up" })
	if got, want := n.route(a, b), "h1:link:star-h1 proxy:link:star-h2 h2:port:vm1 delivered=true"; got != want {
		t.Fatalf("route to b after the detour = %q, want %q", got, want)
	}
}

// TestNewVMAnnouncedAtOnce: a VM's first frame makes its host announce it
// on its fast links and report it to the proxy (which pins it) at once,
// not at the next status tick, so fast-path peers reach it directly from
// the start.
func TestNewVMAnnouncedAtOnce(t *testing.T) {
	oldI, oldR := StatusInterval, StatusRefresh
	StatusInterval, StatusRefresh = time.Hour, time.Hour
	// Restored after the hosts are closed (cleanups run last first).
	t.Cleanup(func() { StatusInterval, StatusRefresh = oldI, oldR })
	n := newTestNetKind(t, "udp", 2, 1)
	if _, err := n.proxy.addLink("h1", "h2", ""); err != nil {
		t.Fatal(err)
	}
	n.waitFor("fast link h1-h2 up", 10*time.Second, func() bool { return n.linkInfo("h1-h2").State == "up" })
	vm := mac6(n.vms[1].MAC()) // h2/vm1, silent so far
	pinned := func(sw interface{ MACs() []bridge.MACEntry }, port string) bool {
		for _, e := range sw.MACs() {
			if e.MAC == vm {
				return e.Announced && e.Port == port
			}
		}
		return false
	}
	if pinned(n.hosts["h1"].sw, "h1-h2") {
		t.Fatal("a VM that has sent nothing is announced")
	}
	n.vms[1].Announce()
	n.waitFor("h2's new VM announced on h1-h2", 5*time.Second, func() bool { return pinned(n.hosts["h1"].sw, "h1-h2") })
	n.waitFor("h2's new VM pinned at the proxy", 5*time.Second, func() bool { return pinned(n.proxy.sw, "star-h2") })
}
