package appliance

import (
	"slices"
	"strings"
	"sync"

	"vnet/bridge"
)

// The proxy pins every VM that exactly one host reports to that host's
// star link. Learning alone is not enough at the proxy: a planned path may
// cross a fast link and then the star (adapt's rules), so the proxy sees a
// VM's frames come in from a host that does not have it, and would send
// every frame for the VM there. Once that path is gone the frames are lost,
// and a VM that only receives never sends the frame that would correct it.
// A VM that no host reports (not seen yet) or that two report (during a
// migration, until the old host forgets it) is left to learning.

// pins is the proxy's record of what it pinned, by host.
type pins struct {
	mu   sync.Mutex        // serialises pinVMs: pins are computed and applied in order
	last map[string]string // host -> the MACs pinned on its current star port, joined
}

// pinVMs brings the pins in line with the hosts' latest reports.
func (p *Proxy) pinVMs() {
	p.pins.mu.Lock()
	defer p.pins.mu.Unlock()
	claims := map[string][]string{} // MAC -> the hosts that report it
	up := map[string]bool{}
	p.mu.Lock()
	for name, rec := range p.mu.hosts {
		if rec.link == nil {
			continue
		}
		up[name] = true
		for _, vm := range rec.status.VMs {
			if !slices.Contains(claims[vm.MAC], name) {
				claims[vm.MAC] = append(claims[vm.MAC], name)
			}
		}
	}
	p.mu.Unlock()
	byHost := map[string][]string{}
	for mac, hosts := range claims {
		if len(hosts) == 1 {
			byHost[hosts[0]] = append(byHost[hosts[0]], mac)
		}
	}
	if p.pins.last == nil {
		p.pins.last = map[string]string{}
	}
	for host := range p.pins.last {
		if !up[host] {
			delete(p.pins.last, host) // its port is gone, and its pins with it
		}
	}
	for host := range up {
		list := byHost[host]
		slices.Sort(list)
		key := strings.Join(list, ",")
		if last, ok := p.pins.last[host]; ok && last == key {
			continue
		}
		macs := make([]bridge.MAC, 0, len(list))
		for _, s := range list {
			if m, err := bridge.ParseMAC(s); err == nil {
				macs = append(macs, m)
			}
		}
		if err := p.sw.Announce(StarLinkName(host), macs); err != nil {
			delete(p.pins.last, host) // its port is not attached yet: runHost pins again
			continue
		}
		p.pins.last[host] = key
	}
}

// repin pins host's VMs afresh on its star port (just attached).
func (p *Proxy) repin(host string) {
	p.pins.mu.Lock()
	delete(p.pins.last, host)
	p.pins.mu.Unlock()
	p.pinVMs()
}
