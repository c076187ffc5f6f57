package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"vnet/patterns"
)

const patternsHelp = `
Run the synthetic bulk-synchronous-parallel workload that vnet's traffic
inference is measured with. One rank runs per VM. Every iteration is a compute
phase (--flops, --reads, --writes per element of a buffer of --elements
float64s) followed by a communication phase in which each rank exchanges one
--size message with each neighbour of the topology, with a deadlock-free
schedule. At the end it prints iterations per second and bytes moved (--json:
an object with at least "iters_per_s" and "bytes").

Every rank gets the same --peers list (or --hostfile, one host:port per line,
line i = rank i; blank lines and # comments are skipped) and its own --rank.
Rank i listens on its own address (or --listen) and dials its higher-ranked
neighbours, retrying until they are up, so the ranks may start in any order.
All ranks must use the same --topology, --dims, --size and --iters; they
check this when they connect.

Topologies (n ranks, rank r):
  ring        r-1 and r+1 modulo n
  bus         a line: r-1 and r+1 without wrap-around
  mesh2d      a 2-D grid, no wrap-around (--dims, default: most square)
  mesh3d      a 3-D grid, no wrap-around (--dims, default: most cubic)
  torus2d     a 2-D grid with wrap-around
  torus3d     a 3-D grid with wrap-around
  hypercube   r XOR 2^k for every bit k (n a power of two)
  tree        binary reduction tree rooted at rank 0: each iteration the
              children send to their parent up the tree, then the parent
              sends back down (a reduce and a broadcast)
  all2all     every rank with every other
  neighbor    1-D stencil of radius 2: r±1 and r±2 modulo n

Examples:
  # four VMs at 10.0.0.1..4; in VM i (i = 0..3):
  vnet patterns --rank i --peers 10.0.0.1:7000,10.0.0.2:7000,10.0.0.3:7000,10.0.0.4:7000 \
      --topology ring --iters 1000 --size 64KiB
  # the same with a hostfile, a 3x2x3 torus over 18 VMs, and some compute:
  vnet patterns --rank 5 --hostfile hosts.txt --topology torus3d --dims 3x2x3 --flops 100
  # all ranks in this process on loopback (a quick try, or a smoke test):
  vnet patterns --local 4 --topology ring --iters 20 --size 64KiB`

type patternsOpts struct {
	cfg   patterns.Config
	local int
	json  bool
}

func parsePatterns(args []string) (*patternsOpts, error) {
	fs := newFlags("patterns", "--rank I --peers ADDR,ADDR,... | --hostfile FILE | --local N  [flags]", patternsHelp)
	rank := fs.Int("rank", -1, "this process's rank: an index into --peers")
	peers := fs.StringSlice("peers", nil, "host:port of every rank, in rank order, comma-separated")
	hostfile := fs.String("hostfile", "", "file with the host:port of rank i on line i (instead of --peers)")
	listen := fs.String("listen", "", "address to listen on (default: this rank's --peers entry)")
	local := fs.Int("local", 0, "run N ranks in this process on 127.0.0.1 (ports chosen automatically)")
	topo := fs.String("topology", "ring", "communication pattern: "+strings.Join(patterns.Topologies, ", "))
	dimsStr := fs.String("dims", "", "grid shape for meshes and tori, e.g. 4x4 or 3x2x3 (default: most cubic)")
	iters := fs.Int("iters", 100, "iterations")
	sizeStr := fs.String("size", "64KiB", "bytes per message (e.g. 512, 64KiB, 1MiB)")
	flops := fs.Int("flops", 0, "floating-point operations per element per iteration")
	reads := fs.Int("reads", 0, "reads per element per iteration")
	writes := fs.Int("writes", 0, "writes per element per iteration")
	elements := fs.Int("elements", patterns.DefaultElements, "float64 elements in the compute buffer")
	asJSON := fs.Bool("json", false, "print the result as JSON (with --local: an array, one object per rank)")
	timeout := fs.Duration("timeout", patterns.DefaultTimeout, "give up when the neighbours are not all up, or one iteration takes, longer than this")
	if err := parse(fs, args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, usageErr("unexpected argument %q", fs.Arg(0))
	}
	o := &patternsOpts{local: *local, json: *asJSON}
	c := &o.cfg
	if !contains(patterns.Topologies, *topo) {
		return nil, usageErr("--topology %q: want one of %s", *topo, strings.Join(patterns.Topologies, ", "))
	}
	c.Topology = *topo
	dims, err := patterns.ParseDims(*dimsStr)
	if err != nil {
		return nil, usageErr("--dims: %v", err)
	}
	c.Dims = dims
	if c.Size, err = parseSize(*sizeStr); err != nil {
		return nil, usageErr("--size: %v", err)
	}
	if *iters < 1 {
		return nil, usageErr("--iters must be at least 1")
	}
	if *flops < 0 || *reads < 0 || *writes < 0 || *elements < 1 {
		return nil, usageErr("--flops, --reads and --writes must be >= 0, --elements >= 1")
	}
	if *timeout <= 0 {
		return nil, usageErr("--timeout must be positive")
	}
	c.Iters, c.Flops, c.Reads, c.Writes, c.Elements, c.Timeout = *iters, *flops, *reads, *writes, *elements, *timeout
	if o.local != 0 {
		if o.local < 1 || o.local > 1024 {
			return nil, usageErr("--local must be 1..1024")
		}
		if len(*peers) > 0 || *hostfile != "" || fs.Changed("rank") || *listen != "" {
			return nil, usageErr("--local runs every rank itself: drop --rank, --peers, --hostfile and --listen")
		}
		// Check the topology fits before starting anything.
		if _, err := patterns.NeighborsDims(c.Topology, o.local, 0, c.Dims); err != nil {
			return nil, usageErr("%v", strings.TrimPrefix(err.Error(), "patterns: "))
		}
		return o, nil
	}
	switch {
	case len(*peers) > 0 && *hostfile != "":
		return nil, usageErr("give --peers or --hostfile, not both")
	case *hostfile != "":
		f, err := os.Open(*hostfile)
		if err != nil {
			return nil, usageErr("--hostfile: %v", err)
		}
		c.Peers, err = readHostfile(f)
		f.Close()
		if err != nil {
			return nil, usageErr("--hostfile %s: %v", *hostfile, err)
		}
	case len(*peers) > 0:
		for _, p := range *peers {
			c.Peers = append(c.Peers, strings.TrimSpace(p))
		}
	default:
		return nil, usageErr("need --peers, --hostfile or --local")
	}
	for i, p := range c.Peers {
		if err := checkHostPort(p); err != nil {
			return nil, usageErr("address of rank %d: %v", i, err)
		}
	}
	if !fs.Changed("rank") {
		return nil, usageErr("need --rank (0..%d)", len(c.Peers)-1)
	}
	if *rank < 0 || *rank >= len(c.Peers) {
		return nil, usageErr("--rank %d: %d peers make ranks 0..%d", *rank, len(c.Peers), len(c.Peers)-1)
	}
	c.Rank, c.Listen = *rank, *listen
	if _, err := patterns.NeighborsDims(c.Topology, len(c.Peers), c.Rank, c.Dims); err != nil {
		return nil, usageErr("%v", strings.TrimPrefix(err.Error(), "patterns: "))
	}
	return o, nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func checkHostPort(s string) error {
	i := strings.LastIndexByte(s, ':')
	if s == "" || i < 0 || i == len(s)-1 {
		return fmt.Errorf("%q is not host:port", s)
	}
	return nil
}

// readHostfile returns the addresses in r, one per line, skipping blank
// lines and # comments.
func readHostfile(r io.Reader) ([]string, error) {
	var out []string
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		if line = strings.TrimSpace(line); line != "" {
			out = append(out, line)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no addresses")
	}
	return out, nil
}

func runPatterns(ctx context.Context, args []string) error {
	o, err := parsePatterns(args)
	if err != nil {
		return err
	}
	if o.local > 0 {
		start := time.Now()
		res, err := patterns.RunLocal(ctx, o.local, o.cfg)
		if err != nil {
			return unprefixed{err}
		}
		if o.json {
			return writeJSON(os.Stdout, res)
		}
		printLocal(os.Stdout, res, o.cfg, time.Since(start))
		return nil
	}
	res, err := patterns.Run(ctx, o.cfg)
	if err != nil {
		return unprefixed{err}
	}
	if o.json {
		return writeJSON(os.Stdout, res)
	}
	printResult(os.Stdout, res, o.cfg)
	return nil
}

// unprefixed drops the package's "patterns: " prefix, as main already says
// "vnet patterns: ".
type unprefixed struct{ err error }

func (u unprefixed) Error() string { return strings.TrimPrefix(u.err.Error(), "patterns: ") }
func (u unprefixed) Unwrap() error { return u.err }

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func topoLabel(cfg patterns.Config, n int) string {
	switch cfg.Topology {
	case "mesh2d", "torus2d":
		d := cfg.Dims
		if d == nil {
			d = patterns.Dims(n, 2)
		}
		return cfg.Topology + " " + patterns.FormatDims(d)
	case "mesh3d", "torus3d":
		d := cfg.Dims
		if d == nil {
			d = patterns.Dims(n, 3)
		}
		return cfg.Topology + " " + patterns.FormatDims(d)
	}
	return cfg.Topology
}

func mb(b uint64) float64 { return float64(b) / 1e6 }

func printResult(w io.Writer, r patterns.Result, cfg patterns.Config) {
	fmt.Fprintf(w, "patterns: rank %d of %d, %s, neighbours %v\n", r.Rank, r.Ranks, topoLabel(cfg, r.Ranks), r.Peers)
	fmt.Fprintf(w, "  %d iterations of %d-byte messages in %.3f s: %.1f iterations/s\n", r.Iters, r.Size, r.Seconds, r.ItersPerS)
	rate := 0.0
	if r.Seconds > 0 {
		rate = mb(r.Bytes+r.BytesRecv) / r.Seconds
	}
	fmt.Fprintf(w, "  sent %.1f MB, received %.1f MB (%.1f MB/s); compute %.3f s, communication %.3f s\n",
		mb(r.Bytes), mb(r.BytesRecv), rate, r.ComputeSeconds, r.CommSeconds)
}

func printLocal(w io.Writer, res []patterns.Result, cfg patterns.Config, wall time.Duration) {
	fmt.Fprintf(w, "patterns: %d ranks in this process on 127.0.0.1, %s, %d iterations of %d-byte messages\n\n",
		len(res), topoLabel(cfg, len(res)), cfg.Iters, cfg.Size)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "rank\titers/s\tseconds\tsent MB\trecv MB\tcompute s\tcomm s\tneighbours\t")
	var total uint64
	for _, r := range res {
		fmt.Fprintf(tw, "%d\t%.1f\t%.3f\t%.1f\t%.1f\t%.3f\t%.3f\t%v\t\n",
			r.Rank, r.ItersPerS, r.Seconds, mb(r.Bytes), mb(r.BytesRecv), r.ComputeSeconds, r.CommSeconds, r.Peers)
		total += r.Bytes
	}
	tw.Flush()
	fmt.Fprintf(w, "\ntotal %.1f MB sent by all ranks in %.3f s wall time\n", mb(total), wall.Seconds())
}
