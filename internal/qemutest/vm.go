//go:build linux

package qemutest

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"
)

// VM describes one guest.
type VM struct {
	Name  string   // for logs
	MAC   string   // 52:54:00:xx:xx:xx
	IP    string   // eth0's address with prefix length, 10.66.0.1/24
	Peers []string // IPs to ping
	// Extra kernel command-line parameters for /init (vnetresolve=,
	// vnetfetch=, vnetserve=; see the package doc).
	Params []string
	Netdev string // the -netdev backend without id, e.g. "stream,server=off,addr.type=unix,addr.path=/tmp/a.sock"
	MemMB  int    // 0: 256
	// Extra QEMU arguments, e.g. -qmp or -incoming for a live migration
	// (the source and the target must otherwise be started alike).
	Extra []string
}

// Argv is the QEMU command line that boots vm from initrd. The serial
// console is QEMU's stdout.
func (g *Guest) Argv(initrd string, vm VM) []string {
	mem := vm.MemMB
	if mem == 0 {
		mem = 256
	}
	cmdline := []string{
		"console=ttyS0", "panic=-1", "quiet", "loglevel=3", "mitigations=off",
		"vnetip=" + vm.IP,
	}
	if len(vm.Peers) > 0 {
		cmdline = append(cmdline, "vnetpeer="+strings.Join(vm.Peers, ","))
	}
	cmdline = append(cmdline, vm.Params...)
	return append([]string{
		g.QEMU,
		"-name", vm.Name,
		"-M", "pc", "-accel", "tcg", "-smp", "1", "-m", fmt.Sprint(mem),
		"-display", "none", "-nodefaults", "-no-reboot", "-no-user-config",
		"-serial", "stdio", "-monitor", "none",
		"-kernel", g.Kernel, "-initrd", initrd,
		"-append", strings.Join(cmdline, " "),
		"-netdev", vm.Netdev + ",id=n0",
		// romfile= : no PXE option ROM, so no dependency on ipxe-qemu.
		"-device", "virtio-net-pci,netdev=n0,mac=" + vm.MAC + ",romfile=",
	}, vm.Extra...)
}

// Boot starts QEMU for vm; its console and QEMU's own messages go to
// logPath.
func (g *Guest) Boot(initrd, logPath string, vm VM) (*Proc, error) {
	return Start("qemu "+vm.Name, logPath, g.Argv(initrd, vm)...)
}

// Size is how many bytes the process has written so far: an offset for
// WaitFor to look only at what comes later.
func (p *Proc) Size() int {
	fi, err := os.Stat(p.Log)
	if err != nil {
		return 0
	}
	return int(fi.Size())
}

// WaitFor waits until a line containing s appears in the output after
// byte offset from, and returns the offset just past that line. It fails
// when ctx ends, the process exits first, or check (if not nil, called on
// every poll) returns an error.
func (p *Proc) WaitFor(ctx context.Context, from int, s string, check func() error) (int, error) {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		exited, werr := p.Exited()
		out := p.Output()
		if from < len(out) {
			if i := strings.Index(out[from:], s); i >= 0 {
				end := from + i + len(s)
				if j := strings.IndexByte(out[end:], '\n'); j >= 0 {
					end += j + 1
				} else {
					end = len(out)
				}
				return end, nil
			}
		}
		if exited {
			return 0, fmt.Errorf("%s exited (%v) before printing %q", p.Name, werr, s)
		}
		if check != nil {
			if err := check(); err != nil {
				return 0, err
			}
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("%s: no %q after byte %d: %w", p.Name, s, from, ctx.Err())
		case <-tick.C:
		}
	}
}
