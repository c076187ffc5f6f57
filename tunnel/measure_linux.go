//go:build linux

package tunnel

import (
	"net"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// tcpPathStats reads the kernel's view of c's TCP connection (under TLS, if
// c is a TLS connection): bytes acknowledged, data segments sent and
// retransmitted, the minimum RTT. It leaves ps alone when c is not TCP.
func tcpPathStats(c net.Conn, ps *pathStats) {
	if nc, ok := c.(interface{ NetConn() net.Conn }); ok {
		c = nc.NetConn()
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return
	}
	var info *unix.TCPInfo
	if rc.Control(func(fd uintptr) {
		info, err = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	}) != nil || err != nil {
		return
	}
	ps.delivered, ps.hasDelivered = info.Bytes_acked, true
	ps.sent, ps.lost, ps.hasTxLoss = uint64(info.Data_segs_out), uint64(info.Total_retrans), true
	// The flag is a bit field in the byte after tcpi_options, which x/sys's
	// struct leaves as padding (the kernel fills it all the same).
	ps.appLimited = (*[8]byte)(unsafe.Pointer(info))[7]&1 != 0
	ps.hasAppLimited = true
	ps.rwndLimited, ps.hasRwnd = time.Duration(info.Rwnd_limited)*time.Microsecond, true
	ps.minRTT = time.Duration(info.Min_rtt) * time.Microsecond
}
