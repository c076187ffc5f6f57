package appliance

import (
	"bufio"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/websocket"

	"vnet/adapt"
	"vnet/infer"
	"vnet/tunnel"
)

// TestDashboardServed checks the page, its assets and one snapshot without
// a browser.
func TestDashboardServed(t *testing.T) {
	n := newTestNetInfer(t, 2, 1, infer.AccountConfig{}, infer.GlobalConfig{}, func(pc *ProxyConfig) {
		pc.API = "127.0.0.1:0"
	})
	base := "http://" + n.proxy.APIAddr()
	for path, want := range map[string]string{"/": "<svg id=\"topo\"", "/app.js": "EventSource", "/style.css": "--fast"} {
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(b), want) {
			t.Errorf("GET %s: %d, %d bytes, want %q in it", path, resp.StatusCode, len(b), want)
		}
	}
	resp, err := http.Get(base + "/api/v1/snapshot")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var s Snapshot
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		t.Fatal(err)
	}
	if s.Role != "proxy" || len(s.Hosts) != 2 || len(s.Links) != 2 {
		t.Errorf("snapshot: role %q, %d hosts, %d links; want proxy, 2, 2", s.Role, len(s.Hosts), len(s.Links))
	}
}

// TestDashboardBrowser loads the dashboard from the proxy's API in a real
// headless Chromium and drives it through the DevTools protocol: the page
// must show the hosts and the inferred ring, then follow the workload's
// switch to all-to-all without a reload. A screenshot is kept in the
// test's artifact directory (go test -artifacts).
func TestDashboardBrowser(t *testing.T) {
	chrome, err := exec.LookPath("chromium")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs chromium (apt-get install chromium)")
		}
		t.Skip("needs chromium (apt-get install chromium)")
	}
	old := ReportInterval
	ReportInterval = 100 * time.Millisecond
	defer func() { ReportInterval = old }()
	acct := infer.AccountConfig{TimeBound: 200 * time.Millisecond, TMax: 200 * time.Millisecond, TWait: time.Second}
	n := newTestNetInfer(t, 3, 2, acct, infer.GlobalConfig{Window: 2 * time.Second}, func(pc *ProxyConfig) {
		pc.API = "127.0.0.1:0"
		pc.Adapt = AdaptConfig{Enabled: true, Interval: 500 * time.Millisecond, Window: 3 * time.Second,
			Damp: adapt.DampConfig{MinDwell: time.Minute, Hysteresis: 0.01, MaxChangesPerMinute: 100}}
	})
	stop := n.runPattern("ring", 7600)
	defer func() { stop() }()

	page := startBrowser(t, chrome, "http://"+n.proxy.APIAddr()+"/")
	type view struct {
		Updates    int    `json:"updates"`
		Archetypes string `json:"archetypes"`
		Hosts      int    `json:"hosts"`
		VMs        int    `json:"vms"`
		Edges      int    `json:"edges"`
		Links      int    `json:"links"`
		Cells      int    `json:"cells"`
		Events     int    `json:"events"`
	}
	look := func() (v view) {
		raw, err := page.eval(`!document.body || !document.body.dataset.updates ? "{}" : JSON.stringify({updates: +document.body.dataset.updates,
			archetypes: document.body.dataset.archetypes || "",
			hosts: document.querySelectorAll("#net [data-host]").length,
			vms: document.querySelectorAll("#net [data-vm]").length,
			edges: document.querySelectorAll("#topo .edge").length,
			links: document.querySelectorAll("#net .link[data-link]").length,
			cells: document.querySelectorAll("#matrix td[title]").length,
			events: document.querySelectorAll("#events li").length})`)
		if err != nil {
			t.Fatal(err)
		}
		var s string
		json.Unmarshal(raw, &s)
		if err := json.Unmarshal([]byte(s), &v); err != nil {
			t.Fatalf("page state %s: %v", raw, err)
		}
		return v
	}
	var v view
	n.waitFor("the page to show three hosts, six VMs and the ring", 60*time.Second, func() bool {
		v = look()
		return v.Hosts == 3 && v.VMs == 6 && strings.HasSuffix(v.Archetypes, "ring") && v.Edges == 6 && v.Links >= 3
	})
	t.Logf("ring: %+v", v)
	before := v.Updates
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	stop = n.runPattern("all2all", 7700)
	// The page's history may pass through other archetypes (a ring half
	// seen is a bus; a ring fading into all-to-all is neither); it must
	// hold the ring and end at all2all.
	defer func() {
		if t.Failed() {
			tp := n.proxy.agg.Topology()
			t.Logf("last page view %+v; the proxy's topology: %q, %d nodes, %d edges", v, tp.Archetype, len(tp.Nodes), len(tp.Edges))
		}
	}()
	n.waitFor("the page to follow the switch to all2all", 60*time.Second, func() bool {
		v = look()
		seen := strings.Split(v.Archetypes, ",")
		return len(seen) >= 2 && slices.Contains(seen[:len(seen)-1], "ring") && seen[len(seen)-1] == "all2all" &&
			v.Edges == 15 && v.Cells == 36
	})
	t.Logf("all2all: %+v", v)
	if v.Updates <= before || v.Events == 0 {
		t.Errorf("the page did not update live: %+v (updates before the switch: %d)", v, before)
	}
	png, err := page.screenshot()
	if err != nil {
		t.Fatal(err)
	}
	if len(png) < 10000 || string(png[1:4]) != "PNG" {
		t.Fatalf("screenshot: %d bytes, not a PNG", len(png))
	}
	path := filepath.Join(t.ArtifactDir(), "dashboard.png")
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s (%d bytes)", path, len(png))
}

// cdpPage is one browser tab driven over the DevTools protocol.
type cdpPage struct {
	ws *websocket.Conn
	id int
}

// startBrowser starts headless Chromium on url and connects to its tab.
func startBrowser(t *testing.T, chrome, url string) *cdpPage {
	t.Helper()
	cmd := exec.Command(chrome, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
		"--remote-debugging-port=0", "--remote-allow-origins=*", "--user-data-dir="+t.TempDir(),
		"--window-size=1400,1100", url)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
	})
	found := make(chan string, 1)
	go func() {
		re := regexp.MustCompile(`DevTools listening on ws://([^/]+)/`)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if m := re.FindStringSubmatch(sc.Text()); m != nil {
				found <- m[1]
			}
		}
		io.Copy(io.Discard, stderr)
	}()
	var addr string
	select {
	case addr = <-found:
	case <-time.After(30 * time.Second):
		t.Fatal("chromium did not start its DevTools server within 30 s")
	}
	// The tab: the one showing url.
	var wsURL string
	deadline := time.Now().Add(10 * time.Second)
	for wsURL == "" {
		var targets []struct {
			Type, URL, WebSocketDebuggerURL string
		}
		if resp, err := http.Get("http://" + addr + "/json/list"); err == nil {
			json.NewDecoder(resp.Body).Decode(&targets)
			resp.Body.Close()
		}
		for _, tg := range targets {
			if tg.Type == "page" && strings.HasPrefix(tg.URL, url) {
				wsURL = tg.WebSocketDebuggerURL
			}
		}
		if wsURL == "" {
			if time.Now().After(deadline) {
				t.Fatalf("no tab for %s in chromium's targets %v", url, targets)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	ws, err := websocket.Dial(wsURL, "", "http://127.0.0.1/")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ws.Close() })
	return &cdpPage{ws: ws}
}

// call sends a DevTools command and returns its result, skipping events.
func (p *cdpPage) call(method string, params any) (json.RawMessage, error) {
	p.id++
	id := p.id
	if err := websocket.JSON.Send(p.ws, map[string]any{"id": id, "method": method, "params": params}); err != nil {
		return nil, err
	}
	p.ws.SetReadDeadline(time.Now().Add(20 * time.Second))
	for {
		var m struct {
			ID     int             `json:"id"`
			Result json.RawMessage `json:"result"`
			Error  *struct {
				Message string `json:"message"`
			} `json:"error"`
		}
		if err := websocket.JSON.Receive(p.ws, &m); err != nil {
			return nil, fmt.Errorf("%s: %w", method, err)
		}
		if m.ID != id {
			continue
		}
		if m.Error != nil {
			return nil, fmt.Errorf("%s: %s", method, m.Error.Message)
		}
		return m.Result, nil
	}
}

// eval evaluates a JavaScript expression in the page; it returns its value
// as JSON.
func (p *cdpPage) eval(expr string) (json.RawMessage, error) {
	raw, err := p.call("Runtime.evaluate", map[string]any{"expression": expr, "returnByValue": true})
	if err != nil {
		return nil, err
	}
	var r struct {
		Result struct {
			Value json.RawMessage `json:"value"`
		} `json:"result"`
		ExceptionDetails any `json:"exceptionDetails"`
	}
	if err := json.Unmarshal(raw, &r); err != nil {
		return nil, err
	}
	if r.ExceptionDetails != nil {
		return nil, fmt.Errorf("javascript exception: %v", r.ExceptionDetails)
	}
	return r.Result.Value, nil
}

func (p *cdpPage) screenshot() ([]byte, error) {
	raw, err := p.call("Page.captureScreenshot", map[string]any{"format": "png"})
	if err != nil {
		return nil, err
	}
	var r struct {
		Data string `json:"data"`
	}
	if err := json.Unmarshal(raw, &r); err != nil {
		return nil, err
	}
	return base64.StdEncoding.DecodeString(r.Data)
}

// TestAPIToken: with a token the API refuses requests without it (the
// page's static files excepted), accepts it as a bearer header or ?token=,
// and may listen beyond loopback; without one it may not.
func TestAPIToken(t *testing.T) {
	key, _ := tunnel.GenerateKey()
	listen := []tunnel.Endpoint{{Kind: "tcp", Addr: "127.0.0.1:0"}}
	if _, err := NewProxy(ProxyConfig{Listen: listen, Key: key, API: "0.0.0.0:0"}); err == nil ||
		!strings.Contains(err.Error(), "--api-token-file") {
		t.Fatalf("API on 0.0.0.0 without a token: %v", err)
	}
	if _, err := NewProxy(ProxyConfig{Listen: listen, Key: key, API: "127.0.0.1:0", APIToken: "short"}); err == nil {
		t.Fatal("a 5-character token was accepted")
	}
	const token = "0123456789abcdef-token"
	p, err := NewProxy(ProxyConfig{Listen: listen, Key: key, API: "0.0.0.0:0", APIToken: token})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	_, port, _ := net.SplitHostPort(p.APIAddr())
	base := "http://127.0.0.1:" + port
	get := func(path, auth string) int {
		req, _ := http.NewRequest("GET", base+path, nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, c := range []struct {
		path, auth string
		want       int
	}{
		{"/api/v1/status", "", 401},
		{"/api/v1/status", "Bearer wrong-token-wrong-token", 401},
		{"/api/v1/status", "Bearer " + token, 200},
		{"/api/v1/status?token=" + token, "", 200},
		{"/metrics", "", 401},
		{"/metrics", "Bearer " + token, 200},
		{"/", "", 200},
		{"/app.js", "", 200},
		{"/api/v1/snapshot", "", 401},
	} {
		if got := get(c.path, c.auth); got != c.want {
			t.Errorf("GET %s (%q): %d, want %d", c.path, c.auth, got, c.want)
		}
	}
}
