package bridge

// TAP port on Linux.
//
// water opens /dev/net/tun with O_NONBLOCK and wraps the fd in an *os.File,
// so the Go poller parks a blocked Read without a thread. Read runs one
// callback under the file's RawConn: it readv(2)s frames until EAGAIN or the
// batch is full, and asks the poller to wait only if it got nothing. The
// callback is a method value bound once and its arguments live in the port
// (Read has a single caller), so a batch costs no allocation.
//
// The fd is bound to the device, not to a namespace: the device may be moved
// into another network namespace (ip link set NAME netns NS) and the port
// keeps working.

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/songgao/water"
	"golang.org/x/sys/unix"
)

// tapBatch is BatchSize of a TAP port; an offloading one reads fewer, as
// each of its frames may be 64 KB.
const (
	tapBatch        = 64
	tapOffloadBatch = 16
)

// tapOffloads are the offloads an offloading TAP device takes: checksums
// left to fill, and TCP segmentation over IPv4 and IPv6 (with ECN).
const tapOffloads = unix.TUN_F_CSUM | unix.TUN_F_TSO4 | unix.TUN_F_TSO6 | unix.TUN_F_TSO_ECN

// TAPPort is a Port on a Linux TAP device that vnet created (or attached
// to, if a non-persistent device of that name is free). The device is not
// persistent: it disappears when the port closes. vnet does not set the
// link up or assign addresses; that is the user's (or the VM's) business,
// e.g. "ip link set NAME up". While the link is down, writes fail and are
// counted as "write-error" drops.
type TAPPort struct {
	log     *slog.Logger
	name    string
	file    *os.File
	offload bool // opened with IFF_VNET_HDR and tapOffloads
	rc      syscall.RawConn
	drops   vmDrops
	closed  atomic.Bool
	once    sync.Once

	// r is the reader's state: the arguments and results of readReady.
	// Read is never called concurrently, so it needs no lock.
	r struct {
		fn     func(fd uintptr) bool // p.readReady, bound once
		bufs   [][]byte
		sizes  []int
		offset int
		n      int
		err    error
		// iov is {room, tail}: the kernel silently cuts a frame to the
		// buffer it is given, so a byte spilling into tail is how an
		// over-long frame shows.
		iov  [2][]byte
		tail [1]byte
	}
	writeFailing atomic.Bool // for one log line per change
}

var _ Port = (*TAPPort)(nil)

// OpenTAP creates the TAP device name (or takes over a free one) and opens
// it. An empty name lets the kernel choose; Name reports it. Errors say
// what is missing, e.g. "creating TAP device NAME: operation not permitted
// (needs root or CAP_NET_ADMIN)".
func OpenTAP(name string, log *slog.Logger) (*TAPPort, error) {
	if len(name) >= unix.IFNAMSIZ {
		return nil, fmt.Errorf("creating TAP device %s: name longer than %d bytes", name, unix.IFNAMSIZ-1)
	}
	dev, err := water.New(water.Config{
		DeviceType:             water.TAP,
		PlatformSpecificParams: water.PlatformSpecificParams{Name: name},
	})
	if err != nil {
		return nil, tapOpenError(name, err)
	}
	file, ok := dev.ReadWriteCloser.(*os.File)
	if !ok { // water changed under us
		dev.Close()
		return nil, fmt.Errorf("creating TAP device %s: water returned %T, not *os.File", name, dev.ReadWriteCloser)
	}
	rc, err := file.SyscallConn()
	if err != nil {
		dev.Close()
		return nil, fmt.Errorf("creating TAP device %s: %w", name, err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return newTAPPort(dev.Name(), file, rc, false, log), nil
}

func newTAPPort(name string, file *os.File, rc syscall.RawConn, offload bool, log *slog.Logger) *TAPPort {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := &TAPPort{log: log.With("tap", name), name: name, file: file, rc: rc, offload: offload}
	p.r.fn = p.readReady
	p.r.iov[1] = p.r.tail[:]
	p.log.Info("TAP device attached", "offloads", offload)
	return p
}

// OpenTAPOffload is OpenTAP for a device with offloads (IFF_VNET_HDR,
// TUNSETOFFLOAD: checksums and TCP segmentation): the VM's kernel hands
// over TCP segments of up to 64 KB and unfinished checksums, which cross
// the switch, and links that take them, whole (see OffloadPort). water
// cannot set these flags, so the device is opened here. An error says
// what failed; a kernel without the offloads fails at TUNSETOFFLOAD, and
// the caller may fall back to OpenTAP.
func OpenTAPOffload(name string, log *slog.Logger) (*TAPPort, error) {
	if len(name) >= unix.IFNAMSIZ {
		return nil, fmt.Errorf("creating TAP device %s: name longer than %d bytes", name, unix.IFNAMSIZ-1)
	}
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, tapOpenError(name, err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("creating TAP device %s: %w", name, err)
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, tapOpenError(name, err)
	}
	if err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, tapOffloads); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("creating TAP device %s: %w (TUNSETOFFLOAD: %w)", name, ErrNoTAPOffloads, err)
	}
	file := os.NewFile(uintptr(fd), "/dev/net/tun")
	rc, err := file.SyscallConn()
	if err != nil {
		file.Close()
		return nil, fmt.Errorf("creating TAP device %s: %w", name, err)
	}
	return newTAPPort(ifr.Name(), file, rc, true, log), nil
}

// Offloads implements OffloadPort.
func (p *TAPPort) Offloads() bool { return p.offload }

// tapOpenError explains the usual ways creating a TAP device fails.
func tapOpenError(name string, err error) error {
	var hint string
	switch {
	case errors.Is(err, unix.ENOENT):
		hint = "/dev/net/tun not found (is the tun module loaded?)"
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		hint = "operation not permitted (needs root or CAP_NET_ADMIN)"
	case errors.Is(err, unix.EBUSY):
		hint = "device busy (is another process attached to it?)"
	case errors.Is(err, unix.EINVAL):
		hint = "invalid argument (does a device of another kind have this name?)"
	default:
		return fmt.Errorf("creating TAP device %s: %w", name, err)
	}
	return fmt.Errorf("creating TAP device %s: %s: %w", name, hint, err)
}

// Name returns the device's name.
func (p *TAPPort) Name() string { return p.name }

// Read implements Port: it blocks for the first frame, then takes the
// frames already queued on the device, up to len(bufs). Frames longer than
// len(bufs[i])-offset are dropped ("oversize"). An error other than
// net.ErrClosed means the device is gone (e.g. deleted).
func (p *TAPPort) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	if len(bufs) == 0 {
		return 0, nil
	}
	r := &p.r
	r.bufs, r.sizes, r.offset, r.n, r.err = bufs, sizes, offset, 0, nil
	err := p.rc.Read(r.fn)
	n, rerr := r.n, r.err
	r.bufs, r.sizes, r.err = nil, nil, nil // do not keep the caller's buffers
	if n > 0 {
		return n, nil
	}
	if p.closed.Load() {
		return 0, net.ErrClosed
	}
	if err == nil {
		err = rerr
	}
	return 0, fmt.Errorf("reading TAP device %s: %w", p.name, err)
}

// readReady reads frames from fd until the batch is full or the device has
// none left. It returns false (wait for the poller) only if it read nothing.
func (p *TAPPort) readReady(fd uintptr) bool {
	r := &p.r
	hdr := 0
	if p.offload {
		hdr = VnetHdrLen
	}
	for r.n < len(r.bufs) {
		room := r.bufs[r.n][r.offset-hdr:]
		r.iov[0] = room
		n, err := unix.Readv(int(fd), r.iov[:])
		r.iov[0] = nil
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return r.n > 0
		case err != nil:
			r.err = err
			return true
		case n > len(room): // the frame spilled into tail: too long
			p.drops.add(vmDropOversize, 1)
		case n < hdr+MinFrame:
			p.drops.add(vmDropRunt, 1)
		default:
			r.sizes[r.n] = n - hdr
			r.n++
		}
	}
	return true
}

// Write implements Port with one write(2) per frame (a TAP device has no
// batch write), with its header slot on an offloading device. A frame the
// device refuses is counted ("write-error") and the rest are still
// written; only a closed port fails.
func (p *TAPPort) Write(bufs [][]byte, offset int) (int, error) {
	hdr := 0
	if p.offload {
		hdr = VnetHdrLen
	}
	for i, b := range bufs {
		if _, err := p.file.Write(b[offset-hdr:]); err != nil {
			if p.closed.Load() {
				return i, net.ErrClosed
			}
			p.drops.add(vmDropWriteError, 1)
			if !p.writeFailing.Swap(true) {
				p.log.Warn("TAP write failing (is the link up?)", "err", err)
			}
			continue
		}
		if p.writeFailing.Load() && p.writeFailing.Swap(false) {
			p.log.Info("TAP write working again")
		}
	}
	return len(bufs), nil
}

// BatchSize implements Port.
func (p *TAPPort) BatchSize() int {
	if p.offload {
		return tapOffloadBatch
	}
	return tapBatch
}

// QuickWrites implements QuickPort: a TAP write hands the frame to the
// kernel, which drops rather than waits when its backlog is full.
func (p *TAPPort) QuickWrites() bool { return true }

// Drops returns the frames the port dropped itself, by reason ("runt",
// "oversize", "write-error"); only non-zero reasons appear.
func (p *TAPPort) Drops() map[string]uint64 { return p.drops.snapshot() }

// Close implements Port. The device is deleted with its last fd.
func (p *TAPPort) Close() error {
	var err error
	p.once.Do(func() {
		p.closed.Store(true)
		if err = p.file.Close(); err != nil {
			err = fmt.Errorf("closing TAP device %s: %w", p.name, err)
		}
		p.log.Info("TAP device closed")
	})
	return err
}
