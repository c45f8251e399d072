#!/usr/bin/env bash
# Every performance figure of the README in one run: echo, fanout and idle-connection memory
# side by side with the peers (servers on CPU 0, generator on CPU 1), and the charts. The
# peers include Bun and uWebSockets.js, installed from npm by loadtest/peers/install.sh
# (NPM_PEERS= leaves them out).
# Builds nothing: run `cargo build --release -p stratus-server -p stratus-loadtest` first.
#
#   loadtest/performance.sh [OUTDIR]        (about 14 minutes)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bin=${CARGO_TARGET_DIR:-target}/release
out=${1:-perf}
mkdir -p "$out"
for cfg in "100 20" "1000 20" "10 16384"; do
  set -- $cfg
  echo "== echo $1 x $2 B"
  loadtest/compare-echo.sh "$1" "$2" 5 2 "$out/echo-$1x$2.json" | grep -E '^round|ratio'
done
echo "== fanout, 10,000 subscribers x 64 B, one publisher flat out"
loadtest/compare-fanout.sh 10000 64 5 2 0 1 "$out/fanout-flat" | grep -v '^results'
echo "== fanout, 10,000 subscribers x 64 B, 15 publishes/s"
loadtest/compare-fanout.sh 10000 64 5 2 15 1 "$out/fanout-rate15" | grep -v '^results'
for rate in 0 15; do
  echo "== fanout, raw mode vs protocol v1, 10,000 subscribers x 64 B, rate $rate (0: flat out)"
  loadtest/compare-protocols.sh 10000 64 5 3 "$rate" "$out/protocols-rate$rate" | grep -v '^results'
done
echo "== fanout, WebSocket vs Server-Sent Events, 10,000 subscribers x 64 B, rates 0 (flat out), 5, 20"
loadtest/compare-sse.sh 10000 64 5 4 0,5,20 "$out/sse" | grep -v '^results'
echo "== idle connections subscribed to a topic: 10,000 and 19,000, server RSS per connection"
loadtest/compare-connections.sh 10000,19000 "$out/connections"
"$bin/stratus-load" plot "$out"/echo-*.json "$out"/fanout-flat/compare-fanout.json \
  "$out"/fanout-rate15/compare-fanout.json "$out"/connections/compare-connections-*.json \
  --out "$out/chart"
