package topo

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"

	"vnet/bridge/ipfilter"
)

// SyntaxError is an error in the topology text, at a line.
type SyntaxError struct {
	Line int    // 1-based line number
	Msg  string // what is wrong, usually what was expected and what was found
}

func (e *SyntaxError) Error() string { return fmt.Sprintf("line %d: %s", e.Line, e.Msg) }

// keywords lists the line keywords, for the unknown-keyword error.
const keywords = "host, vm, link, rule"

// Parse reads a topology in the topology language (see the package
// documentation) and returns it in canonical form. On error the topology is
// nil and the error is a *[SyntaxError], or several joined with
// [errors.Join] (at most [MaxErrors], first line first; errors.As finds the
// first), or an error from r.
func Parse(r io.Reader) (*Topology, error) {
	p := parseState{
		vmAt:     make(map[string]VM),
		vmLine:   make(map[string]int),
		linkAt:   make(map[[2]string]Link),
		linkLine: make(map[[2]string]int),
	}
	br := bufio.NewReaderSize(r, MaxLineLen+1)
	for lineNo := 1; ; lineNo++ {
		line, err := br.ReadSlice('\n')
		if len(line) == 0 && err == io.EOF {
			break
		}
		if lineNo > MaxLines {
			p.fail(lineNo, fmt.Sprintf("too many lines (the limit is %d)", MaxLines))
			break
		}
		if err == bufio.ErrBufferFull {
			p.fail(lineNo, fmt.Sprintf("line too long (the limit is %d bytes)", MaxLineLen))
			break
		}
		if err != nil && err != io.EOF {
			return nil, fmt.Errorf("line %d: %w", lineNo, err)
		}
		p.line(lineNo, line)
		if len(p.errs) >= MaxErrors || err == io.EOF {
			break
		}
	}
	if len(p.errs) == 1 {
		return nil, p.errs[0]
	}
	if len(p.errs) > 1 {
		return nil, errors.Join(p.errs...)
	}
	p.t.Canonical()
	return &p.t, nil
}

// parseState holds the state of one Parse call.
type parseState struct {
	t    Topology
	errs []error
	// Each VM and each host pair's link as first seen, and on which line,
	// for conflict errors.
	vmAt     map[string]VM
	vmLine   map[string]int
	linkAt   map[[2]string]Link
	linkLine map[[2]string]int
}

func (p *parseState) fail(lineNo int, msg string) {
	p.errs = append(p.errs, &SyntaxError{Line: lineNo, Msg: msg})
}

// line parses one line and records its fact or its error.
func (p *parseState) line(lineNo int, raw []byte) {
	if i := bytes.IndexByte(raw, '#'); i >= 0 {
		raw = raw[:i]
	}
	raw = bytes.TrimSuffix(raw, []byte("\n"))
	// Only spaces and tabs separate fields ("\r" for CRLF files), not any
	// Unicode space, as the package doc promises.
	toks := strings.FieldsFunc(string(raw), func(c rune) bool { return c == ' ' || c == '\t' || c == '\r' })
	if len(toks) == 0 {
		return
	}
	l := &lineToks{toks: toks[1:]}
	var err error
	switch toks[0] {
	case "host":
		err = p.host(l)
	case "vm":
		err = p.vm(lineNo, l)
	case "link":
		err = p.link(lineNo, l)
	case "rule":
		err = p.rule(l)
	default:
		err = fmt.Errorf("unknown keyword %s, expected one of %s", quote(toks[0]), keywords)
	}
	if err != nil {
		p.fail(lineNo, err.Error())
	}
}

func (p *parseState) host(l *lineToks) error {
	h, err := l.next("a host name after `host`")
	if err != nil {
		return err
	}
	if err := checkHost(h); err != nil {
		return err
	}
	if err := l.end("the host name"); err != nil {
		return err
	}
	p.t.Hosts = append(p.t.Hosts, h)
	return nil
}

func (p *parseState) vm(lineNo int, l *lineToks) error {
	var v VM
	s, err := l.next("a MAC after `vm`")
	if err != nil {
		return err
	}
	if v.MAC, err = ParseMAC(s); err != nil {
		return err
	}
	if err := l.expect("on", "the MAC"); err != nil {
		return err
	}
	if v.Host, err = l.next("a host name after `on`"); err != nil {
		return err
	}
	if l.more() {
		if err := l.expect("port", "the host name"); err != nil {
			return err
		}
		if v.Port, err = l.next("a port name after `port`"); err != nil {
			return err
		}
		if err := l.end("the port name"); err != nil {
			return err
		}
	}
	if err := checkVM(v); err != nil {
		return err
	}
	if old, ok := p.vmAt[v.MAC]; ok {
		if old != v {
			return fmt.Errorf("%v (line %d says %s)", vmConflict(v, old), p.vmLine[v.MAC], old)
		}
		return nil
	}
	p.vmAt[v.MAC], p.vmLine[v.MAC] = v, lineNo
	p.t.VMs = append(p.t.VMs, v)
	return nil
}

func (p *parseState) link(lineNo int, l *lineToks) error {
	var k Link
	var err error
	if k.A, err = l.next("a host name after `link`"); err != nil {
		return err
	}
	if k.B, err = l.next("a second host name after the first"); err != nil {
		return err
	}
	if l.more() {
		if err := l.expect("kind", "the second host name"); err != nil {
			return err
		}
		if k.Kind, err = l.next("a link kind (tcp, udp or quic) after `kind`"); err != nil {
			return err
		}
		if err := l.end("the link kind"); err != nil {
			return err
		}
	}
	if err := checkLink(k); err != nil {
		return err
	}
	key := pairKey(k)
	if old, ok := p.linkAt[key]; ok {
		if old.Kind != k.Kind {
			return fmt.Errorf("%v (line %d says %s)", linkConflict(k, old), p.linkLine[key], old)
		}
		return nil
	}
	p.linkAt[key], p.linkLine[key] = k, lineNo
	p.t.Links = append(p.t.Links, k)
	return nil
}

func (p *parseState) rule(l *lineToks) error {
	var r Rule
	var err error
	if r.Host, err = l.next("a host name after `rule`"); err != nil {
		return err
	}
	if err := checkHost(r.Host); err != nil {
		return err
	}
	s, err := l.next("a source (a MAC, `any` or `not:MAC`) after the host name")
	if err != nil {
		return err
	}
	if r.Src, err = ParseMatch(s); err != nil {
		return fmt.Errorf("source: %w", err)
	}
	s, err = l.next("a destination (a MAC, `any` or `not:MAC`) after the source")
	if err != nil {
		return err
	}
	if r.Dst, err = ParseMatch(s); err != nil {
		return fmt.Errorf("destination: %w", err)
	}
	start := l.i
	for l.more() && l.toks[l.i] != "->" {
		l.i++
	}
	if !l.more() { // no arrow: say what was expected where
		l.i = start
		return l.expect("->", "destination")
	}
	if l.i > start {
		if r.Filter, err = ParseFilter(strings.Join(l.toks[start:l.i], " ")); err != nil {
			return err
		}
	}
	if err := l.expect("->", "the destination or filter"); err != nil {
		return err
	}
	s, err = l.next("a target (`link:NAME`, `port:NAME`, `deny` or `allow`) after `->`")
	if err != nil {
		return err
	}
	if r.To, err = ParseTarget(s); err != nil {
		return err
	}
	if err := l.end("the target"); err != nil {
		return err
	}
	if err := checkFilterTarget(r); err != nil {
		return err
	}
	p.t.Rules = append(p.t.Rules, r)
	return nil
}

// lineToks walks the fields of one line after its keyword.
type lineToks struct {
	toks []string
	i    int
}

func (l *lineToks) more() bool { return l.i < len(l.toks) }

// next returns the next field, or an error saying what was expected.
func (l *lineToks) next(what string) (string, error) {
	if !l.more() {
		return "", fmt.Errorf("expected %s, got end of line", what)
	}
	l.i++
	return l.toks[l.i-1], nil
}

// expect consumes the keyword word, which must follow after.
func (l *lineToks) expect(word, after string) error {
	s, err := l.next("`" + word + "` after " + after)
	if err != nil {
		return err
	}
	if s != word {
		return fmt.Errorf("expected `%s` after %s, got %s", word, after, quote(s))
	}
	return nil
}

// end checks that nothing follows after.
func (l *lineToks) end(after string) error {
	if l.more() {
		return fmt.Errorf("expected end of line after %s, got %s", after, quote(l.toks[l.i]))
	}
	return nil
}

// quote quotes a field for an error message, shortened so a hostile
// 4096-byte field does not flood the log.
func quote(s string) string {
	const max = 40
	if len(s) > max {
		return fmt.Sprintf("%q...", s[:max])
	}
	return fmt.Sprintf("%q", s)
}

// ParseMAC parses a 6-byte MAC written as six pairs of hex digits separated
// by ":" or by "-" (the same separator throughout), in any case, and returns
// it in lower-case colon form, e.g. "52:54:00:ab:cd:ef".
func ParseMAC(s string) (string, error) {
	const n = len("00:00:00:00:00:00")
	if len(s) != n {
		return "", fmt.Errorf("expected a MAC like 52:54:00:00:00:01, got %s", quote(s))
	}
	sep := s[2]
	if sep != ':' && sep != '-' {
		return "", fmt.Errorf("expected a MAC like 52:54:00:00:00:01, got %s", quote(s))
	}
	var b [n]byte
	for i := 0; i < n; i++ {
		c := s[i]
		if i%3 == 2 {
			if c != sep {
				return "", fmt.Errorf("expected a MAC like 52:54:00:00:00:01 (one kind of separator), got %s", quote(s))
			}
			b[i] = ':'
			continue
		}
		switch {
		case '0' <= c && c <= '9', 'a' <= c && c <= 'f':
		case 'A' <= c && c <= 'F':
			c += 'a' - 'A'
		default:
			return "", fmt.Errorf("expected a MAC like 52:54:00:00:00:01, got %s (%q is not a hex digit)", quote(s), c)
		}
		b[i] = c
	}
	return string(b[:]), nil
}

// ParseMatch parses one side of a rule: "any", a MAC (see [ParseMAC]) or
// "not:MAC", and returns it normalised.
func ParseMatch(s string) (string, error) {
	if s == "any" {
		return s, nil
	}
	if rest, ok := strings.CutPrefix(s, "not:"); ok {
		m, err := ParseMAC(rest)
		if err != nil {
			return "", fmt.Errorf("after `not:`: %w", err)
		}
		return "not:" + m, nil
	}
	m, err := ParseMAC(s)
	if err != nil {
		return "", fmt.Errorf("expected a MAC, `any` or `not:MAC`, got %s", quote(s))
	}
	return m, nil
}

// ParseTarget checks a rule target, "link:NAME", "port:NAME", or the
// access decisions "deny" and "allow", and returns it. It checks the syntax
// only, not that the link or port exists.
func ParseTarget(s string) (string, error) {
	if s == "deny" || s == "allow" {
		return s, nil
	}
	kind, name, ok := strings.Cut(s, ":")
	if !ok || (kind != "link" && kind != "port") {
		return "", fmt.Errorf("expected a target `link:NAME`, `port:NAME`, `deny` or `allow`, got %s", quote(s))
	}
	if err := checkName(kind+" name", name); err != nil {
		return "", err
	}
	return s, nil
}

// ParseFilter parses a rule's IP filter (see the package documentation)
// and returns it in canonical form; "" for none.
func ParseFilter(s string) (string, error) {
	f, err := ipfilter.Parse(s)
	if err != nil {
		return "", err
	}
	return f.String(), nil
}

// checkFilterTarget checks that only access rules have a filter.
func checkFilterTarget(r Rule) error {
	if r.Filter != "" && r.To != "deny" && r.To != "allow" {
		return fmt.Errorf("an IP filter needs the target `deny` or `allow`, got %s", quote(r.To))
	}
	return nil
}

// checkHost checks a host name.
func checkHost(h string) error {
	ok := len(h) >= 1 && len(h) <= MaxHostLen && isAlnum(h[0])
	for i := 1; ok && i < len(h); i++ {
		c := h[i]
		ok = isAlnum(c) || c == '_' || c == '.' || c == '-'
	}
	if !ok {
		return fmt.Errorf("expected a host name (1 to %d of A-Z a-z 0-9 _ . -, starting with a letter or digit), got %s",
			MaxHostLen, quote(h))
	}
	return nil
}

// checkName checks a port or link name; what says which.
func checkName(what, s string) error {
	ok := len(s) >= 1 && len(s) <= MaxNameLen && s[0] != '-'
	for i := 0; ok && i < len(s); i++ {
		c := s[i]
		ok = isAlnum(c) || c == '_' || c == '.' || c == '-' || c == '/'
	}
	if !ok {
		return fmt.Errorf("expected a %s (1 to %d of A-Z a-z 0-9 _ . - /, not starting with -), got %s",
			what, MaxNameLen, quote(s))
	}
	return nil
}

func isAlnum(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}

// checkVM checks one VM on its own (not against other VMs).
func checkVM(v VM) error {
	m, err := ParseMAC(v.MAC)
	if err != nil {
		return err
	}
	if m != v.MAC {
		return fmt.Errorf("vm MAC %s is not in lower-case colon form", quote(v.MAC))
	}
	if strings.IndexByte("13579bdf", m[1]) >= 0 { // first byte odd: a group address
		return fmt.Errorf("vm MAC %s is a multicast address, expected a unicast one", m)
	}
	if m == "00:00:00:00:00:00" {
		return fmt.Errorf("vm MAC %s is all zeros", m)
	}
	if err := checkHost(v.Host); err != nil {
		return err
	}
	if v.Port != "" {
		return checkName("port name", v.Port)
	}
	return nil
}

// checkLink checks one link on its own.
func checkLink(l Link) error {
	if err := checkHost(l.A); err != nil {
		return err
	}
	if err := checkHost(l.B); err != nil {
		return err
	}
	if l.A == l.B {
		return fmt.Errorf("link from host %s to itself, expected two different hosts", l.A)
	}
	if l.A == ProxyHost || l.B == ProxyHost {
		return fmt.Errorf("link to %q, expected two hosts (the proxy is reached by star links)", ProxyHost)
	}
	switch l.Kind {
	case KindDefault, KindTCP, KindUDP, KindQUIC:
		return nil
	}
	return fmt.Errorf("expected a link kind (tcp, udp or quic), got %s", quote(l.Kind))
}

// checkRule checks one rule, whose matches must already be normalised.
func checkRule(r Rule) error {
	if err := checkHost(r.Host); err != nil {
		return err
	}
	for _, m := range [2]struct{ side, s string }{{"source", r.Src}, {"destination", r.Dst}} {
		n, err := ParseMatch(m.s)
		if err != nil {
			return fmt.Errorf("%s: %w", m.side, err)
		}
		if n != m.s {
			return fmt.Errorf("%s %s is not in normal form (%s)", m.side, quote(m.s), n)
		}
	}
	if _, err := ParseTarget(r.To); err != nil {
		return err
	}
	n, err := ParseFilter(r.Filter)
	if err != nil {
		return err
	}
	if n != r.Filter {
		return fmt.Errorf("filter %s is not in normal form (%s)", quote(r.Filter), n)
	}
	return checkFilterTarget(r)
}

func vmConflict(v, old VM) error {
	if v.Host != old.Host {
		return fmt.Errorf("vm %s is on two hosts, %s and %s", v.MAC, old.Host, v.Host)
	}
	return fmt.Errorf("vm %s is on two ports of %s, %s and %s", v.MAC, v.Host, portOrNone(old.Port), portOrNone(v.Port))
}

func portOrNone(p string) string {
	if p == "" {
		return "(none)"
	}
	return p
}

func linkConflict(l, old Link) error {
	return fmt.Errorf("link %s has two kinds, %s and %s", l.Name(), kindOrDefault(old.Kind), kindOrDefault(l.Kind))
}

func kindOrDefault(k string) string {
	if k == "" {
		return "(default)"
	}
	return k
}
