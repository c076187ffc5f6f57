# EXTRA for ../shared/bench/peers.sh: A/B a second vnet build in the same run. VNET_BASE names it; the
# kinds vnet-udp-base and vnet-udp-star-base are bench/kinds.sh's vnet-udp and vnet-udp-star run with it.
#   sudo VNET_BIN=$PWD/vnet VNET_BASE=/tmp/vnet-old EXTRA=$PWD/bench/ab.sh ../shared/bench/peers.sh \
#        -r 3 -t 8 -p plain tinc vnet-udp vnet-udp-star vnet-udp-base vnet-udp-star-base
. "$(dirname "${BASH_SOURCE[0]}")/kinds.sh"
[ -x "${VNET_BASE:-}" ] || { echo "ab.sh: set VNET_BASE to the other vnet binary" >&2; return 1; }
for k in vnet-udp vnet-udp-star; do
  DESC[$k-base]="${DESC[$k]}, with $VNET_BASE"
  for step in prepare setup ready; do
    declare -F "${step}_$k" >/dev/null || continue
    eval "${step}_$k-base() { local VNET_BIN=\$VNET_BASE; ${step}_$k; }"
  done
done
