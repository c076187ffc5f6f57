package nat_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/pion/stun/v3"

	"vnet/nat"
	"vnet/nat/stuntest"
)

// The proxy's two STUN ports, as a host probes them, and a third server on
// another IP.
var (
	srvA = ap("198.51.100.1:5000")
	srvB = ap("198.51.100.1:3478")
	srvC = ap("198.51.100.2:3478")
)

func TestProbe(t *testing.T) {
	pub := ap("203.0.113.7:40000")
	lan := ap("192.168.1.10:5000")
	for _, tc := range []struct {
		name      string
		nat       stuntest.NAT
		servers   []netip.AddrPort // answering servers
		local     []netip.AddrPort
		want      nat.Mapping
		reflexive []netip.AddrPort
	}{
		{"endpoint-independent", stuntest.Static(pub), []netip.AddrPort{srvA, srvB}, []netip.AddrPort{lan}, nat.MappingEndpointIndependent, []netip.AddrPort{pub}},
		{"endpoint-independent, three servers", stuntest.Static(pub), []netip.AddrPort{srvA, srvB, srvC}, nil, nat.MappingEndpointIndependent, []netip.AddrPort{pub}},
		{"endpoint-dependent", stuntest.EndpointDependent(pub.Addr(), 40000), []netip.AddrPort{srvA, srvB}, []netip.AddrPort{lan}, nat.MappingEndpointDependent, aps("203.0.113.7:40000", "203.0.113.7:40001")},
		{"no NAT", stuntest.Static(lan), []netip.AddrPort{srvA, srvB}, []netip.AddrPort{lan}, nat.MappingNone, []netip.AddrPort{lan}},
		{"one silent", stuntest.Static(pub), []netip.AddrPort{srvA}, []netip.AddrPort{lan}, nat.MappingUnknown, []netip.AddrPort{pub}},
		{"one silent, no NAT", stuntest.Static(lan), []netip.AddrPort{srvB}, []netip.AddrPort{lan}, nat.MappingNone, []netip.AddrPort{lan}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lab := stuntest.New(t, tc.nat)
			for _, s := range tc.servers {
				lab.AddServer(s)
			}
			c := lab.Client()
			c.Local = tc.local
			probed := []netip.AddrPort{srvA, srvB}
			if len(tc.servers) > 2 {
				probed = tc.servers
			}
			start := time.Now()
			res, err := c.Probe(context.Background(), probed)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%v: %+v", time.Since(start), res)
			if res.Mapping != tc.want {
				t.Errorf("mapping %q, want %q", res.Mapping, tc.want)
			}
			// Reflexive holds the expected addresses, in the order of the
			// servers that reported them (the symmetric NAT numbers its
			// ports in arrival order, which varies).
			var inOrder []netip.AddrPort
			for _, s := range probed {
				if r, ok := res.PerServer[s]; ok && !slices.Contains(inOrder, r) {
					inOrder = append(inOrder, r)
				}
			}
			sorted := slices.SortedFunc(slices.Values(res.Reflexive), netip.AddrPort.Compare)
			if !slices.Equal(res.Reflexive, inOrder) || !slices.Equal(sorted, tc.reflexive) {
				t.Errorf("reflexive %v, want %v in server order", res.Reflexive, tc.reflexive)
			}
			if len(res.PerServer) != len(tc.servers) {
				t.Errorf("per server %v, want answers from %v", res.PerServer, tc.servers)
			}
			for _, s := range tc.servers {
				if !res.PerServer[s].IsValid() {
					t.Errorf("no answer recorded from %v", s)
				}
			}
			if len(tc.servers) == len(probed) {
				// Everyone answered: normally one send each (more only if a
				// delivery took longer than the retransmit interval).
				for _, s := range probed {
					if n := lab.Sent(s); n < 1 || n > testAttempts {
						t.Errorf("%d requests to %v", n, s)
					} else if n > 1 {
						t.Logf("%d requests to %v (slow delivery)", n, s)
					}
				}
			} else {
				// The silent server got every attempt.
				for _, s := range probed {
					if !slices.Contains(tc.servers, s) && lab.Sent(s) != testAttempts {
						t.Errorf("%d requests to silent %v, want %d", lab.Sent(s), s, testAttempts)
					}
				}
			}
		})
	}
}

func TestProbeLocalArgument(t *testing.T) {
	lan := ap("192.168.1.10:5000")
	lab := stuntest.New(t, stuntest.Static(lan))
	lab.AddServer(srvA)
	c := lab.Client()
	c.Local = []netip.AddrPort{ap("10.9.9.9:1")} // ignored by ProbeLocal
	res, err := c.ProbeLocal(context.Background(), []netip.AddrPort{srvA}, []netip.AddrPort{lan})
	if err != nil || res.Mapping != nat.MappingNone {
		t.Fatalf("ProbeLocal = %+v, %v; want none", res, err)
	}
}

func TestProbeNoAnswer(t *testing.T) {
	t.Run("attempts exhausted", func(t *testing.T) {
		lab := stuntest.New(t, stuntest.Static(ap("203.0.113.7:40000")))
		c := lab.Client()
		start := time.Now()
		res, err := c.Probe(context.Background(), []netip.AddrPort{srvA, srvB})
		took := time.Since(start)
		if !errors.Is(err, nat.ErrNoAnswer) {
			t.Fatalf("err = %v, want ErrNoAnswer", err)
		}
		t.Logf("after %v: %v", took, err)
		if len(res.Reflexive) != 0 || len(res.PerServer) != 0 || res.Mapping != nat.MappingUnknown {
			t.Fatalf("result %+v", res)
		}
		if min := (testAttempts-1)*testInterval + testFinal; took < min {
			t.Fatalf("gave up after %v, before %v", took, min)
		}
		for _, s := range []netip.AddrPort{srvA, srvB} {
			if n := lab.Sent(s); n != testAttempts {
				t.Errorf("%d requests to %v, want %d", n, s, testAttempts)
			}
		}
		if st := c.Stats(); st["requests"] != 2*testAttempts || st["retransmits"] != 2*(testAttempts-1) {
			t.Errorf("stats %v", st)
		}
	})
	t.Run("context ends", func(t *testing.T) {
		lab := stuntest.New(t, stuntest.Static(ap("203.0.113.7:40000")))
		c := lab.Client()
		ctx, cancel := context.WithTimeout(context.Background(), testInterval/2)
		defer cancel()
		_, err := c.Probe(ctx, []netip.AddrPort{srvA})
		if !errors.Is(err, nat.ErrNoAnswer) || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v, want ErrNoAnswer and DeadlineExceeded", err)
		}
		// One send, or none if the deadline passed before Probe started.
		if n := lab.Sent(srvA); n > 1 {
			t.Errorf("%d requests after the context ended early", n)
		}
	})
	t.Run("context already done", func(t *testing.T) {
		c := nat.NewClient(func([]byte, netip.AddrPort) error { t.Error("sent"); return nil })
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := c.Probe(ctx, []netip.AddrPort{srvA}); !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("no servers", func(t *testing.T) {
		c := nat.NewClient(func([]byte, netip.AddrPort) error { t.Error("sent"); return nil })
		if _, err := c.Probe(context.Background(), []netip.AddrPort{{}}); !errors.Is(err, nat.ErrNoAnswer) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("send fails", func(t *testing.T) {
		errDown := errors.New("network is down")
		c := nat.NewClient(func([]byte, netip.AddrPort) error { return errDown })
		_, err := c.Probe(context.Background(), []netip.AddrPort{srvA})
		if !errors.Is(err, nat.ErrNoAnswer) || !errors.Is(err, errDown) {
			t.Fatalf("err = %v", err)
		}
		if n := c.Stats()["requests"]; n != testAttempts {
			t.Fatalf("%d attempts after send errors, want %d", n, testAttempts)
		}
	})
}

// TestProbeRetransmit loses the first request (and, for one server, the
// first two): the retransmissions are answered.
func TestProbeRetransmit(t *testing.T) {
	pub := ap("203.0.113.7:40000")
	lab := stuntest.New(t, stuntest.Static(pub))
	lab.Drop = func(d stuntest.Datagram) bool {
		return d.Seq == 0 || (d.To == srvB && d.Seq == 1)
	}
	lab.AddServer(srvA)
	lab.AddServer(srvB)
	c := lab.Client()
	res, err := c.Probe(context.Background(), []netip.AddrPort{srvA, srvB})
	if err != nil {
		t.Fatal(err)
	}
	if res.Mapping != nat.MappingEndpointIndependent || !slices.Equal(res.Reflexive, []netip.AddrPort{pub}) {
		t.Fatalf("result %+v", res)
	}
	// Exactly 2 and 3 unless a delivery outlasts the retransmit interval.
	if a, b := lab.Sent(srvA), lab.Sent(srvB); a < 2 || b < 3 {
		t.Fatalf("sent %d to A and %d to B, want 2 and 3", a, b)
	}
	if st := c.Stats(); st["retransmits"] < 3 || st["responses"] != 2 {
		t.Fatalf("stats %v", st)
	}
}

// TestProbeDuplicates probes the same server in two forms: one request.
func TestProbeDuplicates(t *testing.T) {
	lab := stuntest.New(t, stuntest.Static(ap("203.0.113.7:40000")))
	lab.AddServer(ap("198.51.100.1:3478"))
	c := lab.Client()
	res, err := c.Probe(context.Background(), aps("198.51.100.1:3478", "[::ffff:198.51.100.1]:3478", "198.51.100.1:3478"))
	if err != nil {
		t.Fatal(err)
	}
	if len(res.PerServer) != 1 || c.Stats()["requests"] != 1 {
		t.Fatalf("result %+v, stats %v", res, c.Stats())
	}
}

// respondingClient returns a client whose send passes each request to
// respond (on Probe's goroutine) and feeds respond's answers to the
// client's Handle, recording what Handle returned.
func respondingClient(t *testing.T, respond func(req []byte, to netip.AddrPort) [][]byte) (*nat.Client, *[]bool) {
	var (
		c       *nat.Client
		mu      sync.Mutex
		handled []bool
	)
	c = nat.NewClient(func(b []byte, to netip.AddrPort) error {
		for _, r := range respond(b, to) {
			ok := c.Handle(r, to)
			mu.Lock()
			handled = append(handled, ok)
			mu.Unlock()
		}
		return nil
	})
	return c, &handled
}

func TestClientHandleForeign(t *testing.T) {
	pub := ap("203.0.113.7:40000")
	xor := &stun.XORMappedAddress{IP: net.IP(pub.Addr().AsSlice()), Port: int(pub.Port())}
	var other [stun.TransactionIDSize]byte
	other[0] = 1

	// Nothing pending: every response is someone else's.
	c := nat.NewClient(func([]byte, netip.AddrPort) error { return nil })
	for _, b := range [][]byte{
		mustBuild(t, stun.TransactionID, stun.BindingSuccess, xor, stun.Fingerprint),
		mustBuild(t, stun.TransactionID, stun.BindingRequest),
		[]byte("not stun"),
		nil,
	} {
		if c.Handle(b, srvA) {
			t.Errorf("took %x with nothing pending", b)
		}
	}

	// During a probe: the server first sends junk for other transactions,
	// our own request reflected back, an unusable response, then the answer.
	var own stun.Setter
	c, handled := respondingClient(t, func(req []byte, to netip.AddrPort) [][]byte {
		var id [stun.TransactionIDSize]byte
		copy(id[:], req[8:20])
		own = stun.NewTransactionIDSetter(id)
		noAddr := mustBuild(t, own, stun.BindingSuccess, stun.Fingerprint)
		shortAddr := mustBuild(t, own, stun.BindingSuccess, stun.RawAttribute{Type: stun.AttrXORMappedAddress, Value: []byte{0, 1, 0, 1, 2}})
		badFP := mustBuild(t, own, stun.BindingSuccess, xor, stun.Fingerprint)
		badFP[len(badFP)-1] ^= 1
		return [][]byte{
			mustBuild(t, stun.NewTransactionIDSetter(other), stun.BindingSuccess, xor, stun.Fingerprint), // unknown ID
			slices.Clone(req),        // a request with our ID: the server's business
			noAddr, shortAddr, badFP, // ours but unusable: consumed, not completing
			mustBuild(t, own, stun.BindingSuccess, xor, stun.Fingerprint), // the answer
			mustBuild(t, own, stun.BindingSuccess, xor, stun.Fingerprint), // a duplicate
		}
	})
	res, err := c.Probe(context.Background(), []netip.AddrPort{srvA})
	if err != nil {
		t.Fatal(err)
	}
	if res.PerServer[srvA] != pub {
		t.Fatalf("result %+v", res)
	}
	want := []bool{false, false, true, true, true, true, true}
	if !slices.Equal(*handled, want) {
		t.Fatalf("Handle results %v, want %v", *handled, want)
	}
	if st := c.Stats(); st["unmatched"] != 1 || st["malformed"] != 3 || st["responses"] != 1 || st["requests"] != 1 {
		t.Fatalf("stats %v", st)
	}
	// After the probe its transaction is forgotten.
	late := mustBuild(t, own, stun.BindingSuccess, xor)
	if c.Handle(late, srvA) {
		t.Fatal("took a response after the probe")
	}
}

// TestClientMappedAddressOnly accepts an RFC 3489 server's MAPPED-ADDRESS,
// and an error response ends that server's transaction without retries.
func TestClientMappedAddressOnly(t *testing.T) {
	pub := ap("[2001:db8:1::7]:5000")
	c, handled := respondingClient(t, func(req []byte, to netip.AddrPort) [][]byte {
		var id [stun.TransactionIDSize]byte
		copy(id[:], req[8:20])
		own := stun.NewTransactionIDSetter(id)
		if to == srvB {
			return [][]byte{mustBuild(t, own, stun.BindingError, stun.CodeServerError)}
		}
		return [][]byte{mustBuild(t, own, stun.BindingSuccess, &stun.MappedAddress{IP: net.IP(pub.Addr().AsSlice()), Port: int(pub.Port())})}
	})
	res, err := c.Probe(context.Background(), []netip.AddrPort{srvA, srvB})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.PerServer) != 1 || res.PerServer[srvA] != pub {
		t.Fatalf("result %+v", res)
	}
	if !slices.Equal(*handled, []bool{true, true}) || c.Stats()["requests"] != 2 {
		t.Fatalf("handled %v, stats %v", *handled, c.Stats())
	}
}

// TestClientConcurrentProbes runs probes in parallel on one client, each
// with its own transactions, while strays arrive.
func TestClientConcurrentProbes(t *testing.T) {
	pub := ap("203.0.113.7:40000")
	lab := stuntest.New(t, stuntest.Static(pub))
	lab.AddServer(srvA)
	lab.AddServer(srvB)
	c := lab.Client()
	stray := mustBuild(t, stun.TransactionID, stun.BindingSuccess, &stun.XORMappedAddress{IP: net.IPv4(1, 2, 3, 4), Port: 1})
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			res, err := c.Probe(context.Background(), []netip.AddrPort{srvA, srvB})
			if err != nil || res.Mapping != nat.MappingEndpointIndependent {
				t.Errorf("probe: %+v, %v", res, err)
			}
		})
		wg.Go(func() {
			for range 50 {
				if c.Handle(stray, srvA) {
					t.Error("stray taken")
					return
				}
			}
		})
	}
	wg.Wait()
}
