package tunnel

// Joining without the network key.
//
// The proxy (which holds the key) hands out invite tokens: one line,
// "vnet1:" + base64url of a small JSON object with the proxy's endpoints,
// the SHA-256 of the network CA's certificate, the invite's id and a
// 32-byte secret (the proxy keeps only a hash of it). A host joins by
// opening TLS to one of the proxy's tcp:// endpoints with the ALPN
// "vnet-join/1": it presents no certificate and checks that the proxy's
// certificate chains to the CA whose fingerprint the token carries. It then
// sends one JSON request (invite id, secret, its name and a fresh ed25519
// public key) and reads one JSON answer: a refusal, or its identity (a
// certificate for its name and key signed by the CA, the CA's certificate,
// the UDP handshake's pre-shared key) and the revoked list. The private key
// never leaves the host; the network key never leaves the proxy.

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"time"
)

const (
	joinALPN    = "vnet-join/1"
	tokenPrefix = "vnet1:"
	// maxTokenLen bounds a token (a few endpoints fit many times over).
	maxTokenLen = 4096
	// maxJoinMsg bounds a join request or answer.
	maxJoinMsg = 64 << 10
)

// Token is an invite: where the proxy is, how to know it, and the
// single-purpose credential that lets one host join.
type Token struct {
	Proxies []Endpoint // the proxy's endpoints (at least one tcp://)
	CA      string     // hex SHA-256 of the network CA's certificate
	ID      string     // the invite's id
	Secret  []byte     // 32 bytes
	Name    string     // the host name the invite is for
	Expires time.Time  // for the host's information; the proxy decides
}

type tokenJSON struct {
	V int      `json:"v"`
	P []string `json:"p"`
	F string   `json:"f"`
	I string   `json:"i"`
	S string   `json:"s"`
	N string   `json:"n"`
	X int64    `json:"x"`
}

// String is the token's one-line text form.
func (t Token) String() string {
	j := tokenJSON{V: 1, F: t.CA, I: t.ID, S: base64.RawURLEncoding.EncodeToString(t.Secret), N: t.Name, X: t.Expires.Unix()}
	for _, ep := range t.Proxies {
		j.P = append(j.P, ep.String())
	}
	b, _ := json.Marshal(j)
	return tokenPrefix + base64.RawURLEncoding.EncodeToString(b)
}

// ParseToken decodes a token (surrounding space ignored).
func ParseToken(s string) (Token, error) {
	s = strings.TrimSpace(s)
	if len(s) > maxTokenLen {
		return Token{}, fmt.Errorf("not an invite token: %d characters (too long)", len(s))
	}
	rest, ok := strings.CutPrefix(s, tokenPrefix)
	if !ok {
		return Token{}, errors.New("not an invite token (it should start with " + tokenPrefix + "; make one with `vnet ctl invite --name NAME` on the proxy)")
	}
	bad := func(why string) (Token, error) {
		return Token{}, fmt.Errorf("malformed invite token (truncated or corrupted?): %s", why)
	}
	b, err := base64.RawURLEncoding.DecodeString(rest)
	if err != nil {
		return bad("not base64url")
	}
	var j tokenJSON
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&j); err != nil {
		return bad("not JSON")
	}
	if j.V != 1 {
		return Token{}, fmt.Errorf("invite token of version %d; this vnet reads version 1", j.V)
	}
	t := Token{CA: j.F, ID: j.I, Name: j.N, Expires: time.Unix(j.X, 0)}
	if t.Secret, err = base64.RawURLEncoding.DecodeString(j.S); err != nil || len(t.Secret) != 32 {
		return bad("secret")
	}
	if fp, err := hex.DecodeString(j.F); err != nil || len(fp) != sha256.Size {
		return bad("CA fingerprint")
	}
	if j.I == "" || len(j.I) > 64 {
		return bad("invite id")
	}
	if j.N == "" || len(j.N) > 64 {
		return bad("host name")
	}
	tcp := false
	for _, p := range j.P {
		ep, err := ParseEndpoint(p)
		if err != nil {
			return bad(err.Error())
		}
		tcp = tcp || ep.Kind == "tcp"
		t.Proxies = append(t.Proxies, ep)
	}
	if !tcp {
		return bad("no tcp:// endpoint of the proxy")
	}
	return t, nil
}

// JoinRequest is what a joining host sends.
type JoinRequest struct {
	ID     string `json:"id"`
	Secret []byte `json:"secret"`
	Name   string `json:"name"`
	Pub    []byte `json:"pub"` // ed25519 public key
}

// JoinReply is the proxy's answer: Error, or the host's identity (without
// the private key) and the revoked list.
type JoinReply struct {
	Error    string    `json:"error,omitempty"`
	Identity *Identity `json:"identity,omitempty"`
	Revoked  Revoked   `json:"revoked"`
}

// JoinHandler decides a join request (the proxy's invite store).
type JoinHandler func(req JoinRequest, from net.Addr) JoinReply

// ErrJoinRefused marks a join the proxy refused.
var ErrJoinRefused = errors.New("join refused")

// joinServerConfig is the listener's TLS configuration for joining hosts:
// no client certificate, only the join protocol.
func (c *Credentials) joinServerConfig() *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{c.cert}, NextProtos: []string{joinALPN}}
}

// serveJoin answers one join request on conn.
func serveJoin(conn *tls.Conn, h JoinHandler, log *slog.Logger) {
	conn.SetDeadline(time.Now().Add(HandshakeTimeout))
	var req JoinRequest
	var reply JoinReply
	if err := json.NewDecoder(io.LimitReader(conn, maxJoinMsg)).Decode(&req); err != nil {
		reply.Error = "malformed join request"
	} else {
		reply = h(req, conn.RemoteAddr())
	}
	if reply.Error != "" {
		log.Warn("join refused", "peer", conn.RemoteAddr().String(), "name", req.Name, "reason", reply.Error)
	}
	b, _ := json.Marshal(reply)
	conn.Write(append(b, '\n'))
}

// Join asks the proxy named in tok for an identity. It returns the host's
// credentials (private key included), ready to store, and the revoked list.
func Join(ctx context.Context, tok Token, log *slog.Logger) (Identity, Revoked, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return Identity{}, Revoked{}, err
	}
	var errs []error
	for _, ep := range tok.Proxies {
		if ep.Kind != "tcp" {
			continue
		}
		reply, err := joinOnce(ctx, ep, tok, JoinRequest{ID: tok.ID, Secret: tok.Secret, Name: tok.Name, Pub: pub})
		if err != nil {
			if errors.Is(err, ErrJoinRefused) {
				return Identity{}, Revoked{}, err
			}
			errs = append(errs, fmt.Errorf("%s: %w", ep, err))
			continue
		}
		id := *reply.Identity
		id.Key = priv.Seed()
		if _, err := LoadIdentity(id); err != nil {
			return Identity{}, Revoked{}, fmt.Errorf("the proxy's answer does not fit together: %w", err)
		}
		return id, reply.Revoked, nil
	}
	return Identity{}, Revoked{}, fmt.Errorf("cannot reach the proxy to join: %w", errors.Join(errs...))
}

func joinOnce(ctx context.Context, ep Endpoint, tok Token, req JoinRequest) (JoinReply, error) {
	ctx, cancel := context.WithTimeout(ctx, HandshakeTimeout)
	defer cancel()
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", ep.Addr)
	if err != nil {
		return JoinReply{}, err
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS13, NextProtos: []string{joinALPN},
		InsecureSkipVerify: true, // verified below, against the token's CA fingerprint
		VerifyPeerCertificate: func(rawCerts [][]byte, _ [][]*x509.Certificate) error {
			return verifyJoinChain(rawCerts, tok.CA)
		}}
	conn := tls.Client(raw, cfg)
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	if err := conn.HandshakeContext(ctx); err != nil {
		if strings.Contains(err.Error(), "no application protocol") {
			return JoinReply{}, errors.New("this endpoint does not take joins (an old proxy, or a host)")
		}
		return JoinReply{}, err
	}
	b, _ := json.Marshal(req)
	if _, err := conn.Write(b); err != nil {
		return JoinReply{}, err
	}
	line, err := bufio.NewReader(io.LimitReader(conn, maxJoinMsg)).ReadBytes('\n')
	if err != nil {
		return JoinReply{}, fmt.Errorf("no answer to the join request: %w", err)
	}
	var reply JoinReply
	if err := json.Unmarshal(line, &reply); err != nil {
		return JoinReply{}, fmt.Errorf("malformed answer to the join request: %w", err)
	}
	if reply.Error != "" {
		return JoinReply{}, fmt.Errorf("%w: %s", ErrJoinRefused, reply.Error)
	}
	if reply.Identity == nil {
		return JoinReply{}, errors.New("the proxy's answer holds no identity")
	}
	return reply, nil
}

// verifyJoinChain checks that the proxy's chain holds the CA whose SHA-256
// is fingerprint and that the leaf is signed by it.
func verifyJoinChain(rawCerts [][]byte, fingerprint string) error {
	if len(rawCerts) == 0 {
		return errors.New("the proxy presented no certificate")
	}
	for _, raw := range rawCerts[1:] {
		sum := sha256.Sum256(raw)
		if hex.EncodeToString(sum[:]) != fingerprint {
			continue
		}
		ca, err := x509.ParseCertificate(raw)
		if err != nil {
			return err
		}
		leaf, err := x509.ParseCertificate(rawCerts[0])
		if err != nil {
			return err
		}
		pool := x509.NewCertPool()
		pool.AddCert(ca)
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
			return fmt.Errorf("the proxy's certificate is not signed by the invite's network: %w", err)
		}
		return nil
	}
	return errors.New("the proxy is not of the invite's network (its CA does not match the token's fingerprint)")
}
