package appliance

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"vnet/topo"
	"vnet/tunnel"
)

// reloadProxy starts a proxy with a topology file holding text and a
// settings reloader that answers with *settings (or *settingsErr), counting
// its calls.
func reloadProxy(t *testing.T, text string) (p *Proxy, file string, calls *int, settingsErr *error) {
	t.Helper()
	file = filepath.Join(t.TempDir(), "net.topo")
	if err := os.WriteFile(file, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	key, _ := tunnel.GenerateKey()
	calls, settingsErr = new(int), new(error)
	p, err := NewProxy(ProxyConfig{Listen: []tunnel.Endpoint{{Kind: "tcp", Addr: "127.0.0.1:0"}}, Key: key,
		API: "127.0.0.1:0", TopologyFile: file, ReloadSettings: func() ([]string, []string, error) {
			*calls++
			if *settingsErr != nil {
				return nil, nil, *settingsErr
			}
			return []string{"broadcast-rate = 50"}, []string{"listen"}, nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p, file, calls, settingsErr
}

// reloadAPI posts /api/v1/reload and returns the answer or the error.
func reloadAPI(t *testing.T, p *Proxy) (ReloadResult, int, string) {
	t.Helper()
	resp, err := http.Post("http://"+p.APIAddr()+"/api/v1/reload", "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	b.ReadFrom(resp.Body)
	var res ReloadResult
	if resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(b.Bytes(), &res); err != nil {
			t.Fatal(err)
		}
		return res, resp.StatusCode, ""
	}
	var e struct{ Error string }
	json.Unmarshal(b.Bytes(), &e)
	return res, resp.StatusCode, e.Error
}

func exportText(t *testing.T, p *Proxy) string {
	t.Helper()
	var b bytes.Buffer
	if err := p.export().Format(&b); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func writeFile(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
}

// The topology file is applied at start, before its hosts ever connected;
// a reload applies only the difference and the settings; a bad file, a
// file that cannot be applied, or bad settings change nothing and say why.
func TestReloadTopologyFile(t *testing.T) {
	const v1 = "# start\nlink h1 h2 kind udp\nrule h2 any 52:54:00:00:00:02 -> link:h1-h2\n"
	p, file, calls, settingsErr := reloadProxy(t, v1)
	if got := exportText(t, p); !strings.Contains(got, "link h1 h2 kind udp") ||
		!strings.Contains(got, "rule h2 any 52:54:00:00:00:02 -> link:h1-h2") {
		t.Fatalf("the file is not applied at start:\n%s", got)
	}

	res, code, msg := reloadAPI(t, p)
	if code != http.StatusOK || len(res.Changes) != 0 || *calls != 1 {
		t.Fatalf("reloading the same file: %d %q %+v, %d settings calls", code, msg, res, *calls)
	}
	if strings.Join(res.Applied, ",") != "broadcast-rate = 50" || strings.Join(res.NeedsRestart, ",") != "listen" {
		t.Fatalf("settings not reported: %+v", res)
	}

	// The controller's own link stays although the file does not name it.
	p.mu.Lock()
	p.mu.links["h2-h3"] = topo.Link{A: "h2", B: "h3"}
	p.mu.adaptedLinks["h2-h3"] = true
	p.mu.Unlock()

	const v2 = v1 + "link h1 h3\nrule h3 52:54:00:00:00:03 52:54:00:00:00:02 -> deny\n"
	writeFile(t, file, v2)
	res, code, msg = reloadAPI(t, p)
	want := []string{"+ link h1 h3", "+ rule h3 52:54:00:00:00:03 52:54:00:00:00:02 -> deny"}
	if code != http.StatusOK || strings.Join(res.Changes, "|") != strings.Join(want, "|") {
		t.Fatalf("reload after adding a link and a rule: %d %q, changes %q, want %q", code, msg, res.Changes, want)
	}
	good := exportText(t, p)
	if !strings.Contains(good, "link h2 h3") {
		t.Fatalf("the adaptation controller's link was removed:\n%s", good)
	}

	for _, c := range []struct{ name, text, want string }{
		{"syntax", v2 + "link h1\n", "reload failed, nothing changed: --topology " + file + ": line 6:"},
		{"unknown link", v2 + "rule h1 any any -> link:h1-h9\n", "unknown link h1-h9"},
		{"bad kind", "link h1 h2 kind quic\n", "fast links are udp or tcp"},
		{"missing", "", "no such file"},
	} {
		n := *calls
		if c.name == "missing" {
			os.Remove(file)
		} else {
			writeFile(t, file, c.text)
		}
		_, code, msg := reloadAPI(t, p)
		if code != http.StatusBadRequest || !strings.Contains(msg, c.want) || strings.Contains(msg, "\n") && c.name != "unknown link" {
			t.Errorf("%s: %d %q, want 400 with %q", c.name, code, msg, c.want)
		}
		if *calls != n {
			t.Errorf("%s: the settings were reloaded although the topology file is bad", c.name)
		}
		if got := exportText(t, p); got != good {
			t.Errorf("%s: the state changed:\n%s\nwant\n%s", c.name, got, good)
		}
	}

	// Bad settings: the (changed, valid) topology is not applied either.
	writeFile(t, file, v1)
	*settingsErr = errors.New("net.conf:3: unknown setting \"lisen\"")
	if _, code, msg := reloadAPI(t, p); code != http.StatusBadRequest || !strings.Contains(msg, `net.conf:3: unknown setting "lisen"`) {
		t.Fatalf("bad settings: %d %q", code, msg)
	}
	if got := exportText(t, p); got != good {
		t.Fatalf("bad settings: the state changed:\n%s", got)
	}

	// Back to v1: the link and the rule go, the controller's link stays.
	*settingsErr = nil
	res, err := p.Reload()
	want = []string{"- rule h3 52:54:00:00:00:03 52:54:00:00:00:02 -> deny", "- link h1 h3"}
	if err != nil || strings.Join(res.Changes, "|") != strings.Join(want, "|") {
		t.Fatalf("back to the first file: %v, changes %q, want %q", err, res.Changes, want)
	}
}

func TestReloadBadTopologyAtStart(t *testing.T) {
	file := filepath.Join(t.TempDir(), "net.topo")
	writeFile(t, file, "link h1 h1\n")
	key, _ := tunnel.GenerateKey()
	_, err := NewProxy(ProxyConfig{Listen: []tunnel.Endpoint{{Kind: "tcp", Addr: "127.0.0.1:0"}}, Key: key, TopologyFile: file})
	if err == nil || !strings.Contains(err.Error(), "--topology "+file+": line 1") {
		t.Fatalf("NewProxy with a bad topology file: %v", err)
	}
}
