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
w=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ip netns del $A 2>/dev/null || true
  ip netns del $B 2>/dev/null || true
  rm -rf "$w"
}
trap cleanup EXIT
ip netns add $A
ip netns add $B
ip link add ${A}0 netns $A type veth peer name ${B}0 netns $B
ip -n $A addr add 198.18.0.1/24 dev ${A}0
ip -n $B addr add 198.18.0.2/24 dev ${B}0
for ns in $A $B; do ip -n $ns link set lo up; ip -n $ns link set ${ns}0 up; done
"$bin" keygen >"$w/key"
ctl() { ip netns exec $A "$bin" ctl --api 127.0.0.1:7777 "$@"; }
ip netns exec $A "$bin" proxy --listen udp://198.18.0.1:5000 --api 127.0.0.1:7777 --key-file "$w/key" >"$w/proxy.log" 2>&1 &
pids+=($!)
for i in $(seq 50); do ctl status >/dev/null 2>&1 && break; sleep 0.1; done
for h in 1 2; do
  ns=$A; [ $h = 2 ] && ns=$B
  ip netns exec $ns "$bin" host --name h$h --proxy udp://198.18.0.1:5000 --key-file "$w/key" \
    --api 127.0.0.1:7778 --tap vm0 >"$w/h$h.log" 2>&1 &
  pids+=($!)
  for i in $(seq 50); do ip -n $ns link show vm0 >/dev/null 2>&1 && break; sleep 0.1; done
  ip -n $ns addr add 10.99.0.$h/24 dev vm0
  ip -n $ns link set vm0 up
done
h1=${pids[1]} h2=${pids[2]}
for i in $(seq 100); do
  [ "$(ctl hosts --json 2>/dev/null | grep -o '"state":"up"' | wc -l)" = 2 ] && break; sleep 0.1; done
ctl link add h1 h2 --kind udp >/dev/null
for i in $(seq 100); do ctl links 2>/dev/null | grep -q '^h1-h2 .* up ' && break; sleep 0.1; done
ip netns exec $A ping -c 20 -i 0.01 -q 10.99.0.2 >/dev/null # warm: MACs learned, paths measured
switches() { cat /proc/"$1"/task/*/status | awk '/ctxt_switches/ {s += $2} END {print s}'; }
a1=$(switches "$h1") b1=$(switches "$h2")
ip netns exec $A ping -c "$n" -i 0.01 -q 10.99.0.2 | tail -1
a2=$(switches "$h1") b2=$(switches "$h2")
echo "context switches per ping: h1 $(( (a2 - a1) * 100 / n ))/100, h2 $(( (b2 - b1) * 100 / n ))/100"
