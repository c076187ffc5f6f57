//go:build linux

package main

// End-to-end test of the netstack gateway's IPv6 with a real Linux stack:
//
//	namespace p:  vnet proxy --netstack 10.79.0.1/24,fd00:79::1/64 --mtu 1400 --tap g6
//	              a TCP receiver on [::1]:9000 (the proxy machine's loopback)
//	namespace v1: the TAP device g6, moved here: a VM whose kernel
//	              configures itself from the gateway's router advertisements
//
// The VM's kernel must take an address in fd00:79::/64 (SLAAC) and a
// default route via the gateway's link-local address and the MTU, ping the gateway
// over IPv6 and IPv4, and send a checksummed TCP stream to
// [fd00:79::1]:9000, which the gateway's NAT carries to [::1]:9000.

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"vnet/internal/netns"
)

func TestE2EGatewayIPv6(t *testing.T) {
	e := newE2ENet(t, "vg", 2*time.Minute, "network namespaces and a TAP device", nil, func(e *e2eNet) { e.dumpState(t) })
	e.build(t)
	e.nsProxy = e.addNS(t, "p")
	const tap, gw4, gw6 = "g6", "10.79.0.1", "fd00:79::1"
	p, err := e.lab.Start("proxy", e.nsProxy, filepath.Join(e.dir, "proxy.log"), nil, e.bin, "proxy",
		"--key-file", e.key, "--listen", "tcp://127.0.0.1:5000", "--api", e2eProxyAPI,
		"--netstack", gw4+"/24,"+gw6+"/64", "--dns", "127.0.0.1:1", "--mtu", "1400", "--tap", tap)
	if err != nil {
		t.Fatal(err)
	}
	e.expect[p] = true
	vm := &e2eVM{name: "v1", host: "proxy", tap: tap, ip: "10.79.0.5"}
	e.tapVM(t, e.nsProxy, vm)

	var addr string
	took := e.waitFor(t, "an address from the router advertisement (SLAAC)", 30*time.Second, func() (bool, string) {
		out, err := e.runQuiet(vm.ns, "ip", "-6", "-o", "addr", "show", "dev", tap, "scope", "global")
		for _, f := range strings.Fields(out) {
			if strings.HasPrefix(f, "fd00:79::") && strings.HasSuffix(f, "/64") {
				addr = strings.TrimSuffix(f, "/64")
			}
		}
		return addr != "" && !strings.Contains(out, "tentative"), fmt.Sprintf("%q %v", out, err)
	})
	var route string
	e.waitFor(t, "a default route via the gateway", 10*time.Second, func() (bool, string) {
		route, _ = e.runQuiet(vm.ns, "ip", "-6", "route", "show", "default")
		return strings.Contains(route, "via fe80::") && strings.Contains(route, "dev "+tap), route
	})
	t.Logf("VM configured itself in %v: %s, %s", took.Round(time.Millisecond), addr, strings.TrimSpace(route))
	if mtu, _ := e.runQuiet(vm.ns, "cat", "/proc/sys/net/ipv6/conf/"+tap+"/mtu"); strings.TrimSpace(mtu) != "1400" {
		t.Errorf("IPv6 MTU from the advertisement: %q, want 1400", mtu)
	}

	e.pingUntil(t, vm.ns, gw6, 10*time.Second)
	e.pingUntil(t, vm.ns, gw4, 10*time.Second)

	// A checksummed TCP stream from the VM to the proxy machine's [::1].
	const n = 8 << 20
	ctx, cancel := context.WithTimeout(e.ctx, 60*time.Second)
	defer cancel()
	recv := e.helperCmd(t, ctx, e.nsProxy, "recv", "[::1]:9000", strconv.Itoa(n))
	var recvOut bytes.Buffer
	recv.Stdout, recv.Stderr = &recvOut, &recvOut
	if err := recv.Start(); err != nil {
		t.Fatal(err)
	}
	sendOut, sendErr := e.helperCmd(t, ctx, vm.ns, "send", "["+gw6+"]:9000", strconv.Itoa(n)).CombinedOutput()
	if sendErr != nil {
		cancel()
	}
	recvErr := recv.Wait()
	if sendErr != nil || recvErr != nil {
		t.Fatalf("transfer: sender: %v\n%s\nreceiver: %v\n%s", sendErr, sendOut, recvErr, recvOut.String())
	}
	sn, ssum, err := e2eParseResult(string(sendOut))
	if err != nil {
		t.Fatal(err)
	}
	rn, rsum, err := e2eParseResult(recvOut.String())
	if err != nil {
		t.Fatal(err)
	}
	if sn != n || rn != n || ssum != rsum {
		t.Fatalf("sent %d bytes sha256 %s, received %d bytes sha256 %s", sn, ssum, rn, rsum)
	}
	t.Logf("TCP VM -> [%s]:9000 -> [::1]:9000: %d MiB, sha256 %s… matches", gw6, n>>20, ssum[:16])
}

// runQuiet runs argv in namespace ns and returns its output and error,
// without failing the test (for polling).
func (e *e2eNet) runQuiet(ns string, argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(e.ctx, 10*time.Second)
	defer cancel()
	return netns.Run(ctx, ns, argv...)
}
