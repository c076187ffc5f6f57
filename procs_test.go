package main

import "testing"

func TestDaemonProcs(t *testing.T) {
	env := func(v string) func(string) string {
		return func(k string) string {
			if k == "GOMAXPROCS" {
				return v
			}
			return ""
		}
	}
	for _, c := range []struct {
		cmd, gomaxprocs string
		dflt, want      int
		ok              bool
	}{
		{"host", "", 2, 1, true},
		{"proxy", "", 8, 4, true},
		{"host", "", 1, 1, true},
		{"host", "", 3, 1, true},
		{"host", "2", 2, 0, false}, // the user's setting wins
		{"demo", "", 8, 0, false},  // one process runs every daemon
		{"ctl", "", 8, 0, false},
	} {
		got, ok := daemonProcs(c.cmd, env(c.gomaxprocs), c.dflt)
		if got != c.want || ok != c.ok {
			t.Errorf("daemonProcs(%q, GOMAXPROCS=%q, %d) = %d, %v; want %d, %v", c.cmd, c.gomaxprocs, c.dflt, got, ok, c.want, c.ok)
		}
	}
}
