//go:build linux

package tunnel

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
)

// linuxUDPIO receives with recvmmsg and sends with sendmmsg.
//
// Sending uses UDP segmentation offload (UDP_SEGMENT, Linux 4.18) where
// the kernel has it: a run of equal-sized datagrams to one address (the
// chunks of a super-frame) goes down the stack as one 64 KB packet and is
// cut into datagrams only at the bottom (by the NIC, or in software just
// before it, or never on a veth whose peer takes it whole), which saves
// most of the per-datagram cost of the kernel's send path. If the kernel
// refuses a segmented send (EIO: no checksum offload on the route's
// device) the socket falls back to one datagram per message for good.
//
// Receiving uses UDP receive offload (UDP_GRO, Linux 5.0) where the kernel
// has it: datagrams of one flow arrive coalesced, up to 64 KB per message
// with their size in a control message, so a super-frame's chunks cost
// one trip up the stack instead of 47. The mux's reader takes single
// datagrams as windows of those buffers (viewReader); readBatch copies
// them out.
//
// Receiving calls recvmmsg itself (through the socket's RawConn, so the Go
// poller still parks the reader) rather than x/net's ReadBatch: ReadBatch
// allocates a *net.UDPAddr and its net.IP for every datagram, and the
// receive path must not allocate. Sending uses x/net's WriteBatch (sendmmsg),
// which reuses its scratch and allocates nothing.
type linuxUDPIO struct {
	conn   *net.UDPConn
	rc     syscall.RawConn
	is6    bool
	pc4    *ipv4.PacketConn
	pc6    *ipv6.PacketConn
	gso    bool        // the kernel knows UDP_SEGMENT
	gsoOff atomic.Bool // a segmented send failed: never again (sessions send concurrently)

	// recvmmsg scratch: the reader goroutine only
	hs     []unix.Mmsghdr
	iovs   []unix.Iovec
	names  []unix.RawSockaddrInet6
	vlen   int
	n      int
	errno  syscall.Errno
	recvFn func(fd uintptr) bool

	gro *groState // nil: UDP_GRO is off
}

// udpGROBatch is how many coalesced messages one recvmmsg takes, each up
// to udpGROBuf bytes.
const (
	udpGROBatch = 32
	udpGROBuf   = 65535
)

// groState is the reader's coalesced messages and where it is in them.
type groState struct {
	bufs   [][]byte
	hs     []unix.Mmsghdr
	iovs   []unix.Iovec
	names  []unix.RawSockaddrInet6
	oob    []byte
	n      int // messages received by the last recvmmsg
	next   int // the message being handed out
	off    int // where in it
	errno  syscall.Errno
	recvFn func(fd uintptr) bool
}

func newUDPIO(conn *net.UDPConn) (udpIO, bool, error) {
	rc, err := conn.SyscallConn()
	if err != nil {
		return nil, false, err
	}
	domain := unix.AF_INET
	var serr error
	if err := rc.Control(func(fd uintptr) {
		domain, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_DOMAIN)
	}); err != nil {
		return nil, false, err
	}
	if serr != nil {
		return nil, false, serr
	}
	u := &linuxUDPIO{conn: conn, rc: rc, is6: domain == unix.AF_INET6,
		hs: make([]unix.Mmsghdr, udpReadBatch), iovs: make([]unix.Iovec, udpReadBatch),
		names: make([]unix.RawSockaddrInet6, udpReadBatch)}
	if u.is6 {
		u.pc6 = ipv6.NewPacketConn(conn)
	} else {
		u.pc4 = ipv4.NewPacketConn(conn)
	}
	u.recvFn = u.recvmmsg
	rc.Control(func(fd uintptr) {
		_, err := unix.GetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_SEGMENT)
		u.gso = err == nil
		if unix.SetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_GRO, 1) == nil {
			u.gro = newGROState()
		}
	})
	return u, u.is6, nil
}

// tuneUDPSocket enlarges the socket buffers, best effort (see
// udpSocketBuffer for why): SO_RCVBUFFORCE/SO_SNDBUFFORCE pass the sysctl
// caps when we are root, else the plain options take what the caps allow.
func tuneUDPSocket(conn *net.UDPConn) {
	rc, err := conn.SyscallConn()
	if err != nil {
		return
	}
	rc.Control(func(fd uintptr) {
		if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, udpSocketBuffer) != nil {
			unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, udpSocketBuffer)
		}
		if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, udpSocketBuffer) != nil {
			unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF, udpSocketBuffer)
		}
	})
}

func (u *linuxUDPIO) recvmmsg(fd uintptr) bool {
	for {
		n, _, e := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&u.hs[0])), uintptr(u.vlen), 0, 0, 0)
		if e == unix.EINTR {
			continue
		}
		if e == unix.EAGAIN || e == unix.EWOULDBLOCK {
			return false // the poller waits for the socket to become readable
		}
		u.n, u.errno = int(n), e
		return true
	}
}

func newGROState() *groState {
	g := &groState{bufs: make([][]byte, udpGROBatch), hs: make([]unix.Mmsghdr, udpGROBatch),
		iovs: make([]unix.Iovec, udpGROBatch), names: make([]unix.RawSockaddrInet6, udpGROBatch),
		oob: make([]byte, udpGROBatch*unix.CmsgSpace(4))}
	for i := range g.bufs {
		g.bufs[i] = make([]byte, udpGROBuf)
	}
	g.recvFn = g.recvmmsg
	return g
}

func (g *groState) recvmmsg(fd uintptr) bool {
	space := unix.CmsgSpace(4)
	for i := range g.hs {
		g.iovs[i].Base = &g.bufs[i][0]
		g.iovs[i].SetLen(len(g.bufs[i]))
		h := &g.hs[i]
		h.Hdr = unix.Msghdr{Name: (*byte)(unsafe.Pointer(&g.names[i])), Namelen: unix.SizeofSockaddrInet6, Iov: &g.iovs[i],
			Control: &g.oob[i*space]}
		h.Hdr.SetIovlen(1)
		h.Hdr.SetControllen(space)
		h.Len = 0
	}
	for {
		n, _, e := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&g.hs[0])), uintptr(len(g.hs)), 0, 0, 0)
		if e == unix.EINTR {
			continue
		}
		if e == unix.EAGAIN || e == unix.EWOULDBLOCK {
			return false
		}
		g.n, g.next, g.off, g.errno = int(n), 0, 0, e
		if e != 0 {
			g.n = 0
		}
		return true
	}
}

// segSize is message i's datagram size: its UDP_GRO control message, or
// its whole length when it was not coalesced.
func (g *groState) segSize(i int) int {
	h := &g.hs[i]
	space := unix.CmsgSpace(4)
	if uint64(h.Hdr.Controllen) >= uint64(unix.CmsgLen(4)) {
		c := (*unix.Cmsghdr)(unsafe.Pointer(&g.oob[i*space]))
		if c.Level == unix.IPPROTO_UDP && c.Type == unix.UDP_GRO {
			if seg := int(*(*int32)(unsafe.Pointer(&g.oob[i*space+unix.CmsgLen(0)]))); seg > 0 {
				return seg
			}
		}
	}
	return int(h.Len)
}

// viewReader implements udpViewReader with UDP_GRO's coalesced messages:
// every datagram is a window of the 64 KB buffer it arrived in, so a
// super-frame's chunks are decrypted and reassembled where the kernel put
// them, not copied out first (a memmove of every byte received: 2-3% of a
// receiving daemon's CPU under bulk traffic). Without UDP_GRO, nil.
func (u *linuxUDPIO) viewReader() func(views [][]byte, sizes []int, froms []netip.AddrPort) (int, error) {
	if u.gro == nil {
		return nil
	}
	return func(views [][]byte, sizes []int, froms []netip.AddrPort) (int, error) {
		return u.gro.read(u.rc, views, sizes, froms, nil)
	}
}

// readGRO hands out the datagrams of coalesced messages, receiving more
// only when none are left (and blocking only for the first).
func (u *linuxUDPIO) readGRO(bufs [][]byte, sizes []int, froms []netip.AddrPort) (int, error) {
	return u.gro.read(u.rc, bufs, sizes, froms, bufs)
}

// read hands out up to len(views) datagrams of the coalesced messages,
// receiving more only when none are left (and blocking only for the
// first). With copyTo, datagram i is copied into copyTo[i] (which may be
// views itself); without, views[i] is set to a window of the message's
// buffer, valid until the next read.
func (g *groState) read(rc syscall.RawConn, views [][]byte, sizes []int, froms []netip.AddrPort, copyTo [][]byte) (int, error) {
	out := 0
	for out < len(views) {
		if g.next >= g.n {
			if out > 0 {
				break
			}
			g.errno = 0
			if err := rc.Read(g.recvFn); err != nil {
				return 0, err
			}
			if g.errno != 0 {
				return 0, os.NewSyscallError("recvmmsg", g.errno)
			}
			continue
		}
		h := &g.hs[g.next]
		size := int(h.Len)
		if h.Hdr.Flags&unix.MSG_TRUNC != 0 || size == 0 {
			sizes[out], froms[out] = -1, rawToAddrPort(&g.names[g.next])
			if size == 0 {
				sizes[out] = 0
			}
			out++
			g.next, g.off = g.next+1, 0
			continue
		}
		end := min(g.off+g.segSize(g.next), size)
		d := g.bufs[g.next][g.off:end]
		switch {
		case copyTo == nil:
			views[out], sizes[out] = d, len(d)
		case len(d) >= len(copyTo[out]):
			sizes[out] = -1
		default:
			sizes[out] = copy(copyTo[out], d)
		}
		froms[out] = rawToAddrPort(&g.names[g.next])
		out++
		if g.off = end; g.off >= size {
			g.next, g.off = g.next+1, 0
		}
	}
	return out, nil
}

func (u *linuxUDPIO) readBatch(bufs [][]byte, sizes []int, froms []netip.AddrPort) (int, error) {
	if u.gro != nil {
		return u.readGRO(bufs, sizes, froms)
	}
	u.vlen = min(len(bufs), len(u.hs))
	for i := 0; i < u.vlen; i++ {
		u.iovs[i].Base = &bufs[i][0]
		u.iovs[i].SetLen(len(bufs[i]))
		h := &u.hs[i]
		h.Hdr = unix.Msghdr{Name: (*byte)(unsafe.Pointer(&u.names[i])), Namelen: unix.SizeofSockaddrInet6, Iov: &u.iovs[i]}
		h.Hdr.SetIovlen(1)
		h.Len = 0
	}
	u.n, u.errno = 0, 0
	if err := u.rc.Read(u.recvFn); err != nil {
		return 0, err
	}
	if u.errno != 0 {
		return 0, os.NewSyscallError("recvmmsg", u.errno)
	}
	for i := 0; i < u.n; i++ {
		h := &u.hs[i]
		sizes[i] = int(h.Len)
		if h.Hdr.Flags&unix.MSG_TRUNC != 0 {
			sizes[i] = -1
		}
		froms[i] = rawToAddrPort(&u.names[i])
	}
	return u.n, nil
}

// rawToAddrPort decodes a sockaddr_in or sockaddr_in6 (zone dropped).
func rawToAddrPort(sa *unix.RawSockaddrInet6) netip.AddrPort {
	port := (*[2]byte)(unsafe.Pointer(&sa.Port))
	p := uint16(port[0])<<8 | uint16(port[1])
	switch sa.Family {
	case unix.AF_INET:
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		return netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), p)
	case unix.AF_INET6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), p)
	}
	return netip.AddrPort{}
}

func (u *linuxUDPIO) sendBatch(b *udpTxBatch) error {
	if len(b.msgs) < b.n {
		b.msgs = make([]ipv4.Message, len(b.bufs))
		for i := range b.msgs {
			b.msgs[i].Buffers = make([][]byte, 1, 2)
		}
	}
	d := b.dest
	if d.ua == nil || d.to != b.to {
		to, err := udpSockAddr(b.to, u.is6)
		if err != nil {
			return err
		}
		d.ua, d.to = net.UDPAddrFromAddrPort(to), b.to
	}
	if u.gso && !u.gsoOff.Load() {
		err := u.writeBatch(u.gsoMessages(b, d.ua))
		if err == nil || !errors.Is(err, unix.EIO) && !errors.Is(err, unix.EINVAL) {
			return err
		}
		// Datagrams before the failing message went out; resending them
		// all is harmless (the peer's replay window drops the copies).
		u.gsoOff.Store(true)
	}
	ms := b.msgs[:b.n]
	for i := range ms {
		ms[i].Buffers = append(ms[i].Buffers[:0], b.bufs[i][:b.size[i]])
		if i < len(b.body) && b.body[i] != nil {
			ms[i].Buffers = append(ms[i].Buffers, b.body[i])
		}
		ms[i].Addr = d.ua
	}
	return u.writeBatch(ms)
}

// udpGSOMax bounds one segmented send: the kernel takes at most 64
// segments (UDP_MAX_SEGMENTS, older kernels) and 64 KB of IP packet.
const (
	udpGSOMaxSegs  = 64
	udpGSOMaxBytes = 65535 - 40 - 8
)

// gsoMessages groups b's datagrams into segmented messages: a run of
// datagrams of one size, the last possibly shorter, is one message with
// a UDP_SEGMENT of that size (a single datagram goes without).
func (u *linuxUDPIO) gsoMessages(b *udpTxBatch, to net.Addr) []ipv4.Message {
	space := unix.CmsgSpace(2)
	if len(b.gmsgs) < len(b.bufs) {
		b.gmsgs = make([]ipv4.Message, len(b.bufs))
		b.iov = make([][]byte, 2*len(b.bufs)) // a header and a body per datagram at most
		b.oob = make([]byte, len(b.bufs)*space)
	}
	ms := b.gmsgs[:0]
	k := 0 // next free iov
	for i := 0; i < b.n; {
		seg := b.length(i)
		j, total, k0 := i, 0, k
		for j < b.n && j-i < udpGSOMaxSegs && total+b.length(j) <= udpGSOMaxBytes && b.length(j) <= seg {
			b.iov[k] = b.bufs[j][:b.size[j]]
			k++
			if j < len(b.body) && b.body[j] != nil {
				b.iov[k] = b.body[j]
				k++
			}
			total += b.length(j)
			j++
			if b.length(j-1) < seg { // a short one ends the run
				break
			}
		}
		m := &b.gmsgs[len(ms)]
		m.Buffers, m.Addr, m.OOB = b.iov[k0:k], to, nil
		if j-i > 1 {
			oob := b.oob[len(ms)*space : (len(ms)+1)*space]
			h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
			h.Level, h.Type = unix.IPPROTO_UDP, unix.UDP_SEGMENT
			h.SetLen(unix.CmsgLen(2))
			*(*uint16)(unsafe.Pointer(&oob[unix.CmsgLen(0)])) = uint16(seg)
			m.OOB = oob
		}
		ms = ms[:len(ms)+1]
		i = j
	}
	return ms
}

// writeBatch sends ms with sendmmsg until all went.
func (u *linuxUDPIO) writeBatch(ms []ipv4.Message) error {
	for len(ms) > 0 {
		var n int
		var err error
		if u.is6 {
			n, err = u.pc6.WriteBatch(ms, 0)
		} else {
			n, err = u.pc4.WriteBatch(ms, 0)
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return errors.New("sendmmsg sent nothing")
		}
		ms = ms[n:]
	}
	return nil
}

func (u *linuxUDPIO) writeTo(b []byte, to netip.AddrPort) error {
	a, err := udpSockAddr(to, u.is6)
	if err != nil {
		return err
	}
	_, err = u.conn.WriteToUDPAddrPort(b, a)
	return err
}

func (u *linuxUDPIO) close() error { return u.conn.Close() }
