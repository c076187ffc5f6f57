package appliance

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"vnet/adapt"
	"vnet/bridge"
	"vnet/infer"
	"vnet/nat"
	"vnet/topo"
	"vnet/tunnel"

	"golang.org/x/time/rate"
)

// LookupTimeout bounds one hop's answer to a route query.
var LookupTimeout = 3 * time.Second

// ProxyConfig configures the proxy.
type ProxyConfig struct {
	Listen []tunnel.Endpoint // star links from hosts; at least one
	Key    tunnel.Key
	API    string // control API address; "" for none
	// APIToken, if set, is required of every API request, and lets the API
	// listen beyond loopback.
	APIToken string
	StateDir string      // where desired state survives restarts; "" for none
	Ports    []LocalPort // VM-facing ports on the proxy itself
	// NoOffload keeps super-frames (bridge.OffloadPort) off the proxy's
	// links: every frame crosses them as a plain 1514-byte one.
	NoOffload bool
	// BroadcastRate bounds each VM port's broadcast and multicast frames a
	// second (bridge.Config.BroadcastRate; 0: the default, negative: none).
	BroadcastRate int
	// UDP sizes the datagrams of udp:// links and says whether they split
	// frames (tunnel.UDPOptions; zero: 1500-byte underlay, splitting).
	UDP    tunnel.UDPOptions
	Infer  infer.AccountConfig // accounting of the proxy's own VM ports; zero: defaults
	Global infer.GlobalConfig  // aggregation, smoothing, change detection; zero: defaults
	Adapt  AdaptConfig         // the adaptation controller; off unless Enabled
	// Migrator moves VMs (`vnet ctl migrate`, and the controller when
	// Adapt.Migrate); nil: MigrateCmd if set, else VMs are not moved.
	Migrator       Migrator
	MigrateCmd     string        // --migrate-cmd: see CommandMigrator
	MigrateTimeout time.Duration // bounds one migration; 0: MigrateTimeout
	// StarMbps, if > 0, emulates a WAN at the proxy (vnet demo): all star
	// links together carry at most this much from the proxy to the hosts.
	StarMbps float64
	// TopologyFile, if set, is a file in the topology language (package
	// topo) that the desired links and rules are made equal to at start and
	// on every Reload, as `vnet ctl apply` does; the adaptation
	// controller's own links and rules are left alone.
	TopologyFile string
	// ReloadSettings, if set, re-reads the daemon's settings on Reload
	// (vnet proxy's --config file): it applies what can change live and
	// returns those ("NAME = VALUE") and the names of the settings that
	// changed but need a restart. On an error it has changed nothing.
	ReloadSettings func() (applied, restart []string, err error)
	Log            *slog.Logger
}

// Proxy is the running hub of the star and the authority on desired state.
type Proxy struct {
	cfg       ProxyConfig
	log       *slog.Logger
	sw        *bridge.Switch
	creds     *tunnel.Credentials
	acct      *infer.Accountant
	agg       *infer.Aggregator
	damper    *adapt.Damper
	lns       []tunnel.Acceptor
	stun      nat.Server
	stunPorts []uint16 // where the proxy answers STUN: its UDP link port, then a second port
	stunAddrs []string // the IP addresses it answers STUN on (all of the machine's if unbound)
	api       *apiServer
	start     time.Time
	reported  chan struct{} // a host reported new pairs or quiet ones: re-evaluate soon
	migrator  Migrator
	starLimit *rate.Limiter // ProxyConfig.StarMbps
	adaptOn   atomic.Bool   // the controller runs (ProxyConfig.Adapt.Enabled, SetAdapting)
	moving    atomic.Int32  // migrations under way: the controller waits
	migrating sync.Mutex    // one migration at a time
	reloading sync.Mutex    // one Reload at a time

	adaptActions opCounts // changes the controller applied, by op (metrics)
	pins         pins     // VMs pinned to their hosts' star links (pin.go)

	enrollMu sync.Mutex // invites, joined hosts, revoked list (join.go); before mu
	enroll   enrollState

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu struct {
		sync.Mutex
		hosts map[string]*hostRec
		links map[string]topo.Link // desired fast links, by name
		rules map[string][]bridge.Rule
		known map[string]bool // hosts in the restored state: their links/rules are not adopted
		// What the adaptation controller made (it removes only these).
		adaptedLinks map[string]bool
		adaptedRules map[adapt.Rule]bool
		pending      map[uint64]chan *ctrlMsg
		nextID       uint64
	}
}

// hostRec is what the proxy knows of one host.
type hostRec struct {
	name     string
	link     *tunnel.Link // nil while down
	addr     netip.Addr   // the host's address as the proxy sees it
	status   hostStatus
	lastSeen time.Time
	kind     string // its star link's kind
	adopted  bool   // its reported links and rules were considered
	sent     []byte // last config sent
	sentAt   time.Time
}

// NewProxy validates cfg, restores state, opens the listeners and the API
// and starts the proxy.
func NewProxy(cfg ProxyConfig) (_ *Proxy, err error) {
	if len(cfg.Listen) == 0 {
		return nil, errors.New("no --listen endpoint")
	}
	log := discardIfNil(cfg.Log).With("host", "proxy")
	p := &Proxy{cfg: cfg, log: log, start: time.Now(), reported: make(chan struct{}, 1)}
	p.mu.hosts = map[string]*hostRec{}
	p.mu.links = map[string]topo.Link{}
	p.mu.adaptedLinks, p.mu.adaptedRules = map[string]bool{}, map[adapt.Rule]bool{}
	p.mu.rules = map[string][]bridge.Rule{}
	p.mu.known = map[string]bool{}
	p.mu.pending = map[uint64]chan *ctrlMsg{}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	cleanup := []func(){p.cancel}
	defer func() {
		if err != nil {
			for i := len(cleanup) - 1; i >= 0; i-- {
				cleanup[i]()
			}
		}
	}()
	if p.creds, err = tunnel.NewCredentials(cfg.Key, "proxy"); err != nil {
		return nil, err
	}
	p.acct = infer.NewAccountant(cfg.Infer)
	p.agg = infer.NewAggregator(cfg.Global)
	p.damper = adapt.NewDamper(cfg.Adapt.withDefaults().Damp)
	p.migrator = cfg.Migrator
	p.adaptOn.Store(cfg.Adapt.Enabled)
	if cfg.StarMbps > 0 {
		p.starLimit = rate.NewLimiter(rate.Limit(cfg.StarMbps*1e6/8), 64<<10)
	}
	if p.migrator == nil && cfg.MigrateCmd != "" {
		p.migrator = CommandMigrator(cfg.MigrateCmd, p)
	}
	p.sw = bridge.New(bridge.Config{Log: log, Observer: accountObserver{p.acct}, BroadcastRate: cfg.BroadcastRate})
	cleanup = append(cleanup, p.sw.Close)
	for _, lp := range cfg.Ports {
		if err := p.sw.AddPort(lp.Name, bridge.RoleLocal, lp.Port); err != nil {
			return nil, fmt.Errorf("port %s: %w", lp.Name, err)
		}
	}
	if cfg.StateDir != "" {
		p.restoreState()
	}
	if err := p.restoreEnroll(); err != nil {
		return nil, err
	}
	if cfg.TopologyFile != "" {
		t, err := p.readTopology()
		if err != nil {
			return nil, err
		}
		if _, err := p.apply(t, applyOpts{file: true}); err != nil {
			return nil, fmt.Errorf("--topology %s: %w", cfg.TopologyFile, err)
		}
	}
	p.creds.SetRevoked(p.enroll.Revoked)
	for _, ep := range cfg.Listen {
		ln, err := p.listen(ep)
		if err != nil {
			return nil, err
		}
		if tl, ok := ln.(*tunnel.Listener); ok {
			tl.SetJoinHandler(p.join)
		}
		cleanup = append(cleanup, func() { ln.Close() })
		p.lns = append(p.lns, ln)
	}
	if cfg.API != "" {
		if p.api, err = startAPI(cfg.API, cfg.APIToken, p.routes(), log); err != nil {
			return nil, err
		}
	}
	for _, ln := range p.lns {
		log.Info("proxy listening", "addr", ln.Addr().String(), "go_procs", runtime.GOMAXPROCS(0))
		p.wg.Add(1)
		go p.routineAccept(ln)
	}
	p.wg.Add(1)
	go p.routineInfer()
	if cfg.API != "" {
		log.Info("control API", "addr", p.api.addr())
	}
	return p, nil
}

// Switch is the proxy's switch.
func (p *Proxy) Switch() *bridge.Switch { return p.sw }

// Addrs are the addresses the proxy listens on for hosts.
func (p *Proxy) Addrs() []string {
	var out []string
	for _, ln := range p.lns {
		out = append(out, ln.Addr().String())
	}
	return out
}

// APIAddr is where the control API listens ("" if none).
func (p *Proxy) APIAddr() string {
	if p.api == nil {
		return ""
	}
	return p.api.addr()
}

// Close stops the proxy.
func (p *Proxy) Close() {
	p.cancel()
	if p.api != nil {
		p.api.close()
	}
	for _, ln := range p.lns {
		ln.Close()
	}
	p.mu.Lock()
	for _, h := range p.mu.hosts {
		if h.link != nil {
			h.link.Close()
		}
	}
	p.mu.Unlock()
	p.wg.Wait()
	p.migrating.Lock() // a migration under way has seen the cancel and returned
	p.migrating.Unlock()
	p.sw.Close()
	p.log.Info("proxy stopped")
}

// listen opens a listener of ep's kind. The first UDP listener also answers
// STUN, and a second UDP socket next to it answers STUN too, so that hosts
// can tell how their NAT maps (one server cannot show that).
func (p *Proxy) listen(ep tunnel.Endpoint) (tunnel.Acceptor, error) {
	switch ep.Kind {
	case "tcp":
		return tunnel.Listen(ep, p.creds, p.log)
	case "quic":
		return tunnel.ListenQUIC(ep.Addr, p.creds, p.log)
	case "udp":
		mux, err := tunnel.ListenUDPCredsWith(ep.Addr, p.creds, p.log, p.cfg.UDP)
		if err != nil {
			return nil, fmt.Errorf("listening on %s: %w", ep, err)
		}
		if len(p.stunPorts) > 0 {
			return mux, nil
		}
		mux.SetPacketHandler(func(b []byte, from netip.AddrPort) {
			if resp, ok := p.stun.Handle(b, from); ok {
				mux.WriteTo(resp, from)
			}
		})
		alt, err := p.listenSTUN(mux.Addr())
		if err != nil {
			mux.Close()
			return nil, err
		}
		p.stunPorts = []uint16{addrPort(mux.Addr()), addrPort(alt.LocalAddr())}
		for _, c := range candidateAddrs(mux.Addr(), true, ownDevices(p.cfg.Ports)) {
			if ap, err := netip.ParseAddrPort(c); err == nil {
				p.stunAddrs = append(p.stunAddrs, ap.Addr().String())
			}
		}
		return &closeBoth{Acceptor: mux, also: alt}, nil
	}
	return nil, fmt.Errorf("unknown link kind %q", ep.Kind)
}

// listenSTUN opens the second STUN socket on the same address as primary,
// any port, and answers binding requests on it until it is closed.
func (p *Proxy) listenSTUN(primary net.Addr) (*net.UDPConn, error) {
	ua, _ := primary.(*net.UDPAddr)
	laddr := &net.UDPAddr{}
	if ua != nil {
		laddr.IP = ua.IP
	}
	c, err := net.ListenUDP("udp", laddr)
	if err != nil {
		return nil, fmt.Errorf("second STUN port: %w", err)
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		buf := make([]byte, 1500)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			if resp, ok := p.stun.Handle(buf[:n], from); ok {
				c.WriteToUDPAddrPort(resp, from)
			}
		}
	}()
	return c, nil
}

// closeBoth is an acceptor that closes a second resource with itself.
type closeBoth struct {
	tunnel.Acceptor
	also io.Closer
}

func (c *closeBoth) Close() error {
	c.also.Close()
	return c.Acceptor.Close()
}

// unwrapAcceptor returns the listener inside a closeBoth.
func unwrapAcceptor(a tunnel.Acceptor) tunnel.Acceptor {
	if c, ok := a.(*closeBoth); ok {
		return c.Acceptor
	}
	return a
}

func addrPort(a net.Addr) uint16 {
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return 0
	}
	return ap.Port()
}

func (p *Proxy) routineAccept(ln tunnel.Acceptor) {
	defer p.wg.Done()
	me := tunnel.Hello{Name: "proxy", Role: "proxy", Offload: !p.cfg.NoOffload}
	for {
		in, err := ln.Accept(p.ctx)
		if err != nil {
			return
		}
		name := in.Hello.Name
		if in.Hello.Role != "host" {
			in.Refuse(me, "only hosts join the proxy")
			continue
		}
		if err := ValidName(name); err != nil {
			in.Refuse(me, err.Error())
			continue
		}
		if p.creds.IsRevoked(name, "") {
			p.log.Warn("refused a revoked host", "name", name, "addr", in.RemoteAddr().String())
			in.Refuse(me, fmt.Sprintf("host %s is revoked (vnet ctl hosts revoke)", name))
			continue
		}
		reply := me
		reply.Link = StarLinkName(name)
		link, err := in.Accept(reply, p.log, p.onHostControl)
		if err != nil {
			continue
		}
		p.wg.Add(1)
		go p.runHost(name, link)
	}
}

// runHost serves one host's star link until it ends.
func (p *Proxy) runHost(name string, link *tunnel.Link) {
	defer p.wg.Done()
	port := StarLinkName(name)
	p.mu.Lock()
	rec := p.mu.hosts[name]
	if rec == nil {
		rec = &hostRec{name: name}
		p.mu.hosts[name] = rec
	}
	old := rec.link
	rec.link, rec.addr, rec.lastSeen, rec.sent, rec.kind = link, addrIP(link.RemoteAddr()), time.Now(), nil, link.Kind()
	p.mu.Unlock()
	if old != nil {
		p.log.Warn("host connected again while its old link looked up; replacing it", "name", name)
		old.Close()
	}
	p.sw.RemovePort(port)
	var sp bridge.Port = link
	if p.starLimit != nil {
		sp = bridge.Shape(link, p.starLimit)
	}
	if err := p.sw.AddPort(port, bridge.RoleStar, sp); err != nil {
		p.log.Error("cannot attach star link", "name", name, "err", err)
		link.Close()
		return
	}
	p.repin(name)
	p.log.Info("host joined", "name", name, "addr", link.RemoteAddr().String())
	select {
	case <-link.Done():
	case <-p.ctx.Done():
		link.Close()
	}
	p.mu.Lock()
	current := rec.link == link
	if current {
		rec.link = nil
	}
	p.mu.Unlock()
	if current {
		p.sw.RemovePort(port)
		p.pinVMs() // a VM it shared with another host is that host's alone now
		if p.ctx.Err() == nil {
			p.log.Warn("host left", "name", name, "err", link.Err())
		}
	}
}

// onHostControl handles a host's messages (on its star link's reader).
func (p *Proxy) onHostControl(l *tunnel.Link, b []byte) { p.hostControl(l.Peer().Name, l, b) }

// hostControl handles message b from host name over link l.
func (p *Proxy) hostControl(name string, l *tunnel.Link, b []byte) {
	var m ctrlMsg
	if err := json.Unmarshal(b, &m); err != nil {
		p.log.Warn("malformed control message", "from", name, "err", err)
		return
	}
	switch m.Op {
	case opStatus:
		if m.Status != nil {
			p.onStatus(name, l, *m.Status)
		}
	case opMatrix:
		if r := m.Matrix; r != nil {
			p.addReport(fmt.Sprintf("%s/%x", name, r.Boot), r)
		}
	case opLookupOK:
		p.mu.Lock()
		ch := p.mu.pending[m.ID]
		delete(p.mu.pending, m.ID)
		p.mu.Unlock()
		if ch != nil {
			ch <- &m
		}
	}
}

func (p *Proxy) onStatus(name string, l *tunnel.Link, st hostStatus) {
	p.mu.Lock()
	rec := p.mu.hosts[name]
	if rec == nil || rec.link != l {
		p.mu.Unlock()
		return
	}
	rec.status, rec.lastSeen = st, time.Now()
	changed := false
	if !rec.adopted {
		rec.adopted = true
		changed = p.adoptLocked(rec)
	}
	p.mu.Unlock()
	p.pinVMs()
	if changed {
		p.saveState()
	}
	p.pushConfigs()
}

// adoptLocked takes a host's links and rules into the desired state when
// the proxy has no record of the host (e.g. it restarted without a state
// directory): the hosts kept running and know what they had.
func (p *Proxy) adoptLocked(rec *hostRec) bool {
	if p.mu.known[rec.name] {
		return false
	}
	p.mu.known[rec.name] = true
	changed := true
	for _, li := range rec.status.Links {
		l := topo.Link{A: min(li.A, li.B), B: max(li.A, li.B)}
		if l.A == "" || l.A == l.B || l.Name() != li.Name {
			continue
		}
		if _, ok := p.mu.links[li.Name]; !ok {
			p.mu.links[li.Name] = l
			p.log.Info("adopted fast link reported by a host", "link", li.Name, "host", rec.name)
		}
	}
	if _, ok := p.mu.rules[rec.name]; !ok && len(rec.status.Rules) > 0 {
		rules, err := parseRuleInfos(rec.status.Rules)
		if err == nil {
			p.mu.rules[rec.name] = rules
			p.log.Info("adopted rules reported by a host", "host", rec.name, "n", len(rules))
		}
	}
	return changed
}

// configLocked computes host name's share of the desired state.
func (p *Proxy) configLocked(name string) hostConfig {
	c := hostConfig{Links: []fastLink{}, Rules: ruleInfos(name, p.mu.rules[name]), STUNPorts: p.stunPorts,
		STUNAddrs: p.stunAddrs, Revoked: p.revokedList()}
	for _, ln := range sortedKeys(p.mu.links) {
		l := p.mu.links[ln]
		if l.A != name && l.B != name {
			continue
		}
		peer := l.B
		if l.B == name {
			peer = l.A
		}
		fl := fastLink{Name: ln, Peer: peer, Kind: p.linkKindLocked(l), Dial: l.A == name,
			SamePublic: p.samePublicLocked(name, peer)}
		if fl.Dial {
			fl.UDPAddrs, fl.Reflexive = p.udpCandidatesLocked(peer)
			fl.TCPAddrs = p.tcpCandidatesLocked(peer)
		} else {
			fl.Punch, fl.Reflexive = p.udpCandidatesLocked(peer)
		}
		c.Links = append(c.Links, fl)
	}
	return c
}

// linkKindLocked picks the kind a fast link tries first (the other kind is
// the fallback): the one asked for; else UDP when both ends have a UDP
// socket (it punches through NATs, and since batching and offloads a UDP
// fast path moves as much as a TCP one, 5335 against 5074 Mbit/s, with a
// lower round trip, 264 against 342 µs: bench/results/2026-12-06-peers.*);
// else TCP.
func (p *Proxy) linkKindLocked(l topo.Link) string {
	if l.Kind != "" {
		return l.Kind
	}
	a, b := p.mu.hosts[l.A], p.mu.hosts[l.B]
	if a != nil && b != nil && len(a.status.UDP) > 0 && len(b.status.UDP) > 0 {
		return "udp"
	}
	return "tcp"
}

// tcpCandidatesLocked lists where host name accepts TCP fast links: its
// address as the proxy sees it first (right across NAT-free underlays even
// when the host does not know its public address), then what it reported.
func (p *Proxy) tcpCandidatesLocked(name string) []string {
	rec := p.mu.hosts[name]
	if rec == nil {
		return nil
	}
	var out []string
	for _, c := range rec.status.Listen {
		if ap, err := netip.ParseAddrPort(c); err == nil && rec.addr.IsValid() {
			out = append(out, netip.AddrPortFrom(rec.addr, ap.Port()).String())
		}
	}
	return dedupe(append(out, rec.status.Listen...))
}

// udpCandidatesLocked lists where host name receives UDP: its NAT mappings
// (from STUN) first, then its local addresses; and which are mappings (a
// reflexive address that is one of its local ones is no mapping: no NAT).
func (p *Proxy) udpCandidatesLocked(name string) (addrs, reflexive []string) {
	rec := p.mu.hosts[name]
	if rec == nil {
		return nil, nil
	}
	for _, r := range rec.status.Reflexive {
		if !slices.Contains(rec.status.UDP, r) {
			reflexive = append(reflexive, r)
		}
	}
	return dedupe(append(append([]string(nil), rec.status.Reflexive...), rec.status.UDP...)), reflexive
}

// samePublicLocked reports whether the proxy sees hosts a and b at one
// address (not loopback, where every host on the machine is): behind one
// NAT, or on one LAN with the proxy.
func (p *Proxy) samePublicLocked(a, b string) bool {
	ra, rb := p.mu.hosts[a], p.mu.hosts[b]
	return ra != nil && rb != nil && ra.addr.IsValid() && !ra.addr.IsLoopback() && ra.addr == rb.addr
}

func dedupe(in []string) []string {
	seen := map[string]bool{}
	out := []string{}
	for _, s := range in {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

// pushConfigs sends every connected host its config when it changed.
func (p *Proxy) pushConfigs() {
	p.mu.Lock()
	type send struct {
		link *tunnel.Link
		msg  []byte
	}
	var sends []send
	for _, name := range sortedKeys(p.mu.hosts) {
		rec := p.mu.hosts[name]
		if rec.link == nil || !rec.adopted {
			continue
		}
		c := p.configLocked(name)
		b := encodeCtrl(&ctrlMsg{Op: opConfig, Config: &c})
		// Soft state: a config lost on a datagram link is sent again soon.
		if string(b) == string(rec.sent) && time.Since(rec.sentAt) < StatusRefresh {
			continue
		}
		rec.sent, rec.sentAt = b, time.Now()
		sends = append(sends, send{rec.link, b})
	}
	rules := p.mu.rules[topo.ProxyHost]
	p.mu.Unlock()
	// Only on change: a new rule set flushes every port's decision cache.
	if !slices.Equal(p.sw.Rules(), rules) {
		if err := p.sw.SetRules(rules); err != nil {
			p.log.Warn("cannot install the proxy's rules", "err", err)
		}
	}
	for _, s := range sends {
		if err := s.link.SendControl(s.msg); err != nil {
			p.log.Debug("config not sent", "err", err)
		}
	}
}

// addReport merges a host's matrix report into the global matrix.
func (p *Proxy) addReport(key string, r *matrixReport) {
	fresh := p.agg.Add(key, r.Seq, r.Deltas)
	var quiet []infer.Pair
	for _, s := range r.Quiet {
		if pr, ok := parsePair(s); ok {
			quiet = append(quiet, pr)
		}
	}
	if len(quiet) > 0 {
		p.agg.Quiet(key, quiet)
	}
	if !fresh && len(quiet) == 0 {
		return // the same pairs: the periodic tick will do
	}
	select {
	case p.reported <- struct{}{}:
	default:
	}
}

// routineInfer runs the global half of inference: it adds the proxy's own
// VMs' traffic, re-evaluates the topology every ReportInterval, soon after
// a host reports a pair new to the window or gone quiet (at most every
// retickGap) and when a new structure has settled, and logs every change.
func (p *Proxy) routineInfer() {
	defer p.wg.Done()
	events, stop := p.agg.Subscribe()
	defer stop()
	t := time.NewTicker(ReportInterval)
	defer t.Stop()
	retick := time.NewTimer(time.Hour)
	defer retick.Stop()
	var lastTick, retickAt time.Time
	// tick evaluates now and arms retick for when the aggregator wants
	// to look again.
	tick := func() {
		lastTick = time.Now()
		if again := p.agg.Tick(); again > 0 {
			at := lastTick.Add(again)
			if retickAt.IsZero() || at.Before(retickAt) {
				retickAt = at
				retick.Reset(again)
			}
		}
	}
	soon := func() { // a report arrived
		at := lastTick.Add(retickGap)
		if !time.Now().Before(at) {
			tick()
			return
		}
		if retickAt.IsZero() || at.Before(retickAt) {
			retickAt = at
			retick.Reset(time.Until(at))
		}
	}
	acfg := p.cfg.Adapt.withDefaults()
	replan := time.NewTicker(acfg.Interval)
	defer replan.Stop()
	var seq uint64
	boot := fmt.Sprintf("proxy/%x", rand.Uint64())
	for {
		select {
		case <-p.ctx.Done():
			return
		case <-replan.C:
			if p.adaptOn.Load() {
				p.adaptOnce("periodic re-plan")
			}
		case ev := <-events:
			p.logEvent(ev)
			if p.adaptOn.Load() && ev.Kind == infer.EventTopologyChange && ev.Topology != nil {
				p.adaptOnce(fmt.Sprintf("topology change to %s", ev.Topology.Archetype))
			}
		case <-t.C:
			deltas, quiet, _ := p.acct.Report()
			if len(deltas) > 0 || len(quiet) > 0 {
				for _, r := range reports(0, &seq, deltas, quiet) {
					p.addReport(boot, &r)
				}
			}
			tick()
		case <-p.reported:
			soon()
		case <-retick.C:
			retickAt = time.Time{}
			tick()
		}
	}
}

func (p *Proxy) logEvent(ev infer.Event) {
	if ev.Topology == nil {
		p.log.Info("inference: "+ev.Kind, "note", ev.Note)
		return
	}
	t := ev.Topology
	p.log.Info("inference: "+ev.Kind, "archetype", t.Archetype, "confidence", fmt.Sprintf("%.2f", t.Confidence),
		"nodes", len(t.Nodes), "edges", len(t.Edges), "hub", t.Hub, "note", ev.Note)
}

// lookupAt asks host (or the proxy itself) what its switch would do.
func (p *Proxy) lookupAt(ctx context.Context, host string, q lookupReq) (*lookupReply, error) {
	if host == topo.ProxyHost {
		return lookup(p.sw, &q)
	}
	p.mu.Lock()
	rec := p.mu.hosts[host]
	if rec == nil || rec.link == nil {
		p.mu.Unlock()
		return nil, fmt.Errorf("host %s is down", host)
	}
	p.mu.nextID++
	id := p.mu.nextID
	ch := make(chan *ctrlMsg, 1)
	p.mu.pending[id] = ch
	link := rec.link
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.mu.pending, id)
		p.mu.Unlock()
	}()
	if err := link.SendControl(encodeCtrl(&ctrlMsg{Op: opLookup, ID: id, Lookup: &q})); err != nil {
		return nil, fmt.Errorf("asking %s: %w", host, err)
	}
	ctx, cancel := context.WithTimeout(ctx, LookupTimeout)
	defer cancel()
	select {
	case m := <-ch:
		if m.Error != "" {
			return nil, fmt.Errorf("%s: %s", host, m.Error)
		}
		if m.Decision == nil {
			return nil, fmt.Errorf("%s: empty answer", host)
		}
		return m.Decision, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("%s did not answer in time", host)
	}
}

// route traces the path of a frame from src to dst hop by hop.
func (p *Proxy) route(ctx context.Context, src, dst bridge.MAC) (Route, error) {
	host, port := p.whereIs(src)
	if host == "" {
		return Route{}, notFound("MAC %s is not a known VM (see `vnet ctl vms`)", src)
	}
	r := Route{Hops: []Hop{}}
	in := port
	for range 16 {
		d, err := p.lookupAt(ctx, host, lookupReq{In: in, Src: src.String(), Dst: dst.String()})
		if err != nil {
			r.Note = err.Error()
			return r, nil
		}
		if len(d.Filters) > 0 {
			r.Filtered = true
		}
		if d.By == "deny" {
			r.Hops = append(r.Hops, Hop{Host: host, To: "drop", By: d.By, Filters: d.Filters})
			r.Note = fmt.Sprintf("blocked at %s by the rule %s", host, d.Rule)
			if len(d.Filters) > 0 {
				r.Note += " (but for the packets its filters allow)"
			}
			return r, nil
		}
		if len(d.Outputs) == 0 {
			r.Hops = append(r.Hops, Hop{Host: host, To: "drop", By: d.By, Filters: d.Filters})
			return r, nil
		}
		if d.By == "flood" {
			r.Hops = append(r.Hops, Hop{Host: host, To: "flood", By: d.By, Filters: d.Filters})
			r.Note = "the destination is unknown at " + host + ": the frame is flooded on the star"
			return r, nil
		}
		out, role := d.Outputs[0], d.Roles[0]
		if len(d.Outputs) > 1 {
			r.Note = fmt.Sprintf("%s fans out to %v; following the first", host, d.Outputs)
		}
		if role == bridge.RoleLocal.String() {
			r.Hops = append(r.Hops, Hop{Host: host, To: "port:" + out, By: d.By, Filters: d.Filters})
			r.Delivered = true
			return r, nil
		}
		r.Hops = append(r.Hops, Hop{Host: host, To: "link:" + out, By: d.By, Filters: d.Filters})
		next := p.farEnd(out, host)
		if next == "" {
			r.Note = "unknown link " + out
			return r, nil
		}
		host, in = next, out
	}
	r.Note = "routing loop: more than 16 hops"
	return r, nil
}

// whereIs finds the host and port where mac is attached.
func (p *Proxy) whereIs(mac bridge.MAC) (host, port string) {
	s := mac.String()
	for _, vm := range p.vms() {
		if vm.MAC == s {
			return vm.Host, vm.Port
		}
	}
	return "", ""
}

// farEnd is the other end of link name seen from host.
func (p *Proxy) farEnd(name, host string) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if l, ok := p.mu.links[name]; ok {
		if l.A == host {
			return l.B
		}
		return l.A
	}
	for h := range p.mu.hosts {
		if StarLinkName(h) == name {
			if host == topo.ProxyHost {
				return h
			}
			return topo.ProxyHost
		}
	}
	return ""
}

func (p *Proxy) vms() []VMInfo {
	out := localVMs(p.sw, topo.ProxyHost)
	p.mu.Lock()
	for _, name := range sortedKeys(p.mu.hosts) {
		rec := p.mu.hosts[name]
		if rec.link != nil {
			out = append(out, rec.status.VMs...)
		}
	}
	p.mu.Unlock()
	if out == nil {
		out = []VMInfo{}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].MAC < out[j].MAC })
	return out
}

func (p *Proxy) hosts() []HostInfo {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := []HostInfo{}
	for _, name := range sortedKeys(p.mu.hosts) {
		rec := p.mu.hosts[name]
		udp, _ := p.udpCandidatesLocked(name)
		hi := HostInfo{Name: name, Addrs: dedupe(append(udp, p.tcpCandidatesLocked(name)...)), NAT: "unknown",
			State: "down", VMs: []string{}, API: rec.status.API, LastSeen: rec.lastSeen}
		if rec.status.NAT != "" {
			hi.NAT = rec.status.NAT
		}
		if rec.link != nil {
			hi.State = "up"
			for _, vm := range rec.status.VMs {
				hi.VMs = append(hi.VMs, vm.MAC)
			}
		}
		out = append(out, hi)
	}
	return out
}

func (p *Proxy) links() []LinkInfo {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.linksLocked()
}

// linksLocked lists every link with what both of its ends measured: star
// links as the proxy sees them, fast links as their A end does.
func (p *Proxy) linksLocked() []LinkInfo {
	out := []LinkInfo{}
	for _, name := range sortedKeys(p.mu.hosts) {
		rec := p.mu.hosts[name]
		li := LinkInfo{Name: StarLinkName(name), A: topo.ProxyHost, B: name, Kind: rec.kind, Role: "star", Via: "direct",
			State: "down"}
		if rec.link != nil {
			li.State = "up"
			setMeasured(&li, rec.link)
			if hs := rec.status.Star; hs != nil {
				li = mergeEnds(li, *hs)
			}
		}
		out = append(out, li)
	}
	for _, name := range sortedKeys(p.mu.links) {
		l := p.mu.links[name]
		li := LinkInfo{Name: name, A: l.A, B: l.B, Kind: p.linkKindLocked(l), Role: "fast", Via: "direct", State: "down"}
		// The dialing end (A) reports the link's state and counters.
		if rec := p.mu.hosts[l.A]; rec != nil && rec.link != nil {
			for _, r := range rec.status.Links {
				if r.Name == name {
					li = r
					li.Role = "fast"
				}
			}
		} else {
			li.Error = "host " + l.A + " is down"
		}
		if rec := p.mu.hosts[l.B]; rec != nil && rec.link != nil && li.State == "up" {
			for _, r := range rec.status.Links {
				if r.Name == name && r.State == "up" {
					li = mergeEnds(li, r)
				}
			}
		}
		out = append(out, li)
	}
	return out
}

func (p *Proxy) rules() []RuleInfo {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := []RuleInfo{}
	for _, h := range sortedKeys(p.mu.rules) {
		rs := ruleInfos(h, p.mu.rules[h])
		// Frame counts from where the rules run: the proxy's switch, or
		// the host's last report.
		reported := ruleInfosHits(h, p.sw)
		if rec := p.mu.hosts[h]; h != topo.ProxyHost {
			reported = nil
			if rec != nil {
				reported = rec.status.Rules
			}
		}
		for i := range rs {
			for _, r := range reported {
				if r.Src == rs[i].Src && r.Dst == rs[i].Dst && r.To == rs[i].To && r.Filter == rs[i].Filter {
					rs[i].Hits = r.Hits
				}
			}
		}
		out = append(out, rs...)
	}
	return out
}
