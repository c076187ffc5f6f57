package main

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"vnet/appliance"
	"vnet/tunnel"
)

// TestCtlToken: `vnet ctl` against a proxy with an API token is refused
// readably without it, and works with --api-token-file or VNET_API_TOKEN.
func TestCtlToken(t *testing.T) {
	key, _ := tunnel.GenerateKey()
	const token = "a-token-of-enough-length"
	p, err := appliance.NewProxy(appliance.ProxyConfig{Listen: []tunnel.Endpoint{{Kind: "tcp", Addr: "127.0.0.1:0"}},
		Key: key, API: "127.0.0.1:0", APIToken: token})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	file := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(file, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	api := []string{"--api", p.APIAddr(), "--json"}
	if err := runCtl(ctx, append(api, "status")); err == nil || !strings.Contains(err.Error(), "needs its token") {
		t.Errorf("without the token: %v", err)
	}
	if err := runCtl(ctx, append(api, "--api-token-file", file, "status")); err != nil {
		t.Errorf("with --api-token-file: %v", err)
	}
	t.Setenv("VNET_API_TOKEN", token)
	if err := runCtl(ctx, append(api, "hosts")); err != nil {
		t.Errorf("with VNET_API_TOKEN: %v", err)
	}
}

// TestCtlInviteRevoke: `vnet ctl invite` prints one line, a token a host
// joins with; `vnet ctl hosts revoke` cuts that host off.
func TestCtlInviteRevoke(t *testing.T) {
	key, _ := tunnel.GenerateKey()
	p, err := appliance.NewProxy(appliance.ProxyConfig{Listen: []tunnel.Endpoint{{Kind: "tcp", Addr: "127.0.0.1:0"}},
		Key: key, API: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	ctx := context.Background()
	api := []string{"--api", p.APIAddr()}
	r, w, _ := os.Pipe()
	stdout := os.Stdout
	os.Stdout = w
	err = runCtl(ctx, append(api, "invite", "--name", "h3", "--expires", "10m", "--uses", "1"))
	os.Stdout = stdout
	w.Close()
	out, _ := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != 1 || !strings.HasPrefix(lines[0], "vnet1:") {
		t.Fatalf("invite printed %q, want one token line", out)
	}
	h, err := appliance.NewHost(appliance.HostConfig{Join: lines[0], StateDir: t.TempDir(),
		Listen: []tunnel.Endpoint{{Kind: "tcp", Addr: "127.0.0.1:0"}}})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if err := runCtl(ctx, append(api, "hosts", "revoke", "h3")); err != nil {
		t.Fatal(err)
	}
	if err := runCtl(ctx, append(api, "hosts", "revoke", "nobody")); err == nil || !strings.Contains(err.Error(), "unknown host") {
		t.Fatalf("revoking an unknown host: %v", err)
	}
	if err := runCtl(ctx, append(api, "invite")); err == nil || !strings.Contains(err.Error(), "--name") {
		t.Fatalf("invite without --name: %v", err)
	}
}

// TestCtlRuleFilter: `vnet ctl rule add` takes "->" and an IP filter, and
// the proxy keeps the filter in canonical form; bad filters are refused in
// one line; `rule del` with the filter in another spelling removes it.
func TestCtlRuleFilter(t *testing.T) {
	key, _ := tunnel.GenerateKey()
	p, err := appliance.NewProxy(appliance.ProxyConfig{Listen: []tunnel.Endpoint{{Kind: "tcp", Addr: "127.0.0.1:0"}},
		Key: key, API: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	ctx := context.Background()
	api := []string{"--api", p.APIAddr(), "--json"}
	mac := "52:54:00:00:00:01"
	if err := runCtl(ctx, append(api, "rule", "add", "proxy", "any", mac, "port", "22", "proto", "tcp", "->", "deny")); err != nil {
		t.Fatal(err)
	}
	if err := runCtl(ctx, append(api, "rule", "add", "proxy", "any", "any", "->", "allow")); err != nil {
		t.Fatal(err)
	}
	rules := p.Switch().Rules()
	if len(rules) != 2 || rules[0].String() != "any "+mac+" ip proto tcp port 22 -> deny" {
		t.Fatalf("rules %v", rules)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"proxy", "any", "any", "proto", "tcp", "port", "99999", "->", "deny"}, "expected a port"},
		{[]string{"proxy", "any", "any", "proto", "tcp", "->", "link:star-h1"}, "needs the target deny or allow"},
		{[]string{"proxy", "any", "any", "->", "proto", "tcp", "deny"}, "usage"},
	} {
		err := runCtl(ctx, append(append(api, "rule", "add"), c.args...))
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("rule add %v: %v, want one line with %q", c.args, err, c.want)
		}
	}
	if err := runCtl(ctx, append(api, "rule", "del", "proxy", "any", mac, "ip4", "proto", "6", "port", "22-22", "deny")); err == nil {
		t.Error("rule del with another family removed something")
	}
	if err := runCtl(ctx, append(api, "rule", "del", "proxy", "any", mac, "proto", "6", "port", "22-22", "deny")); err != nil {
		t.Fatal(err)
	}
	if rules := p.Switch().Rules(); len(rules) != 1 {
		t.Fatalf("after del: %v", rules)
	}
}
