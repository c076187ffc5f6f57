#!/usr/bin/env bash
# Soak: a proxy and three hosts in network namespaces, a VM (persistent TAP)
# on each, six checksummed TCP streams (every ordered VM pair, 1 MiB/s each)
# while random faults hit the overlay: fast paths cut with nftables, host
# daemons (h1, h2) and the proxy killed (kill -9) and restarted, host underlays
# flapping. h3's daemon is never killed: its RSS is one process's growth.
# Reports every fault and how long the overlay and the streams took to
# recover, bytes sent and received per pair (equal, or it fails), reconnect
# counts, and the daemons' RSS at start and end. Needs root.
#
#   sudo bench/soak.sh [DURATION] [SEED]     default 10m, a seed from the clock
#
# The report goes to stdout and to bench/results/DATE-soak.txt (the full test
# log beside it, *-soak.log). The same test runs in CI for 25 s
# (TestE2ESoak in e2e_soak_test.go).
set -euo pipefail
cd "$(dirname "$0")/.."
d=${1:-10m}
seed=${2:-$(date +%s)}
[ "$(id -u)" = 0 ] || { echo "soak.sh: needs root (network namespaces, TAP devices, nftables)" >&2; exit 1; }
out=bench/results/$(date +%F)-soak
case $d in
  *h) secs=$(( ${d%h} * 3600 )) ;; *m) secs=$(( ${d%m} * 60 )) ;; *s) secs=${d%s} ;;
  *) echo "soak.sh: DURATION is a whole number of s, m or h, such as 10m" >&2; exit 2 ;;
esac
timeout=$(( secs + 900 ))s # the faults, then the streams' tail, set-up and clean-up
VNET_SOAK=$d VNET_SOAK_SEED=$seed VNET_SOAK_REPORT=$PWD/$out.txt \
  go test -count=1 -run '^TestE2ESoak$' -timeout "$timeout" -v . >"$out.log" 2>&1 && rc=0 || rc=$?
if [ -s "$out.txt" ]; then cat "$out.txt"; fi
[ $rc = 0 ] || { echo "soak failed (exit $rc); the log: $out.log" >&2; tail -40 "$out.log" >&2; }
exit $rc
