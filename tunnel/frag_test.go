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
			out, err := r.Add(MsgFrame, uint64(iter), uint8(i), uint8(len(chunks)), chunks[i], 0)
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
		if _, err := r.Add(MsgFrame, uint64(id), 0, 2, make([]byte, 1000), 0); err != nil {
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
			msg, err := r.Add(typ, uint64(id), idx, cnt, chunk, 0)
			if err == nil && len(msg) > 8192 {
				t.Fatalf("message of %d bytes", len(msg))
			}
			if r.Pending() > 4 {
				t.Fatalf("%d pending", r.Pending())
			}
		}
	})
}

// Swap hands over an in-order message's own slab and reassembles the next
// one into the spare it was given; it declines out-of-order results (they
// live in shared scratch) and spares too small for a whole message.
func TestReassemblerSwap(t *testing.T) {
	const maxMsg = 64 << 10
	r := NewReassembler(4, maxMsg, int64(time.Second))
	add := func(id uint64, msg []byte, order []int) []byte {
		t.Helper()
		chunks := split(msg, 1400)
		var got []byte
		for _, i := range order {
			out, err := r.Add(MsgFrameGSO, id, uint8(i), uint8(len(chunks)), chunks[i], 0)
			if err != nil {
				t.Fatal(err)
			}
			got = out
		}
		if !bytes.Equal(got, msg) {
			t.Fatalf("message %d reassembled wrong", id)
		}
		return got
	}
	inOrder := func(n int) []int {
		o := make([]int, n)
		for i := range o {
			o[i] = i
		}
		return o
	}
	a, b := make([]byte, 60000), make([]byte, 60000)
	rand.Read(a)
	rand.Read(b)
	n := len(split(a, 1400))

	add(1, a, inOrder(n))
	if r.Swap(make([]byte, 1000)) != nil {
		t.Fatal("Swap took a spare too small for a whole message")
	}
	spare := make([]byte, maxMsg)
	got := r.Swap(spare)
	if !bytes.Equal(got, a) {
		t.Fatal("Swap did not return the message")
	}
	if r.Swap(make([]byte, maxMsg)) != nil {
		t.Fatal("Swap handed out the same message twice")
	}
	next := add(2, b, inOrder(n))
	if &next[0] != &spare[0] {
		t.Fatal("the next message was not reassembled into the spare")
	}
	if !bytes.Equal(got, a) {
		t.Fatal("the handed-over message changed under the next one")
	}

	rev := inOrder(n)
	rev[0], rev[1] = rev[1], rev[0]
	add(3, a, rev)
	if r.Swap(make([]byte, maxMsg)) != nil {
		t.Fatal("Swap handed out an out-of-order message's scratch")
	}
}

// Reassembling super-frames with Swap allocates nothing once warm, even
// when count chunks of the first one's size would exceed maxMsg.
func TestReassemblerSwapAllocs(t *testing.T) {
	const maxMsg = 64 << 10
	r := NewReassembler(4, maxMsg, int64(time.Second))
	msg := make([]byte, maxMsg-100) // 47 chunks of 1400 would be 65800 bytes
	chunks := split(msg, 1400)
	spares := [][]byte{make([]byte, maxMsg), make([]byte, maxMsg)}
	id := uint64(0)
	one := func() {
		id++
		for i, c := range chunks {
			if _, err := r.Add(MsgFrameGSO, id, uint8(i), uint8(len(chunks)), c, 0); err != nil {
				t.Fatal(err)
			}
		}
		got := r.Swap(spares[0])
		if got == nil {
			t.Fatal("Swap declined an in-order super-frame")
		}
		spares[0], spares[1] = spares[1], got[:maxMsg] // the caller's buffer goes back to its pool
	}
	one()
	if allocs := testing.AllocsPerRun(100, one); allocs != 0 {
		t.Fatalf("%.1f allocations per super-frame, want 0", allocs)
	}
}
