//go:build linux

package tunnel

import (
	"bytes"
	"net"
	"net/netip"
	"testing"
	"time"
)

// TestUDPOffloadRoundTrip sends runs of equal datagrams (segmented with
// UDP_SEGMENT where the kernel has it) over loopback to a socket that
// takes them coalesced (UDP_GRO), and checks that readBatch hands out
// every datagram, whole and in order, across batches smaller than what
// one coalesced message holds.
// TestUDPOffloadRoundTrip sends runs of datagrams with UDP_SEGMENT and
// receives them with UDP_GRO, over IPv4 and IPv6 loopback.
func TestUDPOffloadRoundTrip(t *testing.T) {
	for _, c := range []struct{ name, network, ip string }{{"ipv4", "udp4", "127.0.0.1"}, {"ipv6", "udp6", "::1"}} {
		t.Run(c.name, func(t *testing.T) { testUDPOffloadRoundTrip(t, c.network, net.ParseIP(c.ip)) })
	}
}

func testUDPOffloadRoundTrip(t *testing.T, network string, ip net.IP) {
	open := func() (*net.UDPConn, *linuxUDPIO) {
		c, err := net.ListenUDP(network, &net.UDPAddr{IP: ip})
		if err != nil {
			if ip.To4() == nil {
				t.Skipf("no IPv6 loopback: %v", err)
			}
			t.Fatal(err)
		}
		tuneUDPSocket(c)
		io, _, err := newUDPIO(c)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { io.close() })
		return c, io.(*linuxUDPIO)
	}
	_, tx := open()
	rxConn, rx := open()
	t.Logf("UDP_SEGMENT %v, UDP_GRO %v", tx.gso, rx.gro != nil)

	// Two super-frames' worth: 45 datagrams of 1452 bytes and a short
	// one, twice, then three lone small ones. The second super-frame's
	// datagrams are a header and a body apart, as a message sealed whole
	// sends them.
	var want [][]byte
	sizes := []int{}
	for range 2 {
		for range 45 {
			sizes = append(sizes, 1452)
		}
		sizes = append(sizes, 333)
	}
	sizes = append(sizes, 60, 60, 61)
	b := &udpTxBatch{bufs: make([][]byte, len(sizes)), size: make([]int, len(sizes)), body: make([][]byte, len(sizes))}
	for i, n := range sizes {
		d := make([]byte, 1452)
		for j := range d {
			d[j] = byte(i*7 + j)
		}
		b.bufs[i], b.size[i] = d, n
		if i >= 46 && i < 92 {
			b.size[i], b.body[i] = udpSealedHeaderLen, d[udpSealedHeaderLen:n]
		}
		want = append(want, d[:n])
	}
	b.n = len(sizes)
	b.to = rxConn.LocalAddr().(*net.UDPAddr).AddrPort()
	b.dest = &udpDest{}
	// Segmented where the kernel can, then one datagram per message.
	for _, gso := range []bool{true, false} {
		tx.gsoOff.Store(!gso)
		if err := tx.sendBatch(b); err != nil {
			t.Fatal(err)
		}
		receiveAll(t, rxConn, rx, tx, want)
	}
}

func receiveAll(t *testing.T, rxConn *net.UDPConn, rx, tx *linuxUDPIO, want [][]byte) {
	t.Helper()
	bufs := make([][]byte, 4)
	for i := range bufs {
		bufs[i] = make([]byte, 2048)
	}
	got := make([]int, len(bufs))
	froms := make([]netip.AddrPort, len(bufs))
	rxConn.SetReadDeadline(time.Now().Add(5 * time.Second))
	for i := 0; i < len(want); {
		n, err := rx.readBatch(bufs, got, froms)
		if err != nil {
			t.Fatalf("after %d of %d datagrams: %v", i, len(want), err)
		}
		for k := range n {
			if got[k] != len(want[i]) || !bytes.Equal(bufs[k][:got[k]], want[i]) {
				t.Fatalf("datagram %d: %d bytes, want %d (or other bytes)", i, got[k], len(want[i]))
			}
			if froms[k] != tx.conn.LocalAddr().(*net.UDPAddr).AddrPort() {
				t.Fatalf("datagram %d from %v", i, froms[k])
			}
			i++
		}
	}
}
