package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

func testFlags() *pflag.FlagSet {
	fs := newFlags("test", "", "")
	fs.String("config", "", "")
	fs.StringArray("listen", []string{"tcp://:5000"}, "")
	fs.String("api", "127.0.0.1:7777", "")
	fs.Bool("adapt", false, "")
	fs.Int("broadcast-rate", 1000, "")
	fs.Duration("migrate-timeout", time.Minute, "")
	fs.String("migrate-cmd", "", "")
	return fs
}

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "net.conf")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestConfigFile(t *testing.T) {
	path := writeConfig(t, `# the proxy
listen = udp://:5000   # the star
listen=quic://:5001

adapt
api =
broadcast-rate = 50
migrate-cmd = "ssh $2 'virsh migrate # now' $3"
	migrate-timeout = 90s
`)
	fs := testFlags()
	if err := parseWithConfig(fs, []string{"--config", path, "--broadcast-rate", "7"}); err != nil {
		t.Fatal(err)
	}
	listen, _ := fs.GetStringArray("listen")
	api, _ := fs.GetString("api")
	adapt, _ := fs.GetBool("adapt")
	rate, _ := fs.GetInt("broadcast-rate")
	cmd, _ := fs.GetString("migrate-cmd")
	mt, _ := fs.GetDuration("migrate-timeout")
	if strings.Join(listen, " ") != "udp://:5000 quic://:5001" || api != "" || !adapt || rate != 7 ||
		cmd != "ssh $2 'virsh migrate # now' $3" || mt != 90*time.Second {
		t.Fatalf("listen %q api %q adapt %v rate %d (the command line's 7 wins) cmd %q timeout %v",
			listen, api, adapt, rate, cmd, mt)
	}
	if !fs.Changed("adapt") {
		t.Error("a setting from the file does not count as changed")
	}
}

func TestConfigFileErrors(t *testing.T) {
	for _, c := range []struct{ text, want string }{
		{"listen = tcp://:1\nlisen = udp://:5000\n", `net.conf:2: unknown setting "lisen"`},
		{"broadcast-rate = lots\n", `net.conf:1: broadcast-rate = "lots": must be an integer`},
		{"api\n", "net.conf:1: api needs a value (api = VALUE)"},
		{"--listen = x\n", `net.conf:1: want NAME = VALUE, got "--listen = x"`},
		{"= x\n", `net.conf:1: want NAME = VALUE`},
		{"migrate-cmd = \"abc\n", "net.conf:1: migrate-cmd: unterminated quoted value"},
		{"migrate-cmd = \"a\" b\n", `net.conf:1: migrate-cmd: unexpected "b" after the quoted value`},
		{"config = other.conf\n", "net.conf:1: a config file cannot name another one"},
		{"migrate-timeout = 5\n", `net.conf:1: migrate-timeout = "5": must be a duration`},
	} {
		path := writeConfig(t, c.text)
		err := parseWithConfig(testFlags(), []string{"--config", path})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: got %v, want %q", c.text, err, c.want)
		}
	}
	if err := parseWithConfig(testFlags(), []string{"--config", "/nonexistent/net.conf"}); err == nil ||
		!strings.Contains(err.Error(), "no such file") {
		t.Errorf("a missing file: %v", err)
	}
}

func FuzzConfigFile(f *testing.F) {
	for _, s := range []string{
		"listen = udp://:5000\nadapt\n# c\n\napi =\n",
		"migrate-cmd = \"a\\\"b # c\" # d\n",
		"broadcast-rate = 5 # x\nmigrate-timeout=1s",
		"lisen = x", "\"", "a=\"\\", "=", "a b = c",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		settings, err := parseConfig("f.conf", b)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "f.conf") || strings.Contains(err.Error(), "\n") {
				t.Fatalf("error %q does not name the file on one line", err)
			}
			return
		}
		for _, s := range settings {
			if !validSettingName(s.name) || s.line < 1 {
				t.Fatalf("bad setting %+v", s)
			}
		}
		fs := testFlags()
		if err := applySettings(fs, "f.conf", settings, nil); err != nil && !strings.HasPrefix(err.Error(), "f.conf:") {
			t.Fatalf("error %q does not name the file", err)
		}
	})
}

// A reload applies the live settings that changed, names the others, and on
// a bad file or a bad live value changes nothing.
func TestReloaderSettings(t *testing.T) {
	path := writeConfig(t, "broadcast-rate = 10\nlisten = udp://:5000\n")
	args := []string{"--config", path, "--api", "127.0.0.1:1"}
	fs := testFlags()
	if err := parseWithConfig(fs, args); err != nil {
		t.Fatal(err)
	}
	r := newReloader(args, testFlags, fs)
	rate := 10
	r.live["broadcast-rate"] = func(fs *pflag.FlagSet) (func() error, error) {
		n, _ := fs.GetInt("broadcast-rate")
		if n < 0 {
			return nil, errors.New("negative")
		}
		return func() error { rate = n; return nil }, nil
	}
	check := func(text, wantApplied, wantRestart, wantErr string, wantRate int) {
		t.Helper()
		if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		applied, restart, err := r.reload()
		if fmt.Sprint(err) != wantErr && !(wantErr != "<nil>" && err != nil && strings.Contains(err.Error(), wantErr)) ||
			strings.Join(applied, ",") != wantApplied || strings.Join(restart, ",") != wantRestart || rate != wantRate {
			t.Fatalf("%q: applied %q restart %q err %v rate %d; want %q %q %q %d", text, applied, restart, err, rate,
				wantApplied, wantRestart, wantErr, wantRate)
		}
	}
	check("broadcast-rate = 10\nlisten = udp://:5000\n", "", "", "<nil>", 10)
	check("broadcast-rate = 20\nlisten = udp://:5000\napi = 127.0.0.1:2\n", "broadcast-rate = 20", "", "<nil>", 20) // api: the command line wins
	check("broadcast-rate = 20\nlisten = tcp://:443\n", "", "listen", "<nil>", 20)
	check("broadcast-rate = -5\nlisten = udp://:5000\n", "", "", "negative", 20)
	check("broadcast-rat = 5\n", "", "", path+`:1: unknown setting "broadcast-rat"`, 20)
	check("listen = tcp://:443\n", "broadcast-rate = 1000", "listen", "<nil>", 1000) // the default again
}
