package appliance

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"vnet/tunnel"
)

// identityFile is a joined host's credentials in its --state-dir (0600).
const identityFile = "host-identity.json"

// JoinTimeout bounds joining with an invite token.
var JoinTimeout = 30 * tunnel.HandshakeTimeout / 10

type savedIdentity struct {
	Version  int             `json:"version"`
	Identity tunnel.Identity `json:"identity"`
	Proxies  []string        `json:"proxies"`
}

// HasIdentity reports whether dir holds a joined host's identity.
func HasIdentity(dir string) bool {
	if dir == "" {
		return false
	}
	_, err := os.Stat(filepath.Join(dir, identityFile))
	return err == nil
}

// hostCredentials picks the host's credentials: the identity in its state
// directory, else a join with cfg.Join (the identity is then saved there),
// else the network key. It fills in the name and proxies an identity knows.
func hostCredentials(cfg *HostConfig) (*tunnel.Credentials, error) {
	var saved *savedIdentity
	if cfg.StateDir != "" {
		path := filepath.Join(cfg.StateDir, identityFile)
		b, err := os.ReadFile(path)
		switch {
		case err == nil:
			var s savedIdentity
			if err := json.Unmarshal(b, &s); err != nil || s.Version != 1 {
				return nil, fmt.Errorf("%s is unusable (malformed); move it away and join again with a new token", path)
			}
			saved = &s
		case !os.IsNotExist(err):
			return nil, fmt.Errorf("reading the host's identity: %w", err)
		}
	}
	if saved == nil && cfg.Join != "" {
		if cfg.StateDir == "" {
			return nil, errors.New("--join needs --state-dir, where the host keeps the credentials it is given")
		}
		tok, err := tunnel.ParseToken(cfg.Join)
		if err != nil {
			return nil, err
		}
		if cfg.Name != "" && cfg.Name != tok.Name {
			return nil, fmt.Errorf("the invite is for host %s, not %s (drop --name or use the right token)", tok.Name, cfg.Name)
		}
		ctx, cancel := context.WithTimeout(context.Background(), JoinTimeout)
		defer cancel()
		id, revoked, err := tunnel.Join(ctx, tok, cfg.Log)
		if err != nil {
			return nil, fmt.Errorf("joining %s: %w", tok.Proxies[0], err)
		}
		s := savedIdentity{Version: 1, Identity: id}
		for _, ep := range tok.Proxies {
			s.Proxies = append(s.Proxies, ep.String())
		}
		b, _ := json.MarshalIndent(s, "", "  ")
		if err := writeFileAtomic(filepath.Join(cfg.StateDir, identityFile), append(b, '\n')); err != nil {
			return nil, fmt.Errorf("saving the host's identity in %s: %w", cfg.StateDir, err)
		}
		creds, err := tunnel.LoadIdentity(id)
		if err != nil {
			return nil, err
		}
		creds.SetRevoked(revoked)
		saved = &s
		discardIfNil(cfg.Log).Info("joined the network with an invite; credentials saved", "name", id.Name,
			"dir", cfg.StateDir)
		return useIdentity(cfg, saved, creds)
	}
	if saved != nil {
		creds, err := tunnel.LoadIdentity(saved.Identity)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", filepath.Join(cfg.StateDir, identityFile), err)
		}
		return useIdentity(cfg, saved, creds)
	}
	if cfg.Key == (tunnel.Key{}) {
		return nil, errors.New("no network key and no invite: give --key-file, or --join TOKEN with --state-dir")
	}
	if err := ValidName(cfg.Name); err != nil {
		return nil, err
	}
	return tunnel.NewCredentials(cfg.Key, cfg.Name)
}

func useIdentity(cfg *HostConfig, s *savedIdentity, creds *tunnel.Credentials) (*tunnel.Credentials, error) {
	if cfg.Name != "" && cfg.Name != creds.Name() {
		return nil, fmt.Errorf("this state directory holds the identity of host %s, not %s", creds.Name(), cfg.Name)
	}
	cfg.Name = creds.Name()
	if len(cfg.Proxies) == 0 {
		for _, p := range s.Proxies {
			ep, err := tunnel.ParseEndpoint(p)
			if err != nil {
				return nil, err
			}
			cfg.Proxies = append(cfg.Proxies, ep)
		}
	}
	return creds, nil
}
