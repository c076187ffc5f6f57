//go:build linux

package qemutest

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

// readNewc parses a newc archive into name -> (mode, data), in order.
func readNewc(t *testing.T, b []byte) (names []string, modes map[string]uint32, data map[string]string) {
	t.Helper()
	modes, data = map[string]uint32{}, map[string]string{}
	align := func(n int) int { return (n + 3) &^ 3 }
	for off := 0; ; {
		if off+110 > len(b) || string(b[off:off+6]) != "070701" {
			t.Fatalf("bad header at %d", off)
		}
		field := func(i int) int {
			v, err := strconv.ParseUint(string(b[off+6+8*i:off+14+8*i]), 16, 32)
			if err != nil {
				t.Fatal(err)
			}
			return int(v)
		}
		mode, size, nameSize := field(1), field(6), field(11)
		name := string(b[off+110 : off+110+nameSize-1])
		off = align(off + 110 + nameSize)
		body := string(b[off : off+size])
		off = align(off + size)
		if name == "TRAILER!!!" {
			return
		}
		names = append(names, name)
		modes[name], data[name] = uint32(mode), body
	}
}

func TestArchive(t *testing.T) {
	a := newArchive()
	a.file("/lib/modules/x.ko", 0o644, []byte("abcde"))
	a.symlink("bin/sh", "busybox")
	a.file("init", 0o755, []byte("#!/bin/sh\n"))
	a.charDev("dev/console", 0o600, 5, 1)
	var buf bytes.Buffer
	if err := a.writeTo(&buf); err != nil {
		t.Fatal(err)
	}
	if buf.Len()%4 != 0 {
		t.Errorf("archive length %d not a multiple of 4", buf.Len())
	}
	names, modes, data := readNewc(t, buf.Bytes())
	pos := map[string]int{}
	for i, n := range names {
		pos[n] = i
	}
	for _, n := range names {
		if d := filepath.Dir(n); d != "." {
			if p, ok := pos[d]; !ok || p > pos[n] || modes[d]&0o170000 != modeDir {
				t.Errorf("%s: parent %s missing or later", n, d)
			}
		}
	}
	if data["lib/modules/x.ko"] != "abcde" || modes["lib/modules/x.ko"] != modeFile|0o644 {
		t.Errorf("x.ko: mode %o data %q", modes["lib/modules/x.ko"], data["lib/modules/x.ko"])
	}
	if data["bin/sh"] != "busybox" || modes["bin/sh"] != modeSymlink|0o777 {
		t.Errorf("bin/sh: mode %o data %q", modes["bin/sh"], data["bin/sh"])
	}
	if modes["init"] != modeFile|0o755 || modes["dev/console"] != modeCharDev|0o600 {
		t.Errorf("modes: init %o, dev/console %o", modes["init"], modes["dev/console"])
	}
	// The system's cpio, if any, must agree.
	if _, err := exec.LookPath("cpio"); err == nil {
		cmd := exec.Command("cpio", "-t", "--quiet")
		cmd.Stdin = bytes.NewReader(buf.Bytes())
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("cpio -t: %v", err)
		}
		if got := strings.Fields(string(out)); !reflect.DeepEqual(got, names) {
			t.Errorf("cpio -t lists %v, want %v", got, names)
		}
	}
}

func TestResolveModules(t *testing.T) {
	dir := t.TempDir()
	dep := "kernel/drivers/virtio/virtio_pci.ko.xz: kernel/drivers/virtio/virtio_ring.ko.xz kernel/drivers/virtio/virtio.ko.xz\n" +
		"kernel/drivers/virtio/virtio_ring.ko.xz: kernel/drivers/virtio/virtio.ko.xz\n" +
		"kernel/drivers/virtio/virtio.ko.xz:\n" +
		"kernel/drivers/net/virtio_net.ko.xz: kernel/drivers/net/net_failover.ko.xz kernel/net/core/failover.ko.xz kernel/drivers/virtio/virtio_ring.ko.xz\n" +
		"kernel/drivers/net/net_failover.ko.xz: kernel/net/core/failover.ko.xz\n" +
		"kernel/net/core/failover.ko.xz:\n"
	if err := os.WriteFile(filepath.Join(dir, "modules.dep"), []byte(dep), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := resolveModules(dir, "virtio_pci", "virtio_net")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"kernel/drivers/virtio/virtio.ko.xz", "kernel/drivers/virtio/virtio_ring.ko.xz",
		"kernel/drivers/virtio/virtio_pci.ko.xz", "kernel/net/core/failover.ko.xz",
		"kernel/drivers/net/net_failover.ko.xz", "kernel/drivers/net/virtio_net.ko.xz"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("resolveModules = %v, want %v", got, want)
	}

	builtin := "kernel/drivers/virtio/virtio.ko\nkernel/drivers/virtio/virtio_pci.ko\n"
	if err := os.WriteFile(filepath.Join(dir, "modules.builtin"), []byte(builtin), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := resolveModules(dir, "virtio_pci"); err != nil || len(got) != 0 {
		t.Errorf("built-in virtio_pci: %v, %v; want nothing to load", got, err)
	}
	if _, err := resolveModules(dir, "no_such"); err == nil {
		t.Error("unknown module: no error")
	}
}

func TestVersionLess(t *testing.T) {
	for _, c := range []struct {
		a, b string
		want bool
	}{
		{"6.1.0-40-amd64", "6.1.0-56-amd64", true},
		{"6.1.0-9-amd64", "6.1.0-10-amd64", true},
		{"6.12.117+deb12-amd64", "6.1.0-56-amd64", false},
		{"6.1.0-56-amd64", "6.1.0-56-amd64", false},
	} {
		if got := versionLess(c.a, c.b); got != c.want {
			t.Errorf("versionLess(%q, %q) = %v, want %v", c.a, c.b, got, c.want)
		}
	}
}

func TestKernelRelease(t *testing.T) {
	b := make([]byte, 0x400)
	copy(b[0x202:], "HdrS")
	b[0x20e], b[0x20f] = 0x00, 0x01 // version string at 0x100+0x200
	copy(b[0x300:], "6.1.0-56-amd64 (debian-kernel@lists.debian.org) #1 SMP\x00")
	k := filepath.Join(t.TempDir(), "vmlinuz")
	if err := os.WriteFile(k, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if got := kernelRelease(k); got != "6.1.0-56-amd64" {
		t.Errorf("kernelRelease = %q", got)
	}
}
