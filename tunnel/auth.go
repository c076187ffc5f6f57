package tunnel

import (
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// alpn names the link protocol and its version in the TLS handshake.
const alpn = "vnet/1"

// serverName is the name every daemon's certificate carries; identity comes
// from the Hello, trust from the CA signature.
const serverName = "vnet"

// ErrAuth marks a failed authentication: the peer does not hold our key.
var ErrAuth = errors.New("authentication failed")

// ErrRefused marks a peer that authenticated but declined the link (its
// Hello carried an error), e.g. a fast link it was not told about yet.
var ErrRefused = errors.New("refused")

// Credentials are a daemon's TLS identity: a leaf certificate signed by the
// network's CA, the CA's certificate, and the list of revoked peers. A
// daemon started with the network key (NewCredentials) also holds the CA's
// key and can issue certificates; a joined host (LoadIdentity) holds only
// its own certificate, so cutting it off is a matter of revoking it.
type Credentials struct {
	name    string
	cert    tls.Certificate
	leaf    *x509.Certificate
	pool    *x509.CertPool
	ca      *x509.Certificate
	caKey   ed25519.PrivateKey // nil: cannot issue
	psk     [32]byte           // the UDP handshake's pre-shared key
	revoked atomic.Pointer[Revoked]

	mintMu sync.Mutex
	minted map[string]*udpCert // certificates for the UDP handshake, by name (key holders)
}

// Revoked lists peers whose certificates are refused: by name (every
// certificate ever issued for it) and by serial number (decimal).
type Revoked struct {
	Names   []string `json:"names,omitempty"`
	Serials []string `json:"serials,omitempty"`
}

// Has reports whether a certificate for name with serial is revoked.
func (r *Revoked) Has(name, serial string) bool {
	return r != nil && (slices.Contains(r.Names, name) || (serial != "" && slices.Contains(r.Serials, serial)))
}

// caFromKey derives the network's CA (certificate and key) from k. The
// certificate is the same on every daemon: a fixed template signed with a
// deterministic ed25519 key.
func caFromKey(k Key) (*x509.Certificate, ed25519.PrivateKey, error) {
	seed, err := hkdf.Key(sha256.New, k[:], nil, "vnet ca v1", ed25519.SeedSize)
	if err != nil {
		return nil, nil, err
	}
	caKey := ed25519.NewKeyFromSeed(seed)
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "vnet network CA"},
		NotBefore:             time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC),
		NotAfter:              time.Date(2200, 1, 1, 0, 0, 0, 0, time.UTC),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		return nil, nil, fmt.Errorf("deriving network CA: %w", err)
	}
	ca, err := x509.ParseCertificate(caDER)
	return ca, caKey, err
}

// issue signs a leaf certificate for name and pub with the CA.
func issue(ca *x509.Certificate, caKey ed25519.PrivateKey, name string, pub ed25519.PublicKey) ([]byte, error) {
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: name},
		DNSNames:     []string{serverName},
		NotBefore:    now.Add(-24 * time.Hour), // tolerate clock skew between sites
		NotAfter:     now.Add(100 * 365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, pub, caKey)
	if err != nil {
		return nil, fmt.Errorf("issuing certificate: %w", err)
	}
	return der, nil
}

// NewCredentials derives the network's CA from k and issues a fresh leaf
// certificate for a daemon called name.
func NewCredentials(k Key, name string) (*Credentials, error) {
	ca, caKey, err := caFromKey(k)
	if err != nil {
		return nil, err
	}
	leafPub, leafKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	der, err := issue(ca, caKey, name, leafPub)
	if err != nil {
		return nil, err
	}
	c, err := newCredentials(name, der, leafKey, ca, udpPSK(k))
	if err != nil {
		return nil, err
	}
	c.caKey = caKey
	return c, nil
}

func newCredentials(name string, der []byte, key ed25519.PrivateKey, ca *x509.Certificate, psk [32]byte) (*Credentials, error) {
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("certificate: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return nil, fmt.Errorf("certificate not signed by the network's CA: %w", err)
	}
	if !key.Public().(ed25519.PublicKey).Equal(leaf.PublicKey) {
		return nil, errors.New("private key does not match the certificate")
	}
	c := &Credentials{name: name, leaf: leaf, pool: pool, ca: ca, psk: psk,
		cert: tls.Certificate{Certificate: [][]byte{der, ca.Raw}, PrivateKey: key, Leaf: leaf}}
	return c, nil
}

// Identity is what a joined host keeps in its state directory: its
// certificate and private key, the network CA's certificate and the UDP
// handshake's pre-shared key. It holds no network key.
type Identity struct {
	Name string `json:"name"`
	Cert []byte `json:"cert"` // DER
	Key  []byte `json:"key"`  // ed25519 seed
	CA   []byte `json:"ca"`   // DER
	PSK  []byte `json:"psk"`  // 32 bytes
}

// LoadIdentity builds the credentials of a joined host from id, checking
// that its pieces fit together.
func LoadIdentity(id Identity) (*Credentials, error) {
	if len(id.Key) != ed25519.SeedSize || len(id.PSK) != 32 {
		return nil, errors.New("identity: malformed key")
	}
	ca, err := x509.ParseCertificate(id.CA)
	if err != nil || !ca.IsCA {
		return nil, errors.New("identity: malformed CA certificate")
	}
	c, err := newCredentials(id.Name, id.Cert, ed25519.NewKeyFromSeed(id.Key), ca, [32]byte(id.PSK))
	if err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	if c.leaf.Subject.CommonName != id.Name {
		return nil, fmt.Errorf("identity: the certificate is for %q, not %q", c.leaf.Subject.CommonName, id.Name)
	}
	return c, nil
}

// Name is the name the credentials' certificate carries.
func (c *Credentials) Name() string { return c.name }

// Serial is the serial number of our certificate (decimal).
func (c *Credentials) Serial() string { return c.leaf.SerialNumber.String() }

// CanIssue reports whether these credentials hold the CA's key.
func (c *Credentials) CanIssue() bool { return c.caKey != nil }

// CAFingerprint is the SHA-256 of the CA certificate, in hex: what an
// invite token carries so that a joining host knows the proxy.
func (c *Credentials) CAFingerprint() string {
	sum := sha256.Sum256(c.ca.Raw)
	return hex.EncodeToString(sum[:])
}

// Issue signs an identity for a joining host called name whose public key
// is pub. It returns the identity (without the private key, which only the
// host has) and the certificate's serial.
func (c *Credentials) Issue(name string, pub ed25519.PublicKey) (Identity, string, error) {
	if c.caKey == nil {
		return Identity{}, "", errors.New("cannot issue certificates without the network key")
	}
	if len(pub) != ed25519.PublicKeySize {
		return Identity{}, "", errors.New("malformed public key")
	}
	der, err := issue(c.ca, c.caKey, name, pub)
	if err != nil {
		return Identity{}, "", err
	}
	leaf, _ := x509.ParseCertificate(der)
	return Identity{Name: name, Cert: der, CA: c.ca.Raw, PSK: c.psk[:]}, leaf.SerialNumber.String(), nil
}

// SetRevoked replaces the list of revoked peers; handshakes from now on
// refuse them.
func (c *Credentials) SetRevoked(r Revoked) { c.revoked.Store(&r) }

// GetRevoked returns the list of revoked peers.
func (c *Credentials) GetRevoked() Revoked {
	if r := c.revoked.Load(); r != nil {
		return *r
	}
	return Revoked{}
}

// IsRevoked reports whether peer name (certificate serial, "" if unknown)
// is revoked.
func (c *Credentials) IsRevoked(name, serial string) bool { return c.revoked.Load().Has(name, serial) }

// checkPeer checks an authenticated peer's certificate against the name in
// its Hello and against the revoked list.
func (c *Credentials) checkPeer(leaf *x509.Certificate, name string) error {
	if leaf == nil {
		return fmt.Errorf("%w: no certificate", ErrAuth)
	}
	if leaf.Subject.CommonName != name {
		return fmt.Errorf("%w: the certificate is for %q but the peer calls itself %q", ErrAuth, leaf.Subject.CommonName, name)
	}
	if c.IsRevoked(name, leaf.SerialNumber.String()) {
		return fmt.Errorf("host %s is %w (vnet ctl hosts revoke)", name, ErrRevoked)
	}
	return nil
}

// ErrRevoked marks a peer whose certificate was revoked.
var ErrRevoked = errors.New("revoked")

func peerLeaf(cs tls.ConnectionState) *x509.Certificate {
	if len(cs.PeerCertificates) == 0 {
		return nil
	}
	return cs.PeerCertificates[0]
}

// ServerConfig is the TLS configuration of a listener: TLS 1.3 only, and the
// client must present a certificate of the same network.
func (c *Credentials) ServerConfig() *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{c.cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    c.pool,
		NextProtos:   []string{alpn},
	}
}

// ClientConfig is the TLS configuration of a dialer.
func (c *Credentials) ClientConfig() *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{c.cert},
		RootCAs:      c.pool,
		ServerName:   serverName,
		NextProtos:   []string{alpn},
	}
}

// classifyTLSError turns a handshake error caused by a key mismatch into
// ErrAuth, so logs say "authentication failed" rather than x509 jargon.
func classifyTLSError(err error) error {
	if err == nil {
		return nil
	}
	var uae x509.UnknownAuthorityError
	var cie x509.CertificateInvalidError
	var alert tls.AlertError
	msg := err.Error()
	if errors.As(err, &uae) || errors.As(err, &cie) || errors.As(err, &alert) ||
		strings.Contains(msg, "bad certificate") || strings.Contains(msg, "unknown certificate authority") ||
		strings.Contains(msg, "certificate required") || strings.Contains(msg, "no application protocol") {
		return fmt.Errorf("%w: the peer does not hold this network's key (check --key-file on both sides): %v", ErrAuth, err)
	}
	return err
}

// udpCert is a certificate and key the UDP handshake signs with.
type udpCert struct {
	der []byte
	key ed25519.PrivateKey
}
