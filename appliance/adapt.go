package appliance

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"vnet/adapt"
	"vnet/bridge"
	"vnet/topo"
)

// AdaptConfig configures the adaptation controller (`vnet proxy --adapt`).
type AdaptConfig struct {
	Enabled  bool
	Interval time.Duration // re-plan at least this often (default 10 s), and on every topology change
	Window   time.Duration // traffic the plan is made for: the last Window of the global matrix (default 30 s)
	Budget   adapt.Budget
	Damp     adapt.DampConfig
	// Migrate lets the plan move VMs (through the proxy's Migrator, e.g.
	// --migrate-cmd), never beyond the busiest host's current VM count.
	Migrate bool
}

func (c AdaptConfig) withDefaults() AdaptConfig {
	if c.Interval <= 0 {
		c.Interval = 10 * time.Second
	}
	if c.Window <= 0 {
		c.Window = 30 * time.Second
	}
	if c.Budget == (adapt.Budget{}) {
		c.Budget = adapt.Budget{MaxPerHost: 3, Share: 0.9}
	}
	if c.Damp == (adapt.DampConfig{}) {
		c.Damp = adapt.DampConfig{MinDwell: 30 * time.Second, Hysteresis: 0.05, MaxChangesPerMinute: 20}
	}
	return c
}

// PlanResult is the answer to `vnet ctl plan`: what the controller would do
// now, and why.
type PlanResult struct {
	Objective float64  `json:"objective"`
	Current   float64  `json:"current_objective"`
	Links     []string `json:"links"`
	Changes   []string `json:"changes"`
	Held      []string `json:"held,omitempty"`
	Reasons   []string `json:"reasons"`
	Note      string   `json:"note,omitempty"`
}

// adaptInput gathers the planner's input from the live state.
func (p *Proxy) adaptInput(cfg AdaptConfig) (adapt.Input, adapt.Plan) {
	in := adapt.Input{Proxy: topo.ProxyHost, Placement: map[string]string{}, StarCost: map[string]adapt.Cost{},
		Costs: map[adapt.HostPair]adapt.Cost{}, Budget: cfg.Budget}
	for _, vm := range p.vms() {
		in.Placement[vm.MAC] = vm.Host
	}
	p.mu.Lock()
	// Passive measurements (both ends merged): RTT and capacity of every
	// link that is up.
	measured := map[string]LinkInfo{}
	for _, li := range p.linksLocked() {
		if li.State == "up" && li.Via != "relayed" && li.RTTus > 0 {
			measured[li.Name] = li
		}
	}
	for _, name := range sortedKeys(p.mu.hosts) {
		rec := p.mu.hosts[name]
		if rec.link == nil {
			continue
		}
		in.Hosts = append(in.Hosts, name)
		in.StarCost[name] = measuredCost(measured[StarLinkName(name)])
		for _, l := range rec.status.Links {
			if m, ok := measured[l.Name]; ok && l.State == "up" && l.Via != "relayed" {
				in.Costs[adapt.Pair(l.A, l.B)] = measuredCost(m)
			}
		}
	}
	// A direct link whose capacity nothing has measured yet (no sender was
	// backlogged on it) is taken to be as good as the best measured one:
	// priced at a default, it would look worse than two measured hops.
	best := 0.0
	for _, c := range in.Costs {
		best = max(best, c.Mbps)
	}
	for pair, c := range in.Costs {
		if c.Mbps == 0 && best > 0 {
			c.Mbps = best
			in.Costs[pair] = c
		}
	}
	// A pair without a direct link of its own is estimated from its two
	// star links (no probe of its own).
	for i, a := range in.Hosts {
		for _, b := range in.Hosts[i+1:] {
			if _, ok := in.Costs[adapt.Pair(a, b)]; !ok {
				if c := viaStar(in.StarCost[a], in.StarCost[b]); c != (adapt.Cost{}) {
					in.Costs[adapt.Pair(a, b)] = c
				}
			}
		}
	}
	// A relayed fast path is the star under another name: price it as two
	// star hops, so the planner expects no gain from it.
	for _, name := range sortedKeys(p.mu.hosts) {
		for _, l := range p.mu.hosts[name].status.Links {
			if l.Via == "relayed" {
				a, b := p.mu.hosts[l.A], p.mu.hosts[l.B]
				if a != nil && b != nil && a.link != nil && b.link != nil {
					in.Costs[adapt.Pair(l.A, l.B)] = adapt.Cost{RTT: a.link.RTT() + b.link.RTT(), Mbps: 1}
				}
			}
		}
	}
	cur := adapt.Plan{Placement: in.Placement}
	for _, n := range sortedKeys(p.mu.links) {
		l := p.mu.links[n]
		in.Links = append(in.Links, adapt.Pair(l.A, l.B))
		cur.Links = append(cur.Links, adapt.Pair(l.A, l.B))
	}
	for _, h := range sortedKeys(p.mu.rules) {
		for _, r := range p.mu.rules[h] {
			cur.Rules = append(cur.Rules, adapt.Rule{Host: h, Src: r.Src.String(), Dst: r.Dst.String(), To: r.To.String(), Filter: r.IP.String()})
		}
	}
	p.mu.Unlock()
	for _, e := range p.agg.Matrix(cfg.Window).Entries {
		in.Demands = append(in.Demands, adapt.Demand{Src: e.Src, Dst: e.Dst, Bytes: float64(e.Bytes)})
	}
	return in, cur
}

// plan computes the desired state for the traffic of the last window.
func (p *Proxy) plan(cfg AdaptConfig) (adapt.Input, adapt.Plan, adapt.Plan) {
	in, cur := p.adaptInput(cfg)
	if len(in.Hosts) < 2 {
		return in, cur, cur
	}
	var desired adapt.Plan
	if len(in.Demands) == 0 {
		// No traffic: nothing is wanted, so the controller's fast paths age
		// out (after the damper's dwell).
		desired = adapt.Plan{Placement: in.Placement, Reasons: []string{"no VM traffic in the window: no fast path is wanted"}}
	} else {
		if in.Migrate = cfg.Migrate && p.migrator != nil; in.Migrate {
			load := map[string]int{}
			for _, h := range in.Placement {
				load[h]++
				in.MaxVMsPerHost = max(in.MaxVMsPerHost, load[h])
			}
		}
		desired = adapt.Improve(in, adapt.Greedy(in), 200, uint64(time.Now().UnixNano()))
		if !in.Migrate {
			desired.Placement = in.Placement
		}
	}
	p.keepPinned(cur, &desired)
	if len(in.Demands) > 0 {
		// The damper compares objectives for the same, current demands, and
		// both are scored by the paths their rules make on all their links,
		// the operator's too. Scored by their link sets alone, a plan that
		// only mends rules (made when the new links' costs were guesses)
		// gains nothing, and the stale rules would stay for good.
		cur.Objective, desired.Objective = adapt.EvaluatePlan(in, cur), adapt.EvaluatePlan(in, desired)
	}
	return in, cur, desired
}

// keepPinned adds to desired the links and rules of cur that the controller
// did not make (the operator's, from `ctl link add`, `ctl rule add` or a
// topology file): the controller never removes those.
func (p *Proxy) keepPinned(cur adapt.Plan, desired *adapt.Plan) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, l := range cur.Links {
		if !p.mu.adaptedLinks[l.Name()] && !slices.Contains(desired.Links, l) {
			desired.Links = append(desired.Links, l)
			desired.Reasons = append(desired.Reasons, "link "+l.Name()+": kept (made by the operator, not by the controller)")
		}
	}
	slices.SortFunc(desired.Links, func(a, b adapt.HostPair) int { return strings.Compare(a.Name(), b.Name()) })
	for _, r := range cur.Rules {
		if !p.mu.adaptedRules[r] && !slices.Contains(desired.Rules, r) {
			desired.Rules = append(desired.Rules, r)
		}
	}
}

// planResult is the dry run behind `vnet ctl plan`.
func (p *Proxy) planResult() PlanResult {
	cfg := p.cfg.Adapt.withDefaults()
	in, cur, desired := p.plan(cfg)
	res := PlanResult{Objective: desired.Objective, Current: cur.Objective,
		Changes: []string{}, Reasons: desired.Reasons}
	for _, l := range desired.Links {
		res.Links = append(res.Links, l.Name())
	}
	if len(in.Demands) == 0 {
		res.Note = "no VM traffic in the last " + cfg.Window.String() + ": nothing to plan for"
	}
	apply, held, why := p.damper.Filter(time.Now(), cur, desired)
	for _, c := range apply {
		res.Changes = append(res.Changes, changeString(c))
	}
	for _, c := range held {
		res.Held = append(res.Held, changeString(c))
	}
	if why != "" {
		res.Note = why
	}
	return res
}

func changeString(c adapt.Change) string {
	s := c.Op
	switch {
	case c.Link != nil:
		s += " " + c.Link.Name()
	case c.Rule != nil:
		s += fmt.Sprintf(" %s: %s %s -> %s", c.Rule.Host, c.Rule.Src, c.Rule.Dst, c.Rule.To)
	case c.VM != "":
		s += fmt.Sprintf(" %s %s -> %s", c.VM, c.From, c.To)
	}
	if c.Reason != "" {
		s += "  (" + c.Reason + ")"
	}
	return s
}

// adaptOnce plans and applies what the damper lets through.
func (p *Proxy) adaptOnce(trigger string) {
	if p.moving.Load() > 0 {
		return // the placement is changing; the migration re-plans when done
	}
	cfg := p.cfg.Adapt.withDefaults()
	_, cur, want := p.plan(cfg)
	apply, held, why := p.damper.Filter(time.Now(), cur, want)
	if len(apply) == 0 {
		if len(held) > 0 {
			p.log.Debug("adapt: changes held", "n", len(held), "why", why)
		}
		return
	}
	err := p.change(func(d *desired) error {
		for _, c := range apply {
			switch {
			case c.Op == "add-link" && c.Link != nil:
				d.links[c.Link.Name()] = topo.Link{A: c.Link.A, B: c.Link.B}
			case c.Op == "del-link" && c.Link != nil:
				delete(d.links, c.Link.Name())
			case c.Op == "add-rule" && c.Rule != nil:
				r, err := bridge.ParseRuleFilter(c.Rule.Src, c.Rule.Dst, c.Rule.Filter, c.Rule.To)
				if err != nil {
					return err
				}
				if !slices.Contains(d.rules[c.Rule.Host], r) {
					d.rules[c.Rule.Host] = append(d.rules[c.Rule.Host], r)
				}
			case c.Op == "del-rule" && c.Rule != nil:
				r, err := bridge.ParseRuleFilter(c.Rule.Src, c.Rule.Dst, c.Rule.Filter, c.Rule.To)
				if err != nil {
					return err
				}
				if i := slices.Index(d.rules[c.Rule.Host], r); i >= 0 {
					d.rules[c.Rule.Host] = slices.Delete(d.rules[c.Rule.Host], i, i+1)
				}
			}
		}
		// Rules through links that are going away go too.
		for h, rs := range d.rules {
			d.rules[h] = slices.DeleteFunc(rs, func(r bridge.Rule) bool {
				_, ok := d.links[r.To.Name]
				return r.To.Kind == bridge.TargetLink && !ok && r.To.Name != StarLinkName(h) && h != topo.ProxyHost
			})
		}
		return nil
	})
	if err != nil {
		p.log.Warn("adapt: plan not applied", "err", err)
		return
	}
	p.mu.Lock()
	for _, c := range apply {
		switch {
		case c.Op == "add-link" && c.Link != nil:
			p.mu.adaptedLinks[c.Link.Name()] = true
		case c.Op == "del-link" && c.Link != nil:
			delete(p.mu.adaptedLinks, c.Link.Name())
		case c.Op == "add-rule" && c.Rule != nil:
			p.mu.adaptedRules[*c.Rule] = true
		case c.Op == "del-rule" && c.Rule != nil:
			delete(p.mu.adaptedRules, *c.Rule)
		}
	}
	live := map[adapt.Rule]bool{} // rules through a deleted link went with it
	for h, rs := range p.mu.rules {
		for _, r := range rs {
			live[adapt.Rule{Host: h, Src: r.Src.String(), Dst: r.Dst.String(), To: r.To.String(), Filter: r.IP.String()}] = true
		}
	}
	maps.DeleteFunc(p.mu.adaptedRules, func(r adapt.Rule, _ bool) bool { return !live[r] })
	p.mu.Unlock()
	p.saveState()
	var moves []adapt.Change
	for _, c := range apply {
		p.log.Info("adapt: "+changeString(c), "trigger", trigger)
		p.agg.Note("adapt", changeString(c)+" — "+trigger)
		p.adaptActions.add(c.Op)
		if c.Op == "move" {
			moves = append(moves, c)
		}
	}
	if len(moves) > 0 {
		// Migrations take long (a hook may copy a VM's memory): run them
		// one after the other, off the control loop.
		go func() {
			for _, c := range moves {
				if _, err := p.Migrate(p.ctx, c.VM, c.To); err != nil {
					p.log.Warn("adapt: migration failed", "vm", c.VM, "to", c.To, "err", err)
				}
			}
		}()
	}
}

// SetAdapting pauses (false) or resumes (true) the adaptation controller,
// with the settings of ProxyConfig.Adapt. Paused, it changes nothing; what
// it made stays (see DropAdapted).
func (p *Proxy) SetAdapting(on bool) { p.adaptOn.Store(on) }

// DropAdapted removes every fast path and rule the controller made (not
// the operator's) and forgets its damping history: the overlay is back to
// what the operator built.
func (p *Proxy) DropAdapted() error {
	err := p.change(func(d *desired) error {
		for name := range p.mu.adaptedLinks {
			delete(d.links, name)
		}
		for h, rs := range d.rules {
			d.rules[h] = slices.DeleteFunc(rs, func(r bridge.Rule) bool {
				return p.mu.adaptedRules[adapt.Rule{Host: h, Src: r.Src.String(), Dst: r.Dst.String(), To: r.To.String(), Filter: r.IP.String()}]
			})
		}
		return nil
	})
	if err != nil {
		return err
	}
	p.mu.Lock()
	clear(p.mu.adaptedLinks)
	clear(p.mu.adaptedRules)
	p.mu.Unlock()
	p.damper.Reset()
	p.saveState()
	return nil
}
