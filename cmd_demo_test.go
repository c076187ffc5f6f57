package main

import (
	"bytes"
	"context"
	"math"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestDemo runs `vnet demo` in a short configuration: it must finish, name
// the topologies it ran, migrate a VM without breaking a stream, and report
// a speedup computed from the rates it measured.
func TestDemo(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	var out bytes.Buffer
	// 16 KB messages: with 64 KB ones the all2all incast overflows the
	// netstack VMs' port queues on a loaded machine, and their TCP can stall
	// through a whole 1 s measurement (see the issue 7 note).
	err := runDemoTo(ctx, []string{"--hosts", "3", "--vms", "2", "--measure", "1s", "--bytes", "64KiB", "--size", "16KiB"}, &out)
	t.Logf("demo output:\n%s", out.String())
	if err != nil {
		t.Fatal(err)
	}
	s := out.String()
	for _, want := range []string{"dashboard  http://127.0.0.1:", "the proxy inferred ring", "the proxy inferred all2all",
		"went on intact"} {
		if !strings.Contains(s, want) {
			t.Errorf("the demo's output lacks %q", want)
		}
	}
	// Each phase's row: TOPOLOGY STAR ADAPTED SPEEDUP ...; the speedup must
	// be ADAPTED/STAR, and the final line their geometric mean.
	rows := regexp.MustCompile(`(?m)^  (ring|all2all)\s+([0-9.]+)\s+([0-9.]+)\s+([0-9.]+)x`).FindAllStringSubmatch(s, -1)
	if len(rows) != 2 {
		t.Fatalf("want a result row for ring and all2all, got %q", rows)
	}
	for _, r := range rows {
		star, _ := strconv.ParseFloat(r[2], 64)
		adapted, _ := strconv.ParseFloat(r[3], 64)
		speedup, _ := strconv.ParseFloat(r[4], 64)
		if star <= 0 || adapted <= 0 || math.Abs(speedup-adapted/star) > 0.01+0.01*speedup {
			t.Errorf("%s: star %v, adapted %v, speedup %v: not adapted/star", r[1], star, adapted, speedup)
		}
	}
	if m := regexp.MustCompile(`speedup from adaptation: ([0-9.]+)x`).FindStringSubmatch(s); m == nil {
		t.Error("no overall speedup reported")
	}
}
