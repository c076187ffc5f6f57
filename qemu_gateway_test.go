//go:build linux

package main

// End-to-end test of the rootless netstack gateway with a real QEMU guest:
//
//	test's servers on 127.0.0.1: HTTP (P), DNS (D)
//	proxy --netstack 10.77.0.1/24 --dns 127.0.0.1:D --forward tcp:127.0.0.1:F=10.77.0.2:8000
//	 └── host h1 --qemu-socket g.sock  <- guest: DHCP, nslookup, wget, httpd
//
// The guest gets 10.77.0.2 by DHCP (router, DNS and MTU from the
// gateway), resolves a name through the gateway's DNS relay, fetches
// http://10.77.0.1:P/ (the proxy machine's loopback through the NAT), and
// serves HTTP on :8000, which a client on this machine reaches through
// the --forward. Proxy, host and QEMU all run as an ordinary user (nobody,
// when the test runs as root).

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"vnet/internal/qemutest"
)

const (
	gwTestName = "vnet-gw-test.example."
	gwTestAddr = "192.0.2.77" // the DNS answer (documentation range; nothing is sent to it)
)

func TestNetstackGateway(t *testing.T) {
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
	budget := 4 * time.Minute
	if d, ok := t.Deadline(); ok && time.Until(d)-20*time.Second < budget {
		budget = time.Until(d) - 20*time.Second
	}
	l := newQEMULab(t, guest, budget)
	l.build(t)
	// Unprivileged: every daemon and QEMU run as nobody when we are root.
	var asUser []string
	if os.Geteuid() == 0 {
		setpriv, err := exec.LookPath("setpriv")
		if err != nil {
			t.Fatal("running as root, need setpriv (util-linux) to drop privileges")
		}
		asUser = []string{setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "--"}
		for _, p := range []string{l.dir, l.bin, l.key, l.initrd} {
			if err := os.Chown(p, 65534, 65534); err != nil {
				t.Fatal(err)
			}
		}
	}

	httpAddr := serveHTTP(t, "hello from the proxy machine")
	dnsAddr := serveDNS(t, gwTestName, gwTestAddr)
	fwd := freePort(t)
	proxyAddr := freePort(t)
	l.proxyURL, l.proxyAPI = "tcp://"+proxyAddr, freePort(t)
	l.daemons["proxy"] = l.start(t, "proxy", append(asUser, l.bin, "proxy", "--key-file", l.key,
		"--listen", l.proxyURL, "--api", l.proxyAPI, "--netstack", "10.77.0.1/24", "--dns", dnsAddr,
		"--forward", "tcp:"+fwd+"=10.77.0.2:8000"))
	l.waitFor(t, "the proxy's API", 20*time.Second, func() (bool, string) {
		err := l.ctl(nil, "status")
		return err == nil, fmt.Sprint(err)
	})
	sock := l.path("g.sock")
	l.daemons["h1"] = l.start(t, "h1", append(asUser, l.bin, "host", "--name", "h1", "--proxy", l.proxyURL,
		"--key-file", l.key, "--qemu-socket", sock))
	l.waitHostsUp(t, "h1")
	l.waitFor(t, "h1 listening on g.sock", 10*time.Second, func() (bool, string) {
		fi, err := os.Stat(sock)
		return err == nil && fi.Mode()&os.ModeSocket != 0, fmt.Sprint(err)
	})

	_, httpPort, _ := net.SplitHostPort(httpAddr)
	l.vmCfg["g"] = qemutest.VM{Name: "g", MAC: "52:54:00:77:00:02", IP: "dhcp",
		Params: []string{"vnetresolve=" + strings.TrimSuffix(gwTestName, "."), "vnetfetch=10.77.0.1:" + httpPort, "vnetserve=8000"},
		Netdev: "stream,server=off,addr.type=unix,addr.path=" + sock}
	l.vms["g"] = l.start(t, "g", append(asUser, l.guest.Argv(l.initrd, l.vmCfg["g"])...))
	if os.Geteuid() == 0 {
		// /proc/PID/status, not the directory's owner: a process that
		// changed credentials is not dumpable, and its /proc is root's.
		l.waitFor(t, "QEMU running as nobody", 10*time.Second, func() (bool, string) {
			st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", l.vms["g"].Pid()))
			uid := regexp.MustCompile(`(?m)^Uid:\s+(\d+)`).FindSubmatch(st)
			return err == nil && uid != nil && string(uid[1]) == "65534", fmt.Sprintf("%s %v", uid, err)
		})
	}

	l.waitConsole(t, "g", 0, "VNET-DHCP 10.77.0.2/24 10.77.0.1 10.77.0.1 1500")
	l.waitConsole(t, "g", 0, "VNET-DNS-OK "+gwTestAddr)
	l.waitConsole(t, "g", 0, "VNET-HTTP-OK hello from the proxy machine")
	l.waitConsole(t, "g", 0, "VNET-SERVE 8000")
	var body string
	l.waitFor(t, "the guest's HTTP server through --forward", 60*time.Second, func() (bool, string) {
		c := http.Client{Timeout: 3 * time.Second}
		resp, err := c.Get("http://" + fwd + "/")
		if err != nil {
			return false, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		body = strings.TrimSpace(string(b))
		return body == "hello from 10.77.0.2", fmt.Sprintf("%s: %q", resp.Status, body)
	})
	t.Logf("guest: DHCP lease, DNS, NAT to the loopback and --forward all work; forward answered %q", body)
}

// newQEMULab makes the lab that qemu_test.go's helpers work on, with its
// cleanup (processes killed, logs dumped on failure).
func newQEMULab(t *testing.T, guest *qemutest.Guest, budget time.Duration) *qemuLab {
	ctx, cancel := context.WithTimeout(context.Background(), budget)
	t.Cleanup(cancel)
	dir, err := os.MkdirTemp("", "vnetq-")
	if err != nil {
		t.Fatal(err)
	}
	l := &qemuLab{ctx: ctx, dir: dir, guest: guest, hostArgv: map[string][]string{},
		vmCfg: map[string]qemutest.VM{}, daemons: map[string]*qemutest.Proc{},
		vms: map[string]*qemutest.Proc{}, runs: map[string]int{}}
	t.Cleanup(func() {
		if t.Failed() {
			l.dump(t)
		}
		for _, p := range l.procs {
			if err := p.Kill(); err != nil {
				t.Errorf("cleanup: %v", err)
			}
		}
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return l
}

// serveHTTP serves body on a loopback port for the test's life.
func serveHTTP(t *testing.T, body string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, body) })}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// serveDNS answers A queries for name with addr (and NXDOMAIN for
// anything else) on a loopback UDP port: the gateway's upstream resolver.
func serveDNS(t *testing.T, name, addr string) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	a4 := [4]byte(net.ParseIP(addr).To4())
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			var p dnsmessage.Parser
			h, err := p.Start(buf[:n])
			if err != nil {
				continue
			}
			q, err := p.Question()
			if err != nil {
				continue
			}
			b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true,
				RCode: dnsmessage.RCodeSuccess})
			b.EnableCompression()
			b.StartQuestions()
			b.Question(q)
			b.StartAnswers()
			if strings.EqualFold(q.Name.String(), name) && q.Type == dnsmessage.TypeA {
				b.AResource(dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 60},
					dnsmessage.AResource{A: a4})
			}
			out, err := b.Finish()
			if err == nil {
				pc.WriteTo(out, from)
			}
		}
	}()
	return pc.LocalAddr().String()
}
