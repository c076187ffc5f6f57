//go:build linux

package main

// A real QEMU live migration through the proxy's --migrate-cmd hook (TCG,
// no root needed):
//
//	proxy --migrate-cmd "<this test binary, as TestQMPHelper>"
//	 ├── host h1: --qemu-socket a.sock   <- VM A, the source QEMU (QMP on a.qmp)
//	 ├── host h2: --qemu-socket b.sock   <- VM B, which pings A (and A pings B)
//	 └── host h3: --qemu-socket a2.sock  <- VM A's target QEMU (-incoming unix:mig.sock)
//
// `vnet ctl migrate A h3` runs the hook, which migrates A's QEMU over
// mig.sock with QMP and returns when the migration completed; the proxy
// then repoints the overlay. A keeps its MAC and IP: B's pings reach it on
// h3, A (its console now the target QEMU's) reaches B, and the proxy lists
// A on h3.

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"vnet/internal/qemutest"
)

// Environment of TestQMPHelper, the hook's QMP client.
const (
	qmpSockEnv = "VNET_QMP_SOCK" // the source QEMU's QMP socket
	qmpURIEnv  = "VNET_QMP_URI"  // where to migrate to, e.g. unix:/tmp/mig.sock
)

func TestQEMUMigrate(t *testing.T) {
	if os.Getenv(qmpSockEnv) != "" {
		t.Skip("running as TestQMPHelper")
	}
	guest, err := qemutest.Find()
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	budget := 4 * time.Minute
	if d, ok := t.Deadline(); ok && time.Until(d)-20*time.Second < budget {
		budget = time.Until(d) - 20*time.Second
	}
	l := newQEMULab(t, guest, budget)
	const macA, ipA, macB, ipB = "52:54:00:66:01:0a", "10.66.1.1", "52:54:00:66:01:0b", "10.66.1.2"
	qmp, mig := l.path("a.qmp"), l.path("mig.sock")

	t.Run("build", l.build)
	if t.Failed() {
		t.FailNow()
	}
	hook := fmt.Sprintf("%s=%s %s=unix:%s %s -test.run='^TestQMPHelper$' -test.v", qmpSockEnv, qmp, qmpURIEnv, mig, self)
	proxyAddr := freePort(t)
	l.proxyURL, l.proxyAPI = "tcp://"+proxyAddr, freePort(t)
	l.daemons["proxy"] = l.start(t, "proxy", []string{l.bin, "proxy", "--key-file", l.key,
		"--listen", l.proxyURL, "--api", l.proxyAPI, "--migrate-cmd", hook, "--migrate-timeout", "2m"})
	for h, sock := range map[string]string{"h1": "a.sock", "h2": "b.sock", "h3": "a2.sock"} {
		l.daemons[h] = l.start(t, h, []string{l.bin, "host", "--name", h, "--proxy", l.proxyURL, "--key-file", l.key,
			"--listen", "tcp://127.0.0.1:0", "--qemu-socket", l.path(sock)})
	}
	l.waitHostsUp(t, "h1", "h2", "h3")
	for _, sock := range []string{"a.sock", "b.sock", "a2.sock"} {
		l.waitFor(t, "a host listening on "+sock, 10*time.Second, func() (bool, string) {
			fi, err := os.Stat(l.path(sock))
			return err == nil && fi.Mode()&os.ModeSocket != 0, fmt.Sprint(err)
		})
	}

	a := qemutest.VM{Name: "a", MAC: macA, IP: ipA + "/24", Peers: []string{ipB},
		Netdev: "stream,server=off,addr.type=unix,addr.path=" + l.path("a.sock"),
		Extra:  []string{"-qmp", "unix:" + qmp + ",server=on,wait=off"}}
	l.vmCfg["a"] = a
	l.vmCfg["b"] = qemutest.VM{Name: "b", MAC: macB, IP: ipB + "/24", Peers: []string{ipA},
		Netdev: "stream,server=off,addr.type=unix,addr.path=" + l.path("b.sock")}
	target := a // the same machine, attached to h3, waiting for the incoming state
	target.Name, target.Netdev = "a-target", "stream,server=off,addr.type=unix,addr.path="+l.path("a2.sock")
	target.Extra = []string{"-incoming", "unix:" + mig}
	l.vmCfg["a-target"] = target
	for _, vm := range []string{"b", "a", "a-target"} {
		l.bootVM(t, vm)
	}
	l.waitConsole(t, "a", 0, "VNET-PING-OK "+ipB+" ")
	l.waitConsole(t, "b", 0, "VNET-PING-OK "+ipA+" ")
	l.waitVMOn(t, macA, "h1")

	start := time.Now()
	var res struct {
		VM          string `json:"vm"`
		From, To    string
		MoveMS      int64  `json:"move_ms"`
		ReachableMS int64  `json:"reachable_ms"`
		Note        string `json:"note"`
	}
	if err := l.ctlLong(&res, "migrate", macA, "h3"); err != nil {
		t.Fatal(err)
	}
	t.Logf("MIGRATE: %+v (%v in all)", res, time.Since(start).Round(time.Millisecond))
	if res.From != "h1" || res.To != "h3" || res.Note != "" {
		t.Errorf("migrate answered %+v", res)
	}
	// B reaches A at its new place (pings sent after the migration), and A
	// (the target's console now) B.
	l.waitConsole(t, "b", l.vms["b"].Size(), "VNET-PING-OK "+ipA+" ")
	l.waitConsole(t, "a-target", 0, "VNET-PING-OK "+ipB+" ")
	l.waitVMOn(t, macA, "h3")
	t.Logf("MIGRATE: B pings A again %v after the migration began", time.Since(start).Round(time.Millisecond))
}

// waitVMOn waits until the proxy lists the VM mac on host alone.
func (l *qemuLab) waitVMOn(t *testing.T, mac, host string) {
	t.Helper()
	l.waitFor(t, fmt.Sprintf("VM %s on %s", mac, host), 30*time.Second, func() (bool, string) {
		var vms []qemuVMJSON
		if err := l.ctl(&vms, "vms"); err != nil {
			return false, err.Error()
		}
		var on []string
		for _, v := range vms {
			if v.MAC == mac {
				on = append(on, v.Host)
			}
		}
		return len(on) == 1 && on[0] == host, fmt.Sprintf("%s is on %v", mac, on)
	})
}

// ctlLong is ctl without the client's timeout, for a migration.
func (l *qemuLab) ctlLong(v any, args ...string) error {
	argv := append([]string{"ctl", "--api", l.proxyAPI, "--json"}, args...)
	cmd := exec.CommandContext(l.ctx, l.bin, argv...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("vnet ctl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return json.Unmarshal(out, v)
}

// TestQMPHelper is the migration hook of TestQEMUMigrate: a QMP client that
// migrates the source QEMU and returns when the migration has completed.
func TestQMPHelper(t *testing.T) {
	sock, uri := os.Getenv(qmpSockEnv), os.Getenv(qmpURIEnv)
	if sock == "" {
		t.Skip("the migration hook of TestQEMUMigrate; runs only when it re-executes the test binary")
	}
	c, err := net.DialTimeout("unix", sock, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Minute))
	r := bufio.NewReader(c)
	// call sends a command and returns its "return", skipping events.
	call := func(cmd string, args any) json.RawMessage {
		t.Helper()
		b, _ := json.Marshal(map[string]any{"execute": cmd, "arguments": args})
		if _, err := c.Write(append(b, '\n')); err != nil {
			t.Fatal(err)
		}
		for {
			line, err := r.ReadBytes('\n')
			if err != nil {
				t.Fatalf("QMP %s: %v", cmd, err)
			}
			var m struct {
				Return json.RawMessage `json:"return"`
				Error  *struct {
					Desc string `json:"desc"`
				} `json:"error"`
			}
			if json.Unmarshal(line, &m) != nil {
				continue
			}
			if m.Error != nil {
				t.Fatalf("QMP %s: %s", cmd, m.Error.Desc)
			}
			if m.Return != nil {
				return m.Return
			}
		}
	}
	if _, err := r.ReadBytes('\n'); err != nil { // the greeting
		t.Fatal(err)
	}
	call("qmp_capabilities", map[string]any{})
	call("migrate", map[string]any{"uri": uri})
	for {
		var st struct {
			Status string `json:"status"`
			Error  string `json:"error-desc"`
		}
		json.Unmarshal(call("query-migrate", map[string]any{}), &st)
		switch st.Status {
		case "completed":
			t.Logf("migrated to %s", uri)
			return
		case "failed", "cancelled":
			t.Fatalf("migration %s: %s", st.Status, st.Error)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
