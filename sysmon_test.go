package main

import (
	"slices"
	"testing"
)

func TestSysmonAwakeEnv(t *testing.T) {
	for _, tc := range []struct {
		name    string
		cmd     string
		environ []string
		want    []string // nil: no re-exec
	}{
		{"host without GODEBUG", "host", []string{"PATH=/bin", "HOME=/root"},
			[]string{"PATH=/bin", "HOME=/root", "GODEBUG=" + keepSysmonAwake}},
		{"proxy keeps other settings", "proxy", []string{"GODEBUG=gctrace=1", "X=1"},
			[]string{"GODEBUG=gctrace=1," + keepSysmonAwake, "X=1"}},
		{"empty GODEBUG", "demo", []string{"GODEBUG="}, []string{"GODEBUG=" + keepSysmonAwake}},
		{"user's schedtrace wins", "host", []string{"GODEBUG=gctrace=1,schedtrace=0"}, nil},
		{"already re-executed", "host", []string{"GODEBUG=" + keepSysmonAwake}, nil},
		{"not a daemon", "ctl", []string{"PATH=/bin"}, nil},
		{"a value is not a key", "host", []string{"GODEBUG=x=schedtrace"},
			[]string{"GODEBUG=x=schedtrace," + keepSysmonAwake}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := sysmonAwakeEnv(tc.cmd, tc.environ)
			if ok != (tc.want != nil) || !slices.Equal(got, tc.want) {
				t.Fatalf("sysmonAwakeEnv(%q, %q) = %q, %v; want %q", tc.cmd, tc.environ, got, ok, tc.want)
			}
		})
	}
}
