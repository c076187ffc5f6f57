package bridge

import (
	"errors"
	"fmt"
	"sort"
	"strings"

	"vnet/bridge/ipfilter"
)

// MatchKind says how one side of a rule matches a MAC.
type MatchKind uint8

const (
	MatchAny   MatchKind = iota // any address
	MatchExact                  // exactly MAC
	MatchNot                    // any address but MAC
)

// Match is one side (source or destination) of a forwarding rule.
type Match struct {
	Kind MatchKind
	MAC  MAC
}

// Any matches every address.
var Any = Match{Kind: MatchAny}

// ParseMatch parses "any", a MAC, or "not:MAC".
func ParseMatch(s string) (Match, error) {
	s = strings.TrimSpace(s)
	switch {
	case strings.EqualFold(s, "any"):
		return Any, nil
	case strings.HasPrefix(strings.ToLower(s), "not:"):
		m, err := ParseMAC(s[4:])
		if err != nil {
			return Match{}, err
		}
		return Match{Kind: MatchNot, MAC: m}, nil
	}
	m, err := ParseMAC(s)
	if err != nil {
		return Match{}, fmt.Errorf("want any, a MAC or not:MAC: %w", err)
	}
	return Match{Kind: MatchExact, MAC: m}, nil
}

func (m Match) String() string {
	switch m.Kind {
	case MatchExact:
		return m.MAC.String()
	case MatchNot:
		return "not:" + m.MAC.String()
	}
	return "any"
}

func (m Match) matches(a MAC) bool {
	switch m.Kind {
	case MatchExact:
		return a == m.MAC
	case MatchNot:
		return a != m.MAC
	}
	return true
}

// TargetKind says whether a rule sends to a link or to a local port, or is
// an access rule.
type TargetKind uint8

const (
	TargetLink  TargetKind = iota // link:NAME, a star or fast-path link
	TargetPort                    // port:NAME, a VM-facing port
	TargetDeny                    // deny: drop the frame (counted as "denied")
	TargetAllow                   // allow: forward as if no rule matched (learning, flooding)
)

// Target is where a rule sends a frame: a switch port (link or port), or
// an access decision (deny, allow) that names none. Among the rules tied
// at the top score, deny wins, then allow; a more specific allow thus
// opens a hole in a wider deny ("any any -> deny" with "A B -> allow").
type Target struct {
	Kind TargetKind
	Name string
}

// ParseTarget parses "link:NAME", "port:NAME", "deny" or "allow".
func ParseTarget(s string) (Target, error) {
	switch strings.TrimSpace(s) {
	case "deny":
		return Target{Kind: TargetDeny}, nil
	case "allow":
		return Target{Kind: TargetAllow}, nil
	}
	kind, name, ok := strings.Cut(strings.TrimSpace(s), ":")
	if !ok || name == "" || strings.ContainsAny(name, " \t") {
		return Target{}, fmt.Errorf("malformed target %q (want link:NAME, port:NAME, deny or allow)", s)
	}
	switch kind {
	case "link":
		return Target{Kind: TargetLink, Name: name}, nil
	case "port":
		return Target{Kind: TargetPort, Name: name}, nil
	}
	return Target{}, fmt.Errorf("malformed target %q (want link:NAME, port:NAME, deny or allow)", s)
}

func (t Target) String() string {
	switch t.Kind {
	case TargetPort:
		return "port:" + t.Name
	case TargetDeny:
		return "deny"
	case TargetAllow:
		return "allow"
	}
	return "link:" + t.Name
}

// IsAccess reports whether t is deny or allow (it names no port).
func (t Target) IsAccess() bool { return t.Kind == TargetDeny || t.Kind == TargetAllow }

// Rule is a VNET forwarding rule: frames whose source matches Src and whose
// destination matches Dst go to To. An access rule (deny, allow) may also
// have an IP filter: then it matches only the IP frames the filter matches,
// and it ranks just above the same MACs without a filter.
type Rule struct {
	Src, Dst Match
	IP       ipfilter.Filter // zero: none
	To       Target
}

// ParseRuleFilter parses the fields of a rule with an IP filter in the
// text of package ipfilter ("" for none).
func ParseRuleFilter(src, dst, filter, to string) (Rule, error) {
	r, err := ParseRule(src, dst, to)
	if err != nil {
		return Rule{}, err
	}
	if r.IP, err = ipfilter.Parse(filter); err != nil {
		return Rule{}, err
	}
	if err := r.check(); err != nil {
		return Rule{}, err
	}
	return r, nil
}

func (r Rule) check() error {
	if !r.IP.IsZero() && !r.To.IsAccess() {
		return fmt.Errorf("rule %s: an IP filter needs the target deny or allow", r)
	}
	return nil
}

// ParseRule parses the three fields of a rule.
func ParseRule(src, dst, to string) (Rule, error) {
	s, err := ParseMatch(src)
	if err != nil {
		return Rule{}, fmt.Errorf("source: %w", err)
	}
	d, err := ParseMatch(dst)
	if err != nil {
		return Rule{}, fmt.Errorf("destination: %w", err)
	}
	t, err := ParseTarget(to)
	if err != nil {
		return Rule{}, err
	}
	return Rule{Src: s, Dst: d, To: t}, nil
}

func (r Rule) String() string {
	s := r.Src.String() + " " + r.Dst.String()
	if !r.IP.IsZero() {
		s += " " + r.IP.String()
	}
	return s + " -> " + r.To.String()
}

// scoreTable is VNET/P's priority of a (src, dst) match: the more specific,
// the higher. (any, not:MAC) is not in VNET/P's table; we give it the score
// of its mirror image (not:MAC, any).
var scoreTable = [3][3]int{
	//             dst: any  exact  not
	MatchAny:   {6, 6, 5},
	MatchExact: {8, 8, 7},
	MatchNot:   {5, 7, 3},
}

// Score is the priority of r by its MACs; zero if r does not match (src,
// dst). A rule with an IP filter ranks above every rule of the same score
// without one, below every rule of a higher score.
func (r *Rule) Score(src, dst MAC) int {
	if !r.Src.matches(src) || !r.Dst.matches(dst) {
		return 0
	}
	return scoreTable[r.Src.Kind][r.Dst.Kind]
}

// ValidateRules checks a rule set for duplicates. Whether a target names an
// existing link or port is the caller's business (the switch treats a rule
// whose port is absent as inactive, so traffic falls back to learning).
func ValidateRules(rules []Rule) error {
	seen := make(map[Rule]bool, len(rules))
	var errs []error
	for _, r := range rules {
		if err := r.check(); err != nil {
			errs = append(errs, err)
		}
		if seen[r] {
			errs = append(errs, fmt.Errorf("duplicate rule %s", r))
		}
		seen[r] = true
	}
	return errors.Join(errs...)
}

// ruleAction is what the top-scored rules decided.
type ruleAction int8

const (
	actNone    ruleAction = iota // no active rule matched
	actForward                   // to the rules' ports
	actDeny
	actAllow
)

// matchRules appends to outs the ports of every rule tied at the top score
// for (src, dst), skipping rules whose target port is absent or is in, and
// rules with an IP filter (matchFilters). It returns what they decided, the
// index of the first top rule (for its counter) and the top score; a deny or
// allow among them wins (see Target), and leaves outs as it was.
func matchRules(rules []Rule, set *portSet, in *portState, src, dst MAC, outs []*portState) ([]*portState, ruleAction, int, int) {
	best, hit := 0, -1
	start := len(outs)
	deny, allow := false, false
	for i := range rules {
		r := &rules[i]
		if !r.IP.IsZero() {
			continue // see matchFilters
		}
		sc := r.Score(src, dst)
		if sc == 0 || sc < best {
			continue
		}
		var p *portState
		if !r.To.IsAccess() {
			p = set.byName[r.To.Name]
			if p == nil || (r.To.Kind == TargetPort) != (p.role == RoleLocal) {
				continue
			}
		}
		if sc > best {
			best, hit = sc, i
			outs = outs[:start]
			deny, allow = false, false
		}
		switch {
		case r.To.Kind == TargetDeny:
			if !deny {
				hit = i
			}
			deny = true
		case r.To.Kind == TargetAllow:
			if !deny && !allow {
				hit = i
			}
			allow = true
		case p != in && !containsPort(outs[start:], p):
			outs = append(outs, p)
		}
	}
	switch {
	case best == 0:
		return outs, actNone, -1, 0
	case deny:
		return outs[:start], actDeny, hit, best
	case allow:
		return outs[:start], actAllow, hit, best
	}
	return outs, actForward, hit, best
}

func containsPort(ps []*portState, p *portState) bool {
	for _, q := range ps {
		if q == p {
			return true
		}
	}
	return false
}

// filterRule is a rule with an IP filter, compiled for the hot path.
type filterRule struct {
	src, dst Match
	score    int8 // its MAC score when they match
	deny     bool
	idx      int32 // in the rule set
	m        ipfilter.Matcher
}

// compileFilters lists the rules with an IP filter, most specific MACs
// first (in rule order within a score), for matchFilters.
func compileFilters(rules []Rule) []filterRule {
	var out []filterRule
	for i := range rules {
		r := &rules[i]
		if !r.IP.IsZero() {
			out = append(out, filterRule{src: r.Src, dst: r.Dst, score: int8(scoreTable[r.Src.Kind][r.Dst.Kind]),
				deny: r.To.Kind == TargetDeny, idx: int32(i), m: r.IP.Compile()})
		}
	}
	sort.SliceStable(out, func(a, b int) bool { return out[a].score > out[b].score })
	return out
}

// matchFilters decides frame d from src to dst by the rules with an IP
// filter (from compileFilters), given the MAC score best of the rules
// without one that matched (0: none). It returns actNone when no filter rule
// outranks them, else actDeny or actAllow and the deciding rule's index. It
// reads the frame's IP fields only when a rule could decide.
func matchFilters(fs []filterRule, src, dst MAC, best int, d []byte) (ruleAction, int) {
	var pkt ipfilter.Packet
	classified := false
	level, hit, deny := int8(0), -1, false
	for i := range fs {
		f := &fs[i]
		if int(f.score) < best || f.score < level {
			break
		}
		if !f.src.matches(src) || !f.dst.matches(dst) {
			continue
		}
		if !classified {
			if !ipfilter.Classify(d, &pkt) {
				return actNone, -1 // no filter matches a frame that is not IP
			}
			classified = true
		}
		if !f.m.Match(&pkt) {
			continue
		}
		level = f.score
		switch {
		case f.deny && !deny:
			deny, hit = true, int(f.idx)
		case hit < 0:
			hit = int(f.idx)
		}
	}
	switch {
	case hit < 0:
		return actNone, -1
	case deny:
		return actDeny, hit
	}
	return actAllow, hit
}

// filterCandidates lists the rules with an IP filter that may decide frames
// from src to dst over the rules without one (whose top MAC score is best),
// most specific first: what `vnet ctl route` reports as "depends on the
// packet".
func filterCandidates(fs []filterRule, src, dst MAC, best int) []int {
	var out []int
	for _, f := range fs {
		if int(f.score) < best {
			break
		}
		if f.src.matches(src) && f.dst.matches(dst) {
			out = append(out, int(f.idx))
		}
	}
	return out
}
