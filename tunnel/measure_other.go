//go:build !linux

package tunnel

import "net"

// tcpPathStats needs TCP_INFO, which only Linux has here.
func tcpPathStats(net.Conn, *pathStats) {}
