package tunnel

import (
	"bytes"
	"crypto/rand"
	mrand "math/rand/v2"
	"testing"
	"time"
)

// split cuts msg into chunks of at most chunkMax bytes, as a sender does.
func split(msg []byte, chunkMax int) [][]byte {
	var out [][]byte
	for len(msg) > chunkMax {
		out = append(out, msg[:chunkMax])
		msg = msg[chunkMax:]
	}
	return append(out, msg)
}

func TestReassembleInAnyOrder(t *testing.T) {
	r := NewReassembler(4, 64<<10, int64(time.Second))
	rng := mrand.New(mrand.NewPCG(3, 4))
	for iter := 0; iter < 500; iter++ {
		msg := make([]byte, 1+rng.IntN(20000))
		rand.Read(msg)
		chunks := split(msg, 1400)
		order := rng.Perm(len(chunks))
		var got []byte
		for k, i := range order {
			out, err := r.Add(MsgFrame, uint16(iter), uint8(i), uint8(len(chunks)), chunks[i], 0)
			if err != nil {
				t.Fatal(err)
			}
			if (out != nil) != (k == len(order)-1) {
				t.Fatalf("completion at %d of %d", k, len(order))
			}
			got = out
		}
		if !bytes.Equal(got, msg) {
			t.Fatalf("iteration %d: message corrupted", iter)
		}
	}
	if r.Pending() != 0 {
		t.Fatalf("%d left pending", r.Pending())
	}
}

func TestReassemblyBounded(t *testing.T) {
	r := NewReassembler(4, 4096, int64(time.Second))
	for id := 0; id < 100; id++ { // first halves only: never complete
		if _, err := r.Add(MsgFrame, uint16(id), 0, 2, make([]byte, 1000), 0); err != nil {
			t.Fatal(err)
		}
	}
	if r.Pending() != 4 || r.Expired != 96 {
		t.Fatalf("pending %d expired %d", r.Pending(), r.Expired)
	}
	if _, err := r.Add(MsgFrame, 500, 0, 2, nil, int64(2*time.Second)); err != nil || r.Pending() != 1 {
		t.Fatalf("timeout did not clear: %d pending, %v", r.Pending(), err)
	}
	if _, err := r.Add(MsgFrame, 500, 0, 2, nil, int64(2*time.Second)); err != ErrFragMismatch {
		t.Fatalf("duplicate fragment: %v", err)
	}
	for i := 0; i < 5; i++ {
		_, err := r.Add(MsgFrame, 600, uint8(i), 64, make([]byte, 1000), int64(2*time.Second))
		if i == 4 && err != ErrFragTooBig {
			t.Fatalf("oversize message: %v", err)
		}
	}
}

func FuzzInner(f *testing.F) {
	b := make([]byte, 20)
	PutInner(b, MsgFrame, 7, 1, 2)
	f.Add(b)
	f.Add([]byte{2, 0, 0, 0, 1, '{', '}'})
	f.Add([]byte{1, 0, 1, 5, 3})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := NewReassembler(4, 8192, int64(time.Second))
		for len(data) >= InnerHeaderLen {
			n := min(len(data), 7+int(data[0]%64))
			typ, id, idx, cnt, chunk, err := ParseInner(data[:n])
			data = data[n:]
			if err != nil {
				continue
			}
			if idx >= cnt || cnt > MaxFragments {
				t.Fatalf("accepted fragment %d/%d", idx, cnt)
			}
			msg, err := r.Add(typ, id, idx, cnt, chunk, 0)
			if err == nil && len(msg) > 8192 {
				t.Fatalf("message of %d bytes", len(msg))
			}
			if r.Pending() > 4 {
				t.Fatalf("%d pending", r.Pending())
			}
		}
	})
}
