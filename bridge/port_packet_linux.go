package bridge

// LAN port on Linux: an AF_PACKET socket on a real interface (--lan-iface),
// which bridges the switch's segment into that interface's LAN.
//
// The socket is bound to the interface with ETH_P_ALL, joins it in
// promiscuous mode (a packet membership: the kernel undoes it when the
// socket closes), ignores the frames it sends itself (PACKET_IGNORE_OUTGOING,
// so nothing loops back into the switch), and uses PACKET_VNET_HDR: every
// frame comes with a virtio-net header. That header says when the kernel
// left a checksum for the hardware to fill in (a frame from a local sender
// or a veth peer): the port completes it, since the frame leaves the
// machine through the overlay, not through the hardware. It also says when
// the frame is a merged TCP segment (GRO on the interface, or a TSO sender
// behind a veth), up to 64 KB: the port cuts it back into frames of the
// size the sender chose, as the hardware would have (software GSO). Other
// merged frames (UDP) are dropped and counted as "merged".
//
// Like the TAP port, reads go through the Go poller with one callback per
// batch and no allocation.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

const (
	packetBatch = 64
	packetBig   = vnetHdrLen + 65535 + 18 // the largest merged frame, with its header
)

// PacketPort is a Port on a network interface through an AF_PACKET socket.
type PacketPort struct {
	log      *slog.Logger
	name     string
	file     *os.File
	rc       syscall.RawConn
	maxFrame int
	drops    vmDrops
	closed   atomic.Bool
	once     sync.Once
	warned   atomic.Bool // merged frames: one log line

	r struct { // the reader's state (Read has one caller)
		fn     func(fd uintptr) bool
		bufs   [][]byte
		sizes  []int
		offset int
		n      int
		err    error
		big    []byte // every frame is read here first: it may be a merged one
		seg    segmenter
	}
	w struct { // the writer's (Write has one caller)
		fn    func(fd uintptr) bool
		frame []byte
		err   error
	}
	addr unix.SockaddrLinklayer
}

var _ Port = (*PacketPort)(nil)

// OpenPacket opens an AF_PACKET port on interface name. It needs root or
// CAP_NET_RAW; the interface must exist (and be up to carry traffic).
func OpenPacket(name string, log *slog.Logger) (*PacketPort, error) {
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return nil, fmt.Errorf("--lan-iface %s: %w", name, err)
	}
	proto := int(htons(unix.ETH_P_ALL))
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		if errors.Is(err, unix.EPERM) {
			return nil, fmt.Errorf("--lan-iface %s: opening a packet socket: %w (needs root or CAP_NET_RAW)", name, err)
		}
		return nil, fmt.Errorf("--lan-iface %s: opening a packet socket: %w", name, err)
	}
	fail := func(what string, err error) (*PacketPort, error) {
		unix.Close(fd)
		return nil, fmt.Errorf("--lan-iface %s: %s: %w", name, what, err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_VNET_HDR, 1); err != nil {
		return fail("PACKET_VNET_HDR", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1); err != nil {
		return fail("PACKET_IGNORE_OUTGOING (Linux 4.20 or later)", err)
	}
	sa := unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index}
	if err := unix.Bind(fd, &sa); err != nil {
		return fail("bind", err)
	}
	mreq := unix.PacketMreq{Ifindex: int32(ifi.Index), Type: unix.PACKET_MR_PROMISC}
	if err := unix.SetsockoptPacketMreq(fd, unix.SOL_PACKET, unix.PACKET_ADD_MEMBERSHIP, &mreq); err != nil {
		return fail("promiscuous mode", err)
	}
	file := os.NewFile(uintptr(fd), "packet:"+name)
	rc, err := file.SyscallConn()
	if err != nil {
		file.Close()
		return nil, fmt.Errorf("--lan-iface %s: %w", name, err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := &PacketPort{log: log.With("lan", name), name: name, file: file, rc: rc, addr: sa,
		maxFrame: max(ifi.MTU, 1500) + 14 + 4}
	p.r.fn, p.w.fn = p.readReady, p.writeReady
	p.r.big = make([]byte, packetBig)
	p.log.Info("LAN interface attached (promiscuous)", "mtu", ifi.MTU)
	return p, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// Name returns the interface's name.
func (p *PacketPort) Name() string { return p.name }

// Read implements Port.
func (p *PacketPort) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	if len(bufs) == 0 {
		return 0, nil
	}
	if offset < vnetHdrLen {
		return 0, fmt.Errorf("packet port %s: read offset %d, want at least %d of headroom", p.name, offset, vnetHdrLen)
	}
	r := &p.r
	r.bufs, r.sizes, r.offset, r.n, r.err = bufs, sizes, offset, 0, nil
	err := p.rc.Read(r.fn)
	n, rerr := r.n, r.err
	r.bufs, r.sizes, r.err = nil, nil, nil
	if n > 0 {
		return n, nil
	}
	if p.closed.Load() {
		return 0, net.ErrClosed
	}
	if err == nil {
		err = rerr
	}
	return 0, fmt.Errorf("reading LAN interface %s: %w", p.name, err)
}

// readReady reads frames until the batch is full or none is left; a merged
// frame's segments may span batches.
func (p *PacketPort) readReady(fd uintptr) bool {
	r := &p.r
	for r.n < len(r.bufs) {
		if r.seg.pending() {
			p.emit(r.seg.next(r.bufs[r.n][r.offset:]))
			continue
		}
		n, _, err := unix.Recvfrom(int(fd), r.big, unix.MSG_TRUNC)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return r.n > 0
		case err != nil:
			r.err = err
			return true
		case n > len(r.big) || n < vnetHdrLen+MinFrame:
			p.drops.add(vmDropRunt, 1)
			continue
		}
		hdr, frame := r.big[:vnetHdrLen], r.big[vnetHdrLen:n]
		if gso := hdr[1] &^ gsoECN; gso != 0 {
			if (gso != gsoTCPv4 && gso != gsoTCPv6) || !r.seg.start(frame, int(binary.LittleEndian.Uint16(hdr[4:])), gso == gsoTCPv4) {
				p.merged(len(frame))
			}
			continue
		}
		if hdr[0]&vnetNeedCsum != 0 {
			start, off := int(binary.LittleEndian.Uint16(hdr[6:])), int(binary.LittleEndian.Uint16(hdr[8:]))
			if !completeChecksum(frame, start, off) {
				p.drops.add(vmDropRunt, 1)
				continue
			}
		}
		p.emit(copy(r.bufs[r.n][r.offset:], frame), len(frame))
	}
	return true
}

// emit accounts one frame of n bytes copied into the next buffer (of
// which it filled c).
func (p *PacketPort) emit(c, n int) {
	r := &p.r
	switch {
	case c < n:
		p.drops.add(vmDropOversize, 1)
	case n > p.maxFrame:
		p.merged(n)
	default:
		r.sizes[r.n] = n
		r.n++
	}
}

func (p *PacketPort) merged(n int) {
	p.drops.add(vmDropMerged, 1)
	if !p.warned.Swap(true) {
		p.log.Warn("the interface hands over merged frames that vnet cannot cut (not TCP), which are dropped: turn off GRO/LRO on it (ethtool -K IF gro off lro off)",
			"bytes", n)
	}
}

// Write implements Port: one sendto(2) per frame, each after a zero
// virtio-net header written into the headroom. A frame the interface
// refuses is counted ("write-error"); only a closed port fails.
func (p *PacketPort) Write(bufs [][]byte, offset int) (int, error) {
	if offset < vnetHdrLen {
		return 0, fmt.Errorf("packet port %s: write offset %d, want at least %d of headroom", p.name, offset, vnetHdrLen)
	}
	for _, b := range bufs {
		f := b[offset-vnetHdrLen:]
		clear(f[:vnetHdrLen])
		p.w.frame, p.w.err = f, nil
		err := p.rc.Write(p.w.fn)
		if err == nil {
			err = p.w.err
		}
		p.w.frame = nil
		if err != nil {
			if p.closed.Load() {
				return 0, net.ErrClosed
			}
			p.drops.add(vmDropWriteError, 1)
		}
	}
	return len(bufs), nil
}

func (p *PacketPort) writeReady(fd uintptr) bool {
	err := unix.Sendto(int(fd), p.w.frame, 0, &p.addr)
	if err == unix.EAGAIN {
		return false
	}
	p.w.err = err
	return true
}

// BatchSize implements Port.
func (p *PacketPort) BatchSize() int { return packetBatch }

// Drops returns the frames the port dropped itself, by reason.
func (p *PacketPort) Drops() map[string]uint64 { return p.drops.snapshot() }

// Close implements Port; the interface leaves promiscuous mode.
func (p *PacketPort) Close() error {
	var err error
	p.once.Do(func() {
		p.closed.Store(true)
		err = p.file.Close()
		p.log.Info("LAN interface detached")
	})
	return err
}
