package netvm

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"vnet/bridge"
)

// checkLeaks makes the test fail if any goroutine started during it (ours
// or gVisor's) is still running at the end. Call it first, so its cleanup
// runs after all the others.
func checkLeaks(t *testing.T) {
	t.Helper()
	opt := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, opt) })
}

func mustMAC(t testing.TB, s string) net.HardwareAddr {
	t.Helper()
	m, err := net.ParseMAC(s)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func startVM(t testing.TB, mac, prefix string) *VM {
	t.Helper()
	v, err := New(Config{MAC: mustMAC(t, mac), Addr: netip.MustParsePrefix(prefix)})
	if err != nil {
		t.Fatalf("New(%s, %s): %v", mac, prefix, err)
	}
	t.Cleanup(func() { v.Close() })
	return v
}

// wire connects two VMs back to back: one goroutine per direction Reads a
// batch from one and Writes it to the other, reusing its buffers (so a VM
// that kept Write's slices would see its frames overwritten). Frames are
// read at offset bridge.Headroom, as the switch does. It returns per-
// EtherType counts of the frames that crossed. The goroutines end when
// either VM is closed; the test's cleanup waits for them.
func wire(t testing.TB, a, b *VM) *etherTypes {
	t.Helper()
	var wg sync.WaitGroup
	seen := &etherTypes{}
	pump := func(from, to *VM) {
		defer wg.Done()
		n := from.BatchSize()
		bufs := make([][]byte, n)
		for i := range bufs {
			bufs[i] = make([]byte, bridge.BufSize)
		}
		sizes := make([]int, n)
		out := make([][]byte, n)
		for {
			k, err := from.Read(bufs, sizes, bridge.Headroom)
			if err != nil {
				if !errors.Is(err, net.ErrClosed) {
					t.Errorf("Read: %v", err)
				}
				return
			}
			for i := range k {
				out[i] = bufs[i][:bridge.Headroom+sizes[i]]
				seen.count(out[i][bridge.Headroom:])
			}
			if _, err := to.Write(out[:k], bridge.Headroom); err != nil {
				if !errors.Is(err, net.ErrClosed) {
					t.Errorf("Write: %v", err)
				}
				return
			}
		}
	}
	wg.Add(2)
	go pump(a, b)
	go pump(b, a)
	t.Cleanup(func() {
		a.Close()
		b.Close()
		wg.Wait()
	})
	return seen
}

type etherTypes struct{ arp, ipv4, ipv6 atomic.Int64 }

func (e *etherTypes) count(frame []byte) {
	switch binary.BigEndian.Uint16(frame[12:14]) {
	case 0x0806:
		e.arp.Add(1)
	case 0x0800:
		e.ipv4.Add(1)
	case 0x86dd:
		e.ipv6.Add(1)
	}
}

// pairs are the address plans the two-VM tests run on.
var pairs = []struct {
	name   string
	a, b   string // prefixes
	bogus  string // on-link address nobody has
	resolv func(*etherTypes) int64
}{
	{"ipv4", "10.0.0.1/24", "10.0.0.2/24", "10.0.0.99", func(e *etherTypes) int64 { return e.arp.Load() }},
	// NDP is ICMPv6, so on the wire it is just IPv6 frames.
	{"ipv6", "fd00::1/64", "fd00::2/64", "fd00::99", func(e *etherTypes) int64 { return e.ipv6.Load() }},
}

const (
	macA = "52:54:00:00:00:0a"
	macB = "52:54:00:00:00:0b"
)

// TestTCPTransfer sends 4 MiB of random data from VM a to an echo server
// on VM b, dialled by IP, and checks that the echo is byte-for-byte what
// was sent.
func TestTCPTransfer(t *testing.T) {
	for _, p := range pairs {
		t.Run(p.name, func(t *testing.T) {
			checkLeaks(t)
			a := startVM(t, macA, p.a)
			b := startVM(t, macB, p.b)
			seen := wire(t, a, b)

			ln, err := b.ListenTCP(7)
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			serverDone := make(chan error, 1)
			go func() {
				c, err := ln.Accept()
				if err != nil {
					serverDone <- err
					return
				}
				defer c.Close()
				_, err = io.Copy(c, c)
				serverDone <- err
			}()

			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			c, err := a.DialTCP(ctx, netip.AddrPortFrom(b.Addr(), 7))
			if err != nil {
				t.Fatalf("DialTCP: %v", err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(60 * time.Second))
			if got, want := c.RemoteAddr().String(), netip.AddrPortFrom(b.Addr(), 7).String(); got != want {
				t.Errorf("RemoteAddr = %s, want %s", got, want)
			}

			data := make([]byte, 4<<20)
			rand.Read(data)
			writeDone := make(chan error, 1)
			go func() {
				_, err := c.Write(data)
				if err == nil {
					err = c.(interface{ CloseWrite() error }).CloseWrite()
				}
				writeDone <- err
			}()
			got, err := io.ReadAll(c)
			if err != nil {
				t.Fatalf("reading the echo: %v (got %d bytes)", err, len(got))
			}
			if err := <-writeDone; err != nil {
				t.Fatalf("write: %v", err)
			}
			if err := <-serverDone; err != nil {
				t.Fatalf("echo server: %v", err)
			}
			if sha256.Sum256(got) != sha256.Sum256(data) || !bytes.Equal(got, data) {
				t.Fatalf("echo differs: got %d bytes, sent %d", len(got), len(data))
			}

			if p.resolv(seen) == 0 {
				t.Errorf("no neighbour resolution frames crossed the wire")
			}
			for _, v := range []*VM{a, b} {
				s := v.Stats()
				t.Logf("%s: %+v", v, s)
				if s.TxDropTooBig != 0 || s.RxDropNotForUs != 0 || s.RxDropRunt != 0 || s.RxDropOversize != 0 {
					t.Errorf("%s: unexpected drops: %+v", v, s)
				}
				if s.TxBytes < 4<<20 || s.RxBytes < 4<<20 {
					t.Errorf("%s: counted fewer bytes than the transfer: %+v", v, s)
				}
			}
		})
	}
}

func TestUDP(t *testing.T) {
	checkLeaks(t)
	a := startVM(t, macA, "10.0.0.1/24")
	b := startVM(t, macB, "10.0.0.2/24")
	wire(t, a, b)

	pc, err := b.ListenUDP(53)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	c, err := a.DialUDP(netip.AddrPortFrom(b.Addr(), 53))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	pc.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 100)
	n, from, err := pc.ReadFrom(buf)
	if err != nil {
		t.Fatal(err)
	}
	if string(buf[:n]) != "hello" {
		t.Fatalf("got %q", buf[:n])
	}
	if ap := from.(*net.UDPAddr).AddrPort(); ap.Addr().Unmap() != a.Addr() {
		t.Fatalf("from %s, want %s", from, a.Addr())
	}
	if _, err := pc.WriteTo([]byte("world"), from); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err = c.Read(buf)
	if err != nil || string(buf[:n]) != "world" {
		t.Fatalf("reply %q, %v", buf[:n], err)
	}
}

func TestPing(t *testing.T) {
	for _, p := range pairs {
		t.Run(p.name, func(t *testing.T) {
			checkLeaks(t)
			a := startVM(t, macA, p.a)
			b := startVM(t, macB, p.b)
			wire(t, a, b)

			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			for i := range 3 {
				rtt, err := a.Ping(ctx, b.Addr())
				if err != nil {
					t.Fatalf("ping %d: %v", i, err)
				}
				if rtt <= 0 || rtt > 10*time.Second {
					t.Fatalf("ping %d: rtt %v", i, rtt)
				}
				t.Logf("ping %d: %v", i, rtt)
			}
			// Nobody has this address: neighbour resolution fails and
			// the ping must end with the context.
			short, cancel2 := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel2()
			if _, err := a.Ping(short, netip.MustParseAddr(p.bogus)); !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("ping to nobody: err = %v, want DeadlineExceeded", err)
			}
			if _, err := a.Ping(ctx, netip.MustParseAddr("192.0.2.1")); p.name == "ipv6" && err == nil {
				t.Fatalf("ping to an IPv4 address from an IPv6 VM succeeded")
			}
		})
	}
}

// reader runs Read on v in a goroutine and hands over the frames.
type reader struct {
	frames chan []byte
	err    chan error
}

func startReader(t *testing.T, v *VM, bufLen int) *reader {
	r := &reader{frames: make(chan []byte, 100), err: make(chan error, 1)}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		bufs := [][]byte{make([]byte, bufLen), make([]byte, bufLen)}
		sizes := make([]int, len(bufs))
		for {
			n, err := v.Read(bufs, sizes, 0)
			if err != nil {
				r.err <- err
				return
			}
			for i := range n {
				r.frames <- bytes.Clone(bufs[i][:sizes[i]])
			}
		}
	}()
	t.Cleanup(func() {
		v.Close()
		wg.Wait()
	})
	return r
}

func (r *reader) next(t *testing.T, timeout time.Duration) []byte {
	t.Helper()
	select {
	case f := <-r.frames:
		return f
	case err := <-r.err:
		t.Fatalf("Read: %v", err)
	case <-time.After(timeout):
	}
	return nil
}

// arpRequest is an ARP who-has for tpa from (sha, spa), sent to dst.
func arpRequest(dst, sha net.HardwareAddr, spa, tpa netip.Addr) []byte {
	f := make([]byte, 42)
	copy(f[0:6], dst)
	copy(f[6:12], sha)
	binary.BigEndian.PutUint16(f[12:], 0x0806)
	binary.BigEndian.PutUint16(f[14:], 1)      // Ethernet
	binary.BigEndian.PutUint16(f[16:], 0x0800) // IPv4
	f[18], f[19] = 6, 4
	binary.BigEndian.PutUint16(f[20:], 1) // request
	copy(f[22:28], sha)
	copy(f[28:32], spa.AsSlice())
	copy(f[38:42], tpa.AsSlice())
	return f
}

// isARPReplyTo reports whether f is the VM's ARP reply to mac.
func isARPReplyTo(f []byte, mac net.HardwareAddr) bool {
	return len(f) >= 42 && binary.BigEndian.Uint16(f[12:]) == 0x0806 &&
		binary.BigEndian.Uint16(f[20:]) == 2 && bytes.Equal(f[0:6], mac) && bytes.Equal(f[32:38], mac)
}

// TestDestinationFilter checks that the VM ignores unicast frames for
// other MACs (gVisor alone would answer them) and accepts its own and
// broadcast ones.
func TestDestinationFilter(t *testing.T) {
	checkLeaks(t)
	v := startVM(t, macA, "10.0.0.1/24")
	r := startReader(t, v, bridge.MaxFrame)
	peer := mustMAC(t, "52:54:00:00:00:99")
	peerIP := netip.MustParseAddr("10.0.0.9")

	other := mustMAC(t, "52:54:00:00:00:77")
	if n, err := v.Write([][]byte{arpRequest(other, peer, peerIP, v.Addr())}, 0); n != 1 || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	if f := r.next(t, 300*time.Millisecond); f != nil {
		t.Fatalf("VM answered a frame for %s: % x", other, f)
	}
	if s := v.Stats(); s.RxDropNotForUs != 1 || s.RxFrames != 0 {
		t.Fatalf("stats after a frame for another MAC: %+v", s)
	}

	for _, dst := range []net.HardwareAddr{v.MAC(), {0xff, 0xff, 0xff, 0xff, 0xff, 0xff}} {
		if _, err := v.Write([][]byte{arpRequest(dst, peer, peerIP, v.Addr())}, 0); err != nil {
			t.Fatal(err)
		}
		f := r.next(t, 5*time.Second)
		if !isARPReplyTo(f, peer) {
			t.Fatalf("to %s: want an ARP reply to %s, got % x", dst, peer, f)
		}
	}
	if s := v.Stats(); s.RxDropNotForUs != 1 || s.RxFrames != 2 || s.TxFrames != 2 {
		t.Fatalf("stats: %+v", s)
	}
}

// TestReadTooBig checks that a frame longer than Read's buffer is dropped
// and counted, not truncated, and that Read goes on to the next frame.
func TestReadTooBig(t *testing.T) {
	checkLeaks(t)
	v := startVM(t, macA, "10.0.0.1/24")
	const bufLen = 600
	r := startReader(t, v, bufLen)
	peer := mustMAC(t, "52:54:00:00:00:99")
	peerIP := netip.MustParseAddr("10.0.0.9")

	// Teach the VM the peer's MAC, so the datagrams below go out at once.
	if _, err := v.Write([][]byte{arpRequest(v.MAC(), peer, peerIP, v.Addr())}, 0); err != nil {
		t.Fatal(err)
	}
	if f := r.next(t, 5*time.Second); !isARPReplyTo(f, peer) {
		t.Fatalf("want ARP reply, got % x", f)
	}

	c, err := v.DialUDP(netip.AddrPortFrom(peerIP, 9))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	big := bytes.Repeat([]byte{'B'}, 1000) // 14+20+8+1000 = 1042 bytes > bufLen
	small := []byte("small")               // 14+20+8+5 = 47 bytes
	if _, err := c.Write(big); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(small); err != nil {
		t.Fatal(err)
	}
	f := r.next(t, 5*time.Second)
	if len(f) != 14+20+8+len(small) || !bytes.HasSuffix(f, small) {
		t.Fatalf("want the small datagram's frame (%d bytes), got %d bytes: % x", 14+20+8+len(small), len(f), f)
	}
	if s := v.Stats(); s.TxDropTooBig != 1 {
		t.Fatalf("TxDropTooBig = %d, want 1 (%+v)", s.TxDropTooBig, s)
	}
}

func TestWriteDrops(t *testing.T) {
	checkLeaks(t)
	v := startVM(t, macA, "10.0.0.1/24")
	bcast := net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	runt := make([]byte, 13)
	oversize := make([]byte, DefaultMTU+14+1)
	copy(oversize, bcast)
	maxSize := make([]byte, DefaultMTU+14) // accepted (and ignored by the stack: EtherType 0)
	copy(maxSize, bcast)
	n, err := v.Write([][]byte{runt, oversize, maxSize}, 0)
	if n != 3 || err != nil {
		t.Fatalf("Write = %d, %v; want 3, nil", n, err)
	}
	s := v.Stats()
	if s.RxDropRunt != 1 || s.RxDropOversize != 1 || s.RxFrames != 1 || s.RxBytes != DefaultMTU+14 {
		t.Fatalf("stats: %+v", s)
	}
}

// TestClose checks that Close wakes a blocked Read with net.ErrClosed,
// fails later Reads, Writes, dials and pings, ends a pending Ping and
// Accept, and leaves no goroutine behind (ours or gVisor's).
func TestClose(t *testing.T) {
	checkLeaks(t)
	v, err := New(Config{MAC: mustMAC(t, macA), Addr: netip.MustParsePrefix("10.0.0.1/24")})
	if err != nil {
		t.Fatal(err)
	}

	readErr := make(chan error, 1)
	go func() {
		bufs := [][]byte{make([]byte, bridge.BufSize)}
		sizes := []int{0}
		for {
			// The pending ping below makes the VM send ARP requests;
			// keep reading until Close.
			if _, err := v.Read(bufs, sizes, bridge.Headroom); err != nil {
				readErr <- err
				return
			}
		}
	}()
	pingErr := make(chan error, 1)
	go func() {
		_, err := v.Ping(context.Background(), netip.MustParseAddr("10.0.0.9"))
		pingErr <- err
	}()
	ln, err := v.ListenTCP(80)
	if err != nil {
		t.Fatal(err)
	}
	acceptErr := make(chan error, 1)
	go func() {
		_, err := ln.Accept()
		acceptErr <- err
	}()
	time.Sleep(100 * time.Millisecond) // let them block

	if err := v.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	for name, ch := range map[string]chan error{"Read": readErr, "Ping": pingErr, "Accept": acceptErr} {
		select {
		case err := <-ch:
			if err == nil {
				t.Errorf("%s after Close: no error", name)
			}
			if name != "Accept" && !errors.Is(err, net.ErrClosed) {
				t.Errorf("%s after Close: %v, want net.ErrClosed", name, err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s still blocked 5s after Close", name)
		}
	}
	if _, err := v.Read([][]byte{make([]byte, 100)}, []int{0}, 0); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Read after Close: %v, want net.ErrClosed", err)
	}
	if _, err := v.Write([][]byte{make([]byte, 60)}, 0); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Write after Close: %v, want net.ErrClosed", err)
	}
	if _, err := v.DialTCP(context.Background(), netip.MustParseAddrPort("10.0.0.2:80")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("DialTCP after Close: %v, want net.ErrClosed", err)
	}
	if err := v.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// TestGateway checks the routes: off-subnet traffic goes to the gateway's
// MAC (so the VM ARPs for the gateway), and without a gateway it fails.
func TestGateway(t *testing.T) {
	checkLeaks(t)
	gw := netip.MustParseAddr("10.0.0.254")
	v, err := New(Config{MAC: mustMAC(t, macA), Addr: netip.MustParsePrefix("10.0.0.1/24"), Gateway: gw})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Close() })
	r := startReader(t, v, bridge.MaxFrame)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	go v.Ping(ctx, netip.MustParseAddr("192.0.2.1"))
	f := r.next(t, 5*time.Second)
	if len(f) < 42 || binary.BigEndian.Uint16(f[12:]) != 0x0806 || !bytes.Equal(f[38:42], gw.AsSlice()) {
		t.Fatalf("want an ARP request for the gateway %s, got % x", gw, f)
	}

	lone := startVM(t, macB, "10.0.0.2/24")
	if _, err := lone.DialTCP(ctx, netip.MustParseAddrPort("192.0.2.1:80")); err == nil {
		t.Fatal("dial off-subnet without a gateway succeeded")
	}
}

func TestConfig(t *testing.T) {
	good := Config{MAC: mustMAC(t, macA), Addr: netip.MustParsePrefix("10.0.0.1/24")}
	bad := map[string]func(*Config){
		"no MAC":        func(c *Config) { c.MAC = nil },
		"short MAC":     func(c *Config) { c.MAC = c.MAC[:5] },
		"group MAC":     func(c *Config) { c.MAC = mustMAC(t, "01:00:5e:00:00:01") },
		"zero MAC":      func(c *Config) { c.MAC = make(net.HardwareAddr, 6) },
		"no Addr":       func(c *Config) { c.Addr = netip.Prefix{} },
		"unspecified":   func(c *Config) { c.Addr = netip.MustParsePrefix("0.0.0.0/0") },
		"multicast":     func(c *Config) { c.Addr = netip.MustParsePrefix("224.0.0.1/24") },
		"MTU too small": func(c *Config) { c.MTU = 67 },
		"MTU too big":   func(c *Config) { c.MTU = MaxMTU + 1 },
		"v6 MTU":        func(c *Config) { c.Addr = netip.MustParsePrefix("fd00::1/64"); c.MTU = 1279 },
		"gw off-subnet": func(c *Config) { c.Gateway = netip.MustParseAddr("10.0.1.1") },
		"gw is self":    func(c *Config) { c.Gateway = netip.MustParseAddr("10.0.0.1") },
		"v6 beside v6": func(c *Config) {
			c.Addr, c.Addr6 = netip.MustParsePrefix("fd00::1/64"), netip.MustParsePrefix("fd01::1/64")
		},
		"Addr6 is v4":      func(c *Config) { c.Addr6 = netip.MustParsePrefix("10.1.0.1/24") },
		"Addr6 link-local": func(c *Config) { c.Addr6 = netip.MustParsePrefix("fe80::1/64") },
		"dual-stack MTU":   func(c *Config) { c.Addr6 = netip.MustParsePrefix("fd00::1/64"); c.MTU = 1279 },
		"Gateway6 alone":   func(c *Config) { c.Gateway6 = netip.MustParseAddr("fd00::2") },
		"Gateway6 off-subnet": func(c *Config) {
			c.Addr6 = netip.MustParsePrefix("fd00::1/64")
			c.Gateway6 = netip.MustParseAddr("fd01::2")
		},
	}
	for name, mod := range bad {
		c := good
		c.MAC = append(net.HardwareAddr(nil), good.MAC...)
		mod(&c)
		if v, err := New(c); err == nil {
			v.Close()
			t.Errorf("%s: New accepted %+v", name, c)
		}
	}
	v, err := New(Config{MAC: mustMAC(t, macA), Addr: netip.MustParsePrefix("::ffff:10.0.0.1/120"), MTU: 9000})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if v.Addr() != netip.MustParseAddr("10.0.0.1") || v.Prefix().Bits() != 24 || v.MTU() != 9000 {
		t.Errorf("4in6 config: addr %s prefix %s mtu %d", v.Addr(), v.Prefix(), v.MTU())
	}
	if v.BatchSize() != BatchSize || v.MAC().String() != macA {
		t.Errorf("BatchSize %d MAC %s", v.BatchSize(), v.MAC())
	}
}

// TestDualStack: a VM with an IPv4 and an IPv6 address talks to an IPv4
// VM and an IPv6 VM on the same wire, picking the family by destination.
func TestDualStack(t *testing.T) {
	checkLeaks(t)
	d, err := New(Config{MAC: mustMAC(t, macA), Addr: netip.MustParsePrefix("10.0.0.1/24"),
		Addr6: netip.MustParsePrefix("fd00::1/64")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	if d.Prefix6() != netip.MustParsePrefix("fd00::1/64") || d.LinkLocal().IsValid() {
		t.Fatalf("Prefix6 %s, LinkLocal %s (a plain VM has none)", d.Prefix6(), d.LinkLocal())
	}
	six := startVM(t, macB, "fd00::2/64")
	wire(t, d, six)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := d.Ping(ctx, six.Addr()); err != nil {
		t.Fatalf("IPv6 ping from the dual-stack VM: %v", err)
	}
	ln, err := six.ListenTCP(7)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			io.Copy(c, c)
			c.Close()
		}
	}()
	c, err := d.DialTCP(ctx, netip.AddrPortFrom(six.Addr(), 7))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := c.LocalAddr().String(); !strings.HasPrefix(got, "[fd00::1]:") {
		t.Fatalf("connection from %s, want the VM's IPv6 address", got)
	}
	if _, err := d.Ping(ctx, netip.MustParseAddr("fd01::9")); err == nil {
		t.Fatal("ping off both subnets without a gateway succeeded")
	}
}

// BenchmarkPairTCP measures one TCP stream through two wired VMs.
func BenchmarkPairTCP(b *testing.B) {
	a := startVM(b, macA, "10.0.0.1/24")
	c := startVM(b, macB, "10.0.0.2/24")
	wire(b, a, c)
	ln, err := c.ListenTCP(9)
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		io.Copy(io.Discard, conn)
		conn.Close()
	}()
	conn, err := a.DialTCP(context.Background(), netip.AddrPortFrom(c.Addr(), 9))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	chunk := make([]byte, 64<<10)
	b.SetBytes(int64(len(chunk)))
	b.ReportAllocs()
	b.ResetTimer()
	start := a.Stats().TxFrames
	for range b.N {
		if _, err := conn.Write(chunk); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(a.Stats().TxFrames-start)/b.Elapsed().Seconds(), "frames/s")
	if s := a.Stats(); s.TxDropQueueFull != 0 {
		b.ReportMetric(float64(s.TxDropQueueFull), "queue-drops")
	}
}
