package bridge

// VM-facing QEMU ports.
//
// Wire formats (QEMU's, not ours):
//
//	stream (-netdev stream / -netdev socket): a byte stream of records
//	    +--------+--------+--------+--------+-----------------------+
//	    | frame length, 32-bit big-endian   | frame (length bytes)  |
//	    +--------+--------+--------+--------+-----------------------+
//	dgram (-netdev dgram): one bare Ethernet frame per datagram.
//
// Stream decoding validates the length before reading the frame: a length
// below MinFrame ("runt") or above the caller's buffer ("oversize") is
// skipped and counted, and the connection stays up; a length above
// qemuMaxRecord cannot come from QEMU (its own limit is 68 KiB), so the
// stream is out of sync and the connection is closed ("bad-length").
//
// Locking. QEMUPort keeps the current connection in an atomic pointer, so
// Read and Write find it without a shared lock; mu only orders connection
// changes against Close. Write serialises on the port's own mutex (w) and
// encodes the whole batch into one reused buffer: one write(2) per batch.
// Read runs on the switch's single reader goroutine and decodes straight
// into the caller's buffers from a per-connection bufio.Reader. Nothing on
// the stream port's frame path allocates (TestQEMUStreamAllocs); the dgram
// port's does, see QEMUDgramPort.

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Spec and implementation constants of the QEMU ports.
const (
	// qemuLenSize is the stream record header: the frame length.
	qemuLenSize = 4
	// qemuMaxRecord is the largest stream length taken as a (skippable)
	// frame. Anything larger means the stream is out of sync.
	qemuMaxRecord = 1 << 20
	// qemuBatch is BatchSize of the stream port.
	qemuBatch = 64
	// qemuReadBuf is each connection's read buffer: room for a full batch
	// of 1500-byte frames, so a batch rarely needs a second read(2).
	qemuReadBuf = 128 << 10
	// qemuSockBuf is the socket buffer size asked for, best effort: a
	// bigger buffer absorbs bursts while the VM or the switch is busy.
	qemuSockBuf = 1 << 20
	// qemuDgramScratch holds any datagram QEMU can send (its NET_BUFSIZE
	// is 4096+65536), so an over-long datagram is seen whole and dropped
	// instead of silently truncated.
	qemuDgramScratch = 70 << 10
)

// Timing of the QEMU ports; variables so tests can shrink them.
var (
	// qemuWriteTimeout bounds one batch write to a stream VM; a VM that
	// does not drain its socket for this long is disconnected, so it
	// cannot hold the switch's writer for this port forever.
	qemuWriteTimeout = 2 * time.Second
	// qemuDgramWriteTimeout bounds a batch write to a dgram VM whose
	// receive queue is full; the rest of the batch is dropped.
	qemuDgramWriteTimeout = 100 * time.Millisecond
	// qemuDialMin and qemuDialMax bound DialQEMU's backoff between
	// attempts; it doubles after each failure.
	qemuDialMin = 100 * time.Millisecond
	qemuDialMax = 2 * time.Second
	// qemuStableConn is how long a dialled connection must last for the
	// backoff to reset, so a server that accepts and hangs up at once is
	// not redialled in a tight loop.
	qemuStableConn = time.Second
)

// errQEMUBadLength marks a stream length no QEMU sends.
var errQEMUBadLength = errors.New("bad frame length")

// ---- drop counters, shared by the VM-facing ports ----

// vmDrop is why a VM-facing port dropped a frame on its own.
type vmDrop uint8

const (
	vmDropRunt         vmDrop = iota // shorter than MinFrame
	vmDropOversize                   // longer than the buffer it had to fit
	vmDropBadLength                  // stream out of sync; connection closed
	vmDropNoVM                       // no VM connected or reachable
	vmDropForeign                    // datagram from a sender other than the VM
	vmDropWriteTimeout               // VM did not drain its socket in time
	vmDropWriteError                 // any other write failure
	vmDropMerged                     // an interface's merged (GRO/TSO) frame, longer than a frame may be
	numVMDrops
)

// vmDropNames are the reasons as Drops reports them. "runt" and
// "write-error" are also switch reasons; the switch adds the counts up.
var vmDropNames = [numVMDrops]string{
	"runt", "oversize", "bad-length", "no-vm", "foreign", "write-timeout", "write-error", "merged",
}

// vmDrops counts drops by reason, lock-free.
type vmDrops [numVMDrops]atomic.Uint64

func (d *vmDrops) add(r vmDrop, n int) { d[r].Add(uint64(n)) }

// snapshot returns the non-zero counters by name.
func (d *vmDrops) snapshot() map[string]uint64 {
	m := make(map[string]uint64)
	for i := range d {
		if v := d[i].Load(); v > 0 {
			m[vmDropNames[i]] = v
		}
	}
	return m
}

// ---- stream codec (pure: no sockets) ----

// qemuStreamDecoder reads QEMU stream records from r. It is not safe for
// concurrent use.
type qemuStreamDecoder struct {
	r     *bufio.Reader
	drops *vmDrops
}

// next reads one record. It returns the frame length after copying the frame
// to room[:n]; or 0 and nil after skipping (and counting) a runt or oversize
// record; or an error: the reader's (io.EOF at a record boundary,
// io.ErrUnexpectedEOF inside one) or errQEMUBadLength, after which the
// stream cannot be resynchronised. It blocks only as r blocks.
func (d *qemuStreamDecoder) next(room []byte) (int, error) {
	hdr, err := d.r.Peek(qemuLenSize)
	if err != nil {
		if err == io.EOF && len(hdr) > 0 {
			err = io.ErrUnexpectedEOF
		}
		return 0, err
	}
	l := binary.BigEndian.Uint32(hdr)
	if l > qemuMaxRecord {
		d.drops.add(vmDropBadLength, 1)
		return 0, fmt.Errorf("%w %d (limit %d)", errQEMUBadLength, l, qemuMaxRecord)
	}
	d.r.Discard(qemuLenSize) // cannot fail: the bytes are buffered
	n := int(l)
	switch {
	case n < MinFrame:
		d.drops.add(vmDropRunt, 1)
		return 0, d.skip(n)
	case n > len(room):
		d.drops.add(vmDropOversize, 1)
		return 0, d.skip(n)
	}
	if _, err := io.ReadFull(d.r, room[:n]); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return 0, err
	}
	return n, nil
}

// skip discards the n-byte body of a record that will not be delivered.
func (d *qemuStreamDecoder) skip(n int) error {
	if _, err := d.r.Discard(n); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return err
	}
	return nil
}

// buffered reports whether the next record is wholly buffered, so that
// decoding it cannot block. An out-of-sync length reports false: the next
// blocking call meets it first and reports the error.
func (d *qemuStreamDecoder) buffered() bool {
	b := d.r.Buffered()
	if b < qemuLenSize {
		return false
	}
	hdr, _ := d.r.Peek(qemuLenSize)
	l := binary.BigEndian.Uint32(hdr)
	return l <= qemuMaxRecord && b-qemuLenSize >= int(l)
}

// readBatch fills bufs[i][offset:] with frames as Port.Read does: it blocks
// until one frame is decoded, then adds only frames already buffered. If it
// returns n > 0 the error is nil; a pending error shows on the next call.
func (d *qemuStreamDecoder) readBatch(bufs [][]byte, sizes []int, offset int) (int, error) {
	n := 0
	for n < len(bufs) {
		if n > 0 && !d.buffered() {
			break
		}
		size, err := d.next(bufs[n][offset:])
		if err != nil {
			return 0, err // n == 0 here: buffered records cannot fail
		}
		if size > 0 {
			sizes[n] = size
			n++
		}
	}
	return n, nil
}

// appendQEMURecords appends frames bufs[i][offset:] to dst as stream
// records and returns the extended slice.
func appendQEMURecords(dst []byte, bufs [][]byte, offset int) []byte {
	for _, b := range bufs {
		f := b[offset:]
		dst = binary.BigEndian.AppendUint32(dst, uint32(len(f)))
		dst = append(dst, f...)
	}
	return dst
}

// ---- stream port ----

// QEMUPort is a Port to one QEMU VM over a unix stream socket, in either
// direction: ListenQEMU waits for QEMU to connect, DialQEMU connects to a
// QEMU that listens. Exactly one connection is current at a time; the
// port survives any number of VM restarts.
//
// Read blocks until a frame arrives from whichever connection is current; a
// VM going away is not an error, Read just waits for the next connection.
// Write drops and counts ("no-vm") while no VM is connected. Drops reports
// frames dropped by the port itself.
type QEMUPort struct {
	log  *slog.Logger
	path string
	mode string            // "listen" or "dial", for logs
	ln   *net.UnixListener // listen mode only

	cur    atomic.Pointer[qemuConn]
	nconns atomic.Uint64 // connection ids, for logs
	drops  vmDrops
	done   chan struct{} // closed by Close
	wg     sync.WaitGroup

	// mu orders connection changes against Close.
	mu struct {
		sync.Mutex
		closed  bool
		changed chan struct{} // closed and replaced when cur is set or the port closes
	}
	// w is the writer's state, guarded by its mutex.
	w struct {
		sync.Mutex
		buf []byte
	}
}

var _ Port = (*QEMUPort)(nil)

// qemuConn is one VM connection and its read state.
type qemuConn struct {
	id    uint64
	conn  *net.UnixConn
	dec   qemuStreamDecoder
	since time.Time
	done  chan struct{} // closed when dropped
	once  sync.Once
}

// ListenQEMU listens on the unix socket path for QEMU's
// "-netdev stream,server=off,addr.type=unix,addr.path=PATH" (the framing is
// that of the older "-netdev socket" too, so anything speaking it over a
// unix socket works), and accepts in a loop: a new connection
// replaces the current one, so a restarted QEMU is picked up again. A stale
// socket file at path is removed first; any other file there is an error.
// Close unlinks the socket.
func ListenQEMU(path string, log *slog.Logger) (*QEMUPort, error) {
	if err := qemuClearSocket(path); err != nil {
		return nil, fmt.Errorf("listening for QEMU on %s: %w", path, err)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listening for QEMU on %s: %w", path, err)
	}
	ln.SetUnlinkOnClose(true)
	p := newQEMUPort(path, "listen", log)
	p.ln = ln
	p.wg.Add(1)
	go p.runAccept()
	return p, nil
}

// DialQEMU connects to a QEMU started with
// "-netdev stream,server=on,addr.type=unix,addr.path=PATH" and dials again,
// forever, whenever the connection drops or QEMU is not there yet, backing
// off from 100 ms to 2 s. It returns at once; Connected reports progress.
func DialQEMU(path string, log *slog.Logger) (*QEMUPort, error) {
	if path == "" {
		return nil, errors.New("dialling QEMU: empty socket path")
	}
	p := newQEMUPort(path, "dial", log)
	p.wg.Add(1)
	go p.runDial()
	return p, nil
}

func newQEMUPort(path, mode string, log *slog.Logger) *QEMUPort {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := &QEMUPort{log: log.With("qemu", path, "mode", mode), path: path, mode: mode, done: make(chan struct{})}
	p.mu.changed = make(chan struct{})
	return p
}

// qemuClearSocket makes path free for bind: a leftover socket is removed,
// anything else is refused so a typo cannot delete a user's file.
func qemuClearSocket(path string) error {
	fi, err := os.Lstat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return err
	case fi.Mode()&fs.ModeSocket == 0:
		return errors.New("exists and is not a socket; refusing to replace it")
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing stale socket: %w", err)
	}
	return nil
}

// runAccept accepts VM connections until Close.
func (p *QEMUPort) runAccept() {
	defer p.wg.Done()
	p.log.Debug("QEMU accept loop started")
	defer p.log.Debug("QEMU accept loop stopped")
	for {
		conn, err := p.ln.AcceptUnix()
		if err != nil {
			if p.isClosed() {
				return
			}
			// EMFILE and friends: wait a little rather than spin.
			p.log.Warn("accepting QEMU connection failed", "err", err)
			if !p.sleep(qemuDialMin) {
				return
			}
			continue
		}
		p.attach(conn)
	}
}

// runDial keeps a connection to a listening QEMU until Close.
func (p *QEMUPort) runDial() {
	defer p.wg.Done()
	p.log.Debug("QEMU dial loop started")
	defer p.log.Debug("QEMU dial loop stopped")
	addr := &net.UnixAddr{Name: p.path, Net: "unix"}
	backoff, waiting := qemuDialMin, false
	for {
		conn, err := net.DialUnix("unix", nil, addr)
		if err != nil {
			if !waiting { // one line per outage, not per attempt
				p.log.Info("waiting for QEMU to listen", "err", err)
				waiting = true
			}
			if !p.sleep(backoff) {
				return
			}
			backoff = min(2*backoff, qemuDialMax)
			continue
		}
		waiting = false
		c := p.attach(conn)
		if c == nil {
			return // closed meanwhile
		}
		select {
		case <-c.done:
		case <-p.done:
			return
		}
		if time.Since(c.since) >= qemuStableConn {
			backoff = qemuDialMin
		} else {
			if !p.sleep(backoff) {
				return
			}
			backoff = min(2*backoff, qemuDialMax)
		}
	}
}

// sleep waits d or until Close; it reports false if the port closed.
func (p *QEMUPort) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-p.done:
		return false
	}
}

// attach makes conn the current connection, dropping the previous one. It
// returns nil (and closes conn) if the port is closed.
func (p *QEMUPort) attach(conn *net.UnixConn) *qemuConn {
	// Best effort: larger buffers absorb bursts; the kernel caps them.
	_ = conn.SetReadBuffer(qemuSockBuf)
	_ = conn.SetWriteBuffer(qemuSockBuf)
	c := &qemuConn{
		id:    p.nconns.Add(1),
		conn:  conn,
		dec:   qemuStreamDecoder{r: bufio.NewReaderSize(conn, qemuReadBuf), drops: &p.drops},
		since: time.Now(),
		done:  make(chan struct{}),
	}
	p.mu.Lock()
	if p.mu.closed {
		p.mu.Unlock()
		conn.Close()
		return nil
	}
	old := p.cur.Swap(c)
	close(p.mu.changed)
	p.mu.changed = make(chan struct{})
	p.mu.Unlock()
	if old != nil {
		p.drop(old, "replaced by a new connection", nil)
	}
	p.log.Info("QEMU VM connected", "conn", c.id)
	return c
}

// drop closes c once, with one log line, and clears it if it is current.
func (p *QEMUPort) drop(c *qemuConn, why string, err error) {
	c.once.Do(func() {
		p.cur.CompareAndSwap(c, nil)
		c.conn.Close()
		// Log before waking the dial loop, so its retries come after this line.
		if err != nil {
			p.log.Info("QEMU VM disconnected", "conn", c.id, "why", why, "err", err)
		} else {
			p.log.Info("QEMU VM disconnected", "conn", c.id, "why", why)
		}
		close(c.done)
	})
}

// current waits for a connection; it fails only once the port is closed.
func (p *QEMUPort) current() (*qemuConn, error) {
	for {
		if c := p.cur.Load(); c != nil {
			return c, nil
		}
		p.mu.Lock()
		closed, changed := p.mu.closed, p.mu.changed
		p.mu.Unlock()
		if closed {
			return nil, net.ErrClosed
		}
		if c := p.cur.Load(); c != nil {
			return c, nil
		}
		<-changed
	}
}

func (p *QEMUPort) isClosed() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Read implements Port. It never returns an error for a VM that goes away
// or sends garbage (those are logged and counted); only net.ErrClosed.
func (p *QEMUPort) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	if len(bufs) == 0 {
		return 0, nil
	}
	for {
		c, err := p.current()
		if err != nil {
			return 0, err
		}
		n, err := c.dec.readBatch(bufs, sizes, offset)
		if n > 0 {
			return n, nil
		}
		switch {
		case errors.Is(err, errQEMUBadLength):
			p.drop(c, "stream out of sync", err)
		case err == io.EOF:
			p.drop(c, "VM closed the connection", nil)
		default:
			p.drop(c, "read failed", err) // a no-op if we closed it ourselves
		}
	}
}

// Write implements Port. It encodes the batch into one buffer and writes it
// with one system call. Without a VM, or when the VM fails to take the
// batch within qemuWriteTimeout (the connection is then dropped), the
// frames are counted as drops and Write still reports them consumed: a VM
// going away is not the switch's error. Only a closed port fails.
func (p *QEMUPort) Write(bufs [][]byte, offset int) (int, error) {
	p.w.Lock()
	defer p.w.Unlock()
	if p.isClosed() {
		return 0, net.ErrClosed
	}
	c := p.cur.Load()
	if c == nil {
		p.drops.add(vmDropNoVM, len(bufs))
		return len(bufs), nil
	}
	p.w.buf = p.w.buf[:0]
	sent := 0
	for i := range bufs {
		if len(bufs[i])-offset > MaxFrame { // QEMU would reset the stream
			p.drops.add(vmDropOversize, 1)
			continue
		}
		p.w.buf = appendQEMURecords(p.w.buf, bufs[i:i+1], offset)
		sent++
	}
	if sent == 0 {
		return len(bufs), nil
	}
	if err := c.conn.SetWriteDeadline(time.Now().Add(qemuWriteTimeout)); err != nil {
		p.drop(c, "setting write deadline failed", err)
		return p.writeFailed(len(bufs), sent, vmDropWriteError)
	}
	if _, err := c.conn.Write(p.w.buf); err != nil {
		reason := vmDropWriteError
		if errors.Is(err, os.ErrDeadlineExceeded) {
			reason = vmDropWriteTimeout
			p.drop(c, "VM stopped reading", err)
		} else {
			p.drop(c, "write failed", err)
		}
		return p.writeFailed(len(bufs), sent, reason)
	}
	return len(bufs), nil
}

// writeFailed counts the lost frames of a batch of n and reports the batch
// consumed, or reports the port closed if that is why the write failed.
func (p *QEMUPort) writeFailed(n, lost int, reason vmDrop) (int, error) {
	if p.isClosed() {
		return 0, net.ErrClosed
	}
	p.drops.add(reason, lost)
	return n, nil
}

// BatchSize implements Port.
func (p *QEMUPort) BatchSize() int { return qemuBatch }

// Connected reports whether a VM connection is current.
func (p *QEMUPort) Connected() bool { return p.cur.Load() != nil }

// Drops returns the frames the port dropped itself, by reason ("no-vm",
// "runt", "oversize", "bad-length", "write-timeout", "write-error"); only
// non-zero reasons appear.
func (p *QEMUPort) Drops() map[string]uint64 { return p.drops.snapshot() }

// Close implements Port: it stops accepting or dialling, drops the VM
// connection, unlinks the socket ListenQEMU created and waits for the
// port's goroutines. Blocked and later Reads return net.ErrClosed.
func (p *QEMUPort) Close() error {
	p.mu.Lock()
	if p.mu.closed {
		p.mu.Unlock()
		return nil
	}
	p.mu.closed = true
	close(p.done)
	close(p.mu.changed)
	old := p.cur.Swap(nil)
	p.mu.Unlock()
	var err error
	if p.ln != nil {
		err = p.ln.Close() // unlinks path
	}
	if old != nil {
		p.drop(old, "port closed", nil)
	}
	p.wg.Wait()
	if err != nil {
		return fmt.Errorf("closing QEMU socket %s: %w", p.path, err)
	}
	return nil
}

// ---- dgram port ----

// QEMUDgramPort is a Port to one QEMU VM over unix datagram sockets, for
// "-netdev dgram,id=n0,local.type=unix,local.path=VMPATH,remote.type=unix,remote.path=LOCALPATH":
// vnet binds LOCALPATH and sends each frame as one datagram to VMPATH.
//
// Datagrams from a named sender other than VMPATH are dropped ("foreign");
// unnamed senders are accepted. Writing while the VM is not there is a
// counted drop ("no-vm"), never an error. BatchSize is 1: the portable
// socket API has no non-blocking drain (recvmmsg/sendmmsg are a later,
// Linux-only step). Each received frame is copied once from a scratch
// buffer, and the net package allocates the sender and destination
// addresses per datagram; both go away with recvmmsg/sendmmsg.
type QEMUDgramPort struct {
	log       *slog.Logger
	localPath string
	vmPath    string
	vmAddr    *net.UnixAddr
	conn      *net.UnixConn
	local     os.FileInfo // the socket we bound, to unlink only our own
	drops     vmDrops
	closed    atomic.Bool
	once      sync.Once

	// r is the reader's state; Read is never called concurrently.
	r struct {
		scratch []byte
		alias   string // a name of vmPath seen as sender (e.g. relative)
		warned  bool   // a foreign sender was logged
	}
	// w is the writer's state, guarded by its mutex.
	w struct {
		sync.Mutex
		vmUp bool // last write reached the VM; for one log line per change
	}
}

var _ Port = (*QEMUDgramPort)(nil)

// OpenQEMUDgram binds a unixgram socket at localPath (a stale socket there
// is removed, any other file is an error) and sends frames to vmPath.
// The VM need not exist yet. Close unlinks localPath.
func OpenQEMUDgram(localPath, vmPath string, log *slog.Logger) (*QEMUDgramPort, error) {
	if vmPath == "" {
		return nil, fmt.Errorf("opening QEMU dgram socket %s: empty VM socket path", localPath)
	}
	if err := qemuClearSocket(localPath); err != nil {
		return nil, fmt.Errorf("opening QEMU dgram socket %s: %w", localPath, err)
	}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: localPath, Net: "unixgram"})
	if err != nil {
		return nil, fmt.Errorf("opening QEMU dgram socket %s: %w", localPath, err)
	}
	fi, err := os.Lstat(localPath)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("opening QEMU dgram socket %s: %w", localPath, err)
	}
	// Best effort: larger buffers absorb bursts; the kernel caps them.
	_ = conn.SetReadBuffer(qemuSockBuf)
	_ = conn.SetWriteBuffer(qemuSockBuf)
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := &QEMUDgramPort{
		log:       log.With("qemu", localPath, "vm", vmPath, "mode", "dgram"),
		localPath: localPath,
		vmPath:    vmPath,
		vmAddr:    &net.UnixAddr{Name: vmPath, Net: "unixgram"},
		conn:      conn,
		local:     fi,
	}
	p.r.scratch = make([]byte, qemuDgramScratch)
	p.log.Info("QEMU dgram socket open")
	return p, nil
}

// Read implements Port, one frame per call.
func (p *QEMUDgramPort) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	if len(bufs) == 0 {
		return 0, nil
	}
	room := bufs[0][offset:]
	for {
		n, from, err := p.conn.ReadFromUnix(p.r.scratch)
		if err != nil {
			if p.closed.Load() || errors.Is(err, net.ErrClosed) {
				return 0, net.ErrClosed
			}
			return 0, fmt.Errorf("reading QEMU dgram socket %s: %w", p.localPath, err)
		}
		switch {
		case !p.fromVM(from):
			p.drops.add(vmDropForeign, 1)
		case n < MinFrame:
			p.drops.add(vmDropRunt, 1)
		case n > len(room):
			p.drops.add(vmDropOversize, 1)
		default:
			sizes[0] = copy(room, p.r.scratch[:n])
			return 1, nil
		}
	}
}

// fromVM reports whether a datagram from addr may be the VM's: unnamed
// senders pass, named ones must be vmPath (or a name of the same file, as
// when QEMU was given a relative path).
func (p *QEMUDgramPort) fromVM(addr *net.UnixAddr) bool {
	if addr == nil || addr.Name == "" || addr.Name == "@" { // "@": Go's spelling of unnamed
		return true
	}
	if addr.Name == p.vmPath || addr.Name == p.r.alias {
		return true
	}
	a, errA := os.Stat(addr.Name)
	b, errB := os.Stat(p.vmPath)
	if errA == nil && errB == nil && os.SameFile(a, b) {
		p.r.alias = addr.Name
		return true
	}
	if !p.r.warned {
		p.r.warned = true
		p.log.Warn("dropping datagrams from a sender that is not the VM", "from", addr.Name)
	}
	return false
}

// Write implements Port, one datagram per frame. Frames the VM cannot take
// are counted, never an error: "no-vm" while its socket is missing or
// stale, "write-timeout" when its queue stays full for
// qemuDgramWriteTimeout (the rest of the batch is dropped).
func (p *QEMUDgramPort) Write(bufs [][]byte, offset int) (int, error) {
	p.w.Lock()
	defer p.w.Unlock()
	if p.closed.Load() {
		return 0, net.ErrClosed
	}
	if err := p.conn.SetWriteDeadline(time.Now().Add(qemuDgramWriteTimeout)); err != nil {
		return p.writeFailed(0, len(bufs), vmDropWriteError, err)
	}
	for i, b := range bufs {
		_, err := p.conn.WriteToUnix(b[offset:], p.vmAddr)
		switch {
		case err == nil:
			if !p.w.vmUp {
				p.w.vmUp = true
				p.log.Info("QEMU dgram VM reachable")
			}
		case errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED):
			if p.w.vmUp {
				p.w.vmUp = false
				p.log.Info("QEMU dgram VM not reachable", "err", err)
			}
			return p.writeFailed(i, len(bufs), vmDropNoVM, nil)
		case errors.Is(err, os.ErrDeadlineExceeded):
			return p.writeFailed(i, len(bufs), vmDropWriteTimeout, nil)
		default:
			if _, err := p.writeFailed(i, i+1, vmDropWriteError, err); err != nil {
				return i, err
			}
		}
	}
	return len(bufs), nil
}

// writeFailed counts frames [from, to) as dropped for reason and reports
// the batch consumed, or reports the port closed if that is why.
func (p *QEMUDgramPort) writeFailed(from, to int, reason vmDrop, err error) (int, error) {
	if p.closed.Load() {
		return from, net.ErrClosed
	}
	if err != nil {
		p.log.Debug("QEMU dgram write failed", "err", err)
	}
	p.drops.add(reason, to-from)
	return to, nil
}

// BatchSize implements Port.
func (p *QEMUDgramPort) BatchSize() int { return 1 }

// Drops returns the frames the port dropped itself, by reason ("no-vm",
// "foreign", "runt", "oversize", "write-timeout", "write-error"); only
// non-zero reasons appear.
func (p *QEMUDgramPort) Drops() map[string]uint64 { return p.drops.snapshot() }

// Close implements Port and unlinks localPath if it is still the socket
// this port bound.
func (p *QEMUDgramPort) Close() error {
	var err error
	p.once.Do(func() {
		p.closed.Store(true)
		err = p.conn.Close()
		if fi, lerr := os.Lstat(p.localPath); lerr == nil && os.SameFile(fi, p.local) {
			if rerr := os.Remove(p.localPath); rerr != nil && err == nil {
				err = rerr
			}
		}
		p.log.Info("QEMU dgram socket closed")
		if err != nil {
			err = fmt.Errorf("closing QEMU dgram socket %s: %w", p.localPath, err)
		}
	})
	return err
}
