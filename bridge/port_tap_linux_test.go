package bridge

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// Addresses of the TAP test; they exist only inside its namespace.
var (
	tapDevIP = netip.MustParseAddr("10.250.0.1") // the kernel's, on the TAP device
	tapVMIP  = netip.MustParseAddr("10.250.0.2") // ours, spoken through the port
	tapVMMAC = net.HardwareAddr{0x02, 0x00, 0x5e, 0x00, 0x00, 0x02}
)

// TestTAPNetns creates a TAP device, moves it into a fresh network
// namespace and talks to that namespace's kernel through the port: the fd
// must stay bound to the device across the move.
func TestTAPNetns(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a TAP device")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs the ip command (iproute2)")
	}
	vmLeakCheck(t)
	ns := fmt.Sprintf("vnettaptest-%d", os.Getpid())
	tapRun(t, "ip", "netns", "add", ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	// Fewer frames to skip: no IPv6 chatter (best effort).
	exec.Command("ip", "netns", "exec", ns, "sh", "-c",
		"echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6").Run()

	log, _ := vmTestLog(t)
	p, err := OpenTAP("vtest0", log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	ifc, err := net.InterfaceByName("vtest0")
	if err != nil {
		t.Fatal(err)
	}
	devMAC := ifc.HardwareAddr

	tapRun(t, "ip", "link", "set", "vtest0", "netns", ns)
	tapRun(t, "ip", "-n", ns, "addr", "add", tapDevIP.String()+"/24", "dev", "vtest0")
	tapRun(t, "ip", "-n", ns, "link", "set", "vtest0", "up")

	// An echo request from an unknown neighbour: the kernel first asks
	// who we are, from the device's MAC.
	tapWrite(t, p, tapEcho(devMAC, 1, 56))
	tapAwait(t, p, 1514, "ARP request for "+tapVMIP.String(), func(f []byte) bool {
		if len(f) < 42 || binary.BigEndian.Uint16(f[12:]) != 0x0806 || binary.BigEndian.Uint16(f[20:]) != 1 {
			return false
		}
		if netip.AddrFrom4([4]byte(f[38:42])) != tapVMIP {
			return false
		}
		if !bytes.Equal(f[6:12], devMAC) || !bytes.Equal(f[22:28], devMAC) || netip.AddrFrom4([4]byte(f[28:32])) != tapDevIP {
			t.Fatalf("ARP request not from the device: eth src %x, sender %x %v", f[6:12], f[22:28], f[28:32])
		}
		return true
	})

	// Our ARP reply releases the queued echo reply.
	tapWrite(t, p, tapARPReply(devMAC))
	tapAwait(t, p, 1514, "echo reply 1", tapIsEchoReply(devMAC, 1, 56))

	// Frames that queue up while nobody reads come out in one batch.
	var batch [][]byte
	for seq := 10; seq < 15; seq++ {
		batch = append(batch, tapEcho(devMAC, seq, 56))
	}
	tapWrite(t, p, batch...)
	time.Sleep(200 * time.Millisecond)
	frames := tapReadBatch(t, p, 16, 1514)
	replies := 0
	for _, f := range frames {
		if tapIsEchoReply(devMAC, 10+replies, 56)(f) {
			replies++
		}
	}
	if replies != 5 {
		t.Fatalf("one Read returned %d frames with %d of 5 queued echo replies", len(frames), replies)
	}

	// The steady state allocates nothing: one echo out, its reply back.
	if !qemuRaceEnabled() {
		watchdog := time.AfterFunc(10*time.Second, func() { p.Close() })
		req := vmBatch(tapEcho(devMAC, 20, 56))
		bufs, sizes := [][]byte{make([]byte, BufSize), make([]byte, BufSize)}, make([]int, 2)
		allocs := testing.AllocsPerRun(50, func() {
			if _, err := p.Write(req, Headroom); err != nil {
				t.Fatal(err)
			}
			if _, err := p.Read(bufs, sizes, Headroom); err != nil {
				t.Fatal(err)
			}
		})
		watchdog.Stop()
		if allocs != 0 {
			t.Fatalf("%v allocations per Write+Read, want 0", allocs)
		}
	}

	// A frame longer than the buffer is dropped and counted, not cut.
	tapWrite(t, p, tapEcho(devMAC, 2, 400))
	time.Sleep(100 * time.Millisecond)
	tapWrite(t, p, tapEcho(devMAC, 3, 56))
	tapAwait(t, p, 200, "echo reply 3", func(f []byte) bool {
		if tapIsEchoReply(devMAC, 2, 400)(f) {
			t.Fatalf("a 442-byte frame came through a 200-byte buffer")
		}
		return tapIsEchoReply(devMAC, 3, 56)(f)
	})
	if d := p.Drops(); d["oversize"] < 1 {
		t.Fatalf("drops = %v, want oversize", d)
	}

	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Read(make([][]byte, 1), make([]int, 1), 0); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Read after Close: %v", err)
	}
	if _, err := p.Write([][]byte{tapEcho(devMAC, 4, 56)}, 0); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Write after Close: %v", err)
	}
}

// TestTAPCloseUnblocksRead checks that Close ends a Read that is waiting.
func TestTAPCloseUnblocksRead(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a TAP device")
	}
	vmLeakCheck(t)
	p, err := OpenTAP("vtest1", nil)
	if err != nil {
		t.Fatal(err)
	}
	r := startVMReader(t, p, 1514)
	time.Sleep(50 * time.Millisecond)
	p.Close()
	r.closedErr(t)
	if _, err := net.InterfaceByName("vtest1"); err == nil {
		t.Fatalf("device still exists after Close")
	}
}

func TestTAPOpenErrors(t *testing.T) {
	if _, err := OpenTAP("a-name-far-too-long", nil); err == nil || !strings.Contains(err.Error(), "name longer") {
		t.Fatalf("long name: %v", err)
	}
	if os.Geteuid() == 0 {
		return
	}
	_, err := OpenTAP("vtest0", nil)
	if err == nil || !strings.Contains(err.Error(), "needs root or CAP_NET_ADMIN") {
		t.Fatalf("unprivileged OpenTAP: %v", err)
	}
}

// tapRun runs a command, failing the test with its output.
func tapRun(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// tapWrite writes frames through the port at Headroom.
func tapWrite(t *testing.T, p *TAPPort, frames ...[]byte) {
	t.Helper()
	if n, err := p.Write(vmBatch(frames...), Headroom); n != len(frames) || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	if d := p.Drops(); d["write-error"] > 0 {
		t.Fatalf("drops = %v", d)
	}
}

// tapReadBatch calls Read once with nbufs buffers of room bytes and returns
// copies of the frames; it gives up (closing the port) after 5 s.
func tapReadBatch(t *testing.T, p *TAPPort, nbufs, room int) [][]byte {
	t.Helper()
	bufs, sizes := make([][]byte, nbufs), make([]int, nbufs)
	for i := range bufs {
		bufs[i] = make([]byte, Headroom+room)
	}
	type result struct {
		n   int
		err error
	}
	done := make(chan result, 1)
	go func() {
		n, err := p.Read(bufs, sizes, Headroom)
		done <- result{n, err}
	}()
	var res result
	select {
	case res = <-done:
	case <-time.After(5 * time.Second):
		p.Close()
		<-done
		t.Fatalf("no frame from the TAP device in 5 s")
	}
	if res.err != nil {
		t.Fatalf("Read: %v", res.err)
	}
	frames := make([][]byte, res.n)
	for i := range frames {
		frames[i] = bytes.Clone(bufs[i][Headroom : Headroom+sizes[i]])
	}
	return frames
}

// tapAwait reads until a frame matches, skipping others.
func tapAwait(t *testing.T, p *TAPPort, room int, what string, match func([]byte) bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		for _, f := range tapReadBatch(t, p, 8, room) {
			if len(f) >= 14 && match(f) {
				return
			}
			t.Logf("skipping a %d-byte frame of type %#04x", len(f), binary.BigEndian.Uint16(f[12:]))
		}
	}
	t.Fatalf("no %s", what)
}

// tapChecksum is the Internet checksum of b.
func tapChecksum(b []byte) uint16 {
	var sum uint32
	for ; len(b) >= 2; b = b[2:] {
		sum += uint32(b[0])<<8 | uint32(b[1])
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

// tapEcho builds an ICMP echo request from us to the device's address.
func tapEcho(devMAC net.HardwareAddr, seq, payload int) []byte {
	f := make([]byte, 14+20+8+payload)
	copy(f, devMAC)
	copy(f[6:], tapVMMAC)
	binary.BigEndian.PutUint16(f[12:], 0x0800)
	ip := f[14:34]
	ip[0], ip[8], ip[9] = 0x45, 64, 1 // IPv4, TTL, ICMP
	binary.BigEndian.PutUint16(ip[2:], uint16(20+8+payload))
	binary.BigEndian.PutUint16(ip[4:], uint16(seq))
	copy(ip[12:], tapVMIP.AsSlice())
	copy(ip[16:], tapDevIP.AsSlice())
	binary.BigEndian.PutUint16(ip[10:], tapChecksum(ip))
	icmp := f[34:]
	icmp[0] = 8
	binary.BigEndian.PutUint16(icmp[4:], 0x7e57)
	binary.BigEndian.PutUint16(icmp[6:], uint16(seq))
	for i := 8; i < len(icmp); i++ {
		icmp[i] = byte(seq + i)
	}
	binary.BigEndian.PutUint16(icmp[2:], tapChecksum(icmp))
	return f
}

// tapIsEchoReply matches the kernel's reply to tapEcho(devMAC, seq, payload).
func tapIsEchoReply(devMAC net.HardwareAddr, seq, payload int) func([]byte) bool {
	req := tapEcho(devMAC, seq, payload)
	return func(f []byte) bool {
		if len(f) != len(req) || binary.BigEndian.Uint16(f[12:]) != 0x0800 || f[23] != 1 {
			return false
		}
		if !bytes.Equal(f[:6], tapVMMAC) || !bytes.Equal(f[6:12], devMAC) {
			return false
		}
		if !bytes.Equal(f[26:30], tapDevIP.AsSlice()) || !bytes.Equal(f[30:34], tapVMIP.AsSlice()) || tapChecksum(f[14:34]) != 0 {
			return false
		}
		icmp := f[34:]
		return icmp[0] == 0 && tapChecksum(icmp) == 0 && bytes.Equal(icmp[4:], req[38:])
	}
}

// tapARPReply tells the device that tapVMIP is at tapVMMAC.
func tapARPReply(devMAC net.HardwareAddr) []byte {
	f := make([]byte, 42)
	copy(f, devMAC)
	copy(f[6:], tapVMMAC)
	binary.BigEndian.PutUint16(f[12:], 0x0806)
	binary.BigEndian.PutUint16(f[14:], 1)      // Ethernet
	binary.BigEndian.PutUint16(f[16:], 0x0800) // IPv4
	f[18], f[19] = 6, 4
	binary.BigEndian.PutUint16(f[20:], 2) // reply
	copy(f[22:], tapVMMAC)
	copy(f[28:], tapVMIP.AsSlice())
	copy(f[32:], devMAC)
	copy(f[38:], tapDevIP.AsSlice())
	return f
}
