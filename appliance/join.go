package appliance

// Invites and revocation at the proxy: `vnet ctl invite` makes a one-line
// token that lets one host join without the network key (tunnel/join.go);
// `vnet ctl hosts revoke` cuts a host off. The proxy keeps a hash of each
// invite's secret, its uses left and its expiry, the hosts that joined and
// the revoked list in its state directory (enroll.json, written atomically).

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"time"

	"vnet/bridge"
	"vnet/topo"
	"vnet/tunnel"
)

// enrollFile holds invites, joined hosts and the revoked list.
const enrollFile = "enroll.json"

// MaxInviteUses bounds --uses.
const MaxInviteUses = 1000

type invite struct {
	Name     string    `json:"name"`
	Hash     string    `json:"hash"` // hex SHA-256 of the secret
	Expires  time.Time `json:"expires"`
	UsesLeft int       `json:"uses_left"`
	Uses     int       `json:"uses"` // as made
}

type enrolled struct {
	Serial string    `json:"serial"`
	Invite string    `json:"invite"`
	At     time.Time `json:"at"`
}

type enrollState struct {
	Version int                 `json:"version"`
	Invites map[string]*invite  `json:"invites"`
	Hosts   map[string]enrolled `json:"hosts"`
	Revoked tunnel.Revoked      `json:"revoked"`
}

// InviteRequest is the body of POST /api/v1/invites.
type InviteRequest struct {
	Name     string   `json:"name"`
	ExpiresS int64    `json:"expires_s,omitempty"` // 0: one hour
	Uses     int      `json:"uses,omitempty"`      // 0: one
	Proxies  []string `json:"proxies,omitempty"`   // endpoints for the token; none: the proxy's listeners
}

// InviteReply is its answer.
type InviteReply struct {
	Token   string    `json:"token"`
	ID      string    `json:"id"`
	Name    string    `json:"name"`
	Expires time.Time `json:"expires"`
	Uses    int       `json:"uses"`
}

// restoreEnroll loads enroll.json; a missing file is a first start.
func (p *Proxy) restoreEnroll() error {
	p.enroll = enrollState{Version: 1, Invites: map[string]*invite{}, Hosts: map[string]enrolled{}}
	if p.cfg.StateDir == "" {
		return nil
	}
	path := filepath.Join(p.cfg.StateDir, enrollFile)
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	var s enrollState
	if err := json.Unmarshal(b, &s); err != nil || s.Version != 1 {
		// Refuse to start: a lost revoked list would let revoked hosts back in.
		return fmt.Errorf("%s is unusable (malformed or of another version); move it away to start without invites and revocations", path)
	}
	if s.Invites == nil {
		s.Invites = map[string]*invite{}
	}
	if s.Hosts == nil {
		s.Hosts = map[string]enrolled{}
	}
	p.enroll = s
	return nil
}

// saveEnrollLocked writes enroll.json (under p.enrollMu).
func (p *Proxy) saveEnrollLocked() error {
	if p.cfg.StateDir == "" {
		return nil
	}
	b, _ := json.MarshalIndent(p.enroll, "", "  ")
	if err := writeFileAtomic(filepath.Join(p.cfg.StateDir, enrollFile), append(b, '\n')); err != nil {
		p.log.Error("cannot save invites and revocations", "dir", p.cfg.StateDir, "err", err)
		return fmt.Errorf("saving %s: %w", enrollFile, err)
	}
	return nil
}

// Invite makes an invite token for host name (see InviteRequest).
func (p *Proxy) Invite(req InviteRequest, apiHost string) (InviteReply, error) {
	if err := ValidName(req.Name); err != nil {
		return InviteReply{}, badRequest("%v", err)
	}
	if req.Uses == 0 {
		req.Uses = 1
	}
	if req.Uses < 0 || req.Uses > MaxInviteUses {
		return InviteReply{}, badRequest("uses %d out of range 1..%d", req.Uses, MaxInviteUses)
	}
	ttl := time.Duration(req.ExpiresS) * time.Second
	if req.ExpiresS == 0 {
		ttl = time.Hour
	}
	if ttl <= 0 || ttl > 10*365*24*time.Hour {
		return InviteReply{}, badRequest("expires %v out of range (1s..10 years)", ttl)
	}
	var eps []tunnel.Endpoint
	for _, s := range req.Proxies {
		ep, err := tunnel.ParseEndpoint(s)
		if err != nil {
			return InviteReply{}, badRequest("%v", err)
		}
		eps = append(eps, ep)
	}
	if len(eps) == 0 {
		eps = p.advertised(apiHost)
	}
	if !slices.ContainsFunc(eps, func(e tunnel.Endpoint) bool { return e.Kind == "tcp" }) {
		return InviteReply{}, badRequest("hosts join over tcp://: the proxy needs a tcp:// --listen (or name one with --proxy)")
	}
	secret := make([]byte, 32)
	rand.Read(secret)
	idb := make([]byte, 8)
	rand.Read(idb)
	id := hex.EncodeToString(idb)
	sum := sha256.Sum256(secret)
	inv := &invite{Name: req.Name, Hash: hex.EncodeToString(sum[:]), Expires: time.Now().Add(ttl).UTC().Truncate(time.Second),
		UsesLeft: req.Uses, Uses: req.Uses}
	p.enrollMu.Lock()
	if p.enroll.Revoked.Has(req.Name, "") {
		p.enrollMu.Unlock()
		return InviteReply{}, badRequest("host %s is revoked; invite it under another name", req.Name)
	}
	p.enroll.Invites[id] = inv
	p.pruneInvitesLocked()
	err := p.saveEnrollLocked()
	p.enrollMu.Unlock()
	if err != nil {
		return InviteReply{}, err
	}
	tok := tunnel.Token{Proxies: eps, CA: p.creds.CAFingerprint(), ID: id, Secret: secret, Name: req.Name, Expires: inv.Expires}
	p.log.Info("invite made", "name", req.Name, "id", id, "expires", inv.Expires, "uses", req.Uses)
	return InviteReply{Token: tok.String(), ID: id, Name: req.Name, Expires: inv.Expires, Uses: req.Uses}, nil
}

// pruneInvitesLocked forgets invites that expired a day ago or are used up.
func (p *Proxy) pruneInvitesLocked() {
	for id, inv := range p.enroll.Invites {
		if time.Since(inv.Expires) > 24*time.Hour {
			delete(p.enroll.Invites, id)
		}
	}
}

// advertised are the proxy's endpoints as a token names them: listeners on
// an unspecified address get the address the API was reached at when it is
// not loopback, else this machine's first global address.
func (p *Proxy) advertised(apiHost string) []tunnel.Endpoint {
	host := ""
	if h, _, err := net.SplitHostPort(apiHost); err == nil {
		if ip := net.ParseIP(h); ip != nil && !ip.IsLoopback() && !ip.IsUnspecified() {
			host = h
		}
	}
	if host == "" {
		if addrs, err := net.InterfaceAddrs(); err == nil {
			for _, a := range addrs {
				if ipn, ok := a.(*net.IPNet); ok && ipn.IP.IsGlobalUnicast() && ipn.IP.To4() != nil {
					host = ipn.IP.String()
					break
				}
			}
		}
	}
	if host == "" {
		host = "127.0.0.1"
	}
	var out []tunnel.Endpoint
	for i, ln := range p.lns {
		a := ln.Addr().String()
		if h, port, err := net.SplitHostPort(a); err == nil {
			if ip := net.ParseIP(h); ip == nil || ip.IsUnspecified() {
				a = net.JoinHostPort(host, port)
			}
		}
		out = append(out, tunnel.Endpoint{Kind: p.cfg.Listen[i].Kind, Addr: a})
	}
	return out
}

// join decides a join request (tunnel.JoinHandler).
func (p *Proxy) join(req tunnel.JoinRequest, from net.Addr) tunnel.JoinReply {
	refuse := func(format string, a ...any) tunnel.JoinReply {
		return tunnel.JoinReply{Error: fmt.Sprintf(format, a...)}
	}
	p.enrollMu.Lock()
	defer p.enrollMu.Unlock()
	inv := p.enroll.Invites[req.ID]
	sum := sha256.Sum256(req.Secret)
	if inv == nil || subtle.ConstantTimeCompare([]byte(hex.EncodeToString(sum[:])), []byte(inv.Hash)) != 1 {
		return refuse("the invite token is not valid here (forged, mistyped, or from another proxy)")
	}
	if req.Name != inv.Name {
		return refuse("the invite is for host %s, not %s", inv.Name, req.Name)
	}
	if p.enroll.Revoked.Has(inv.Name, "") {
		return refuse("host %s is revoked; the proxy's operator can invite it under another name", inv.Name)
	}
	if time.Now().After(inv.Expires) {
		return refuse("the invite for %s expired at %s; ask for a new one (vnet ctl invite)", inv.Name, inv.Expires.Format(time.RFC3339))
	}
	if inv.UsesLeft <= 0 {
		return refuse("the invite for %s is used up (it allowed %d join(s)); ask for a new one (vnet ctl invite)", inv.Name, inv.Uses)
	}
	if e, ok := p.enroll.Hosts[inv.Name]; ok && e.Invite != req.ID {
		return refuse("host name %s is already taken by a joined host; revoke it first or invite another name", inv.Name)
	}
	p.mu.Lock()
	rec := p.mu.hosts[inv.Name]
	taken := rec != nil && rec.link != nil
	p.mu.Unlock()
	if _, ok := p.enroll.Hosts[inv.Name]; !ok && taken {
		return refuse("host name %s is already taken by a connected host", inv.Name)
	}
	if err := ValidName(inv.Name); err != nil {
		return refuse("%v", err)
	}
	id, serial, err := p.creds.Issue(inv.Name, req.Pub)
	if err != nil {
		return refuse("%v", err)
	}
	inv.UsesLeft--
	p.enroll.Hosts[inv.Name] = enrolled{Serial: serial, Invite: req.ID, At: time.Now().UTC()}
	if err := p.saveEnrollLocked(); err != nil {
		inv.UsesLeft++
		return refuse("the proxy cannot save its state: %v", err)
	}
	p.log.Info("host joined with an invite", "name", inv.Name, "invite", req.ID, "serial", serial, "from", from.String())
	return tunnel.JoinReply{Identity: &id, Revoked: p.enroll.Revoked}
}

// Revoke cuts host name off: its certificate (and name) is refused from
// now on by the proxy and, told by their configs, by every host; its star
// link closes at once, and the fast links to it are removed.
func (p *Proxy) Revoke(name string) error {
	if err := ValidName(name); err != nil {
		return badRequest("%v", err)
	}
	p.enrollMu.Lock()
	e, joined := p.enroll.Hosts[name]
	p.mu.Lock()
	rec := p.mu.hosts[name]
	known := rec != nil || p.mu.known[name]
	p.mu.Unlock()
	if !joined && !known && !slices.ContainsFunc(mapValues(p.enroll.Invites), func(i *invite) bool { return i.Name == name }) {
		p.enrollMu.Unlock()
		return notFound("unknown host %s (see `vnet ctl hosts`)", name)
	}
	if !p.enroll.Revoked.Has(name, "") {
		p.enroll.Revoked.Names = append(p.enroll.Revoked.Names, name)
	}
	if joined && !slices.Contains(p.enroll.Revoked.Serials, e.Serial) {
		p.enroll.Revoked.Serials = append(p.enroll.Revoked.Serials, e.Serial)
	}
	delete(p.enroll.Hosts, name)
	revoked := p.enroll.Revoked
	err := p.saveEnrollLocked()
	p.enrollMu.Unlock()
	p.creds.SetRevoked(revoked)
	p.log.Warn("host revoked", "name", name, "serial", e.Serial)
	// Its fast links go from the desired state; its star link closes.
	p.change(func(d *desired) error {
		for n, l := range d.links {
			if l.A == name || l.B == name {
				delete(d.links, n)
			}
		}
		delete(d.rules, name)
		// Rules elsewhere that send to the links just removed go too.
		gone := func(h string, r bridge.Rule) bool {
			switch {
			case r.To.Kind != bridge.TargetLink:
				return false
			case h == topo.ProxyHost:
				return r.To.Name == StarLinkName(name)
			case r.To.Name == StarLinkName(h):
				return false
			}
			_, ok := d.links[r.To.Name]
			return !ok
		}
		for h, rs := range d.rules {
			d.rules[h] = slices.DeleteFunc(rs, func(r bridge.Rule) bool { return gone(h, r) })
		}
		return nil
	})
	p.mu.Lock()
	var link *tunnel.Link
	if rec := p.mu.hosts[name]; rec != nil {
		link = rec.link
	}
	p.mu.Unlock()
	if link != nil {
		link.Close()
	}
	p.pushConfigsNow()
	return err
}

func mapValues[K comparable, V any](m map[K]V) []V {
	out := make([]V, 0, len(m))
	for _, v := range m {
		out = append(out, v)
	}
	return out
}

// revokedList is what configs carry.
func (p *Proxy) revokedList() *tunnel.Revoked {
	r := p.creds.GetRevoked()
	if len(r.Names) == 0 && len(r.Serials) == 0 {
		return nil
	}
	return &r
}

// pushConfigsNow sends every host its config even if unchanged.
func (p *Proxy) pushConfigsNow() {
	p.mu.Lock()
	for _, rec := range p.mu.hosts {
		rec.sent = nil
	}
	p.mu.Unlock()
	p.pushConfigs()
}

func (p *Proxy) joinRoutes(mux *http.ServeMux) {
	mux.HandleFunc("POST /api/v1/invites", handle(func(r *http.Request) (any, error) {
		var req InviteRequest
		if err := decodeBody(r, &req); err != nil {
			return nil, err
		}
		return p.Invite(req, r.Host)
	}))
	mux.HandleFunc("POST /api/v1/hosts/{name}/revoke", handle(func(r *http.Request) (any, error) {
		name := r.PathValue("name")
		if name == topo.ProxyHost {
			return nil, badRequest("the proxy cannot be revoked")
		}
		return map[string]string{"revoked": name}, p.Revoke(name)
	}))
}
