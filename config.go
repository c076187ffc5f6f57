package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/spf13/pflag"

	"vnet/appliance"
	"vnet/bridge"
)

// configHelp is the config file format, for the daemons' --help.
const configHelp = `Config file (--config FILE): one setting per line, NAME = VALUE, where NAME
is a long flag's name without "--" (listen = udp://:5000); a repeatable flag
repeats the line; a bare NAME sets a boolean flag (adapt). Blank lines and
lines starting with # are ignored, and " #" starts a comment after a value;
a value in double quotes (Go syntax) may hold anything. Flags on the command
line override the file. SIGHUP (or, on the proxy, 'vnet ctl reload') re-reads
it: what can change live is applied, the rest is logged as needing a restart.`

// Bounds on a config file, against hostile input.
const (
	maxConfigSize = 1 << 20
	maxConfigLine = 64 << 10
)

// setting is one line of a config file.
type setting struct {
	line        int
	name, value string
	bare        bool // no "= VALUE": a boolean switched on
}

// parseConfig parses config file text; file names it in errors
// ("net.conf:7: ...").
func parseConfig(file string, text []byte) ([]setting, error) {
	if len(text) > maxConfigSize {
		return nil, fmt.Errorf("%s: larger than %d bytes", file, maxConfigSize)
	}
	var out []setting
	for i, raw := range strings.Split(string(text), "\n") {
		n := i + 1
		if len(raw) > maxConfigLine {
			return nil, fmt.Errorf("%s:%d: line longer than %d bytes", file, n, maxConfigLine)
		}
		line := strings.TrimSpace(raw)
		if line == "" || line[0] == '#' {
			continue
		}
		name, value, hasEq := strings.Cut(line, "=")
		name = strings.TrimSpace(name)
		if !validSettingName(name) {
			return nil, fmt.Errorf("%s:%d: want NAME = VALUE, got %q", file, n, clip(line))
		}
		s := setting{line: n, name: name, bare: !hasEq}
		if hasEq {
			v, err := settingValue(strings.TrimSpace(value))
			if err != nil {
				return nil, fmt.Errorf("%s:%d: %s: %v", file, n, name, err)
			}
			s.value = v
		}
		out = append(out, s)
	}
	return out, nil
}

// settingValue is a value as written: quoted (Go syntax), or plain up to
// a " #" comment.
func settingValue(v string) (string, error) {
	if strings.HasPrefix(v, `"`) {
		end := closingQuote(v)
		if end < 0 {
			return "", errors.New("unterminated quoted value")
		}
		s, err := strconv.Unquote(v[:end+1])
		if err != nil {
			return "", fmt.Errorf("bad quoted value: %v", err)
		}
		if rest := strings.TrimSpace(v[end+1:]); rest != "" && rest[0] != '#' {
			return "", fmt.Errorf("unexpected %q after the quoted value", clip(rest))
		}
		return s, nil
	}
	for i := 1; i < len(v); i++ {
		if v[i] == '#' && (v[i-1] == ' ' || v[i-1] == '\t') {
			return strings.TrimSpace(v[:i]), nil
		}
	}
	return v, nil
}

// closingQuote is the index of the quote that ends the Go string starting
// at v[0], or -1.
func closingQuote(v string) int {
	for i := 1; i < len(v); i++ {
		switch v[i] {
		case '\\':
			i++
		case '"':
			return i
		}
	}
	return -1
}

func validSettingName(s string) bool {
	if s == "" || len(s) > 64 || s[0] == '-' {
		return false
	}
	for _, c := range []byte(s) {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

func clip(s string) string {
	if len(s) > 60 {
		return s[:60] + "..."
	}
	return s
}

// loadConfig reads config file path and sets its settings on fs, except
// the flags in keep (given on the command line, which wins). A repeatable
// flag collects every line that names it.
func loadConfig(fs *pflag.FlagSet, path string, keep map[string]bool) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("--config: %w", err)
	}
	defer f.Close()
	text, err := io.ReadAll(io.LimitReader(f, maxConfigSize+1))
	if err != nil {
		return fmt.Errorf("--config %s: %w", path, err)
	}
	settings, err := parseConfig(path, text)
	if err != nil {
		return err
	}
	return applySettings(fs, path, settings, keep)
}

// applySettings sets settings on fs; see loadConfig.
func applySettings(fs *pflag.FlagSet, file string, settings []setting, keep map[string]bool) error {
	for _, s := range settings {
		fl := fs.Lookup(s.name)
		switch {
		case fl == nil:
			return fmt.Errorf("%s:%d: unknown setting %q (see --help for the flags)", file, s.line, s.name)
		case s.name == "config":
			return fmt.Errorf("%s:%d: a config file cannot name another one", file, s.line)
		case keep[s.name]:
			continue
		}
		v := s.value
		if s.bare {
			if fl.Value.Type() != "bool" {
				return fmt.Errorf("%s:%d: %s needs a value (%s = VALUE)", file, s.line, s.name, s.name)
			}
			v = "true"
		}
		if err := fl.Value.Set(v); err != nil {
			return fmt.Errorf("%s:%d: %s = %q: %v", file, s.line, s.name, clip(v), err)
		}
		fl.Changed = true
	}
	return nil
}

// parseWithConfig parses args and then, if --config is among them, the
// config file, leaving the flags given in args as they are.
func parseWithConfig(fs *pflag.FlagSet, args []string) error {
	if err := parse(fs, args); err != nil {
		return err
	}
	path, _ := fs.GetString("config")
	if path == "" {
		return nil
	}
	keep := map[string]bool{}
	fs.Visit(func(f *pflag.Flag) { keep[f.Name] = true })
	if err := loadConfig(fs, path, keep); err != nil {
		return usageErr("%v", err)
	}
	return nil
}

// flagValues snapshots every flag's value as text, to see what a reload
// changed.
func flagValues(fs *pflag.FlagSet) map[string]string {
	m := map[string]string{}
	fs.VisitAll(func(f *pflag.Flag) { m[f.Name] = f.Value.String() })
	return m
}

// reloader re-reads a daemon's config file on SIGHUP or `vnet ctl reload`.
// The settings in live change while the daemon runs; any other setting
// whose value changed is reported as needing a restart.
type reloader struct {
	args     []string              // the daemon's command line
	define   func() *pflag.FlagSet // a fresh flag set of the daemon, unparsed
	live     map[string]liveSetting
	tokenNow string // the API token in force, to notice a new token in the same file

	mu  sync.Mutex
	cur map[string]string // the values in force
}

// liveSetting checks a new value in fs and returns how to put it in force;
// an error leaves everything as it is.
type liveSetting func(fs *pflag.FlagSet) (apply func() error, err error)

func newReloader(args []string, define func() *pflag.FlagSet, running *pflag.FlagSet) *reloader {
	return &reloader{args: args, define: define, cur: flagValues(running), live: map[string]liveSetting{}}
}

// setToken records the API token the daemon started with.
func (r *reloader) setToken(tok string) { r.tokenNow = tok }

// reload re-reads the config file; see appliance.ProxyConfig.ReloadSettings.
func (r *reloader) reload() (applied, restart []string, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	fs := r.define()
	fs.Usage = func() {}
	if err := parseWithConfig(fs, r.args); err != nil {
		return nil, nil, errors.New(strings.TrimPrefix(err.Error(), errUsage.Error()+": "))
	}
	next := flagValues(fs)
	type step struct {
		name  string
		apply func() error
	}
	var steps []step
	var names []string
	for name := range next {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		set, ok := r.live[name]
		changed := next[name] != r.cur[name]
		if name == "api-token-file" && ok && !changed && next[name] != "" {
			if tok, err := appliance.LoadAPIToken(next[name]); err == nil && tok != r.tokenNow {
				changed = true // the same file, a new token
			}
		}
		switch {
		case !changed:
		case !ok:
			restart = append(restart, name)
		default:
			apply, err := set(fs)
			if err != nil {
				return nil, nil, err
			}
			steps = append(steps, step{name, apply})
		}
	}
	// The API token goes first: it is the only step that can fail (the API
	// refuses no token off loopback), and then nothing has changed.
	sort.SliceStable(steps, func(i, j int) bool { return steps[i].name == "api-token-file" && steps[j].name != "api-token-file" })
	for _, s := range steps {
		if err := s.apply(); err != nil {
			return nil, nil, err
		}
		r.cur[s.name] = next[s.name]
		v := next[s.name]
		if s.name == "api-token-file" {
			v += " (token re-read)"
		}
		applied = append(applied, s.name+" = "+v)
	}
	return applied, restart, nil
}

// onSIGHUP calls reload on every SIGHUP until ctx ends.
func onSIGHUP(ctx context.Context, reload func()) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGHUP)
	go func() {
		defer signal.Stop(ch)
		for {
			select {
			case <-ctx.Done():
				return
			case <-ch:
				reload()
			}
		}
	}()
}

// commonLive are the live settings of both daemons: the log level, the
// broadcast rate of sw's VM ports, and the API token (setToken).
func commonLive(r *reloader, sw func() *bridge.Switch, setToken func(string) error) {
	r.live["log-level"] = func(fs *pflag.FlagSet) (func() error, error) {
		s, _ := fs.GetString("log-level")
		var l slog.Level
		if err := l.UnmarshalText([]byte(s)); err != nil {
			return nil, fmt.Errorf("log-level %q: want debug, info, warn or error", s)
		}
		return func() error { logLevel.Set(l); return nil }, nil
	}
	r.live["broadcast-rate"] = func(fs *pflag.FlagSet) (func() error, error) {
		n, _ := fs.GetInt("broadcast-rate")
		if n < 0 {
			return nil, fmt.Errorf("broadcast-rate %d: want frames a second, or 0 for no limit", n)
		}
		if n == 0 {
			n = -1
		}
		return func() error { sw().SetBroadcastRate(n); return nil }, nil
	}
	r.live["api-token-file"] = func(fs *pflag.FlagSet) (func() error, error) {
		path, _ := fs.GetString("api-token-file")
		tok := ""
		if path != "" {
			var err error
			if tok, err = appliance.LoadAPIToken(path); err != nil {
				return nil, err
			}
		}
		return func() error {
			if err := setToken(tok); err != nil {
				return err
			}
			r.tokenNow = tok
			return nil
		}, nil
	}
}
