package main

import (
	"context"
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
