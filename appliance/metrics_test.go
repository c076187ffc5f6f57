package appliance

import (
	"fmt"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"vnet/infer"
	"vnet/tunnel"
)

// scrape GETs http://addr/metrics and parses the text exposition.
func scrape(t *testing.T, addr string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s", resp.Status)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Fatalf("GET /metrics: Content-Type %q", ct)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	return fams
}

// metricValue finds the series of family name whose labels include all of
// want ("k=v" each) and returns its value.
func metricValue(fams map[string]*dto.MetricFamily, name string, want ...string) (float64, bool) {
	f := fams[name]
	if f == nil {
		return 0, false
	}
next:
	for _, m := range f.GetMetric() {
		labels := map[string]string{}
		for _, lp := range m.GetLabel() {
			labels[lp.GetName()] = lp.GetValue()
		}
		for _, kv := range want {
			k, v, _ := strings.Cut(kv, "=")
			if labels[k] != v {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Untyped != nil:
			return m.Untyped.GetValue(), true
		}
	}
	return 0, false
}

// TestMetrics starts a proxy and two hosts with their control APIs, moves
// traffic between VMs on different hosts (over the star) and scrapes
// /metrics on the proxy and on a host.
func TestMetrics(t *testing.T) {
	old := ReportInterval
	ReportInterval = 100 * time.Millisecond
	defer func() { ReportInterval = old }()
	acct := infer.AccountConfig{TimeBound: 200 * time.Millisecond, TMax: 200 * time.Millisecond, TWait: time.Second}
	key, _ := tunnel.GenerateKey()
	n := &testNet{t: t, key: key, kind: "tcp", hosts: map[string]*Host{}, hostAPI: true}
	p, err := NewProxy(ProxyConfig{Listen: []tunnel.Endpoint{{Kind: "tcp", Addr: "127.0.0.1:0"}, {Kind: "udp", Addr: "127.0.0.1:0"}},
		Key: key, API: "127.0.0.1:0", Infer: acct, Global: infer.GlobalConfig{Window: 2 * time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	n.proxy, n.proxyEP = p, tunnel.Endpoint{Kind: "tcp", Addr: p.Addrs()[0]}
	n.addHosts(2, 1, acct)
	h1 := n.hosts["h1"]
	if h1.APIAddr() == "" || p.APIAddr() == "" {
		t.Fatal("no control API")
	}
	a, b := n.vms[0], n.vms[1]
	for range 3 {
		if err := exchange(a, b, 256<<10); err != nil {
			t.Fatal(err)
		}
	}
	src, dst := a.MAC().String(), b.MAC().String()

	// The host: its star link up and measured, frames counted on it and on
	// the VM's port, accounting, the UDP socket, the runtime collectors.
	var hf map[string]*dto.MetricFamily
	n.waitFor("the host's star link RTT in /metrics", 10*time.Second, func() bool {
		hf = scrape(t, h1.APIAddr())
		v, ok := metricValue(hf, "vnet_link_rtt_seconds", "link=star-h1", "role=star")
		return ok && v > 0
	})
	check := func(who string, fams map[string]*dto.MetricFamily, name string, cond func(float64) bool, labels ...string) {
		t.Helper()
		v, ok := metricValue(fams, name, labels...)
		if !ok {
			t.Errorf("%s: no %s%v", who, name, labels)
		} else if !cond(v) {
			t.Errorf("%s: %s%v = %v", who, name, labels, v)
		}
	}
	one := func(v float64) bool { return v == 1 }
	pos := func(v float64) bool { return v > 0 }
	exists := func(float64) bool { return true }
	check("h1", hf, "vnet_info", one, "role=host", "name=h1", "version="+Version)
	check("h1", hf, "vnet_link_up", one, "link=star-h1", "role=star")
	check("h1", hf, "vnet_link_info", one, "link=star-h1", "role=star", "a=proxy", "b=h1", "kind=tcp", "via=direct")
	check("h1", hf, "vnet_link_tx_frames_total", pos, "link=star-h1", "role=star")
	check("h1", hf, "vnet_link_rx_frames_total", pos, "link=star-h1", "role=star")
	check("h1", hf, "vnet_link_tx_bytes_total", func(v float64) bool { return v >= 3*256<<10 }, "link=star-h1")
	check("h1", hf, "vnet_link_loss_ratio", exists, "link=star-h1")
	check("h1", hf, "vnet_port_rx_frames_total", pos, "port=vm1", "role=local")
	check("h1", hf, "vnet_port_tx_bytes_total", pos, "port=star-h1", "role=star")
	check("h1", hf, "vnet_account_frames_total", pos, "outcome=counted")
	check("h1", hf, "vnet_udp_events_total", exists, "event=bad-mac")
	check("h1", hf, "vnet_mac_entries", pos)
	check("h1", hf, "go_goroutines", pos)
	if runtime.GOOS == "linux" {
		check("h1", hf, "process_start_time_seconds", pos)
	}
	if _, ok := hf["vnet_infer_matrix_bytes"]; ok {
		t.Error("h1: a host exports the global matrix")
	}

	// The proxy: hosts and star links up, the global matrix (after the
	// hosts' reports arrive), inference events, STUN.
	var pf map[string]*dto.MetricFamily
	// A host reports a pair once its traffic lasted TMax: a fast machine
	// moves the exchanges above in less, so traffic goes on until it shows.
	n.waitFor("the pair in the proxy's /metrics matrix", 10*time.Second, func() bool {
		pf = scrape(t, p.APIAddr())
		v, ok := metricValue(pf, "vnet_infer_matrix_bytes", "src="+src, "dst="+dst)
		if !ok || v == 0 {
			exchange(a, b, 64<<10)
		}
		return ok && v > 0
	})
	check("proxy", pf, "vnet_info", one, "role=proxy", "name=proxy")
	for _, h := range []string{"h1", "h2"} {
		check("proxy", pf, "vnet_host_up", one, "host="+h)
		check("proxy", pf, "vnet_link_up", one, "link=star-"+h, "role=star")
		check("proxy", pf, "vnet_link_rx_frames_total", pos, "link=star-"+h, "role=star")
		check("proxy", pf, "vnet_link_rtt_seconds", pos, "link=star-"+h)
	}
	check("proxy", pf, "vnet_port_tx_frames_total", pos, "port=star-h2", "role=star")
	check("proxy", pf, "vnet_infer_events_total", exists, "kind=topology-change")
	check("proxy", pf, "vnet_infer_events_total", exists, "kind=adapt")
	check("proxy", pf, "vnet_infer_reports_total", pos)
	check("proxy", pf, "vnet_stun_requests_total", exists, "result=requests")
	check("proxy", pf, "vnet_udp_events_total", exists, "event=handshakes")
	if m := pf["vnet_infer_matrix_bytes"]; len(m.GetMetric()) > maxMatrixMetrics {
		t.Errorf("proxy: %d matrix series", len(m.GetMetric()))
	}

	// A fast link: up on both, its frames counted on the hosts, its
	// counters (as h1, its A end, reports them) on the proxy.
	if _, err := p.addLink("h1", "h2", ""); err != nil {
		t.Fatal(err)
	}
	n.waitFor("fast link up in the proxy's /metrics", 10*time.Second, func() bool {
		v, ok := metricValue(scrape(t, p.APIAddr()), "vnet_link_up", "link=h1-h2", "role=fast")
		return ok && v == 1
	})
	n.waitFor("route over the fast path", 5*time.Second, func() bool {
		return n.route(a, b) == "h1:link:h1-h2 h2:port:vm1 delivered=true"
	})
	if err := exchange(a, b, 256<<10); err != nil {
		t.Fatal(err)
	}
	n.waitFor("the fast link's bytes in the proxy's /metrics", 10*time.Second, func() bool {
		v, ok := metricValue(scrape(t, p.APIAddr()), "vnet_link_tx_bytes_total", "link=h1-h2", "role=fast")
		return ok && v >= 256<<10
	})
	hf = scrape(t, h1.APIAddr())
	check("h1", hf, "vnet_link_up", one, "link=h1-h2", "role=fast")
	check("h1", hf, "vnet_link_info", one, "link=h1-h2", "role=fast", "a=h1", "b=h2")
	check("h1", hf, "vnet_link_tx_frames_total", pos, "link=h1-h2", "role=fast")
	check("h1", hf, "vnet_port_rx_frames_total", pos, "port=h1-h2", "role=fast")

	// A link that goes down shows as down, not as gone.
	h2 := n.hosts["h2"]
	h2.Close()
	delete(n.hosts, "h2")
	n.waitFor("star-h2 down in the proxy's /metrics", 10*time.Second, func() bool {
		pf = scrape(t, p.APIAddr())
		v, ok := metricValue(pf, "vnet_link_up", "link=star-h2")
		return ok && v == 0
	})
	check("proxy", pf, "vnet_host_up", func(v float64) bool { return v == 0 }, "host=h2")
	if _, ok := metricValue(pf, "vnet_link_rtt_seconds", "link=star-h2"); ok {
		t.Error("proxy: an RTT for a link that is down")
	}

	// Metric names and help follow the Prometheus conventions.
	for _, c := range []daemonCollector{{proxy: p}, {host: h1}} {
		problems, err := testutil.CollectAndLint(c)
		if err != nil {
			t.Fatal(err)
		}
		for _, pr := range problems {
			t.Errorf("lint: %s: %s", pr.Metric, pr.Text)
		}
	}
}

// TestMetricsOpCounts checks the adaptation action counter.
func TestMetricsOpCounts(t *testing.T) {
	var c opCounts
	c.add("add-link")
	c.add("add-link")
	c.add("del-rule")
	if got := fmt.Sprint(c.snapshot()); got != "map[add-link:2 del-rule:1]" {
		t.Fatalf("snapshot %s", got)
	}
}
