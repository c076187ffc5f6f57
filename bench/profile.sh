#!/usr/bin/env bash
# CPU profiles of every daemon under bulk TCP between two TAP VMs, in the
# peers harness's layout: the proxy and host h1 in namespace vnprofA, host h2
# in vnprofB (a veth pair between them), a TAP "VM" on each host. Through the
# star (VM -> h1 -> proxy -> h2 -> VM) or over a fast path h1-h2.
#
#   sudo bench/profile.sh [star|fast] [KIND] [BINARY] [SECONDS] [OUTDIR]
#        defaults: star udp ./vnet 8 /tmp/vnet-profile
#
# Writes OUTDIR/{proxy,h1,h2}.pprof (from each daemon's /debug/pprof) and
# iperf3's result; read them with `go tool pprof -top OUTDIR/proxy.pprof`.
set -euo pipefail
mode=${1:-star} kind=${2:-udp} bin=${3:-./vnet} secs=${4:-8} out=${5:-/tmp/vnet-profile}
[ "$(id -u)" = 0 ] || { echo "profile.sh: needs root (network namespaces, TAP devices)" >&2; exit 1; }
[ -x "$bin" ] || { echo "profile.sh: $bin is not an executable (build with CGO_ENABLED=0 go build -o vnet .)" >&2; exit 1; }
case $mode in star|fast) ;; *) echo "profile.sh: mode is star or fast, not $mode" >&2; exit 2;; esac
command -v iperf3 >/dev/null || { echo "profile.sh: needs iperf3 (apt-get install iperf3)" >&2; exit 1; }
mkdir -p "$out"
A=vnprofA B=vnprofB
. "$(dirname "$0")/twohosts.sh"
trap twohosts_down EXIT
twohosts_up "$kind"
[ "$mode" = star ] || twohosts_fast "$kind"
ip netns exec $A ping -c 5 -i 0.1 -q 10.99.0.2 >/dev/null # MACs learned
ip netns exec $B iperf3 -s -1 -D -B 10.99.0.2
sleep 0.3
ip netns exec $A iperf3 -c 10.99.0.2 -t $((secs + 2)) >"$out/iperf3.txt" &
ipid=$!
sleep 1
prof() { ip netns exec "$1" curl -s -o "$out/$3.pprof" "http://127.0.0.1:$2/debug/pprof/profile?seconds=$secs"; }
cpids=()
prof $A 7777 proxy & cpids+=($!)
prof $A 7778 h1 & cpids+=($!)
prof $B 7778 h2 & cpids+=($!)
wait "${cpids[@]}" "$ipid" || true
tail -4 "$out/iperf3.txt" | head -2
echo "profiles: $out/{proxy,h1,h2}.pprof ($mode, $kind links)"
