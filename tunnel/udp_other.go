//go:build !linux

package tunnel

import (
	"net"
	"net/netip"
)

// portableUDPIO reads and writes one datagram at a time (no recvmmsg or
// sendmmsg off Linux).
type portableUDPIO struct {
	conn *net.UDPConn
	is6  bool
}

func newUDPIO(conn *net.UDPConn) (udpIO, bool, error) {
	la, _ := conn.LocalAddr().(*net.UDPAddr)
	is6 := la != nil && la.IP.To4() == nil
	return &portableUDPIO{conn: conn, is6: is6}, is6, nil
}

// tuneUDPSocket enlarges the socket buffers, best effort (see
// udpSocketBuffer for why).
func tuneUDPSocket(conn *net.UDPConn) {
	conn.SetReadBuffer(udpSocketBuffer)
	conn.SetWriteBuffer(udpSocketBuffer)
}

func (u *portableUDPIO) readBatch(bufs [][]byte, sizes []int, froms []netip.AddrPort) (int, error) {
	n, from, err := u.conn.ReadFromUDPAddrPort(bufs[0])
	if err != nil {
		return 0, err
	}
	sizes[0], froms[0] = n, from
	if n == len(bufs[0]) {
		sizes[0] = -1 // possibly truncated
	}
	return 1, nil
}

func (u *portableUDPIO) sendBatch(b *udpTxBatch) error {
	to, err := udpSockAddr(b.to, u.is6)
	if err != nil {
		return err
	}
	for i := 0; i < b.n; i++ {
		if _, err := u.conn.WriteToUDPAddrPort(b.datagram(i), to); err != nil {
			return err
		}
	}
	return nil
}

func (u *portableUDPIO) writeTo(b []byte, to netip.AddrPort) error {
	a, err := udpSockAddr(to, u.is6)
	if err != nil {
		return err
	}
	_, err = u.conn.WriteToUDPAddrPort(b, a)
	return err
}

func (u *portableUDPIO) close() error { return u.conn.Close() }
