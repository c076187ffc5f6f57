package appliance

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"reflect"
	"runtime"
	"slices"
	"sync"
	"time"

	"vnet/bridge"
	"vnet/infer"
	"vnet/nat"
	"vnet/tunnel"
)

// Timing of the host's loops. Package variables so tests can shrink them.
var (
	// StatusInterval is how often a host checks whether to report to the
	// proxy; it reports on change and at least every StatusRefresh.
	StatusInterval = time.Second
	StatusRefresh  = 5 * time.Second
	// ProxyBackoff bounds the delay between attempts to reach the proxy.
	ProxyBackoffMin, ProxyBackoffMax = 250 * time.Millisecond, 15 * time.Second
	// FastBackoff bounds the delay between attempts to open a fast link.
	FastBackoffMin, FastBackoffMax = 100 * time.Millisecond, 5 * time.Second
	// FastDialTimeout bounds one attempt at one candidate address.
	FastDialTimeout = 3 * time.Second
	// PunchTimeout bounds one hole-punching attempt (both ends send at once).
	PunchTimeout = 5 * time.Second
	// LocalProbeTimeout bounds the probe of a peer's LAN addresses
	// (nat.LocalCandidates) before its other candidates are tried: a LAN
	// answers in well under a millisecond, so this is a few retries.
	LocalProbeTimeout = time.Second
	// RelayAfter is how many failed attempts turn a fast path into a
	// relayed one (its traffic stays on the star); it is retried every
	// RelayRetry.
	RelayAfter = 2
	RelayRetry = 10 * time.Second
	// STUNInterval is how often a host re-learns its NAT mapping.
	STUNInterval = time.Minute
)

// HostConfig configures a host daemon.
type HostConfig struct {
	Name    string            // unique in the network; required
	Proxies []tunnel.Endpoint // tried in order; at least one
	Key     tunnel.Key        // the network key; or none with Join or a joined StateDir
	// Join is an invite token (vnet ctl invite): the host joins without the
	// network key and keeps the credentials it is given in StateDir, which
	// later starts use without a token.
	Join     string
	StateDir string
	Listen   []tunnel.Endpoint // for fast links from other hosts (tcp, udp); none: DefaultHostListen
	STUN     []string          // extra STUN servers (host:port) besides the proxy's
	API      string            // control API address; "" for none
	// APIToken, if set, is required of every API request, and lets the API
	// listen beyond loopback.
	APIToken string
	Ports    []LocalPort // VM-facing ports to attach
	// ReloadSettings, if set, re-reads the host's settings on Reload (the
	// --config file), as ProxyConfig.ReloadSettings does for the proxy.
	ReloadSettings func() (applied, restart []string, err error)
	Infer          infer.AccountConfig // traffic accounting (VTTIF's local half); zero: defaults
	NoInfer        bool                // count nothing (to measure what accounting costs)
	// NoOffload keeps super-frames (bridge.OffloadPort) off the host's
	// links: every frame crosses them as a plain 1514-byte one.
	NoOffload bool
	// BroadcastRate bounds each VM port's broadcast and multicast frames a
	// second (bridge.Config.BroadcastRate; 0: the default, negative: none).
	BroadcastRate int
	// UDP sizes the datagrams of udp:// links and says whether they split
	// frames (tunnel.UDPOptions; zero: 1500-byte underlay, splitting).
	UDP tunnel.UDPOptions
	// ReportInterval is how often the host pushes active pairs' traffic
	// (VTTIF's update rate); zero: the package's ReportInterval.
	ReportInterval time.Duration
	Log            *slog.Logger
}

// Host is a running host daemon.
type Host struct {
	cfg      HostConfig
	log      *slog.Logger
	sw       *bridge.Switch
	creds    *tunnel.Credentials
	acct     *infer.Accountant
	ln       *tunnel.Listener // TCP fast links; nil without a tcp listener
	mux      *tunnel.UDPMux   // UDP: star, STUN and punched fast links; nil without a udp listener
	stunc    *nat.Client
	kickSTUN chan struct{}
	api      *apiServer
	start    time.Time

	reloading sync.Mutex // one Reload at a time

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	statusMu sync.Mutex // serialises sendStatus (the ticker and kicks)
	// newVM is signalled when a VM port gains an address: routineStatus
	// then reports and announces it without waiting for its tick.
	newVM chan struct{}

	mu struct {
		sync.Mutex
		star        *tunnel.Link
		starErr     string
		desired     map[string]fastLink     // fast links the proxy wants, by name
		dialers     map[string]func()       // cancel funcs of running dialers
		fast        map[string]*tunnel.Link // fast links that are up
		fastErr     map[string]string
		via         map[string]string // how each fast link was made: direct, punched, relayed
		path        map[string]string // each fast link's underlay path: local, nat, public (nat.PathOf)
		fails       map[string]int    // consecutive failed attempts per fast link
		stunPorts   []uint16
		stunAddrs   []string
		nat         nat.Result
		announced   string    // JSON of the MACs last announced on fast links
		announcedAt time.Time // when they were last announced
		// early holds an announcement that came in on a fast link before the
		// link was attached to the switch, for runFast to apply once it is.
		early  map[string]earlyAnnounce
		ports  map[string]bridge.Port // VM-facing ports, by name
		sent   []byte                 // last status sent
		sentAt time.Time
	}
}

// DefaultHostListen is where a host listens when not told: TCP on any port,
// and UDP on any port too if it reaches the proxy over UDP or QUIC. A host
// told to use TCP only (UDP may be blocked where it runs) opens no UDP
// socket, so its fast paths are TCP.
func DefaultHostListen(proxies []tunnel.Endpoint) []tunnel.Endpoint {
	eps := []tunnel.Endpoint{{Kind: "tcp", Addr: ":0"}}
	for _, p := range proxies {
		if p.Kind != "tcp" {
			return append(eps, tunnel.Endpoint{Kind: "udp", Addr: ":0"})
		}
	}
	return eps
}

// NewHost validates cfg, opens the fast-link listener and the API, attaches
// the ports and starts the daemon.
func NewHost(cfg HostConfig) (_ *Host, err error) {
	creds, err := hostCredentials(&cfg)
	if err != nil {
		return nil, err
	}
	if err := ValidName(cfg.Name); err != nil {
		return nil, err
	}
	if len(cfg.Proxies) == 0 {
		return nil, errors.New("no proxy given (--proxy tcp://HOST:5000)")
	}
	if len(cfg.Listen) == 0 {
		cfg.Listen = DefaultHostListen(cfg.Proxies)
	}
	log := discardIfNil(cfg.Log).With("host", cfg.Name)

	h := &Host{cfg: cfg, log: log, start: time.Now()}
	h.mu.desired = map[string]fastLink{}
	h.mu.ports = map[string]bridge.Port{}
	h.mu.dialers = map[string]func(){}
	h.mu.fast = map[string]*tunnel.Link{}
	h.mu.fastErr = map[string]string{}
	h.mu.via = map[string]string{}
	h.mu.path = map[string]string{}
	h.mu.fails = map[string]int{}
	h.mu.early = map[string]earlyAnnounce{}
	h.kickSTUN = make(chan struct{}, 1)
	h.ctx, h.cancel = context.WithCancel(context.Background())
	cleanup := []func(){h.cancel}
	defer func() {
		if err != nil {
			for i := len(cleanup) - 1; i >= 0; i-- {
				cleanup[i]()
			}
		}
	}()
	h.creds = creds
	h.acct = infer.NewAccountant(cfg.Infer)
	var obs bridge.Observer = accountObserver{h.acct}
	if cfg.NoInfer {
		obs = nil
	}
	h.newVM = make(chan struct{}, 1)
	h.sw = bridge.New(bridge.Config{Log: log, Observer: obs, BroadcastRate: cfg.BroadcastRate, OnNewLocal: func() {
		select {
		case h.newVM <- struct{}{}:
		default:
		}
	}})
	cleanup = append(cleanup, h.sw.Close)
	for _, p := range cfg.Ports {
		if err := h.sw.AddPort(p.Name, bridge.RoleLocal, p.Port); err != nil {
			return nil, fmt.Errorf("port %s: %w", p.Name, err)
		}
		h.mu.ports[p.Name] = p.Port
	}
	for _, ep := range cfg.Listen {
		switch {
		case ep.Kind == "tcp" && h.ln == nil:
			if h.ln, err = tunnel.Listen(ep, h.creds, log); err != nil {
				return nil, fmt.Errorf("fast-link listener: %w", err)
			}
			cleanup = append(cleanup, func() { h.ln.Close() })
		case ep.Kind == "udp" && h.mux == nil:
			if h.mux, err = tunnel.ListenUDPCredsWith(ep.Addr, h.creds, log, cfg.UDP); err != nil {
				return nil, fmt.Errorf("--listen %s: %w", ep, err)
			}
			cleanup = append(cleanup, func() { h.mux.Close() })
			h.stunc = nat.NewClient(h.mux.WriteTo)
			h.mux.SetPacketHandler(func(b []byte, from netip.AddrPort) { h.stunc.Handle(b, from) })
		default:
			return nil, fmt.Errorf("--listen %s: a host listens on at most one tcp:// and one udp:// endpoint", ep)
		}
	}
	if cfg.API != "" {
		if h.api, err = startAPI(cfg.API, cfg.APIToken, h.routes(), log); err != nil {
			return nil, err
		}
	}
	log.Info("host started", "listen", h.listenAddrs(), "api", cfg.API, "ports", len(cfg.Ports), "go_procs", runtime.GOMAXPROCS(0))
	h.wg.Add(4)
	go h.routineStar()
	go h.routineStatus()
	go h.routineSTUN()
	go h.routineReport()
	for _, a := range h.acceptors() {
		h.wg.Add(1)
		go h.routineAccept(a)
	}
	return h, nil
}

// Switch is the host's switch.
func (h *Host) Switch() *bridge.Switch { return h.sw }

// SetAPIToken changes the token the host's control API requires ("":
// none, on loopback only).
func (h *Host) SetAPIToken(token string) error {
	if h.api == nil {
		return nil
	}
	return h.api.setToken(token)
}

// APIAddr is where the control API listens ("" if none).
func (h *Host) APIAddr() string {
	if h.api == nil {
		return ""
	}
	return h.api.addr()
}

// Close stops the daemon and closes its ports.
func (h *Host) Close() {
	h.cancel()
	if h.api != nil {
		h.api.close()
	}
	for _, a := range h.acceptors() {
		a.Close()
	}
	h.mu.Lock()
	for _, l := range h.mu.fast {
		l.Close()
	}
	if h.mu.star != nil {
		h.mu.star.Close()
	}
	h.mu.Unlock()
	h.wg.Wait()
	h.sw.Close()
	h.log.Info("host stopped")
}

// routineStar keeps the star link to the proxy up, forever.
func (h *Host) routineStar() {
	defer h.wg.Done()
	name := StarLinkName(h.cfg.Name)
	bo := tunnel.Backoff{Min: ProxyBackoffMin, Max: ProxyBackoffMax}
	hello := tunnel.Hello{Name: h.cfg.Name, Role: "host", Link: name, Offload: !h.cfg.NoOffload}
	for h.ctx.Err() == nil {
		var link *tunnel.Link
		var errs []error
		for _, ep := range h.cfg.Proxies {
			l, err := h.dialProxy(ep, hello)
			if err == nil {
				link = l
				break
			}
			errs = append(errs, fmt.Errorf("%s: %w", ep, err))
		}
		if link == nil {
			err := errors.Join(errs...)
			h.setStarErr(err)
			if tunnel.IsAuthError(err) {
				h.log.Error("cannot join the proxy: authentication failed (is --key-file the network's key?)", "err", err)
			} else if h.ctx.Err() == nil {
				h.log.Warn("cannot reach the proxy; will retry", "err", err)
			}
			h.sleep(bo.Next())
			continue
		}
		if err := h.sw.AddPort(name, bridge.RoleStar, link); err != nil {
			link.Close()
			h.sleep(bo.Next())
			continue
		}
		up := time.Now()
		h.mu.Lock()
		h.mu.star, h.mu.starErr, h.mu.sent = link, "", nil
		h.mu.Unlock()
		h.log.Info("joined the proxy", "proxy", link.RemoteAddr().String())
		h.sendStatus(true)
		select {
		case <-link.Done():
		case <-h.ctx.Done():
		}
		h.sw.RemovePort(name)
		h.mu.Lock()
		h.mu.star = nil
		h.mu.Unlock()
		h.setStarErr(link.Err())
		if h.ctx.Err() != nil {
			return
		}
		h.log.Warn("lost the proxy link; re-dialing", "err", link.Err(), "was_up", time.Since(up).Round(time.Millisecond))
		if time.Since(up) > 10*time.Second {
			bo.Reset()
		}
		h.sleep(bo.Next())
	}
}

func (h *Host) setStarErr(err error) {
	h.mu.Lock()
	h.mu.starErr = errString(err)
	h.mu.Unlock()
}

func (h *Host) sleep(d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-h.ctx.Done():
	}
}

// onStarControl handles the proxy's messages (on the star link's reader).
func (h *Host) onStarControl(l *tunnel.Link, b []byte) {
	var m ctrlMsg
	if err := json.Unmarshal(b, &m); err != nil {
		h.log.Warn("malformed control message from the proxy", "err", err)
		return
	}
	switch m.Op {
	case opConfig:
		if m.Config != nil {
			h.applyConfig(*m.Config)
		}
	case opLookup:
		reply := ctrlMsg{Op: opLookupOK, ID: m.ID}
		if d, err := lookup(h.sw, m.Lookup); err != nil {
			reply.Error = err.Error()
		} else {
			reply.Decision = d
		}
		l.SendControl(encodeCtrl(&reply))
	case opForget:
		for _, s := range m.MACs {
			if mac, err := bridge.ParseMAC(s); err == nil && h.sw.Forget(mac) {
				h.log.Info("forgot a VM that moved", "mac", s)
			}
		}
		h.kickStatus()
	default:
		h.log.Debug("ignored control message", "op", m.Op)
	}
}

func lookup(sw *bridge.Switch, q *lookupReq) (*lookupReply, error) {
	if q == nil {
		return nil, errors.New("empty lookup")
	}
	src, err := bridge.ParseMAC(q.Src)
	if err != nil {
		return nil, err
	}
	dst, err := bridge.ParseMAC(q.Dst)
	if err != nil {
		return nil, err
	}
	d := sw.Lookup(q.In, src, dst)
	r := &lookupReply{Outputs: d.Outputs, By: d.By, Rule: d.Rule}
	for _, f := range d.Filters {
		verb := "allowed"
		if f.To.Kind == bridge.TargetDeny {
			verb = "blocked"
		}
		r.Filters = append(r.Filters, fmt.Sprintf("%s for %s by the rule %s", verb, f.IP.Short(), f))
	}
	for _, role := range d.Roles {
		r.Roles = append(r.Roles, role.String())
	}
	return r, nil
}

// applyConfig reconciles the host with its share of the desired state.
func (h *Host) applyConfig(c hostConfig) {
	rules, err := parseRuleInfos(c.Rules)
	if err != nil {
		h.log.Warn("proxy sent rules that do not parse; ignoring them", "err", err)
	}
	// Only on change: the config is re-sent every few seconds, and a new
	// rule set flushes every port's decision cache.
	if !slices.Equal(h.sw.Rules(), rules) {
		if err := h.sw.SetRules(rules); err != nil {
			h.log.Warn("cannot install rules", "err", err)
		} else {
			h.log.Info("rules installed", "n", len(rules))
		}
	}
	want := map[string]fastLink{}
	for _, fl := range c.Links {
		want[fl.Name] = fl
	}
	var drop []*tunnel.Link
	h.mu.Lock()
	if c.Revoked != nil && !reflect.DeepEqual(*c.Revoked, h.creds.GetRevoked()) {
		h.creds.SetRevoked(*c.Revoked)
		h.log.Info("revoked hosts updated", "names", c.Revoked.Names)
	}
	for name, l := range h.mu.fast {
		if c.Revoked.Has(l.Peer().Name, "") {
			h.log.Warn("closing the fast link to a revoked host", "link", name, "peer", l.Peer().Name)
			drop = append(drop, l)
		}
	}
	if !slices.Equal(h.mu.stunPorts, c.STUNPorts) || !slices.Equal(h.mu.stunAddrs, c.STUNAddrs) {
		h.mu.stunPorts, h.mu.stunAddrs = c.STUNPorts, c.STUNAddrs
		h.triggerSTUN()
	}
	for name := range h.mu.desired {
		if _, ok := want[name]; ok {
			continue
		}
		if stop := h.mu.dialers[name]; stop != nil {
			stop()
			delete(h.mu.dialers, name)
		}
		if l := h.mu.fast[name]; l != nil {
			drop = append(drop, l)
		}
		delete(h.mu.fastErr, name)
		delete(h.mu.via, name)
		delete(h.mu.path, name)
		delete(h.mu.fails, name)
		h.log.Info("fast link removed", "link", name)
	}
	for name, fl := range want {
		if _, ok := h.mu.desired[name]; !ok {
			h.log.Info("fast link requested", "link", name, "peer", fl.Peer, "dial", fl.Dial)
		}
		if fl.Dial && h.mu.dialers[name] == nil {
			ctx, cancel := context.WithCancel(h.ctx)
			h.mu.dialers[name] = cancel
			h.wg.Add(1)
			go h.routineDialFast(ctx, name)
		}
		// The accepting end of a UDP link opens its NAT towards the dialer
		// while the dialer tries (the config is re-sent every few seconds
		// while the link is down, so this repeats).
		if !fl.Dial && h.mux != nil && h.mu.fast[name] == nil && len(fl.Punch) > 0 {
			h.mux.Punch(parseAddrPorts(fl.Punch), PunchTimeout)
		}
	}
	h.mu.desired = want
	h.mu.Unlock()
	for _, l := range drop {
		l.Close() // its runFast detaches it
	}
	h.kickStatus()
}

// dialProxy opens the star link over ep's kind. UDP star links leave from
// the host's one UDP socket, the same that STUN and fast links use.
func (h *Host) dialProxy(ep tunnel.Endpoint, hello tunnel.Hello) (*tunnel.Link, error) {
	switch ep.Kind {
	case "tcp":
		return tunnel.Dial(h.ctx, ep, h.creds, hello, h.log, h.onStarControl)
	case "quic":
		return tunnel.DialQUIC(h.ctx, ep.Addr, h.creds, hello, h.log, h.onStarControl)
	case "udp":
		if h.mux == nil {
			return nil, errors.New("no udp:// --listen endpoint to dial from")
		}
		ua, err := net.ResolveUDPAddr("udp", ep.Addr)
		if err != nil {
			return nil, err
		}
		ctx, cancel := context.WithTimeout(h.ctx, tunnel.HandshakeTimeout)
		defer cancel()
		return h.mux.Dial(ctx, []netip.AddrPort{ua.AddrPort()}, hello, h.log, h.onStarControl)
	}
	return nil, fmt.Errorf("unknown link kind %q", ep.Kind)
}

// acceptors are the host's listeners for fast links.
func (h *Host) acceptors() []tunnel.Acceptor {
	var out []tunnel.Acceptor
	if h.ln != nil {
		out = append(out, h.ln)
	}
	if h.mux != nil {
		out = append(out, h.mux)
	}
	return out
}

func (h *Host) listenAddrs() []string {
	var out []string
	for _, a := range h.acceptors() {
		out = append(out, a.Addr().Network()+"://"+a.Addr().String())
	}
	return out
}

func (h *Host) kickStatus() { go h.sendStatus(false) }

// routineReport pushes the local traffic matrix to the proxy while some VM
// pair is active (every report interval), at once when a pair turns active
// (so a new pattern is seen about TMax after it starts, not up to an
// interval later), and once more when pairs go quiet.
func (h *Host) routineReport() {
	defer h.wg.Done()
	every := h.cfg.ReportInterval
	if every <= 0 {
		every = ReportInterval
	}
	t := time.NewTicker(min(ReportPoll, every))
	defer t.Stop()
	var seq uint64
	boot := rand.Uint64()
	last := time.Now()
	for {
		select {
		case <-h.ctx.Done():
			return
		case <-t.C:
		}
		if time.Since(last) < every && !h.acct.Due() {
			continue
		}
		last = time.Now()
		deltas, quiet, _ := h.acct.Report()
		if len(deltas) == 0 && len(quiet) == 0 {
			continue
		}
		h.mu.Lock()
		star := h.mu.star
		h.mu.Unlock()
		if star == nil {
			continue // the proxy smooths over a window; a lost second is tolerable
		}
		for _, r := range reports(boot, &seq, deltas, quiet) {
			if err := star.SendControl(encodeCtrl(&ctrlMsg{Op: opMatrix, Matrix: &r})); err != nil {
				h.log.Debug("matrix report not sent", "err", err)
			}
		}
	}
}

// routineStatus reports to the proxy and re-announces VMs on fast links.
func (h *Host) routineStatus() {
	defer h.wg.Done()
	t := time.NewTicker(StatusInterval)
	defer t.Stop()
	for {
		select {
		case <-h.ctx.Done():
			return
		case <-t.C:
			h.sendStatus(false)
		case <-h.newVM:
			// Fast-path peers reach a VM only once it is announced, and the
			// proxy pins it to this host by the report: both at once. A VM
			// that sprays source addresses gets a report per newVMGap.
			h.sendStatus(false)
			select {
			case <-h.ctx.Done():
				return
			case <-time.After(newVMGap):
			}
		}
	}
}

// newVMGap is the least time between reports made for new VM addresses.
const newVMGap = 100 * time.Millisecond

func (h *Host) status() hostStatus {
	st := hostStatus{API: h.APIAddr(), VMs: localVMs(h.sw, h.cfg.Name), Rules: ruleInfosHits(h.cfg.Name, h.sw),
		Ports: portInfos(h.sw)}
	h.mu.Lock()
	star := h.mu.star
	h.mu.Unlock()
	if h.ln != nil {
		if star != nil {
			st.Listen = candidateAddrs(h.ln.Addr(), h.proxyOnLoopback(), h.ownDevices(), addrIP(star.LocalAddr()))
		} else {
			st.Listen = candidateAddrs(h.ln.Addr(), h.proxyOnLoopback(), h.ownDevices())
		}
	}
	for _, ap := range h.localUDP() {
		st.UDP = append(st.UDP, ap.String())
	}
	h.mu.Lock()
	for _, ap := range h.mu.nat.Reflexive {
		st.Reflexive = append(st.Reflexive, ap.String())
	}
	st.NAT = string(h.mu.nat.Mapping)
	h.mu.Unlock()
	st.Links = h.fastLinkInfos()
	if star := h.starLinkInfo(); star.State == "up" {
		st.Star = &star
	}
	return st
}

func (h *Host) fastLinkInfos() []LinkInfo {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := []LinkInfo{}
	for _, name := range sortedKeys(h.mu.desired) {
		fl := h.mu.desired[name]
		a, b := min(h.cfg.Name, fl.Peer), max(h.cfg.Name, fl.Peer)
		li := LinkInfo{Name: name, A: a, B: b, Kind: fl.Kind, Role: "fast", Via: h.mu.via[name], State: "down",
			Error: h.mu.fastErr[name]}
		if l := h.mu.fast[name]; l != nil {
			li.State, li.Kind, li.Error = "up", l.Kind(), ""
			li.Path, li.Addr = h.mu.path[name], addrString(l.RemoteAddr())
			setMeasured(&li, l)
		} else if li.Via == "relayed" {
			li.State = "up" // its traffic flows through the proxy, over the star
		}
		out = append(out, li)
	}
	return out
}

func (h *Host) sendStatus(force bool) {
	h.statusMu.Lock()
	defer h.statusMu.Unlock()
	st := h.status()
	macs := h.localMACs()
	mb, _ := json.Marshal(macs)
	h.mu.Lock()
	star := h.mu.star
	// Announcements go as control messages, which a UDP link may lose, so
	// they are repeated as often as the status is even when nothing changed.
	reannounce := string(mb) != h.mu.announced || time.Since(h.mu.announcedAt) >= StatusRefresh
	if reannounce {
		h.mu.announced, h.mu.announcedAt = string(mb), time.Now()
	}
	fast := make([]*tunnel.Link, 0, len(h.mu.fast))
	for _, l := range h.mu.fast {
		fast = append(fast, l)
	}
	h.mu.Unlock()
	if reannounce {
		msg := encodeCtrl(&ctrlMsg{Op: opAnnounce, MACs: macs})
		for _, l := range fast {
			l.SendControl(msg)
		}
	}
	if star == nil {
		return
	}
	b := encodeCtrl(&ctrlMsg{Op: opStatus, Status: &st})
	h.mu.Lock()
	same := bytes.Equal(b, h.mu.sent) && time.Since(h.mu.sentAt) < StatusRefresh
	h.mu.Unlock()
	if same && !force {
		return
	}
	if err := star.SendControl(b); err == nil {
		h.mu.Lock()
		h.mu.sent, h.mu.sentAt = b, time.Now()
		h.mu.Unlock()
	}
}

// hostLinks is the host's view of its links, for its API.
func (h *Host) hostLinks() []LinkInfo {
	return slices.Concat([]LinkInfo{h.starLinkInfo()}, h.fastLinkInfos())
}

// starLinkInfo is the host's view of its star link.
func (h *Host) starLinkInfo() LinkInfo {
	h.mu.Lock()
	star, starErr := h.mu.star, h.mu.starErr
	h.mu.Unlock()
	li := LinkInfo{Name: StarLinkName(h.cfg.Name), A: "proxy", B: h.cfg.Name, Kind: h.cfg.Proxies[0].Kind, Role: "star",
		Via: "direct", State: "down", Error: starErr}
	if star != nil {
		li.State, li.Kind = "up", star.Kind()
		setMeasured(&li, star)
	}
	return li
}
