#!/usr/bin/env bash
# Echo side by side: Stratus (one worker), fastwebsockets, tokio-tungstenite, Bun and
# uWebSockets.js (both uWebSockets inside; installed from npm by loadtest/peers/install.sh)
# and a raw io_uring TCP echo, each on CPU 0, driven A B A B by stratus-load on CPU 1.
# Builds nothing: run `cargo build --release -p stratus-server -p stratus-loadtest` first.
# NPM_PEERS="bun uws" (the default) picks the npm peers; NPM_PEERS= leaves them out.
#
#   loadtest/compare-echo.sh CONNECTIONS SIZE [SECONDS] [ROUNDS] [OUT.json]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bin=${CARGO_TARGET_DIR:-target}/release
conns=${1:-100}; size=${2:-20}; secs=${3:-5}; rounds=${4:-2}; out=${5:-}
source loadtest/children.sh
source loadtest/peers/peers.sh
npm_peers_install
taskset -c 0 "$bin/stratus" echo --listen 127.0.0.1:19101 --workers 1 --deflate off >/dev/null 2>&1 & pids+=($!)
taskset -c 0 "$bin/stratus-load" peer fastwebsockets --listen 127.0.0.1:19102 >/dev/null 2>&1 & pids+=($!)
taskset -c 0 "$bin/stratus-load" peer tungstenite --listen 127.0.0.1:19103 >/dev/null 2>&1 & pids+=($!)
taskset -c 0 "$bin/stratus-load" peer uring-tcp --listen 127.0.0.1:19104 >/dev/null 2>&1 & pids+=($!)
npm_targets=()
port=19105
for peer in $NPM_PEERS; do
  npm_peer_start "$peer" "$port" "$((port + 190))"
  npm_targets+=(--target "$(npm_peer_name "$peer")=ws://127.0.0.1:$port/")
  port=$((port + 1))
done
sleep 0.5
"$bin/stratus-load" compare --client-cpu 1 --watch-cpu 0 -c "$conns" -s "$size" -d "$secs" --rounds "$rounds" \
  --target stratus=ws://127.0.0.1:19101/ \
  --target fastwebsockets=ws://127.0.0.1:19102/ \
  --target tokio-tungstenite=ws://127.0.0.1:19103/ \
  "${npm_targets[@]}" \
  --target uring-tcp-raw=tcp://127.0.0.1:19104/ \
  ${out:+--out "$out"}
