package bridge

import (
	"math/rand/v2"
	"sort"
	"testing"
)

// naiveOutputs is the rule semantics written the slow, obvious way: score
// every rule, keep those at the top score whose port exists, minus in.
func naiveOutputs(rules []Rule, set *portSet, in *portState, src, dst MAC) []string {
	best := 0
	for _, r := range rules {
		p := set.byName[r.To.Name]
		if p == nil || (r.To.Kind == TargetPort) != (p.role == RoleLocal) {
			continue
		}
		if sc := r.Score(src, dst); sc > best {
			best = sc
		}
	}
	seen := map[string]bool{}
	var out []string
	for _, r := range rules {
		p := set.byName[r.To.Name]
		if p == nil || (r.To.Kind == TargetPort) != (p.role == RoleLocal) || p == in {
			continue
		}
		if best > 0 && r.Score(src, dst) == best && !seen[p.name] {
			seen[p.name] = true
			out = append(out, p.name)
		}
	}
	sort.Strings(out)
	return out
}

// TestRulesAgainstNaive compares matchRules with naiveOutputs on random rule
// sets and frames (STYLE lesson 43).
func TestRulesAgainstNaive(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	macs := []MAC{{2, 0, 0, 0, 0, 1}, {2, 0, 0, 0, 0, 2}, {2, 0, 0, 0, 0, 3}, {2, 0, 0, 0, 0, 4}}
	s := New(Config{})
	for _, n := range []string{"v1", "v2"} {
		s.attachIdle(n, RoleLocal)
	}
	for _, n := range []string{"s1", "f1", "f2"} {
		s.attachIdle(n, map[bool]Role{true: RoleStar, false: RoleFast}[n == "s1"])
	}
	set := s.ports.Load()
	names := []string{"v1", "v2", "v3", "s1", "f1", "f2", "gone"}
	randMatch := func() Match {
		return Match{Kind: MatchKind(rng.IntN(3)), MAC: macs[rng.IntN(len(macs))]}
	}
	for iter := 0; iter < 5000; iter++ {
		var rules []Rule
		for range rng.IntN(8) {
			kind := TargetKind(rng.IntN(2))
			rules = append(rules, Rule{Src: randMatch(), Dst: randMatch(), To: Target{Kind: kind, Name: names[rng.IntN(len(names))]}})
		}
		src, dst := macs[rng.IntN(len(macs))], macs[rng.IntN(len(macs))]
		in := set.byName[names[rng.IntN(len(names))]]
		got, act, _, _ := matchRules(rules, set, in, src, dst, nil)
		var gotNames []string
		for _, p := range got {
			gotNames = append(gotNames, p.name)
		}
		sort.Strings(gotNames)
		want := naiveOutputs(rules, set, in, src, dst)
		if len(gotNames) > 0 && act != actForward {
			t.Fatalf("outputs %v with action %d", gotNames, act)
		}
		if !equal(gotNames, want) {
			t.Fatalf("rules %v, %s->%s in %v: got %v, naive %v", rules, src, dst, in, gotNames, want)
		}
	}
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
