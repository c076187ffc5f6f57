package netns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"
)

// Latency for test networks. This kernel has no netem, so a WAN's delay
// comes from a relay in user space: DelayTCP and DelayUDP forward what
// arrives on a listening address to an upstream one and hold every chunk
// (every datagram) for a fixed time in each direction, so a round trip
// through the relay takes twice that longer. Run one inside a "router"
// namespace between two others; shaping (tc tbf) stays in the kernel.

// delayQueue bounds what one direction holds: enough for a fast link's
// bandwidth-delay product; beyond it the relay stops reading, so the
// sender sees back-pressure instead of unbounded buffering.
const delayQueue = 4096

type delayed struct {
	due time.Time
	b   []byte
}

// delayLine writes what is put into it to w, each chunk d after it was put.
type delayLine struct {
	ch   chan delayed
	done chan struct{}
}

func newDelayLine(d time.Duration, write func([]byte) error) *delayLine {
	l := &delayLine{ch: make(chan delayed, delayQueue), done: make(chan struct{})}
	go func() {
		defer close(l.done)
		failed := false
		for c := range l.ch {
			if failed {
				continue // drain, so the reader never blocks on a dead writer
			}
			preciseSleep(time.Until(c.due))
			failed = write(c.b) != nil
		}
	}()
	return l
}

// put queues a copy of b, due d from now.
func (l *delayLine) put(b []byte, d time.Duration) {
	l.ch <- delayed{time.Now().Add(d), append([]byte(nil), b...)}
}

// close writes what is queued, then returns.
func (l *delayLine) close() {
	close(l.ch)
	<-l.done
}

// DelayTCP accepts TCP connections on listen and relays each one to
// upstream, every byte d late in each direction. It serves until ctx ends.
func DelayTCP(ctx context.Context, listen, upstream string, d time.Duration) error {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	return ServeDelayTCP(ctx, ln, upstream, d)
}

// ServeDelayTCP is DelayTCP on a listener the caller made; it closes it.
func ServeDelayTCP(ctx context.Context, ln net.Listener, upstream string, d time.Duration) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			delayConn(ctx, c, upstream, d)
		}()
	}
}

// delayConn relays one accepted connection until both directions end.
func delayConn(ctx context.Context, c net.Conn, upstream string, d time.Duration) {
	defer c.Close()
	var dl net.Dialer
	u, err := dl.DialContext(ctx, "tcp", upstream)
	if err != nil {
		return
	}
	defer u.Close()
	stop := context.AfterFunc(ctx, func() { c.Close(); u.Close() })
	defer stop()
	var wg sync.WaitGroup
	wg.Add(2)
	pump := func(dst, src net.Conn) {
		defer wg.Done()
		line := newDelayLine(d, func(b []byte) error { _, err := dst.Write(b); return err })
		buf := make([]byte, 64<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				line.put(buf[:n], d)
			}
			if err != nil {
				break
			}
		}
		line.close()
		if tc, ok := dst.(*net.TCPConn); ok {
			tc.CloseWrite() // the end of the stream, d late too
		}
	}
	go pump(u, c)
	go pump(c, u)
	wg.Wait()
}

// DelayUDP relays datagrams between every client of listen and upstream,
// each one d late in each direction. Every client gets a socket of its own
// towards upstream (as a NAT would give it a port). It serves until ctx
// ends.
func DelayUDP(ctx context.Context, listen, upstream string, d time.Duration) error {
	la, err := net.ResolveUDPAddr("udp", listen)
	if err != nil {
		return err
	}
	c, err := net.ListenUDP("udp", la)
	if err != nil {
		return err
	}
	return ServeDelayUDP(ctx, c, upstream, d)
}

// ServeDelayUDP is DelayUDP on a socket the caller made; it closes it.
func ServeDelayUDP(ctx context.Context, c *net.UDPConn, upstream string, d time.Duration) error {
	defer c.Close()
	ua, err := net.ResolveUDPAddr("udp", upstream)
	if err != nil {
		return err
	}
	type client struct {
		up   *net.UDPConn
		line *delayLine // towards upstream; only this loop puts into it
	}
	clients := map[netip.AddrPort]*client{}
	var wg sync.WaitGroup
	defer func() {
		for _, cl := range clients {
			cl.up.Close()
		}
		wg.Wait()
		for _, cl := range clients {
			cl.line.close()
		}
	}()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	buf := make([]byte, 65536)
	for {
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		cl := clients[from]
		if cl == nil {
			up, err := net.DialUDP("udp", nil, ua)
			if err != nil {
				return fmt.Errorf("socket towards %s: %w", upstream, err)
			}
			cl = &client{up: up, line: newDelayLine(d, func(b []byte) error { _, err := up.Write(b); return err })}
			clients[from] = cl
			wg.Add(1)
			go func() {
				defer wg.Done()
				replies := newDelayLine(d, func(b []byte) error { _, err := c.WriteToUDPAddrPort(b, from); return err })
				defer replies.close()
				rb := make([]byte, 65536)
				for {
					n, err := up.Read(rb)
					if errors.Is(err, net.ErrClosed) {
						return
					}
					if err == nil { // else e.g. ECONNREFUSED while upstream is not listening yet
						replies.put(rb[:n], d)
					}
				}
			}()
		}
		cl.line.put(buf[:n], d)
	}
}
