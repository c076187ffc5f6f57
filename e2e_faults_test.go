package main

// The faults test: one long TCP transfer between two VMs, checked byte for
// byte at the end, runs through every fault a deployment meets: the fast
// path cut and restored, the proxy killed (kill -9) and restarted, a host
// daemon killed and restarted, and a host's underlay going down and up.
//
//	switch ns:  br0 ── pup ── up  (proxy, 192.168.250.1)
//	             ├──── pu1 ── u1  (host h1, 192.168.250.11; VM 10.89.0.11 on TAP tv)
//	             └──── pu2 ── u2  (host h2, 192.168.250.12; VM 10.89.0.12 on TAP tv)
//
// A host daemon that dies takes a TAP device it created with it, and the
// VM's side of the transfer with it. A VM's TAP belongs to the VM (QEMU
// holds it, or it is persistent), so here each host's VM is a persistent
// TAP device made with `ip tuntap` in the host's own namespace, where the
// daemon attaches to it by name: the VM's TCP socket outlives the daemon.

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"vnet/appliance"
	"vnet/internal/netns"
)

const (
	faultsPace  = 6 << 20   // bytes a second: the transfer lasts while the faults run
	faultsBytes = 600 << 20 // 100 s at faultsPace
)

func TestE2EFaults(t *testing.T) {
	e := newE2ENet(t, "vf", 5*time.Minute, "network namespaces, a bridge, veth pairs and TAP devices", []string{"nft"},
		func(e *e2eNet) { e.dumpState(t) })
	f := &faults{e: e, stateDir: filepath.Join(e.dir, "proxy-state")}
	for _, s := range []struct {
		name string
		fn   func(t *testing.T)
	}{
		{"build", e.build},
		{"underlay", e.underlay},
		{"daemons", f.daemons},
		{"fast_path", f.fastPath},
		{"transfer_through_faults", f.transferThroughFaults},
	} {
		if !t.Run(s.name, s.fn) {
			t.FailNow()
		}
	}
}

type faults struct {
	e        *e2eNet
	stateDir string
	proxyN   int
	hostN    map[string]int
}

func (f *faults) vmIP(h string) string { return "10.89.0.1" + h[1:] }

func (f *faults) startProxy(t *testing.T) {
	e := f.e
	f.proxyN++
	p, err := e.lab.Start("proxy", e.nsProxy, filepath.Join(e.dir, fmt.Sprintf("proxy-%d.log", f.proxyN)), nil,
		e.bin, "proxy", "--key-file", e.key, "--listen", e2eProxyURL, "--api", e2eProxyAPI, "--state-dir", f.stateDir)
	if err != nil {
		t.Fatal(err)
	}
	e.proxy, e.expect[p] = p, true
}

func (f *faults) startHost(t *testing.T, h string) {
	e := f.e
	f.hostN[h]++
	p, err := e.lab.Start(h, e.nsHost[h], filepath.Join(e.dir, fmt.Sprintf("%s-%d.log", h, f.hostN[h])), nil,
		e.bin, "host", "--name", h, "--proxy", e2eProxyURL, "--key-file", e.key,
		"--listen", "udp://:0", "--tap", "tv", "--api", e2eHostAPI)
	if err != nil {
		t.Fatal(err)
	}
	e.hosts[h], e.expect[p] = p, true
}

// daemons makes each host's persistent TAP with its VM's address and
// starts the proxy and the hosts.
func (f *faults) daemons(t *testing.T) {
	e := f.e
	f.hostN = map[string]int{}
	for _, h := range []string{"h1", "h2"} {
		ns := e.nsHost[h]
		e.run(t, ns, "ip", "tuntap", "add", "dev", "tv", "mode", "tap")
		e.run(t, ns, "ip", "addr", "add", f.vmIP(h)+"/24", "dev", "tv")
		e.run(t, ns, "ip", "link", "set", "tv", "up")
		mac := strings.ToLower(strings.TrimSpace(e.run(t, ns, "cat", "/sys/class/net/tv/address")))
		e.vms = append(e.vms, &e2eVM{name: "v" + h[1:], host: h, ns: ns, tap: "tv", ip: f.vmIP(h), mac: mac})
	}
	f.startProxy(t)
	for _, h := range []string{"h1", "h2"} {
		f.startHost(t, h)
	}
	e.waitHostsUp(t, 15*time.Second)
	e.pingUntil(t, e.nsHost["h1"], f.vmIP("h2"), 15*time.Second)
}

func (f *faults) fastPath(t *testing.T) {
	e := f.e
	if err := e.ctl(nil, "link", "add", "h1", "h2", "--kind", "udp"); err != nil {
		t.Fatal(err)
	}
	e.waitLink(t, "h1-h2", "up", 15*time.Second)
}

// transferThroughFaults starts the paced transfer, injects the faults one
// after the other while it runs, waiting each time until the overlay has
// recovered, and then checks that every byte arrived intact.
func (f *faults) transferThroughFaults(t *testing.T) {
	e := f.e
	ctx, cancel := context.WithTimeout(e.ctx, 4*time.Minute)
	defer cancel()
	addr := net.JoinHostPort(f.vmIP("h2"), "9000")
	recv := e.helperCmd(t, ctx, e.nsHost["h2"], "recv", addr, "0")
	recv.Env = append(recv.Env, e2eDeadlineEnv+"=4m")
	var recvOut, sendOut bytes.Buffer
	recv.Stdout, recv.Stderr = &recvOut, &recvOut
	if err := recv.Start(); err != nil {
		t.Fatal(err)
	}
	send := e.helperCmd(t, ctx, e.nsHost["h1"], "send", addr, strconv.Itoa(faultsBytes))
	send.Env = append(send.Env, e2ePaceEnv+"="+strconv.Itoa(faultsPace))
	send.Stdout, send.Stderr = &sendOut, &sendOut
	start := time.Now()
	if err := send.Start(); err != nil {
		t.Fatal(err)
	}
	sent := make(chan error, 1)
	go func() { sent <- send.Wait() }()
	time.Sleep(3 * time.Second) // under way on the fast path

	injected := 0
	for _, fault := range []struct {
		name string
		fn   func(t *testing.T)
	}{
		{"fast path cut for 5 s", f.cutFastPath},
		{"proxy killed and restarted", f.restartProxy},
		{"host h1 killed and restarted", f.restartHost},
		{"h1's underlay down for 3 s, twice", f.flapUnderlay},
	} {
		at := time.Since(start)
		fault.fn(t)
		injected++
		healed := time.Since(start)
		f.waitProgress(t, 4<<20, 30*time.Second)
		t.Logf("FAULT %d at %v: %s; overlay healed %v later, the transfer moving again %v later", injected,
			at.Round(100*time.Millisecond), fault.name, (healed - at).Round(100*time.Millisecond),
			(time.Since(start) - at).Round(100*time.Millisecond))
		select {
		case err := <-sent:
			t.Fatalf("the transfer ended (%v) before the faults did, after %d of them; make it longer\n%s",
				err, injected, sendOut.String())
		default:
		}
	}
	faultsDone := time.Since(start)

	sendErr := <-sent
	if sendErr != nil {
		cancel()
	}
	recvErr := recv.Wait()
	if sendErr != nil || recvErr != nil {
		t.Fatalf("transfer: sender: %v\n%s\nreceiver: %v\n%s", sendErr, sendOut.String(), recvErr, recvOut.String())
	}
	sn, ssum, err := e2eParseResult(sendOut.String())
	if err != nil {
		t.Fatalf("sender: %v", err)
	}
	rn, rsum, err := e2eParseResult(recvOut.String())
	if err != nil {
		t.Fatalf("receiver: %v", err)
	}
	if sn != faultsBytes || rn != sn || rsum != ssum {
		t.Fatalf("sent %d bytes sha256 %s, received %d bytes sha256 %s", sn, ssum, rn, rsum)
	}
	t.Logf("FAULTS: %d faults in %v; %d MiB arrived intact (sha256 %s…) after %v, 0 bytes lost",
		injected, faultsDone.Round(100*time.Millisecond), rn>>20, rsum[:16], time.Since(start).Round(100*time.Millisecond))
}

// delivered is how many bytes h2's daemon has written to its VM's TAP.
func (f *faults) delivered() (uint64, error) {
	var st appliance.Status
	if err := f.e.ctlAt(f.e.nsHost["h2"], e2eHostAPI, &st, "status"); err != nil {
		return 0, err
	}
	for _, p := range st.Ports {
		if p.Name == "tv" {
			return p.TxBytes, nil
		}
	}
	return 0, fmt.Errorf("no port tv in h2's status: %+v", st.Ports)
}

// waitProgress waits until another n bytes have reached h2's VM.
func (f *faults) waitProgress(t *testing.T, n uint64, d time.Duration) {
	t.Helper()
	from, err := f.delivered()
	if err != nil {
		t.Fatal(err)
	}
	f.e.waitFor(t, fmt.Sprintf("%d more bytes delivered to h2's VM", n), d, func() (bool, string) {
		now, err := f.delivered()
		if err != nil {
			return false, err.Error()
		}
		return now >= from+n, fmt.Sprintf("%d bytes since the fault", now-from)
	})
}

// cutFastPath drops everything between the hosts' underlay addresses for
// 5 s: the fast link goes down, traffic takes the star, the link comes back.
func (f *faults) cutFastPath(t *testing.T) {
	f.e.cutUnderlay(t, f.e.nsHost["h1"], "192.168.250.12", 5*time.Second)
	f.e.waitLink(t, "h1-h2", "up", 30*time.Second)
}

// cutUnderlay drops everything between namespace ns and the underlay
// address peer, both ways, for hold, with an nftables table of its own.
func (e *e2eNet) cutUnderlay(t *testing.T, ns, peer string, hold time.Duration) {
	t.Helper()
	table := e.lab.Prefix() + "cut"
	rules := fmt.Sprintf(`table inet %s {
	chain in { type filter hook input priority 0; policy accept; ip saddr %s drop; }
	chain out { type filter hook output priority 0; policy accept; ip daddr %s drop; }
}
`, table, peer, peer)
	cmd := netns.Command(e.ctx, ns, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft: %v: %s", err, out)
	}
	time.Sleep(hold)
	e.run(t, ns, "nft", "delete", "table", "inet", table)
}

func (f *faults) restartProxy(t *testing.T) {
	e := f.e
	e.expect[e.proxy] = false
	if err := e.proxy.Kill(); err != nil {
		t.Fatal(err)
	}
	f.startProxy(t)
	e.waitHostsUp(t, 30*time.Second)
	e.waitLink(t, "h1-h2", "up", 30*time.Second)
}

func (f *faults) restartHost(t *testing.T) {
	e := f.e
	p := e.hosts["h1"]
	e.expect[p] = false
	if err := p.Kill(); err != nil {
		t.Fatal(err)
	}
	<-p.Done()
	f.startHost(t, "h1")
	e.waitFor(t, "the restarted h1's API", 15*time.Second, func() (bool, string) {
		err := e.ctlAt(e.nsHost["h1"], e2eHostAPI, nil, "status")
		return err == nil, fmt.Sprint(err)
	})
	e.waitHostsUp(t, 30*time.Second)
	e.waitLink(t, "h1-h2", "up", 30*time.Second)
}

func (f *faults) flapUnderlay(t *testing.T) {
	e := f.e
	ns := e.nsHost["h1"]
	for range 2 {
		e.run(t, ns, "ip", "link", "set", "eth0", "down")
		time.Sleep(3 * time.Second)
		e.run(t, ns, "ip", "link", "set", "eth0", "up")
		time.Sleep(time.Second)
	}
	e.waitHostsUp(t, 30*time.Second)
	e.waitLink(t, "h1-h2", "up", 30*time.Second)
}
