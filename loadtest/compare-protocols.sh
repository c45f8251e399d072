#!/usr/bin/env bash
# Fanout in raw mode and in protocol v1 side by side, on one `stratus serve` (one worker,
# CPU 0), driven A B A B by `stratus-load fanout` on CPU 1: what v1's envelope (each
# push naming its topic, encoded once per publish) costs. Prints deliveries/s, latency,
# server CPU and the ratio.
# Builds nothing: run `cargo build --release -p stratus-server -p stratus-loadtest` first.
#
#   loadtest/compare-protocols.sh SUBSCRIBERS SIZE [SECONDS] [ROUNDS] [RATE] [OUTDIR]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bin=${CARGO_TARGET_DIR:-target}/release
subs=${1:-10000}; size=${2:-64}; secs=${3:-5}; rounds=${4:-2}; rate=${5:-0}
out=${6:-$(mktemp -d)}
mkdir -p "$out"
source loadtest/children.sh
taskset -c 0 "$bin/stratus" serve --listen 127.0.0.1:19401 --admin-listen 127.0.0.1:19491 \
  --workers 1 --deflate off >/dev/null 2>&1 & pids+=($!)
sleep 0.5
for round in $(seq "$rounds"); do
  for protocol in raw v1; do
    "$bin/stratus-load" fanout --client-cpu 1 --watch-cpu 0 --url ws://127.0.0.1:19401/ws \
      --admin 127.0.0.1:19491 --protocol "$protocol" -n "$subs" -s "$size" -r "$rate" -d "$secs" \
      --out "$out/protocols-$protocol-$round.json" >/dev/null
    python3 loadtest/fanout_report.py round "$out/protocols-$protocol-$round.json" "$protocol" "$round"
  done
done
python3 loadtest/fanout_report.py summary "$out" protocols "fanout raw vs v1" raw \
  "$subs" "$size" "$rate" 1 "$secs"
