package tunnel

import (
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"strings"
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
// CA that the network key determines.
type Credentials struct {
	cert tls.Certificate
	pool *x509.CertPool
}

// NewCredentials derives the network's CA from k and issues a fresh leaf
// certificate for a daemon called name.
func NewCredentials(k Key, name string) (*Credentials, error) {
	seed, err := hkdf.Key(sha256.New, k[:], nil, "vnet ca v1", ed25519.SeedSize)
	if err != nil {
		return nil, err
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
		return nil, fmt.Errorf("deriving network CA: %w", err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	leafPub, leafKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	now := time.Now()
	leafTmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: name},
		DNSNames:     []string{serverName},
		NotBefore:    now.Add(-24 * time.Hour), // tolerate clock skew between sites
		NotAfter:     now.Add(100 * 365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, ca, leafPub, caKey)
	if err != nil {
		return nil, fmt.Errorf("issuing certificate: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return &Credentials{cert: tls.Certificate{Certificate: [][]byte{leafDER}, PrivateKey: leafKey}, pool: pool}, nil
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
