#!/usr/bin/env bash
# Fanout side by side: `stratus serve` (one worker), the tokio-tungstenite broadcast peer
# (current-thread runtime), Bun (`server.publish`) and uWebSockets.js (`app.publish`), the
# last two installed from npm by loadtest/peers/install.sh, each on CPU 0 behind the same
# publish API, driven A B A B by `stratus-load fanout` on CPU 1 (subscribers and
# publisher). Prints deliveries/s, latency and the ratios to tokio-tungstenite.
# Builds nothing: run `cargo build --release -p stratus-server -p stratus-loadtest` first.
# NPM_PEERS="bun uws" (the default) picks the npm peers; NPM_PEERS= leaves them out.
#
#   loadtest/compare-fanout.sh SUBSCRIBERS SIZE [SECONDS] [ROUNDS] [RATE] [PUBLISHERS] [OUTDIR]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bin=${CARGO_TARGET_DIR:-target}/release
subs=${1:-10000}; size=${2:-64}; secs=${3:-5}; rounds=${4:-2}; rate=${5:-0}; publishers=${6:-1}
out=${7:-$(mktemp -d)}
mkdir -p "$out"
source loadtest/children.sh
source loadtest/peers/peers.sh
npm_peers_install
taskset -c 0 "$bin/stratus" serve --listen 127.0.0.1:19201 --admin-listen 127.0.0.1:19291 \
  --workers 1 --deflate off >/dev/null 2>&1 & pids+=($!)
taskset -c 0 "$bin/stratus-load" peer tungstenite-broadcast --threads 1 \
  --listen 127.0.0.1:19202 --admin 127.0.0.1:19292 >/dev/null 2>&1 & pids+=($!)
targets=(stratus:19201:19291 tungstenite:19202:19292)
port=19203
for peer in $NPM_PEERS; do
  npm_peer_start "$peer" "$port" "$((port + 90))"
  targets+=("$(npm_peer_name "$peer"):$port:$((port + 90))")
  port=$((port + 1))
done
sleep 0.5
for round in $(seq "$rounds"); do
  for target in "${targets[@]}"; do
    IFS=: read -r name ws admin <<<"$target"
    "$bin/stratus-load" fanout --client-cpu 1 --watch-cpu 0 --url "ws://127.0.0.1:$ws/ws" \
      --admin "127.0.0.1:$admin" -n "$subs" -s "$size" -r "$rate" -P "$publishers" -d "$secs" \
      --out "$out/fanout-$name-$round.json" >/dev/null
    python3 loadtest/fanout_report.py round "$out/fanout-$name-$round.json" "$name" "$round"
  done
done
python3 loadtest/fanout_report.py summary "$out" fanout "compare fanout" tungstenite \
  "$subs" "$size" "$rate" "$publishers" "$secs"
