#!/usr/bin/env bash
# Adaptation, measured: the BSP workload (vnet patterns) over four hosts with two TAP VMs each, the proxy's
# underlay shaped by tbf to 20 Mbit/s (the star's centre is the bottleneck, as on a WAN), for each topology:
# on the star alone, with every host pair linked by hand from the start, and with the controller (--adapt)
# finding the fast paths by itself; the controller's reaction time; the age-out; then the planner's own figures
# (greedy, local search and the exact optimum; planning time for 64 hosts and 256 VMs).
#
#   sudo bench/adapt.sh [TOPOLOGY,...]        (default: all2all,ring,bus,mesh2d)
#
# The namespace testbed is TestE2EAdapt's (e2e_adapt_test.go); this script runs it with more topologies and
# prints its ADAPT lines.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "needs root (network namespaces, TAP devices, tbf)" >&2; exit 1; }
topos=${1:-all2all,ring,bus,mesh2d}
echo "== the workload over the star, by hand, and adapted ($topos)"
VNET_ADAPT_TOPOLOGIES=$topos go test -count=1 -timeout 30m -run 'TestE2EAdapt$' -v . 2>&1 |
  grep -E 'ADAPT:|--- (PASS|FAIL)|^(ok|FAIL)' | sed 's/^ *e2e_adapt_test.go:[0-9]*: //'
echo "== the planner (objective relative to the exact optimum; time per plan)"
go test ./adapt -run XXX -bench Planners -benchtime 3x 2>&1 | grep -E 'Benchmark|ok'
