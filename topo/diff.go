package topo

import "fmt"

// Change operations.
const (
	OpAdd  = "add"
	OpDel  = "del"
	OpMove = "move"
)

// Change is one step that turns a live topology into a desired one. Exactly
// one of Link, Rule and VM is set.
//
//   - "del" a Link or a Rule: remove it.
//   - "add" a Link or a Rule: create it.
//   - "add" a VM: record the placement of a VM the live topology does not
//     know yet.
//   - "move" a VM: VM is where it should be, From where it is now.
type Change struct {
	Op   string `json:"op"`             // OpAdd, OpDel or OpMove
	Link *Link  `json:"link,omitempty"` // for "add" and "del"
	Rule *Rule  `json:"rule,omitempty"` // for "add" and "del"
	VM   *VM    `json:"vm,omitempty"`   // for "add" and "move": the desired placement
	From *VM    `json:"from,omitempty"` // for "move": the live placement
}

// String returns c as one line: "+ " or "- " before the fact in the
// topology language, or for a move "~ vm MAC FROM -> TO" where FROM and TO
// are a host, followed by "port PORT" when the port is known. Examples:
// "- rule h1 any 52:54:00:00:00:02 -> link:h1-h2", "+ link h1 h2 kind udp",
// "+ vm 52:54:00:00:00:03 on h2", "~ vm 52:54:00:00:00:01 h1 port tap0 -> h2".
func (c Change) String() string {
	var fact string
	switch {
	case c.Link != nil:
		fact = c.Link.String()
	case c.Rule != nil:
		fact = c.Rule.String()
	case c.VM != nil && c.Op == OpMove:
		from := "?"
		if c.From != nil {
			from = placement(*c.From)
		}
		return "~ vm " + c.VM.MAC + " " + from + " -> " + placement(*c.VM)
	case c.VM != nil:
		fact = c.VM.String()
	default:
		return fmt.Sprintf("%s (nothing)", c.Op)
	}
	switch c.Op {
	case OpAdd:
		return "+ " + fact
	case OpDel:
		return "- " + fact
	}
	return c.Op + " " + fact
}

func placement(v VM) string {
	if v.Port == "" {
		return v.Host
	}
	return v.Host + " port " + v.Port
}

// Diff returns the changes that turn live into desired, in the order to
// apply them: rules to delete, links to delete, VMs to move, VMs to add,
// links to add, rules to add, each group sorted as in the canonical form.
// Deleting rules before links and adding links before rules means no rule
// ever points at a missing link along the way. Neither argument is
// modified; nil means an empty topology. Diff(t, t) is empty.
//
// What Diff leaves alone, on purpose:
//   - Hosts: they join and leave by themselves; host lines only document.
//   - VMs only in live: VMs are found by learning, so a desired topology
//     need not list them all; they are never deleted.
//   - A link whose desired kind is empty (default): it matches a live link
//     of any kind. A link whose kinds differ otherwise is deleted and added.
//   - A VM whose desired port is empty: it matches a live VM on any port of
//     the same host. Otherwise a VM is moved when its host or port differs.
//
// Rules are compared whole: a rule whose target changed is one deletion and
// one addition.
func Diff(live, desired *Topology) []Change {
	l, d := live.Clone(), desired.Clone()
	l.Canonical()
	d.Canonical()
	var delRules, delLinks, moves, addVMs, addLinks, addRules []Change

	liveRules := make(map[Rule]bool, len(l.Rules))
	for _, r := range l.Rules {
		liveRules[r] = true
	}
	wantRules := make(map[Rule]bool, len(d.Rules))
	for _, r := range d.Rules {
		wantRules[r] = true
		if !liveRules[r] {
			addRules = append(addRules, Change{Op: OpAdd, Rule: &r})
		}
	}
	for _, r := range l.Rules {
		if !wantRules[r] {
			delRules = append(delRules, Change{Op: OpDel, Rule: &r})
		}
	}

	// Links: at most one per pair in a valid topology; if an invalid one
	// has several, the first in canonical order stands for the pair.
	liveLinks := make(map[[2]string]Link, len(l.Links))
	for _, k := range l.Links {
		if _, ok := liveLinks[pairKey(k)]; !ok {
			liveLinks[pairKey(k)] = k
		}
	}
	keep := make(map[Link]bool)
	for _, k := range d.Links {
		old, ok := liveLinks[pairKey(k)]
		if ok && (k.Kind == KindDefault || k.Kind == old.Kind) {
			keep[old] = true
			continue
		}
		addLinks = append(addLinks, Change{Op: OpAdd, Link: &k})
	}
	for _, k := range l.Links {
		if !keep[k] {
			delLinks = append(delLinks, Change{Op: OpDel, Link: &k})
		}
	}

	liveVMs := make(map[string]VM, len(l.VMs))
	for _, v := range l.VMs {
		if _, ok := liveVMs[v.MAC]; !ok {
			liveVMs[v.MAC] = v
		}
	}
	for _, v := range d.VMs {
		old, ok := liveVMs[v.MAC]
		switch {
		case !ok:
			addVMs = append(addVMs, Change{Op: OpAdd, VM: &v})
		case old.Host != v.Host || v.Port != "" && v.Port != old.Port:
			moves = append(moves, Change{Op: OpMove, VM: &v, From: &old})
		}
	}

	var out []Change
	for _, g := range [][]Change{delRules, delLinks, moves, addVMs, addLinks, addRules} {
		out = append(out, g...)
	}
	return out
}
