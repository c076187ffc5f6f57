package main

import (
	"os"
	"strings"
	"syscall"
)

// keepSysmonAwake is the GODEBUG setting a daemon runs with. The Go
// runtime's monitor thread (sysmon) sleeps deeply when every P is idle, and
// the first system call after an idle spell must wake it (a futex wake, an
// IPI to a halted CPU, and sysmon's own 20 µs re-check on that CPU). On the
// latency path that is every hop of a lone frame: an idle ping paid it four
// times a round trip, and with sysmon kept awake its round trip fell from
// 345 to 265 µs in the peers harness (bench/results/2026-12-06-sysmon.*).
// With schedtrace set, sysmon never sleeps deeply; it wakes
// every 10 ms instead (100 cheap wake-ups a second). The period is the
// largest the runtime takes (2^31-1 ms, 24.8 days), so its trace line
// appears only once every 24.8 days of the machine's uptime.
const keepSysmonAwake = "schedtrace=2147483647"

// daemonCommands are the long-running commands that carry frames.
var daemonCommands = map[string]bool{"proxy": true, "host": true, "demo": true}

// reexecWithSysmonAwake re-executes the binary in place (same pid,
// arguments and environment) with keepSysmonAwake added to GODEBUG, since
// the runtime reads that setting only at start. It returns, doing nothing,
// when cmd is not a daemon, when GODEBUG already names schedtrace (so
// GODEBUG=schedtrace=0 turns this off), or when the exec fails.
func reexecWithSysmonAwake(cmd string) {
	env, ok := sysmonAwakeEnv(cmd, os.Environ())
	if !ok {
		return
	}
	// Not /proc/self/exe: the process would be named "exe" in ps and top.
	exe, err := os.Executable()
	if err != nil {
		return
	}
	_ = syscall.Exec(exe, os.Args, env) // returns only on failure: run as we are
}

// sysmonAwakeEnv returns environ with keepSysmonAwake added to GODEBUG, and
// whether a re-exec is wanted for command cmd.
func sysmonAwakeEnv(cmd string, environ []string) ([]string, bool) {
	if !daemonCommands[cmd] {
		return nil, false
	}
	env := make([]string, 0, len(environ)+1)
	found := false
	for _, kv := range environ {
		v, isGodebug := strings.CutPrefix(kv, "GODEBUG=")
		if !isGodebug {
			env = append(env, kv)
			continue
		}
		for _, setting := range strings.Split(v, ",") {
			if key, _, _ := strings.Cut(setting, "="); strings.TrimSpace(key) == "schedtrace" {
				return nil, false
			}
		}
		if v != "" {
			v += ","
		}
		env = append(env, "GODEBUG="+v+keepSysmonAwake)
		found = true
	}
	if !found {
		env = append(env, "GODEBUG="+keepSysmonAwake)
	}
	return env, true
}
