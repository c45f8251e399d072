#!/usr/bin/env bash
# Honest subscribers beside hostile clients, on one node and on a three-node cluster with
# Redis, each with and without the attack, side by side: every honest subscriber must get
# every message in order, and no server's RSS may pass the bound below. The attack:
# idle sockets that never upgrade (more than --max-unupgraded, so the oldest are shed),
# upgrade heads and 4 KB frames trickled a byte a second, ping floods that never read,
# subscription churn on fresh topics, and oversized, malformed and trickled admin
# requests (stratus-load hostile). Servers (and Redis) on CPU 0, the load on CPU 1; the
# servers run with their defaults. Loopback only; every run stops by itself.
# Builds nothing: run `cargo build --release -p stratus-server -p stratus-loadtest` first.
#
#   loadtest/hostile-soak.sh [SECONDS] [OUTDIR]       (about 5 minutes at 30 s)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bin=${CARGO_TARGET_DIR:-target}/release
secs=${1:-30}
out=${2:-$(mktemp -d)}
mkdir -p "$out"
# The bound every server is held to, attack or not: the receive pool a worker may grow
# (64 MiB at the default 1024 x 64 KiB), the send queues of the connections the attack
# holds (each capped at 1 MiB, and the ping floods hold a few pongs each), and the rest.
max_rss=$((256 << 20))
bash scripts/install-redis.sh >/dev/null
source loadtest/children.sh

node() { # ws admin [broker]
  taskset -c 0 "$bin/stratus" serve --listen "127.0.0.1:$1" --admin-listen "127.0.0.1:$2" \
    --workers 1 --log-level error ${3:+--broker "$3"} & pids+=($!)
}
wait_for() { until (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; do sleep 0.05; done; }
run() { # name attack urls admins pids
  "$bin/stratus-load" hostile --client-cpu 1 --attack "$2" --url "$3" --admin "$4" --pid "$5" \
    --max-rss "$max_rss" -d "$secs" --idle 5000 --out "$out/hostile-$1-$2.json" >/dev/null
}

for attack in none all; do
  node 19401 19491; wait_for 19401
  run single "$attack" ws://127.0.0.1:19401/ws 127.0.0.1:19491 "${pids[0]}"
  cleanup
  taskset -c 0 redis-server --port 19479 --bind 127.0.0.1 --save "" --appendonly no \
    >/dev/null & pids+=($!)
  until redis-cli -p 19479 ping >/dev/null 2>&1; do sleep 0.05; done
  for i in 1 2 3; do node "1941$i" "1949$((1 + i))" redis://127.0.0.1:19479/0; done
  for i in 1 2 3; do wait_for "1941$i"; done
  run cluster "$attack" ws://127.0.0.1:19411/ws,ws://127.0.0.1:19412/ws,ws://127.0.0.1:19413/ws \
    127.0.0.1:19492,127.0.0.1:19493,127.0.0.1:19494 "${pids[1]},${pids[2]},${pids[3]}"
  cleanup
done

python3 - "$out" "$max_rss" <<'PY'
import json, sys
out, bound = sys.argv[1], int(sys.argv[2])
print(f"honest subscribers, publish-to-receive; every server's RSS bound {bound >> 20} MiB")
print(f"{'setup':8} {'attack':7} {'delivered':>10} {'missing':>8} {'p50':>9} {'p99':>9} {'peak RSS':>9} {'attack conns':>13}")
for setup in ("single", "cluster"):
    for attack in ("none", "all"):
        r = json.load(open(f"{out}/hostile-{setup}-{attack}.json"))["results"]
        lat = r["latency"]
        print(f"{setup:8} {attack:7} {r['deliveries']:>10} {r['missing']:>8} "
              f"{lat['p50_us'] / 1000:>7.2f}ms {lat['p99_us'] / 1000:>7.2f}ms "
              f"{max(r['peak_rss']) >> 20:>6} MiB {r['attack']['connections']:>13}")
PY
echo "results in $out"
