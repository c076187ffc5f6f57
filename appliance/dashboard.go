package appliance

import (
	"context"
	"embed"
	"encoding/json"
	"fmt"
	"io/fs"
	"net/http"
	"time"

	"vnet/infer"
)

// The dashboard: a page embedded in the binary (no CDN, nothing fetched at
// run time), served at / on every daemon's API address. It draws what one
// SSE stream (/api/v1/stream) sends about once a second: a Snapshot of the
// daemon's view. On the proxy that is the whole network; on a host, its
// own links, VMs and traffic.

//go:embed web
var webFS embed.FS

// Snapshot is one update of the dashboard's stream.
type Snapshot struct {
	Role     string          `json:"role"`
	Name     string          `json:"name"`
	At       time.Time       `json:"at"`
	Hosts    []HostInfo      `json:"hosts"`
	VMs      []VMInfo        `json:"vms"`
	Links    []LinkInfo      `json:"links"`
	Topology *infer.Topology `json:"topology,omitempty"`
	Matrix   infer.Matrix    `json:"matrix"`
	Events   []infer.Event   `json:"events"`
}

// dashEvents is how many of the latest events a snapshot carries.
const dashEvents = 40

// DashboardInterval is how often the stream sends a snapshot.
var DashboardInterval = time.Second

func (p *Proxy) snapshot() Snapshot {
	t := p.agg.Topology()
	s := Snapshot{Role: "proxy", Name: "proxy", At: time.Now(), Hosts: p.hosts(), VMs: p.vms(), Links: p.links(),
		Topology: &t, Matrix: p.agg.Smoothed(), Events: p.agg.Events(0)}
	if len(s.Events) > dashEvents {
		s.Events = s.Events[len(s.Events)-dashEvents:]
	}
	return s
}

func (h *Host) snapshot() Snapshot {
	st := h.status()
	hi := HostInfo{Name: h.cfg.Name, Addrs: st.Listen, NAT: "unknown", State: "up", VMs: []string{}, API: st.API}
	for _, vm := range st.VMs {
		hi.VMs = append(hi.VMs, vm.MAC)
	}
	vms := st.VMs
	if vms == nil {
		vms = []VMInfo{}
	}
	return Snapshot{Role: "host", Name: h.cfg.Name, At: time.Now(), Hosts: []HostInfo{hi}, VMs: vms,
		Links: h.hostLinks(), Matrix: h.acct.Matrix(10 * time.Second), Events: []infer.Event{}}
}

// dashboardAssets are the page's files, served without the API token.
var dashboardAssets = map[string]bool{"/": true, "/app.js": true, "/style.css": true}

// dashboardRoutes adds the page and its stream to mux.
func dashboardRoutes(mux *http.ServeMux, ctx context.Context, snap func() Snapshot) {
	sub, _ := fs.Sub(webFS, "web")
	files := http.FileServerFS(sub)
	mux.Handle("GET /{$}", files)
	for _, f := range []string{"app.js", "style.css"} {
		mux.Handle("GET /"+f, files)
	}
	mux.HandleFunc("GET /api/v1/snapshot", handle(func(*http.Request) (any, error) { return snap(), nil }))
	mux.HandleFunc("GET /api/v1/stream", func(w http.ResponseWriter, r *http.Request) {
		fl, ok := w.(http.Flusher)
		if !ok {
			writeJSON(w, http.StatusInternalServerError, map[string]string{"error": "streaming unsupported"})
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Cache-Control", "no-cache")
		w.WriteHeader(http.StatusOK)
		t := time.NewTicker(DashboardInterval)
		defer t.Stop()
		for {
			b, _ := json.Marshal(snap())
			if _, err := fmt.Fprintf(w, "event: snapshot\ndata: %s\n\n", b); err != nil {
				return
			}
			fl.Flush()
			select {
			case <-r.Context().Done():
				return
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	})
}
