package appliance

import (
	"cmp"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"vnet/adapt"

	"vnet/topo"
)

// stateFile is the proxy's desired state on disk (in --state-dir).
const stateFile = "proxy-state.json"

type savedState struct {
	Version int         `json:"version"`
	Hosts   []string    `json:"hosts"`
	Links   []topo.Link `json:"links"`
	Rules   []RuleInfo  `json:"rules"`
	// What the adaptation controller made, so that after a restart it
	// still tells its own fast paths (which age out) from the operator's.
	AdaptedLinks []string     `json:"adapted_links,omitempty"`
	AdaptedRules []adapt.Rule `json:"adapted_rules,omitempty"`
}

// saveState writes the desired state atomically: a temporary file, fsync,
// rename, fsync of the directory. A crash leaves the old or the new file.
func (p *Proxy) saveState() {
	if p.cfg.StateDir == "" {
		return
	}
	p.mu.Lock()
	s := savedState{Version: 1, Hosts: sortedKeys(p.mu.known), Links: []topo.Link{}, Rules: []RuleInfo{}}
	for _, n := range sortedKeys(p.mu.links) {
		s.Links = append(s.Links, p.mu.links[n])
	}
	for _, h := range sortedKeys(p.mu.rules) {
		s.Rules = append(s.Rules, ruleInfos(h, p.mu.rules[h])...)
	}
	s.AdaptedLinks = sortedKeys(p.mu.adaptedLinks)
	for r := range p.mu.adaptedRules {
		s.AdaptedRules = append(s.AdaptedRules, r)
	}
	slices.SortFunc(s.AdaptedRules, func(a, b adapt.Rule) int {
		return cmp.Or(cmp.Compare(a.Host, b.Host), cmp.Compare(a.Dst, b.Dst), cmp.Compare(a.Src, b.Src), cmp.Compare(a.To, b.To))
	})
	p.mu.Unlock()
	b, _ := json.MarshalIndent(s, "", "  ")
	if err := writeFileAtomic(filepath.Join(p.cfg.StateDir, stateFile), append(b, '\n')); err != nil {
		p.log.Error("cannot save state", "dir", p.cfg.StateDir, "err", err)
	}
}

func writeFileAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, ".tmp-"+filepath.Base(path))
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return err
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// restoreState loads the saved desired state. A missing file is a first
// start; a corrupt one is reported and the proxy starts from the bare star.
func (p *Proxy) restoreState() {
	path := filepath.Join(p.cfg.StateDir, stateFile)
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return
	}
	s, err := parseState(b, err)
	if err != nil {
		p.log.Error("state file unusable; starting from the bare star (hosts' links and rules will be adopted as they report)",
			"file", path, "err", err)
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, h := range s.Hosts {
		p.mu.known[h] = true
	}
	for _, l := range s.Links {
		p.mu.links[l.Name()] = l
	}
	for _, ri := range s.Rules {
		r, _ := parseRuleInfo(ri)
		p.mu.rules[ri.Host] = append(p.mu.rules[ri.Host], r)
	}
	for _, n := range s.AdaptedLinks {
		p.mu.adaptedLinks[n] = true
	}
	for _, r := range s.AdaptedRules {
		p.mu.adaptedRules[r] = true
	}
	p.log.Info("state restored", "file", path, "hosts", len(s.Hosts), "links", len(s.Links), "rules", len(s.Rules))
}

func parseState(b []byte, readErr error) (*savedState, error) {
	if readErr != nil {
		return nil, readErr
	}
	var s savedState
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("malformed (truncated?): %w", err)
	}
	if s.Version != 1 {
		return nil, fmt.Errorf("unknown state version %d", s.Version)
	}
	for _, l := range s.Links {
		if l.A == "" || l.A >= l.B {
			return nil, fmt.Errorf("bad link %+v", l)
		}
	}
	for _, ri := range s.Rules {
		if _, err := parseRuleInfo(ri); err != nil {
			return nil, fmt.Errorf("bad rule: %w", err)
		}
	}
	return &s, nil
}
