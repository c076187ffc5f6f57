package tunnel

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"testing"

	"vnet/bridge"
)

func FuzzHello(f *testing.F) {
	var b bytes.Buffer
	w := bufio.NewWriter(&b)
	writeHello(w, Hello{Name: "h1", Role: "host", Link: "star-h1"})
	f.Add(b.Bytes())
	f.Add([]byte{2, 0, 0, 2, '{', '}'})
	f.Add([]byte{1, 0, 0, 14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := readHello(bufio.NewReader(bytes.NewReader(data)))
		if err == nil && h.Version != WireVersion {
			t.Fatalf("accepted version %d", h.Version)
		}
	})
}

// FuzzLinkStream feeds arbitrary bytes to a link as if a peer had sent them:
// the link returns only well-formed frames and fails cleanly on the rest.
func FuzzLinkStream(f *testing.F) {
	frame := func(n int) []byte {
		b := make([]byte, HeaderLen+n)
		PutHeader(b, MsgFrame, n)
		return b
	}
	ping := make([]byte, HeaderLen+8)
	PutHeader(ping, MsgPing, 8)
	ctrl := append([]byte{MsgControl, 0, 0, 13}, `{"op":"test"}`...)
	f.Add(append(append(frame(60), ping...), frame(1514)...))
	f.Add(append(ctrl, frame(14)...))
	f.Add([]byte{MsgFrame, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		us, them := net.Pipe()
		go io.Copy(io.Discard, them) // pongs
		l := newLink(newStreamTransport(us, bufio.NewReader(bytes.NewReader(data))), Hello{Offload: true}, Hello{Name: "fuzz", Offload: true}, quietLog(), func(*Link, []byte) {})
		defer func() { l.Close(); them.Close() }()
		bufs := make([][]byte, 8)
		sizes := make([]int, 8)
		for i := range bufs {
			bufs[i] = make([]byte, bridge.BufSize)
		}
		for range 1000 {
			n, err := l.Read(bufs, sizes, bridge.Headroom)
			for i := 0; i < n; i++ {
				if sizes[i] < bridge.MinFrame || sizes[i] > bridge.MaxFrame {
					t.Fatalf("returned a frame of %d bytes", sizes[i])
				}
			}
			if err != nil {
				return
			}
		}
	})
}
