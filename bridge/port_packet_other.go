//go:build !linux

package bridge

import (
	"fmt"
	"log/slog"
	"net"
)

// PacketPort is a Port on a network interface through an AF_PACKET
// socket. It exists only on Linux; elsewhere OpenPacket fails.
type PacketPort struct{}

var _ Port = (*PacketPort)(nil)

// OpenPacket fails off Linux.
func OpenPacket(name string, log *slog.Logger) (*PacketPort, error) {
	return nil, fmt.Errorf("--lan-iface %s: bridging into a LAN interface needs Linux (AF_PACKET)", name)
}

func (p *PacketPort) Name() string { return "" }
func (p *PacketPort) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	return 0, net.ErrClosed
}
func (p *PacketPort) Write(bufs [][]byte, offset int) (int, error) { return 0, net.ErrClosed }
func (p *PacketPort) BatchSize() int                               { return 1 }
func (p *PacketPort) Drops() map[string]uint64                     { return nil }
func (p *PacketPort) Close() error                                 { return nil }
