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
// half, on this 2-CPU machine (one P per daemon), h1 has 4.8 instead of
// 6.0 context switches per ping, and in one peers-harness run against the
// build before (bench/results/2026-12-07d-procs-ab.*) the fast path went
// 7581 -> 8256 Mbit/s, the star 5497 -> 5643, the idle RTT 191 -> 155 µs,
// with less daemon CPU. GOMAXPROCS, when set, wins.
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
