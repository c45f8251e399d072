#!/usr/bin/env bash
# Every performance figure of the README in one run: echo, fanout (flat out, and latency at
# a fixed rate with deflate off and shared) and idle-connection memory side by side with
# the peers (servers on CPU 0, generator on CPU 1), and the charts. The peers include Bun
# and uWebSockets.js, installed from npm by loadtest/peers/install.sh (NPM_PEERS= leaves
# them out).
# Builds nothing: run `cargo build --release -p stratus-server -p stratus-loadtest` first.
# Each server and the load generator are processes of their own, each holding up to 19,000
# sockets: the hard open-file limit (`ulimit -Hn`) must be at least 19,100; the scripts
# raise the soft limit.
#
#   loadtest/performance.sh [OUTDIR]        (about 17 minutes)
#
# LATENCY_RATE (default 5) is the fixed publish rate of the latency scenarios, one both
# Stratus and the uWebSockets-class peers sustain at 19,000 subscribers (each round's line
# shows the publishes/s reached and what went missing); LATENCY_ROUNDS (default 2) their
# rounds, A B A B.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bin=${CARGO_TARGET_DIR:-target}/release
out=${1:-perf}
rate=${LATENCY_RATE:-5}; latency_rounds=${LATENCY_ROUNDS:-2}
mkdir -p "$out"
started=$SECONDS
for cfg in "100 20" "1000 20" "10 16384"; do
  set -- $cfg
  echo "== echo $1 x $2 B"
  loadtest/compare-echo.sh "$1" "$2" 5 2 "$out/echo-$1x$2.json" | grep -E '^round|ratio'
done
echo "== fanout, 10,000 subscribers x 64 B, one publisher flat out"
loadtest/compare-fanout.sh 10000 64 5 2 0 1 "$out/fanout-flat" | grep -v '^results'
# Latency at a fixed rate against the uWebSockets-class peers (the ratios are to
# uWebSockets.js), at 10,000 and 19,000 subscribers, deflate off and shared (Stratus
# compresses each publish once: its /metrics line shows compressions per publish).
latency=()
for subs in 10000 19000; do
  for deflate in off shared; do
    echo "== fanout latency, $subs subscribers x 64 B, $rate publishes/s, deflate $deflate"
    dir="$out/fanout-rate$rate-$subs-$deflate"
    TUNGSTENITE=0 BASE=uwebsockets.js loadtest/compare-fanout.sh "$subs" 64 5 \
      "$latency_rounds" "$rate" 1 "$dir" "$deflate" | grep -v '^results'
    latency+=("$dir/compare-fanout.json")
  done
done
for rate0 in 0 15; do
  echo "== fanout, raw mode vs protocol v1, 10,000 subscribers x 64 B, rate $rate0 (0: flat out)"
  loadtest/compare-protocols.sh 10000 64 5 3 "$rate0" "$out/protocols-rate$rate0" | grep -v '^results'
done
echo "== fanout, WebSocket vs Server-Sent Events, 10,000 subscribers x 64 B, rates 0 (flat out), 5, 20"
loadtest/compare-sse.sh 10000 64 5 4 0,5,20 "$out/sse" | grep -v '^results'
echo "== idle connections subscribed to a topic: 10,000 and 19,000, server RSS per connection"
loadtest/compare-connections.sh 10000,19000 "$out/connections"
"$bin/stratus-load" plot "$out"/echo-*.json "$out"/fanout-flat/compare-fanout.json \
  "${latency[@]}" "$out"/connections/compare-connections-*.json --out "$out/chart"
echo "== done in $(((SECONDS - started) / 60)) min $(((SECONDS - started) % 60)) s"
