// Package tunnel carries frames between vnet daemons: the network key and
// the TLS authentication built on it, the link wire format, links as switch
// ports with keepalives, and dialing with backoff.
//
// Protocol flow of a TCP link: the dialer opens TCP and runs a TLS 1.3
// handshake in which both sides present a certificate signed by a CA whose
// key is derived from the network key (so only holders of the key can
// complete it); then the dialer sends a Hello message and the listener
// answers with its own Hello (or a refusal). After that both sides send
// frames, control messages and keepalive pings in any order (see wire.go).
package tunnel

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"strings"
)

// Key is the network key shared by every member of one vnet network.
type Key [32]byte

const keyPrefix = "vnet-key-v1:"

// GenerateKey returns a new random network key.
func GenerateKey() (Key, error) {
	var k Key
	_, err := rand.Read(k[:])
	return k, err
}

// String encodes the key in the text form `vnet keygen` prints.
func (k Key) String() string { return keyPrefix + base64.RawURLEncoding.EncodeToString(k[:]) }

// ParseKey decodes the text form of a key (surrounding space ignored).
func ParseKey(s string) (Key, error) {
	s = strings.TrimSpace(s)
	rest, ok := strings.CutPrefix(s, keyPrefix)
	if !ok {
		return Key{}, errors.New("not a vnet network key (it should start with " + keyPrefix + "; make one with `vnet keygen`)")
	}
	b, err := base64.RawURLEncoding.DecodeString(rest)
	if err != nil || len(b) != len(Key{}) {
		return Key{}, errors.New("malformed vnet network key (truncated or corrupted?)")
	}
	var k Key
	copy(k[:], b)
	return k, nil
}

// LoadKeyFile reads a key written by `vnet keygen`.
func LoadKeyFile(path string) (Key, error) {
	if path == "" {
		return Key{}, errors.New("no --key-file given (make one with `vnet keygen > net.key`)")
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return Key{}, fmt.Errorf("reading key file: %w", err)
	}
	k, err := ParseKey(string(b))
	if err != nil {
		return Key{}, fmt.Errorf("key file %s: %w", path, err)
	}
	return k, nil
}
