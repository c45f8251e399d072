#!/usr/bin/env bash
# Fanout to WebSocket and to Server-Sent Events subscribers side by side, on one
# `stratus serve` (one worker, CPU 0, --deflate off), driven by `stratus-load fanout` on
# CPU 1: the same topic, message size and publisher, subscribers holding a WebSocket each
# (raw mode) or an event stream each (`GET /sse?topic=`). Each round runs, for every rate,
# WebSocket then SSE (A B A B). Prints deliveries/s, latency, server CPU per delivery (from
# /proc/PID/stat, first publish to last delivery) and the SSE / WebSocket ratios.
# Builds nothing: run `cargo build --release -p stratus-server -p stratus-loadtest` first.
#
#   loadtest/compare-sse.sh SUBSCRIBERS SIZE [SECONDS] [ROUNDS] [RATES] [OUTDIR]
#
# RATES: publishes per second, comma-separated, 0 for one publisher flat out (default
# 0,20). Results: OUTDIR/rate<RATE>/transport-<websocket|sse>-<ROUND>.json for each run,
# and OUTDIR/rate<RATE>/compare-transport.json with the means and ratios.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bin=${CARGO_TARGET_DIR:-target}/release
subs=${1:-10000}; size=${2:-64}; secs=${3:-5}; rounds=${4:-2}; rates=${5:-0,20}
out=${6:-$(mktemp -d)}
ws=19601; admin=19691
for rate in ${rates//,/ }; do mkdir -p "$out/rate$rate"; done
source loadtest/children.sh
taskset -c 0 "$bin/stratus" serve --listen "127.0.0.1:$ws" --admin-listen "127.0.0.1:$admin" \
  --workers 1 --deflate off >/dev/null 2>&1 & pids+=($!)
server=${pids[0]}
sleep 0.5
for round in $(seq "$rounds"); do
  for rate in ${rates//,/ }; do
    for transport in websocket sse; do
      case $transport in
        websocket) url="ws://127.0.0.1:$ws/ws" ;;
        sse) url="http://127.0.0.1:$ws/sse" ;;
      esac
      result="$out/rate$rate/transport-$transport-$round.json"
      "$bin/stratus-load" fanout --client-cpu 1 --watch-cpu 0 --server-pid "$server" \
        --transport "$transport" --url "$url" --admin "127.0.0.1:$admin" \
        -n "$subs" -s "$size" -r "$rate" -d "$secs" --out "$result" >/dev/null
      python3 loadtest/fanout_report.py round "$result" "$transport@$rate/s" "$round"
    done
  done
done
for rate in ${rates//,/ }; do
  echo "rate $rate (0: one publisher flat out)"
  python3 loadtest/fanout_report.py summary "$out/rate$rate" transport "fanout websocket vs sse" \
    websocket "$subs" "$size" "$rate" 1 "$secs"
done
