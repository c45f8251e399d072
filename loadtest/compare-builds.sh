#!/usr/bin/env bash
# Two builds of `stratus` side by side, a change's before and after: echo at 100 x 20 B,
# 1,000 x 20 B and 10 x 16 KiB, and fanout to 10,000 subscribers x 64 B (one publisher
# flat out, and 15 publishes/s). Both servers run on CPU 0 with one worker; stratus-load
# drives them A B A B from CPU 1 and reports server CPU beside throughput.
#
#   loadtest/compare-builds.sh BEFORE_BIN AFTER_BIN [SECONDS] [ROUNDS] [OUTDIR]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
load=${CARGO_TARGET_DIR:-target}/release/stratus-load
before=$1; after=$2; secs=${3:-5}; rounds=${4:-2}; out=${5:-$(mktemp -d)}
mkdir -p "$out"
source loadtest/children.sh
taskset -c 0 "$before" echo --listen 127.0.0.1:19111 --workers 1 --deflate off >/dev/null 2>&1 & pids+=($!)
taskset -c 0 "$after" echo --listen 127.0.0.1:19112 --workers 1 --deflate off >/dev/null 2>&1 & pids+=($!)
for build in "$before:19211:19291" "$after:19212:19292"; do
  IFS=: read -r bin ws admin <<<"$build"
  taskset -c 0 "$bin" serve --listen "127.0.0.1:$ws" --admin-listen "127.0.0.1:$admin" \
    --workers 1 --deflate off >/dev/null 2>&1 & pids+=($!)
done
sleep 0.5
for cfg in "100 20" "1000 20" "10 16384"; do
  set -- $cfg
  echo "== echo $1 x $2 B"
  "$load" compare --client-cpu 1 --watch-cpu 0 -c "$1" -s "$2" -d "$secs" --rounds "$rounds" \
    --target before=ws://127.0.0.1:19111/ --target after=ws://127.0.0.1:19112/ \
    --out "$out/echo-$1x$2.json" | grep -E '^round|ratio'
done
for rate in 0 15; do
  echo "== fanout, 10,000 subscribers x 64 B, rate $rate (0: flat out)"
  for round in $(seq "$rounds"); do
    for target in before:19211:19291 after:19212:19292; do
      IFS=: read -r name ws admin <<<"$target"
      "$load" fanout --client-cpu 1 --watch-cpu 0 --url "ws://127.0.0.1:$ws/ws" \
        --admin "127.0.0.1:$admin" -n 10000 -s 64 -r "$rate" -P 1 -d "$secs" \
        --out "$out/rate$rate-$name-$round.json" >/dev/null
      python3 loadtest/fanout_report.py round "$out/rate$rate-$name-$round.json" "$name" "$round"
    done
  done
  python3 loadtest/fanout_report.py summary "$out" "rate$rate" "fanout rate $rate" before \
    10000 64 "$rate" 1 "$secs"
done
