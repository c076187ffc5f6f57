package tunnel

// Certificates in the UDP handshake. The Noise NNpsk0 pre-shared key keeps
// strangers out cheaply (their inits fail one AEAD open), but every member
// holds it, joined hosts included, so it does not tell members apart.
// Identity comes from the network CA, as on TLS links: each side's payload
// carries its certificate and an ed25519 signature, by the certificate's
// key, over both handshake ephemerals it knows and its Hello:
//
//	init payload:     timestamp(12) | cert length(16) | cert | sig(64) | Hello
//	                  sig over "vnet udp init v2" | e_i | timestamp | Hello
//	response payload: cert length(16) | cert | sig(64) | Hello
//	                  sig over "vnet udp resp v2" | e_i | e_r | Hello
//
// The receiver checks the certificate against the CA, its name against the
// Hello's, its name and serial against the revoked list, and the signature.
// A replayed init carries an old timestamp (refused as before); a signature
// cannot be moved to another handshake since it covers the ephemerals.

import (
	"crypto/ecdh"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
)

const (
	udpInitContext = "vnet udp init v2"
	udpRespContext = "vnet udp resp v2"
	udpSigLen      = ed25519.SignatureSize
	udpMaxCert     = 2048
)

// udpCertFor returns the certificate the UDP handshake presents for a
// daemon called name: our own; or, for a holder of the network key whose
// mux speaks for other names too (tests, older callers), one minted for
// name and cached.
func (c *Credentials) udpCertFor(name string) (*udpCert, error) {
	if name == c.name {
		return &udpCert{der: c.cert.Certificate[0], key: c.cert.PrivateKey.(ed25519.PrivateKey)}, nil
	}
	if c.caKey == nil {
		return nil, fmt.Errorf("our certificate is for %q, not %q", c.name, name)
	}
	c.mintMu.Lock()
	defer c.mintMu.Unlock()
	if uc := c.minted[name]; uc != nil {
		return uc, nil
	}
	pub, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	der, err := issue(c.ca, c.caKey, name, pub)
	if err != nil {
		return nil, err
	}
	if c.minted == nil {
		c.minted = map[string]*udpCert{}
	}
	if len(c.minted) > 64 {
		clear(c.minted)
	}
	uc := &udpCert{der: der, key: key}
	c.minted[name] = uc
	return uc, nil
}

// udpSignedMsg is the message a handshake signature covers.
func udpSignedMsg(context string, parts ...[]byte) []byte {
	b := []byte(context)
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

// appendUDPAuth appends cert length, cert and signature over msg.
func appendUDPAuth(b []byte, uc *udpCert, msg []byte) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(uc.der)))
	b = append(b, uc.der...)
	return append(b, ed25519.Sign(uc.key, msg)...)
}

// splitUDPAuth splits cert | sig | rest.
func splitUDPAuth(p []byte) (cert, sig, rest []byte, err error) {
	if len(p) < 2 {
		return nil, nil, nil, errors.New("no certificate")
	}
	n := int(binary.BigEndian.Uint16(p))
	if n == 0 || n > udpMaxCert || len(p) < 2+n+udpSigLen {
		return nil, nil, nil, errors.New("malformed certificate field")
	}
	return p[2 : 2+n], p[2+n : 2+n+udpSigLen], p[2+n+udpSigLen:], nil
}

// verifyUDPPeer checks a handshake's certificate and signature for the
// peer that calls itself name.
func (c *Credentials) verifyUDPPeer(certDER, sig []byte, name string, msg []byte) error {
	leaf, err := x509.ParseCertificate(certDER)
	if err != nil {
		return fmt.Errorf("%w: malformed certificate", ErrAuth)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: c.pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return fmt.Errorf("%w: the certificate is not of this network: %v", ErrAuth, err)
	}
	pub, ok := leaf.PublicKey.(ed25519.PublicKey)
	if !ok || !ed25519.Verify(pub, msg, sig) {
		return fmt.Errorf("%w: bad handshake signature", ErrAuth)
	}
	return c.checkPeer(leaf, name)
}

// ephemeralPublic is the X25519 public key of a Noise ephemeral made from
// seed (flynn/noise's DH25519 reads the private key from its rng as is).
func ephemeralPublic(seed []byte) []byte {
	k, err := ecdh.X25519().NewPrivateKey(seed)
	if err != nil {
		panic(err)
	}
	return k.PublicKey().Bytes()
}
