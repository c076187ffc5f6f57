package main

import (
	"time"

	"github.com/spf13/pflag"

	"vnet/adapt"
	"vnet/appliance"
	"vnet/infer"
)

// accountFlags adds the flags of traffic accounting (VTTIF's local half,
// on every daemon with VM ports).
func accountFlags(fs *pflag.FlagSet) func() (infer.AccountConfig, error) {
	bt := fs.String("infer-byte-threshold", "10KiB", "a VM pair counts as talking once it moves this much within\n"+
		"--infer-time-bound (lower: light applications are seen sooner, but chatter triggers too)")
	tb := fs.Duration("infer-time-bound", infer.DefaultTimeBound, "the rate trigger's window")
	tmax := fs.Duration("infer-tmax", infer.DefaultTMax, "a pair is reported after talking this long (shorter reacts\n"+
		"faster, longer ignores bursts)")
	twait := fs.Duration("infer-twait", infer.DefaultTWait, "a pair is reported quiet after this long without traffic\n"+
		"(shorter forgets finished phases sooner but flaps on long compute phases)")
	hist := fs.Duration("infer-history", infer.DefaultAccountHistory, "how far back 'vnet ctl matrix --last' can look on this daemon")
	return func() (infer.AccountConfig, error) {
		n, err := parseSize(*bt)
		if err != nil {
			return infer.AccountConfig{}, usageErr("--infer-byte-threshold: %v", err)
		}
		for _, d := range []*time.Duration{tb, tmax, twait, hist} {
			if *d <= 0 {
				return infer.AccountConfig{}, usageErr("the --infer-* durations must be positive")
			}
		}
		return infer.AccountConfig{ByteThreshold: uint64(n), TimeBound: *tb, TMax: *tmax, TWait: *twait, History: *hist}, nil
	}
}

// globalFlags adds the proxy's flags of aggregation and change detection.
func globalFlags(fs *pflag.FlagSet) func() infer.GlobalConfig {
	window := fs.Duration("infer-window", 10*time.Second, "the global matrix is smoothed over this window; pairs are judged by their best\n"+
		"recent rate in it (longer: steadier, slower to drop traffic that stopped)")
	thr := fs.Float64("infer-threshold", 0.3, "a topology change is declared when the smoothed, normalised matrix moves\n"+
		"this far (0..1) from the last declared one (lower: more sensitive, may flap)")
	bmin := fs.Float64("infer-bmin", 0.1, "entries below this share of the largest are not edges of the topology")
	settle := fs.Duration("infer-settle", infer.DefaultSettle, "a new topology is declared once it has been seen unchanged this long\n"+
		"(shorter: faster, but may declare a pattern before every host has reported it)")
	return func() infer.GlobalConfig {
		return infer.GlobalConfig{Window: *window, Threshold: *thr, BMin: *bmin, Settle: *settle}
	}
}

// adaptFlags adds the proxy's flags of the adaptation controller.
func adaptFlags(fs *pflag.FlagSet) func() appliance.AdaptConfig {
	on := fs.Bool("adapt", false, "adapt the overlay to the inferred traffic: add and remove fast paths and rules by itself")
	interval := fs.Duration("adapt-interval", 10*time.Second, "re-plan at least this often (and on every topology change)")
	window := fs.Duration("adapt-window", 30*time.Second, "plan for the traffic of this last window")
	perHost := fs.Int("adapt-max-links-per-host", 3, "budget: fast paths per host (0: no limit)")
	total := fs.Int("adapt-max-links", 0, "budget: fast paths in all (0: no limit)")
	share := fs.Float64("adapt-share", 0.9, "budget: stop adding fast paths once this share of inter-host traffic is on them")
	dwell := fs.Duration("adapt-dwell", 30*time.Second, "a fast path stays at least this long (damping)")
	hyst := fs.Float64("adapt-hysteresis", 0.05, "apply a new plan only if it improves the objective by this share (damping)")
	rate := fs.Int("adapt-max-changes", 20, "apply at most this many changes per minute (damping)")
	migrate := fs.Bool("adapt-migrate", false, "let the controller also move VMs between hosts (needs --migrate-cmd;\n"+
		"no host gets more VMs than the busiest has now)")
	return func() appliance.AdaptConfig {
		return appliance.AdaptConfig{Enabled: *on, Interval: *interval, Window: *window,
			Budget:  adapt.Budget{MaxLinks: *total, MaxPerHost: *perHost, Share: *share},
			Damp:    adapt.DampConfig{MinDwell: *dwell, Hysteresis: *hyst, MaxChangesPerMinute: *rate},
			Migrate: *migrate}
	}
}
