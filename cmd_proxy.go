package main

import (
	"context"
	"fmt"

	"vnet/appliance"
	"vnet/tunnel"
)

func runProxy(ctx context.Context, args []string) error {
	fs := newFlags("proxy", "--key-file FILE [flags]", `
Run the proxy: the hub of the resilient star. Every host dials it and keeps a
link to it; broadcast and unknown traffic crosses it; it holds the desired
state (fast-path links and forwarding rules) and serves the control API that
'vnet ctl' talks to. Run it where the user is (a laptop, a LAN machine); it
needs no root unless it attaches a TAP device.

Examples:
  vnet proxy --key-file net.key
  vnet proxy --key-file net.key --listen tcp://:443 --listen udp://:5000 --state-dir /var/lib/vnet
  sudo vnet proxy --key-file net.key --tap vnet0    # bridge the overlay to a TAP device here`)
	listen := fs.StringArray("listen", []string{"tcp://:5000", "udp://:5000", "quic://:5001"},
		"where hosts connect (repeatable): tcp://[ADDR]:PORT, udp://... (also answers STUN, with a\n"+
			"second STUN port next to it) or quic://...")
	keyFile := fs.String("key-file", "", "the network key, from 'vnet keygen' (required)")
	api := fs.String("api", "127.0.0.1:7777", "control API address (loopback only); empty to disable")
	stateDir := fs.String("state-dir", "", "directory where links and rules survive restarts (written atomically)")
	taps := fs.StringArray("tap", nil, "create TAP device NAME and attach it to the proxy's switch (repeatable; needs root)")
	mkAcct, mkGlobal := accountFlags(fs), globalFlags(fs)
	mkAdapt := adaptFlags(fs)
	mkLog := logFlags(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageErr("unexpected argument %q", fs.Arg(0))
	}
	log, err := mkLog()
	if err != nil {
		return err
	}
	key, err := tunnel.LoadKeyFile(*keyFile)
	if err != nil {
		return err
	}
	acct, err := mkAcct()
	if err != nil {
		return err
	}
	cfg := appliance.ProxyConfig{Key: key, API: *api, StateDir: *stateDir, Log: log, Infer: acct, Global: mkGlobal(),
		Adapt: mkAdapt()}
	if cfg.Listen, err = parseEndpoints("--listen", *listen); err != nil {
		return err
	}
	ports, err := openPorts(*taps, nil, nil, nil, log)
	if err != nil {
		return err
	}
	cfg.Ports = ports
	p, err := appliance.NewProxy(cfg)
	if err != nil {
		closePorts(ports)
		return err
	}
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
