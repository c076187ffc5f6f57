package adapt

import (
	"sort"
	"strings"
)

func linkSet(ls []HostPair) map[HostPair]bool {
	s := make(map[HostPair]bool, len(ls))
	for _, l := range ls {
		s[Pair(l.A, l.B)] = true
	}
	return s
}

func sortedLinks(s map[HostPair]bool) []HostPair {
	ls := make([]HostPair, 0, len(s))
	for l := range s {
		ls = append(ls, l)
	}
	sort.Slice(ls, func(i, j int) bool {
		if ls[i].A != ls[j].A {
			return ls[i].A < ls[j].A
		}
		return ls[i].B < ls[j].B
	})
	return ls
}

func reasonFor(p Plan, prefix string) string {
	for _, r := range p.Reasons {
		if strings.HasPrefix(r, prefix) {
			return r
		}
	}
	return ""
}

// Diff returns the changes that turn current into desired, in the order they should be
// applied: add-link, move, del-rule, add-rule, del-link; each group sorted.
func Diff(current, desired Plan) []Change {
	var out []Change
	cur, des := linkSet(current.Links), linkSet(desired.Links)
	for _, l := range sortedLinks(des) {
		if !cur[l] {
			l := l
			out = append(out, Change{Op: "add-link", Link: &l, Reason: reasonFor(desired, "link "+l.Name()+":")})
		}
	}
	if desired.Placement != nil {
		vms := make([]string, 0, len(desired.Placement))
		for vm := range desired.Placement {
			vms = append(vms, vm)
		}
		sort.Strings(vms)
		for _, vm := range vms {
			if from, to := current.Placement[vm], desired.Placement[vm]; to != "" && from != to {
				out = append(out, Change{Op: "move", VM: vm, From: from, To: to, Reason: reasonFor(desired, "move "+vm+" ")})
			}
		}
	}
	curR, desR := map[Rule]bool{}, map[Rule]bool{}
	for _, r := range current.Rules {
		curR[r] = true
	}
	for _, r := range desired.Rules {
		desR[r] = true
	}
	rules := func(from, not map[Rule]bool, op, why string) {
		var rs []Rule
		for r := range from {
			if !not[r] {
				rs = append(rs, r)
			}
		}
		sortRules(rs)
		for _, r := range rs {
			r := r
			out = append(out, Change{Op: op, Rule: &r, Reason: why})
		}
	}
	rules(curR, desR, "del-rule", "not in the desired plan")
	rules(desR, curR, "add-rule", "route of the desired plan")
	for _, l := range sortedLinks(cur) {
		if !des[l] {
			l := l
			out = append(out, Change{Op: "del-link", Link: &l, Reason: "not in the desired plan"})
		}
	}
	return out
}

// Apply returns p with changes applied (links, rules and placement; Objective and Reasons
// are left as they were: re-evaluate for the current demands).
func Apply(p Plan, changes []Change) Plan {
	links := linkSet(p.Links)
	rules := map[Rule]bool{}
	for _, r := range p.Rules {
		rules[r] = true
	}
	pl := make(map[string]string, len(p.Placement))
	for k, v := range p.Placement {
		pl[k] = v
	}
	for _, c := range changes {
		switch c.Op {
		case "add-link":
			links[Pair(c.Link.A, c.Link.B)] = true
		case "del-link":
			delete(links, Pair(c.Link.A, c.Link.B))
		case "add-rule":
			rules[*c.Rule] = true
		case "del-rule":
			delete(rules, *c.Rule)
		case "move":
			pl[c.VM] = c.To
		}
	}
	q := Plan{Links: sortedLinks(links), Placement: pl, Objective: p.Objective, Reasons: p.Reasons}
	for r := range rules {
		q.Rules = append(q.Rules, r)
	}
	sortRules(q.Rules)
	if len(q.Links) == 0 {
		q.Links = nil
	}
	return q
}
