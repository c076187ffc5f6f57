package bridge

import (
	"testing"
	"time"

	"golang.org/x/time/rate"
)

type countPort struct{ bytes int }

func (c *countPort) Read([][]byte, []int, int) (int, error) { select {} }
func (c *countPort) Write(bufs [][]byte, offset int) (int, error) {
	for _, b := range bufs {
		c.bytes += len(b) - offset
	}
	return len(bufs), nil
}
func (c *countPort) BatchSize() int { return 64 }
func (c *countPort) Close() error   { return nil }

// TestShape writes 1 MB through a port shaped to 4 MB/s: it cannot take
// less than about a quarter of a second (the burst is free).
func TestShape(t *testing.T) {
	cp := &countPort{}
	p := Shape(cp, rate.NewLimiter(4e6, 64<<10))
	frame := make([]byte, Headroom+1500)
	bufs := make([][]byte, 32)
	for i := range bufs {
		bufs[i] = frame
	}
	start := time.Now()
	for cp.bytes < 1e6 {
		if _, err := p.Write(bufs, Headroom); err != nil {
			t.Fatal(err)
		}
	}
	took := time.Since(start)
	if took < 200*time.Millisecond {
		t.Errorf("1 MB through a 4 MB/s shaper took %v, want at least 235 ms", took)
	}
}
