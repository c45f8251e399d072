#!/usr/bin/env bash
# A short check of each npm peer (Bun, uWebSockets.js) under every scenario the compare
# scripts drive, on loopback with the server on CPU 0 and the load on CPU 1: echo (100
# connections, 2 s), fanout (1,000 subscribers, flat out, 3 s: every publish reaches every
# subscriber, none closed), idle connections (1,000 subscribed, RSS per connection) and
# fanout with deflate shared (1,000 subscribers offering permessage-deflate, 20 publishes/s,
# 2 s: every publish arrives, compressed: fewer bytes on the wire than the plain frames).
# Prints each run's figures (a smoke run's, not a measurement) and exits non-zero when a peer
# fails one. Installs the peers (install.sh); builds nothing: run
# `cargo build --release -p stratus-loadtest` first.
#
#   loadtest/peers/smoke.sh [OUTDIR]          NPM_PEERS="bun uws" (the default)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
bin=${CARGO_TARGET_DIR:-target}/release
out=${1:-$(mktemp -d)}
mkdir -p "$out"
source loadtest/children.sh
source loadtest/peers/peers.sh
npm_peers_install
[ -n "$NPM_PEERS" ] || { echo "NPM_PEERS is empty: nothing to check" >&2; exit 1; }
port=19501
for peer in $NPM_PEERS; do
  name=$(npm_peer_name "$peer")
  npm_peer_start "$peer" "$port" "$((port + 50))"
  pid=$npm_peer_pid
  "$bin/stratus-load" echo --client-cpu 1 --watch-cpu 0 --url "ws://127.0.0.1:$port/" \
    -c 100 -s 20 -d 2 --out "$out/echo-$name.json" >/dev/null
  "$bin/stratus-load" fanout --client-cpu 1 --watch-cpu 0 --server-pid "$pid" \
    --url "ws://127.0.0.1:$port/ws" --admin "127.0.0.1:$((port + 50))" \
    -n 1000 -s 64 -r 0 -d 3 --out "$out/fanout-$name.json" >/dev/null
  kill "$pid"; wait "$pid" 2>/dev/null || true
  # Memory on a fresh process, as compare-connections.sh measures it.
  npm_peer_start "$peer" "$port" "$((port + 50))" shared
  "$bin/stratus-load" connections --client-cpu 1 --url "ws://127.0.0.1:$port/ws?topic=idle" \
    -n 1000 --rate 5000 --hold 1 --pid "$npm_peer_pid" --deflate \
    --out "$out/connections-$name.json" >/dev/null
  "$bin/stratus-load" fanout --client-cpu 1 --server-pid "$npm_peer_pid" --deflate \
    --url "ws://127.0.0.1:$port/ws" --admin "127.0.0.1:$((port + 50))" \
    -n 1000 -s 64 -r 20 -d 2 --out "$out/deflate-$name.json" >/dev/null
  kill "$npm_peer_pid"; wait "$npm_peer_pid" 2>/dev/null || true
  python3 - "$out" "$name" <<'PY'
import json, sys
out, name = sys.argv[1:]
load = lambda kind: json.load(open(f"{out}/{kind}-{name}.json"))["results"]
echo, fan, idle, zfan = load("echo"), load("fanout"), load("connections"), load("deflate")
failed = []
if echo["messages"] <= 0:
    failed.append("echo: no message echoed")
if fan["published"] <= 0 or fan["missing"] != 0 or fan["subscribers_closed"] != 0 \
        or fan["deliveries"] != fan["published"] * 1000:
    failed.append(f"fanout: {fan['published']} published, {fan['deliveries']} delivered, "
                  f"{fan['missing']} missing, {fan['subscribers_closed']} subscribers closed")
if idle["opened"] != 1000 or idle["server_bytes_per_connection"] is None:
    failed.append(f"connections: {idle['opened']} of 1000 opened")
# A plain 64-byte text frame is 66 bytes on the wire; a compressed one fewer.
if zfan["published"] <= 0 or zfan["missing"] != 0 or zfan["wire_bytes_per_delivery"] >= 66:
    failed.append(f"fanout with deflate: {zfan['published']} published, {zfan['missing']} missing, "
                  f"{zfan['wire_bytes_per_delivery']} B on the wire per delivery (66 plain)")
print(f"{name}: echo {echo['msgs_per_s']:.0f} msgs/s (p50 {echo['rtt']['p50_us']} us, "
      f"p99 {echo['rtt']['p99_us']} us); fanout {fan['deliveries_per_s']:.0f} deliveries/s, "
      f"{fan['published']} publishes, missing {fan['missing']}, "
      f"p50 {fan['latency']['p50_us']} us, p99 {fan['latency']['p99_us']} us, "
      f"server CPU {fan['server_cpu_us_per_delivery']} us/delivery; "
      f"idle {idle['server_bytes_per_connection']} B per connection (1,000); "
      f"deflate shared {zfan['wire_bytes_per_delivery']} B on the wire per delivery, "
      f"server CPU {zfan['server_cpu_us_per_delivery']} us/delivery")
for why in failed:
    print(f"{name} FAILED {why}")
sys.exit(1 if failed else 0)
PY
  port=$((port + 1))
done
echo "npm peers passed: $NPM_PEERS"
