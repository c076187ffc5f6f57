//go:build linux

package main

// End-to-end test with real QEMU guests (TCG, no KVM, no root):
//
//	proxy (tcp://127.0.0.1:P)
//	 ├── host h1: --qemu-socket a.sock  <- VM A, QEMU stream client (server=off)
//	 │            --qemu-connect b.sock -> VM B, QEMU stream server (server=on)
//	 └── host h2: --qemu-dgram c-ours.sock:c-vm.sock <-> VM C, QEMU dgram
//
// The guests are a Debian kernel and a busybox initramfs built at test time
// (internal/qemutest). A (10.66.0.1) pings B (same host) and C (through the
// proxy); B (10.66.0.2) pings C (10.66.0.3); the guests print VNET-PING-OK
// and VNET-PING-FAIL markers on their serial consoles. Then, each time
// waiting for the markers again:
//
//   - the proxy lists the three MACs on the right hosts, and routes A to C
//     over the star;
//   - A's QEMU is killed (SIGKILL) and started again: it reattaches to a.sock;
//   - h1 is stopped (SIGTERM, exit status 0) while B's QEMU keeps running
//     as a server: B's pings to C fail; h1 is started again with the same
//     command, re-dials b.sock, and B reaches C again;
//   - A's QEMU, cut off by that restart for good (a QEMU 7.2 client never
//     reconnects), is restarted and reaches B and C through the new h1;
//   - B's QEMU (the server) is killed and started again: h1 re-dials it;
//   - C's QEMU (dgram) is killed (B's pings fail) and started again;
//   - h2, which serves C's dgram socket, is restarted.
//
// Skipped when QEMU, a kernel or busybox is missing, unless CI=true.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"vnet/internal/qemutest"
)

const (
	qemuIPA, qemuIPB, qemuIPC    = "10.66.0.1", "10.66.0.2", "10.66.0.3"
	qemuMACA, qemuMACB, qemuMACC = "52:54:00:66:00:0a", "52:54:00:66:00:0b", "52:54:00:66:00:0c"
	qemuBootWait                 = 2 * time.Minute // one wait for a marker: a TCG boot takes 3-6 s idle, over 15 s on a loaded 2-core CI machine
)

// qemuLab is the test's world: binaries, daemons and VMs, by name.
type qemuLab struct {
	ctx    context.Context
	dir    string // short temp dir: unix socket paths must fit 108 bytes
	bin    string
	key    string
	guest  *qemutest.Guest
	initrd string

	proxyURL, proxyAPI string
	hostArgv           map[string][]string // h1, h2 -> command line
	vmCfg              map[string]qemutest.VM

	procs   []*qemutest.Proc          // every process ever started, for cleanup and logs
	daemons map[string]*qemutest.Proc // proxy, h1, h2: the current run
	vms     map[string]*qemutest.Proc // a, b, c: the current run
	runs    map[string]int            // starts per name, for log file names
}

func TestQEMU(t *testing.T) {
	guest, err := qemutest.Find()
	if err == nil {
		if _, lerr := exec.LookPath("go"); lerr != nil {
			err = &qemutest.MissingError{What: []string{"the go command"}}
		}
	}
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal(err)
		}
		t.Skip(err)
	}

	budget := 5 * time.Minute
	if d, ok := t.Deadline(); ok && time.Until(d)-20*time.Second < budget {
		budget = time.Until(d) - 20*time.Second
	}
	l := newQEMULab(t, guest, budget)
	t.Logf("guest: kernel %s, busybox %s, modules %v", guest.Kernel, guest.Busybox, guest.Modules)

	steps := []struct {
		name string
		f    func(t *testing.T)
	}{
		{"build", l.build},
		{"daemons", l.startDaemons},
		{"boot_and_ping", l.bootAndPing},
		{"vms", l.checkVMs},
		{"qemu_restart", l.qemuRestart},
		{"host_restart", l.hostRestart},
		{"qemu_client_after_host_restart", l.clientAfterHostRestart},
		{"qemu_server_restart", l.serverRestart},
		{"qemu_dgram_restart", l.dgramRestart},
		{"dgram_host_restart", l.dgramHostRestart},
	}
	start := time.Now()
	for _, s := range steps {
		t0 := time.Now()
		ok := t.Run(s.name, s.f)
		t.Logf("%s: %v (total %v)", s.name, time.Since(t0).Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
		if !ok {
			t.FailNow()
		}
	}
}

// build builds vnet, makes the network key and the guest's initramfs.
func (l *qemuLab) build(t *testing.T) {
	l.bin = filepath.Join(l.dir, "vnet")
	cmd := exec.CommandContext(l.ctx, "go", "build", "-o", l.bin, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	out, err := exec.CommandContext(l.ctx, l.bin, "keygen").Output()
	if err != nil {
		t.Fatalf("vnet keygen: %v", err)
	}
	l.key = filepath.Join(l.dir, "net.key")
	if err := os.WriteFile(l.key, out, 0o600); err != nil {
		t.Fatal(err)
	}
	if l.initrd, err = l.guest.BuildInitramfs(l.dir); err != nil {
		t.Fatal(err)
	}
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func (l *qemuLab) path(name string) string { return filepath.Join(l.dir, name) }

// start starts a process named name (proxy, h1, a, ...) with a fresh log.
func (l *qemuLab) start(t *testing.T, name string, argv []string) *qemutest.Proc {
	t.Helper()
	l.runs[name]++
	p, err := qemutest.Start(name, l.path(fmt.Sprintf("%s.%d.log", name, l.runs[name])), argv...)
	if err != nil {
		t.Fatal(err)
	}
	l.procs = append(l.procs, p)
	return p
}

func (l *qemuLab) startDaemons(t *testing.T) {
	proxyAddr := freePort(t)
	l.proxyURL, l.proxyAPI = "tcp://"+proxyAddr, freePort(t)
	l.daemons["proxy"] = l.start(t, "proxy", []string{l.bin, "proxy", "--key-file", l.key,
		"--listen", l.proxyURL, "--api", l.proxyAPI})
	l.waitFor(t, "the proxy's API", 20*time.Second, func() (bool, string) {
		err := l.ctl(nil, "status")
		return err == nil, fmt.Sprint(err)
	})

	l.hostArgv["h1"] = []string{l.bin, "host", "--name", "h1", "--proxy", l.proxyURL, "--key-file", l.key,
		"--listen", "tcp://127.0.0.1:0", "--api", freePort(t),
		"--qemu-socket", l.path("a.sock"), "--qemu-connect", l.path("b.sock")}
	l.hostArgv["h2"] = []string{l.bin, "host", "--name", "h2", "--proxy", l.proxyURL, "--key-file", l.key,
		"--listen", "tcp://127.0.0.1:0", "--api", freePort(t),
		"--qemu-dgram", l.path("c-ours.sock") + ":" + l.path("c-vm.sock")}
	for _, h := range []string{"h1", "h2"} {
		l.daemons[h] = l.start(t, h, l.hostArgv[h])
	}
	l.waitHostsUp(t, "h1", "h2")
}

func (l *qemuLab) bootAndPing(t *testing.T) {
	l.vmCfg["a"] = qemutest.VM{Name: "a", MAC: qemuMACA, IP: qemuIPA + "/24", Peers: []string{qemuIPB, qemuIPC},
		Netdev: "stream,server=off,addr.type=unix,addr.path=" + l.path("a.sock")}
	l.vmCfg["b"] = qemutest.VM{Name: "b", MAC: qemuMACB, IP: qemuIPB + "/24", Peers: []string{qemuIPC},
		Netdev: "stream,server=on,addr.type=unix,addr.path=" + l.path("b.sock")}
	l.vmCfg["c"] = qemutest.VM{Name: "c", MAC: qemuMACC, IP: qemuIPC + "/24",
		Netdev: "dgram,local.type=unix,local.path=" + l.path("c-vm.sock") + ",remote.type=unix,remote.path=" + l.path("c-ours.sock")}

	// QEMU 7.2 as a stream client gives up at once if nobody listens.
	l.waitFor(t, "h1 listening on a.sock", 10*time.Second, func() (bool, string) {
		fi, err := os.Stat(l.path("a.sock"))
		return err == nil && fi.Mode()&os.ModeSocket != 0, fmt.Sprint(err)
	})
	for _, vm := range []string{"c", "b", "a"} {
		l.bootVM(t, vm)
	}
	l.waitConsole(t, "b", 0, "VNET-PING-OK "+qemuIPC+" ")
	l.waitConsole(t, "a", 0, "VNET-PING-OK "+qemuIPB+" ")
	l.waitConsole(t, "a", 0, "VNET-PING-OK "+qemuIPC+" ")
}

func (l *qemuLab) bootVM(t *testing.T, name string) {
	t.Helper()
	l.vms[name] = l.start(t, name, l.guest.Argv(l.initrd, l.vmCfg[name]))
}

// waitConsole waits for a line containing s on VM name's console after
// byte offset from, and returns the offset past that line.
func (l *qemuLab) waitConsole(t *testing.T, name string, from int, s string) int {
	t.Helper()
	start := time.Now()
	ctx, cancel := context.WithTimeout(l.ctx, qemuBootWait)
	defer cancel()
	errDead := errors.New("a daemon died")
	end, err := l.vms[name].WaitFor(ctx, from, s, func() error {
		if l.deadDaemon() != "" {
			return errDead
		}
		return nil
	})
	if err != nil {
		if err == errDead {
			t.Fatalf("waiting for %q from VM %s: %s", s, name, l.deadDaemon())
		}
		t.Fatalf("waiting for %q from VM %s: %v; console:\n%s", s, name, err, l.vms[name].Tail(30))
	}
	t.Logf("VM %s: %q after %v", name, strings.TrimSpace(s), time.Since(start).Round(time.Millisecond))
	return end
}

// deadDaemon describes a daemon that exited although it should run, or "".
func (l *qemuLab) deadDaemon() string {
	for _, name := range []string{"proxy", "h1", "h2"} {
		if p := l.daemons[name]; p != nil {
			if exited, err := p.Exited(); exited {
				return fmt.Sprintf("%s exited unexpectedly (%v); its log:\n%s", name, err, p.Tail(30))
			}
		}
	}
	return ""
}

// ctl runs `vnet ctl --json args...` against the proxy and decodes the
// answer into v (if not nil).
func (l *qemuLab) ctl(v any, args ...string) error {
	ctx, cancel := context.WithTimeout(l.ctx, 15*time.Second)
	defer cancel()
	argv := append([]string{"ctl", "--api", l.proxyAPI, "--timeout", "5s", "--json"}, args...)
	cmd := exec.CommandContext(ctx, l.bin, argv...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("vnet ctl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	if v == nil {
		return nil
	}
	if err := json.Unmarshal(out, v); err != nil {
		return fmt.Errorf("vnet ctl %s: %w in %q", strings.Join(args, " "), err, out)
	}
	return nil
}

// waitFor polls ok every 200 ms until it holds; it fails the test after d
// with ok's last explanation, or at once if a daemon died.
func (l *qemuLab) waitFor(t *testing.T, what string, d time.Duration, ok func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		done, why := ok()
		if done {
			return
		}
		if dead := l.deadDaemon(); dead != "" {
			t.Fatalf("waiting for %s: %s", what, dead)
		}
		if time.Now().After(deadline) || l.ctx.Err() != nil {
			t.Fatalf("timed out after %v waiting for %s: %s", d, what, why)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// waitHostsUp waits until the proxy reports the hosts up.
func (l *qemuLab) waitHostsUp(t *testing.T, hosts ...string) {
	t.Helper()
	l.waitFor(t, "hosts "+strings.Join(hosts, ", ")+" up", 20*time.Second, func() (bool, string) {
		var hs []e2eHostJSON
		if err := l.ctl(&hs, "hosts"); err != nil {
			return false, err.Error()
		}
		st := map[string]string{}
		for _, h := range hs {
			st[h.Name] = h.State
		}
		for _, h := range hosts {
			if st[h] != "up" {
				return false, fmt.Sprint(st)
			}
		}
		return true, ""
	})
}

// checkVMs waits until the proxy lists the three guests on their hosts.
func (l *qemuLab) checkVMs(t *testing.T) {
	want := map[string]string{qemuMACA: "h1", qemuMACB: "h1", qemuMACC: "h2"}
	var last []qemuVMJSON
	l.waitFor(t, "vnet ctl vms to list the three guests", 20*time.Second, func() (bool, string) {
		if err := l.ctl(&last, "vms"); err != nil {
			return false, err.Error()
		}
		got := map[string]string{}
		for _, v := range last {
			got[v.MAC] = v.Host
		}
		for mac, host := range want {
			if got[mac] != host {
				return false, fmt.Sprintf("want %v, have %+v", want, last)
			}
		}
		return true, ""
	})
	sort.Slice(last, func(i, j int) bool { return last[i].MAC < last[j].MAC })
	for _, v := range last {
		t.Logf("vm %s on %s port %s ips %v", v.MAC, v.Host, v.Port, v.IPs)
	}

	// A to C crosses the star: h1, the proxy, then a port on h2.
	var r e2eRouteJSON
	if err := l.ctl(&r, "route", qemuMACA, qemuMACC); err != nil {
		t.Fatal(err)
	}
	t.Logf("route A -> C: %s", r)
	n := len(r.Hops)
	if !r.Delivered || n < 3 || r.Hops[0].Host != "h1" || r.Hops[n-1].Host != "h2" ||
		!strings.HasPrefix(r.Hops[n-1].To, "port:") {
		t.Errorf("route A -> C = %s, want h1 ... proxy ... h2:port:..., delivered", r)
	}
}

// qemuVMJSON is a row of `vnet ctl vms --json` (DESIGN.md, "JSON shapes").
type qemuVMJSON struct {
	MAC  string   `json:"mac"`
	Host string   `json:"host"`
	Port string   `json:"port"`
	IPs  []string `json:"ips"`
}

// restartVM kills VM name's QEMU with SIGKILL and starts it again with the
// same command line.
func (l *qemuLab) restartVM(t *testing.T, name string) {
	t.Helper()
	if err := l.vms[name].Kill(); err != nil {
		t.Fatal(err)
	}
	l.bootVM(t, name)
}

// qemuRestart: the stream client A is killed and started again; h1's
// --qemu-socket accepts the new connection.
func (l *qemuLab) qemuRestart(t *testing.T) {
	l.restartVM(t, "a")
	l.waitConsole(t, "a", 0, "VNET-PING-OK "+qemuIPB+" ")
	l.waitConsole(t, "a", 0, "VNET-PING-OK "+qemuIPC+" ")
}

// stopHost stops host h with SIGTERM, which must end it with status 0.
func (l *qemuLab) stopHost(t *testing.T, h string) {
	t.Helper()
	p := l.daemons[h]
	l.daemons[h] = nil // its exit is expected now
	if err := p.Signal(syscall.SIGTERM, 15*time.Second); err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Fatal(err)
		}
		t.Errorf("%s exited with %v after SIGTERM, want status 0; log:\n%s", h, err, p.Tail(20))
	}
}

// hostRestart: h1 is stopped with SIGTERM while B's QEMU server keeps
// running; B's pings to C fail; h1 is started again with the same command,
// re-dials b.sock, and B reaches C again.
func (l *qemuLab) hostRestart(t *testing.T) {
	l.stopHost(t, "h1")
	off := l.vms["b"].Size()
	off = l.waitConsole(t, "b", off, "VNET-PING-FAIL "+qemuIPC+" ")

	l.daemons["h1"] = l.start(t, "h1", l.hostArgv["h1"])
	l.waitHostsUp(t, "h1", "h2")
	l.waitConsole(t, "b", off, "VNET-PING-OK "+qemuIPC+" ")
}

// clientAfterHostRestart: A's QEMU (a stream client) lost h1 for good in
// the restart; a restarted QEMU attaches to the new h1's a.sock.
func (l *qemuLab) clientAfterHostRestart(t *testing.T) {
	l.restartVM(t, "a")
	l.waitConsole(t, "a", 0, "VNET-PING-OK "+qemuIPB+" ")
	l.waitConsole(t, "a", 0, "VNET-PING-OK "+qemuIPC+" ")
	if dead := l.deadDaemon(); dead != "" {
		t.Fatal(dead)
	}
}

// serverRestart: B's QEMU, the stream server, is killed and started
// again; h1's --qemu-connect dials the new server.
func (l *qemuLab) serverRestart(t *testing.T) {
	l.restartVM(t, "b")
	l.waitConsole(t, "b", 0, "VNET-PING-OK "+qemuIPC+" ")
}

// dgramRestart: C's QEMU (dgram) is killed and started again; h2 sends to
// the new one. B, still running, reaches it again.
func (l *qemuLab) dgramRestart(t *testing.T) {
	if err := l.vms["c"].Kill(); err != nil {
		t.Fatal(err)
	}
	off := l.vms["b"].Size()
	off = l.waitConsole(t, "b", off, "VNET-PING-FAIL "+qemuIPC+" ")
	l.bootVM(t, "c")
	l.waitConsole(t, "b", off, "VNET-PING-OK "+qemuIPC+" ")
}

// dgramHostRestart: h2, which serves C's dgram socket, is restarted; B
// reaches C again.
func (l *qemuLab) dgramHostRestart(t *testing.T) {
	l.stopHost(t, "h2")
	off := l.vms["b"].Size()
	off = l.waitConsole(t, "b", off, "VNET-PING-FAIL "+qemuIPC+" ")
	l.daemons["h2"] = l.start(t, "h2", l.hostArgv["h2"])
	l.waitHostsUp(t, "h1", "h2")
	l.waitConsole(t, "b", off, "VNET-PING-OK "+qemuIPC+" ")
}

// dump logs the proxy's view and every log, consoles and daemons, every
// run: the beginning (a guest's boot) and the end.
func (l *qemuLab) dump(t *testing.T) {
	if l.proxyAPI != "" && l.daemons["proxy"] != nil {
		for _, what := range []string{"hosts", "links", "vms"} {
			var v json.RawMessage
			err := l.ctl(&v, what)
			t.Logf("==== vnet ctl %s: %s %v", what, v, err)
		}
	}
	for _, p := range l.procs {
		exited, err := p.Exited()
		state := "running"
		if exited {
			state = fmt.Sprintf("exited: %v", err)
		}
		t.Logf("==== %s (%s, %s) ====\n%s", p.Name, filepath.Base(p.Log), state, qemutest.HeadTail(p.Output(), 15, 30))
	}
}
