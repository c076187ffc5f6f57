package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"vnet/tunnel"
)

// captureStdout runs f with os.Stdout going to a buffer.
func captureStdout(t *testing.T, f func() error) (string, error) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	old := os.Stdout
	os.Stdout = w
	done := make(chan string)
	go func() {
		var b bytes.Buffer
		io.Copy(&b, r)
		done <- b.String()
	}()
	ferr := f()
	os.Stdout = old
	w.Close()
	return <-done, ferr
}

// TestProxyReloadCLI: vnet proxy --config FILE --topology FILE, then
// `vnet ctl reload` after editing both: the topology's difference, the live
// settings (a new API token among them) and the settings needing a restart
// are applied and printed; a bad config file changes nothing.
func TestProxyReloadCLI(t *testing.T) {
	dir := t.TempDir()
	key, _ := tunnel.GenerateKey()
	keyFile, conf, topoFile, tokFile := filepath.Join(dir, "net.key"), filepath.Join(dir, "proxy.conf"),
		filepath.Join(dir, "net.topo"), filepath.Join(dir, "token")
	write := func(path, text string) {
		if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(keyFile, key.String()+"\n")
	api := freePort(t)
	write(conf, "# test proxy\nkey-file = "+keyFile+"\nlisten = tcp://127.0.0.1:0\napi = "+api+
		"\nbroadcast-rate = 10\ntopology = "+topoFile+"\nlog-level = warn\n")
	write(topoFile, "link h1 h2\n")
	ctx, cancel := context.WithCancel(context.Background())
	exited := make(chan error, 1)
	go func() { exited <- runProxy(ctx, []string{"--config", conf}) }()
	defer func() {
		cancel()
		if err := <-exited; err != nil {
			t.Errorf("proxy: %v", err)
		}
	}()
	ctl := func(args ...string) (string, error) {
		return captureStdout(t, func() error { return runCtl(context.Background(), append([]string{"--api", api}, args...)) })
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, err := ctl("export")
		if err == nil {
			if !strings.Contains(out, "link h1 h2") {
				t.Fatalf("the topology file is not applied at start:\n%s", out)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the proxy's API: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}

	const token = "a-token-of-enough-length"
	write(tokFile, token+"\n")
	write(conf, "key-file = "+keyFile+"\nlisten = tcp://127.0.0.1:1\napi = "+api+
		"\nbroadcast-rate = 20\ntopology = "+topoFile+"\napi-token-file = "+tokFile+"\nadapt\n")
	write(topoFile, "link h1 h2\nlink h1 h3 kind tcp\n")
	out, err := ctl("reload")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"+ link h1 h3 kind tcp\n", "setting applied: adapt = true\n",
		"setting applied: api-token-file = " + tokFile + " (token re-read)\n", "setting applied: broadcast-rate = 20\n",
		"setting applied: log-level = info\n", "needs a restart: listen\n",
		"reloaded: 1 topology change(s), 4 setting(s) applied, 1 need a restart\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("ctl reload printed\n%s\nwithout %q", out, want)
		}
	}
	if _, err := ctl("status"); err == nil || !strings.Contains(err.Error(), "needs its token") {
		t.Fatalf("after a reload that set a token, a request without it: %v", err)
	}
	// A bad config file changes nothing, not even the topology.
	t.Setenv("VNET_API_TOKEN", token)
	write(topoFile, "link h1 h2\n")
	write(conf, "lisen = tcp://:5000\n")
	if _, err := ctl("reload"); err == nil ||
		!strings.Contains(err.Error(), "reload failed, nothing changed: "+conf+`:1: unknown setting "lisen"`) {
		t.Fatalf("reload with a bad config file: %v", err)
	}
	if out, err := ctl("export"); err != nil || !strings.Contains(out, "link h1 h3 kind tcp") {
		t.Fatalf("after a failed reload: %v\n%s", err, out)
	}

	// A new token in the same file is picked up.
	write(conf, "key-file = "+keyFile+"\nlisten = tcp://127.0.0.1:1\napi = "+api+
		"\nbroadcast-rate = 20\ntopology = "+topoFile+"\napi-token-file = "+tokFile+"\nadapt\n")
	write(tokFile, token+"-2\n")
	out, err = ctl("reload")
	if err != nil || !strings.Contains(out, "- link h1 h3 kind tcp\n") ||
		!strings.Contains(out, "setting applied: api-token-file = "+tokFile+" (token re-read)\n") {
		t.Fatalf("reload with a new token: %v\n%s", err, out)
	}
	if _, err := ctl("status"); err == nil {
		t.Fatal("the old token still works")
	}
	t.Setenv("VNET_API_TOKEN", token+"-2")
	if _, err := ctl("status"); err != nil {
		t.Fatalf("the new token: %v", err)
	}
}

// TestHostReloadPortsCLI: a host started with --config re-reads it on
// `vnet ctl --api HOSTAPI reload`: a QEMU socket that left the file is
// closed, new ones listen, one that stayed keeps its connected VM; a file
// with two ports of one name changes nothing.
func TestHostReloadPortsCLI(t *testing.T) {
	dir := t.TempDir()
	key, _ := tunnel.GenerateKey()
	keyFile, conf := filepath.Join(dir, "net.key"), filepath.Join(dir, "host.conf")
	write := func(path, text string) {
		if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(keyFile, key.String()+"\n")
	proxyAddr, proxyAPI, hostAPI := freePort(t), freePort(t), freePort(t)
	ctx, cancel := context.WithCancel(context.Background())
	exited := make(chan error, 2)
	go func() {
		exited <- runProxy(ctx, []string{"--key-file", keyFile, "--listen", "tcp://" + proxyAddr, "--api", proxyAPI,
			"--log-level", "warn"})
	}()
	sock := func(n string) string { return filepath.Join(dir, n+".sock") }
	base := "name = h1\nproxy = tcp://" + proxyAddr + "\nkey-file = " + keyFile + "\napi = " + hostAPI +
		"\nlisten = tcp://127.0.0.1:0\nlog-level = warn\n"
	write(conf, base+"qemu-socket = "+sock("a")+"\nqemu-socket = "+sock("keep")+"\n")
	go func() { exited <- runHost(ctx, []string{"--config", conf}) }()
	defer func() {
		cancel()
		for range 2 {
			if err := <-exited; err != nil {
				t.Errorf("daemon: %v", err)
			}
		}
	}()
	ctl := func(args ...string) (string, error) {
		return captureStdout(t, func() error { return runCtl(context.Background(), append([]string{"--api", hostAPI}, args...)) })
	}
	exists := func(p string) bool { _, err := os.Stat(p); return err == nil }
	deadline := time.Now().Add(10 * time.Second)
	for !exists(sock("a")) || !exists(sock("keep")) {
		if time.Now().After(deadline) {
			t.Fatal("the host's QEMU sockets never appeared")
		}
		time.Sleep(50 * time.Millisecond)
	}
	vm, err := net.Dial("unix", sock("keep")) // a "VM" on the port that stays
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()

	// qemu-connect dials its server forever, in the background: one that
	// is not there yet is no error.
	write(conf, base+"qemu-socket = "+sock("keep")+"\nqemu-socket = "+sock("b")+"\nqemu-connect = "+sock("later")+"\n")
	out, err := ctl("reload")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"setting applied: qemu-socket = ", "setting applied: qemu-connect = ",
		"2 setting(s) applied, 0 need a restart"} {
		if !strings.Contains(out, want) {
			t.Fatalf("ctl reload printed\n%s\nwithout %q", out, want)
		}
	}
	if exists(sock("a")) || !exists(sock("b")) {
		t.Fatalf("after reload: a.sock there %v (want gone), b.sock there %v (want it)", exists(sock("a")), exists(sock("b")))
	}
	if c, err := net.Dial("unix", sock("b")); err != nil {
		t.Fatalf("the new port does not accept: %v", err)
	} else {
		c.Close()
	}
	// The port that stayed kept its connection: the host still holds it open.
	vm.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if _, err := vm.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the VM on the unchanged port: %v, want its connection kept", err)
	}

	write(conf, base+"qemu-socket = "+sock("keep")+"\nqemu-socket = "+filepath.Join(dir, "other", "keep.sock")+"\n")
	if _, err := ctl("reload"); err == nil || !strings.Contains(err.Error(), "two VM ports would be called keep") {
		t.Fatalf("reload with two ports called keep: %v", err)
	}
	if !exists(sock("b")) {
		t.Fatal("a refused reload closed a port")
	}
}
