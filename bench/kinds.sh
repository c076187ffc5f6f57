# EXTRA for ../shared/bench/peers.sh: vnet with each link kind, in one run.
#   sudo VNET_BIN=$PWD/vnet EXTRA=$PWD/bench/kinds.sh ../shared/bench/peers.sh -p plain \
#        direct tinc vnet-tcp vnet-udp vnet-tcp-star vnet-udp-star vnet-quic-star
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
