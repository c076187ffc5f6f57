package main

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

func TestPatternsFlags(t *testing.T) {
	dir := t.TempDir()
	hosts := filepath.Join(dir, "hosts")
	os.WriteFile(hosts, []byte("# ranks\n10.0.0.1:7000\n\n10.0.0.2:7000  # rank 1\n10.0.0.3:7000\n10.0.0.4:7000\n"), 0o644)
	empty := filepath.Join(dir, "empty")
	os.WriteFile(empty, []byte("# nothing\n"), 0o644)
	peers := "--peers=10.0.0.1:7000,10.0.0.2:7000,10.0.0.3:7000,10.0.0.4:7000"

	for _, bad := range [][]string{
		{},
		{"--rank", "0"},
		{peers},
		{peers, "--rank", "4"},
		{peers, "--rank", "-1"},
		{peers, "--rank", "0", "--topology", "star"},
		{peers, "--rank", "0", "--size", "0"},
		{peers, "--rank", "0", "--size", "lots"},
		{peers, "--rank", "0", "--iters", "0"},
		{peers, "--rank", "0", "--flops", "-1"},
		{peers, "--rank", "0", "--elements", "0"},
		{peers, "--rank", "0", "--timeout", "0s"},
		{peers, "--rank", "0", "--bogus"},
		{peers, "--rank", "0", "extra"},
		{peers, "--rank", "0", "--topology", "mesh2d", "--dims", "3x3"},
		{peers, "--rank", "0", "--topology", "mesh2d", "--dims", "4"},
		{peers, "--rank", "0", "--topology", "ring", "--dims", "2x2"},
		{"--peers=10.0.0.1:7000,10.0.0.2:7000,10.0.0.3:7000", "--rank", "0", "--topology", "hypercube"},
		{"--peers=10.0.0.1,10.0.0.2", "--rank", "0"},
		{peers, "--hostfile", hosts, "--rank", "0"},
		{"--hostfile", filepath.Join(dir, "missing"), "--rank", "0"},
		{"--hostfile", empty, "--rank", "0"},
		{"--local", "4", "--rank", "0"},
		{"--local", "4", peers},
		{"--local", "-2"},
		{"--local", "6", "--topology", "hypercube"},
	} {
		o, err := parsePatterns(bad)
		if err == nil || !errors.Is(err, errUsage) {
			t.Errorf("%q: got %+v, %v; want a usage error", bad, o, err)
		}
	}

	o, err := parsePatterns([]string{"--hostfile", hosts, "--rank", "2", "--topology", "torus2d", "--dims", "2x2",
		"--size", "1MiB", "--iters", "7", "--flops", "3", "--json", "--timeout", "1m"})
	if err != nil {
		t.Fatal(err)
	}
	c := o.cfg
	if !slices.Equal(c.Peers, []string{"10.0.0.1:7000", "10.0.0.2:7000", "10.0.0.3:7000", "10.0.0.4:7000"}) ||
		c.Rank != 2 || c.Size != 1<<20 || c.Iters != 7 || c.Flops != 3 || !slices.Equal(c.Dims, []int{2, 2}) ||
		c.Topology != "torus2d" || !o.json || c.Timeout.Minutes() != 1 {
		t.Errorf("parsed %+v", o)
	}
	o, err = parsePatterns([]string{"--local", "8", "--topology", "hypercube"})
	if err != nil || o.local != 8 || o.cfg.Iters != 100 || o.cfg.Size != 64<<10 {
		t.Errorf("--local 8: %+v, %v", o, err)
	}
	if _, err := parsePatterns([]string{"--help"}); !errors.Is(err, pflag.ErrHelp) {
		t.Errorf("--help: %v", err)
	}
	if !strings.Contains(patternsHelp, "--rank i --peers") {
		t.Error("help lacks the multi-VM example")
	}
}
