package appliance

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"slices"
	"strings"
	"time"

	"vnet/adapt"
	"vnet/bridge"
	"vnet/infer"
	"vnet/topo"
	"vnet/tunnel"
)

// desired is a copy of the proxy's desired state, changed as a whole.
type desired struct {
	links map[string]topo.Link
	rules map[string][]bridge.Rule
	// declared are hosts a topology file names: known from the commit on,
	// before they ever connect (their links and rules wait for them).
	declared map[string]bool
	dryRun   bool // validate the change, then drop it (change returns errDryRun)
}

// change applies f to a copy of the desired state, validates the result and
// commits it: every change goes through here, so the state is never half
// applied nor invalid.
func (p *Proxy) change(f func(d *desired) error) error {
	p.mu.Lock()
	d := &desired{links: maps.Clone(p.mu.links), rules: map[string][]bridge.Rule{}, declared: map[string]bool{}}
	for h, rs := range p.mu.rules {
		d.rules[h] = slices.Clone(rs)
	}
	if err := f(d); err != nil {
		p.mu.Unlock()
		return err
	}
	var errs []error
	for _, h := range sortedKeys(d.rules) {
		if err := bridge.ValidateRules(d.rules[h]); err != nil {
			errs = append(errs, fmt.Errorf("rules on %s: %w", h, err))
		}
		for _, r := range d.rules[h] {
			if err := p.checkTargetLocked(d, h, r); err != nil {
				errs = append(errs, err)
			}
		}
		if len(d.rules[h]) == 0 {
			delete(d.rules, h)
		}
	}
	if len(errs) > 0 {
		p.mu.Unlock()
		return &apiError{http.StatusBadRequest, errors.Join(errs...).Error()}
	}
	if d.dryRun {
		p.mu.Unlock()
		return errDryRun
	}
	p.mu.links, p.mu.rules = d.links, d.rules
	for h := range d.declared {
		p.mu.known[h] = true
	}
	p.mu.Unlock()
	p.saveState()
	p.pushConfigs()
	return nil
}

// checkHostLocked reports an unknown host (d: the state being changed).
func (p *Proxy) checkHostLocked(d *desired, name string) error {
	if name == topo.ProxyHost || d.declared[name] {
		return nil
	}
	if p.mu.hosts[name] == nil && !p.mu.known[name] {
		return badRequest("unknown host %s (see `vnet ctl hosts`)", name)
	}
	return nil
}

// checkTargetLocked checks that rule r on host names a link or port there.
func (p *Proxy) checkTargetLocked(d *desired, host string, r bridge.Rule) error {
	if err := p.checkHostLocked(d, host); err != nil {
		return err
	}
	name := r.To.Name
	if r.To.IsAccess() {
		return nil
	}
	if r.To.Kind == bridge.TargetLink {
		if host == topo.ProxyHost {
			for h := range p.mu.hosts {
				if StarLinkName(h) == name {
					return nil
				}
			}
		} else if name == StarLinkName(host) {
			return nil
		} else if l, ok := d.links[name]; ok && (l.A == host || l.B == host) {
			return nil
		}
		return badRequest("rule on %s: unknown link %s (links there: %s)", host, name, strings.Join(p.linksOfLocked(d, host), ", "))
	}
	var ports []string
	if host == topo.ProxyHost {
		for _, st := range p.sw.Stats() {
			if st.Role == bridge.RoleLocal {
				ports = append(ports, st.Name)
			}
		}
	} else if rec := p.mu.hosts[host]; rec != nil {
		for _, pi := range rec.status.Ports {
			if pi.Role == bridge.RoleLocal.String() {
				ports = append(ports, pi.Name)
			}
		}
	} else {
		return nil // a host declared but never seen: its ports are not known yet
	}
	if slices.Contains(ports, name) {
		return nil
	}
	return badRequest("rule on %s: unknown port %s (VM ports there: %s)", host, name, strings.Join(ports, ", "))
}

func (p *Proxy) linksOfLocked(d *desired, host string) []string {
	var out []string
	if host == topo.ProxyHost {
		for _, h := range sortedKeys(p.mu.hosts) {
			out = append(out, StarLinkName(h))
		}
		return out
	}
	out = append(out, StarLinkName(host))
	for _, n := range sortedKeys(d.links) {
		if l := d.links[n]; l.A == host || l.B == host {
			out = append(out, n)
		}
	}
	return out
}

// linkRequest is the body of POST/DELETE /api/v1/links.
type linkRequest struct {
	A    string `json:"a"`
	B    string `json:"b"`
	Kind string `json:"kind,omitempty"`
}

func (p *Proxy) addLink(a, b, kind string) (string, error) {
	if kind != "" && kind != "tcp" && kind != "udp" {
		return "", badRequest("fast links are udp or tcp, not %q (empty: udp when both hosts have a UDP socket, else tcp)", kind)
	}
	if a == b {
		return "", badRequest("a link needs two different hosts")
	}
	if a == topo.ProxyHost || b == topo.ProxyHost {
		return "", badRequest("every host already has a star link to the proxy; fast links join two hosts")
	}
	l := topo.Link{A: min(a, b), B: max(a, b), Kind: kind}
	name := l.Name()
	err := p.change(func(d *desired) error {
		for _, h := range []string{a, b} {
			if err := p.checkHostLocked(d, h); err != nil {
				return err
			}
		}
		if _, ok := d.links[name]; ok {
			return &apiError{http.StatusConflict, "link " + name + " exists already"}
		}
		d.links[name] = l
		return nil
	})
	if err == nil {
		p.log.Info("fast link added", "link", name)
	}
	return name, err
}

func (p *Proxy) delLink(a, b string) (string, error) {
	name := FastLinkName(a, b)
	err := p.change(func(d *desired) error {
		if _, ok := d.links[name]; !ok {
			return notFound("no fast link %s", name)
		}
		delete(d.links, name)
		for h, rs := range d.rules { // rules through the link go with it
			d.rules[h] = slices.DeleteFunc(rs, func(r bridge.Rule) bool {
				return r.To.Kind == bridge.TargetLink && r.To.Name == name
			})
		}
		return nil
	})
	if err == nil {
		p.log.Info("fast link removed", "link", name)
	}
	return name, err
}

func (p *Proxy) addRule(ri RuleInfo) error {
	r, err := parseRuleInfo(ri)
	if err != nil {
		return badRequest("%v", err)
	}
	return p.change(func(d *desired) error {
		if slices.Contains(d.rules[ri.Host], r) {
			return &apiError{http.StatusConflict, fmt.Sprintf("rule on %s exists already: %s", ri.Host, r)}
		}
		d.rules[ri.Host] = append(d.rules[ri.Host], r)
		return nil
	})
}

func (p *Proxy) delRule(ri RuleInfo) error {
	r, err := parseRuleInfo(ri)
	if err != nil {
		return badRequest("%v", err)
	}
	return p.change(func(d *desired) error {
		i := slices.Index(d.rules[ri.Host], r)
		if i < 0 {
			return notFound("no rule on %s: %s", ri.Host, r)
		}
		d.rules[ri.Host] = slices.Delete(d.rules[ri.Host], i, i+1)
		return nil
	})
}

// export is the live state in the topology language's terms.
func (p *Proxy) export() *topo.Topology {
	t := &topo.Topology{}
	for _, h := range p.hosts() {
		t.Hosts = append(t.Hosts, h.Name)
	}
	for _, vm := range p.vms() {
		t.VMs = append(t.VMs, topo.VM{MAC: vm.MAC, Host: vm.Host, Port: vm.Port})
	}
	p.mu.Lock()
	for _, n := range sortedKeys(p.mu.links) {
		t.Links = append(t.Links, p.mu.links[n])
	}
	p.mu.Unlock()
	for _, r := range p.rules() {
		t.Rules = append(t.Rules, topo.Rule{Host: r.Host, Src: r.Src, Dst: r.Dst, To: r.To, Filter: r.Filter})
	}
	t.Canonical()
	return t
}

// applyOpts say how apply treats a topology.
type applyOpts struct {
	dryRun bool // report the changes, make none
	// file: t is the proxy's topology file (--topology). The hosts it names
	// count as known before they connect, and the links and rules the
	// adaptation controller made are left alone unless t names them.
	file bool
}

// apply makes the desired state equal to t's links and rules; it changes
// only the difference and reports each change. VM placement differences are
// reported but not acted on (migration belongs to adaptation).
func (p *Proxy) apply(t *topo.Topology, o applyOpts) (ApplyResult, error) {
	res := ApplyResult{Changes: []string{}, DryRun: o.dryRun}
	live := p.export()
	hosts := t.Hosts
	if o.file {
		named := t.Clone()
		named.Canonical()
		hosts = named.Hosts
	}
	if o.file {
		p.mu.Lock()
		live.Links = slices.DeleteFunc(live.Links, func(l topo.Link) bool { return p.mu.adaptedLinks[l.Name()] })
		live.Rules = slices.DeleteFunc(live.Rules, func(r topo.Rule) bool {
			return p.mu.adaptedRules[adapt.Rule{Host: r.Host, Src: r.Src, Dst: r.Dst, To: r.To}]
		})
		p.mu.Unlock()
	}
	changes := topo.Diff(live, t)
	err := p.change(func(d *desired) error {
		for _, h := range hosts {
			if o.file && h != topo.ProxyHost {
				if err := ValidName(h); err != nil {
					return badRequest("host %s: %v", h, err)
				}
				d.declared[h] = true
			}
			if err := p.checkHostLocked(d, h); err != nil {
				return err
			}
		}
		for _, c := range changes {
			switch {
			case c.Link != nil && c.Op == topo.OpAdd:
				if c.Link.Kind != "" && c.Link.Kind != "tcp" && c.Link.Kind != "udp" {
					return badRequest("link %s: fast links are udp or tcp, not %s", c.Link.Name(), c.Link.Kind)
				}
				d.links[c.Link.Name()] = *c.Link
			case c.Link != nil && c.Op == topo.OpDel:
				delete(d.links, c.Link.Name())
			case c.Rule != nil:
				r, err := bridge.ParseRuleFilter(c.Rule.Src, c.Rule.Dst, c.Rule.Filter, c.Rule.To)
				if err != nil {
					return badRequest("%s: %v", c, err)
				}
				if c.Op == topo.OpAdd {
					d.rules[c.Rule.Host] = append(d.rules[c.Rule.Host], r)
				} else if i := slices.Index(d.rules[c.Rule.Host], r); i >= 0 {
					d.rules[c.Rule.Host] = slices.Delete(d.rules[c.Rule.Host], i, i+1)
				}
			case c.VM != nil:
				res.Changes = append(res.Changes, c.String()+"  (skipped: VM placement is not applied yet)")
				continue
			}
			res.Changes = append(res.Changes, c.String())
		}
		d.dryRun = o.dryRun
		return nil
	})
	if errors.Is(err, errDryRun) {
		err = nil
	}
	if err == nil && !o.dryRun {
		for _, c := range res.Changes {
			p.log.Info("applied", "change", c)
		}
	}
	return res, err
}

var errDryRun = errors.New("dry run")

func (p *Proxy) routes() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/v1/status", handle(func(*http.Request) (any, error) {
		st := Status{Role: "proxy", Name: topo.ProxyHost, Version: Version, UptimeS: int64(time.Since(p.start).Seconds()),
			Listen: p.Addrs(), MACs: len(p.sw.MACs()), Ports: portInfos(p.sw), STUN: p.stun.Stats()}
		for _, ln := range p.lns {
			if m, ok := unwrapAcceptor(ln).(*tunnel.UDPMux); ok {
				st.UDP = m.Stats()
			}
		}
		for _, h := range p.hosts() {
			st.HostsKnown++
			if h.State == "up" {
				st.HostsUp++
			}
		}
		for _, l := range p.links() {
			if l.State == "up" {
				st.LinksUp++
			}
		}
		return st, nil
	}))
	mux.HandleFunc("GET /api/v1/hosts", handle(func(*http.Request) (any, error) { return p.hosts(), nil }))
	mux.HandleFunc("GET /api/v1/links", handle(func(*http.Request) (any, error) { return p.links(), nil }))
	mux.HandleFunc("GET /api/v1/rules", handle(func(*http.Request) (any, error) { return p.rules(), nil }))
	mux.HandleFunc("GET /api/v1/vms", handle(func(*http.Request) (any, error) { return p.vms(), nil }))
	mux.HandleFunc("GET /api/v1/route", handle(func(r *http.Request) (any, error) {
		src, err := bridge.ParseMAC(r.URL.Query().Get("src"))
		if err != nil {
			return nil, badRequest("src: %v", err)
		}
		dst, err := bridge.ParseMAC(r.URL.Query().Get("dst"))
		if err != nil {
			return nil, badRequest("dst: %v", err)
		}
		return p.route(r.Context(), src, dst)
	}))
	mux.HandleFunc("POST /api/v1/links", handle(func(r *http.Request) (any, error) {
		var lr linkRequest
		if err := decodeBody(r, &lr); err != nil {
			return nil, err
		}
		name, err := p.addLink(lr.A, lr.B, lr.Kind)
		return map[string]string{"added": name}, err
	}))
	mux.HandleFunc("DELETE /api/v1/links", handle(func(r *http.Request) (any, error) {
		var lr linkRequest
		if err := decodeBody(r, &lr); err != nil {
			return nil, err
		}
		name, err := p.delLink(lr.A, lr.B)
		return map[string]string{"removed": name}, err
	}))
	mux.HandleFunc("POST /api/v1/adapt", handle(func(r *http.Request) (any, error) {
		var ar struct {
			On    *bool `json:"on"`
			Reset bool  `json:"reset"`
		}
		if err := decodeBody(r, &ar); err != nil {
			return nil, err
		}
		if ar.On == nil && !ar.Reset {
			return nil, badRequest(`adapt wants {"on": true|false} and/or {"reset": true}`)
		}
		if ar.On != nil {
			p.SetAdapting(*ar.On)
			p.log.Info("adaptation controller turned " + map[bool]string{true: "on", false: "off"}[*ar.On])
		}
		if ar.Reset {
			if err := p.DropAdapted(); err != nil {
				return nil, err
			}
			p.log.Info("adaptation reset: the controller's fast paths and rules removed")
		}
		return map[string]string{"adapting": fmt.Sprint(p.adaptOn.Load())}, nil
	}))
	mux.HandleFunc("POST /api/v1/migrate", handle(func(r *http.Request) (any, error) {
		var mr struct {
			VM   string `json:"vm"`
			Host string `json:"host"`
		}
		if err := decodeBody(r, &mr); err != nil {
			return nil, err
		}
		if mr.VM == "" || mr.Host == "" {
			return nil, badRequest(`migrate wants {"vm": MAC or IP, "host": NAME}`)
		}
		return p.Migrate(r.Context(), mr.VM, mr.Host)
	}))
	mux.HandleFunc("POST /api/v1/rules", handle(func(r *http.Request) (any, error) {
		var ri RuleInfo
		if err := decodeBody(r, &ri); err != nil {
			return nil, err
		}
		return map[string]string{"added": ri.String()}, p.addRule(ri)
	}))
	mux.HandleFunc("DELETE /api/v1/rules", handle(func(r *http.Request) (any, error) {
		var ri RuleInfo
		if err := decodeBody(r, &ri); err != nil {
			return nil, err
		}
		return map[string]string{"removed": ri.String()}, p.delRule(ri)
	}))
	mux.HandleFunc("GET /api/v1/matrix", handle(func(r *http.Request) (any, error) {
		last, err := parseLast(r)
		if err != nil {
			return nil, err
		}
		if last == 0 {
			return p.agg.Smoothed(), nil
		}
		return p.agg.Matrix(last), nil
	}))
	mux.HandleFunc("GET /api/v1/topology", handle(func(*http.Request) (any, error) { return p.agg.Topology(), nil }))
	mux.HandleFunc("GET /api/v1/events", p.serveEvents)
	dashboardRoutes(mux, p.ctx, p.snapshot)
	mux.HandleFunc("GET /api/v1/plan", handle(func(*http.Request) (any, error) { return p.planResult(), nil }))
	mux.HandleFunc("GET /api/v1/export", handle(func(*http.Request) (any, error) {
		var b bytes.Buffer
		if err := p.export().Format(&b); err != nil {
			return nil, err
		}
		return textBody(b.String()), nil
	}))
	mux.HandleFunc("POST /api/v1/apply", handle(func(r *http.Request) (any, error) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			return nil, err
		}
		t, err := topo.Parse(bytes.NewReader(body))
		if err != nil {
			return nil, badRequest("%v", err)
		}
		return p.apply(t, applyOpts{dryRun: r.URL.Query().Get("dry_run") != ""})
	}))
	mux.HandleFunc("POST /api/v1/reload", handle(func(*http.Request) (any, error) { return p.Reload() }))
	p.joinRoutes(mux)
	mux.Handle("GET /metrics", metricsHandler(daemonCollector{proxy: p}, p.log))
	handleProfiles(mux)
	mux.HandleFunc("/api/v1/", handle(func(r *http.Request) (any, error) {
		return nil, notFound("%s %s: no such API call", r.Method, r.URL.Path)
	}))
	return mux
}

// Exported views and changes, for in-process users (vnet demo, tests).

// Hosts lists the hosts the proxy knows.
func (p *Proxy) Hosts() []HostInfo { return p.hosts() }

// Links lists star and fast-path links.
func (p *Proxy) Links() []LinkInfo { return p.links() }

// VMs lists the VMs (MACs) attached anywhere.
func (p *Proxy) VMs() []VMInfo { return p.vms() }

// Rules lists the rules on every host.
func (p *Proxy) Rules() []RuleInfo { return p.rules() }

// Route traces the path a frame from src to dst takes now.
func (p *Proxy) Route(ctx context.Context, src, dst bridge.MAC) (Route, error) {
	return p.route(ctx, src, dst)
}

// AddLink asks for a fast-path link between hosts a and b; it returns the
// link's name.
func (p *Proxy) AddLink(a, b string) (string, error) { return p.addLink(a, b, "") }

// Topology is the application topology inferred from the VMs' traffic.
func (p *Proxy) Topology() infer.Topology { return p.agg.Topology() }

// DelLink removes the fast-path link between a and b.
func (p *Proxy) DelLink(a, b string) (string, error) { return p.delLink(a, b) }

// readTopology reads and parses ProxyConfig.TopologyFile.
func (p *Proxy) readTopology() (*topo.Topology, error) {
	name := p.cfg.TopologyFile
	f, err := os.Open(name)
	if err != nil {
		return nil, badRequest("--topology: %v", err)
	}
	defer f.Close()
	t, err := topo.Parse(io.LimitReader(f, maxBody))
	if err != nil {
		return nil, badRequest("--topology %s: %v", name, err)
	}
	return t, nil
}

// Reload re-reads the topology file (ProxyConfig.TopologyFile) and the
// settings (ProxyConfig.ReloadSettings) and applies only what changed:
// links and rules not in the difference, and the links under them, are not
// touched. If either file is invalid, or the topology cannot be applied, it
// changes nothing and says why.
func (p *Proxy) Reload() (ReloadResult, error) {
	p.reloading.Lock()
	defer p.reloading.Unlock()
	res := ReloadResult{Changes: []string{}, Applied: []string{}, NeedsRestart: []string{}}
	var t *topo.Topology
	if p.cfg.TopologyFile != "" {
		var err error
		if t, err = p.readTopology(); err != nil {
			return res, p.reloadFailed(err)
		}
		if _, err := p.apply(t, applyOpts{file: true, dryRun: true}); err != nil {
			return res, p.reloadFailed(fmt.Errorf("--topology %s: %w", p.cfg.TopologyFile, err))
		}
	}
	if p.cfg.ReloadSettings != nil {
		applied, restart, err := p.cfg.ReloadSettings()
		if err != nil {
			return res, p.reloadFailed(err)
		}
		res.Applied = append(res.Applied, applied...)
		res.NeedsRestart = append(res.NeedsRestart, restart...)
	}
	if t != nil {
		ar, err := p.apply(t, applyOpts{file: true})
		if err != nil { // the state moved since the dry run
			return res, p.reloadFailed(fmt.Errorf("--topology %s: %w", p.cfg.TopologyFile, err))
		}
		res.Changes = ar.Changes
	}
	for _, s := range res.Applied {
		p.log.Info("reload: setting applied", "setting", s)
	}
	if len(res.NeedsRestart) > 0 {
		p.log.Warn("reload: needs a restart: " + strings.Join(res.NeedsRestart, ", "))
	}
	p.log.Info("reloaded", "topology_changes", len(res.Changes), "settings_applied", len(res.Applied),
		"needs_restart", len(res.NeedsRestart))
	return res, nil
}

func (p *Proxy) reloadFailed(err error) error {
	p.log.Error("reload failed; nothing changed", "err", err)
	code := http.StatusBadRequest
	var ae *apiError
	if errors.As(err, &ae) {
		code = ae.code
	}
	return &apiError{code, "reload failed, nothing changed: " + err.Error()}
}

// SetAPIToken changes the token the control API requires ("": none, on
// loopback only).
func (p *Proxy) SetAPIToken(token string) error {
	if p.api == nil {
		return nil
	}
	return p.api.setToken(token)
}
