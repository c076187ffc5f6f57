#!/usr/bin/env bash
# Throughput A/B of vnet builds in the harness's layout (twohosts.sh): iperf3 TCP between two TAP VMs
# through the star (VM -> h1 -> proxy -> h2 -> VM) or over a UDP fast path, ROUNDS rounds of every
# build in turn (alternating, so drift hits each alike), then each build's runs and median in Mbit/s.
#
#   sudo [SECS=6] bench/abthr.sh star|fast ROUNDS BINARY...
#
# Quicker than the peers harness with VNET_BASE for a first look; quote the harness for figures.
set -euo pipefail
mode=${1:-} rounds=${2:-}
shift 2 || true
case $mode in star|fast) ;; *) echo "usage: abthr.sh star|fast ROUNDS BINARY..." >&2; exit 2;; esac
[[ $rounds =~ ^[1-9][0-9]*$ ]] && [ $# -gt 0 ] || { echo "usage: abthr.sh star|fast ROUNDS BINARY..." >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "abthr.sh: needs root (network namespaces, TAP devices)" >&2; exit 1; }
command -v iperf3 >/dev/null || { echo "abthr.sh: needs iperf3 (apt-get install iperf3)" >&2; exit 1; }
for b in "$@"; do [ -x "$b" ] || { echo "abthr.sh: $b is not an executable" >&2; exit 1; }; done
one() { # one run of build $1: Mbit/s
  local bin=$1 A=vnabA B=vnabB
  (
    . "$(dirname "$0")/twohosts.sh"
    trap twohosts_down EXIT
    twohosts_up udp >/dev/null
    [ "$mode" = star ] || twohosts_fast udp
    ip netns exec $A ping -c 5 -i 0.05 -q 10.99.0.2 >/dev/null # MACs learned
    ip netns exec $B iperf3 -s -1 -D -B 10.99.0.2
    sleep 0.3
    ip netns exec $A iperf3 -c 10.99.0.2 -t "${SECS:-6}" -J |
      python3 -c 'import json,sys; print(round(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e6))'
  )
}
declare -A runs
for _ in $(seq "$rounds"); do
  for b in "$@"; do runs[$b]+=" $(one "$b")"; done
done
for b in "$@"; do
  python3 -c 'import statistics,sys; v=[int(x) for x in sys.argv[2:]]; print(f"{sys.argv[1]}: {v} median {statistics.median(v):.0f}")' "$b" ${runs[$b]}
done
