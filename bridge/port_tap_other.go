//go:build !linux

package bridge

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
)

// errTAPNeedsLinux is why OpenTAP fails off Linux.
var errTAPNeedsLinux = errors.New("TAP ports need Linux")

// TAPPort is a Port on a TAP device. It exists only on Linux; elsewhere
// OpenTAP fails and this type only keeps callers compiling.
type TAPPort struct{}

var _ Port = (*TAPPort)(nil)

// OpenTAP fails off Linux.
func OpenTAP(name string, log *slog.Logger) (*TAPPort, error) {
	return nil, fmt.Errorf("creating TAP device %s: %w", name, errTAPNeedsLinux)
}

// Name returns "".
func (p *TAPPort) Name() string { return "" }

// Read implements Port; it always fails.
func (p *TAPPort) Read(bufs [][]byte, sizes []int, offset int) (int, error) { return 0, net.ErrClosed }

// Write implements Port; it always fails.
func (p *TAPPort) Write(bufs [][]byte, offset int) (int, error) { return 0, net.ErrClosed }

// BatchSize implements Port.
func (p *TAPPort) BatchSize() int { return 1 }

// Drops returns nil.
func (p *TAPPort) Drops() map[string]uint64 { return nil }

// Close implements Port.
func (p *TAPPort) Close() error { return nil }

// OpenTAPOffload fails off Linux.
func OpenTAPOffload(name string, log *slog.Logger) (*TAPPort, error) { return OpenTAP(name, log) }

// Offloads implements OffloadPort.
func (p *TAPPort) Offloads() bool { return false }
