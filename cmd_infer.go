package main

import (
	"time"

	"github.com/spf13/pflag"

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
	window := fs.Duration("infer-window", 10*time.Second, "the global matrix is smoothed over this window (longer: steadier,\n"+
		"slower to see a new pattern)")
	thr := fs.Float64("infer-threshold", 0.3, "a topology change is declared when the smoothed, normalised matrix moves\n"+
		"this far (0..1) from the last declared one (lower: more sensitive, may flap)")
	bmin := fs.Float64("infer-bmin", 0.1, "entries below this share of the largest are not edges of the topology")
	return func() infer.GlobalConfig {
		return infer.GlobalConfig{Window: *window, Threshold: *thr, BMin: *bmin}
	}
}
