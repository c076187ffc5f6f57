package main

import (
	"context"
	"fmt"

	"vnet/tunnel"
)

func runKeygen(ctx context.Context, args []string) error {
	fs := newFlags("keygen", "> net.key", `
Print a new random network key. Every daemon of one network (the proxy and
all hosts) gets the same key with --key-file; links are authenticated and
encrypted with it (TLS 1.3), and a daemon without it cannot join, read or
inject. Keep the file private (mode 600).

Example:
  vnet keygen > net.key && chmod 600 net.key`)
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageErr("keygen takes no arguments")
	}
	k, err := tunnel.GenerateKey()
	if err != nil {
		return err
	}
	fmt.Println(k.String())
	return nil
}
