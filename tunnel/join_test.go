package tunnel

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func testToken() Token {
	return Token{Proxies: []Endpoint{{"tcp", "192.0.2.1:5000"}, {"quic", "192.0.2.1:5001"}},
		CA: strings.Repeat("ab", 32), ID: "0123456789abcdef", Secret: make([]byte, 32), Name: "h3",
		Expires: time.Unix(1700000000, 0)}
}

func TestTokenRoundTrip(t *testing.T) {
	tok := testToken()
	s := tok.String()
	if !strings.HasPrefix(s, "vnet1:") || strings.ContainsAny(s, " \n=+/") {
		t.Fatalf("token %q is not one base64url line", s)
	}
	got, err := ParseToken("  " + s + "\n")
	if err != nil {
		t.Fatal(err)
	}
	if got.String() != s || got.Name != "h3" || len(got.Proxies) != 2 || !got.Expires.Equal(tok.Expires) {
		t.Fatalf("round trip: %+v", got)
	}
	for _, bad := range []string{"", "vnet1:", "vnet1:!!", "vnet-key-v1:AAAA", "vnet1:e30", s[:len(s)-3]} {
		if _, err := ParseToken(bad); err == nil {
			t.Errorf("ParseToken(%q) accepted", bad)
		}
	}
	noTCP := tok
	noTCP.Proxies = noTCP.Proxies[1:]
	if _, err := ParseToken(noTCP.String()); err == nil || !strings.Contains(err.Error(), "tcp") {
		t.Errorf("a token without tcp:// endpoint: %v", err)
	}
}

func FuzzParseToken(f *testing.F) {
	f.Add(testToken().String())
	f.Add("vnet1:")
	f.Add("vnet1:eyJ2IjoxfQ")
	f.Add("vnet1:" + strings.Repeat("A", 5000))
	f.Fuzz(func(t *testing.T, s string) {
		tok, err := ParseToken(s)
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error of more than one line: %q", err)
			}
			return
		}
		if len(tok.Secret) != 32 || tok.Name == "" || tok.ID == "" || len(tok.Proxies) == 0 {
			t.Fatalf("accepted an incomplete token %+v", tok)
		}
		again, err := ParseToken(tok.String())
		if err != nil || again.String() != tok.String() {
			t.Fatalf("re-parse of %q: %v", tok.String(), err)
		}
	})
}

// TestJoinProtocol: a host joins over the proxy's listener with a token and
// gets an identity that then authenticates links; a wrong CA fingerprint
// is refused before anything is sent.
func TestJoinProtocol(t *testing.T) {
	k, _ := GenerateKey()
	proxy, _ := NewCredentials(k, "proxy")
	ln, err := Listen(Endpoint{"tcp", "127.0.0.1:0"}, proxy, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ln.SetJoinHandler(func(req JoinRequest, _ net.Addr) JoinReply {
		if string(req.Secret) != strings.Repeat("s", 32) {
			return JoinReply{Error: "forged"}
		}
		id, _, err := proxy.Issue(req.Name, req.Pub)
		if err != nil {
			return JoinReply{Error: err.Error()}
		}
		return JoinReply{Identity: &id, Revoked: Revoked{Names: []string{"old"}}}
	})
	tok := Token{Proxies: []Endpoint{{"tcp", ln.Addr().String()}}, CA: proxy.CAFingerprint(), ID: "x",
		Secret: []byte(strings.Repeat("s", 32)), Name: "h3"}
	ctx := context.Background()
	id, rev, err := Join(ctx, tok, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	if len(rev.Names) != 1 {
		t.Fatalf("revoked list %+v", rev)
	}
	creds, err := LoadIdentity(id)
	if err != nil || creds.CanIssue() || creds.Name() != "h3" {
		t.Fatalf("identity: %v, can issue %v", err, creds != nil && creds.CanIssue())
	}

	// The identity authenticates a link as h3, and only as h3.
	go func() {
		for {
			in, err := ln.Accept(ctx)
			if err != nil {
				return
			}
			if l, err := in.Accept(Hello{Name: "proxy", Role: "proxy"}, quietLog(), nil); err == nil {
				defer l.Close()
			}
		}
	}()
	l, err := Dial(ctx, tok.Proxies[0], creds, Hello{Name: "h3", Role: "host"}, quietLog(), nil)
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	if _, err := Dial(ctx, tok.Proxies[0], creds, Hello{Name: "h1", Role: "host"}, quietLog(), nil); err == nil ||
		!strings.Contains(err.Error(), `certificate is for "h3"`) {
		t.Fatalf("a joined host posing as another: %v", err)
	}
	proxy.SetRevoked(Revoked{Serials: []string{creds.Serial()}})
	if _, err := Dial(ctx, tok.Proxies[0], creds, Hello{Name: "h3", Role: "host"}, quietLog(), nil); err == nil ||
		!strings.Contains(err.Error(), "revoked") {
		t.Fatalf("a revoked serial: %v", err)
	}

	bad := tok
	bad.Secret = []byte(strings.Repeat("t", 32))
	if _, _, err := Join(ctx, bad, quietLog()); err == nil || !strings.Contains(err.Error(), "forged") {
		t.Fatalf("forged secret: %v", err)
	}
	bad = tok
	bad.CA = strings.Repeat("00", 32)
	if _, _, err := Join(ctx, bad, quietLog()); err == nil || !strings.Contains(err.Error(), "not of the invite's network") {
		t.Fatalf("wrong CA: %v", err)
	}
	// Only the key's holders issue certificates, for well-formed keys.
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	if _, _, err := proxy.Issue("x", pub[:5]); err == nil {
		t.Fatal("issued for a malformed key")
	}
	joined, _ := LoadIdentity(id)
	if _, _, err := joined.Issue("h4", pub); err == nil {
		t.Fatal("a joined host issued a certificate")
	}
}

// TestUDPJoinedIdentity: over UDP a joined host speaks only for its own
// name, and a key holder's mux accepts it under that name.
func TestUDPJoinedIdentity(t *testing.T) {
	k, _ := GenerateKey()
	proxy, _ := NewCredentials(k, "proxy")
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	id, _, err := proxy.Issue("h3", pub)
	if err != nil {
		t.Fatal(err)
	}
	id.Key = priv.Seed()
	joined, err := LoadIdentity(id)
	if err != nil {
		t.Fatal(err)
	}
	a, err := ListenUDPCreds("127.0.0.1:0", joined, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := ListenUDPCreds("127.0.0.1:0", proxy, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	// The acceptor is gone before the test returns: a link it made reads
	// the package's keepalive timers, which later tests change.
	accepted := make(chan struct{})
	defer func() { cancel(); <-accepted }()
	go func() {
		defer close(accepted)
		for {
			in, err := b.Accept(ctx)
			if err != nil {
				return
			}
			if in.Hello.Name != "h3" {
				t.Errorf("accepted a UDP peer calling itself %q", in.Hello.Name)
			}
			if l, err := in.Accept(Hello{Name: "proxy"}, quietLog(), nil); err == nil {
				defer l.Close()
			}
		}
	}()
	to := []netip.AddrPort{b.Addr().(*net.UDPAddr).AddrPort()}
	if _, err := a.Dial(ctx, to, Hello{Name: "h1"}, quietLog(), nil); err == nil || !strings.Contains(err.Error(), `not "h1"`) {
		t.Fatalf("a joined host posing as h1 over UDP: %v", err)
	}
	l, err := a.Dial(ctx, to, Hello{Name: "h3"}, quietLog(), nil)
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
}
