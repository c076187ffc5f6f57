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
ip netns exec $A "$bin" proxy --listen "$kind://198.18.0.1:5000" --api 127.0.0.1:7777 --key-file "$w/key" >"$w/proxy.log" 2>&1 &
pids+=($!)
for i in $(seq 50); do ctl status >/dev/null 2>&1 && break; sleep 0.1; done
for h in 1 2; do
  ns=$A; [ $h = 2 ] && ns=$B
  ip netns exec $ns "$bin" host --name h$h --proxy "$kind://198.18.0.1:5000" --key-file "$w/key" \
    --api 127.0.0.1:7778 --tap vm0 >"$w/h$h.log" 2>&1 &
  pids+=($!)
  for i in $(seq 50); do ip -n $ns link show vm0 >/dev/null 2>&1 && break; sleep 0.1; done
  ip -n $ns addr add 10.99.0.$h/24 dev vm0
  ip -n $ns link set vm0 up
done
for i in $(seq 100); do
  [ "$(ctl hosts --json 2>/dev/null | grep -o '"state":"up"' | wc -l)" = 2 ] && break; sleep 0.1; done
if [ "$mode" = fast ]; then
  ctl link add h1 h2 --kind "$kind" >/dev/null
  for i in $(seq 100); do ctl links 2>/dev/null | grep -q '^h1-h2 .* up ' && break; sleep 0.1; done
fi
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
