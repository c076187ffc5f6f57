package main

import (
	"os"
	"runtime"
)

// A daemon runs Go code on half the Ps the runtime would give it (its
// default follows the CPUs and the cgroup's CPU limit), at least one. A
// host shares its machine with the VMs it serves, whose vCPUs carry the
// other half of every frame's work, and the proxy often shares one too.
// With a P per CPU, every wake-up from the poller also wakes an idle
// thread to spin for work it rarely finds, on a CPU a VM wanted. With
// half, on this 2-CPU machine (one P per daemon): 4.8 instead of 6.0
// context switches per ping at h1, the fast path +10 % and the star +8 %
// (iperf3 between TAP VMs, 3 alternating runs each), 156-197 µs RTT
// instead of 185-277 (bench/rtt.sh). GOMAXPROCS, when set, wins.
func daemonProcs(cmd string, getenv func(string) string, dflt int) (int, bool) {
	if (cmd != "host" && cmd != "proxy") || getenv("GOMAXPROCS") != "" {
		return 0, false
	}
	return max(1, dflt/2), true
}

// limitDaemonProcs applies daemonProcs to this process.
func limitDaemonProcs(cmd string) {
	if n, ok := daemonProcs(cmd, os.Getenv, runtime.GOMAXPROCS(0)); ok {
		runtime.GOMAXPROCS(n)
	}
}
