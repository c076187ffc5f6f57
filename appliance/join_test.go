package appliance

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"vnet/bridge/netvm"
	"vnet/tunnel"
)

// newJoinVM makes a netstack VM for a joined host (MAC and address after
// index), serving an echo on port 7000.
func (n *testNet) newJoinVM(host string, index byte) *testVM {
	n.t.Helper()
	vm, err := netvm.New(netvm.Config{
		MAC:  net.HardwareAddr{0x52, 0x54, 0, 0, index, 1},
		Addr: netip.MustParsePrefix(fmt.Sprintf("10.77.0.%d/24", int(index)*10+1)),
	})
	if err != nil {
		n.t.Fatal(err)
	}
	ln, err := vm.ListenTCP(7000)
	if err != nil {
		n.t.Fatal(err)
	}
	go echoServer(ln)
	tv := &testVM{VM: vm, host: host, ln: ln}
	n.t.Cleanup(func() { ln.Close(); vm.Close() })
	return tv
}

func (n *testNet) invite(name string, uses int, ttl time.Duration) string {
	n.t.Helper()
	r, err := n.proxy.Invite(InviteRequest{Name: name, Uses: uses, ExpiresS: int64(ttl / time.Second)}, "127.0.0.1:7777")
	if err != nil {
		n.t.Fatal(err)
	}
	if strings.ContainsAny(r.Token, " \n\t") || !strings.HasPrefix(r.Token, "vnet1:") {
		n.t.Fatalf("token %q is not one line starting vnet1:", r.Token)
	}
	return r.Token
}

func hostUp(p *Proxy, name string) bool {
	for _, h := range p.hosts() {
		if h.Name == name {
			return h.State == "up"
		}
	}
	return false
}

func starErr(h *Host) string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.mu.starErr
}

// TestJoinAndRevoke: a host joins with an invite token (no network key),
// its VM talks to the others, it restarts from its state directory without
// the token; revoked, its links close at once, it cannot come back with its
// stored credentials nor with the token, and the other hosts keep working.
func TestJoinAndRevoke(t *testing.T) {
	n := newTestNet(t, 2, 1)
	tok := n.invite("h3", 2, time.Hour)
	dir := t.TempDir()
	vm := n.newJoinVM("h3", 3)
	cfg := HostConfig{Join: tok, StateDir: dir, Listen: loopback, Ports: []LocalPort{{Name: "vm1", Port: vm.Plug()}}}
	start := time.Now()
	h3, err := NewHost(cfg)
	joined := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	defer func() {
		if !closed {
			h3.Close()
		}
	}()
	if h3.cfg.Name != "h3" || h3.creds.CanIssue() {
		t.Fatalf("joined host: name %q, holds the CA key: %v", h3.cfg.Name, h3.creds.CanIssue())
	}
	st, err := os.Stat(filepath.Join(dir, identityFile))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("identity file: %v %v", st, err)
	}
	b, _ := os.ReadFile(filepath.Join(dir, identityFile))
	if strings.Contains(string(b), n.key.String()[len("vnet-key-v1:"):]) {
		t.Fatal("the identity file holds the network key")
	}
	n.waitHostsUp(3)
	up := time.Since(start)
	h1vm, h2vm := n.vms[0], n.vms[1]
	if err := exchange(vm, h1vm, 256<<10); err != nil {
		t.Fatal(err)
	}
	t.Logf("JOIN: enrolled in %v, up at the proxy after %v, VM exchanged 256 KiB both ways with another host's VM after %v",
		joined.Round(time.Microsecond), up.Round(time.Microsecond), time.Since(start).Round(time.Microsecond))

	// Restart without the token: the state directory is enough.
	h3.Close()
	n.waitFor("h3 down", 10*time.Second, func() bool { return !hostUp(n.proxy, "h3") })
	cfg.Join = ""
	vm.Close()
	vm = n.newJoinVM("h3", 3)
	cfg.Ports = []LocalPort{{Name: "vm1", Port: vm.Plug()}}
	if h3, err = NewHost(cfg); err != nil {
		t.Fatal(err)
	}
	n.waitHostsUp(3)
	if err := exchange(vm, h2vm, 256<<10); err != nil {
		t.Fatal(err)
	}
	// A fast path between the joined host and a key holder (TLS both ways).
	if _, err := n.proxy.addLink("h1", "h3", "tcp"); err != nil {
		t.Fatal(err)
	}
	n.waitFor("fast link h1-h3 up", 10*time.Second, func() bool { return n.linkInfo("h1-h3").State == "up" })
	if err := exchange(h1vm, vm, 256<<10); err != nil {
		t.Fatal(err)
	}

	// Revoke: the star link and the fast link close, the others still talk.
	if err := n.proxy.Revoke("h3"); err != nil {
		t.Fatal(err)
	}
	n.waitFor("h3 cut off", 10*time.Second, func() bool {
		h1 := n.hosts["h1"]
		h1.mu.Lock()
		fast := len(h1.mu.fast)
		h1.mu.Unlock()
		return !hostUp(n.proxy, "h3") && fast == 0
	})
	n.waitFor("h3 told it is revoked", 10*time.Second, func() bool { return strings.Contains(starErr(h3), "revoked") })
	// That message comes from a re-dial the proxy refused.
	if hostUp(n.proxy, "h3") {
		t.Fatal("a revoked host is up again")
	}
	if !n.hosts["h1"].creds.IsRevoked("h3", "") {
		t.Fatal("h1 was not told that h3 is revoked")
	}
	if err := exchange(h1vm, h2vm, 64<<10); err != nil {
		t.Fatal(err)
	}
	h3.Close()
	closed = true

	// Its stored credentials straight at h1's listener: refused there too.
	creds, err := hostCredentials(&HostConfig{StateDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	_, err = tunnel.Dial(ctx, tunnel.Endpoint{Kind: "tcp", Addr: n.hosts["h1"].ln.Addr().String()}, creds,
		tunnel.Hello{Name: "h3", Role: "host", Link: "h1-h3"}, nil, nil)
	if err == nil || !strings.Contains(err.Error(), "revoked") {
		t.Fatalf("revoked host at h1's listener: %v", err)
	}
	// And the token (one use left) is refused.
	_, err = NewHost(HostConfig{Join: tok, StateDir: t.TempDir(), Listen: loopback})
	if err == nil || !strings.Contains(err.Error(), "host h3 is revoked") {
		t.Fatalf("rejoin with the token of a revoked host: %v", err)
	}
}

// TestJoinRefusals: expired, used-up, forged and misplaced tokens each get
// their own clear refusal.
func TestJoinRefusals(t *testing.T) {
	n := newTestNet(t, 1, 0)
	join := func(tok string) error {
		h, err := NewHost(HostConfig{Join: tok, StateDir: t.TempDir(), Listen: loopback})
		if err == nil {
			h.Close()
		}
		return err
	}
	want := func(err error, msg string) {
		t.Helper()
		if err == nil || !strings.Contains(err.Error(), msg) {
			t.Fatalf("error %v, want one saying %q", err, msg)
		}
		if strings.Contains(err.Error(), "\n") {
			t.Fatalf("error is not one line: %q", err)
		}
	}

	once := n.invite("h4", 1, time.Hour)
	if err := join(once); err != nil {
		t.Fatal(err)
	}
	want(join(once), "is used up")

	expired := n.invite("h5", 1, time.Second)
	n.proxy.enrollMu.Lock()
	for _, inv := range n.proxy.enroll.Invites {
		if inv.Name == "h5" {
			inv.Expires = time.Now().Add(-time.Minute)
		}
	}
	n.proxy.enrollMu.Unlock()
	want(join(expired), "expired")

	tok, _ := tunnel.ParseToken(n.invite("h6", 1, time.Hour))
	tok.Secret[0] ^= 1
	want(join(tok.String()), "not valid here (forged")

	want(join("vnet1:AAAA"), "malformed invite token")
	want(join("hello"), "not an invite token")

	// The name of a host that is already up (with the key) is taken.
	want(join(n.invite("h1", 1, time.Hour)), "already taken")

	// A token without a state directory is refused before anything else.
	_, err := NewHost(HostConfig{Join: n.invite("h7", 1, time.Hour), Listen: loopback})
	want(err, "--join needs --state-dir")

	// A proxy of another network: the token's CA does not match.
	other, _ := tunnel.GenerateKey()
	op, err := NewProxy(ProxyConfig{Listen: []tunnel.Endpoint{{Kind: "tcp", Addr: "127.0.0.1:0"}}, Key: other})
	if err != nil {
		t.Fatal(err)
	}
	defer op.Close()
	tok, _ = tunnel.ParseToken(n.invite("h8", 1, time.Hour))
	tok.Proxies = []tunnel.Endpoint{{Kind: "tcp", Addr: op.Addrs()[0]}}
	want(join(tok.String()), "not of the invite's network")
}

// TestEnrollSurvivesRestart: invites, joined hosts and the revoked list are
// in the proxy's state directory.
func TestEnrollSurvivesRestart(t *testing.T) {
	key, _ := tunnel.GenerateKey()
	dir := t.TempDir()
	start := func() *Proxy {
		p, err := NewProxy(ProxyConfig{Listen: []tunnel.Endpoint{{Kind: "tcp", Addr: "127.0.0.1:0"}}, Key: key, StateDir: dir})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	p := start()
	if _, err := p.Invite(InviteRequest{Name: "h9"}, ""); err != nil {
		t.Fatal(err)
	}
	if err := p.Revoke("h9"); err != nil {
		t.Fatal(err)
	}
	if err := p.Revoke("nobody"); err == nil {
		t.Fatal("revoking an unknown host succeeded")
	}
	p.Close()
	p = start()
	defer p.Close()
	if !p.creds.IsRevoked("h9", "") {
		t.Fatal("the revoked list was lost in a restart")
	}
	if _, err := p.Invite(InviteRequest{Name: "h9"}, ""); err == nil {
		t.Fatal("invited a revoked name")
	}
	os.WriteFile(filepath.Join(dir, enrollFile), []byte("{garbage"), 0o600)
	if _, err := NewProxy(ProxyConfig{Listen: []tunnel.Endpoint{{Kind: "tcp", Addr: "127.0.0.1:0"}}, Key: key, StateDir: dir}); err == nil ||
		!strings.Contains(err.Error(), "unusable") {
		t.Fatalf("corrupt enroll file: %v", err)
	}
}

// TestJoinUDP: a joined host's star and fast links over UDP authenticate
// with its certificate (no network key); revoked, it is refused there too.
func TestJoinUDP(t *testing.T) {
	n := newTestNetKind(t, "udp", 1, 1)
	tok := n.invite("h3", 1, time.Hour)
	dir := t.TempDir()
	vm := n.newJoinVM("h3", 3)
	h3, err := NewHost(HostConfig{Join: tok, StateDir: dir, Proxies: []tunnel.Endpoint{n.proxyEP}, Listen: loopback,
		Ports: []LocalPort{{Name: "vm1", Port: vm.Plug()}}})
	if err != nil {
		t.Fatal(err)
	}
	defer h3.Close()
	n.waitHostsUp(2)
	if k := n.linkInfo("star-h3").Kind; k != "udp" {
		t.Fatalf("h3's star link is %q, want udp", k)
	}
	if _, err := n.proxy.addLink("h1", "h3", "udp"); err != nil {
		t.Fatal(err)
	}
	n.waitFor("fast link h1-h3 up over udp", 10*time.Second, func() bool {
		li := n.linkInfo("h1-h3")
		return li.State == "up" && li.Kind == "udp"
	})
	if err := exchange(n.vms[0], vm, 256<<10); err != nil {
		t.Fatal(err)
	}
	if err := n.proxy.Revoke("h3"); err != nil {
		t.Fatal(err)
	}
	n.waitFor("h3 cut off", 10*time.Second, func() bool {
		h1 := n.hosts["h1"]
		h1.mu.Lock()
		fast := len(h1.mu.fast)
		h1.mu.Unlock()
		return !hostUp(n.proxy, "h3") && fast == 0
	})
	n.waitFor("h3's UDP handshakes refused", 10*time.Second, func() bool { return starErr(h3) != "" && !hostUp(n.proxy, "h3") })
	// h3's credentials straight at h1's UDP socket: refused (h1 was told).
	ua := n.hosts["h1"].mux.Addr().(*net.UDPAddr).AddrPort()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	before := n.hosts["h1"].mux.Stats()["handshake-bad"]
	if _, err := h3.mux.Dial(ctx, []netip.AddrPort{ua}, tunnel.Hello{Name: "h3", Role: "host", Link: "h1-h3"}, nil, nil); err == nil ||
		!strings.Contains(err.Error(), "host h3 is revoked") {
		t.Fatalf("revoked h3 at h1's UDP socket: %v", err)
	}
	if after := n.hosts["h1"].mux.Stats()["handshake-bad"]; after <= before {
		t.Fatalf("h1 did not count the revoked handshake as bad (%d -> %d)", before, after)
	}
}
