#!/usr/bin/env bash
# Where the CPUs go while iperf3 runs between two TAP VMs in the harness's layout (twohosts.sh),
# through the star or over a UDP fast path: the machine's split (user, system, softirq, idle; of
# 100 % per CPU) and, per daemon and iperf3 process, CPU, run-queue wait (runnable but not
# running: /proc/PID/task/*/schedstat) and context switches per second, over 4 s mid-run.
#
#   sudo bench/sched.sh [star|fast] [BINARY]      defaults: star ./vnet
set -euo pipefail
mode=${1:-star} bin=${2:-./vnet}
case $mode in star|fast) ;; *) echo "sched.sh: mode is star or fast, not $mode" >&2; exit 2;; esac
[ "$(id -u)" = 0 ] || { echo "sched.sh: needs root (network namespaces, TAP devices)" >&2; exit 1; }
[ -x "$bin" ] || { echo "sched.sh: $bin is not an executable" >&2; exit 1; }
command -v iperf3 >/dev/null || { echo "sched.sh: needs iperf3 (apt-get install iperf3)" >&2; exit 1; }
A=vnschA B=vnschB
. "$(dirname "$0")/twohosts.sh"
trap twohosts_down EXIT
twohosts_up udp
[ "$mode" = star ] || twohosts_fast udp
ip netns exec $A ping -c 5 -i 0.05 -q 10.99.0.2 >/dev/null
ip netns exec $B iperf3 -s -1 -D -B 10.99.0.2
sleep 0.3
ip netns exec $A iperf3 -c 10.99.0.2 -t 8 -J >"$w/iperf3.json" &
ipid=$!
sleep 2
procs=("${pids[@]}" $(pgrep -x iperf3))
names=(proxy h1 h2)
snap() {
  head -1 /proc/stat
  for p in "${procs[@]}"; do
    cat /proc/"$p"/task/*/schedstat 2>/dev/null | awk '{r+=$1; q+=$2; n+=$3} END {printf "%.0f %.0f %.0f\n", r, q, n}'
  done
}
s1=$(snap); sleep 4; s2=$(snap)
wait $ipid
paste <(echo "$s1") <(echo "$s2") | python3 -c '
import sys
rows = [l.split("\t") for l in sys.stdin.read().strip().split("\n")]
a, b = rows[0][0].split()[1:8], rows[0][1].split()[1:8]
d = [int(y) - int(x) for x, y in zip(a, b)]
t = sum(d) / 2  # per CPU, 2 CPUs or more: shares of one CPU
names = ["user", "nice", "system", "idle", "iowait", "irq", "softirq"]
print("machine (% of one CPU):", " ".join(f"{n}={100*v/t:.0f}" for n, v in zip(names, d) if n not in ("nice", "iowait", "irq")))
labels = sys.argv[1:]
for i, r in enumerate(rows[1:]):
    x, y = [list(map(int, c.split())) for c in r]
    lab = labels[i] if i < len(labels) else "iperf3"
    print(f"{lab:7} cpu={(y[0]-x[0])/4e7:3.0f}%  run-queue wait={(y[1]-x[1])/4e7:3.0f}%  switches/s={(y[2]-x[2])//4}")
' "${names[@]}" | { if [ "$mode" = fast ]; then grep -v '^proxy'; else cat; fi; }
python3 -c 'import json,sys; print("iperf3:", round(json.load(open(sys.argv[1]))["end"]["sum_received"]["bits_per_second"]/1e6), "Mbit/s")' "$w/iperf3.json"
