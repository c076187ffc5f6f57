package bridge

import "net"

// Frame sizes. A buffer holds Headroom bytes that a link may fill with its
// own header in place, then the frame itself.
const (
	// MaxFrame is the largest Ethernet frame (without FCS) the switch
	// carries: a 9000-byte jumbo payload plus header and one VLAN tag.
	MaxFrame = 9018 + 4
	// Headroom is free space before each frame in a pooled buffer, enough
	// for the largest link header, so links never copy to prepend one.
	Headroom = 64
	// BufSize is the size of one pooled buffer.
	BufSize = Headroom + MaxFrame
	// MinFrame is the shortest frame the switch accepts: two MACs and an
	// EtherType. Shorter input is dropped and counted as "runt".
	MinFrame = 14
)

// Port moves Ethernet frames between the switch and something outside it:
// a TAP device, a QEMU socket, a netstack VM or a link to another daemon.
//
// Contract (modelled on wireguard-go's tun.Device and conn.Bind):
//   - Read blocks until at least one frame is available, then fills
//     bufs[i][offset:] with up to len(bufs) frames, sets sizes[i] to the
//     length of frame i and returns how many it filled. bufs are owned by
//     the caller; Read must not keep them. A frame longer than
//     len(bufs[i])-offset is dropped by the port (and counted by it), never
//     truncated.
//   - Write sends frames bufs[i][offset:]. The bytes bufs[i][:offset] are
//     headroom the port may overwrite (to write a header in place). Write
//     must not keep the slices after it returns. It returns how many frames
//     it consumed; an error means the remaining frames were not sent.
//   - BatchSize is the most frames Read returns or Write wants at once; it
//     does not change during the port's life.
//   - Close makes blocked and later Reads return net.ErrClosed (possibly
//     wrapped) and later Writes fail. Close is safe to call more than once.
//   - Read and Write may be called concurrently with each other, but the
//     switch never calls Read from two goroutines at once, nor Write.
type Port interface {
	Read(bufs [][]byte, sizes []int, offset int) (n int, err error)
	Write(bufs [][]byte, offset int) (n int, err error)
	BatchSize() int
	Close() error
}

// ErrClosed is what a closed port's Read returns.
var ErrClosed = net.ErrClosed

// QuickPort is a Port whose Write returns at once whatever its peer does (a
// TAP device, a datagram link, an in-process VM: they drop rather than
// wait). The switch may write a lone frame to it from the reader's
// goroutine, when its writer is idle, to save a goroutine wake-up on the
// latency path. Ports whose Write may block on a slow peer (streams) must
// not report true: the reader would stall with them.
type QuickPort interface {
	Port
	QuickWrites() bool
}
