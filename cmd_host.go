package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/spf13/pflag"

	"vnet/appliance"
	"vnet/bridge"
	"vnet/infer"
	"vnet/tunnel"
)

// hostOpts are vnet host's flags.
type hostOpts struct {
	config                                                             *string
	name, keyFile, join, stateDir, api, tokenFile                      *string
	proxies, listen, stun, taps, qemuSockets, qemuConnects, qemuDgrams *[]string
	bcast                                                              *int
	offload, noInfer                                                   *bool
	reportEvery                                                        *time.Duration
	mkAcct                                                             func() (infer.AccountConfig, error)
	mkUDP                                                              func() tunnel.UDPOptions
	mkLog                                                              func() (*slog.Logger, error)
}

// hostFlags defines vnet host's flags on a new flag set.
func hostFlags() (*pflag.FlagSet, *hostOpts) {
	o := &hostOpts{}
	fs := newFlags("host", "--name NAME --proxy URL --key-file FILE [ports] [flags]\n  vnet host --join TOKEN --state-dir DIR [ports] [flags]", `
Run a host daemon where VMs run. It dials the proxy (outbound only, so it
passes NAT and firewalls that allow outbound traffic), trying the --proxy URLs
in order (tcp://, udp:// or quic://) and re-dialing forever with backoff when
the link breaks; it attaches the VMs' ports to its switch, learns its NAT
mapping with STUN, and opens fast-path links to other hosts when the proxy
asks (vnet ctl link add): over UDP, punching through NATs where needed, else
TCP, else relayed through the proxy.

VM ports (each repeatable):
  --tap NAME            create TAP device NAME (needs root or CAP_NET_ADMIN);
                        it keeps working when moved into another namespace
  --qemu-socket PATH    listen for QEMU: -netdev stream,id=n0,server=off,addr.type=unix,addr.path=PATH;
                        a restarted QEMU reattaches
  --qemu-connect PATH   dial a QEMU started with -netdev stream,id=n0,server=on,addr.type=unix,addr.path=PATH
                        and re-dial forever (best for long-lived VMs: QEMU 7.2 as a client never reconnects)
  --qemu-dgram OURS:VM  bind unixgram socket OURS and send to VM, for
                        -netdev dgram,id=n0,local.type=unix,local.path=VM,remote.type=unix,remote.path=OURS

Joining without the network key: on the proxy, 'vnet ctl invite --name h3'
prints a one-line token; 'vnet host --join TOKEN --state-dir DIR' joins with
it (no --name, --proxy or --key-file needed) and keeps the credentials it is
given in DIR, so later starts need only '--state-dir DIR'. Such a host holds
no network key: 'vnet ctl hosts revoke h3' cuts it off for good.

Examples:
  vnet host --join vnet1:eyJ2Ijox... --state-dir /var/lib/vnet --qemu-socket /tmp/vm1.sock
  vnet host --state-dir /var/lib/vnet --qemu-socket /tmp/vm1.sock   # restarts after joining
  sudo vnet host --name h1 --proxy tcp://203.0.113.5:5000 --key-file net.key --tap vm0
  vnet host --name h2 --proxy tcp://203.0.113.5:5000 --key-file net.key --qemu-socket /tmp/vm1.sock

SIGHUP (or 'vnet ctl --api HOSTAPI reload') re-reads --config FILE:
broadcast-rate, api-token-file (also a new token in the same file),
log-level and the VM ports tap, qemu-socket and qemu-connect change live
(ports that left the file are closed, new ones opened; the others carry
traffic throughout); any other setting that changed is logged as needing a
restart.

`+configHelp)
	o.name = fs.String("name", "", "this host's name, unique in the network (required)")
	o.proxies = fs.StringArray("proxy", nil, "the proxy as tcp://HOST:PORT, udp://HOST:PORT or quic://HOST:PORT\n"+
		"(repeatable: tried in order, the first that works is used)")
	o.keyFile = fs.String("key-file", "", "the network key, from 'vnet keygen' (required unless joined with --join)")
	o.join = fs.String("join", "", "join with an invite `TOKEN` from 'vnet ctl invite' on the proxy, instead of the network\n"+
		"key (needs --state-dir; the name and the proxy's addresses come from the token)")
	o.stateDir = fs.String("state-dir", "", "`DIR` where a joined host keeps its credentials (0600, written atomically);\n"+
		"a host started with it after joining needs no token nor key")
	o.listen = fs.StringArray("listen", nil,
		"where other hosts connect for fast paths: at most one tcp:// and one udp:// (the UDP socket also\n"+
			"carries udp:// star links, STUN and hole punching); port 0 picks a free port\n"+
			"(default tcp://:0, plus udp://:0 when a --proxy is udp:// or quic://)")
	o.stun = fs.StringArray("stun", nil, "an extra STUN server HOST:PORT (repeatable); the proxy's own are always used")
	o.api = fs.String("api", "", "control API address for a local view, the dashboard and Prometheus /metrics (loopback only\n"+
		"without --api-token-file), e.g. 127.0.0.1:7778")
	o.tokenFile = fs.String("api-token-file", "", "require the token in `FILE` of every API request (Authorization: Bearer, or\n"+
		"?token= in a browser); with it the API may listen beyond loopback")
	o.taps = fs.StringArray("tap", nil, "create TAP device NAME and attach it")
	o.qemuSockets = fs.StringArray("qemu-socket", nil, "listen on unix socket PATH for a QEMU stream netdev")
	o.qemuConnects = fs.StringArray("qemu-connect", nil, "dial the QEMU stream server at PATH, forever")
	o.qemuDgrams = fs.StringArray("qemu-dgram", nil, "OURS:VM unix datagram socket pair for a QEMU dgram netdev")
	o.mkAcct = accountFlags(fs)
	o.mkUDP = mtuFlags(fs)
	o.bcast = fs.Int("broadcast-rate", bridge.DefaultBroadcastRate, "broadcast and multicast frames a second each VM port may send (a burst of as many);\n"+
		"more are dropped and counted as broadcast-limit, so one VM's storm cannot flood the network (0: no limit)")
	o.offload = fs.Bool("offload", true, "TAP devices take the VM's TCP segments of up to 64 KB and unfinished checksums, which cross links to peers that take them whole (false: 1514-byte frames everywhere)")
	o.noInfer = fs.Bool("no-infer", false, "do not account VM traffic (no inference; to measure what it costs)")
	o.reportEvery = fs.Duration("infer-report-interval", appliance.ReportInterval, "push active VM pairs' traffic to the proxy this often\n"+
		"(VTTIF's update rate; a pair that turns active is reported at once anyway; shorter: a steadier\n"+
		"global matrix for a little more control traffic)")
	o.mkLog = logFlags(fs)
	o.config = fs.String("config", "", "read settings from `FILE` (see below); the command line wins; re-read on SIGHUP")
	return fs, o
}

func runHost(ctx context.Context, args []string) error {
	fs, o := hostFlags()
	if err := parseWithConfig(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageErr("unexpected argument %q", fs.Arg(0))
	}
	if *o.join != "" && *o.stateDir == "" {
		return usageErr("--join needs --state-dir, where the host keeps the credentials it is given")
	}
	joined := *o.join != "" || appliance.HasIdentity(*o.stateDir)
	if *o.join != "" && *o.keyFile != "" {
		return usageErr("give --join or --key-file, not both")
	}
	if *o.name == "" && !joined {
		return usageErr("--name is required")
	}
	if len(*o.proxies) == 0 && !joined {
		return usageErr("--proxy is required (e.g. --proxy tcp://203.0.113.5:5000)")
	}
	log, err := o.mkLog()
	if err != nil {
		return err
	}
	var key tunnel.Key
	if !joined {
		if key, err = tunnel.LoadKeyFile(*o.keyFile); err != nil {
			return err
		}
	}
	acct, err := o.mkAcct()
	if err != nil {
		return err
	}
	var token string
	if *o.tokenFile != "" {
		if token, err = appliance.LoadAPIToken(*o.tokenFile); err != nil {
			return err
		}
	}
	cfg := appliance.HostConfig{Name: *o.name, Key: key, Join: *o.join, StateDir: *o.stateDir, API: *o.api, APIToken: token, STUN: *o.stun, Log: log, Infer: acct, NoInfer: *o.noInfer,
		ReportInterval: *o.reportEvery}
	if cfg.Proxies, err = parseEndpoints("--proxy", *o.proxies); err != nil {
		return err
	}
	if cfg.Listen, err = parseEndpoints("--listen", *o.listen); err != nil {
		return err
	}
	cfg.NoOffload, cfg.UDP = !*o.offload, o.mkUDP()
	if cfg.BroadcastRate = *o.bcast; *o.bcast == 0 {
		cfg.BroadcastRate = -1
	} else if *o.bcast < 0 {
		return usageErr("--broadcast-rate %d: want frames a second, or 0 for no limit", *o.bcast)
	}
	ports, err := openPorts(*o.taps, *o.qemuSockets, *o.qemuConnects, *o.qemuDgrams, *o.offload, log)
	if err != nil {
		return err
	}
	cfg.Ports = ports
	// The host's API may ask for a reload while NewHost still runs: the
	// live settings find the host through hp, set once it is made.
	var hp atomic.Pointer[appliance.Host]
	host := hp.Load
	r := newReloader(args, func() *pflag.FlagSet { fs, _ := hostFlags(); return fs }, fs)
	commonLive(r, func() *bridge.Switch { return host().Switch() }, func(tok string) error { return host().SetAPIToken(tok) })
	livePorts(r, "tap", *o.taps, func(t string) string { return t }, func(t string) (bridge.Port, error) {
		return openTAP(t, *o.offload, log)
	}, host)
	livePorts(r, "qemu-socket", *o.qemuSockets, portName, func(path string) (bridge.Port, error) {
		return bridge.ListenQEMU(path, log)
	}, host)
	livePorts(r, "qemu-connect", *o.qemuConnects, portName, func(path string) (bridge.Port, error) {
		return bridge.DialQEMU(path, log)
	}, host)
	r.setToken(token)
	cfg.ReloadSettings = func() (applied, restart []string, err error) {
		if host() == nil {
			return nil, nil, errors.New("the host is still starting; try again")
		}
		return r.reload()
	}
	h, err := appliance.NewHost(cfg)
	if err != nil {
		closePorts(ports)
		return err
	}
	hp.Store(h)
	onSIGHUP(ctx, func() { h.Reload() }) // it logs what it did
	<-ctx.Done()
	log.Info("shutting down")
	h.Close()
	return nil
}

// livePorts makes the repeatable port flag (tap, qemu-socket,
// qemu-connect) a live setting of a host: on reload, the ports whose
// arguments left the list are detached (and closed), and those that came
// are opened and attached; the others carry traffic throughout. name is
// the port name an argument gets (as openPorts names it).
func livePorts(r *reloader, flag string, initial []string, name func(string) string,
	open func(string) (bridge.Port, error), host func() *appliance.Host) {
	cur := slices.Clone(initial)
	r.live[flag] = func(fs *pflag.FlagSet) (func() error, error) {
		next, _ := fs.GetStringArray(flag)
		seen := map[string]bool{}
		for _, a := range next {
			if seen[name(a)] {
				return nil, fmt.Errorf("%s %s: two VM ports would be called %s; rename one", flag, a, name(a))
			}
			seen[name(a)] = true
		}
		return func() error {
			for _, a := range slices.Clone(cur) {
				if !slices.Contains(next, a) {
					if err := host().DetachPort(name(a)); err != nil {
						return fmt.Errorf("%s %s: %w", flag, a, err)
					}
					cur = slices.DeleteFunc(cur, func(c string) bool { return c == a })
				}
			}
			for _, a := range next {
				if slices.Contains(cur, a) {
					continue
				}
				p, err := open(a)
				if err != nil {
					return portErr("--"+flag, a, err)
				}
				if err := host().AttachPort(appliance.LocalPort{Name: name(a), Port: p}); err != nil {
					p.Close()
					return fmt.Errorf("%s %s: %w", flag, a, err)
				}
				cur = append(cur, a)
			}
			return nil
		}, nil
	}
}

// openPorts opens the VM-facing ports named on the command line. On error it
// closes what it opened.
func openPorts(taps, qemuSockets, qemuConnects, qemuDgrams []string, offload bool, log *slog.Logger) (ports []appliance.LocalPort, err error) {
	defer func() {
		if err != nil {
			closePorts(ports)
		}
	}()
	names := map[string]bool{}
	add := func(name string, p bridge.Port) error {
		if names[name] {
			p.Close()
			return fmt.Errorf("two VM ports would be called %s; rename one", name)
		}
		names[name] = true
		ports = append(ports, appliance.LocalPort{Name: name, Port: p})
		return nil
	}
	for _, t := range taps {
		p, err := openTAP(t, offload, log)
		if err != nil {
			return nil, portErr("--tap", t, err)
		}
		if err := add(t, p); err != nil {
			return nil, err
		}
	}
	for _, path := range qemuSockets {
		p, err := bridge.ListenQEMU(path, log)
		if err != nil {
			return nil, portErr("--qemu-socket", path, err)
		}
		if err := add(portName(path), p); err != nil {
			return nil, err
		}
	}
	for _, path := range qemuConnects {
		p, err := bridge.DialQEMU(path, log)
		if err != nil {
			return nil, portErr("--qemu-connect", path, err)
		}
		if err := add(portName(path), p); err != nil {
			return nil, err
		}
	}
	for _, pair := range qemuDgrams {
		ours, vm, ok := strings.Cut(pair, ":")
		if !ok || ours == "" || vm == "" {
			return nil, usageErr("--qemu-dgram %q: want OURS:VM (two socket paths)", pair)
		}
		p, err := bridge.OpenQEMUDgram(ours, vm, log)
		if err != nil {
			return nil, portErr("--qemu-dgram", pair, err)
		}
		if err := add(portName(ours), p); err != nil {
			return nil, err
		}
	}
	return ports, nil
}

// portName names a socket port after its file: /run/vm1.sock -> vm1.
func portName(path string) string {
	base := filepath.Base(path)
	return strings.TrimSuffix(base, filepath.Ext(base))
}

// openTAP opens TAP device name with offloads if asked, and without them
// if the kernel refuses them.
func openTAP(name string, offload bool, log *slog.Logger) (*bridge.TAPPort, error) {
	if offload {
		p, err := bridge.OpenTAPOffload(name, log)
		if !errors.Is(err, bridge.ErrNoTAPOffloads) {
			return p, err
		}
		log.Warn("TAP offloads refused; using plain frames", "tap", name, "err", err)
	}
	return bridge.OpenTAP(name, log)
}
