#!/usr/bin/env bash
# Idle-ping RTT over a vnet UDP fast path, and what it costs in thread
# wake-ups: the proxy and host h1 in namespace vnrttA, host h2 in vnrttB
# (a veth pair between them), a TAP "VM" on each host, a fast path h1-h2.
# Pings go every 10 ms (the CPUs idle in between, as in the peers harness);
# the script prints ping's summary and the context switches per ping of
# each host daemon (all its threads), which show goroutine hand-offs and
# runtime wake-ups on the latency path. Needs root.
#
#   sudo bench/rtt.sh [BINARY] [PINGS]      default ./vnet, 1000
#
# A/B two builds by running it alternately, e.g.
#   for i in 1 2; do for b in /tmp/vnet-a /tmp/vnet-b; do bench/rtt.sh $b; done; done
set -euo pipefail
bin=${1:-./vnet}
n=${2:-1000}
[ "$(id -u)" = 0 ] || { echo "rtt.sh: needs root (network namespaces, TAP devices)" >&2; exit 1; }
[ -x "$bin" ] || { echo "rtt.sh: $bin is not an executable (build with CGO_ENABLED=0 go build -o vnet .)" >&2; exit 1; }
A=vnrttA B=vnrttB
. "$(dirname "$0")/twohosts.sh"
trap twohosts_down EXIT
twohosts_up udp
h1=${pids[1]} h2=${pids[2]}
twohosts_fast udp
ip netns exec $A ping -c 20 -i 0.01 -q 10.99.0.2 >/dev/null # warm: MACs learned, paths measured
switches() { cat /proc/"$1"/task/*/status | awk '/ctxt_switches/ {s += $2} END {print s}'; }
a1=$(switches "$h1") b1=$(switches "$h2")
ip netns exec $A ping -c "$n" -i 0.01 -q 10.99.0.2 | tail -1
a2=$(switches "$h1") b2=$(switches "$h2")
echo "context switches per ping: h1 $(( (a2 - a1) * 100 / n ))/100, h2 $(( (b2 - b1) * 100 / n ))/100"
