package infer

import (
	"encoding/binary"
	"runtime"
	"runtime/debug"
	"sync"
	"testing"
	"time"
)

// fakeClock is an injectable clock for the Accountant.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

// t0 is a whole minute, so second and minute slots line up in the tests.
var t0 = time.Unix(1_700_000_040, 0)

func newClock() *fakeClock { return &fakeClock{t: t0} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func vm(i int) MAC { return MAC{0x02, 0, 0, 0, byte(i >> 8), byte(i)} }

// frame builds an Ethernet frame of size bytes (at least 14).
func frame(src, dst MAC, etherType uint16, size int) []byte {
	f := make([]byte, size)
	copy(f[0:6], dst[:])
	copy(f[6:12], src[:])
	binary.BigEndian.PutUint16(f[12:14], etherType)
	return f
}

func vlanFrame(src, dst MAC, inner uint16, size int) []byte {
	f := frame(src, dst, etherVLAN, size)
	binary.BigEndian.PutUint16(f[14:16], 42)
	binary.BigEndian.PutUint16(f[16:18], inner)
	return f
}

func raceEnabled() bool {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return false
	}
	for _, s := range bi.Settings {
		if s.Key == "-race" {
			return s.Value == "true"
		}
	}
	return false
}

func entry(m Matrix, src, dst MAC) (Entry, bool) {
	for _, e := range m.Entries {
		if e.Src == src.String() && e.Dst == dst.String() {
			return e, true
		}
	}
	return Entry{}, false
}

func totals(es []Entry) (bytes, frames uint64) {
	for _, e := range es {
		bytes += e.Bytes
		frames += e.Frames
	}
	return
}

func TestMACString(t *testing.T) {
	if got := (MAC{0x02, 0xAB, 0, 1, 2, 0xff}).String(); got != "02:ab:00:01:02:ff" {
		t.Fatalf("String = %q", got)
	}
}

func TestAccountCounting(t *testing.T) {
	clk := newClock()
	a := NewAccountant(AccountConfig{Now: clk.Now})
	A, B, C := vm(1), vm(2), vm(3)
	a.Observe(true, [][]byte{
		frame(A, B, etherIPv4, 100),
		frame(A, B, etherIPv4, 100),
		frame(B, A, etherIPv6, 200),
		frame(A, B, 0x0806, 60),                                          // ARP: filtered
		frame(A, B, etherIPv4, 14)[:13],                                  // runt
		vlanFrame(A, C, etherIPv4, 300),                                  // tagged IPv4: counted
		vlanFrame(A, C, 0x0806, 64),                                      // tagged ARP: filtered
		frame(A, MAC{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, etherIPv4, 90), // broadcast
		frame(A, MAC{0x01, 0, 0x5e, 0, 0, 1}, etherIPv4, 90),             // multicast
		frame(A, B, etherIPv4, 100),
	})
	a.Observe(false, [][]byte{frame(C, A, etherIPv4, 1000), frame(C, A, etherIPv4, 1000)}) // from a link
	a.Observe(true, nil)

	m := a.Matrix(time.Second)
	if m.WindowS != 1 {
		t.Errorf("WindowS = %d, want 1", m.WindowS)
	}
	want := []Entry{
		{Src: A.String(), Dst: B.String(), Bytes: 300, Frames: 3},
		{Src: A.String(), Dst: C.String(), Bytes: 300, Frames: 1},
		{Src: B.String(), Dst: A.String(), Bytes: 200, Frames: 1},
	}
	if len(m.Entries) != len(want) {
		t.Fatalf("entries = %+v, want %+v", m.Entries, want)
	}
	for i := range want {
		if m.Entries[i] != want[i] {
			t.Errorf("entry %d = %+v, want %+v", i, m.Entries[i], want[i])
		}
	}
	st := a.Stats()
	for k, v := range map[string]uint64{
		"frames_counted": 5, "bytes_counted": 800, "frames_filtered": 2, "frames_runt": 1,
		"frames_group": 2, "frames_nonlocal": 2, "pairs": 3, "pairs_dropped": 0,
	} {
		if st[k] != v {
			t.Errorf("Stats[%s] = %d, want %d", k, st[k], v)
		}
	}
}

func TestAccountFilter(t *testing.T) {
	clk := newClock()
	a := NewAccountant(AccountConfig{Now: clk.Now, Filter: func(et uint16) bool { return et == 0x0806 }})
	A, B := vm(1), vm(2)
	a.Observe(true, [][]byte{frame(A, B, 0x0806, 60), frame(A, B, etherIPv4, 100)})
	m := a.Matrix(0)
	if len(m.Entries) != 1 || m.Entries[0].Bytes != 60 || m.Entries[0].Frames != 1 {
		t.Fatalf("entries = %+v, want one ARP frame of 60 bytes", m.Entries)
	}
	if m.WindowS != 3600 {
		t.Errorf("Matrix(0).WindowS = %d, want History 3600", m.WindowS)
	}
}

// feedSteady sends one frame of size bytes A→B each second for n seconds,
// the clock ending on the last second sent.
func feedSteady(a *Accountant, clk *fakeClock, A, B MAC, size, n int) {
	f := [][]byte{frame(A, B, etherIPv4, size)}
	for i := 0; i < n; i++ {
		if i > 0 {
			clk.Add(time.Second)
		}
		a.Observe(true, f)
	}
}

func TestAccountMatrixWindows(t *testing.T) {
	clk := newClock()
	a := NewAccountant(AccountConfig{Now: clk.Now})
	A, B := vm(1), vm(2)
	feedSteady(a, clk, A, B, 1000, 600) // ten minutes, 1000 B/s
	for _, tc := range []struct {
		last   time.Duration
		window int
		bytes  uint64
	}{
		{time.Second, 1, 1000},
		{1500 * time.Millisecond, 2, 2000}, // rounded up
		{time.Nanosecond, 1, 1000},
		{10 * time.Second, 10, 10000},
		{60 * time.Second, 60, 60000},
		{61 * time.Second, 61, 61000}, // oldest minute pro-rated
		{90 * time.Second, 90, 90000}, // half a minute pro-rated
		{125 * time.Second, 125, 125000},
		{300 * time.Second, 300, 300000}, // whole minutes
		{600 * time.Second, 600, 600000},
		{time.Hour, 3600, 600000},
		{2 * time.Hour, 3600, 600000}, // capped at History
	} {
		m := a.Matrix(tc.last)
		e, _ := entry(m, A, B)
		if m.WindowS != tc.window || e.Bytes != tc.bytes || e.Frames != tc.bytes/1000 {
			t.Errorf("Matrix(%v) = window %d, %+v; want window %d, %d bytes, %d frames",
				tc.last, m.WindowS, m.Entries, tc.window, tc.bytes, tc.bytes/1000)
		}
	}

	// Silence: the window slides past the traffic.
	clk.Add(30 * time.Second)
	if e, _ := entry(a.Matrix(30*time.Second), A, B); e.Bytes != 0 {
		t.Errorf("30 s after the last frame, Matrix(30s) = %+v, want empty", e)
	}
	if e, _ := entry(a.Matrix(40*time.Second), A, B); e.Bytes != 10000 {
		t.Errorf("Matrix(40s) = %d bytes, want 10000", e.Bytes)
	}
	// A burst inside one second is counted in that second only.
	a.Observe(true, [][]byte{frame(A, B, etherIPv4, 500), frame(A, B, etherIPv4, 500)})
	clk.Add(999 * time.Millisecond)
	if e, _ := entry(a.Matrix(time.Second), A, B); e.Bytes != 1000 || e.Frames != 2 {
		t.Errorf("same second: %+v, want 1000 bytes, 2 frames", e)
	}
	clk.Add(time.Millisecond)
	if e, _ := entry(a.Matrix(time.Second), A, B); e.Bytes != 0 {
		t.Errorf("next second: %+v, want nothing", e)
	}
}

func TestAccountHistoryExpiry(t *testing.T) {
	clk := newClock()
	a := NewAccountant(AccountConfig{Now: clk.Now, History: 5 * time.Minute})
	A, B := vm(1), vm(2)
	feedSteady(a, clk, A, B, 1000, 600)
	m := a.Matrix(time.Hour)
	if e, _ := entry(m, A, B); m.WindowS != 300 || e.Bytes != 300000 {
		t.Fatalf("Matrix(1h) with History 5m = window %d, %d bytes; want 300, 300000", m.WindowS, e.Bytes)
	}
	clk.Add(4 * time.Minute)
	if e, _ := entry(a.Matrix(time.Hour), A, B); e.Bytes != 60000 {
		t.Fatalf("4 min later: %d bytes, want 60000 (the last minute still in history)", e.Bytes)
	}
	clk.Add(2 * time.Minute)
	if m := a.Matrix(time.Hour); len(m.Entries) != 0 {
		t.Fatalf("beyond History: %+v, want empty", m.Entries)
	}
	// Long silence: the pair is evicted by Report, and the slots it used
	// are reused without mixing in stale cells.
	clk.Add(10 * time.Minute)
	a.Report()
	if st := a.Stats(); st["pairs"] != 0 || st["pairs_evicted"] != 1 {
		t.Fatalf("after long silence: pairs %d evicted %d, want 0 and 1", st["pairs"], st["pairs_evicted"])
	}
	C := vm(3)
	a.Observe(true, [][]byte{frame(C, A, etherIPv6, 700)})
	m = a.Matrix(time.Hour)
	if len(m.Entries) != 1 || m.Entries[0].Src != C.String() || m.Entries[0].Bytes != 700 {
		t.Fatalf("after eviction and reuse: %+v", m.Entries)
	}
}

// trigger test configuration: 10 KiB within 1 s, TMax 1 s, TWait 5 s.
func TestAccountTrigger(t *testing.T) {
	clk := newClock()
	a := NewAccountant(AccountConfig{TMax: time.Second, Now: clk.Now})
	A, B := vm(1), vm(2)
	fed := uint64(0) // bytes since the previous Report
	fedFrames := uint64(0)
	send := func(size int) {
		a.Observe(true, [][]byte{frame(A, B, etherIPv4, size)})
		fed += uint64(size)
		fedFrames++
	}
	report := func() ([]Entry, []Pair, bool) {
		d, q, act := a.Report()
		fed, fedFrames = 0, 0
		return d, q, act
	}

	// Below the threshold: 5 KB/s for 5 s is never reported.
	for s := 0; s < 5; s++ {
		for i := 0; i < 10; i++ {
			clk.Add(100 * time.Millisecond)
			send(500)
		}
		if d, q, act := report(); len(d) != 0 || len(q) != 0 || act {
			t.Fatalf("below threshold at %ds: deltas %+v quiet %v active %v", s+1, d, q, act)
		}
	}

	// Above: 20 KB/s. Hot from 5.6 s, so active at the report at 7 s,
	// with the deltas fed since the report at 5 s (a triggered pair keeps
	// them), which took 1.9 s (first frame at 5.1 s); later deltas are the
	// 0.9 s since the previous report's first frame.
	var firstActive int
	var keptB, keptF uint64
	for s := 6; s <= 10; s++ {
		for i := 0; i < 10; i++ {
			clk.Add(100 * time.Millisecond)
			send(2000)
		}
		wantB, wantF := fed+keptB, fedFrames+keptF
		d, q, act := report()
		if len(q) != 0 {
			t.Fatalf("quiet while sending: %v", q)
		}
		if s == 6 {
			if len(d) != 0 || act {
				t.Fatalf("reported after 0.4 s hot (TMax 1 s): %+v", d)
			}
			keptB, keptF = wantB, wantF
			continue
		}
		keptB, keptF = 0, 0
		if !act || len(d) != 1 {
			t.Fatalf("at %ds: deltas %+v active %v, want the pair active", s, d, act)
		}
		if firstActive == 0 {
			firstActive = s
		}
		want := Entry{Src: A.String(), Dst: B.String(), Bytes: wantB, Frames: wantF, SpanMS: 900}
		if s == 7 {
			want.SpanMS = 1900
		}
		if d[0] != want || wantB != 20000 && s != 7 || s == 7 && wantB != 40000 {
			t.Fatalf("at %ds: delta %+v, want %+v", s, d[0], want)
		}
	}
	if firstActive != 7 {
		t.Fatalf("first active report at %ds, want 7", firstActive)
	}

	// Stop. Last hot window ended at 9.9 s: still active (with no deltas)
	// until TWait, quiet at the report at 15 s, then nothing.
	for s := 11; s <= 16; s++ {
		clk.Add(time.Second)
		d, q, act := report()
		switch {
		case s < 15:
			if !act || len(d) != 0 || len(q) != 0 {
				t.Fatalf("at %ds: deltas %+v quiet %v active %v; want active, nothing new", s, d, q, act)
			}
		case s == 15:
			if act || len(q) != 1 || q[0] != (Pair{Src: A, Dst: B}) || len(d) != 0 {
				t.Fatalf("at %ds: deltas %+v quiet %v active %v; want A→B quiet", s, d, q, act)
			}
		default:
			if act || len(q) != 0 || len(d) != 0 {
				t.Fatalf("at %ds: deltas %+v quiet %v active %v; want nothing", s, d, q, act)
			}
		}
	}
	if st := a.Stats(); st["pairs_active"] != 0 || st["reports"] != 16 {
		t.Fatalf("stats %v", st)
	}
}

// TestAccountDue: Due turns true once a hot pair has been hot for TMax,
// so the host can report it at once, and false again after the Report
// that makes it active; a pair that went cold leaves Due false.
func TestAccountDue(t *testing.T) {
	clk := newClock()
	a := NewAccountant(AccountConfig{TMax: 250 * time.Millisecond, Now: clk.Now})
	A, B, C := vm(1), vm(2), vm(3)
	a.Report() // the host's periodic call: starts the delta interval
	if a.Due() {
		t.Fatal("due with no traffic")
	}
	step := func(src MAC, n int) {
		for range n {
			clk.Add(50 * time.Millisecond)
			a.Observe(true, [][]byte{frame(src, B, etherIPv4, 4000)})
		}
	}
	step(A, 4) // hot from the 3rd frame (12 KB), 100 ms before the clock
	if a.Due() {
		t.Fatal("due before TMax")
	}
	step(A, 4)
	if !a.Due() {
		t.Fatal("not due after TMax of sustained traffic")
	}
	d, _, act := a.Report()
	if !act || len(d) != 1 || d[0].Src != A.String() || d[0].Bytes != 8*4000 {
		t.Fatalf("report when due: %+v active %v", d, act)
	}
	if a.Due() {
		t.Fatal("still due after the report")
	}
	// C: one hot burst, then silence past TimeBound: cold again, not due.
	step(C, 3)
	clk.Add(2 * time.Second)
	if a.Due() {
		if d, _, _ := a.Report(); len(d) != 0 && d[0].Src == C.String() {
			t.Fatalf("a burst shorter than TMax was reported: %+v", d)
		}
	}
	if a.Due() {
		t.Fatal("due after a burst went cold")
	}
}

func TestAccountTriggerBurst(t *testing.T) {
	// 20 KB within 0.5 s, then silence: hot, but never for TMax.
	clk := newClock()
	a := NewAccountant(AccountConfig{TMax: time.Second, Now: clk.Now})
	A, B := vm(1), vm(2)
	for i := 0; i < 5; i++ {
		clk.Add(100 * time.Millisecond)
		a.Observe(true, [][]byte{frame(A, B, etherIPv4, 4000)})
	}
	for s := 0; s < 10; s++ {
		clk.Add(time.Second)
		if d, q, act := a.Report(); len(d) != 0 || len(q) != 0 || act {
			t.Fatalf("burst reported at +%ds: %+v %v %v", s+1, d, q, act)
		}
	}
	// A trigger broken by one cold window starts again from zero.
	b := NewAccountant(AccountConfig{Now: clk.Now, TMax: 3 * time.Second})
	for s := 0; s < 6; s++ {
		size := 20000
		if s == 2 {
			size = 100 // one cold second
		}
		b.Observe(true, [][]byte{frame(A, B, etherIPv4, size)})
		clk.Add(500 * time.Millisecond)
		if d, _, act := b.Report(); len(d) != 0 || act {
			t.Fatalf("reported at %d.5s despite a cold window: %+v", s, d)
		}
		clk.Add(500 * time.Millisecond)
	}
	b.Observe(true, [][]byte{frame(A, B, etherIPv4, 20000)})
	clk.Add(500 * time.Millisecond)
	if _, _, act := b.Report(); !act {
		t.Fatal("not active after TMax of unbroken hot windows")
	}
}

func TestAccountMaxPairs(t *testing.T) {
	clk := newClock()
	a := NewAccountant(AccountConfig{Now: clk.Now, MaxPairs: 4, History: time.Minute})
	var batch [][]byte
	for i := 0; i < 6; i++ {
		batch = append(batch, frame(vm(i), vm(100), etherIPv4, 100), frame(vm(i), vm(100), etherIPv4, 100))
	}
	a.Observe(true, batch)
	m := a.Matrix(0)
	st := a.Stats()
	if len(m.Entries) != 4 || st["pairs"] != 4 || st["pairs_dropped"] != 2 || st["frames_table_full"] != 4 || st["frames_counted"] != 8 {
		t.Fatalf("entries %d, stats %v; want 4 pairs kept, 2 dropped (4 frames)", len(m.Entries), st)
	}
	// Known pairs still count when the table is full.
	a.Observe(true, [][]byte{frame(vm(0), vm(100), etherIPv4, 100)})
	if e, _ := entry(a.Matrix(0), vm(0), vm(100)); e.Frames != 3 {
		t.Fatalf("known pair with full table: %+v", e)
	}
	// Once the old pairs fall out of history, new pairs take their place.
	clk.Add(4 * time.Minute)
	a.Observe(true, [][]byte{frame(vm(7), vm(100), etherIPv4, 100)})
	st = a.Stats()
	if st["pairs"] != 1 || st["pairs_evicted"] != 4 {
		t.Fatalf("after silence: stats %v, want the 4 old pairs evicted, 1 new", st)
	}
}

func TestAccountManyPairsOneBatch(t *testing.T) {
	// More distinct pairs in a batch than the per-call aggregate holds.
	clk := newClock()
	a := NewAccountant(AccountConfig{Now: clk.Now})
	var batch [][]byte
	for i := 0; i < 3*batchPairs+5; i++ {
		batch = append(batch, frame(vm(i), vm(1000+i%7), etherIPv4, 100+i))
	}
	a.Observe(true, batch)
	m := a.Matrix(time.Second)
	if len(m.Entries) != len(batch) {
		t.Fatalf("%d entries, want %d", len(m.Entries), len(batch))
	}
	for i, e := range m.Entries { // bytes descending
		if e.Bytes != uint64(100+len(batch)-1-i) {
			t.Fatalf("entry %d = %+v", i, e)
		}
	}
}

func TestAccountConcurrent(t *testing.T) {
	clk := newClock()
	a := NewAccountant(AccountConfig{Now: clk.Now})
	const G, N, B = 8, 300, 16
	var wg sync.WaitGroup
	for g := 0; g < G; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			var batch [][]byte
			for i := 0; i < B; i++ {
				batch = append(batch, frame(vm(g), vm(100+i%4), etherIPv4, 1000))
			}
			for n := 0; n < N; n++ {
				a.Observe(true, batch)
				a.Observe(false, batch[:1])
			}
		}(g)
	}
	stop := make(chan struct{})
	var readers sync.WaitGroup
	readers.Add(1)
	var reported uint64
	go func() {
		defer readers.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			clk.Add(10 * time.Millisecond)
			d, _, _ := a.Report()
			b, _ := totals(d)
			reported += b
			a.Matrix(time.Minute)
			a.Stats()
		}
	}()
	wg.Wait()
	close(stop)
	readers.Wait()
	m := a.Matrix(0)
	b, f := totals(m.Entries)
	if f != G*N*B || b != G*N*B*1000 || len(m.Entries) != G*4 {
		t.Fatalf("matrix %d frames %d bytes %d pairs; want %d, %d, %d", f, b, len(m.Entries), G*N*B, G*N*B*1000, G*4)
	}
	if st := a.Stats(); st["frames_counted"] != G*N*B || st["frames_nonlocal"] != G*N {
		t.Fatalf("stats %v", st)
	}
	if reported > b {
		t.Fatalf("reported %d bytes, more than the %d fed", reported, b)
	}
}

func TestAccountObserveAllocs(t *testing.T) {
	if raceEnabled() {
		t.Skip("allocation counts are not meaningful under -race")
	}
	a := NewAccountant(AccountConfig{}) // real clock: slots roll over too
	batch := benchBatch(64, 4)
	a.Observe(true, batch) // create the pairs
	if n := testing.AllocsPerRun(1000, func() { a.Observe(true, batch) }); n != 0 {
		t.Fatalf("Observe allocates %v times per batch, want 0", n)
	}
	if n := testing.AllocsPerRun(100, func() { a.Observe(false, batch) }); n != 0 {
		t.Fatalf("non-local Observe allocates %v times, want 0", n)
	}
}

// benchBatch is n frames of 1500 bytes over pairs distinct pairs.
func benchBatch(n, pairs int) [][]byte {
	batch := make([][]byte, n)
	for i := range batch {
		batch[i] = frame(vm(i%pairs), vm(100+i%pairs), etherIPv4, 1500)
	}
	return batch
}

func BenchmarkObserve(b *testing.B) {
	a := NewAccountant(AccountConfig{})
	batch := benchBatch(64, 4)
	b.ReportAllocs()
	b.SetBytes(64 * 1500)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		a.Observe(true, batch)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/64, "ns/frame")
}

func BenchmarkObserveParallel(b *testing.B) {
	a := NewAccountant(AccountConfig{})
	b.ReportAllocs()
	b.SetBytes(64 * 1500)
	var mu sync.Mutex
	next := 0
	b.RunParallel(func(pb *testing.PB) {
		mu.Lock()
		g := next
		next++
		mu.Unlock()
		batch := make([][]byte, 64)
		for i := range batch {
			batch[i] = frame(vm(g*8+i%4), vm(100+i%4), etherIPv4, 1500)
		}
		for pb.Next() {
			a.Observe(true, batch)
		}
	})
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/64, "ns/frame")
}

// fillHour makes vms VMs each talk to peers others, one frame per pair
// each second, for an hour of injected time, and returns the heap the
// Accountant holds.
func fillHour(vms, peers int) (heap uint64, a *Accountant) {
	batches := make([][][]byte, vms)
	for v := range batches {
		for p := 1; p <= peers; p++ {
			batches[v] = append(batches[v], frame(vm(v), vm((v+p)%vms), etherIPv4, 1500))
		}
	}
	clk := newClock()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	a = NewAccountant(AccountConfig{Now: clk.Now})
	for s := 0; s < 3600; s++ {
		for _, b := range batches {
			a.Observe(true, b)
		}
		clk.Add(time.Second)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(a)
	runtime.KeepAlive(batches)
	return after.HeapAlloc - before.HeapAlloc, a
}

func TestAccountMemory256VMsHour(t *testing.T) {
	if testing.Short() || raceEnabled() {
		t.Skip("fills an hour of history for 2048 pairs; skipped with -short and -race")
	}
	heap, a := fillHour(256, 8)
	st := a.Stats()
	t.Logf("256 VMs × 8 peers (%d pairs), 1 h of history: %.2f MiB heap, %d history cells",
		st["pairs"], float64(heap)/(1<<20), st["history_cells"])
	if st["pairs"] != 2048 {
		t.Fatalf("pairs = %d, want 2048", st["pairs"])
	}
	// A per-pair ring of 3600 one-second buckets would be 118 MB.
	if heap > 16<<20 {
		t.Fatalf("heap %d bytes for 2048 pairs × 1 h, want under 16 MiB", heap)
	}
	// The clock stands one second past the last batch: the first second
	// has just left the hour.
	if e, _ := entry(a.Matrix(time.Hour), vm(0), vm(1)); e.Frames != 3599 || e.Bytes != 3599*1500 {
		t.Fatalf("hour matrix: %+v, want 3599 frames", e)
	}
}

func BenchmarkMemory256VMsHour(b *testing.B) {
	for i := 0; i < b.N; i++ {
		heap, _ := fillHour(256, 8)
		b.ReportMetric(float64(heap)/(1<<20), "MiB")
	}
}

// FuzzObserve feeds arbitrary bytes as frames: no panic, and the
// accounting never exceeds what was fed.
func FuzzObserve(f *testing.F) {
	f.Add([]byte{20, 2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 8, 0, 0, 0, 0, 0, 0, 0}, true, uint8(0))
	f.Add(append([]byte{30}, frame(vm(1), vm(2), etherVLAN, 30)...), true, uint8(3))
	f.Add([]byte{13, 1, 2, 3}, false, uint8(1))
	f.Fuzz(func(t *testing.T, data []byte, local bool, step uint8) {
		clk := newClock()
		a := NewAccountant(AccountConfig{Now: clk.Now, MaxPairs: 8, ByteThreshold: 64})
		var frames [][]byte
		var fedBytes, fedFrames, reported uint64
		for len(data) > 0 {
			n := int(data[0])
			data = data[1:]
			if n > len(data) {
				n = len(data)
			}
			frames = append(frames, data[:n])
			fedBytes += uint64(n)
			fedFrames++
			data = data[n:]
			if len(frames) == 4 {
				a.Observe(local, frames)
				frames = frames[:0]
				clk.Add(time.Duration(step) * 50 * time.Millisecond)
				d, _, _ := a.Report()
				b, _ := totals(d)
				reported += b
			}
		}
		a.Observe(local, frames)
		d, _, _ := a.Report()
		b, _ := totals(d)
		reported += b
		mb, mf := totals(a.Matrix(0).Entries)
		st := a.Stats()
		if mb > fedBytes || mf > fedFrames || reported > fedBytes || st["bytes_counted"] > fedBytes {
			t.Fatalf("counted %d bytes %d frames (reported %d), fed %d bytes %d frames", mb, mf, reported, fedBytes, fedFrames)
		}
		sum := st["frames_counted"] + st["frames_filtered"] + st["frames_runt"] + st["frames_group"] +
			st["frames_nonlocal"] + st["frames_table_full"]
		if sum != fedFrames || mf != st["frames_counted"] {
			t.Fatalf("frame accounting: %v, fed %d, matrix %d", st, fedFrames, mf)
		}
	})
}
