package patterns

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Net is the transport Run uses, so the same workload runs over the host's
// sockets (StdNet), inside netstack VMs, or over anything else that gives
// stream connections.
type Net interface {
	Dial(ctx context.Context, addr string) (net.Conn, error)
	Listen(addr string) (net.Listener, error)
}

// StdNet is the host's TCP stack.
var StdNet Net = stdNet{}

type stdNet struct{}

func (stdNet) Dial(ctx context.Context, addr string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "tcp", addr)
}

func (stdNet) Listen(addr string) (net.Listener, error) { return net.Listen("tcp", addr) }

// Defaults for Config fields left zero.
const (
	DefaultElements = 65536
	DefaultTimeout  = 5 * time.Minute
	// MaxSize bounds Config.Size (1 GiB).
	MaxSize = 1 << 30
)

// Config describes one rank's run.
type Config struct {
	// Rank is this process's rank, an index into Peers.
	Rank int
	// Peers holds every rank's address (host:port), index = rank. This
	// rank listens on Peers[Rank] (or Listen, or uses Listener) and dials
	// the higher-ranked neighbours at theirs.
	Peers []string
	// Listen, if set, is the address to listen on instead of Peers[Rank]
	// (e.g. ":7000" in a VM whose Peers entry is a NATed address).
	Listen string
	// Listener, if set, is used instead of listening; Run closes it.
	Listener net.Listener
	// Topology is one of Topologies; Dims optionally fixes a grid's shape.
	Topology string
	Dims     []int
	// Iters is the number of iterations (at least 1); Size the bytes of
	// every message (at least 1).
	Iters int
	Size  int
	// Flops, Reads and Writes are the floating-point operations, reads and
	// writes per element of a buffer of Elements float64s (0 means
	// DefaultElements) in every iteration's compute phase. All zero skips
	// the compute phase.
	Flops, Reads, Writes int
	Elements             int
	// Net is the transport; nil means StdNet.
	Net Net
	// Timeout bounds the connection set-up and every single iteration: a
	// peer that is not up, or makes no progress, for this long fails the
	// run. 0 means DefaultTimeout; it does not bound the whole run.
	Timeout time.Duration
	// OnIter, if set, is called after every iteration with the number done
	// so far (for progress and rates measured while the run goes on).
	OnIter func(done int)
}

// Result is one rank's outcome.
type Result struct {
	Rank     int    `json:"rank"`
	Ranks    int    `json:"ranks"`
	Topology string `json:"topology"`
	// Peers are the neighbour ranks this rank exchanged messages with.
	Peers []int `json:"peers"`
	Iters int   `json:"iters"`
	Size  int   `json:"size"`
	// Seconds is the wall time of the iterations (after connection
	// set-up); ComputeSeconds and CommSeconds split it by phase.
	Seconds        float64 `json:"seconds"`
	ComputeSeconds float64 `json:"compute_seconds"`
	CommSeconds    float64 `json:"comm_seconds"`
	ItersPerS      float64 `json:"iters_per_s"`
	// Bytes and BytesRecv count payload bytes this rank sent and received
	// (Iters × Size × len(Peers) each; headers are not counted).
	Bytes     uint64 `json:"bytes"`
	BytesRecv uint64 `json:"bytes_recv"`
	// Checksum is a function of the compute buffer, so the compute phase
	// cannot be optimised away.
	Checksum float64 `json:"checksum"`
}

// Wire format.
const (
	helloMagic  = "VNPATT01"
	msgMagic    = 0x564e504d // "VNPM"
	headerLen   = 16
	stampLen    = 8
	maxTopoName = 255
)

// topoName is the topology with explicit grid dimensions, as both ends of a
// connection must agree on it.
func (c *Config) topoName() string {
	switch c.Topology {
	case "mesh2d", "torus2d":
		return c.Topology + ":" + FormatDims(c.dimsOr(2))
	case "mesh3d", "torus3d":
		return c.Topology + ":" + FormatDims(c.dimsOr(3))
	}
	return c.Topology
}

func (c *Config) dimsOr(d int) []int {
	if c.Dims != nil {
		return c.Dims
	}
	return Dims(len(c.Peers), d)
}

type peer struct {
	rank    int
	conn    net.Conn
	r       *bufio.Reader
	sendBuf []byte // header + payload, stamped per iteration
	recvBuf []byte
}

type runner struct {
	cfg       Config
	n         int
	peers     []*peer // sorted by rank
	parent    *peer   // tree only
	children  []*peer // tree only
	failOnce  sync.Once
	sentBytes atomic.Uint64
	recvBytes atomic.Uint64
}

// Run runs one rank: it sets up a connection to every neighbour (dialing
// the higher-ranked ones, with retries until they are up, and accepting the
// lower-ranked ones), then runs cfg.Iters iterations of compute and
// communication. It returns when this rank has finished; cancelling ctx
// stops it with ctx's error.
func Run(ctx context.Context, cfg Config) (Result, error) {
	res := Result{Rank: cfg.Rank, Ranks: len(cfg.Peers), Topology: cfg.Topology, Iters: cfg.Iters, Size: cfg.Size}
	if cfg.Listener != nil {
		defer cfg.Listener.Close()
	}
	nbrs, err := validate(&cfg)
	if err != nil {
		return res, err
	}
	res.Peers = nbrs
	r := &runner{cfg: cfg, n: len(cfg.Peers)}
	if err := r.connect(ctx, nbrs); err != nil {
		return res, err
	}
	defer r.closeAll()
	// Cancelling ctx unblocks every read and write.
	stop := context.AfterFunc(ctx, r.closeAll)
	defer stop()

	var buf []float64
	compute := cfg.Flops > 0 || cfg.Reads > 0 || cfg.Writes > 0
	if compute {
		buf = make([]float64, cfg.Elements)
		for i := range buf {
			buf[i] = float64(i%1024) * 0.001
		}
	}
	var tComp, tComm time.Duration
	start := time.Now()
	for it := range cfg.Iters {
		t0 := time.Now()
		if compute {
			res.Checksum += computePhase(buf, cfg.Flops, cfg.Reads, cfg.Writes)
		}
		t1 := time.Now()
		deadline := t1.Add(cfg.Timeout)
		for _, p := range r.peers {
			p.conn.SetDeadline(deadline)
		}
		if err := r.iteration(uint32(it)); err != nil {
			if ctx.Err() != nil {
				return res, ctx.Err()
			}
			return res, fmt.Errorf("patterns: rank %d, iteration %d: %w", cfg.Rank, it, err)
		}
		t2 := time.Now()
		tComp += t1.Sub(t0)
		tComm += t2.Sub(t1)
		if cfg.OnIter != nil {
			cfg.OnIter(it + 1)
		}
	}
	el := time.Since(start)
	res.Seconds = el.Seconds()
	res.ComputeSeconds = tComp.Seconds()
	res.CommSeconds = tComm.Seconds()
	if res.Seconds > 0 {
		res.ItersPerS = float64(cfg.Iters) / res.Seconds
	}
	res.Bytes, res.BytesRecv = r.sentBytes.Load(), r.recvBytes.Load()
	return res, nil
}

// validate fills defaults and checks cfg; it returns the neighbours.
func validate(cfg *Config) ([]int, error) {
	n := len(cfg.Peers)
	if n == 0 {
		return nil, errors.New("patterns: no peers (want the address of every rank)")
	}
	if cfg.Rank < 0 || cfg.Rank >= n {
		return nil, fmt.Errorf("patterns: rank %d out of range: %d peers make ranks 0..%d", cfg.Rank, n, n-1)
	}
	if cfg.Iters < 1 {
		return nil, fmt.Errorf("patterns: iterations %d: want at least 1", cfg.Iters)
	}
	if cfg.Size < 1 || cfg.Size > MaxSize {
		return nil, fmt.Errorf("patterns: message size %d: want 1..%d bytes", cfg.Size, MaxSize)
	}
	if cfg.Flops < 0 || cfg.Reads < 0 || cfg.Writes < 0 || cfg.Elements < 0 {
		return nil, errors.New("patterns: flops, reads, writes and elements must not be negative")
	}
	if cfg.Elements == 0 {
		cfg.Elements = DefaultElements
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Net == nil {
		cfg.Net = StdNet
	}
	nbrs, err := NeighborsDims(cfg.Topology, n, cfg.Rank, cfg.Dims)
	if err != nil {
		return nil, err
	}
	for _, p := range nbrs {
		if _, _, err := net.SplitHostPort(cfg.Peers[p]); err != nil {
			return nil, fmt.Errorf("patterns: address of rank %d: %v", p, err)
		}
	}
	if len(cfg.topoName()) > maxTopoName {
		return nil, errors.New("patterns: topology name too long")
	}
	return nbrs, nil
}

// hello is what both ends of a connection send first, so that ranks run
// with different settings refuse each other instead of measuring nonsense.
type hello struct {
	rank, ranks, size, iters uint32
	topo                     string
}

func (c *Config) hello() hello {
	return hello{uint32(c.Rank), uint32(len(c.Peers)), uint32(c.Size), uint32(c.Iters), c.topoName()}
}

func (h hello) encode() []byte {
	b := append([]byte(helloMagic), make([]byte, 16)...)
	binary.BigEndian.PutUint32(b[8:], h.rank)
	binary.BigEndian.PutUint32(b[12:], h.ranks)
	binary.BigEndian.PutUint32(b[16:], h.size)
	binary.BigEndian.PutUint32(b[20:], h.iters)
	b = append(b, byte(len(h.topo)))
	return append(b, h.topo...)
}

var errNotPatterns = errors.New("not a patterns peer")

func readHello(r io.Reader) (hello, error) {
	var b [25]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return hello{}, err
	}
	if string(b[:8]) != helloMagic {
		return hello{}, errNotPatterns
	}
	h := hello{
		rank:  binary.BigEndian.Uint32(b[8:]),
		ranks: binary.BigEndian.Uint32(b[12:]),
		size:  binary.BigEndian.Uint32(b[16:]),
		iters: binary.BigEndian.Uint32(b[20:]),
	}
	t := make([]byte, b[24])
	if _, err := io.ReadFull(r, t); err != nil {
		return hello{}, err
	}
	h.topo = string(t)
	return h, nil
}

// check compares a peer's hello with ours.
func (h hello) check(mine hello) error {
	switch {
	case h.ranks != mine.ranks:
		return fmt.Errorf("rank %d runs with %d ranks, this rank with %d", h.rank, h.ranks, mine.ranks)
	case h.topo != mine.topo:
		return fmt.Errorf("rank %d runs topology %s, this rank %s", h.rank, h.topo, mine.topo)
	case h.size != mine.size:
		return fmt.Errorf("rank %d sends %d-byte messages, this rank %d", h.rank, h.size, mine.size)
	case h.iters != mine.iters:
		return fmt.Errorf("rank %d runs %d iterations, this rank %d", h.rank, h.iters, mine.iters)
	}
	return nil
}

// connect establishes one connection per neighbour.
func (r *runner) connect(outer context.Context, nbrs []int) error {
	cfg := &r.cfg
	ctx, cancel := context.WithTimeout(outer, cfg.Timeout)
	defer cancel()
	mine := cfg.hello()

	var lower, higher []int
	for _, p := range nbrs {
		if p < cfg.Rank {
			lower = append(lower, p)
		} else {
			higher = append(higher, p)
		}
	}
	ln := cfg.Listener
	if ln == nil && len(lower) > 0 {
		addr := cfg.Listen
		if addr == "" {
			addr = cfg.Peers[cfg.Rank]
		}
		var err error
		if ln, err = cfg.Net.Listen(addr); err != nil {
			return fmt.Errorf("patterns: rank %d: listen: %w", cfg.Rank, err)
		}
	}

	var mu sync.Mutex
	conns := map[int]net.Conn{}
	var firstErr error
	fail := func(err error) {
		mu.Lock()
		if firstErr == nil {
			firstErr = err
		}
		mu.Unlock()
		cancel()
	}
	var wg sync.WaitGroup
	if ln != nil {
		stop := context.AfterFunc(ctx, func() { ln.Close() })
		defer stop()
		wg.Go(func() {
			defer ln.Close()
			want := len(lower)
			for want > 0 {
				c, err := ln.Accept()
				if err != nil {
					if ctx.Err() == nil {
						fail(fmt.Errorf("accept: %w", err))
					}
					return
				}
				c.SetDeadline(time.Now().Add(min(cfg.Timeout, 30*time.Second)))
				h, err := readHello(c)
				if err != nil {
					c.Close() // a stray connection, not a peer: ignore it
					continue
				}
				p := int(h.rank)
				if err := h.check(mine); err != nil {
					c.Write(mine.encode()) // so that the dialer sees the mismatch too
					c.Close()
					fail(err)
					return
				}
				mu.Lock()
				_, dup := conns[p]
				mu.Unlock()
				if !slices.Contains(lower, p) || dup {
					c.Close()
					fail(fmt.Errorf("rank %d connected, but it is not a lower-ranked neighbour of rank %d (or connected twice)", p, cfg.Rank))
					return
				}
				if _, err := c.Write(mine.encode()); err != nil {
					c.Close()
					fail(fmt.Errorf("hello to rank %d: %w", p, err))
					return
				}
				mu.Lock()
				conns[p] = c
				mu.Unlock()
				want--
			}
		})
	}
	for _, p := range higher {
		wg.Go(func() {
			c, err := r.dial(ctx, p, mine)
			if err != nil {
				fail(err)
				return
			}
			mu.Lock()
			conns[p] = c
			mu.Unlock()
		})
	}
	wg.Wait()
	if firstErr == nil && len(conns) < len(nbrs) {
		firstErr = ctx.Err()
	}
	if firstErr != nil {
		for _, c := range conns {
			c.Close()
		}
		var missing []int
		for _, p := range nbrs {
			if conns[p] == nil {
				missing = append(missing, p)
			}
		}
		if outer.Err() != nil {
			return outer.Err()
		}
		if errors.Is(firstErr, context.DeadlineExceeded) {
			return fmt.Errorf("patterns: rank %d: neighbours %v not up within %v (%v)", cfg.Rank, missing, cfg.Timeout, firstErr)
		}
		return fmt.Errorf("patterns: rank %d: set-up (waiting for %v): %w", cfg.Rank, missing, firstErr)
	}
	for _, p := range nbrs {
		c := conns[p]
		c.SetDeadline(time.Time{})
		pe := &peer{
			rank:    p,
			conn:    c,
			r:       bufio.NewReaderSize(c, 64<<10),
			sendBuf: make([]byte, headerLen+cfg.Size),
			recvBuf: make([]byte, headerLen+cfg.Size),
		}
		fill(pe.sendBuf[headerLen:], cfg.Rank)
		r.peers = append(r.peers, pe)
		if cfg.Topology == "tree" {
			if p == treeParent(cfg.Rank) {
				r.parent = pe
			} else {
				r.children = append(r.children, pe)
			}
		}
	}
	return nil
}

// dial connects to rank p, retrying until it is up or ctx ends.
func (r *runner) dial(ctx context.Context, p int, mine hello) (net.Conn, error) {
	addr := r.cfg.Peers[p]
	backoff := 20 * time.Millisecond
	var lastErr error
	for {
		c, err := r.handshake(ctx, addr, mine)
		if err == nil {
			return c, nil
		}
		var fatal *fatalError
		if errors.As(err, &fatal) {
			return nil, fatal.err
		}
		lastErr = err
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("rank %d at %s: %v: %w", p, addr, lastErr, ctx.Err())
		case <-time.After(backoff):
		}
		// Capped low: ranks start within a moment of each other, and a
		// refused dial costs next to nothing, while a long wait here
		// delays the whole job's first iteration.
		backoff = min(2*backoff, 100*time.Millisecond)
	}
}

type fatalError struct{ err error }

func (f *fatalError) Error() string { return f.err.Error() }

func (r *runner) handshake(ctx context.Context, addr string, mine hello) (net.Conn, error) {
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c, err := r.cfg.Net.Dial(dctx, addr)
	if err != nil {
		return nil, err
	}
	stop := context.AfterFunc(dctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	if _, err := c.Write(mine.encode()); err != nil {
		c.Close()
		return nil, err
	}
	h, err := readHello(c)
	if err != nil {
		c.Close()
		if errors.Is(err, errNotPatterns) {
			return nil, &fatalError{fmt.Errorf("%s does not speak the patterns protocol", addr)}
		}
		return nil, err
	}
	if err := h.check(mine); err != nil {
		c.Close()
		return nil, &fatalError{err}
	}
	if !stop() {
		// dctx ended during the handshake and poisoned the deadline.
		c.Close()
		return nil, dctx.Err()
	}
	c.SetDeadline(time.Time{})
	return c, nil
}

func (r *runner) closeAll() {
	r.failOnce.Do(func() {
		for _, p := range r.peers {
			p.conn.Close()
		}
	})
}

// iteration runs one communication phase.
func (r *runner) iteration(it uint32) error {
	if r.cfg.Topology != "tree" {
		return r.exchange(r.peers, r.peers, it)
	}
	var up []*peer
	if r.parent != nil {
		up = []*peer{r.parent}
	}
	// Reduction: children to parent.
	if err := r.exchange(nil, r.children, it); err != nil {
		return err
	}
	if err := r.exchange(up, nil, it); err != nil {
		return err
	}
	// Broadcast: parent to children.
	if err := r.exchange(nil, up, it); err != nil {
		return err
	}
	return r.exchange(r.children, nil, it)
}

// exchange sends one message to each of sends and receives one from each
// of recvs, all concurrently. On an error it closes every connection, so
// that no goroutine of this rank stays blocked.
func (r *runner) exchange(sends, recvs []*peer, it uint32) error {
	nops := len(sends) + len(recvs)
	if nops == 0 {
		return nil
	}
	if nops == 1 {
		var err error
		if len(sends) == 1 {
			err = r.send(sends[0], it)
		} else {
			err = r.recv(recvs[0], it)
		}
		if err != nil {
			r.closeAll()
		}
		return err
	}
	errs := make(chan error, nops)
	for _, p := range sends {
		go func() { errs <- r.send(p, it) }()
	}
	for _, p := range recvs {
		go func() { errs <- r.recv(p, it) }()
	}
	var first error
	for range nops {
		if err := <-errs; err != nil && first == nil {
			first = err
			r.closeAll()
		}
	}
	return first
}

func (r *runner) send(p *peer, it uint32) error {
	b := p.sendBuf
	binary.BigEndian.PutUint32(b[0:], msgMagic)
	binary.BigEndian.PutUint32(b[4:], it)
	binary.BigEndian.PutUint32(b[8:], uint32(r.cfg.Rank))
	binary.BigEndian.PutUint32(b[12:], uint32(r.cfg.Size))
	stamp(b[headerLen:], r.cfg.Rank, it)
	if _, err := p.conn.Write(b); err != nil {
		return fmt.Errorf("send to rank %d: %w", p.rank, err)
	}
	r.sentBytes.Add(uint64(r.cfg.Size))
	return nil
}

func (r *runner) recv(p *peer, it uint32) error {
	h := p.recvBuf[:headerLen]
	if _, err := io.ReadFull(p.r, h); err != nil {
		if errors.Is(err, io.EOF) {
			err = errors.New("connection closed")
		}
		return fmt.Errorf("receive from rank %d: %w", p.rank, err)
	}
	magic := binary.BigEndian.Uint32(h[0:])
	gotIt := binary.BigEndian.Uint32(h[4:])
	from := binary.BigEndian.Uint32(h[8:])
	size := binary.BigEndian.Uint32(h[12:])
	switch {
	case magic != msgMagic:
		return fmt.Errorf("receive from rank %d: bad message header %x (stream corrupt or out of step)", p.rank, h)
	case from != uint32(p.rank):
		return fmt.Errorf("receive from rank %d: message claims to be from rank %d", p.rank, from)
	case gotIt != it:
		return fmt.Errorf("receive from rank %d: got iteration %d, want %d (message lost, duplicated or out of order)", p.rank, gotIt, it)
	case size != uint32(r.cfg.Size):
		return fmt.Errorf("receive from rank %d: message of %d bytes, want %d", p.rank, size, r.cfg.Size)
	}
	body := p.recvBuf[headerLen:]
	if _, err := io.ReadFull(p.r, body); err != nil {
		return fmt.Errorf("receive from rank %d: %w", p.rank, err)
	}
	if err := checkStamp(body, p.rank, it); err != nil {
		return fmt.Errorf("receive from rank %d, iteration %d: %w", p.rank, it, err)
	}
	r.recvBytes.Add(uint64(r.cfg.Size))
	return nil
}

// fill writes the fixed payload pattern of rank into b.
func fill(b []byte, rank int) {
	for i := range b {
		b[i] = byte(i*7 + rank)
	}
}

// stampValue is what a payload's first and last 8 bytes hold: a hash of
// (rank, iteration), so that every byte depends on both and even a short
// payload's prefix tells iterations apart.
func stampValue(rank int, it uint32) uint64 {
	z := uint64(uint32(rank))<<32 | uint64(it)
	z += 0x9e3779b97f4a7c15 // splitmix64
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

// stamp writes (rank, iteration) into the first and last stampLen bytes of
// b (shorter payloads get a prefix of it).
func stamp(b []byte, rank int, it uint32) {
	var s [stampLen]byte
	binary.BigEndian.PutUint64(s[:], stampValue(rank, it))
	copy(b, s[:])
	if len(b) > stampLen {
		copy(b[max(len(b)-stampLen, stampLen):], s[:])
	}
}

func checkStamp(b []byte, rank int, it uint32) error {
	var s [stampLen]byte
	binary.BigEndian.PutUint64(s[:], stampValue(rank, it))
	k := min(len(b), stampLen)
	if string(b[:k]) != string(s[:k]) {
		return fmt.Errorf("payload corrupt: starts %x, want %x", b[:k], s[:k])
	}
	if len(b) > stampLen {
		tail := b[max(len(b)-stampLen, stampLen):]
		if string(tail) != string(s[:len(tail)]) {
			return fmt.Errorf("payload corrupt: ends %x, want %x", tail, s[:len(tail)])
		}
	}
	return nil
}

// computePhase does flops floating-point operations, reads reads and
// writes writes per element of buf and returns a checksum.
func computePhase(buf []float64, flops, reads, writes int) float64 {
	n := len(buf)
	var sum float64
	for i := range n {
		x := 1.0
		for k := range reads {
			j := i + k
			for j >= n {
				j -= n
			}
			x += buf[j]
		}
		for f := range flops {
			if f&1 == 0 {
				x *= 0.999999
			} else {
				x += 1e-6
			}
		}
		for k := range writes {
			j := i + k
			for j >= n {
				j -= n
			}
			buf[j] = x
		}
		sum += x
	}
	return sum
}

// RunLocal runs n ranks of cfg in this process over loopback TCP (ports
// chosen by the system), and returns every rank's result, index = rank.
// cfg.Rank, Peers, Listen and Listener are ignored.
func RunLocal(ctx context.Context, n int, cfg Config) ([]Result, error) {
	if n < 1 {
		return nil, fmt.Errorf("patterns: %d local ranks: want at least 1", n)
	}
	if cfg.Net == nil {
		cfg.Net = StdNet
	}
	lns := make([]net.Listener, n)
	peers := make([]string, n)
	for i := range n {
		ln, err := cfg.Net.Listen("127.0.0.1:0")
		if err != nil {
			for _, l := range lns[:i] {
				l.Close()
			}
			return nil, err
		}
		lns[i], peers[i] = ln, ln.Addr().String()
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	results := make([]Result, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		c := cfg
		c.Rank, c.Peers, c.Listen, c.Listener = i, peers, "", lns[i]
		wg.Go(func() {
			results[i], errs[i] = Run(ctx, c)
			if errs[i] != nil {
				cancel() // the others would wait for this rank forever
			}
		})
	}
	wg.Wait()
	// Report the root cause, not the cancellations it caused.
	for _, err := range errs {
		if err != nil && !errors.Is(err, context.Canceled) {
			return results, err
		}
	}
	return results, errors.Join(errs...)
}
