# EXTRA for ../shared/bench/peers.sh: vnet with each link kind, in one run.
#   sudo VNET_BIN=$PWD/vnet EXTRA=$PWD/bench/kinds.sh ../shared/bench/peers.sh -p plain \
#        direct tinc vnet-tcp vnet-udp vnet-tcp-star vnet-udp-star vnet-quic-star
#   (add vnet-tcp6 vnet-udp6 for the same fast paths over an IPv6-only underlay)
# vnet-K: fast path h1-h2 of kind K (star links of kind K too); vnet-K-star: through the star (two links
# of kind K and the proxy). Fast paths are udp or tcp; QUIC carries star links only.
for k in tcp udp quic; do
  DESC[vnet-$k]="vnet $k links, fast path h1-h2"
  DESC[vnet-$k-star]="vnet $k links, through the star (two links and the proxy)"
  eval "prepare_vnet-$k() { [ -s \"\$W/vnet.key\" ] || prepare_vnet; }
        prepare_vnet-$k-star() { [ -s \"\$W/vnet.key\" ] || prepare_vnet; }
        setup_vnet-$k-star() { VNET_KIND=$k vnet_up; }"
done
unset -f prepare_vnet-quic 2>/dev/null
setup_vnet-tcp() { VNET_KIND=tcp vnet_up && VCTL link add h1 h2 --kind tcp; }
setup_vnet-udp() { VNET_KIND=udp vnet_up && VCTL link add h1 h2 --kind udp; }
ready_vnet-tcp() { ready_vnet; }
ready_vnet-udp() { ready_vnet; }

# vnet-K6: the same fast path of kind K over an IPv6-only underlay (the veth's IPv4 addresses are
# removed; the proxy, the hosts and the fast path use fd00:99::1 and fd00:99::2). Compare with vnet-K
# in the same run for IPv6 against IPv4 over the same path.
v6_underlay() {
  ip -n $NA addr flush dev $IA && ip -n $NB addr flush dev $IB &&
    ip -n $NA addr add fd00:99::1/64 dev $IA nodad && ip -n $NB addr add fd00:99::2/64 dev $IB nodad
}
for k in tcp udp; do
  DESC[vnet-${k}6]="vnet $k links over an IPv6-only underlay, fast path h1-h2"
  eval "prepare_vnet-${k}6() { [ -s \"\$W/vnet.key\" ] || prepare_vnet; }
        setup_vnet-${k}6() { local UA='[fd00:99::1]'; v6_underlay && VNET_KIND=$k vnet_up && VCTL link add h1 h2 --kind $k; }
        ready_vnet-${k}6() { ready_vnet; }"
done
