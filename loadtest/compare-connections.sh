#!/usr/bin/env bash
# Idle-connection memory side by side: `stratus serve` (one worker), the tokio-tungstenite
# broadcast peer, Bun and uWebSockets.js (installed from npm by loadtest/peers/install.sh),
# each started alone on CPU 0 and given N idle connections subscribed to one topic, opened
# by `stratus-load connections` on CPU 1 offering permessage-deflate (Stratus, Bun and
# uWebSockets.js accept it shared, without context takeover; tokio-tungstenite declines).
# Each server's RSS growth over the connections it holds, in bytes per connection.
# Builds nothing: run `cargo build --release -p stratus-server -p stratus-loadtest` first.
# NPM_PEERS="bun uws" (the default) picks the npm peers; NPM_PEERS= leaves them out.
#
#   loadtest/compare-connections.sh COUNTS [OUTDIR] [ROUNDS]   (COUNTS: 10000,19000)
# writes OUTDIR/compare-connections-N.json for each N (for `stratus-load plot`)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bin=${CARGO_TARGET_DIR:-target}/release
counts=${1:-10000}; out=${2:-$(mktemp -d)}; rounds=${3:-1}
mkdir -p "$out"
source loadtest/children.sh
source loadtest/peers/peers.sh
IFS=, read -ra ns <<<"$counts"
# Each server and the load generator are processes of their own, each holding N sockets.
need_nofile "$(($(printf '%s\n' "${ns[@]}" | sort -n | tail -1) + 100))"
npm_peers_install
setups=(stratus tungstenite)
for peer in $NPM_PEERS; do setups+=("npm:$peer"); done

# start SETUP: the server on CPU 0 at 127.0.0.1:19301 (publish API :19391); sets `pid`.
start() {
  case $1 in
    stratus)
      taskset -c 0 "$bin/stratus" serve --listen 127.0.0.1:19301 --admin-listen 127.0.0.1:19391 \
        --workers 1 >/dev/null 2>&1 &
      pid=$!; pids+=("$pid") ;;
    tungstenite)
      taskset -c 0 "$bin/stratus-load" peer tungstenite-broadcast --threads 1 \
        --listen 127.0.0.1:19301 --admin 127.0.0.1:19391 >/dev/null 2>&1 &
      pid=$!; pids+=("$pid") ;;
    npm:*)
      npm_peer_start "${1#npm:}" 19301 19391 shared
      pid=$npm_peer_pid ;;
  esac
  sleep 0.5
}

for n in "${ns[@]}"; do
  for round in $(seq "$rounds"); do
    for setup in "${setups[@]}"; do
      name=$setup
      [[ $setup != npm:* ]] || name=$(npm_peer_name "${setup#npm:}")
      start "$setup"
      "$bin/stratus-load" connections --client-cpu 1 --url 'ws://127.0.0.1:19301/ws?topic=idle' \
        -n "$n" --rate 5000 --hold 2 --pid "$pid" --deflate \
        --out "$out/connections-$n-$name-$round.json" >/dev/null
      kill "$pid"; wait "$pid" 2>/dev/null || true
      python3 - "$out/connections-$n-$name-$round.json" "$name" "$round" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["results"]
print(f"{sys.argv[2]:>15} {sys.argv[1].rsplit('/', 1)[1]}: {r['opened']} connections, "
      f"{r['server_bytes_per_connection']} B of RSS each, {r['handshakes_per_s']:.0f} handshakes/s")
PY
    done
  done
  python3 - "$out" "$n" stratus <<'PY'
import glob, json, sys
out, n, base = sys.argv[1], int(sys.argv[2]), sys.argv[3]
runs = {}
for f in sorted(glob.glob(f"{out}/connections-{n}-*-*.json")):
    name = f.rsplit("/", 1)[1][len(f"connections-{n}-"):].rsplit("-", 1)[0]
    runs.setdefault(name, []).append(json.load(open(f))["results"])
results = {}
for name, rs in runs.items():
    per = [r["server_bytes_per_connection"] for r in rs]
    results[name] = {"mean": round(sum(per) / len(per)), "server_bytes_per_connection": per,
                     "handshakes_per_s": [r["handshakes_per_s"] for r in rs],
                     "opened": [r["opened"] for r in rs]}
ratios = {f"{name}_over_{base}": round(r["mean"] / max(results[base]["mean"], 1), 2)
          for name, r in results.items() if name != base and base in results}
report = {"scenario": "compare connections",
          "params": {"connections": n, "deflate": "offered"}, "results": results, **ratios}
json.dump(report, open(f"{out}/compare-connections-{n}.json", "w"), indent=2)
for name, r in results.items():
    print(f"{name}: {r['mean']} B per idle connection at {n}")
for key, ratio in ratios.items():
    print(f"{key.replace('_over_', ' / ')} bytes per connection: {ratio:.2f}")
PY
done
