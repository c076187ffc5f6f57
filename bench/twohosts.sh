# Sourced by rtt.sh and profile.sh: the peers harness's vnet layout. The proxy and host h1 in namespace
# $A, host h2 in $B (a veth pair between them, 198.18.0.1 and .2), a TAP "VM" vm0 on each host (10.99.0.1
# and .2), the proxy's API on 127.0.0.1:7777 in $A. The caller sets bin, A and B, and calls
#   twohosts_up KIND        build it with KIND star links; the daemons' pids are in pids (proxy h1 h2)
#   twohosts_fast KIND      add the fast path h1-h2 of KIND and wait until it is up
# and `trap twohosts_down EXIT` first, which stops the daemons and deletes the namespaces.
pids=()
w=$(mktemp -d)
twohosts_down() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ip netns del $A 2>/dev/null || true
  ip netns del $B 2>/dev/null || true
  rm -rf "$w"
}
ctl() { ip netns exec $A "$bin" ctl --api 127.0.0.1:7777 "$@"; }
twohosts_up() {
  local kind=$1 i h ns
  ip netns add $A
  ip netns add $B
  ip link add ${A}0 netns $A type veth peer name ${B}0 netns $B
  ip -n $A addr add 198.18.0.1/24 dev ${A}0
  ip -n $B addr add 198.18.0.2/24 dev ${B}0
  for ns in $A $B; do ip -n $ns link set lo up; ip -n $ns link set ${ns}0 up; done
  "$bin" keygen >"$w/key"
  ip netns exec $A "$bin" proxy --listen "$kind://198.18.0.1:5000" --api 127.0.0.1:7777 --key-file "$w/key" \
    >"$w/proxy.log" 2>&1 &
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
}
twohosts_fast() {
  local i
  ctl link add h1 h2 --kind "$1" >/dev/null
  for i in $(seq 100); do ctl links 2>/dev/null | grep -q '^h1-h2 .* up ' && break; sleep 0.1; done
}
