# EXTRA for ../shared/bench/peers.sh: kinds.sh's vnet kinds, infer.sh's vnet-infer and vnet-noinfer, and
# (when VNET_BASE names another build) ab.sh's vnet-udp-base and vnet-udp-star-base, all in one run.
#   sudo VNET_BIN=$PWD/vnet VNET_BASE=/tmp/vnet-old EXTRA=$PWD/bench/all.sh PINGS=1000 \
#        ../shared/bench/peers.sh -r 3 -t 8 -p plain tinc n2n wireguard-go-latest vnet vnet-star \
#        vnet-tcp vnet-tcp-star vnet-udp-base vnet-udp-star-base vnet-infer vnet-noinfer
d=$(dirname "${BASH_SOURCE[0]}")
if [ -n "${VNET_BASE:-}" ]; then . "$d/ab.sh" || return 1; else . "$d/kinds.sh" || return 1; fi
. "$d/infer.sh"
