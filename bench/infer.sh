# EXTRA for ../shared/bench/peers.sh: vnet with and without traffic accounting (inference), in one run.
#   sudo VNET_BIN=$PWD/vnet EXTRA=$PWD/bench/infer.sh ../shared/bench/peers.sh -p plain vnet-infer vnet-noinfer
# Both use tcp links (the steadiest figures) and a fast path h1-h2, like the harness's `vnet`; vnet-noinfer starts the hosts with
# --no-infer (the switch has no observer), which is the only difference.
DESC[vnet-infer]="vnet tcp fast path, inference on (default)"
DESC[vnet-noinfer]="vnet tcp fast path, hosts with --no-infer"
prepare_vnet-infer() { [ -s "$W/vnet.key" ] || prepare_vnet; }
prepare_vnet-noinfer() { [ -s "$W/vnet.key" ] || prepare_vnet; }
vnet_up_args() { # vnet_up_args EXTRA-HOST-ARGS...: vnet_up with more flags for the hosts
  local n me i
  daemon $NA vnet-proxy "$VNET_BIN" proxy --listen "tcp://$UA:5000" --api 127.0.0.1:7777 --key-file "$W/vnet.key"
  for i in $(seq 100); do VCTL status >/dev/null 2>&1 && break; sleep 0.1; done
  for n in A B; do me=1; [ $n = B ] && me=2
    daemon pb$n vnet-h$me "$VNET_BIN" host --name h$me --proxy "tcp://$UA:5000" --key-file "$W/vnet.key" \
      --api 127.0.0.1:7778 --tap vm0 "$@"
    wait_link pb$n vm0 || return 1
    ip -n pb$n addr add 10.99.0.$me/24 dev vm0; ip -n pb$n link set vm0 up
  done
  for i in $(seq 100); do
    [ "$(VCTL hosts --json 2>/dev/null | "$PY" -c 'import json,sys; print(sum(h.get("state") == "up" for h in json.load(sys.stdin)))' 2>/dev/null)" = 2 ] && break
    sleep 0.1; done
  DST=$OB
}
setup_vnet-infer() { vnet_up_args && VCTL link add h1 h2; }
setup_vnet-noinfer() { vnet_up_args --no-infer && VCTL link add h1 h2; }
ready_vnet-infer() { ready_vnet; }
ready_vnet-noinfer() { ready_vnet; }
