#!/usr/bin/env bash
# Cross-node fanout beside single-node fanout, side by side in one run. Four setups, all
# servers (and Redis) pinned to CPU 0, `stratus-load fanout` on CPU 1, driven in turn
# (A B C D A B C D ...):
#   single        one `stratus serve`, the embedded local broker;
#   single-redis  one node with --broker (every publish takes the Redis hop);
#   cluster       three nodes with --broker; subscribers and publishers spread over them;
#   history       the same three nodes' setup with --history 1000 (XADD and PUBLISH in
#                 one Lua call per publish).
# They all share one core, so this measures what the Redis hop and the split cost, not
# how a cluster scales out (that needs a core per node). Starts its own redis-server
# (installing it when missing). Builds nothing: run
# `cargo build --release -p stratus-server -p stratus-loadtest` first.
#
#   loadtest/compare-cluster.sh SUBSCRIBERS SIZE [SECONDS] [ROUNDS] [RATE] [PUBLISHERS] [OUTDIR]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bin=${CARGO_TARGET_DIR:-target}/release
subs=${1:-3000}; size=${2:-64}; secs=${3:-5}; rounds=${4:-2}; rate=${5:-0}; publishers=${6:-3}
out=${7:-$(mktemp -d)}
mkdir -p "$out"
bash scripts/install-redis.sh >/dev/null
source loadtest/children.sh

redis_port=19379
taskset -c 0 redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
  >/dev/null & pids+=($!)
until redis-cli -p "$redis_port" ping >/dev/null 2>&1; do sleep 0.05; done
node() { # ws admin [broker [more flags]]
  local ws=$1 admin=$2 broker=${3:-}
  shift $(( $# < 3 ? $# : 3 ))
  taskset -c 0 "$bin/stratus" serve --listen "127.0.0.1:$ws" --admin-listen "127.0.0.1:$admin" \
    --workers 1 --deflate off --log-level warn ${broker:+--broker "$broker"} "$@" & pids+=($!)
}
broker="redis://127.0.0.1:$redis_port/0"
node 19301 19391
node 19311 19392 "$broker"
for i in 1 2 3; do node "1932$i" "1939$((2 + i))" "$broker"; done
for i in 1 2 3; do node "1933$i" "1938$i" "$broker" --history 1000; done
sleep 1

declare -A urls admins
urls[single]=ws://127.0.0.1:19301/ws; admins[single]=127.0.0.1:19391
urls[single-redis]=ws://127.0.0.1:19311/ws; admins[single-redis]=127.0.0.1:19392
urls[cluster]=ws://127.0.0.1:19321/ws,ws://127.0.0.1:19322/ws,ws://127.0.0.1:19323/ws
admins[cluster]=127.0.0.1:19393,127.0.0.1:19394,127.0.0.1:19395
urls[history]=ws://127.0.0.1:19331/ws,ws://127.0.0.1:19332/ws,ws://127.0.0.1:19333/ws
admins[history]=127.0.0.1:19381,127.0.0.1:19382,127.0.0.1:19383

for round in $(seq "$rounds"); do
  for name in single single-redis cluster history; do
    "$bin/stratus-load" fanout --client-cpu 1 --watch-cpu 0 --url "${urls[$name]}" \
      --admin "${admins[$name]}" -n "$subs" -s "$size" -r "$rate" -P "$publishers" -d "$secs" \
      --topic "fanout-$round" --out "$out/cluster-$name-$round.json" >/dev/null
    python3 loadtest/fanout_report.py round "$out/cluster-$name-$round.json" "$name" "$round"
  done
done
python3 loadtest/fanout_report.py summary "$out" cluster "compare cluster" single \
  "$subs" "$size" "$rate" "$publishers" "$secs"
