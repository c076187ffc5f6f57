package netns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"
)

// A small UDP toolkit to check what a NAT lab's routers do before anything
// else runs through them: a reflector on the "internet" that tells each
// sender where its datagram came from (a STUN server's job, in plain text),
// a prober that asks several reflectors from one socket, and a puncher that
// tries a simultaneous open with a peer behind another NAT. Each runs in the
// namespace it is meant to test (e.g. in a re-executed test binary).

// Reflect answers every datagram arriving on any of addrs with
// "seen IP:PORT" (the sender as this socket saw it), sent from the socket
// it arrived on. Before answering, it sends "unsolicited" to the same
// sender from the socket bound to poke (if not empty), which the sender
// never contacted: a NAT that filters by address and port drops it. It
// serves until ctx ends.
func Reflect(ctx context.Context, addrs []string, poke string) error {
	var conns []*net.UDPConn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	listen := func(a string) (*net.UDPConn, error) {
		ua, err := net.ResolveUDPAddr("udp4", a)
		if err != nil {
			return nil, err
		}
		c, err := net.ListenUDP("udp4", ua)
		if err != nil {
			return nil, err
		}
		conns = append(conns, c)
		return c, nil
	}
	var pc *net.UDPConn
	if poke != "" {
		var err error
		if pc, err = listen(poke); err != nil {
			return err
		}
	}
	var wg sync.WaitGroup
	for _, a := range addrs {
		c, err := listen(a)
		if err != nil {
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 1500)
			for {
				_, from, err := c.ReadFromUDPAddrPort(buf)
				if err != nil {
					return
				}
				if pc != nil {
					pc.WriteToUDPAddrPort([]byte("unsolicited"), from)
				}
				c.WriteToUDPAddrPort([]byte("seen "+from.String()), from)
			}
		}()
	}
	<-ctx.Done()
	for _, c := range conns {
		c.Close()
	}
	wg.Wait()
	return nil
}

// ProbeResult is what Probe learned.
type ProbeResult struct {
	Local  string            // the probing socket's address
	Mapped map[string]string // reflector -> the address it saw us at
	// Unsolicited lists the senders of datagrams we never asked for
	// (Reflect's poke socket) that came through.
	Unsolicited []string
}

// Ports is the set of distinct mapped ports, in no particular order.
func (r ProbeResult) Ports() []uint16 {
	seen := map[uint16]bool{}
	var out []uint16
	for _, m := range r.Mapped {
		if ap, err := netip.ParseAddrPort(m); err == nil && !seen[ap.Port()] {
			seen[ap.Port()] = true
			out = append(out, ap.Port())
		}
	}
	return out
}

// Probe binds local (e.g. "0.0.0.0:7100") and asks every reflector from
// that one socket where it sees us, retrying for up to d; it then waits a
// little longer for unsolicited datagrams.
func Probe(local string, reflectors []string, d time.Duration) (ProbeResult, error) {
	ua, err := net.ResolveUDPAddr("udp4", local)
	if err != nil {
		return ProbeResult{}, err
	}
	c, err := net.ListenUDP("udp4", ua)
	if err != nil {
		return ProbeResult{}, err
	}
	defer c.Close()
	res := ProbeResult{Local: c.LocalAddr().String(), Mapped: map[string]string{}}
	var targets []netip.AddrPort
	for _, r := range reflectors {
		ap, err := netip.ParseAddrPort(r)
		if err != nil {
			return res, err
		}
		targets = append(targets, ap)
	}
	deadline := time.Now().Add(d)
	var settle time.Time // once every reflector answered: wait for stragglers until then
	buf := make([]byte, 1500)
	for {
		now := time.Now()
		if !settle.IsZero() && now.After(settle) {
			return res, nil
		}
		if settle.IsZero() {
			if now.After(deadline) {
				return res, fmt.Errorf("no answer within %v from %d of %d reflectors (answers: %v)",
					d, len(targets)-len(res.Mapped), len(targets), res.Mapped)
			}
			for _, t := range targets {
				if _, ok := res.Mapped[t.String()]; !ok {
					c.WriteToUDPAddrPort([]byte("probe"), t)
				}
			}
		}
		c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				break
			}
			from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
			msg := string(buf[:n])
			if seen, ok := strings.CutPrefix(msg, "seen "); ok {
				res.Mapped[from.String()] = seen
			} else {
				res.Unsolicited = append(res.Unsolicited, from.String())
			}
		}
		if settle.IsZero() && len(res.Mapped) == len(targets) {
			settle = time.Now().Add(300 * time.Millisecond)
		}
	}
}

// Punch binds local and sends to peer every 20 ms for up to d, as the peer
// does at the same time towards us. It reports whether a datagram from
// exactly peer arrived (after which it keeps sending for a short while, so
// that the peer hears us too).
func Punch(local, peer string, d time.Duration) (bool, error) {
	ua, err := net.ResolveUDPAddr("udp4", local)
	if err != nil {
		return false, err
	}
	to, err := netip.ParseAddrPort(peer)
	if err != nil {
		return false, err
	}
	c, err := net.ListenUDP("udp4", ua)
	if err != nil {
		return false, err
	}
	defer c.Close()
	deadline := time.Now().Add(d)
	var heard time.Time
	buf := make([]byte, 1500)
	for time.Now().Before(deadline) {
		if !heard.IsZero() && time.Since(heard) > 500*time.Millisecond {
			return true, nil
		}
		c.WriteToUDPAddrPort([]byte("punch"), to) // errors (e.g. from ICMP) do not stop a punch
		c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		for {
			_, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					break
				}
				continue // e.g. ECONNREFUSED from an ICMP error
			}
			if netip.AddrPortFrom(from.Addr().Unmap(), from.Port()) == to && heard.IsZero() {
				heard = time.Now()
			}
		}
	}
	return !heard.IsZero(), nil
}
