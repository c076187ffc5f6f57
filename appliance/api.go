package appliance

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"time"
	"vnet/infer"
)

// maxBody bounds API request bodies (a topology file is the largest).
const maxBody = 4 << 20

// apiServer serves the control API (HTTP+JSON under /api/v1/).
type apiServer struct {
	ln       net.Listener
	srv      *http.Server
	loopback bool                   // listens on loopback: a token is optional
	token    atomic.Pointer[string] // required of every request when not empty
}

// apiError is an error with an HTTP status; its message is shown to the
// user of `vnet ctl` as it is.
type apiError struct {
	code int
	msg  string
}

func (e *apiError) Error() string { return e.msg }

func badRequest(format string, a ...any) error {
	return &apiError{http.StatusBadRequest, fmt.Sprintf(format, a...)}
}

func notFound(format string, a ...any) error {
	return &apiError{http.StatusNotFound, fmt.Sprintf(format, a...)}
}

// minTokenLen is the shortest API token accepted (a token file holds at
// least this many characters; `head -c 32 /dev/urandom | base64` makes one).
const minTokenLen = 16

// startAPI serves mux on addr. Without a token it listens on loopback
// only; with one, anywhere, and every request must carry it
// ("Authorization: Bearer TOKEN", or ?token= for a browser's page and its
// event stream).
func startAPI(addr, token string, mux *http.ServeMux, log *slog.Logger) (*apiServer, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("--api %s: %v", addr, err)
	}
	ip := net.ParseIP(host)
	s := &apiServer{loopback: host == "localhost" || ip != nil && ip.IsLoopback()}
	if err := s.setToken(token); errors.Is(err, errNeedsToken) {
		return nil, fmt.Errorf("--api %s: %w", addr, err)
	} else if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("control API: %w", err)
	}
	s.ln = ln
	s.srv = &http.Server{Handler: s.requireToken(mux), ReadHeaderTimeout: 5 * time.Second,
		MaxHeaderBytes: 16 << 10, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug)}
	go s.srv.Serve(ln)
	return s, nil
}

var errNeedsToken = errors.New("the control API listens on loopback only (e.g. 127.0.0.1:7777) unless it has a token (--api-token-file)")

// setToken changes the token every request must carry ("": none, on
// loopback only).
func (s *apiServer) setToken(token string) error {
	if token == "" && !s.loopback {
		return errNeedsToken
	}
	if token != "" && len(token) < minTokenLen {
		return fmt.Errorf("--api-token-file: the token is %d characters; use at least %d (e.g. head -c 32 /dev/urandom | base64)", len(token), minTokenLen)
	}
	s.token.Store(&token)
	return nil
}

// requireToken answers 401 to requests without the token, if there is one.
func (s *apiServer) requireToken(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		want := []byte(*s.token.Load())
		if len(want) == 0 {
			next.ServeHTTP(w, r)
			return
		}
		if r.Method == http.MethodGet && dashboardAssets[r.URL.Path] {
			next.ServeHTTP(w, r) // the page itself holds no data; its stream needs the token
			return
		}
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok {
			got = r.URL.Query().Get("token")
		}
		if subtle.ConstantTimeCompare([]byte(got), want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="vnet"`)
			writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "this control API needs its token " +
				"(vnet ctl --api-token-file FILE, or env VNET_API_TOKEN; a browser: ?token=...)"})
			return
		}
		next.ServeHTTP(w, r)
	})
}

// LoadAPIToken reads a token file (--api-token-file): its first line,
// trimmed.
func LoadAPIToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("--api-token-file: %w", err)
	}
	tok, _, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
	tok = strings.TrimSpace(tok)
	if tok == "" {
		return "", fmt.Errorf("--api-token-file %s: empty", path)
	}
	return tok, nil
}

func (s *apiServer) addr() string { return s.ln.Addr().String() }

func (s *apiServer) close() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	s.srv.Shutdown(ctx)
}

// handle adapts a function returning a value or an error to an HTTP handler.
func handle(f func(r *http.Request) (any, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, maxBody)
		v, err := f(r)
		if err != nil {
			code := http.StatusInternalServerError
			var ae *apiError
			var mbe *http.MaxBytesError
			switch {
			case errors.As(err, &ae):
				code = ae.code
			case errors.As(err, &mbe):
				code = http.StatusRequestEntityTooLarge
			}
			writeJSON(w, code, map[string]string{"error": err.Error()})
			return
		}
		if s, ok := v.(textBody); ok {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			io.WriteString(w, string(s))
			return
		}
		writeJSON(w, http.StatusOK, v)
	}
}

// textBody is a handler result sent as plain text.
type textBody string

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// decodeBody reads a JSON request body into v, strictly.
func decodeBody(r *http.Request, v any) error {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return err
		}
		return badRequest("malformed request body: %v", err)
	}
	return nil
}

// routes of a host's API: a read-only local view, and reload (of the host's
// own --config file). Changes to the network go to the proxy.
func (h *Host) routes() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/v1/status", handle(func(*http.Request) (any, error) {
		h.mu.Lock()
		star := h.mu.star
		h.mu.Unlock()
		st := Status{Role: "host", Name: h.cfg.Name, Version: Version, UptimeS: int64(time.Since(h.start).Seconds()),
			Listen: h.listenAddrs(), Proxy: h.cfg.Proxies[0].String(), ProxyState: "down",
			MACs: len(h.sw.MACs()), Ports: portInfos(h.sw)}
		if star != nil {
			st.ProxyState, st.Proxy = "up", star.RemoteAddr().String()
		}
		if h.mux != nil {
			st.UDP = h.mux.Stats()
		}
		h.mu.Lock()
		st.NAT = string(h.mu.nat.Mapping)
		for _, ap := range h.mu.nat.Reflexive {
			st.Reflexive = append(st.Reflexive, ap.String())
		}
		h.mu.Unlock()
		for _, l := range h.hostLinks() {
			if l.State == "up" {
				st.LinksUp++
			}
		}
		return st, nil
	}))
	mux.HandleFunc("GET /api/v1/links", handle(func(*http.Request) (any, error) { return h.hostLinks(), nil }))
	mux.HandleFunc("POST /api/v1/reload", handle(func(*http.Request) (any, error) { return h.Reload() }))
	mux.HandleFunc("GET /api/v1/rules", handle(func(*http.Request) (any, error) {
		return ruleInfosHits(h.cfg.Name, h.sw), nil
	}))
	mux.HandleFunc("GET /api/v1/vms", handle(func(*http.Request) (any, error) {
		vms := localVMs(h.sw, h.cfg.Name)
		if vms == nil {
			vms = []VMInfo{}
		}
		return vms, nil
	}))
	mux.HandleFunc("GET /api/v1/hosts", handle(func(*http.Request) (any, error) {
		st := h.status()
		hi := HostInfo{Name: h.cfg.Name, Addrs: st.Listen, NAT: "unknown", State: "up", VMs: []string{}, API: st.API}
		for _, vm := range st.VMs {
			hi.VMs = append(hi.VMs, vm.MAC)
		}
		return []HostInfo{hi}, nil
	}))
	mux.HandleFunc("GET /api/v1/matrix", handle(func(r *http.Request) (any, error) {
		last, err := parseLast(r)
		if err != nil {
			return nil, err
		}
		if last == 0 {
			last = 10 * time.Second
		}
		return h.acct.Matrix(last), nil // this host's VMs' traffic only
	}))
	mux.Handle("GET /metrics", metricsHandler(daemonCollector{host: h}, h.log))
	handleProfiles(mux)
	dashboardRoutes(mux, h.ctx, h.snapshot)
	mux.HandleFunc("/api/v1/", handle(func(r *http.Request) (any, error) {
		return nil, &apiError{http.StatusNotFound, fmt.Sprintf("%s %s: not served by a host; ask the proxy (vnet ctl --api PROXY-API)", r.Method, r.URL.Path)}
	}))
	return mux
}

// parseLast reads ?last=DURATION (e.g. 60s, 5m); zero when absent.
func parseLast(r *http.Request) (time.Duration, error) {
	v := r.URL.Query().Get("last")
	if v == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 || d > 24*time.Hour {
		return 0, badRequest("last=%q: want a duration like 60s or 5m", v)
	}
	return d, nil
}

// serveEvents answers the inference event history as JSON (?since=SEQ), or
// streams events live as server-sent events when the client asks for
// text/event-stream (or ?stream=1).
func (p *Proxy) serveEvents(w http.ResponseWriter, r *http.Request) {
	var since uint64
	if v := r.URL.Query().Get("since"); v != "" {
		if _, err := fmt.Sscan(v, &since); err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "since: want an event number"})
			return
		}
	}
	stream := r.URL.Query().Get("stream") != "" || strings.Contains(r.Header.Get("Accept"), "text/event-stream")
	if !stream {
		writeJSON(w, http.StatusOK, p.agg.Events(since))
		return
	}
	fl, ok := w.(http.Flusher)
	if !ok {
		writeJSON(w, http.StatusInternalServerError, map[string]string{"error": "streaming unsupported"})
		return
	}
	ch, stop := p.agg.Subscribe()
	defer stop()
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	last := since
	send := func(ev infer.Event) bool {
		if ev.Seq <= last { // already sent from the history
			return true
		}
		last = ev.Seq
		b, _ := json.Marshal(ev)
		_, err := fmt.Fprintf(w, "id: %d\nevent: %s\ndata: %s\n\n", ev.Seq, ev.Kind, b)
		fl.Flush()
		return err == nil
	}
	for _, ev := range p.agg.Events(since) {
		if !send(ev) {
			return
		}
	}
	keep := time.NewTicker(15 * time.Second)
	defer keep.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-p.ctx.Done():
			return
		case ev := <-ch:
			if !send(ev) {
				return
			}
		case <-keep.C:
			if _, err := fmt.Fprint(w, ": keepalive\n\n"); err != nil {
				return
			}
			fl.Flush()
		}
	}
}
