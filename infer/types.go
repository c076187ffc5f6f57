package infer

import "net"

// MAC is an Ethernet address (same layout as bridge.MAC, so the appliance
// converts with a plain conversion; infer does not import bridge).
type MAC [6]byte

// String returns the lower-case colon form, e.g. "02:00:00:00:00:01".
func (m MAC) String() string { return net.HardwareAddr(m[:]).String() }

// Pair is a directed VM pair.
type Pair struct{ Src, Dst MAC }

// Entry is one cell of a traffic matrix.
type Entry struct {
	Src    string `json:"src"` // MAC, lower-case colon form
	Dst    string `json:"dst"`
	Bytes  uint64 `json:"bytes"`
	Frames uint64 `json:"frames"`
	// SpanMS, in a host's report, is how long the delta's traffic took:
	// from its first frame since the pair's previous report to the
	// report. The proxy judges rates by it (a pair that began mid-interval
	// is not mistaken for a slow one). Zero elsewhere, and from hosts that
	// do not say.
	SpanMS int64 `json:"span_ms,omitempty"`
}

// Matrix is a sparse traffic matrix over a window (DESIGN.md's `matrix`
// JSON shape).
type Matrix struct {
	WindowS int     `json:"window_s"`
	Entries []Entry `json:"entries"` // sorted by bytes descending, then src, dst
}
