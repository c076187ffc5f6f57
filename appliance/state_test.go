package appliance

import (
	"os"
	"path/filepath"
	"testing"

	"vnet/tunnel"
)

func FuzzParseState(f *testing.F) {
	f.Add([]byte(`{"version":1,"hosts":["h1","h2"],"links":[{"a":"h1","b":"h2","kind":""}],"rules":[{"host":"h1","src":"any","dst":"52:54:00:00:00:01","to":"link:h1-h2"}]}`))
	f.Add([]byte(`{"version":1,"hosts":["h1","h2"],"links":[{"a":"h1","b":"h2"`))
	f.Add([]byte(`{"version":2}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := parseState(b, nil)
		if err != nil {
			return
		}
		for _, l := range s.Links {
			if l.A == "" || l.A >= l.B {
				t.Fatalf("accepted link %+v", l)
			}
		}
		for _, r := range s.Rules {
			if _, err := parseRuleInfo(r); err != nil {
				t.Fatalf("accepted rule %+v: %v", r, err)
			}
		}
	})
}

func TestStateSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	key, _ := tunnel.GenerateKey()
	cfg := ProxyConfig{Listen: []tunnel.Endpoint{{Kind: "tcp", Addr: "127.0.0.1:0"}}, Key: key, StateDir: dir}
	p, err := NewProxy(cfg)
	if err != nil {
		t.Fatal(err)
	}
	p.mu.Lock()
	p.mu.known["h1"], p.mu.known["h2"] = true, true
	p.mu.Unlock()
	if _, err := p.addLink("h1", "h2", ""); err != nil {
		t.Fatal(err)
	}
	if err := p.addRule(RuleInfo{Host: "h1", Src: "any", Dst: "52:54:00:00:00:02", To: "link:h1-h2"}); err != nil {
		t.Fatal(err)
	}
	p.Close()

	p2, err := NewProxy(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if got := len(p2.links()); got != 1 {
		t.Errorf("restored %d links, want 1", got)
	}
	if got := p2.rules(); len(got) != 1 || got[0].To != "link:h1-h2" {
		t.Errorf("restored rules %+v", got)
	}
	p2.Close()

	// A truncated state file: reported, and the proxy starts from the bare star.
	path := filepath.Join(dir, stateFile)
	b, _ := os.ReadFile(path)
	os.WriteFile(path, b[:len(b)/2], 0o600)
	p3, err := NewProxy(cfg)
	if err != nil {
		t.Fatalf("corrupt state stopped the proxy: %v", err)
	}
	defer p3.Close()
	if len(p3.links()) != 0 || len(p3.rules()) != 0 {
		t.Error("state from a corrupt file")
	}
}
