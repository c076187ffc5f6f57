package appliance

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"vnet/bridge"
	"vnet/nat"
	"vnet/tunnel"
)

// Fast-path links: dialing (UDP with hole punching, then TCP, else
// relayed), accepting, attaching to the switch, and the VM announcements
// that pin the peer's MACs to the link.

func (h *Host) desiredLink(name string) (fastLink, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	fl, ok := h.mu.desired[name]
	return fl, ok
}

// routineDialFast keeps the fast link name up while it is desired and this
// host is its dialing end: UDP with hole punching first, then TCP; after
// RelayAfter failed rounds the link is reported relayed (its traffic stays
// on the star) and retried every RelayRetry.
func (h *Host) routineDialFast(ctx context.Context, name string) {
	defer h.wg.Done()
	bo := tunnel.Backoff{Min: FastBackoffMin, Max: FastBackoffMax}
	for ctx.Err() == nil {
		fl, ok := h.desiredLink(name)
		if !ok || !fl.Dial {
			return
		}
		start := time.Now()
		link, fp, err := h.dialFast(ctx, fl)
		if link == nil && errors.Is(err, tunnel.ErrRefused) {
			// The peer has not heard of the link yet: not a failed path.
			h.sleepCtx(ctx, bo.Next())
			continue
		}
		if link == nil {
			h.mu.Lock()
			h.mu.fails[name]++
			fails := h.mu.fails[name]
			h.mu.fastErr[name] = errString(err)
			if fails >= RelayAfter {
				if h.mu.via[name] != "relayed" {
					h.log.Warn("fast link unreachable; relayed through the proxy (the star) and retried later",
						"link", name, "err", err)
				}
				h.mu.via[name] = "relayed"
				delete(h.mu.path, name)
			}
			h.mu.Unlock()
			if ctx.Err() == nil {
				h.log.Debug("fast link attempt failed", "link", name, "err", err)
			}
			if fails >= RelayAfter {
				h.sleepCtx(ctx, RelayRetry)
			} else {
				h.sleepCtx(ctx, bo.Next())
			}
			continue
		}
		h.mu.Lock()
		h.mu.fails[name] = 0
		h.mu.via[name], h.mu.path[name] = fp.via, fp.path
		h.mu.Unlock()
		h.log.Info("fast link made", "link", name, "kind", link.Kind(), "via", fp.via, "path", fp.path,
			"addr", addrString(link.RemoteAddr()), "why", fp.why, "took", time.Since(start).Round(time.Millisecond))
		up := time.Now()
		h.runFast(name, link)
		if time.Since(up) > 10*time.Second {
			bo.Reset()
		}
		h.sleepCtx(ctx, bo.Next())
	}
}

// fastPath says how a fast link was made: via (direct, punched), its path
// (nat.PathLocal, PathNAT, PathPublic) and why that path, for the log.
type fastPath struct {
	via, path, why string
}

// dialFast tries once to open fl, in the kind the proxy prefers first and
// then the other (unless the peer refused the first: it is reachable that
// way and only has not heard of the link yet): over UDP to the peer's
// candidates (all at once, so a NAT mapping opened by the peer's punches
// lets us in), over TCP to each of its TCP candidates. Either kind first
// probes, for LocalProbeTimeout, the peer's candidates on a LAN this host
// shares (nat.LocalCandidates), so that hosts behind one NAT talk over
// their private addresses rather than through the NAT (which may not
// hairpin). It says how the link was made.
func (h *Host) dialFast(ctx context.Context, fl fastLink) (*tunnel.Link, fastPath, error) {
	hello := tunnel.Hello{Name: h.cfg.Name, Role: "host", Link: fl.Name, Offload: !h.cfg.NoOffload}
	order := []string{"tcp", "udp"}
	if fl.Kind == "udp" {
		order = []string{"udp", "tcp"}
	}
	hint := h.localHint(fl)
	var errs []error
	for _, kind := range order {
		var l *tunnel.Link
		var fp fastPath
		var err error
		switch {
		case kind == "udp" && h.mux != nil && len(fl.UDPAddrs) > 0:
			l, fp, err = h.dialFastUDP(ctx, fl, hello, hint)
		case kind == "tcp" && len(fl.TCPAddrs) > 0:
			l, fp, err = h.dialFastTCP(ctx, fl, hello, hint)
		default:
			continue
		}
		if err == nil {
			return l, fp, nil
		}
		errs = append(errs, err)
		if errors.Is(err, tunnel.ErrRefused) {
			// The peer answered over this kind but does not know the link
			// yet (its config is on the way): the kind works, so the retry
			// tries it again rather than settling for the other one.
			break
		}
	}
	if len(errs) == 0 {
		return nil, fastPath{}, fmt.Errorf("no address known for %s yet", fl.Peer)
	}
	return nil, fastPath{}, errors.Join(errs...)
}

// localHint is what nat.LocalCandidates needs to know about fl's two ends.
func (h *Host) localHint(fl fastLink) nat.LocalHint {
	own := map[netip.Addr]bool{}
	for _, ap := range h.localUDP() {
		own[ap.Addr()] = true
	}
	hint := nat.LocalHint{SamePublic: fl.SamePublic,
		OnLink: onLinkPrefixes(h.ownDevices(), h.proxyOnLoopback())}
	h.mu.Lock()
	for _, r := range h.mu.nat.Reflexive {
		if ip := r.Addr().Unmap(); !own[ip] {
			hint.SelfPublic = append(hint.SelfPublic, ip)
		}
	}
	h.mu.Unlock()
	for _, r := range parseAddrPorts(fl.Reflexive) {
		hint.PeerPublic = append(hint.PeerPublic, r.Addr())
	}
	return hint
}

func (h *Host) dialFastUDP(ctx context.Context, fl fastLink, hello tunnel.Hello, hint nat.LocalHint) (*tunnel.Link, fastPath, error) {
	deadline := time.Now().Add(PunchTimeout)
	all := parseAddrPorts(fl.UDPAddrs)
	local, why := nat.LocalCandidates(all, hint)
	if len(local) > 0 {
		l, err := h.dialUDPUntil(ctx, local, hello, time.Now().Add(LocalProbeTimeout))
		if err == nil {
			return l, fastPath{via: "direct", path: nat.PathLocal, why: why + "; it answered the local probe"}, nil
		}
		if ctx.Err() != nil {
			return nil, fastPath{}, fmt.Errorf("udp: %w", err)
		}
		h.log.Info("local probe unanswered; trying the peer's other candidates", "link", fl.Name, "local", local,
			"why", why, "err", err)
		why = "the local probe (" + why + ") got no answer"
	}
	l, err := h.dialUDPUntil(ctx, all, hello, deadline)
	if err != nil {
		return nil, fastPath{}, fmt.Errorf("udp: %w", err)
	}
	remote, _ := netip.ParseAddrPort(addrString(l.RemoteAddr()))
	fp := fastPath{via: "direct", path: nat.PathOf(remote, local, parseAddrPorts(fl.Reflexive)), why: why}
	switch {
	case fp.path == nat.PathLocal:
		fp.why = "a LAN address answered first"
	case fp.path == nat.PathNAT || h.behindNAT():
		fp.via = "punched"
	}
	if fp.why == "" {
		fp.why = "no LAN in common with the peer"
	}
	return l, fp, nil
}

// dialUDPUntil dials the peer at the candidates to until deadline. The
// peer may refuse at first: the proxy tells both ends about a new link at
// about the same time, and we may be first. Ask again until the deadline
// rather than give up at once.
func (h *Host) dialUDPUntil(ctx context.Context, to []netip.AddrPort, hello tunnel.Hello, deadline time.Time) (*tunnel.Link, error) {
	for {
		dctx, cancel := context.WithDeadline(ctx, deadline)
		l, err := h.mux.Dial(dctx, to, hello, h.log, h.onFastControl)
		cancel()
		if err == nil {
			return l, nil
		}
		if errors.Is(err, tunnel.ErrRefused) && time.Now().Add(100*time.Millisecond).Before(deadline) {
			h.sleepCtx(ctx, 100*time.Millisecond)
			continue
		}
		return nil, err
	}
}

// dialFastTCP dials the peer's TCP candidates one after the other: those on
// a LAN this host shares first, each for LocalProbeTimeout, then the others.
func (h *Host) dialFastTCP(ctx context.Context, fl fastLink, hello tunnel.Hello, hint nat.LocalHint) (*tunnel.Link, fastPath, error) {
	local, why := nat.LocalCandidates(parseAddrPorts(fl.TCPAddrs), hint)
	isLocal := map[string]bool{}
	var order []string
	for _, a := range local {
		isLocal[a.String()] = true
		order = append(order, a.String())
	}
	for _, a := range fl.TCPAddrs {
		if ap, err := netip.ParseAddrPort(a); err != nil || !isLocal[netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()).String()] {
			order = append(order, a)
		}
	}
	var errs []error
	for _, addr := range order {
		d := FastDialTimeout
		if isLocal[addr] {
			d = LocalProbeTimeout
		}
		dctx, cancel := context.WithTimeout(ctx, d)
		l, err := tunnel.Dial(dctx, tunnel.Endpoint{Kind: "tcp", Addr: addr}, h.creds, hello, h.log, h.onFastControl)
		cancel()
		if err == nil {
			fp := fastPath{via: "direct", path: nat.PathPublic, why: "no LAN in common with the peer"}
			if isLocal[addr] {
				fp.path, fp.why = nat.PathLocal, why+"; it answered"
			} else if len(local) > 0 {
				fp.why = "the peer's LAN addresses (" + why + ") did not answer"
			}
			return l, fp, nil
		}
		errs = append(errs, fmt.Errorf("tcp %s: %w", addr, err))
	}
	return nil, fastPath{}, errors.Join(errs...)
}

// behindNAT reports whether STUN showed this host's UDP socket mapped by a NAT.
func (h *Host) behindNAT() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.behindNATLocked()
}

func (h *Host) behindNATLocked() bool {
	m := h.mu.nat.Mapping
	return m != "" && m != nat.MappingNone && m != nat.MappingUnknown
}

func parseAddrPorts(ss []string) []netip.AddrPort {
	var out []netip.AddrPort
	for _, s := range ss {
		if ap, err := netip.ParseAddrPort(s); err == nil {
			out = append(out, ap)
		}
	}
	return out
}

func addrString(a net.Addr) string {
	if a == nil {
		return ""
	}
	if ap, err := netip.ParseAddrPort(a.String()); err == nil {
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()).String()
	}
	return a.String()
}

func (h *Host) sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// routineAccept takes fast links dialed by other hosts.
func (h *Host) routineAccept(ln tunnel.Acceptor) {
	defer h.wg.Done()
	me := tunnel.Hello{Name: h.cfg.Name, Role: "host", Offload: !h.cfg.NoOffload}
	for {
		in, err := ln.Accept(h.ctx)
		if err != nil {
			return
		}
		fl, ok := h.desiredLink(in.Hello.Link)
		switch {
		case in.Hello.Role != "host":
			in.Refuse(me, "only hosts open fast links")
			continue
		case !ok || fl.Peer != in.Hello.Name || fl.Dial:
			h.log.Info("refused a fast link the proxy did not ask for", "link", in.Hello.Link, "from", in.Hello.Name)
			in.Refuse(me, "no fast link "+in.Hello.Link+" from "+in.Hello.Name+" is configured here (yet)")
			continue
		}
		reply := me
		reply.Link = fl.Name
		link, err := in.Accept(reply, h.log, h.onFastControl)
		if err != nil {
			continue
		}
		fp := h.acceptedPath(fl, link)
		h.mu.Lock()
		h.mu.via[fl.Name], h.mu.path[fl.Name], h.mu.fails[fl.Name] = fp.via, fp.path, 0
		h.mu.Unlock()
		h.log.Info("fast link accepted", "link", fl.Name, "kind", link.Kind(), "via", fp.via, "path", fp.path,
			"addr", addrString(link.RemoteAddr()), "why", fp.why)
		h.wg.Add(1)
		go func() {
			defer h.wg.Done()
			h.runFast(fl.Name, link)
		}()
	}
}

// acceptedPath says how a fast link the peer dialed came in: over a LAN we
// share when it comes from one of the dialer's candidates there, through
// the dialer's NAT mapping, or from its own address.
func (h *Host) acceptedPath(fl fastLink, link *tunnel.Link) fastPath {
	remote, _ := netip.ParseAddrPort(addrString(link.RemoteAddr()))
	local, why := nat.LocalCandidates(parseAddrPorts(fl.Punch), h.localHint(fl))
	fp := fastPath{via: "direct", path: nat.PathOf(remote, local, parseAddrPorts(fl.Reflexive)), why: why}
	switch {
	case link.Kind() == "tcp":
		// From an ephemeral port: the dialer's LAN IPs tell, and a NAT
		// mapping is a UDP notion.
		fp.path = nat.PathPublic
		for _, a := range local {
			if a.Addr() == remote.Addr().Unmap() {
				fp.path = nat.PathLocal
			}
		}
	case fp.path != nat.PathLocal && h.behindNAT():
		fp.via = "punched"
	}
	if fp.path != nat.PathLocal {
		fp.why = "not from one of the dialer's LAN addresses"
	}
	return fp
}

// runFast attaches a fast link, announces our VMs over it, and detaches it
// when it ends.
func (h *Host) runFast(name string, link *tunnel.Link) {
	h.mu.Lock()
	old := h.mu.fast[name]
	h.mu.Unlock()
	if old != nil { // the peer re-dialed before we noticed the old one die
		old.Close()
		h.sw.RemovePort(name)
	}
	if err := h.sw.AddPort(name, bridge.RoleFast, link); err != nil {
		h.log.Warn("cannot attach fast link", "link", name, "err", err)
		link.Close()
		h.mu.Lock()
		h.dropEarlyLocked(name, link)
		h.mu.Unlock()
		return
	}
	h.mu.Lock()
	h.mu.fast[name] = link
	delete(h.mu.fastErr, name)
	early, ok := h.mu.early[name]
	ok = ok && early.link == link
	h.dropEarlyLocked(name, link)
	h.mu.Unlock()
	h.log.Info("fast link up", "link", name, "peer", link.Peer().Name, "addr", link.RemoteAddr().String())
	if ok {
		h.announce(name, early.macs)
	}
	link.SendControl(encodeCtrl(&ctrlMsg{Op: opAnnounce, MACs: h.localMACs()}))
	h.kickStatus()

	select {
	case <-link.Done():
	case <-h.ctx.Done():
		link.Close()
	}
	h.mu.Lock()
	if h.mu.fast[name] == link {
		delete(h.mu.fast, name)
		if _, still := h.mu.desired[name]; still {
			h.mu.fastErr[name] = errString(link.Err())
		}
	}
	h.mu.Unlock()
	h.removeLinkPort(name, link)
	if h.ctx.Err() == nil {
		h.log.Info("fast link down", "link", name, "err", link.Err())
		h.kickStatus()
	}
}

// removeLinkPort detaches the port name if it is still link (not a newer
// link of the same name).
func (h *Host) removeLinkPort(name string, link *tunnel.Link) {
	h.mu.Lock()
	newer := h.mu.fast[name] != nil && h.mu.fast[name] != link
	h.mu.Unlock()
	if !newer {
		h.sw.RemovePort(name)
	}
}

// onFastControl handles messages from the peer of a fast link.
func (h *Host) onFastControl(l *tunnel.Link, b []byte) {
	var m ctrlMsg
	if err := json.Unmarshal(b, &m); err != nil || m.Op != opAnnounce {
		return
	}
	var macs []bridge.MAC
	for _, s := range m.MACs {
		if mac, err := bridge.ParseMAC(s); err == nil {
			macs = append(macs, mac)
		}
	}
	name := l.Peer().Link
	// The peer announces as soon as its end is up, which can be before
	// runFast has attached ours (or while the switch still has the link it
	// replaces): keep the announcement for runFast rather than lose it.
	h.mu.Lock()
	attached := h.mu.fast[name] == l
	if !attached {
		h.mu.early[name] = earlyAnnounce{link: l, macs: macs}
	}
	h.mu.Unlock()
	if attached {
		h.announce(name, macs)
	}
}

// earlyAnnounce is the VM MACs a fast link's peer announced before the link
// was attached.
type earlyAnnounce struct {
	link *tunnel.Link
	macs []bridge.MAC
}

// dropEarlyLocked forgets link's early announcement, if it is still kept.
func (h *Host) dropEarlyLocked(name string, link *tunnel.Link) {
	if e, ok := h.mu.early[name]; ok && e.link == link {
		delete(h.mu.early, name)
	}
}

func (h *Host) announce(name string, macs []bridge.MAC) {
	if err := h.sw.Announce(name, macs); err != nil {
		h.log.Debug("announce on a detached link", "link", name, "err", err)
	}
}

func (h *Host) localMACs() []string {
	var out []string
	for _, vm := range localVMs(h.sw, h.cfg.Name) {
		out = append(out, vm.MAC)
	}
	return out
}
