package bridge

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// ---- helpers ----

// vmLeakCheck fails the test if it leaves goroutines behind. Registered
// first, it runs after every other cleanup (ports closed by t.Cleanup).
func vmLeakCheck(t *testing.T) {
	t.Helper()
	opt := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, opt) })
}

// vmLogBuf is a goroutine-safe log sink the tests can search.
type vmLogBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *vmLogBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *vmLogBuf) count(s string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Count(l.b.String(), s)
}

// vmTestLog logs to the test output and to a searchable buffer.
func vmTestLog(t *testing.T) (*slog.Logger, *vmLogBuf) {
	lb := &vmLogBuf{}
	h := slog.NewTextHandler(io.MultiWriter(t.Output(), lb), &slog.HandlerOptions{Level: slog.LevelDebug})
	return slog.New(h), lb
}

// vmSockPath returns a short unix socket path in a fresh temp dir.
func vmSockPath(t *testing.T, name string) string {
	dir, err := os.MkdirTemp("", "vnetq")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, name)
}

// vmTestFrame returns an Ethernet frame of size bytes whose content depends on
// seq, so mix-ups show.
func vmTestFrame(seq, size int) []byte {
	f := make([]byte, size)
	copy(f, []byte{0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01, 0x88, 0xb5})
	for i := 14; i < size; i++ {
		f[i] = byte(seq*7 + i)
	}
	return f
}

// qemuRecords encodes frames as QEMU stream records.
func qemuRecords(frames ...[]byte) []byte {
	var b []byte
	for _, f := range frames {
		b = binary.BigEndian.AppendUint32(b, uint32(len(f)))
		b = append(b, f...)
	}
	return b
}

// vmBatch returns frames as Port.Write batches: each frame at Headroom.
func vmBatch(frames ...[]byte) [][]byte {
	bufs := make([][]byte, len(frames))
	for i, f := range frames {
		bufs[i] = append(make([]byte, Headroom), f...)
	}
	return bufs
}

// vmPortReader reads a port in the background the way the switch does and
// hands over copies of the frames; errc gets Read's final error.
type vmPortReader struct {
	frames chan []byte
	errc   chan error
	maxN   chan int // largest batch seen
}

func startVMReader(t *testing.T, p Port, room int) *vmPortReader {
	r := &vmPortReader{frames: make(chan []byte, 1024), errc: make(chan error, 1), maxN: make(chan int, 1)}
	r.maxN <- 0
	bs := p.BatchSize()
	bufs := make([][]byte, bs)
	for i := range bufs {
		bufs[i] = make([]byte, Headroom+room)
	}
	sizes := make([]int, bs)
	go func() {
		for {
			n, err := p.Read(bufs, sizes, Headroom)
			if n > 0 {
				if m := <-r.maxN; n > m {
					r.maxN <- n
				} else {
					r.maxN <- m
				}
			}
			for i := 0; i < n; i++ {
				r.frames <- bytes.Clone(bufs[i][Headroom : Headroom+sizes[i]])
			}
			if err != nil {
				r.errc <- err
				return
			}
		}
	}()
	return r
}

// want reads the next frame and compares it with f.
func (r *vmPortReader) want(t *testing.T, f []byte) {
	t.Helper()
	select {
	case got := <-r.frames:
		if !bytes.Equal(got, f) {
			t.Fatalf("port read %d bytes % x..., want %d bytes % x...", len(got), got[:min(len(got), 20)], len(f), f[:min(len(f), 20)])
		}
	case err := <-r.errc:
		t.Fatalf("port Read failed: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatalf("no frame from the port")
	}
}

// none checks that no frame arrives for a little while.
func (r *vmPortReader) none(t *testing.T) {
	t.Helper()
	select {
	case got := <-r.frames:
		t.Fatalf("unexpected frame of %d bytes", len(got))
	case err := <-r.errc:
		t.Fatalf("port Read failed: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
}

// closedErr waits for Read to return after Close and checks the error.
func (r *vmPortReader) closedErr(t *testing.T) {
	t.Helper()
	select {
	case err := <-r.errc:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Read after Close: %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("Read still blocked after Close")
	}
}

// fakeQEMU is the VM end of a stream connection.
type fakeQEMU struct {
	c net.Conn
	r *bufio.Reader
}

func newFakeQEMU(c net.Conn) *fakeQEMU { return &fakeQEMU{c: c, r: bufio.NewReader(c)} }

func dialFakeQEMU(t *testing.T, path string) *fakeQEMU {
	t.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("fake QEMU dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return newFakeQEMU(c)
}

func (q *fakeQEMU) send(t *testing.T, b []byte) {
	t.Helper()
	if _, err := q.c.Write(b); err != nil {
		t.Fatalf("fake QEMU write: %v", err)
	}
}

// recv reads one record, failing the test on error or timeout.
func (q *fakeQEMU) recv(t *testing.T) []byte {
	t.Helper()
	f, err := q.tryRecv(5 * time.Second)
	if err != nil {
		t.Fatalf("fake QEMU read: %v", err)
	}
	return f
}

func (q *fakeQEMU) tryRecv(d time.Duration) ([]byte, error) {
	q.c.SetReadDeadline(time.Now().Add(d))
	var hdr [4]byte
	if _, err := io.ReadFull(q.r, hdr[:]); err != nil {
		return nil, err
	}
	f := make([]byte, binary.BigEndian.Uint32(hdr[:]))
	_, err := io.ReadFull(q.r, f)
	return f, err
}

// vmWaitFor polls cond for up to 5 s.
func vmWaitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func listenTestQEMU(t *testing.T) (*QEMUPort, string, *vmLogBuf) {
	t.Helper()
	path := vmSockPath(t, "q.sock")
	log, lb := vmTestLog(t)
	p, err := ListenQEMU(path, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p, path, lb
}

// ---- stream port over sockets ----

func TestQEMUListenTraffic(t *testing.T) {
	vmLeakCheck(t)
	p, path, lb := listenTestQEMU(t)
	r := startVMReader(t, p, MaxFrame)

	if _, err := p.Write(vmBatch(vmTestFrame(0, 60)), Headroom); err != nil {
		t.Fatal(err)
	}
	if got := p.Drops()["no-vm"]; got != 1 {
		t.Fatalf("no-vm drops = %d, want 1", got)
	}

	vm := dialFakeQEMU(t, path)
	vmWaitFor(t, "connection", p.Connected)

	// VM -> port: sizes from the smallest frame to a jumbo one, in one write.
	var frames [][]byte
	for i, size := range []int{MinFrame, 60, 1514, 9000, MaxFrame, 64} {
		frames = append(frames, vmTestFrame(i, size))
	}
	vm.send(t, qemuRecords(frames...))
	for _, f := range frames {
		r.want(t, f)
	}

	// A whole frame is delivered while the next one is still arriving.
	split := qemuRecords(vmTestFrame(6, 60), vmTestFrame(7, 1000))
	vm.send(t, split[:100])
	r.want(t, vmTestFrame(6, 60))
	vm.send(t, split[100:])
	r.want(t, vmTestFrame(7, 1000))

	// port -> VM: one batch.
	out := []([]byte){vmTestFrame(10, 60), vmTestFrame(11, 1514), vmTestFrame(12, MaxFrame)}
	if n, err := p.Write(vmBatch(out...), Headroom); n != len(out) || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	for _, f := range out {
		if got := vm.recv(t); !bytes.Equal(got, f) {
			t.Fatalf("VM got %d bytes, want %d", len(got), len(f))
		}
	}
	if d := p.Drops(); len(d) != 1 {
		t.Fatalf("drops = %v, want only the no-vm one", d)
	}

	// A frame QEMU would choke on is dropped alone.
	out = [][]byte{vmTestFrame(13, 60), vmTestFrame(14, MaxFrame+1), vmTestFrame(15, 70)}
	if n, err := p.Write(vmBatch(out...), Headroom); n != len(out) || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	for _, f := range [][]byte{out[0], out[2]} {
		if got := vm.recv(t); !bytes.Equal(got, f) {
			t.Fatalf("VM got %d bytes, want %d", len(got), len(f))
		}
	}
	if d := p.Drops(); d["oversize"] != 1 {
		t.Fatalf("drops = %v, want oversize 1", d)
	}

	p.Close()
	r.closedErr(t)
	if n := lb.count("QEMU VM connected"); n != 1 {
		t.Errorf("%d connect log lines, want 1", n)
	}
}

func TestQEMUListenReconnect(t *testing.T) {
	vmLeakCheck(t)
	p, path, lb := listenTestQEMU(t)
	r := startVMReader(t, p, MaxFrame)

	vm1 := dialFakeQEMU(t, path)
	vm1.send(t, qemuRecords(vmTestFrame(1, 100)))
	r.want(t, vmTestFrame(1, 100))

	// The VM goes away: not an error for Read, which waits for the next.
	vm1.c.Close()
	vmWaitFor(t, "disconnect", func() bool { return !p.Connected() })
	r.none(t)

	vm2 := dialFakeQEMU(t, path)
	vm2.send(t, qemuRecords(vmTestFrame(2, 100)))
	r.want(t, vmTestFrame(2, 100))

	// A new connection replaces the current one.
	vm3 := dialFakeQEMU(t, path)
	if _, err := vm2.tryRecv(5 * time.Second); err != io.EOF {
		t.Fatalf("replaced connection: read %v, want EOF", err)
	}
	vm3.send(t, qemuRecords(vmTestFrame(3, 100)))
	r.want(t, vmTestFrame(3, 100))
	if _, err := p.Write(vmBatch(vmTestFrame(4, 100)), Headroom); err != nil {
		t.Fatal(err)
	}
	if got := vm3.recv(t); !bytes.Equal(got, vmTestFrame(4, 100)) {
		t.Fatalf("VM3 got the wrong frame")
	}

	p.Close()
	r.closedErr(t)
	if c, d := lb.count("QEMU VM connected"), lb.count("QEMU VM disconnected"); c != 3 || d != 3 {
		t.Errorf("%d connect and %d disconnect log lines, want 3 and 3", c, d)
	}
}

func TestQEMUStreamBadLengths(t *testing.T) {
	vmLeakCheck(t)
	p, path, _ := listenTestQEMU(t)
	r := startVMReader(t, p, 1514) // a 1514-byte room makes 9000 oversize

	vm := dialFakeQEMU(t, path)
	// A runt and an oversize record are skipped, the connection stays up.
	vm.send(t, qemuRecords(vmTestFrame(0, 10), vmTestFrame(1, 9000), vmTestFrame(2, 1514)))
	r.want(t, vmTestFrame(2, 1514))
	if d := p.Drops(); d["runt"] != 1 || d["oversize"] != 1 {
		t.Fatalf("drops = %v, want runt 1 and oversize 1", d)
	}
	if !p.Connected() {
		t.Fatalf("connection dropped after skippable records")
	}

	// A length no QEMU sends: the stream is out of sync; the port hangs up,
	// after delivering the frame before it.
	vm.send(t, append(qemuRecords(vmTestFrame(4, 60)), 0xff, 0xff, 0xff, 0xff, 1, 2, 3))
	r.want(t, vmTestFrame(4, 60))
	if _, err := vm.tryRecv(5 * time.Second); err != io.EOF {
		t.Fatalf("after a garbage length: read %v, want EOF", err)
	}
	vmWaitFor(t, "disconnect", func() bool { return !p.Connected() })
	if d := p.Drops(); d["bad-length"] != 1 {
		t.Fatalf("drops = %v, want bad-length 1", d)
	}

	// The port itself is fine.
	vm2 := dialFakeQEMU(t, path)
	vm2.send(t, qemuRecords(vmTestFrame(3, 60)))
	r.want(t, vmTestFrame(3, 60))
	p.Close()
	r.closedErr(t)
}

func TestQEMUListenClose(t *testing.T) {
	vmLeakCheck(t)
	p, path, _ := listenTestQEMU(t)
	r := startVMReader(t, p, MaxFrame)
	vm := dialFakeQEMU(t, path)
	vmWaitFor(t, "connection", p.Connected)

	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	r.closedErr(t)
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket file after Close: %v", err)
	}
	if _, err := vm.tryRecv(5 * time.Second); err != io.EOF {
		t.Fatalf("VM after Close: read %v, want EOF", err)
	}
	if _, err := p.Write(vmBatch(vmTestFrame(0, 60)), Headroom); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Write after Close: %v", err)
	}
	if _, err := p.Read(make([][]byte, 1), make([]int, 1), 0); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Read after Close: %v", err)
	}
	if err := p.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestQEMUListenPath(t *testing.T) {
	vmLeakCheck(t)
	path := vmSockPath(t, "q.sock")

	// Not a socket: refused, untouched.
	if err := os.WriteFile(path, []byte("precious"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ListenQEMU(path, nil); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("ListenQEMU on a regular file: %v", err)
	}
	if b, _ := os.ReadFile(path); string(b) != "precious" {
		t.Fatalf("ListenQEMU touched a regular file")
	}
	os.Remove(path)

	// A stale socket (its listener died without unlinking) is replaced.
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	p, err := ListenQEMU(path, nil)
	if err != nil {
		t.Fatalf("ListenQEMU over a stale socket: %v", err)
	}
	dialFakeQEMU(t, path)
	vmWaitFor(t, "connection", p.Connected)
	p.Close()
}

func TestQEMUWriteTimeout(t *testing.T) {
	vmLeakCheck(t)
	old := qemuWriteTimeout
	qemuWriteTimeout = 200 * time.Millisecond
	t.Cleanup(func() { qemuWriteTimeout = old })

	p, path, _ := listenTestQEMU(t)
	vm := dialFakeQEMU(t, path) // never reads
	vmWaitFor(t, "connection", p.Connected)
	// Should Write block for good, hanging up unblocks it (and fails the
	// test: the drop reason would be write-error).
	watchdog := time.AfterFunc(5*time.Second, func() { vm.c.Close() })
	defer watchdog.Stop()

	batch := make([][]byte, qemuBatch)
	for i := range batch {
		batch[i] = vmBatch(vmTestFrame(i, MaxFrame))[0]
	}
	start := time.Now()
	for p.Connected() {
		if time.Since(start) > 5*time.Second {
			t.Fatalf("a VM that never reads is still connected after %v", time.Since(start))
		}
		t0 := time.Now()
		if n, err := p.Write(batch, Headroom); n != len(batch) || err != nil {
			t.Fatalf("Write = %d, %v; want the batch consumed", n, err)
		}
		if d := time.Since(t0); d > 2*time.Second {
			t.Fatalf("Write blocked for %v", d)
		}
	}
	if d := p.Drops(); d["write-timeout"] != qemuBatch {
		t.Fatalf("drops = %v, want write-timeout %d", d, qemuBatch)
	}
}

func TestQEMUDial(t *testing.T) {
	vmLeakCheck(t)
	path := vmSockPath(t, "qemu-server.sock")
	log, lb := vmTestLog(t)

	// QEMU is not there yet: the port keeps trying.
	p, err := DialQEMU(path, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	r := startVMReader(t, p, MaxFrame)
	time.Sleep(150 * time.Millisecond)
	if p.Connected() {
		t.Fatal("connected to nothing")
	}

	// serve plays a QEMU with server=on: it accepts one client.
	serve := func() (*net.UnixListener, *fakeQEMU) {
		t.Helper()
		ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		ln.SetDeadline(time.Now().Add(5 * time.Second))
		c, err := ln.Accept()
		if err != nil {
			t.Fatalf("fake QEMU server: %v", err)
		}
		return ln, newFakeQEMU(c)
	}

	for round := 0; round < 2; round++ {
		ln, vm := serve()
		vmWaitFor(t, "connection", p.Connected)
		vm.send(t, qemuRecords(vmTestFrame(round, 200)))
		r.want(t, vmTestFrame(round, 200))
		if _, err := p.Write(vmBatch(vmTestFrame(round+10, 200)), Headroom); err != nil {
			t.Fatal(err)
		}
		if got := vm.recv(t); !bytes.Equal(got, vmTestFrame(round+10, 200)) {
			t.Fatalf("round %d: VM got the wrong frame", round)
		}
		// QEMU restarts: connection and listener go away.
		vm.c.Close()
		ln.Close()
		vmWaitFor(t, "disconnect", func() bool { return !p.Connected() })
	}
	p.Close()
	r.closedErr(t)
	if n := lb.count("QEMU VM connected"); n != 2 {
		t.Errorf("%d connect log lines, want 2", n)
	}
}

// ---- stream codec ----

func TestQEMUStreamDecoder(t *testing.T) {
	var drops vmDrops
	in := qemuRecords(vmTestFrame(0, 60), vmTestFrame(1, 10), vmTestFrame(2, 61), vmTestFrame(3, 500), vmTestFrame(4, 62), vmTestFrame(5, 63))
	in = append(in, 0, 0, 1) // a record cut short
	d := qemuStreamDecoder{r: bufio.NewReader(bytes.NewReader(in)), drops: &drops}
	bufs := [][]byte{make([]byte, 104), make([]byte, 104), make([]byte, 104)}
	sizes := make([]int, 3)

	// The whole input is buffered, so one call fills the batch, skipping
	// the runt and the oversize record.
	n, err := d.readBatch(bufs, sizes, 4)
	if n != 3 || err != nil {
		t.Fatalf("readBatch = %d, %v; want 3", n, err)
	}
	for i, want := range [][]byte{vmTestFrame(0, 60), vmTestFrame(2, 61), vmTestFrame(4, 62)} {
		if !bytes.Equal(bufs[i][4:4+sizes[i]], want) {
			t.Fatalf("frame %d differs", i)
		}
	}
	if n, err = d.readBatch(bufs, sizes, 4); n != 1 || err != nil || !bytes.Equal(bufs[0][4:4+sizes[0]], vmTestFrame(5, 63)) {
		t.Fatalf("second readBatch = %d, %v", n, err)
	}
	if _, err = d.readBatch(bufs, sizes, 4); err != io.ErrUnexpectedEOF {
		t.Fatalf("cut record: %v, want io.ErrUnexpectedEOF", err)
	}
	if got := drops.snapshot(); got["runt"] != 1 || got["oversize"] != 1 || len(got) != 2 {
		t.Fatalf("drops = %v", got)
	}

	d = qemuStreamDecoder{r: bufio.NewReader(bytes.NewReader([]byte{0, 0x10, 0, 1})), drops: &drops}
	if _, err := d.readBatch(bufs, sizes, 4); !errors.Is(err, errQEMUBadLength) {
		t.Fatalf("length 0x100001: %v, want errQEMUBadLength", err)
	}
	d = qemuStreamDecoder{r: bufio.NewReader(bytes.NewReader(nil)), drops: &drops}
	if _, err := d.readBatch(bufs, sizes, 4); err != io.EOF {
		t.Fatalf("empty stream: %v, want io.EOF", err)
	}
}

// qemuRefParse is the reference decoder for the fuzz test: a plain walk over
// the bytes. end is io.EOF, io.ErrUnexpectedEOF or errQEMUBadLength.
func qemuRefParse(data []byte, room int) (frames [][]byte, runts, oversize int, end error) {
	for pos := 0; ; {
		rest := len(data) - pos
		if rest == 0 {
			return frames, runts, oversize, io.EOF
		}
		if rest < 4 {
			return frames, runts, oversize, io.ErrUnexpectedEOF
		}
		l := int(binary.BigEndian.Uint32(data[pos:]))
		if l > qemuMaxRecord {
			return frames, runts, oversize, errQEMUBadLength
		}
		pos += 4
		deliver := false
		switch {
		case l < MinFrame:
			runts++
		case l > room:
			oversize++
		default:
			deliver = true
		}
		if len(data)-pos < l {
			return frames, runts, oversize, io.ErrUnexpectedEOF
		}
		if deliver {
			frames = append(frames, data[pos:pos+l])
		}
		pos += l
	}
}

// qemuDecodeAll runs the decoder over data in batches of 3 with a bufio
// buffer of bufSize, checking every returned size against the room.
func qemuDecodeAll(t *testing.T, data []byte, bufSize, room int) (frames [][]byte, drops map[string]uint64, end error) {
	var dc vmDrops
	d := qemuStreamDecoder{r: bufio.NewReaderSize(bytes.NewReader(data), bufSize), drops: &dc}
	const offset = 4
	bufs := [][]byte{make([]byte, offset+room), make([]byte, offset+room), make([]byte, offset+room)}
	sizes := make([]int, 3)
	for {
		n, err := d.readBatch(bufs, sizes, offset)
		if n < 0 || n > len(bufs) || (n > 0) == (err != nil) {
			t.Fatalf("readBatch = %d, %v", n, err)
		}
		for i := 0; i < n; i++ {
			if sizes[i] < MinFrame || sizes[i] > room {
				t.Fatalf("frame of %d bytes with room %d", sizes[i], room)
			}
			frames = append(frames, bytes.Clone(bufs[i][offset:offset+sizes[i]]))
		}
		if err != nil {
			return frames, dc.snapshot(), err
		}
	}
}

func FuzzQEMUStream(f *testing.F) {
	f.Add(qemuRecords(vmTestFrame(0, 14)))
	f.Add(qemuRecords(vmTestFrame(0, 60), vmTestFrame(1, 100)))
	f.Add(qemuRecords(vmTestFrame(0, 5), vmTestFrame(1, 101), vmTestFrame(2, 20)))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{0, 0, 0, 40, 1, 2})
	f.Add(append(qemuRecords(vmTestFrame(0, 60)), 0, 0x10, 0, 1))
	const room = 100
	f.Fuzz(func(t *testing.T, data []byte) {
		want, runts, oversize, wantEnd := qemuRefParse(data, room)
		for _, bufSize := range []int{16, 4096} {
			got, drops, end := qemuDecodeAll(t, data, bufSize, room)
			if !errors.Is(end, wantEnd) {
				t.Fatalf("bufio %d: ended with %v, want %v", bufSize, end, wantEnd)
			}
			if len(got) != len(want) {
				t.Fatalf("bufio %d: %d frames, want %d", bufSize, len(got), len(want))
			}
			for i := range got {
				if !bytes.Equal(got[i], want[i]) {
					t.Fatalf("bufio %d: frame %d differs", bufSize, i)
				}
			}
			bad := uint64(0)
			if wantEnd == errQEMUBadLength {
				bad = 1
			}
			if drops["runt"] != uint64(runts) || drops["oversize"] != uint64(oversize) || drops["bad-length"] != bad {
				t.Fatalf("bufio %d: drops %v, want runt %d oversize %d bad-length %d", bufSize, drops, runts, oversize, bad)
			}
		}
		// Encoding what was decoded and decoding again is a fixed point.
		enc := appendQEMURecords(nil, want, 0)
		again, drops, end := qemuDecodeAll(t, enc, 4096, room)
		if end != io.EOF || len(drops) != 0 || len(again) != len(want) {
			t.Fatalf("re-decode: %d frames, drops %v, end %v", len(again), drops, end)
		}
		for i := range again {
			if !bytes.Equal(again[i], want[i]) {
				t.Fatalf("re-decode: frame %d differs", i)
			}
		}
	})
}

// ---- allocations ----

func qemuRaceEnabled() bool {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return false
	}
	for _, s := range bi.Settings {
		if s.Key == "-race" {
			return s.Value == "true"
		}
	}
	return false
}

func TestQEMUStreamAllocs(t *testing.T) {
	if qemuRaceEnabled() {
		t.Skip("allocation counts are not meaningful under -race")
	}
	frames := vmBatch(vmTestFrame(0, 60), vmTestFrame(1, 1514), vmTestFrame(2, MaxFrame), vmTestFrame(3, 100))
	enc := appendQEMURecords(nil, frames, Headroom)

	t.Run("codec", func(t *testing.T) {
		var drops vmDrops
		src := bytes.NewReader(enc)
		d := qemuStreamDecoder{r: bufio.NewReaderSize(src, qemuReadBuf), drops: &drops}
		bufs := [][]byte{make([]byte, BufSize), make([]byte, BufSize), make([]byte, BufSize), make([]byte, BufSize)}
		sizes := make([]int, len(bufs))
		dst := make([]byte, 0, 2*len(enc))
		allocs := testing.AllocsPerRun(100, func() {
			dst = appendQEMURecords(dst[:0], frames, Headroom)
			src.Reset(enc)
			d.r.Reset(src)
			if n, err := d.readBatch(bufs, sizes, Headroom); n != len(frames) || err != nil {
				t.Fatalf("readBatch = %d, %v", n, err)
			}
		})
		if allocs != 0 {
			t.Fatalf("%v allocations per encode+decode, want 0", allocs)
		}
	})

	t.Run("port", func(t *testing.T) {
		vmLeakCheck(t)
		p, path, _ := listenTestQEMU(t)
		vm := dialFakeQEMU(t, path)
		vmWaitFor(t, "connection", p.Connected)
		bufs := [][]byte{make([]byte, BufSize), make([]byte, BufSize), make([]byte, BufSize), make([]byte, BufSize)}
		sizes := make([]int, len(bufs))
		sink := make([]byte, len(enc))
		allocs := testing.AllocsPerRun(100, func() {
			if _, err := p.Write(frames, Headroom); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(vm.c, sink); err != nil {
				t.Fatal(err)
			}
			if _, err := vm.c.Write(enc); err != nil {
				t.Fatal(err)
			}
			for got := 0; got < len(frames); {
				n, err := p.Read(bufs, sizes, Headroom)
				if err != nil {
					t.Fatal(err)
				}
				got += n
			}
		})
		if allocs != 0 {
			t.Fatalf("%v allocations per Write+Read round trip, want 0", allocs)
		}
		if !bytes.Equal(sink, enc) {
			t.Fatalf("VM got different bytes")
		}
	})
}

// ---- dgram port ----

func TestQEMUDgram(t *testing.T) {
	vmLeakCheck(t)
	local, vmPath := vmSockPath(t, "vnet.sock"), vmSockPath(t, "vm.sock")
	log, lb := vmTestLog(t)
	p, err := OpenQEMUDgram(local, vmPath, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	r := startVMReader(t, p, 1514)

	// No VM yet: a counted drop, not an error.
	if n, err := p.Write(vmBatch(vmTestFrame(0, 60), vmTestFrame(1, 60)), Headroom); n != 2 || err != nil {
		t.Fatalf("Write without VM = %d, %v", n, err)
	}
	if d := p.Drops(); d["no-vm"] != 2 {
		t.Fatalf("drops = %v, want no-vm 2", d)
	}

	vm, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: vmPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { vm.Close(); os.Remove(vmPath) })
	vnet := &net.UnixAddr{Name: local, Net: "unixgram"}

	// port -> VM: bare frames, one per datagram, from the bound socket.
	out := [][]byte{vmTestFrame(2, 60), vmTestFrame(3, 1514), vmTestFrame(4, MaxFrame)}
	if n, err := p.Write(vmBatch(out...), Headroom); n != 3 || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	buf := make([]byte, 65536)
	for _, f := range out {
		vm.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, from, err := vm.ReadFromUnix(buf)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf[:n], f) || from == nil || from.Name != local {
			t.Fatalf("VM got %d bytes from %v, want %d from %s", n, from, len(f), local)
		}
	}

	// VM -> port, with runts, oversize frames and strangers in between.
	send := func(c *net.UnixConn, b []byte) {
		t.Helper()
		if _, err := c.WriteToUnix(b, vnet); err != nil {
			t.Fatal(err)
		}
	}
	send(vm, vmTestFrame(5, 100))
	r.want(t, vmTestFrame(5, 100))
	send(vm, vmTestFrame(6, 10))
	send(vm, vmTestFrame(7, 1515))
	stranger, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: vmSockPath(t, "x.sock"), Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer stranger.Close()
	send(stranger, vmTestFrame(8, 100))
	send(vm, vmTestFrame(9, 1514))
	r.want(t, vmTestFrame(9, 1514))
	if d := p.Drops(); d["runt"] != 1 || d["oversize"] != 1 || d["foreign"] != 1 {
		t.Fatalf("drops = %v, want runt, oversize and foreign 1", d)
	}

	// An unnamed sender cannot be told apart from the VM: accepted.
	anon, err := net.DialUnix("unixgram", nil, vnet)
	if err != nil {
		t.Fatal(err)
	}
	defer anon.Close()
	if _, err := anon.Write(vmTestFrame(10, 80)); err != nil {
		t.Fatal(err)
	}
	r.want(t, vmTestFrame(10, 80))

	// The VM goes away again: counted drops.
	vm.Close()
	os.Remove(vmPath)
	if n, err := p.Write(vmBatch(vmTestFrame(11, 60)), Headroom); n != 1 || err != nil {
		t.Fatalf("Write after VM left = %d, %v", n, err)
	}
	if d := p.Drops(); d["no-vm"] != 3 {
		t.Fatalf("drops = %v, want no-vm 3", d)
	}

	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	r.closedErr(t)
	if _, err := os.Lstat(local); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket file after Close: %v", err)
	}
	if _, err := p.Write(vmBatch(vmTestFrame(0, 60)), Headroom); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Write after Close: %v", err)
	}
	if lb.count("QEMU dgram VM reachable") != 1 || lb.count("QEMU dgram VM not reachable") != 1 {
		t.Errorf("want one log line per reachability change")
	}
}

func TestQEMUDgramStuckVM(t *testing.T) {
	vmLeakCheck(t)
	local, vmPath := vmSockPath(t, "vnet.sock"), vmSockPath(t, "vm.sock")
	vm, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: vmPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { vm.Close() }) // never reads
	p, err := OpenQEMUDgram(local, vmPath, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })

	batch := vmBatch(vmTestFrame(0, 1514))
	start := time.Now()
	for p.Drops()["write-timeout"] == 0 {
		if time.Since(start) > 10*time.Second {
			t.Fatalf("no write-timeout drop after %v; drops %v", time.Since(start), p.Drops())
		}
		t0 := time.Now()
		if n, err := p.Write(batch, Headroom); n != 1 || err != nil {
			t.Fatalf("Write = %d, %v", n, err)
		}
		if d := time.Since(t0); d > time.Second {
			t.Fatalf("Write blocked for %v", d)
		}
	}
}

func TestQEMUDgramPath(t *testing.T) {
	path := vmSockPath(t, "vnet.sock")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenQEMUDgram(path, path+".vm", nil); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("OpenQEMUDgram on a regular file: %v", err)
	}
}
