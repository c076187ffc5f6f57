package adapt

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

// BenchmarkPlanners reports greedy, improved (500 iterations) and exact objectives on small
// random instances, the ratios to the optimum, and the time each planner takes; and greedy
// plus improve times for 256 VMs on 64 hosts.
func BenchmarkPlanners(b *testing.B) {
	cases := []struct {
		name         string
		seed         uint64
		hosts, vms   int
		migrate      bool
		exact        bool
		improveIters int
	}{
		{"h4v8", 1, 4, 8, false, true, 500},
		{"h5v10", 2, 5, 10, false, true, 500},
		{"h6v12", 3, 6, 12, false, true, 500},
		{"h3v5-migrate", 4, 3, 5, true, true, 500},
		{"h4v6-migrate", 5, 4, 6, true, true, 500},
		{"h64v256", 6, 64, 256, false, false, 100},
		{"h64v256-migrate", 7, 64, 256, true, false, 100},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			rng := rand.New(rand.NewPCG(c.seed, 99))
			in := randInstance(rng, c.hosts, c.vms, c.migrate)
			if c.vms > 64 { // sparse demands for the large case: each VM talks to 4 others
				in.Demands = nil
				for i := 0; i < c.vms; i++ {
					for k := 1; k <= 4; k++ {
						in.Demands = append(in.Demands, Demand{vm(0xee, i), vm(0xee, (i*7+k*13)%c.vms), float64(1+rng.IntN(100)) * 1e6})
					}
				}
				in.Budget = Budget{MaxPerHost: 4, Share: 0.9}
			}
			var g, im, ex Plan
			var tg, ti, te time.Duration
			for i := 0; i < b.N; i++ {
				t0 := time.Now()
				g = Greedy(in)
				t1 := time.Now()
				im = Improve(in, g, c.improveIters, 1)
				t2 := time.Now()
				tg += t1.Sub(t0)
				ti += t2.Sub(t1)
				if c.exact {
					ex = Exact(in)
					te += time.Since(t2)
				}
			}
			n := float64(b.N)
			b.ReportMetric(g.Objective, "greedy_obj")
			b.ReportMetric(im.Objective, "improved_obj")
			b.ReportMetric(float64(tg.Microseconds())/n, "greedy_us")
			b.ReportMetric(float64(ti.Microseconds())/n, "improve_us")
			line := fmt.Sprintf("%-16s greedy %.4g (%v)  improved %.4g (%v)", c.name, g.Objective, tg/time.Duration(b.N), im.Objective, ti/time.Duration(b.N))
			if c.exact {
				b.ReportMetric(ex.Objective, "exact_obj")
				b.ReportMetric(float64(te.Microseconds())/n, "exact_us")
				b.ReportMetric(im.Objective/ex.Objective, "improved/exact")
				b.ReportMetric(g.Objective/ex.Objective, "greedy/exact")
				line += fmt.Sprintf("  exact %.4g (%v)  improved/exact %.4f  greedy/exact %.4f", ex.Objective, te/time.Duration(b.N), im.Objective/ex.Objective, g.Objective/ex.Objective)
			}
			b.Log(line)
		})
	}
}
