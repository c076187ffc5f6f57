package bridge

import (
	"math/rand/v2"
	"sort"
	"testing"

	"vnet/bridge/ipfilter"
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

// TestFilterRulesAgainstNaive compares the switch's two-step decision for
// access rules (the cached MAC-only rules, then the rules with an IP filter)
// with a direct reading of the ranking: a matching rule scores twice its
// MAC score, plus one with a filter; deny wins the top score, then allow.
func TestFilterRulesAgainstNaive(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	macs := []MAC{{2, 0, 0, 0, 0, 1}, {2, 0, 0, 0, 0, 2}, {2, 0, 0, 0, 0, 3}}
	filters := []string{"", "", "ip", "proto tcp", "proto tcp port 22", "proto udp", "to 10.0.0.2", "ip6"}
	frames := [][]byte{}
	for _, proto := range []byte{6, 17, 1} {
		for _, port := range []byte{22, 80} {
			f := testFrame(macs[1], macs[0], 64)
			ip := f[14:]
			ip[0], ip[9] = 0x45, proto
			copy(ip[12:], []byte{10, 0, 0, 1, 10, 0, 0, byte(rng.IntN(3))})
			ip[23] = port
			frames = append(frames, f)
		}
	}
	arp := testFrame(macs[1], macs[0], 64)
	arp[12], arp[13] = 0x08, 0x06
	frames = append(frames, arp)
	s := New(Config{})
	set := s.ports.Load()
	for iter := 0; iter < 20000; iter++ {
		var rules []Rule
		for range rng.IntN(8) {
			to := []string{"deny", "allow"}[rng.IntN(2)]
			m := func() string {
				switch rng.IntN(3) {
				case 0:
					return "any"
				case 1:
					return macs[rng.IntN(len(macs))].String()
				}
				return "not:" + macs[rng.IntN(len(macs))].String()
			}
			r, err := ParseRuleFilter(m(), m(), filters[rng.IntN(len(filters))], to)
			if err != nil {
				t.Fatal(err)
			}
			rules = append(rules, r)
		}
		d := frames[rng.IntN(len(frames))]
		var src, dst MAC
		copy(dst[:], d[0:6])
		copy(src[:], d[6:12])
		_, act, hit, best := matchRules(rules, set, nil, src, dst, nil)
		if fa, fh := matchFilters(compileFilters(rules), src, dst, best, d); fa != actNone {
			act, hit = fa, fh
		}
		// Naive.
		var pkt ipfilter.Packet
		ipfilter.Classify(d, &pkt)
		top, want, wantHit := 0, actNone, -1
		for i := range rules {
			r := &rules[i]
			ms := r.Score(src, dst)
			if ms == 0 || !r.IP.Match(&pkt) {
				continue
			}
			sc := 2 * ms
			if !r.IP.IsZero() {
				sc++
			}
			isDeny := r.To.Kind == TargetDeny
			switch {
			case sc > top:
				top, wantHit = sc, i
				want = map[bool]ruleAction{true: actDeny, false: actAllow}[isDeny]
			case sc == top && isDeny && want != actDeny:
				want, wantHit = actDeny, i
			}
		}
		if act != want || (want != actNone && rules[hit] != rules[wantHit]) {
			t.Fatalf("rules %v, frame %x: got %d (rule %d), naive %d (rule %d)", rules, d[12:40], act, hit, want, wantHit)
		}
	}
}
