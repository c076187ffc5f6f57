package netns

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"net"
	"testing"
	"time"
)

const testDelay = 20 * time.Millisecond

func TestDelayTCP(t *testing.T) {
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- ServeDelayTCP(ctx, ln, echo.Addr().String(), testDelay) }()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	// A round trip takes the delay twice, and not much more.
	rtt := time.Duration(1 << 62)
	for range 5 {
		start := time.Now()
		if _, err := c.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
		rtt = min(rtt, time.Since(start))
	}
	if rtt < 2*testDelay || rtt > 2*testDelay+50*time.Millisecond {
		t.Errorf("round trip through the relay %v, want %v and a little", rtt, 2*testDelay)
	}
	// Bytes arrive whole and in order.
	data := make([]byte, 1<<20)
	rand.Read(data)
	go c.Write(data)
	got := make([]byte, len(data))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("1 MiB through the relay: %v, equal %v", err, bytes.Equal(got, data))
	}
	c.Close()
	cancel()
	if err := <-served; err != nil {
		t.Fatal(err)
	}
}

func TestDelayUDP(t *testing.T) {
	echo, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	go func() {
		b := make([]byte, 2048)
		for {
			n, from, err := echo.ReadFromUDPAddrPort(b)
			if err != nil {
				return
			}
			echo.WriteToUDPAddrPort(b[:n], from)
		}
	}()
	relay, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- ServeDelayUDP(ctx, relay, echo.LocalAddr().String(), testDelay) }()
	// Two clients, each answered on its own.
	for i := range 2 {
		c, err := net.DialUDP("udp", nil, relay.LocalAddr().(*net.UDPAddr))
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		msg := []byte{byte(i), 1, 2, 3}
		start := time.Now()
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 16)
		n, err := c.Read(b)
		rtt := time.Since(start)
		if err != nil || !bytes.Equal(b[:n], msg) {
			t.Fatalf("client %d: %v %x", i, err, b[:n])
		}
		if rtt < 2*testDelay || rtt > 2*testDelay+50*time.Millisecond {
			t.Errorf("client %d: round trip %v, want %v and a little", i, rtt, 2*testDelay)
		}
		c.Close()
	}
	cancel()
	if err := <-served; err != nil {
		t.Fatal(err)
	}
}
