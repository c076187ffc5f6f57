package topo

import (
	"bytes"
	"errors"
	"fmt"
	"go/parser"
	"go/token"
	"reflect"
	"strings"
	"testing"
)

const (
	mac1 = "52:54:00:00:00:01"
	mac2 = "52:54:00:00:00:02"
	mac3 = "52:54:00:00:00:03"
	mac9 = "52:54:00:00:00:09"
)

func mustParse(t testing.TB, s string) *Topology {
	t.Helper()
	top, err := Parse(strings.NewReader(s))
	if err != nil {
		t.Fatalf("Parse(%q): %v", s, err)
	}
	return top
}

func format(t testing.TB, top *Topology) string {
	t.Helper()
	var b bytes.Buffer
	if err := top.Format(&b); err != nil {
		t.Fatalf("Format(%+v): %v", top, err)
	}
	return b.String()
}

func TestParseValid(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want *Topology
	}{
		{"empty", "", &Topology{}},
		{"comments and blanks", "# nothing\n\n   \t\n# more\n", &Topology{}},
		{"brief example", `# vnet topology
host h1
host h2
vm 52:54:00:00:00:01 on h1 port tap0
vm 52:54:00:00:00:02 on h2
link h1 h2 kind tcp
rule h1 any 52:54:00:00:00:02 -> link:h1-h2
rule h2 not:52:54:00:00:00:09 any -> port:tap1
`, &Topology{
			Hosts: []string{"h1", "h2"},
			VMs:   []VM{{mac1, "h1", "tap0"}, {mac2, "h2", ""}},
			Links: []Link{{"h1", "h2", "tcp"}},
			Rules: []Rule{
				{"h1", "any", mac2, "link:h1-h2", ""},
				{"h2", "not:" + mac9, "any", "port:tap1", ""},
			},
		}},
		{"hosts implied, sorted", "rule proxy any any -> link:star-b\nvm 52:54:00:00:00:01 on c\nlink b a\n",
			&Topology{
				Hosts: []string{"a", "b", "c", "proxy"},
				VMs:   []VM{{mac1, "c", ""}},
				Links: []Link{{"a", "b", ""}},
				Rules: []Rule{{"proxy", "any", "any", "link:star-b", ""}},
			}},
		{"macs normalised", "vm 52-54-00-AB-cd-EF on h1\nrule h1 52-54-00-00-00-0A not:52:54:00:00:00:0B -> port:p\n",
			&Topology{
				Hosts: []string{"h1"},
				VMs:   []VM{{"52:54:00:ab:cd:ef", "h1", ""}},
				Rules: []Rule{{"h1", "52:54:00:00:00:0a", "not:52:54:00:00:00:0b", "port:p", ""}},
			}},
		{"duplicates merged, link reversed", "host h1\nhost h1\nlink h1 h2 kind udp\nlink h2 h1 kind udp\n" +
			"vm 52:54:00:00:00:01 on h1\nvm 52:54:00:00:00:01 on h1\n" +
			"rule h1 any any -> port:a\nrule h1 any any -> port:a\n",
			&Topology{
				Hosts: []string{"h1", "h2"},
				VMs:   []VM{{mac1, "h1", ""}},
				Links: []Link{{"h1", "h2", "udp"}},
				Rules: []Rule{{"h1", "any", "any", "port:a", ""}},
			}},
		{"fan-out rules kept", "rule h1 any any -> port:a\nrule h1 any any -> port:b\n",
			&Topology{
				Hosts: []string{"h1"},
				Rules: []Rule{{"h1", "any", "any", "port:a", ""}, {"h1", "any", "any", "port:b", ""}},
			}},
		{"not on both sides", "rule h1 not:52:54:00:00:00:01 not:52:54:00:00:00:02 -> link:x\n",
			&Topology{
				Hosts: []string{"h1"},
				Rules: []Rule{{"h1", "not:" + mac1, "not:" + mac2, "link:x", ""}},
			}},
		{"tabs, CRLF, trailing comment, no final newline",
			"host\th1 # the first\r\nlink  h1\th2   kind quic#fast\r\nvm 52:54:00:00:00:01 on h1 port /run/vm1.sock",
			&Topology{
				Hosts: []string{"h1", "h2"},
				VMs:   []VM{{mac1, "h1", "/run/vm1.sock"}},
				Links: []Link{{"h1", "h2", "quic"}},
			}},
		{"odd but valid names", "host A.b_c-9\nrule 0x any any -> port:_.-/\n",
			&Topology{
				Hosts: []string{"0x", "A.b_c-9"},
				Rules: []Rule{{"0x", "any", "any", "port:_.-/", ""}},
			}},
		{"ip filters normalised", "rule h1 any any port 22 proto tcp to 10.0.0.7/24 -> deny\n" +
			"rule h1 any any proto icmpv6 -> allow\nrule h1 any any ip -> deny\n",
			&Topology{
				Hosts: []string{"h1"},
				Rules: []Rule{{"h1", "any", "any", "deny", "ip"}, {"h1", "any", "any", "deny", "ip4 proto tcp to 10.0.0.0/24 port 22"},
					{"h1", "any", "any", "allow", "ip6 proto icmpv6"}},
			}},
		{"vm locally administered", "vm 02:00:00:00:00:01 on h1\n",
			&Topology{Hosts: []string{"h1"}, VMs: []VM{{"02:00:00:00:00:01", "h1", ""}}}},
		{"vm on proxy", "vm 52:54:00:00:00:01 on proxy port lan\n",
			&Topology{Hosts: []string{"proxy"}, VMs: []VM{{mac1, "proxy", "lan"}}}},
		{"longest host name", "host " + strings.Repeat("h", MaxHostLen) + "\n",
			&Topology{Hosts: []string{strings.Repeat("h", MaxHostLen)}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := mustParse(t, tt.in)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Parse:\n got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestParseInvalid(t *testing.T) {
	tests := []struct {
		name string
		in   string
		line int
		want string // substring of the error
	}{
		{"unknown keyword", "host h1\n\nhots h2\n", 3, `unknown keyword "hots", expected one of host, vm, link, rule`},
		{"unicode space is not a separator", "host\u00a0h1\n", 1, `unknown keyword "host\u00a0h1"`},
		{"keyword case", "HOST h1\n", 1, `unknown keyword "HOST"`},
		{"arrow missing", "host h1\n# c\nrule h1 any any foo port:x\n", 3, "expected `->` after destination, got \"foo\""},
		{"bad filter word", "rule h1 any any foo -> deny\n", 1, `filter: unknown word "foo"`},
		{"filter on a forwarding rule", "rule h1 any any proto tcp -> link:h1-h2\n", 1, "an IP filter needs the target `deny` or `allow`"},
		{"filter port without proto", "rule h1 any any port 22 -> deny\n", 1, "`port` needs `proto tcp`"},
		{"filter families", "rule h1 any any from 10.0.0.1 to fd77::1 -> deny\n", 1, "write two rules"},
		{"filter bad prefix", "rule h1 any any to 10.0.0.0/33 -> deny\n", 1, "expected an address or ADDR/LEN"},
		{"arrow at end", "rule h1 any any\n", 1, "expected `->` after destination, got end of line"},
		{"no target", "rule h1 any any ->\n", 1, "expected a target (`link:NAME`, `port:NAME`, `deny` or `allow`) after `->`, got end of line"},
		{"bad target", "rule h1 any any -> vm:x\n", 1, "expected a target `link:NAME`, `port:NAME`, `deny` or `allow`, got \"vm:x\""},
		{"empty target name", "rule h1 any any -> link:\n", 1, "expected a link name"},
		{"target after", "rule h1 any any -> link:x y\n", 1, "expected end of line after the target, got \"y\""},
		{"bad source", "rule h1 anything any -> link:x\n", 1, "source: expected a MAC, `any` or `not:MAC`, got \"anything\""},
		{"bad destination", "rule h1 any not:ff:ff -> link:x\n", 1, "destination: after `not:`: expected a MAC"},
		{"no source", "rule h1\n", 1, "expected a source (a MAC, `any` or `not:MAC`) after the host name, got end of line"},
		{"rule bad host", "rule -h1 any any -> link:x\n", 1, "expected a host name"},
		{"no host", "host\n", 1, "expected a host name after `host`, got end of line"},
		{"host extra", "host h1 h2\n", 1, "expected end of line after the host name, got \"h2\""},
		{"host bad char", "host h1!\n", 1, `expected a host name (1 to 63 of A-Z a-z 0-9 _ . -, starting with a letter or digit), got "h1!"`},
		{"host too long", "host " + strings.Repeat("h", MaxHostLen+1) + "\n", 1, "expected a host name"},
		{"host leading dot", "host .h\n", 1, "expected a host name"},
		{"vm no mac", "vm\n", 1, "expected a MAC after `vm`, got end of line"},
		{"vm bad mac", "vm 52:54:00:00:00 on h1\n", 1, `expected a MAC like 52:54:00:00:00:01, got "52:54:00:00:00"`},
		{"vm mixed separators", "vm 52:54-00:00:00:01 on h1\n", 1, "one kind of separator"},
		{"vm non-hex", "vm 52:54:00:00:00:0g on h1\n", 1, "is not a hex digit"},
		{"vm no on", "vm 52:54:00:00:00:01 h1\n", 1, "expected `on` after the MAC, got \"h1\""},
		{"vm no host", "vm 52:54:00:00:00:01 on\n", 1, "expected a host name after `on`, got end of line"},
		{"vm junk", "vm 52:54:00:00:00:01 on h1 tap0\n", 1, "expected `port` after the host name, got \"tap0\""},
		{"vm no port", "vm 52:54:00:00:00:01 on h1 port\n", 1, "expected a port name after `port`, got end of line"},
		{"vm port extra", "vm 52:54:00:00:00:01 on h1 port a b\n", 1, "expected end of line after the port name, got \"b\""},
		{"vm bad port", "vm 52:54:00:00:00:01 on h1 port -x\n", 1, "expected a port name"},
		{"vm multicast", "vm 01:00:5e:00:00:01 on h1\n", 1, "multicast"},
		{"vm broadcast", "vm ff:ff:ff:ff:ff:ff on h1\n", 1, "multicast"},
		{"vm ipv6 multicast", "vm 33:33:00:00:00:01 on h1\n", 1, "multicast"},
		{"vm zero", "vm 00:00:00:00:00:00 on h1\n", 1, "all zeros"},
		{"vm on two hosts", "vm 52:54:00:00:00:01 on h1\n\nvm 52-54-00-00-00-01 on h2\n", 3,
			"vm 52:54:00:00:00:01 is on two hosts, h1 and h2 (line 1 says vm 52:54:00:00:00:01 on h1)"},
		{"vm on two ports", "vm 52:54:00:00:00:01 on h1 port a\nvm 52:54:00:00:00:01 on h1\n", 2,
			"is on two ports of h1, a and (none)"},
		{"link to itself", "link h1 h1\n", 1, "link from host h1 to itself"},
		{"link to proxy", "link proxy h1\n", 1, `link to "proxy"`},
		{"link one host", "link h1\n", 1, "expected a second host name after the first, got end of line"},
		{"link no kind keyword", "link h1 h2 tcp\n", 1, "expected `kind` after the second host name, got \"tcp\""},
		{"link no kind", "link h1 h2 kind\n", 1, "expected a link kind (tcp, udp or quic) after `kind`, got end of line"},
		{"link bad kind", "link h1 h2 kind sctp\n", 1, `expected a link kind (tcp, udp or quic), got "sctp"`},
		{"link two kinds", "link h1 h2 kind tcp\nlink h2 h1\n", 2, "link h1-h2 has two kinds, tcp and (default) (line 1 says link h1 h2 kind tcp)"},
		{"link extra", "link h1 h2 kind tcp x\n", 1, "expected end of line after the link kind, got \"x\""},
		{"long field quoted short", "host " + strings.Repeat("x", 1000) + "!\n", 1, `"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"...`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			top, err := Parse(strings.NewReader(tt.in))
			if err == nil {
				t.Fatalf("Parse(%q) = %+v, want an error", tt.in, top)
			}
			if top != nil {
				t.Errorf("Parse returned a topology with its error")
			}
			var se *SyntaxError
			if !errors.As(err, &se) {
				t.Fatalf("error %v is not a *SyntaxError", err)
			}
			if se.Line != tt.line {
				t.Errorf("error %q: line %d, want %d", err, se.Line, tt.line)
			}
			if prefix := fmt.Sprintf("line %d: ", tt.line); !strings.HasPrefix(err.Error(), prefix) {
				t.Errorf("error %q does not start with %q", err, prefix)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not mention %q", err, tt.want)
			}
		})
	}
}

func TestParseSeveralErrors(t *testing.T) {
	in := "host h1\nbogus\nhost h1 x\nlink h1 h1\n"
	_, err := Parse(strings.NewReader(in))
	if err == nil {
		t.Fatal("no error")
	}
	lines := strings.Split(err.Error(), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "line 2:") ||
		!strings.HasPrefix(lines[1], "line 3:") || !strings.HasPrefix(lines[2], "line 4:") {
		t.Errorf("error = %q, want one line each for lines 2, 3, 4", err)
	}

	// Errors stop at MaxErrors.
	_, err = Parse(strings.NewReader(strings.Repeat("bogus\n", 1000)))
	if n := strings.Count(err.Error(), "\n") + 1; n != MaxErrors {
		t.Errorf("%d errors reported, want %d", n, MaxErrors)
	}
}

func TestParseLimits(t *testing.T) {
	okLine := "# " + strings.Repeat("x", MaxLineLen-2) // exactly MaxLineLen bytes
	if _, err := Parse(strings.NewReader(okLine + "\nhost h1\n")); err != nil {
		t.Errorf("line of MaxLineLen bytes: %v", err)
	}
	if _, err := Parse(strings.NewReader(okLine)); err != nil {
		t.Errorf("last line of MaxLineLen bytes without newline: %v", err)
	}
	_, err := Parse(strings.NewReader("host h1\n" + okLine + "x\nhost h2\n"))
	if err == nil || err.Error() != fmt.Sprintf("line 2: line too long (the limit is %d bytes)", MaxLineLen) {
		t.Errorf("long line: err = %v", err)
	}
	_, err = Parse(strings.NewReader(okLine + "x"))
	if err == nil || !strings.Contains(err.Error(), "line 1: line too long") {
		t.Errorf("long last line: err = %v", err)
	}

	many := strings.Repeat("host h1\n", MaxLines)
	if _, err := Parse(strings.NewReader(many)); err != nil {
		t.Errorf("MaxLines lines: %v", err)
	}
	_, err = Parse(strings.NewReader(many + "\n"))
	if err == nil || err.Error() != fmt.Sprintf("line %d: too many lines (the limit is %d)", MaxLines+1, MaxLines) {
		t.Errorf("MaxLines+1 lines: err = %v", err)
	}
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("boom") }

func TestParseReadError(t *testing.T) {
	_, err := Parse(errReader{})
	if err == nil || !strings.Contains(err.Error(), "boom") {
		t.Errorf("err = %v, want the reader's error", err)
	}
}

const canonicalText = `# vnet topology

host h1
host h2
host proxy

vm 52:54:00:00:00:01 on h1 port tap0
vm 52:54:00:00:00:02 on h2

link h1 h2 kind tcp

rule h1 any 52:54:00:00:00:02 -> link:h1-h2
rule h2 not:52:54:00:00:00:09 any -> port:tap1
rule proxy any 52:54:00:00:00:01 -> link:star-h1
`

func TestFormat(t *testing.T) {
	// Out of order, duplicated, other spellings: Format writes canonicalText.
	top := &Topology{
		Rules: []Rule{
			{"proxy", "any", "52-54-00-00-00-01", "link:star-h1", ""},
			{"h2", "not:52:54:00:00:00:09", "any", "port:tap1", ""},
			{"h1", "any", mac2, "link:h1-h2", ""},
			{"h1", "any", mac2, "link:h1-h2", ""},
		},
		Links: []Link{{"h2", "h1", "tcp"}},
		VMs:   []VM{{mac2, "h2", ""}, {"52:54:00:00:00:01", "h1", "tap0"}},
		Hosts: []string{"h2"},
	}
	before := top.Clone()
	if got := format(t, top); got != canonicalText {
		t.Errorf("Format:\n%s\nwant\n%s", got, canonicalText)
	}
	if !reflect.DeepEqual(top, before) {
		t.Errorf("Format modified its topology: %+v, was %+v", top, before)
	}
	if got := format(t, &Topology{}); got != Header+"\n" {
		t.Errorf("Format(empty) = %q", got)
	}
}

func TestFormatRejectsInvalid(t *testing.T) {
	tests := []struct {
		top  Topology
		want string
	}{
		{Topology{Links: []Link{{"h1", "h1", ""}}}, "to itself"},
		{Topology{Links: []Link{{"h1", "proxy", ""}}}, "proxy"},
		{Topology{Links: []Link{{"h1", "h2", "tcp"}, {"h2", "h1", "udp"}}}, "two kinds"},
		{Topology{Links: []Link{{"h1", "h2", "TCP"}}}, "link kind"},
		{Topology{VMs: []VM{{mac1, "h1", ""}, {mac1, "h2", ""}}}, "two hosts"},
		{Topology{VMs: []VM{{"nope", "h1", ""}}}, "expected a MAC"},
		{Topology{VMs: []VM{{mac1, "h 1", ""}}}, "host name"},
		{Topology{VMs: []VM{{mac1, "h1", "a#b"}}}, "port name"},
		{Topology{Hosts: []string{""}}, "host name"},
		{Topology{Rules: []Rule{{"h1", "any", "any", "link:a b", ""}}}, "link name"},
		{Topology{Rules: []Rule{{"h1", "all", "any", "link:x", ""}}}, "source"},
		{Topology{Rules: []Rule{{"h1", "any", "any", "", ""}}}, "target"},
	}
	for _, tt := range tests {
		var b bytes.Buffer
		err := tt.top.Format(&b)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Format(%+v) error = %v, want one mentioning %q", tt.top, err, tt.want)
		}
		if b.Len() != 0 {
			t.Errorf("Format(%+v) wrote %q before failing", tt.top, b.String())
		}
	}
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

func TestFormatWriteError(t *testing.T) {
	if err := mustParse(t, canonicalText).Format(failWriter{}); err == nil || err.Error() != "disk full" {
		t.Errorf("err = %v, want the writer's error", err)
	}
}

// checkRoundTrip checks that top (from Parse) formats to text that parses
// to an equal topology, and that formatting is a fixed point.
func checkRoundTrip(t testing.TB, top *Topology) {
	t.Helper()
	text := format(t, top)
	again, err := Parse(strings.NewReader(text))
	if err != nil {
		t.Fatalf("Parse(Format(t)) failed: %v\n%s", err, text)
	}
	if !reflect.DeepEqual(again, top) {
		t.Fatalf("Parse(Format(t)) != t:\n got %+v\nwant %+v\ntext:\n%s", again, top, text)
	}
	if text2 := format(t, again); text2 != text {
		t.Fatalf("Format is not a fixed point:\n%s\nthen\n%s", text, text2)
	}
	if d := Diff(top, again); len(d) != 0 {
		t.Fatalf("Diff(t, Parse(Format(t))) = %v, want none", d)
	}
}

func TestRoundTrip(t *testing.T) {
	for _, s := range []string{
		"",
		canonicalText,
		docExample(t),
		"link b a\nlink c a kind udp\nrule x 52-54-00-00-00-0A any -> port:p # hi\nvm 52:54:00:AA:00:01 on y",
	} {
		checkRoundTrip(t, mustParse(t, s))
	}
	if got := format(t, mustParse(t, canonicalText)); got != canonicalText {
		t.Errorf("canonical text is not a fixed point:\n%s", got)
	}
}

// docExample returns the example in the package documentation.
func docExample(t testing.TB) string {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), "topo.go", nil, parser.ParseComments|parser.PackageClauseOnly)
	if err != nil {
		t.Fatal(err)
	}
	if f.Doc == nil {
		t.Fatal("package topo has no doc comment")
	}
	doc := f.Doc.Text()
	_, after, ok := strings.Cut(doc, "\n# Example\n")
	if !ok {
		t.Fatal("package doc has no # Example section")
	}
	var b strings.Builder
	for _, line := range strings.Split(after, "\n") {
		if strings.HasPrefix(line, "# ") { // next heading
			break
		}
		if s, ok := strings.CutPrefix(line, "\t"); ok {
			b.WriteString(s)
		}
		if line == "" || strings.HasPrefix(line, "\t") {
			b.WriteString("\n")
		}
	}
	return strings.TrimSpace(b.String()) + "\n"
}

// TestPackageDoc checks that the package is documented and that the
// example users read is valid and canonical.
func TestPackageDoc(t *testing.T) {
	ex := docExample(t)
	if !strings.HasPrefix(ex, Header+"\n") || strings.Count(ex, "\n") < 10 {
		t.Fatalf("doc example looks wrong:\n%s", ex)
	}
	top := mustParse(t, ex)
	if got := format(t, top); got != ex {
		t.Errorf("doc example is not in canonical form; Format gives\n%s", got)
	}
	if len(top.Hosts) == 0 || len(top.VMs) == 0 || len(top.Links) == 0 || len(top.Rules) == 0 {
		t.Errorf("doc example does not show every kind of line: %+v", top)
	}
}

func TestParseMAC(t *testing.T) {
	for in, want := range map[string]string{
		"52:54:00:00:00:01":       "52:54:00:00:00:01",
		"52-54-00-AB-CD-EF":       "52:54:00:ab:cd:ef",
		"FF:ff:Ff:fF:00:99":       "ff:ff:ff:ff:00:99",
		"":                        "",
		"52:54:00:00:00:1":        "",
		"52:54:00:00:00:001":      "",
		"52:54:00:00:00-01":       "",
		"52.54.00.00.00.01":       "",
		"5254.0000.0001":          "",
		"52:54:00:00:00:0x":       "",
		"52:54:00:00:00:01:02:03": "",
		" 52:54:00:00:00:01":      "",
	} {
		got, err := ParseMAC(in)
		if want == "" {
			if err == nil {
				t.Errorf("ParseMAC(%q) = %q, want an error", in, got)
			}
			continue
		}
		if err != nil || got != want {
			t.Errorf("ParseMAC(%q) = %q, %v, want %q", in, got, err, want)
		}
	}
}

func TestParseMatchAndTarget(t *testing.T) {
	for in, want := range map[string]string{
		"any":                   "any",
		"ANY":                   "",
		"not:52-54-00-00-00-0A": "not:52:54:00:00:00:0a",
		"52-54-00-00-00-0A":     "52:54:00:00:00:0a",
		"not:any":               "",
		"not:":                  "",
		"not: ":                 "",
		"":                      "",
	} {
		got, err := ParseMatch(in)
		if (err == nil) != (want != "") || got != want {
			t.Errorf("ParseMatch(%q) = %q, %v, want %q", in, got, err, want)
		}
	}
	for in, ok := range map[string]bool{
		"link:h1-h2":       true,
		"deny":             true,
		"allow":            true,
		"DENY":             false,
		"deny:x":           false,
		"link:star-h1":     true,
		"port:tap0":        true,
		"port:/run/q.sock": true,
		"port:":            false,
		"port:-x":          false,
		"port:a:b":         false,
		"link":             false,
		"LINK:x":           false,
		"host:x":           false,
		"port:" + strings.Repeat("p", MaxNameLen):   true,
		"port:" + strings.Repeat("p", MaxNameLen+1): false,
	} {
		got, err := ParseTarget(in)
		if (err == nil) != ok || ok && got != in {
			t.Errorf("ParseTarget(%q) = %q, %v, want ok=%v", in, got, err, ok)
		}
	}
}

func TestLinkNames(t *testing.T) {
	if got := (Link{A: "h2", B: "h1"}).Name(); got != "h1-h2" {
		t.Errorf("Name = %q", got)
	}
	if got := (Link{A: "h1", B: "h2"}).Name(); got != "h1-h2" {
		t.Errorf("Name = %q", got)
	}
	if got := StarLinkName("h3"); got != "star-h3" {
		t.Errorf("StarLinkName = %q", got)
	}
}

func TestDiff(t *testing.T) {
	base := `
vm 52:54:00:00:00:01 on h1 port tap0
vm 52:54:00:00:00:02 on h2
link h1 h2 kind tcp
rule h1 any 52:54:00:00:00:02 -> link:h1-h2
`
	tests := []struct {
		name          string
		live, desired string
		want          []string // Change.String of each change, in order
	}{
		{"equal", base, base, nil},
		{"both empty", "", "", nil},
		{"equal up to spelling and order", base,
			"rule h1 any 52-54-00-00-00-02 -> link:h1-h2\nlink h2 h1 kind tcp\n" +
				"vm 52:54:00:00:00:02 on h2\nvm 52:54:00:00:00:01 on h1 port tap0\n", nil},
		{"symmetric link names", "link h2 h1\n", "link h1 h2\n", nil},
		{"hosts are never changed", "host a\nhost b\n", "host c\n", nil},
		{"vms only in live are kept", base, "link h1 h2 kind tcp\nrule h1 any 52:54:00:00:00:02 -> link:h1-h2\n", nil},
		{"default kind matches any live kind", base, strings.Replace(base, " kind tcp", "", 1), nil},
		{"default port matches any live port", base, strings.Replace(base, " port tap0", "", 1), nil},
		{"link add", base, base + "link h3 h1 kind udp\n", []string{"+ link h1 h3 kind udp"}},
		{"link del", base + "link h1 h3\n", base, []string{"- link h1 h3"}},
		{"link kind change", base, strings.Replace(base, "kind tcp", "kind quic", 1),
			[]string{"- link h1 h2 kind tcp", "+ link h1 h2 kind quic"}},
		{"rule add", base, base + "rule h2 any 52:54:00:00:00:01 -> link:h1-h2\n",
			[]string{"+ rule h2 any 52:54:00:00:00:01 -> link:h1-h2"}},
		{"rule del", base, strings.Replace(base, "rule h1 any 52:54:00:00:00:02 -> link:h1-h2\n", "", 1),
			[]string{"- rule h1 any 52:54:00:00:00:02 -> link:h1-h2"}},
		{"rule target change", base, strings.Replace(base, "-> link:h1-h2", "-> link:star-h1", 1),
			[]string{"- rule h1 any 52:54:00:00:00:02 -> link:h1-h2", "+ rule h1 any 52:54:00:00:00:02 -> link:star-h1"}},
		{"vm move", base, strings.Replace(base, "00:02 on h2", "00:02 on h3", 1),
			[]string{"~ vm 52:54:00:00:00:02 h2 -> h3"}},
		{"vm move with ports", base, strings.Replace(base, "on h1 port tap0", "on h2 port tap5", 1),
			[]string{"~ vm 52:54:00:00:00:01 h1 port tap0 -> h2 port tap5"}},
		{"vm port change", base, strings.Replace(base, "port tap0", "port tap1", 1),
			[]string{"~ vm 52:54:00:00:00:01 h1 port tap0 -> h1 port tap1"}},
		{"vm add", base, base + "vm 52:54:00:00:00:03 on h3\n", []string{"+ vm 52:54:00:00:00:03 on h3"}},
		{"order: rule dels, link dels, moves, vm adds, link adds, rule adds",
			"link a b\nlink c d\nrule a any any -> link:a-b\nrule z any any -> port:p\nvm 52:54:00:00:00:01 on a\n",
			"link c d\nlink a e\nlink a c\nrule b any any -> link:a-e\nrule a any any -> link:a-e\nvm 52:54:00:00:00:01 on b\nvm 52:54:00:00:00:02 on a\n",
			[]string{
				"- rule a any any -> link:a-b",
				"- rule z any any -> port:p",
				"- link a b",
				"~ vm 52:54:00:00:00:01 a -> b",
				"+ vm 52:54:00:00:00:02 on a",
				"+ link a c",
				"+ link a e",
				"+ rule a any any -> link:a-e",
				"+ rule b any any -> link:a-e",
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			live, desired := mustParse(t, tt.live), mustParse(t, tt.desired)
			liveCopy, desiredCopy := live.Clone(), desired.Clone()
			var got []string
			for _, c := range Diff(live, desired) {
				got = append(got, c.String())
				if n := btoi(c.Link != nil) + btoi(c.Rule != nil) + btoi(c.VM != nil); n != 1 {
					t.Errorf("change %v sets %d of Link, Rule, VM", c, n)
				}
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Diff:\n got %q\nwant %q", got, tt.want)
			}
			if !reflect.DeepEqual(live, liveCopy) || !reflect.DeepEqual(desired, desiredCopy) {
				t.Errorf("Diff modified its arguments")
			}
		})
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

func TestDiffApplied(t *testing.T) {
	// Applying the changes to live gives a topology whose diff to desired
	// is empty, and which agrees with desired on links and rules.
	live := mustParse(t, "link a b\nlink b c kind udp\nrule a any any -> link:a-b\nvm 52:54:00:00:00:01 on a\nvm 52:54:00:00:00:05 on c\n")
	desired := mustParse(t, "link a c kind tcp\nlink c b\nrule a any not:52:54:00:00:00:01 -> link:a-c\nvm 52:54:00:00:00:01 on b port p\nvm 52:54:00:00:00:02 on c\n")
	got := apply(live, Diff(live, desired))
	if d := Diff(got, desired); len(d) != 0 {
		t.Errorf("after applying, Diff = %v", d)
	}
	if !reflect.DeepEqual(got.Rules, desired.Rules) {
		t.Errorf("rules after applying: %v, want %v", got.Rules, desired.Rules)
	}
	if want := []VM{{mac1, "b", "p"}, {mac2, "c", ""}, {"52:54:00:00:00:05", "c", ""}}; !reflect.DeepEqual(got.VMs, want) {
		t.Errorf("vms after applying: %v, want %v", got.VMs, want)
	}
}

// apply is a naive reference for what a daemon does with a diff.
func apply(t *Topology, changes []Change) *Topology {
	out := t.Clone()
	for _, c := range changes {
		switch {
		case c.Link != nil && c.Op == OpAdd:
			out.Links = append(out.Links, *c.Link)
		case c.Link != nil && c.Op == OpDel:
			out.Links = remove(out.Links, *c.Link)
		case c.Rule != nil && c.Op == OpAdd:
			out.Rules = append(out.Rules, *c.Rule)
		case c.Rule != nil && c.Op == OpDel:
			out.Rules = remove(out.Rules, *c.Rule)
		case c.VM != nil && c.Op == OpMove:
			out.VMs = append(remove(out.VMs, *c.From), *c.VM)
		case c.VM != nil && c.Op == OpAdd:
			out.VMs = append(out.VMs, *c.VM)
		}
	}
	out.Canonical()
	return out
}

func remove[T comparable](s []T, v T) []T {
	var out []T
	for _, x := range s {
		if x != v {
			out = append(out, x)
		}
	}
	return out
}

func TestCanonicalAndEqual(t *testing.T) {
	a := &Topology{
		Hosts: []string{"b", "a", "b"},
		Links: []Link{{"b", "a", ""}, {"a", "b", ""}},
		VMs:   []VM{{"52-54-00-00-00-0A", "c", ""}},
		Rules: []Rule{{"a", "not:52-54-00-00-00-0A", "any", "port:x", ""}},
	}
	b := mustParse(t, "link a b\nvm 52:54:00:00:00:0a on c\nrule a not:52:54:00:00:00:0a any -> port:x\n")
	if !a.Equal(b) || !b.Equal(a) {
		t.Errorf("Equal = false for\n%+v\n%+v", a, b)
	}
	a.Canonical()
	if !reflect.DeepEqual(a, b) {
		t.Errorf("Canonical:\n got %+v\nwant %+v", a, b)
	}
	if a.Equal(&Topology{}) {
		t.Error("Equal(empty) = true")
	}
	var empty Topology
	empty.Canonical()
	if !reflect.DeepEqual(empty, Topology{}) {
		t.Errorf("Canonical(empty) = %+v", empty)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(canonicalText))
	f.Add([]byte("link h2 h1 kind udp\nrule h1 52-54-00-00-00-0A not:52:54:00:00:00:0B -> port:p # c\r\n"))
	f.Add([]byte("vm 52:54:00:00:00:01 on h1\nvm 52:54:00:00:00:01 on h2\n"))
	f.Add([]byte("rule h1 any any foo port:x\n"))
	f.Add([]byte("rule h1 any 52:54:00:00:00:02 proto tcp from 10.0.0.0/24 to 10.0.0.5 port 22-23 -> deny\n"))
	f.Add([]byte("rule h1 any any ip6 proto 47 from fd77::/64 -> allow\nrule h1 any any ip -> deny\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		top, err := Parse(bytes.NewReader(in))
		if err != nil {
			if top != nil {
				t.Fatal("Parse returned a topology with its error")
			}
			if !strings.HasPrefix(err.Error(), "line ") {
				t.Fatalf("error %q does not name a line", err)
			}
			return
		}
		if err := top.Validate(); err != nil {
			t.Fatalf("Parse result does not validate: %v", err)
		}
		checkRoundTrip(t, top)
	})
}
