package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"vnet/appliance"
	"vnet/bridge"
	"vnet/gateway"
	"vnet/infer"
	"vnet/tunnel"
)

// proxyOpts are vnet proxy's flags.
type proxyOpts struct {
	config, topology                                        *string
	listen, lanIfaces, taps, forwards, dnsServers           *[]string
	keyFile, api, tokenFile, stateDir, netstack, migrateCmd *string
	offload                                                 *bool
	mtu, bcast                                              *int
	migrateTimeout                                          *time.Duration
	mkAcct                                                  func() (infer.AccountConfig, error)
	mkGlobal                                                func() infer.GlobalConfig
	mkAdapt                                                 func() appliance.AdaptConfig
	mkUDP                                                   func() tunnel.UDPOptions
	mkLog                                                   func() (*slog.Logger, error)
}

// proxyFlags defines vnet proxy's flags on a new flag set.
func proxyFlags() (*pflag.FlagSet, *proxyOpts) {
	o := &proxyOpts{}
	fs := newFlags("proxy", "--key-file FILE [flags]", `
Run the proxy: the hub of the resilient star. Every host dials it and keeps a
link to it; broadcast and unknown traffic crosses it; it holds the desired
state (fast-path links and forwarding rules) and serves the control API that
'vnet ctl' talks to. Run it where the user is (a laptop, a LAN machine); it
needs no root unless it attaches a TAP device.

Examples:
  vnet proxy --key-file net.key
  vnet proxy --key-file net.key --listen tcp://:443 --listen udp://:5000 --state-dir /var/lib/vnet
  sudo vnet proxy --key-file net.key --tap vnet0    # bridge the overlay to a TAP device here
  vnet proxy --key-file net.key --netstack 10.0.0.1/24 --forward tcp:8080=10.0.0.5:80   # no root

With --netstack the proxy is the VMs' gateway without root: it hands out
addresses in CIDR by DHCP (router, DNS and MTU included), answers DNS at its
address by relaying to this machine's resolvers, and carries the VMs' TCP and
UDP to the real network through its own sockets (userspace NAT). A VM reaches
this machine's loopback at the gateway's address (e.g. 10.0.0.1:22 is
127.0.0.1:22 here). ICMP is not carried. Give an IPv6 prefix too
(--netstack 10.0.0.1/24,fd00:1::1/64) and the gateway also sends router
advertisements: the prefix (a /64 lets the VMs pick their own addresses), itself
as default router and DNS server, and the MTU; its IPv6 address reaches [::1]
here.

Reload without restart: on SIGHUP or 'vnet ctl reload' the proxy re-reads
--topology FILE and --config FILE and applies only what changed; links that
did not change carry traffic throughout. Live settings: adapt, broadcast-rate,
api-token-file (also a new token in the same file), log-level; any other
that changed is reported as needing a restart.

`+configHelp)
	o.listen = fs.StringArray("listen", []string{"tcp://:5000", "udp://:5000", "quic://:5001"},
		"where hosts connect (repeatable): tcp://[ADDR]:PORT, udp://... (also answers STUN, with a\n"+
			"second STUN port next to it) or quic://...")
	o.keyFile = fs.String("key-file", "", "the network key, from 'vnet keygen' (required)")
	o.api = fs.String("api", "127.0.0.1:7777", "control API address (loopback only without --api-token-file; also serves the dashboard and\n"+
		"Prometheus /metrics); empty to disable")
	o.tokenFile = fs.String("api-token-file", "", "require the token in `FILE` of every API request (Authorization: Bearer, or\n"+
		"?token= in a browser); with it the API may listen beyond loopback")
	o.stateDir = fs.String("state-dir", "", "directory where links and rules survive restarts (written atomically)")
	o.lanIfaces = fs.StringArray("lan-iface", nil, "bridge the segment into the LAN of interface `IF` (AF_PACKET, promiscuous;\n"+
		"needs root or CAP_NET_RAW; turn off GRO on IF; repeatable)")
	o.taps = fs.StringArray("tap", nil, "create TAP device NAME and attach it to the proxy's switch (repeatable; needs root)")
	o.offload = fs.Bool("offload", true, "TAP devices take TCP segments of up to 64 KB, which cross links to hosts that take them whole (false: 1514-byte frames everywhere)")
	o.netstack = fs.String("netstack", "", "be the segment's gateway without root: CIDR is the segment and the gateway's\n"+
		"address in it (10.0.0.1/24; a bare network 10.0.0.0/24 takes its first address);\n"+
		"add ,IPV6CIDR (10.0.0.1/24,fd00:1::1/64) for IPv6 by router advertisements")
	o.forwards = fs.StringArray("forward", nil, "with --netstack, publish a VM service here: PROTO:[ADDR:]PORT=VMIP:PORT,\n"+
		"e.g. tcp:8080=10.0.0.5:80 (every interface) or udp:127.0.0.1:5353=10.0.0.5:53 (repeatable)")
	o.dnsServers = fs.StringArray("dns", nil, "with --netstack, relay DNS to this resolver IP[:PORT] (repeatable; default:\n"+
		"the nameservers of /etc/resolv.conf)")
	o.mtu = fs.Int("mtu", 1500, "with --netstack, the segment's IP MTU announced by DHCP")
	o.migrateCmd = fs.String("migrate-cmd", "", "run this shell `CMD` to move a VM between hosts (vnet ctl migrate, --adapt-migrate),\n"+
		"with the VM's MAC, the source and the target host as $1 $2 $3 (also\n"+
		"VNET_VM, VNET_FROM, VNET_TO, VNET_VM_IPS), e.g. a QEMU or libvirt live-migration\n"+
		"script; it returns when the VM runs on the target")
	o.migrateTimeout = fs.Duration("migrate-timeout", appliance.MigrateTimeout, "give up on a migration (--migrate-cmd) after this long")
	o.mkAcct, o.mkGlobal = accountFlags(fs), globalFlags(fs)
	o.mkAdapt = adaptFlags(fs)
	o.mkUDP = mtuFlags(fs)
	o.bcast = fs.Int("broadcast-rate", bridge.DefaultBroadcastRate, "broadcast and multicast frames a second each VM port may send (a burst of as many);\n"+
		"more are dropped and counted as broadcast-limit, so one VM's storm cannot flood the network (0: no limit)")
	o.mkLog = logFlags(fs)
	o.config = fs.String("config", "", "read settings from `FILE` (see below); the command line wins; re-read on SIGHUP and 'vnet ctl reload'")
	o.topology = fs.String("topology", "", "make the fast links and rules equal to `FILE`, in the topology language of 'vnet ctl apply'\n"+
		"(vnet ctl export writes one), at start and on SIGHUP or 'vnet ctl reload': only the difference is\n"+
		"applied, and what the adaptation controller made stays; a bad file changes nothing")
	return fs, o
}

func runProxy(ctx context.Context, args []string) error {
	fs, o := proxyFlags()
	if err := parseWithConfig(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageErr("unexpected argument %q", fs.Arg(0))
	}
	log, err := o.mkLog()
	if err != nil {
		return err
	}
	key, err := tunnel.LoadKeyFile(*o.keyFile)
	if err != nil {
		return err
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
	cfg := appliance.ProxyConfig{Key: key, API: *o.api, APIToken: token, StateDir: *o.stateDir, Log: log, Infer: acct, Global: o.mkGlobal(),
		Adapt: o.mkAdapt(), MigrateCmd: *o.migrateCmd, MigrateTimeout: *o.migrateTimeout}
	if cfg.Listen, err = parseEndpoints("--listen", *o.listen); err != nil {
		return err
	}
	cfg.NoOffload, cfg.UDP = !*o.offload, o.mkUDP()
	if cfg.BroadcastRate = *o.bcast; *o.bcast == 0 {
		cfg.BroadcastRate = -1
	} else if *o.bcast < 0 {
		return usageErr("--broadcast-rate %d: want frames a second, or 0 for no limit", *o.bcast)
	}
	ports, err := openPorts(*o.taps, nil, nil, nil, *o.offload, log)
	if err != nil {
		return err
	}
	for _, ifname := range *o.lanIfaces {
		lp, err := bridge.OpenPacket(ifname, log)
		if err != nil {
			closePorts(ports)
			return err
		}
		ports = append(ports, appliance.LocalPort{Name: "lan-" + ifname, Port: lp})
	}
	if *o.netstack != "" {
		gw, err := openGateway(*o.netstack, *o.forwards, *o.dnsServers, *o.mtu, log)
		if err != nil {
			closePorts(ports)
			return err
		}
		ports = append(ports, appliance.LocalPort{Name: "gateway", Port: gw})
	} else if len(*o.forwards) > 0 || len(*o.dnsServers) > 0 {
		closePorts(ports)
		return usageErr("--forward and --dns need --netstack")
	}
	cfg.Ports = ports
	var p *appliance.Proxy
	r := newReloader(args, func() *pflag.FlagSet { fs, _ := proxyFlags(); return fs }, fs)
	commonLive(r, func() *bridge.Switch { return p.Switch() }, func(tok string) error { return p.SetAPIToken(tok) })
	r.live["adapt"] = func(fs *pflag.FlagSet) (func() error, error) {
		on, _ := fs.GetBool("adapt")
		return func() error { p.SetAdapting(on); return nil }, nil
	}
	r.setToken(token)
	cfg.TopologyFile, cfg.ReloadSettings = *o.topology, r.reload
	r.mu.Lock() // a reload waits for p
	p, err = appliance.NewProxy(cfg)
	r.mu.Unlock()
	if err != nil {
		closePorts(ports)
		return err
	}
	onSIGHUP(ctx, func() {
		res, err := p.Reload()
		if err == nil {
			log.Info("SIGHUP: reloaded", "changes", strings.Join(res.Changes, "; "), "applied", strings.Join(res.Applied, "; "))
		}
	})
	<-ctx.Done()
	log.Info("shutting down")
	p.Close()
	return nil
}

func closePorts(ports []appliance.LocalPort) {
	for _, p := range ports {
		p.Port.Close()
	}
}

// parseEndpoints parses the URLs given to flag.
func parseEndpoints(flag string, urls []string) ([]tunnel.Endpoint, error) {
	var eps []tunnel.Endpoint
	for _, u := range urls {
		ep, err := tunnel.ParseEndpoint(u)
		if err != nil {
			return nil, usageErr("%s: %v", flag, err)
		}
		eps = append(eps, ep)
	}
	return eps, nil
}

func portErr(flag, arg string, err error) error { return fmt.Errorf("%s %s: %w", flag, arg, err) }

// openGateway builds the --netstack gateway from the proxy's flags.
func openGateway(cidrs string, forwards, dnsServers []string, mtu int, log *slog.Logger) (*gateway.Gateway, error) {
	cfg := gateway.Config{MTU: mtu, Log: log}
	for _, cidr := range strings.Split(cidrs, ",") {
		prefix, err := netip.ParsePrefix(strings.TrimSpace(cidr))
		switch {
		case err != nil:
			return nil, usageErr("--netstack %q: want a CIDR such as 10.0.0.1/24, and optionally ,fd00:1::1/64", cidr)
		case prefix.Addr().Is4() && !cfg.Prefix.IsValid():
			cfg.Prefix = prefix
		case prefix.Addr().Is6() && !cfg.Prefix6.IsValid():
			cfg.Prefix6 = prefix
		default:
			return nil, usageErr("--netstack %q: want one IPv4 CIDR and at most one IPv6 CIDR", cidrs)
		}
	}
	if !cfg.Prefix.IsValid() {
		return nil, usageErr("--netstack %q: an IPv4 CIDR is required (IPv6 comes beside it: 10.0.0.1/24,fd00:1::1/64)", cidrs)
	}
	for _, f := range forwards {
		fw, err := gateway.ParseForward(f)
		if err != nil {
			return nil, usageErr("--forward: %v", err)
		}
		cfg.Forwards = append(cfg.Forwards, fw)
	}
	for _, d := range dnsServers {
		ap, err := netip.ParseAddrPort(d)
		if err != nil {
			a, aerr := netip.ParseAddr(d)
			if aerr != nil {
				return nil, usageErr("--dns %q: want IP or IP:PORT", d)
			}
			ap = netip.AddrPortFrom(a, 53)
		}
		cfg.DNS = append(cfg.DNS, ap)
	}
	if cfg.DNS == nil {
		cfg.DNS = gateway.SystemResolvers()
		if len(cfg.DNS) == 0 {
			log.Warn("no resolver in /etc/resolv.conf: the VMs' DNS queries will go unanswered (give --dns)")
		}
	}
	return gateway.New(cfg)
}
