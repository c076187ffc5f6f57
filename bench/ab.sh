# EXTRA for ../shared/bench/peers.sh: A/B a second vnet build in the same run. VNET_BASE names it; the
# kinds vnet-udp-base and vnet-udp-star-base are vnet-udp and vnet-udp-star (bench/kinds.sh) run with it.
#   sudo VNET_BIN=$PWD/vnet VNET_BASE=/tmp/vnet-old EXTRA=$PWD/bench/ab.sh ../shared/bench/peers.sh \
#        -r 3 -t 8 -p plain tinc vnet-udp vnet-udp-star vnet-udp-base vnet-udp-star-base
. "$(dirname "${BASH_SOURCE[0]}")/kinds.sh"
[ -x "${VNET_BASE:-}" ] || { echo "ab.sh: set VNET_BASE to the other vnet binary" >&2; return 1; }
DESC[vnet-udp-base]="vnet udp links, fast path h1-h2, with $VNET_BASE"
DESC[vnet-udp-star-base]="vnet udp links, through the star, with $VNET_BASE"
prepare_vnet-udp-base() { [ -s "$W/vnet.key" ] || prepare_vnet; }
prepare_vnet-udp-star-base() { [ -s "$W/vnet.key" ] || prepare_vnet; }
setup_vnet-udp-base() { local VNET_BIN=$VNET_BASE; VNET_KIND=udp vnet_up && VCTL link add h1 h2 --kind udp; }
ready_vnet-udp-base() { local VNET_BIN=$VNET_BASE; ready_vnet; }
setup_vnet-udp-star-base() { local VNET_BIN=$VNET_BASE; VNET_KIND=udp vnet_up; }
