package bridge

import (
	"errors"
	"fmt"
	"strings"
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
// destination matches Dst go to To.
type Rule struct {
	Src, Dst Match
	To       Target
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

func (r Rule) String() string { return r.Src.String() + " " + r.Dst.String() + " -> " + r.To.String() }

// scoreTable is VNET/P's priority of a (src, dst) match: the more specific,
// the higher. (any, not:MAC) is not in VNET/P's table; we give it the score
// of its mirror image (not:MAC, any).
var scoreTable = [3][3]int{
	//             dst: any  exact  not
	MatchAny:   {6, 6, 5},
	MatchExact: {8, 8, 7},
	MatchNot:   {5, 7, 3},
}

// Score is the priority of r; zero if r does not match (src, dst).
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
// for (src, dst), skipping rules whose target port is absent or is in. It
// returns what they decided, and the index of the first top rule (for its
// counter); a deny or allow among them wins (see Target), and leaves outs
// as it was.
func matchRules(rules []Rule, set *portSet, in *portState, src, dst MAC, outs []*portState) ([]*portState, ruleAction, int) {
	best, hit := 0, -1
	start := len(outs)
	deny, allow := false, false
	for i := range rules {
		r := &rules[i]
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
		return outs, actNone, -1
	case deny:
		return outs[:start], actDeny, hit
	case allow:
		return outs[:start], actAllow, hit
	}
	return outs, actForward, hit
}

func containsPort(ps []*portState, p *portState) bool {
	for _, q := range ps {
		if q == p {
			return true
		}
	}
	return false
}
