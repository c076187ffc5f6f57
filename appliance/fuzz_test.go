package appliance

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	"vnet/infer"
	"vnet/tunnel"
)

// fuzzProxy is a proxy with one known host, h1, whose star link is nil: its
// messages are handled as a connected host's would be, and nothing is ever
// sent anywhere.
func fuzzProxy(f *testing.F) *Proxy {
	key, _ := tunnel.GenerateKey()
	p, err := NewProxy(ProxyConfig{Listen: []tunnel.Endpoint{{Kind: "tcp", Addr: "127.0.0.1:0"}}, Key: key})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(p.Close)
	p.mu.Lock()
	p.mu.hosts["h1"] = &hostRec{name: "h1"}
	p.mu.Unlock()
	return p
}

// FuzzHostControl feeds a hostile host's control messages (status, matrix
// reports, lookup answers, garbage) to the proxy: no panic, and the proxy's
// views stay answerable.
func FuzzHostControl(f *testing.F) {
	p := fuzzProxy(f)
	seeds := []ctrlMsg{
		{Op: opStatus, Status: &hostStatus{Listen: []string{"127.0.0.1:1"}, VMs: []VMInfo{{MAC: "52:54:00:00:00:01", Host: "h1"}},
			Links: []LinkInfo{{Name: "h1-h2", A: "h1", B: "h2", State: "up"}}, Rules: []RuleInfo{{Host: "h1", Src: "any", Dst: "any", To: "deny"}}}},
		{Op: opMatrix, Matrix: &matrixReport{Boot: 1, Seq: 1, Deltas: []infer.Entry{{Src: "52:54:00:00:00:01", Dst: "52:54:00:00:00:02", Bytes: 1e6, Frames: 700}},
			Quiet: []string{"52:54:00:00:00:01>52:54:00:00:00:02"}}},
		{Op: opLookupOK, ID: 7, Decision: &lookupReply{Outputs: []string{"x"}}},
	}
	for _, m := range seeds {
		f.Add(encodeCtrl(&m))
	}
	f.Add([]byte(`{"op":"status","status":{"links":[{"name":"../../etc","a":"h1","b":"h1"}],"rules":[{"host":"h1","src":"x","dst":"y","to":"z"}]}}`))
	f.Add([]byte(`{"op":"matrix","matrix":{"seq":18446744073709551615,"deltas":[{"src":"","dst":"","bytes":18446744073709551615}]}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		p.hostControl("h1", nil, b)
		p.hosts()
		p.links()
		p.rules()
		p.vms()
		p.agg.Topology()
		if _, err := json.Marshal(p.snapshot()); err != nil {
			t.Fatal(err)
		}
	})
}

// FuzzAPIBodies posts arbitrary bodies to every endpoint that takes one:
// each answer is an error the user can read (4xx with a JSON message) or a
// success, never a 500 or a panic.
func FuzzAPIBodies(f *testing.F) {
	p := fuzzProxy(f)
	mux := p.routes()
	for _, s := range []string{`{"a":"h1","b":"h2"}`, `{"host":"h1","src":"any","dst":"any","to":"deny"}`,
		`{"vm":"10.0.0.1","host":"h2"}`, `{"on":false}`, `{"reset":true}`, "host h1\nlink h1 h2\n", `{`, ``} {
		for i := range 6 {
			f.Add(i, []byte(s))
		}
	}
	endpoints := []struct{ method, path string }{
		{"POST", "/api/v1/links"}, {"DELETE", "/api/v1/links"}, {"POST", "/api/v1/rules"}, {"DELETE", "/api/v1/rules"},
		{"POST", "/api/v1/migrate"}, {"POST", "/api/v1/adapt"}, {"POST", "/api/v1/apply"}, {"POST", "/api/v1/apply?dry_run=1"},
	}
	f.Fuzz(func(t *testing.T, which int, body []byte) {
		ep := endpoints[uint(which)%uint(len(endpoints))]
		if ep.path == "/api/v1/adapt" && bytes.Contains(body, []byte("true")) {
			return // turning the controller on is legitimate and slow to undo; not a parser question
		}
		w := httptest.NewRecorder()
		mux.ServeHTTP(w, httptest.NewRequest(ep.method, ep.path, bytes.NewReader(body)))
		if w.Code >= 500 {
			t.Fatalf("%s %s %q: %d %s", ep.method, ep.path, body, w.Code, w.Body.String())
		}
		if w.Code != http.StatusOK {
			var e struct{ Error string }
			if json.Unmarshal(w.Body.Bytes(), &e) != nil || e.Error == "" {
				t.Fatalf("%s %s %q: %d without a readable error: %q", ep.method, ep.path, body, w.Code, w.Body.String())
			}
		}
	})
}
