package appliance

import (
	"log/slog"
	"net/http"
	"net/http/pprof"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"vnet/bridge"
	"vnet/infer"
	"vnet/topo"
	"vnet/tunnel"
)

// Prometheus metrics, served at GET /metrics on every daemon's control API.
//
// Nothing is counted for them: a collector reads, at scrape time, the same
// counters and state the JSON API shows (switch port counters, links and
// their measurements, the UDP socket's and STUN server's counters, the
// accountant's and the aggregator's), so the data path pays nothing. Each
// daemon has its own registry (several run in one test process), holding
// its collector and the Go runtime and process collectors.

// maxMatrixMetrics bounds the traffic-matrix series the proxy exports: the
// heaviest pairs only, so a large network does not explode the series.
const maxMatrixMetrics = 20

func newDesc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, labels, nil)
}

var (
	descInfo = newDesc("vnet_info", "The daemon: always 1, labelled with its role, name and version.", "role", "name", "version")

	descPortRxFrames = newDesc("vnet_port_rx_frames_total", "Frames the switch received on a port.", "port", "role")
	descPortRxBytes  = newDesc("vnet_port_rx_bytes_total", "Bytes of frames the switch received on a port.", "port", "role")
	descPortTxFrames = newDesc("vnet_port_tx_frames_total", "Frames the switch sent out of a port.", "port", "role")
	descPortTxBytes  = newDesc("vnet_port_tx_bytes_total", "Bytes of frames the switch sent out of a port.", "port", "role")
	descPortDrops    = newDesc("vnet_port_drops_total",
		"Frames dropped, by reason: ingress reasons (runt, bad-source, no-route) on the port the frame came in by, egress ones (queue-full, write-error, the port's own) on the port it would have left by.",
		"port", "role", "reason")
	descMACs       = newDesc("vnet_mac_entries", "Entries in the switch's MAC table.")
	descMACEvicted = newDesc("vnet_mac_evictions_total", "MAC table entries evicted because the table was full.")
	descMACMoves   = newDesc("vnet_mac_moves_total", "MAC addresses that moved to another port.")

	descLinkUp   = newDesc("vnet_link_up", "1 while the link is up (a relayed fast path counts as up: its traffic takes the star), else 0.", "link", "role")
	descLinkInfo = newDesc("vnet_link_info", "A link's ends, kind (tcp, udp, quic) and how it was made (direct, punched, relayed): always 1.",
		"link", "role", "a", "b", "kind", "via")
	descLinkRTT = newDesc("vnet_link_rtt_seconds",
		"Path round-trip time: the smallest keepalive echo of the last half minute (both ends' views merged on the proxy). Absent until measured.",
		"link", "role")
	descLinkSRTT = newDesc("vnet_link_srtt_seconds", "Smoothed keepalive echo round-trip time, queueing under load included. Absent until measured.",
		"link", "role")
	descLinkTransportRTT = newDesc("vnet_link_transport_rtt_seconds", "The transport's own minimum round-trip time (TCP_INFO, QUIC), when it keeps one.",
		"link", "role")
	descLinkTxBytes  = newDesc("vnet_link_tx_bytes_total", "Frame bytes sent over the link while up (the counter restarts with the link).", "link", "role")
	descLinkRxBytes  = newDesc("vnet_link_rx_bytes_total", "Frame bytes received over the link while up (the counter restarts with the link).", "link", "role")
	descLinkTxFrames = newDesc("vnet_link_tx_frames_total", "Frames the switch sent over the link (its switch port's counter; only where this daemon holds the link).", "link", "role")
	descLinkRxFrames = newDesc("vnet_link_rx_frames_total", "Frames the switch received over the link (its switch port's counter; only where this daemon holds the link).", "link", "role")
	descLinkRate     = newDesc("vnet_link_throughput_bytes_per_second", "Frame bytes per second over the link in the last second, by direction (tx: sent by the reporting daemon).",
		"link", "role", "direction")
	descLinkCapacity = newDesc("vnet_link_capacity_bytes_per_second", "Estimated achievable throughput of the link in frame bytes per second, by direction; absent while unknown.",
		"link", "role", "direction")
	descLinkLoss = newDesc("vnet_link_loss_ratio", "Fraction of packets lost on the link, the worse direction.", "link", "role")

	descUDP  = newDesc("vnet_udp_events_total", "The UDP socket's counters: datagrams in and out, sessions established, punches, and datagrams dropped by reason (stranger, bad-mac, replay, handshake-bad, ...).", "event")
	descSTUN = newDesc("vnet_stun_requests_total", "STUN requests the proxy answered (requests) or refused (malformed, ignored).", "result")

	descAcctFrames = newDesc("vnet_account_frames_total", "Frames from local VM ports seen by traffic accounting, by outcome (counted, filtered, runt, group, nonlocal, table_full).", "outcome")
	descAcctBytes  = newDesc("vnet_account_bytes_total", "Bytes of the frames traffic accounting counted.")
	descAcctPairs  = newDesc("vnet_account_pairs", "VM pairs traffic accounting tracks (tracked) and of those the active ones (active).", "state")

	descHostUp = newDesc("vnet_host_up", "1 while the host's star link to the proxy is up, else 0.", "host")

	descInferEvents  = newDesc("vnet_infer_events_total", "Events in the inference timeline, by kind: topology-change, quiet, adapt (one per adaptation action applied).", "kind")
	descInferReports = newDesc("vnet_infer_reports_total", "Host traffic reports merged into the global matrix.")
	descInferDups    = newDesc("vnet_infer_duplicate_reports_total", "Host traffic reports dropped as repeats.")
	descInferDropped = newDesc("vnet_infer_dropped_events_total", "Events a slow subscriber of the live event stream missed.")
	descInferMatrix  = newDesc("vnet_infer_matrix_bytes",
		"Bytes from VM src to VM dst over the smoothing window (the global matrix; only the heaviest 20 pairs).", "src", "dst")
	descInferTopo = newDesc("vnet_infer_topology_info", "The declared application topology: always 1, labelled with its archetype and hub; absent before the first.",
		"archetype", "hub")
	descInferConfidence = newDesc("vnet_infer_topology_confidence", "Confidence (0..1) of the declared application topology.")

	descAdaptActions = newDesc("vnet_adapt_actions_total", "Changes the adaptation controller applied, by operation (add-link, del-link, add-rule, del-rule).", "op")

	allDescs = []*prometheus.Desc{descInfo,
		descPortRxFrames, descPortRxBytes, descPortTxFrames, descPortTxBytes, descPortDrops, descMACs, descMACEvicted, descMACMoves,
		descLinkUp, descLinkInfo, descLinkRTT, descLinkSRTT, descLinkTransportRTT, descLinkTxBytes, descLinkRxBytes,
		descLinkTxFrames, descLinkRxFrames, descLinkRate, descLinkCapacity, descLinkLoss,
		descUDP, descSTUN, descAcctFrames, descAcctBytes, descAcctPairs,
		descHostUp, descInferEvents, descInferReports, descInferDups, descInferDropped, descInferMatrix, descInferTopo,
		descInferConfidence, descAdaptActions}
)

// metricSink sends const metrics to a Collect channel.
type metricSink chan<- prometheus.Metric

func (s metricSink) counter(d *prometheus.Desc, v uint64, labels ...string) {
	s <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
}

func (s metricSink) gauge(d *prometheus.Desc, v float64, labels ...string) {
	s <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
}

// daemonCollector is one daemon's prometheus.Collector: exactly one of
// proxy and host is set.
type daemonCollector struct {
	proxy *Proxy
	host  *Host
}

func (c daemonCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range allDescs {
		ch <- d
	}
}

func (c daemonCollector) Collect(ch chan<- prometheus.Metric) {
	s := metricSink(ch)
	if p := c.proxy; p != nil {
		s.gauge(descInfo, 1, "proxy", topo.ProxyHost, Version)
		ports := collectSwitch(s, p.sw)
		collectLinks(s, p.links(), ports)
		for _, h := range p.hosts() {
			s.gauge(descHostUp, boolGauge(h.State == "up"), h.Name)
		}
		for _, ln := range p.lns {
			if m, ok := unwrapAcceptor(ln).(*tunnel.UDPMux); ok {
				collectMap(s, descUDP, m.Stats())
			}
		}
		collectMap(s, descSTUN, p.stun.Stats())
		collectAccount(s, p.acct)
		collectAggregator(s, p.agg)
		for op, n := range p.adaptActions.snapshot() {
			s.counter(descAdaptActions, n, op)
		}
		return
	}
	h := c.host
	s.gauge(descInfo, 1, "host", h.cfg.Name, Version)
	ports := collectSwitch(s, h.sw)
	collectLinks(s, h.hostLinks(), ports)
	if h.mux != nil {
		collectMap(s, descUDP, h.mux.Stats())
	}
	if !h.cfg.NoInfer {
		collectAccount(s, h.acct)
	}
}

func boolGauge(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// collectSwitch exports the switch's ports and MAC table, and returns the
// port counters by name (links are ports of the same name).
func collectSwitch(s metricSink, sw *bridge.Switch) map[string]bridge.PortStats {
	byName := map[string]bridge.PortStats{}
	for _, st := range sw.Stats() {
		byName[st.Name] = st
		role := st.Role.String()
		s.counter(descPortRxFrames, st.RxFrames, st.Name, role)
		s.counter(descPortRxBytes, st.RxBytes, st.Name, role)
		s.counter(descPortTxFrames, st.TxFrames, st.Name, role)
		s.counter(descPortTxBytes, st.TxBytes, st.Name, role)
		for reason, n := range st.Drops {
			s.counter(descPortDrops, n, st.Name, role, reason)
		}
	}
	s.gauge(descMACs, float64(len(sw.MACs())))
	evicted, moved := sw.MACStats()
	s.counter(descMACEvicted, evicted)
	s.counter(descMACMoves, moved)
	return byName
}

// collectLinks exports links as `vnet ctl links` shows them; ports are the
// daemon's switch ports, for the frame counts of the links it holds.
func collectLinks(s metricSink, links []LinkInfo, ports map[string]bridge.PortStats) {
	const us, mbps = 1e6, 1e6 / 8 // µs in a second; bytes per second in a Mbit/s
	for _, l := range links {
		s.gauge(descLinkInfo, 1, l.Name, l.Role, l.A, l.B, l.Kind, l.Via)
		up := l.State == "up"
		s.gauge(descLinkUp, boolGauge(up), l.Name, l.Role)
		if !up {
			continue
		}
		if l.RTTus > 0 {
			s.gauge(descLinkRTT, float64(l.RTTus)/us, l.Name, l.Role)
		}
		if l.SRTTus > 0 {
			s.gauge(descLinkSRTT, float64(l.SRTTus)/us, l.Name, l.Role)
		}
		if l.TransportRTTus > 0 {
			s.gauge(descLinkTransportRTT, float64(l.TransportRTTus)/us, l.Name, l.Role)
		}
		if l.Via == "relayed" { // no link of its own: nothing measured
			continue
		}
		s.counter(descLinkTxBytes, l.TxBytes, l.Name, l.Role)
		s.counter(descLinkRxBytes, l.RxBytes, l.Name, l.Role)
		if p, ok := ports[l.Name]; ok {
			s.counter(descLinkTxFrames, p.TxFrames, l.Name, l.Role)
			s.counter(descLinkRxFrames, p.RxFrames, l.Name, l.Role)
		}
		s.gauge(descLinkRate, l.TxMbps*mbps, l.Name, l.Role, "tx")
		s.gauge(descLinkRate, l.RxMbps*mbps, l.Name, l.Role, "rx")
		if l.TxCapacityMbps > 0 {
			s.gauge(descLinkCapacity, l.TxCapacityMbps*mbps, l.Name, l.Role, "tx")
		}
		if l.RxCapacityMbps > 0 {
			s.gauge(descLinkCapacity, l.RxCapacityMbps*mbps, l.Name, l.Role, "rx")
		}
		s.gauge(descLinkLoss, l.Loss, l.Name, l.Role)
	}
}

// collectMap exports a map of counters as one counter labelled by key.
func collectMap(s metricSink, d *prometheus.Desc, m map[string]uint64) {
	for k, v := range m {
		s.counter(d, v, k)
	}
}

func collectAccount(s metricSink, a *infer.Accountant) {
	st := a.Stats()
	for _, k := range []string{"counted", "filtered", "runt", "group", "nonlocal", "table_full"} {
		s.counter(descAcctFrames, st["frames_"+k], k)
	}
	s.counter(descAcctBytes, st["bytes_counted"])
	s.gauge(descAcctPairs, float64(st["pairs"]), "tracked")
	s.gauge(descAcctPairs, float64(st["pairs_active"]), "active")
}

func collectAggregator(s metricSink, g *infer.Aggregator) {
	st := g.Stats()
	if st.Events == nil {
		st.Events = map[string]uint64{}
	}
	for _, kind := range []string{infer.EventTopologyChange, infer.EventQuiet, "adapt"} {
		if _, ok := st.Events[kind]; !ok {
			st.Events[kind] = 0 // the usual kinds from the start, so rate() sees the first
		}
	}
	collectMap(s, descInferEvents, st.Events)
	s.counter(descInferReports, st.Reports)
	s.counter(descInferDups, st.Duplicates)
	s.counter(descInferDropped, st.DroppedEvents)
	m := g.Smoothed() // bytes descending
	for _, e := range m.Entries[:min(len(m.Entries), maxMatrixMetrics)] {
		s.gauge(descInferMatrix, float64(e.Bytes), e.Src, e.Dst)
	}
	if t := g.Topology(); !t.ChangedAt.IsZero() {
		s.gauge(descInferTopo, 1, t.Archetype, t.Hub)
		s.gauge(descInferConfidence, t.Confidence)
	}
}

// opCounts counts adaptation actions by operation.
type opCounts struct {
	mu sync.Mutex
	n  map[string]uint64
}

func (c *opCounts) add(op string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = map[string]uint64{}
	}
	c.n[op]++
}

func (c *opCounts) snapshot() map[string]uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]uint64, len(c.n))
	for k, v := range c.n {
		out[k] = v
	}
	return out
}

// metricsHandler serves /metrics from a registry of its own holding c and
// the Go runtime and process collectors.
func metricsHandler(c prometheus.Collector, log *slog.Logger) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(c, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog:      slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		ErrorHandling: promhttp.ContinueOnError,
		Registry:      reg, // promhttp_metric_handler_errors_total
	})
}

// handleProfiles serves Go's profiles under /debug/pprof/ (behind the
// API's token, like everything on it): `go tool pprof
// http://127.0.0.1:7777/debug/pprof/profile?seconds=10` shows where a
// daemon's CPU goes under load.
func handleProfiles(mux *http.ServeMux) {
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
}
