package appliance

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"time"

	"vnet/adapt"
	"vnet/bridge"
	"vnet/bridge/netvm"
	"vnet/topo"
)

// Migration moves a VM from one host to another and then repoints the
// overlay. The move itself is done by a Migrator: the --migrate-cmd hook
// (a libvirt or QEMU live-migration script) or, for netstack VMs in one
// process (the demo, tests), InProcessMigrator. The VM keeps its MAC and
// IP. Repointing: the controller's forwarding rules to the VM are dropped
// before the move (they lead to the old host), every other host and the
// proxy forget where the MAC was, and the VM's own announcement from the
// new host (QEMU sends one after a migration; netvm.VM.Announce) teaches
// every switch where it is now. Until then frames to it are flooded, never
// sent to the old host.

// Migrator moves the VM with MAC mac from host from to host to, and returns
// when it runs on to.
type Migrator func(ctx context.Context, mac, from, to string) error

// MigrateResult is the answer to `vnet ctl migrate`.
type MigrateResult struct {
	VM   string `json:"vm"` // its MAC
	From string `json:"from"`
	To   string `json:"to"`
	// MoveMS is how long the Migrator took; ReachableMS how long after it
	// returned the proxy saw the VM on the target host.
	MoveMS      int64  `json:"move_ms"`
	ReachableMS int64  `json:"reachable_ms"`
	Note        string `json:"note,omitempty"`
}

// MigrateTimeout bounds a migration (the hook included) unless
// ProxyConfig.MigrateTimeout says otherwise.
const MigrateTimeout = 10 * time.Minute

// CommandMigrator runs cmd with /bin/sh -c, the VM's MAC, the source and
// the target host as $1 $2 $3 (and in VNET_VM, VNET_FROM, VNET_TO, with
// the VM's IPs in VNET_VM_IPS). Its output goes to the proxy's log.
func CommandMigrator(cmd string, p *Proxy) Migrator {
	return func(ctx context.Context, mac, from, to string) error {
		var ips []string
		for _, vm := range p.vms() {
			if vm.MAC == mac {
				ips = vm.IPs
			}
		}
		c := exec.CommandContext(ctx, "/bin/sh", "-c", cmd, "vnet-migrate", mac, from, to)
		c.Env = append(os.Environ(), "VNET_VM="+mac, "VNET_FROM="+from, "VNET_TO="+to,
			"VNET_VM_IPS="+strings.Join(ips, " "))
		out, err := c.CombinedOutput()
		if len(out) > 0 {
			p.log.Info("migrate-cmd output", "vm", mac, "output", strings.TrimSpace(string(out)))
		}
		if err != nil {
			return fmt.Errorf("--migrate-cmd %q %s %s %s: %v", cmd, mac, from, to, err)
		}
		return nil
	}
}

// InProcessMigrator moves netstack VMs between hosts of this process: it
// unplugs the VM's netvm.Cable from the source host's switch and plugs a
// new one into the target's. The VM keeps running throughout, so its TCP
// connections survive the move.
func InProcessMigrator(hosts ...*Host) Migrator {
	byName := map[string]*Host{}
	for _, h := range hosts {
		byName[h.cfg.Name] = h
	}
	return func(ctx context.Context, mac, from, to string) error {
		src, dst := byName[from], byName[to]
		if src == nil || dst == nil {
			return fmt.Errorf("in-process migration: host %s or %s is not in this process", from, to)
		}
		name, port, err := src.DetachVM(mac)
		if err != nil {
			return err
		}
		vm := port.(*netvm.Cable).VM() // DetachVM detaches cables only
		if err := dst.AttachPort(LocalPort{Name: dst.freePortName(name), Port: vm.Plug()}); err != nil {
			src.AttachPort(LocalPort{Name: name, Port: vm.Plug()})
			return fmt.Errorf("attaching on %s: %w (the VM stays on %s)", to, err, from)
		}
		vm.Announce()
		// Report the VM's new place at once, not at the next status tick.
		hw, _ := bridge.ParseMAC(mac)
		for i := 0; i < 100; i++ {
			if _, ok := dst.sw.Where(hw); ok {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		dst.kickStatus()
		return nil
	}
}

// DetachVM unplugs the local port that the VM with MAC mac is on and
// returns it with its name. Only a netstack VM's cable can be detached
// this way (other ports are closed by the switch when removed).
func (h *Host) DetachVM(mac string) (string, bridge.Port, error) {
	var name string
	for _, vm := range localVMs(h.sw, h.cfg.Name) {
		if vm.MAC == mac {
			name = vm.Port
		}
	}
	if name == "" {
		return "", nil, fmt.Errorf("VM %s is not on host %s", mac, h.cfg.Name)
	}
	h.mu.Lock()
	port := h.mu.ports[name]
	h.mu.Unlock()
	if _, ok := port.(*netvm.Cable); !ok {
		return "", nil, fmt.Errorf("VM %s on %s is behind port %s, which is not a netstack VM: use --migrate-cmd", mac, h.cfg.Name, name)
	}
	h.sw.RemovePort(name) // closes the cable, not the VM
	h.mu.Lock()
	delete(h.mu.ports, name)
	h.mu.Unlock()
	h.log.Info("VM detached for migration", "vm", mac, "port", name)
	h.kickStatus()
	return name, port, nil
}

// AttachPort attaches a VM-facing port to the host's switch.
func (h *Host) AttachPort(lp LocalPort) error {
	if err := h.sw.AddPort(lp.Name, bridge.RoleLocal, lp.Port); err != nil {
		return fmt.Errorf("port %s: %w", lp.Name, err)
	}
	h.mu.Lock()
	h.mu.ports[lp.Name] = lp.Port
	h.mu.Unlock()
	h.log.Info("port attached", "port", lp.Name)
	h.kickStatus()
	return nil
}

// DetachPort removes the VM-facing port name from the host's switch, which
// closes it (a TAP device it made goes away, a QEMU socket stops
// listening).
func (h *Host) DetachPort(name string) error {
	h.mu.Lock()
	_, ok := h.mu.ports[name]
	delete(h.mu.ports, name)
	h.mu.Unlock()
	if !ok {
		return fmt.Errorf("host %s has no port %s", h.cfg.Name, name)
	}
	h.sw.RemovePort(name)
	h.log.Info("port detached", "port", name)
	h.kickStatus()
	return nil
}

// ownDevices names the network devices of the host's TAP ports, for
// candidateAddrs: the ports attached now, not only those it started with.
func (h *Host) ownDevices() map[string]bool {
	h.mu.Lock()
	ports := make([]LocalPort, 0, len(h.mu.ports))
	for name, p := range h.mu.ports {
		ports = append(ports, LocalPort{Name: name, Port: p})
	}
	h.mu.Unlock()
	return ownDevices(ports)
}

// Reload re-reads the host's settings (HostConfig.ReloadSettings) and puts
// in force those that can change live; the others are reported as needing
// a restart. A bad file changes nothing.
func (h *Host) Reload() (ReloadResult, error) {
	res := ReloadResult{Changes: []string{}, Applied: []string{}, NeedsRestart: []string{}}
	if h.cfg.ReloadSettings == nil {
		return res, badRequest("this host has no --config file to reload")
	}
	h.reloading.Lock()
	defer h.reloading.Unlock()
	applied, restart, err := h.cfg.ReloadSettings()
	if err != nil {
		h.log.Error("reload failed; nothing changed", "err", err)
		return res, badRequest("reload failed, nothing changed: %v", err)
	}
	res.Applied = append(res.Applied, applied...)
	res.NeedsRestart = append(res.NeedsRestart, restart...)
	for _, s := range applied {
		h.log.Info("reload: setting applied", "setting", s)
	}
	if len(restart) > 0 {
		h.log.Warn("reload: needs a restart: " + strings.Join(restart, ", "))
	}
	h.log.Info("reloaded", "settings_applied", len(applied), "needs_restart", len(restart))
	return res, nil
}

// freePortName is name, or name-2, name-3, ... if the switch has it.
func (h *Host) freePortName(name string) string {
	h.mu.Lock()
	defer h.mu.Unlock()
	for i, n := 2, name; ; i++ {
		if _, used := h.mu.ports[n]; !used {
			return n
		}
		n = fmt.Sprintf("%s-%d", name, i)
	}
}

// SetMigrator sets how VMs are moved, for migrators that need the hosts
// (InProcessMigrator), which start after the proxy.
func (p *Proxy) SetMigrator(m Migrator) {
	p.migrating.Lock()
	defer p.migrating.Unlock()
	p.migrator = m
}

// findVM resolves what the user named (a MAC or an IP address) to a VM.
func (p *Proxy) findVM(spec string) (VMInfo, error) {
	var ip netip.Addr
	mac, err := bridge.ParseMAC(spec)
	if err != nil {
		if ip, err = netip.ParseAddr(spec); err != nil {
			return VMInfo{}, badRequest("VM %q: give its MAC or IP address (see `vnet ctl vms`)", spec)
		}
	}
	for _, vm := range p.vms() {
		if ip.IsValid() && slices.Contains(vm.IPs, ip.String()) || !ip.IsValid() && vm.MAC == mac.String() {
			return vm, nil
		}
	}
	return VMInfo{}, notFound("no VM %s on any host (see `vnet ctl vms`)", spec)
}

// Migrate moves a VM to host to (`vnet ctl migrate VM HOST`) and repoints
// the overlay. One migration runs at a time.
func (p *Proxy) Migrate(ctx context.Context, spec, to string) (MigrateResult, error) {
	vm, err := p.findVM(spec)
	if err != nil {
		return MigrateResult{}, err
	}
	res := MigrateResult{VM: vm.MAC, From: vm.Host, To: to}
	p.mu.Lock()
	rec := p.mu.hosts[to]
	up := rec != nil && rec.link != nil
	p.mu.Unlock()
	switch {
	case to == vm.Host:
		return res, badRequest("VM %s is on %s already", vm.MAC, to)
	case vm.Host == topo.ProxyHost:
		return res, badRequest("VM %s is on the proxy itself, which does not migrate its own VMs", vm.MAC)
	case !up:
		return res, badRequest("host %s is not up (see `vnet ctl hosts`)", to)
	case p.migrator == nil:
		return res, badRequest("no way to move VMs: start the proxy with --migrate-cmd (a script called with VM, source and target host)")
	}
	if !p.migrating.TryLock() {
		return res, &apiError{http.StatusConflict, "another migration is running; try again when it is done"}
	}
	defer p.migrating.Unlock()
	// The controller waits: until the hosts report the VM at its new
	// place, a plan would route to the old one.
	p.moving.Add(1)
	defer p.moving.Add(-1)
	timeout := p.cfg.MigrateTimeout
	if timeout <= 0 {
		timeout = MigrateTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	defer context.AfterFunc(p.ctx, cancel)() // the proxy closing ends it too

	p.log.Info("migrate: moving VM", "vm", vm.MAC, "from", vm.Host, "to", to)
	p.agg.Note("migrate", fmt.Sprintf("moving %s from %s to %s", vm.MAC, vm.Host, to))
	// The controller's rules to this VM lead to its old host: drop them now
	// (the next plan makes new ones for the new placement).
	var dropped []adapt.Rule
	err = p.change(func(d *desired) error {
		for h, rs := range d.rules {
			d.rules[h] = slices.DeleteFunc(rs, func(r bridge.Rule) bool {
				ar := adapt.Rule{Host: h, Src: r.Src.String(), Dst: r.Dst.String(), To: r.To.String(), Filter: r.IP.String()}
				if ar.Dst == vm.MAC && p.mu.adaptedRules[ar] {
					dropped = append(dropped, ar)
					return true
				}
				if ar.Dst == vm.MAC {
					p.log.Warn("migrate: an operator's rule still steers the VM's frames; check it", "vm", vm.MAC,
						"host", h, "rule", ar.Src+" "+ar.Dst+" -> "+ar.To)
				}
				return false
			})
		}
		return nil
	})
	if err != nil {
		return res, err
	}
	p.mu.Lock()
	for _, r := range dropped {
		delete(p.mu.adaptedRules, r)
	}
	p.mu.Unlock()

	start := time.Now()
	if err := p.migrator(ctx, vm.MAC, vm.Host, to); err != nil {
		p.agg.Note("migrate", fmt.Sprintf("moving %s from %s to %s failed: %v", vm.MAC, vm.Host, to, err))
		return res, fmt.Errorf("migrating %s from %s to %s: %w", vm.MAC, vm.Host, to, err)
	}
	moved := time.Now()
	res.MoveMS = moved.Sub(start).Milliseconds()
	p.forget(vm.MAC, to)
	// Reachable again when the proxy sees the VM's frames (its announcement)
	// come from the target host.
	mac, _ := bridge.ParseMAC(vm.MAC)
	star := StarLinkName(to)
	for {
		if at, _ := p.sw.Where(mac); at == star {
			break
		}
		if time.Since(moved) > 10*time.Second || ctx.Err() != nil {
			res.Note = "the VM has not been seen on " + to + " yet: it must send a frame (QEMU announces itself after a migration)"
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	res.ReachableMS = time.Since(moved).Milliseconds()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline) && ctx.Err() == nil; time.Sleep(10 * time.Millisecond) {
		where := ""
		for _, v := range p.vms() {
			if v.MAC == vm.MAC {
				where += v.Host + " "
			}
		}
		if where == to+" " {
			break
		}
	}
	p.log.Info("migrate: VM moved", "vm", vm.MAC, "from", vm.Host, "to", to, "move_ms", res.MoveMS,
		"reachable_ms", res.ReachableMS)
	p.agg.Note("migrate", fmt.Sprintf("moved %s from %s to %s (move %d ms, reachable %d ms later)",
		vm.MAC, vm.Host, to, res.MoveMS, res.ReachableMS))
	if p.adaptOn.Load() {
		go func() {
			p.migrating.Lock() // after this migration's deferred unlocks
			p.migrating.Unlock()
			if p.ctx.Err() == nil {
				p.adaptOnce("migration of " + vm.MAC)
			}
		}()
	}
	return res, nil
}

// forget tells every switch but the target host's to drop what it learned
// of mac. Control over UDP links is soft state, so it is said twice.
func (p *Proxy) forget(mac, to string) {
	// The other hosts' last reports still name the VM: take it out of them
	// now (their next reports, made after the forget, agree), so that it is
	// pinned to its new host and not held where it was.
	p.mu.Lock()
	for name, rec := range p.mu.hosts {
		if name != to {
			rec.status.VMs = slices.DeleteFunc(slices.Clone(rec.status.VMs), func(vm VMInfo) bool { return vm.MAC == mac })
		}
	}
	p.mu.Unlock()
	p.pinVMs()
	if m, err := bridge.ParseMAC(mac); err == nil {
		if at, _ := p.sw.Where(m); at != StarLinkName(to) {
			p.sw.Forget(m)
		}
	}
	msg := encodeCtrl(&ctrlMsg{Op: opForget, MACs: []string{mac}})
	send := func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		for name, rec := range p.mu.hosts {
			if name != to && rec.link != nil {
				rec.link.SendControl(msg)
			}
		}
	}
	send()
	time.AfterFunc(100*time.Millisecond, send)
}
