package appliance

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
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
		link, via, err := h.dialFast(ctx, fl)
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
		h.mu.via[name] = via
		h.mu.Unlock()
		h.log.Info("fast link made", "link", name, "kind", link.Kind(), "via", via,
			"took", time.Since(start).Round(time.Millisecond))
		up := time.Now()
		h.runFast(name, link)
		if time.Since(up) > 10*time.Second {
			bo.Reset()
		}
		h.sleepCtx(ctx, bo.Next())
	}
}

// dialFast tries once to open fl, in the kind the proxy prefers first and
// then the other: over UDP to the peer's candidates (all at once, so a NAT
// mapping opened by the peer's punches lets us in), over TCP to each of its
// TCP candidates. It says how the link was made.
func (h *Host) dialFast(ctx context.Context, fl fastLink) (*tunnel.Link, string, error) {
	hello := tunnel.Hello{Name: h.cfg.Name, Role: "host", Link: fl.Name, Offload: !h.cfg.NoOffload}
	order := []string{"tcp", "udp"}
	if fl.Kind == "udp" {
		order = []string{"udp", "tcp"}
	}
	var errs []error
	for _, kind := range order {
		var l *tunnel.Link
		var via string
		var err error
		switch {
		case kind == "udp" && h.mux != nil && len(fl.UDPAddrs) > 0:
			l, via, err = h.dialFastUDP(ctx, fl, hello)
		case kind == "tcp" && len(fl.TCPAddrs) > 0:
			l, via, err = h.dialFastTCP(ctx, fl, hello)
		default:
			continue
		}
		if err == nil {
			return l, via, nil
		}
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		return nil, "", fmt.Errorf("no address known for %s yet", fl.Peer)
	}
	return nil, "", errors.Join(errs...)
}

func (h *Host) dialFastUDP(ctx context.Context, fl fastLink, hello tunnel.Hello) (*tunnel.Link, string, error) {
	// The peer may refuse at first: the proxy tells both ends about a new
	// link at about the same time, and we may be first. Ask again until the
	// punch time is up rather than give up at once.
	deadline := time.Now().Add(PunchTimeout)
	for {
		dctx, cancel := context.WithDeadline(ctx, deadline)
		l, err := h.mux.Dial(dctx, parseAddrPorts(fl.UDPAddrs), hello, h.log, h.onFastControl)
		cancel()
		if err == nil {
			via := "direct"
			if r := addrString(l.RemoteAddr()); slices.Contains(fl.Reflexive, r) || h.behindNAT() {
				via = "punched"
			}
			return l, via, nil
		}
		if errors.Is(err, tunnel.ErrRefused) && time.Now().Add(100*time.Millisecond).Before(deadline) {
			h.sleepCtx(ctx, 100*time.Millisecond)
			continue
		}
		return nil, "", fmt.Errorf("udp: %w", err)
	}
}

func (h *Host) dialFastTCP(ctx context.Context, fl fastLink, hello tunnel.Hello) (*tunnel.Link, string, error) {
	var errs []error
	for _, addr := range fl.TCPAddrs {
		dctx, cancel := context.WithTimeout(ctx, FastDialTimeout)
		l, err := tunnel.Dial(dctx, tunnel.Endpoint{Kind: "tcp", Addr: addr}, h.creds, hello, h.log, h.onFastControl)
		cancel()
		if err == nil {
			return l, "direct", nil
		}
		errs = append(errs, fmt.Errorf("tcp %s: %w", addr, err))
	}
	return nil, "", errors.Join(errs...)
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
		h.mu.Lock()
		h.mu.via[fl.Name], h.mu.fails[fl.Name] = "direct", 0
		if h.behindNATLocked() {
			h.mu.via[fl.Name] = "punched"
		}
		h.mu.Unlock()
		h.wg.Add(1)
		go func() {
			defer h.wg.Done()
			h.runFast(fl.Name, link)
		}()
	}
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
		return
	}
	h.mu.Lock()
	h.mu.fast[name] = link
	delete(h.mu.fastErr, name)
	h.mu.Unlock()
	h.log.Info("fast link up", "link", name, "peer", link.Peer().Name, "addr", link.RemoteAddr().String())
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
