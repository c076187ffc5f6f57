package patterns_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"vnet/bridge"
	"vnet/bridge/netvm"
	"vnet/patterns"
)

// TestRunNetstackVMs runs a 2x2 torus with one rank in each of four
// netstack VMs on one vnet switch: the workload over vnet's own data path.
func TestRunNetstackVMs(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	const n = 4
	sw := bridge.New(bridge.Config{})
	t.Cleanup(sw.Close)
	peers := make([]string, n)
	nets := make([]patterns.Net, n)
	for i := range n {
		vm, err := netvm.New(netvm.Config{
			MAC:  net.HardwareAddr{0x52, 0x54, 0, 0, 0, byte(i + 1)},
			Addr: netip.MustParsePrefix(fmt.Sprintf("10.9.0.%d/24", i+1)),
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := sw.AddPort(fmt.Sprintf("vm%d", i), bridge.RoleLocal, vm); err != nil {
			vm.Close()
			t.Fatal(err)
		}
		peers[i] = fmt.Sprintf("10.9.0.%d:7000", i+1)
		nets[i] = vm
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	type out struct {
		res patterns.Result
		err error
	}
	ch := make(chan out, n)
	for i := range n {
		go func() {
			res, err := patterns.Run(ctx, patterns.Config{
				Rank: i, Peers: peers, Topology: "torus2d", Iters: 10, Size: 32 << 10,
				Net: nets[i], Timeout: 30 * time.Second,
			})
			ch <- out{res, err}
		}()
	}
	for range n {
		o := <-ch
		if o.err != nil {
			t.Fatal(o.err)
		}
		if want := uint64(10 * 32 << 10 * len(o.res.Peers)); o.res.Bytes != want || o.res.BytesRecv != want || len(o.res.Peers) != 2 {
			t.Errorf("rank %d: %+v, want %d bytes each way to 2 peers", o.res.Rank, o.res, want)
		}
	}
}
