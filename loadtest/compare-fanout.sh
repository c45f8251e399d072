#!/usr/bin/env bash
# Fanout side by side: `stratus serve` (one worker), the tokio-tungstenite broadcast peer
# (current-thread runtime), Bun (`server.publish`) and uWebSockets.js (`app.publish`), the
# last two installed from npm by loadtest/peers/install.sh, each on CPU 0 behind the same
# publish API, driven A B A B by `stratus-load fanout` on CPU 1 (subscribers and
# publisher). Prints, per run and per setup, deliveries/s beside the server's CPU per
# delivery (from /proc/PID/stat, first publish to last delivery: connection set-up is not
# counted), the bytes on the wire per delivery, latency (publish to receive: p50, p99), and
# the ratios to BASE.
# Builds nothing: run `cargo build --release -p stratus-server -p stratus-loadtest` first.
# NPM_PEERS="bun uws" (the default) picks the npm peers; NPM_PEERS= leaves them out.
# TUNGSTENITE=0 leaves the tokio-tungstenite peer out (it is always left out with deflate
# shared: it declines permessage-deflate). BASE names the setup the ratios are to
# (default: tungstenite when it runs, else uwebsockets.js, else stratus).
#
#   loadtest/compare-fanout.sh SUBSCRIBERS SIZE [SECONDS] [ROUNDS] [RATE] [PUBLISHERS] [OUTDIR]
#                              [DEFLATE]
#
# DEFLATE: off (the default) or shared: Stratus with `--deflate shared` (a publish
# compressed once for all its subscribers; its /metrics counts compressions and publishes,
# printed after each Stratus run), Bun and uWebSockets.js with their shared compressor and
# `publish(..., compress)`, the subscribers offering permessage-deflate (`--deflate`).
# Each server and the load generator are processes of their own, each under the open-file
# limit: SUBSCRIBERS up to the hard limit less 100 (`ulimit -Hn`; the soft limit is raised).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bin=${CARGO_TARGET_DIR:-target}/release
subs=${1:-10000}; size=${2:-64}; secs=${3:-5}; rounds=${4:-2}; rate=${5:-0}; publishers=${6:-1}
out=${7:-$(mktemp -d)}; deflate=${8:-off}
case $deflate in
  off) offer=() ;;
  shared) offer=(--deflate) ;;
  *) echo "DEFLATE $deflate: off or shared" >&2; exit 1 ;;
esac
mkdir -p "$out"
source loadtest/children.sh
source loadtest/peers/peers.sh
need_nofile "$((subs + 100))"
npm_peers_install
taskset -c 0 "$bin/stratus" serve --listen 127.0.0.1:19201 --admin-listen 127.0.0.1:19291 \
  --workers 1 --deflate "$deflate" >/dev/null 2>&1 & pids+=($!)
targets=("stratus:19201:19291:$!")
tungstenite=${TUNGSTENITE:-1}
if [ "$deflate" = shared ] && [ "$tungstenite" = 1 ]; then
  echo "tokio-tungstenite left out: it declines permessage-deflate"
  tungstenite=0
fi
if [ "$tungstenite" = 1 ]; then
  taskset -c 0 "$bin/stratus-load" peer tungstenite-broadcast --threads 1 \
    --listen 127.0.0.1:19202 --admin 127.0.0.1:19292 >/dev/null 2>&1 & pids+=($!)
  targets+=("tungstenite:19202:19292:$!")
fi
port=19203
for peer in $NPM_PEERS; do
  npm_peer_start "$peer" "$port" "$((port + 90))" "$deflate"
  targets+=("$(npm_peer_name "$peer"):$port:$((port + 90)):$npm_peer_pid")
  port=$((port + 1))
done
base=${BASE:-}
if [ -z "$base" ]; then
  base=stratus
  [[ " $NPM_PEERS " != *" uws "* ]] || base=uwebsockets.js
  [ "$tungstenite" != 1 ] || base=tungstenite
fi
sleep 0.5
for round in $(seq "$rounds"); do
  for target in "${targets[@]}"; do
    IFS=: read -r name ws admin pid <<<"$target"
    "$bin/stratus-load" fanout --client-cpu 1 --watch-cpu 0 --server-pid "$pid" \
      --url "ws://127.0.0.1:$ws/ws" --admin "127.0.0.1:$admin" "${offer[@]}" \
      -n "$subs" -s "$size" -r "$rate" -P "$publishers" -d "$secs" \
      --out "$out/fanout-$name-$round.json" >/dev/null
    python3 loadtest/fanout_report.py round "$out/fanout-$name-$round.json" "$name" "$round"
    if [ "$name" = stratus ] && [ "$deflate" = shared ]; then
      python3 loadtest/fanout_report.py metrics "127.0.0.1:$admin"
    fi
  done
done
python3 loadtest/fanout_report.py summary "$out" fanout "compare fanout" "$base" \
  "$subs" "$size" "$rate" "$publishers" "$secs" "$deflate"
