package main

// The scale benchmark: one real `vnet proxy` process and many hosts (in
// this process, on loopback), each with VM ports that send a ring of IP
// frames, so that every host reports its matrix once a second. It reports
// the join time, the proxy's CPU and memory under those reports, and how
// long a plan of as many fast links as hosts takes to come up.
//
//	go test -run XXX -bench Scale -benchtime 1x .              (64 hosts x 8 VMs)
//	VNET_SCALE_HOSTS=16 VNET_SCALE_VMS=4 go test -run XXX -bench Scale -benchtime 1x .
//	VNET_SCALE_PROXY_FLAGS=--offload=false ...    (flags for the proxy)
//	VNET_SCALE_HEAP=/tmp/heap.pb [VNET_SCALE_HEAPQ=?debug=1]  (the proxy's heap profile under traffic)

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"vnet/appliance"
	"vnet/bridge"
	"vnet/bridge/bridgetest"
	"vnet/tunnel"
)

func scaleEnv(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func freeLoopbackPort(tb testing.TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// procUsage is a process's CPU time (user+system) and resident memory.
func procUsage(pid int) (cpu time.Duration, rssKB int, err error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	// Fields after the command name, which is in parentheses.
	f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+2:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	cpu = time.Duration(ut+st) * (time.Second / 100) // USER_HZ
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			rssKB, _ = strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
		}
	}
	return cpu, rssKB, nil
}

func BenchmarkScale(b *testing.B) {
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		b.Skip("needs /proc for the proxy's CPU and memory")
	}
	nHosts, vmsPer := scaleEnv("VNET_SCALE_HOSTS", 64), scaleEnv("VNET_SCALE_VMS", 8)
	dir := b.TempDir()
	bin := filepath.Join(dir, "vnet")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		b.Fatalf("go build: %v\n%s", err, out)
	}
	key, _ := tunnel.GenerateKey()
	keyFile := filepath.Join(dir, "net.key")
	if err := os.WriteFile(keyFile, []byte(key.String()+"\n"), 0o600); err != nil {
		b.Fatal(err)
	}
	linkPort, apiPort := freeLoopbackPort(b), freeLoopbackPort(b)
	api := fmt.Sprintf("http://127.0.0.1:%d/api/v1/", apiPort)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var proxyLog bytes.Buffer
	args := []string{"proxy", "--key-file", keyFile, "--log-level", "warn",
		"--listen", fmt.Sprintf("tcp://127.0.0.1:%d", linkPort), "--api", fmt.Sprintf("127.0.0.1:%d", apiPort)}
	args = append(args, strings.Fields(os.Getenv("VNET_SCALE_PROXY_FLAGS"))...)
	proxy := exec.CommandContext(ctx, bin, args...)
	proxy.Stdout, proxy.Stderr = &proxyLog, &proxyLog
	if err := proxy.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		cancel()
		proxy.Wait()
		if b.Failed() {
			b.Logf("proxy log:\n%s", proxyLog.String())
		}
	}()
	get := func(path string, v any) error {
		resp, err := http.Get(api + path)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		return json.NewDecoder(resp.Body).Decode(v)
	}
	wait := func(what string, d time.Duration, ok func() bool) time.Duration {
		start := time.Now()
		for !ok() {
			if time.Since(start) > d {
				b.Fatalf("timed out after %v waiting for %s", d, what)
			}
			time.Sleep(50 * time.Millisecond)
		}
		return time.Since(start)
	}
	wait("the proxy's API", 10*time.Second, func() bool { var v any; return get("hosts", &v) == nil })
	_, rss0, err := procUsage(proxy.Process.Pid)
	if err != nil {
		b.Fatal(err)
	}

	// The hosts, each with vmsPer VM ports.
	type vm struct {
		port *bridgetest.ChanPort
		mac  bridge.MAC
	}
	var vms []vm
	var hosts []*appliance.Host
	defer func() {
		for _, h := range hosts {
			h.Close()
		}
	}()
	start := time.Now()
	for h := 0; h < nHosts; h++ {
		var ports []appliance.LocalPort
		for v := 0; v < vmsPer; v++ {
			p := bridgetest.NewChanPort(64)
			vms = append(vms, vm{p, bridge.MAC{0x52, 0x54, 0, byte(h >> 8), byte(h), byte(v)}})
			ports = append(ports, appliance.LocalPort{Name: fmt.Sprintf("vm%d", v), Port: p})
		}
		host, err := appliance.NewHost(appliance.HostConfig{Name: fmt.Sprintf("h%d", h+1), Key: key,
			Proxies: []tunnel.Endpoint{{Kind: "tcp", Addr: fmt.Sprintf("127.0.0.1:%d", linkPort)}},
			Listen:  []tunnel.Endpoint{{Kind: "tcp", Addr: "127.0.0.1:0"}}, Ports: ports})
		if err != nil {
			b.Fatal(err)
		}
		hosts = append(hosts, host)
	}
	type hostJSON struct{ Name, State string }
	type linkJSON struct{ Name, Role, State, Via string }
	countUp := func() (n int) {
		var hs []hostJSON
		get("hosts", &hs)
		for _, h := range hs {
			if h.State == "up" {
				n++
			}
		}
		return n
	}
	started := time.Since(start)
	wait(fmt.Sprintf("%d hosts up", nHosts), 2*time.Minute, func() bool { return countUp() == nHosts })
	join := time.Since(start)
	_, rssJoined, _ := procUsage(proxy.Process.Pid)

	// A ring of VMs, each sending to its two neighbours 10 frames a second
	// (7 of 8 pairs inside one host, 2 a host across the star):
	// every host has traffic to report, every second.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		payload := make([]byte, 1400) // 14 KB/s a pair: above the accounting trigger (10 KB/s)
		for {
			select {
			case <-stop:
				return
			case <-t.C:
			}
			for i, v := range vms {
				next, prev := vms[(i+1)%len(vms)], vms[(i+len(vms)-1)%len(vms)]
				v.port.Inject(bridgetest.Frame(next.mac, v.mac, payload))
				v.port.Inject(bridgetest.Frame(prev.mac, v.mac, payload))
			}
		}
	}()
	defer func() { close(stop); wg.Wait() }()
	type matrixJSON struct {
		Entries []struct{ Src, Dst string } `json:"entries"`
	}
	pairs := func() int {
		var m matrixJSON
		get("matrix?last=5s", &m)
		return len(m.Entries)
	}
	want := 2 * len(vms)
	if len(vms) <= 2 {
		want = len(vms)
	}
	wait(fmt.Sprintf("%d matrix pairs at the proxy", want), time.Minute, func() bool { return pairs() >= want })
	cpu0, _, _ := procUsage(proxy.Process.Pid)
	const sample = 10 * time.Second
	time.Sleep(sample)
	cpu1, rssTraffic, _ := procUsage(proxy.Process.Pid)
	cpuPct := 100 * float64(cpu1-cpu0) / float64(sample)
	if path := os.Getenv("VNET_SCALE_HEAP"); path != "" { // the proxy's heap profile, for go tool pprof
		if resp, err := http.Get(strings.TrimSuffix(api, "api/v1/") + "debug/pprof/heap" + os.Getenv("VNET_SCALE_HEAPQ")); err == nil {
			var buf bytes.Buffer
			buf.ReadFrom(resp.Body)
			resp.Body.Close()
			os.WriteFile(path, buf.Bytes(), 0o644)
		}
	}

	// A plan of nHosts fast links (a ring of hosts), all at once.
	for h := 1; h <= nHosts; h++ {
		body := fmt.Sprintf(`{"a":"h%d","b":"h%d","kind":"tcp"}`, h, h%nHosts+1)
		if nHosts == 2 && h == 2 {
			break
		}
		resp, err := http.Post(api+"links", "application/json", strings.NewReader(body))
		if err != nil {
			b.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			b.Fatalf("link add %s: %s", body, resp.Status)
		}
	}
	wantLinks := nHosts
	if nHosts == 2 {
		wantLinks = 1
	}
	converge := wait(fmt.Sprintf("%d fast links up", wantLinks), 2*time.Minute, func() bool {
		var ls []linkJSON
		get("links", &ls)
		up := 0
		for _, l := range ls {
			if l.Role == "fast" && l.State == "up" && l.Via == "direct" {
				up++
			}
		}
		return up == wantLinks
	})
	_, rssEnd, _ := procUsage(proxy.Process.Pid)
	b.ReportMetric(float64(join.Milliseconds()), "join_ms")
	b.ReportMetric(float64(converge.Milliseconds()), "plan_ms")
	b.ReportMetric(cpuPct, "proxy_cpu_%")
	b.ReportMetric(float64(rss0)/1024, "proxy_idle_MB")
	b.ReportMetric(float64(rssTraffic)/1024, "proxy_traffic_MB")
	b.Logf("SCALE: %d hosts x %d VMs: all joined %v after the first started (%v to start them); "+
		"proxy at 1 Hz reports of %d pairs: %.1f%% of a core, RSS %.1f MB idle, %.1f MB joined, %.1f MB under reports, %.1f MB with %d fast links, "+
		"which came up %v after the plan was posted", nHosts, vmsPer, join.Round(time.Millisecond), started.Round(time.Millisecond),
		pairs(), cpuPct, float64(rss0)/1024, float64(rssJoined)/1024, float64(rssTraffic)/1024, float64(rssEnd)/1024, wantLinks, converge.Round(time.Millisecond))
}
