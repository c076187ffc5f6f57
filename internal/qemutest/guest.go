//go:build linux

// Package qemutest boots real Linux guests under QEMU for end-to-end tests.
//
// The guest is made at test time from what the test machine has installed:
// a kernel from /boot (Debian's linux-image-amd64) with its modules from
// /lib/modules/<release>, and busybox (Debian's busybox-static; a dynamic
// busybox works too, its libraries are copied along). BuildInitramfs packs
// busybox, the virtio-net module and its dependencies (decompressed: busybox
// insmod does not read .ko.xz) and an /init script into a gzip'd newc cpio
// archive. The init script configures eth0 from the kernel command line and
// pings its peers forever, printing one marker line per attempt on the serial
// console:
//
//	VNET-UP <ip/len> <mac>
//	VNET-PING-OK <peer> <round>
//	VNET-PING-FAIL <peer> <round>
//
// Kernel command-line parameters read by /init:
//
//	vnetip=10.66.0.1/24            eth0's address (required); "dhcp" asks a
//	                               DHCP server (udhcpc) and prints
//	                               VNET-DHCP <ip/len> <router> <dns> <mtu>
//	vnetpeer=10.66.0.2,10.66.0.3   peers to ping (optional: without it the
//	                               guest only answers pings)
//	vnetresolve=NAME               resolve NAME once the network is up:
//	                               VNET-DNS-OK <addr> or VNET-DNS-FAIL
//	vnetfetch=HOST:PORT            fetch http://HOST:PORT/ (retried each
//	                               round until it works): VNET-HTTP-OK <body>
//	vnetserve=PORT                 serve "hello from <ip>" over HTTP on PORT
//
// Nothing here needs root or KVM (QEMU runs with -accel tcg).
package qemutest

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// Environment variables that override what Find picks.
const (
	EnvKernel  = "VNET_QEMU_KERNEL"  // path of a kernel image (bzImage)
	EnvModules = "VNET_QEMU_MODULES" // its modules directory, with modules.dep (default /lib/modules/<release>)
	EnvBusybox = "VNET_QEMU_BUSYBOX" // path of a busybox binary
	EnvQEMU    = "VNET_QEMU_BINARY"  // path of qemu-system-x86_64
)

// Packages is the Debian package list that provides everything Find needs.
const Packages = "qemu-system-x86 busybox-static linux-image-amd64 xz-utils"

// Guest is what a guest is made of, found on the test machine.
type Guest struct {
	QEMU    string   // qemu-system-x86_64
	Kernel  string   // /boot/vmlinuz-<release>
	Release string   // kernel release, e.g. 6.1.0-40-amd64
	ModDir  string   // /lib/modules/<release>
	Busybox string   // busybox binary
	Modules []string // modules to insmod in order, relative to ModDir; empty if virtio-net is built in
}

// MissingError says what the test machine lacks to boot a guest.
type MissingError struct{ What []string }

func (e *MissingError) Error() string {
	return fmt.Sprintf("cannot boot a QEMU guest: missing %s (Debian: apt-get install %s)",
		strings.Join(e.What, "; "), Packages)
}

// wantModules are the drivers the guest needs for its NIC, in load order.
// Each is skipped if built in.
var wantModules = []string{"virtio_pci", "virtio_net"}

// Find locates QEMU, a kernel with its modules, and busybox. It returns a
// *MissingError if something is not installed.
func Find() (*Guest, error) {
	var missing []string
	var err error
	g := &Guest{}

	qemu := os.Getenv(EnvQEMU)
	if qemu == "" {
		qemu = "qemu-system-x86_64"
	}
	g.QEMU, err = exec.LookPath(qemu)
	if err != nil {
		missing = append(missing, qemu+" (package qemu-system-x86)")
	}

	g.Busybox = os.Getenv(EnvBusybox)
	if g.Busybox != "" {
		if _, err := os.Stat(g.Busybox); err != nil {
			missing = append(missing, err.Error())
		}
	} else {
		for _, p := range []string{"/bin/busybox", "/usr/bin/busybox", "/usr/lib/initramfs-tools/bin/busybox"} {
			if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
				g.Busybox = p
				break
			}
		}
		if g.Busybox == "" {
			missing = append(missing, "/bin/busybox (package busybox-static)")
		}
	}

	g.Kernel, g.Release, g.ModDir, err = findKernel(os.Getenv(EnvKernel), os.Getenv(EnvModules))
	if err != nil {
		missing = append(missing, err.Error())
	} else {
		g.Modules, err = resolveModules(g.ModDir, wantModules...)
		if err != nil {
			missing = append(missing, err.Error())
		}
	}
	for _, m := range g.Modules {
		if tool := decompressor(m); tool != "" {
			if _, err := exec.LookPath(tool); err != nil {
				missing = append(missing, fmt.Sprintf("%s to decompress %s", tool, path.Base(m)))
				break
			}
		}
	}
	if len(missing) > 0 {
		return nil, &MissingError{What: missing}
	}
	return g, nil
}

// findKernel picks a readable /boot/vmlinuz-* whose modules directory
// has a modules.dep, preferring a generic kernel over a real-time one and
// then the newest release; or uses the overrides.
func findKernel(kernelOverride, modOverride string) (kernel, release, modDir string, err error) {
	var cands []string
	if kernelOverride != "" {
		cands = []string{kernelOverride}
	} else {
		cands, _ = filepath.Glob("/boot/vmlinuz-*")
	}
	type kc struct{ path, rel, mods string }
	var ok []kc
	var why []string
	for _, k := range cands {
		rel := kernelRelease(k)
		if rel == "" {
			rel = strings.TrimPrefix(filepath.Base(k), "vmlinuz-")
		}
		f, err := os.Open(k)
		if err != nil {
			why = append(why, err.Error())
			continue
		}
		f.Close()
		mods := modOverride
		if mods == "" {
			mods = filepath.Join("/lib/modules", rel)
		}
		if _, err := os.Stat(filepath.Join(mods, "modules.dep")); err != nil {
			why = append(why, fmt.Sprintf("%s: no %s/modules.dep", k, mods))
			continue
		}
		ok = append(ok, kc{k, rel, mods})
	}
	if len(ok) == 0 {
		msg := "a kernel /boot/vmlinuz-* with its /lib/modules (package linux-image-amd64)"
		if len(why) > 0 {
			msg += ": " + strings.Join(why, ", ")
		}
		return "", "", "", errors.New(msg)
	}
	sort.Slice(ok, func(i, j int) bool {
		ri, rj := strings.Contains(ok[i].rel, "-rt-"), strings.Contains(ok[j].rel, "-rt-")
		if ri != rj {
			return !ri
		}
		return versionLess(ok[j].rel, ok[i].rel)
	})
	return ok[0].path, ok[0].rel, ok[0].mods, nil
}

// kernelRelease reads the release string from a bzImage header.
func kernelRelease(k string) string {
	f, err := os.Open(k)
	if err != nil {
		return ""
	}
	defer f.Close()
	b := make([]byte, 64<<10) // the setup header and its version string
	n, _ := io.ReadFull(f, b)
	b = b[:n]
	if len(b) < 0x210 || string(b[0x202:0x206]) != "HdrS" {
		return ""
	}
	off := int(b[0x20e]) | int(b[0x20f])<<8
	off += 0x200
	if off >= len(b) {
		return ""
	}
	s := b[off:]
	if i := bytes.IndexAny(s, " \x00"); i >= 0 {
		s = s[:i]
	}
	return string(s)
}

// versionLess compares dotted/dashed versions number by number.
func versionLess(a, b string) bool {
	split := func(s string) []string {
		return strings.FieldsFunc(s, func(r rune) bool { return r == '.' || r == '-' || r == '+' })
	}
	fa, fb := split(a), split(b)
	for i := 0; i < len(fa) && i < len(fb); i++ {
		na, ea := strconv.Atoi(fa[i])
		nb, eb := strconv.Atoi(fb[i])
		switch {
		case ea == nil && eb == nil && na != nb:
			return na < nb
		case (ea != nil || eb != nil) && fa[i] != fb[i]:
			return fa[i] < fb[i]
		}
	}
	return len(fa) < len(fb)
}

// modName is the module name of a modules.dep path: "kernel/drivers/net/virtio_net.ko.xz" -> "virtio_net".
func modName(p string) string {
	b := path.Base(p)
	if i := strings.Index(b, ".ko"); i >= 0 {
		b = b[:i]
	}
	return strings.ReplaceAll(b, "-", "_")
}

// resolveModules returns the module files (relative to modDir) that must
// be loaded, in order, for names; built-in modules are left out.
func resolveModules(modDir string, names ...string) ([]string, error) {
	builtin := map[string]bool{}
	if b, err := os.ReadFile(filepath.Join(modDir, "modules.builtin")); err == nil {
		for _, l := range strings.Fields(string(b)) {
			builtin[modName(l)] = true
		}
	}
	deps := map[string][]string{} // module file -> dependency files
	byName := map[string]string{} // module name -> module file
	f, err := os.Open(filepath.Join(modDir, "modules.dep"))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		mod, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		deps[mod] = strings.Fields(rest)
		byName[modName(mod)] = mod
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	var order []string
	seen := map[string]bool{}
	var visit func(file string)
	visit = func(file string) {
		if seen[file] {
			return
		}
		seen[file] = true
		for _, d := range deps[file] {
			visit(d)
		}
		order = append(order, file)
	}
	for _, n := range names {
		if builtin[n] {
			continue
		}
		file, ok := byName[n]
		if !ok {
			return nil, fmt.Errorf("kernel module %s in %s (neither built in nor in modules.dep)", n, modDir)
		}
		visit(file)
	}
	return order, nil
}

// decompressor is the tool that decompresses module file m, or "".
func decompressor(m string) string {
	switch {
	case strings.HasSuffix(m, ".ko.xz"):
		return "xz"
	case strings.HasSuffix(m, ".ko.zst"):
		return "zstd"
	}
	return ""
}

// readModule returns module file m uncompressed.
func readModule(m string) ([]byte, error) {
	if tool := decompressor(m); tool != "" {
		var stderr bytes.Buffer
		cmd := exec.Command(tool, "-dc", m)
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			return nil, fmt.Errorf("%s -dc %s: %v: %s", tool, m, err, strings.TrimSpace(stderr.String()))
		}
		return out, nil
	}
	b, err := os.ReadFile(m)
	if err != nil || !strings.HasSuffix(m, ".ko.gz") {
		return b, err
	}
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", m, err)
	}
	var out bytes.Buffer
	if _, err := out.ReadFrom(zr); err != nil {
		return nil, fmt.Errorf("%s: %w", m, err)
	}
	return out.Bytes(), nil
}

// initScript is the guest's /init (busybox sh).
const initScript = `#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo "VNET-BOOT $(uname -r)"
for m in $(cat /etc/vnet-modules); do
	insmod "/lib/modules/$m" || echo "VNET-ERROR insmod $m"
done
ip=""
peers=""
resolve=""
fetch=""
serve=""
for a in $(cat /proc/cmdline); do
	case "$a" in
	vnetip=*) ip="${a#vnetip=}" ;;
	vnetpeer=*) peers="$(echo "${a#vnetpeer=}" | tr , ' ')" ;;
	vnetresolve=*) resolve="${a#vnetresolve=}" ;;
	vnetfetch=*) fetch="${a#vnetfetch=}" ;;
	vnetserve=*) serve="${a#vnetserve=}" ;;
	esac
done
i=0
while [ ! -e /sys/class/net/eth0 ]; do
	i=$((i + 1))
	if [ $i -gt 300 ]; then echo "VNET-ERROR no eth0"; break; fi
	sleep 0.1
done
ip link set lo up
ip link set eth0 up
if [ "$ip" = dhcp ]; then
	until udhcpc -i eth0 -n -q -t 5 -T 1 -s /etc/udhcpc.sh >/dev/null 2>&1; do echo "VNET-DHCP-RETRY"; done
	. /tmp/dhcp.env
	echo "VNET-DHCP $ip $router $dns $mtu"
else
	ip addr add "$ip" dev eth0 || echo "VNET-ERROR ip addr add $ip"
fi
echo "VNET-UP $ip $(cat /sys/class/net/eth0/address)"
if [ -n "$serve" ]; then
	mkdir -p /www && echo "hello from ${ip%/*}" > /www/index.html
	httpd -p "$serve" -h /www && echo "VNET-SERVE $serve"
fi
if [ -n "$resolve" ]; then
	a="$(nslookup "$resolve" 2>/dev/null | sed -n 's/^Address: *//p' | tail -n 1)"
	if [ -n "$a" ]; then echo "VNET-DNS-OK $a"; else echo "VNET-DNS-FAIL"; fi
fi
n=0
while :; do
	n=$((n + 1))
	if [ -n "$fetch" ]; then
		# nc, not wget: a static busybox's wget crashes in glibc's resolver
		b="$(printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 3 "${fetch%:*}" "${fetch##*:}" 2>/dev/null | tail -n 1)"
		if [ -n "$b" ]; then echo "VNET-HTTP-OK $b"; fetch=""; else echo "VNET-HTTP-FAIL $n"; fi
	fi
	for p in $peers; do
		if ping -c 1 -W 1 "$p" >/dev/null 2>&1; then
			echo "VNET-PING-OK $p $n"
		else
			echo "VNET-PING-FAIL $p $n"
		fi
	done
	sleep 1
done
`

// udhcpcScript configures eth0 from udhcpc's lease and writes what it got
// to /tmp/dhcp.env for /init.
const udhcpcScript = `#!/bin/busybox sh
case "$1" in
bound|renew)
	ip addr flush dev "$interface"
	ip addr add "$ip/$mask" dev "$interface"
	[ -n "$mtu" ] && ip link set "$interface" mtu "$mtu"
	for r in $router; do ip route add default via "$r" dev "$interface"; break; done
	: > /etc/resolv.conf
	for d in $dns; do echo "nameserver $d" >> /etc/resolv.conf; done
	echo "ip=$ip/$mask router=$router dns=$dns mtu=$(cat /sys/class/net/$interface/mtu)" > /tmp/dhcp.env
	;;
esac
`

// BuildInitramfs writes the guest's initramfs (gzip'd newc cpio) into dir
// and returns its path.
func (g *Guest) BuildInitramfs(dir string) (string, error) {
	a := newArchive()
	for _, d := range []string{"bin", "dev", "proc", "sys", "etc", "tmp", "root", "lib/modules"} {
		a.dir(d)
	}
	a.charDev("dev/console", 0o600, 5, 1)
	a.charDev("dev/null", 0o666, 1, 3)

	bb, err := os.ReadFile(g.Busybox)
	if err != nil {
		return "", err
	}
	a.file("bin/busybox", 0o755, bb)
	a.symlink("bin/sh", "busybox")
	if err := addSharedLibs(a, g.Busybox); err != nil {
		return "", fmt.Errorf("busybox %s: %w", g.Busybox, err)
	}

	var list []string
	for _, m := range g.Modules {
		b, err := readModule(filepath.Join(g.ModDir, m))
		if err != nil {
			return "", err
		}
		name := modName(m) + ".ko"
		a.file("lib/modules/"+name, 0o644, b)
		list = append(list, name)
	}
	a.file("etc/vnet-modules", 0o644, []byte(strings.Join(list, "\n")+"\n"))
	a.file("init", 0o755, []byte(initScript))
	a.file("etc/udhcpc.sh", 0o755, []byte(udhcpcScript))

	out := filepath.Join(dir, "initramfs.cpio.gz")
	f, err := os.Create(out)
	if err != nil {
		return "", err
	}
	zw, _ := gzip.NewWriterLevel(f, gzip.BestSpeed)
	err = a.writeTo(zw)
	if cerr := zw.Close(); err == nil {
		err = cerr
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", fmt.Errorf("writing %s: %w", out, err)
	}
	return out, nil
}

// libDirs are where the dynamic loader looks without an ld.so.cache
// (Debian's multiarch directories first).
var libDirs = []string{
	"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib",
}

// addSharedLibs adds the ELF interpreter and the shared libraries that bin
// needs (transitively), at the paths where they were found. A static binary
// needs nothing.
func addSharedLibs(a *archive, bin string) error {
	queue := []string{bin}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		f, err := elf.Open(p)
		if err != nil {
			return err
		}
		needed, _ := f.ImportedLibraries()
		var interp string
		for _, prog := range f.Progs {
			if prog.Type == elf.PT_INTERP {
				b := make([]byte, prog.Filesz)
				if _, err := prog.ReadAt(b, 0); err == nil {
					interp = string(bytes.TrimRight(b, "\x00"))
				}
			}
		}
		f.Close()
		if interp != "" && !a.has(interp) {
			b, err := os.ReadFile(interp)
			if err != nil {
				return fmt.Errorf("ELF interpreter: %w", err)
			}
			a.file(interp, 0o755, b)
		}
		for _, lib := range needed {
			found := ""
			for _, d := range libDirs {
				if _, err := os.Stat(filepath.Join(d, lib)); err == nil {
					found = filepath.Join(d, lib)
					break
				}
			}
			if found == "" {
				return fmt.Errorf("shared library %s not found in %v", lib, libDirs)
			}
			if a.has(found) {
				continue
			}
			b, err := os.ReadFile(found)
			if err != nil {
				return err
			}
			a.file(found, 0o755, b)
			queue = append(queue, found)
		}
	}
	return nil
}
