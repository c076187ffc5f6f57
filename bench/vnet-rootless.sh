# vnet's cases for ../shared/bench/rootless/run.sh (sourced through EXTRA; see run.sh). Usage, as root:
#   VNET_BIN=$PWD/vnet EXTRA=$PWD/bench/vnet-rootless.sh ../shared/bench/rootless/run.sh -r 3 \
#     vnet:out vnet:in vnet-tap:out vnet-tap:in slirp4netns:out slirp4netns:in gvproxy:out gvproxy:in
#
# The guest namespace's tap0 is a vnet host's TAP port (the daemon makes it in rlh, then it moves into rlg, as
# a VM's would be elsewhere); the host daemon joins a proxy in rlh over a loopback TCP star link. So every
# guest frame crosses the whole overlay: TAP -> host switch -> star link -> proxy switch -> then
#   vnet:     the proxy's --netstack gateway (gVisor netstack, userspace NAT to 127.0.0.1, --forward for "in")
#   vnet-tap: the proxy's --tap ptap0, a kernel TAP in rlh with 10.0.0.1: the segment bridged into a "LAN"
# (the host daemon needs root for its TAP here; the proxy of case vnet needs none).
DESC[vnet]="vnet host (TAP) -> star -> proxy --netstack (userspace NAT), MTU 1500"
DESC[vnet-tap]="vnet host (TAP) -> star -> proxy --tap (kernel TAP bridge), MTU 1500"
VNET_BIN=${VNET_BIN:-vnet}

vnet_up() { # vnet_up netstack|tap
  "$VNET_BIN" keygen >"$W/net.key" || return 1
  local extra=(--netstack 10.0.0.1/24 --forward tcp:127.0.0.1:15201=10.0.0.2:5201 --forward tcp:127.0.0.1:15300=10.0.0.2:5300)
  [ "$1" = tap ] && extra=(--tap ptap0)
  tool $NH vnet-proxy "$VNET_BIN" proxy --key-file "$W/net.key" --listen tcp://127.0.0.1:5900 --api 127.0.0.1:7901 \
    --log-level warn "${extra[@]}"
  wait_for 10 listening $NH 5900 || return 1
  if [ "$1" = tap ]; then
    wait_for 10 ip -n $NH link show ptap0 || return 1
    ip -n $NH addr add 10.0.0.1/24 dev ptap0 && ip -n $NH link set ptap0 up || return 1
  fi
  tool $NH vnet-host "$VNET_BIN" host --name g --proxy tcp://127.0.0.1:5900 --key-file "$W/net.key" \
    --listen tcp://127.0.0.1:0 --log-level warn --tap tap0
  wait_for 10 ip -n $NH link show tap0 || return 1
  ip -n $NH link set tap0 netns $NG && ip -n $NG addr add 10.0.0.2/24 dev tap0 && ip -n $NG link set tap0 up &&
    ip -n $NG route add default via 10.0.0.1 || return 1
  if [ "$1" = tap ]; then
    OUT_DST=10.0.0.1 OUT_BIND=10.0.0.1 IN_DST=10.0.0.2 IN_IPERF=5201 IN_RR=5300 PING_DST=10.0.0.1 GDEV=tap0
  else
    OUT_DST=10.0.0.1 OUT_BIND=127.0.0.1 IN_DST=127.0.0.1 IN_IPERF=15201 IN_RR=15300 PING_DST="" GDEV=tap0
  fi
  wait_for 15 ip netns exec $NG ping -c1 -W1 10.0.0.1 || [ "$1" != tap ] || return 1
}
setup_vnet() { vnet_up netstack; }
setup_vnet-tap() { vnet_up tap; }
