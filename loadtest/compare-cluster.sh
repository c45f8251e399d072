#!/usr/bin/env bash
# Cross-node fanout beside single-node fanout, one Redis beside two and three shards, and
# Redis beside NATS, side by side in one run. All servers (and every redis-server and the
# nats-server) pinned to CPU 0,
# `stratus-load fanout` (subscribers and publishers) on CPU 1, the setups driven in turn
# within each round (A B C A B C ...). Setups (SETUPS picks them, in this order):
#   single        one `stratus serve`, the embedded local broker;
#   single-redis  one node with --broker (every publish takes the Redis hop);
#   cluster       three nodes with --broker; subscribers and publishers spread over them;
#   history       the same three nodes' setup with --history 1000 (XADD and PUBLISH in
#                 one Lua call per publish);
#   nats          cluster's setup on a nats-server instead of Redis: three nodes with
#                 --broker nats://127.0.0.1:19622, each publish a core NATS message on the
#                 topic's subject (stratus.t.TOPIC), fanned out to the nodes subscribed;
#   nats-history  history's setup on the same nats-server: --history 1000, each publish
#                 stored by JetStream (a file-backed stream, acknowledged before the publish
#                 is answered) and republished by the stream on the topic's subject. It
#                 shares the nats setup's nats-server as history shares cluster's Redis: the
#                 setups run one at a time, each run measures the same process, and the
#                 stream takes only history subjects (stratus.h.>), not the nats setup's;
#   shards-1|2|3  two nodes whose --broker lists 1, 2 or 3 redis-servers (topics assigned
#                 by the jump hash): the publishers on one node, the subscribers on the
#                 other, so every delivery crosses Redis. Give TOPICS (30, say) so the load
#                 spreads over the shards: topics fanout-0 .. fanout-29, the same every
#                 round (over 2 shards 15 + 15 of them, over 3 shards 10 + 12 + 8).
# Everything shares one core (CPU 0): three nodes, or three Redis shards, cannot deliver
# more than one here; what this measures is what the Redis hop, the split over nodes and
# the split over shards cost, Redis's cost beside NATS's, and the CPU each process spends
# per message: each run reports every node's and every broker's (redis-server's,
# nats-server's) CPU time (/proc/PID/stat, utime + stime) from the first publish to the
# last delivery, per publish and per delivery. How a cluster scales out needs a core (a
# machine) per node and per shard: see docs/scale.md.
# Starts its own redis-servers (installing redis when missing) and, for the NATS setups,
# its own `nats-server -js` (installing it when missing; its JetStream store in a
# temporary directory, removed at exit; its log in OUTDIR/nats-server.log). Builds
# nothing: run `cargo build --release -p stratus-server -p stratus-loadtest` first.
#
#   [SETUPS="shards-1 shards-2 shards-3"] [TOPICS=30] \
#   loadtest/compare-cluster.sh SUBSCRIBERS SIZE [SECONDS] [ROUNDS] [RATE] [PUBLISHERS] [OUTDIR]
#
# SETUPS defaults to "single single-redis cluster history", TOPICS to 1 (one topic per
# round, fanout-ROUND, in the first four setups; with TOPICS above 1, fanout-ROUND-0 ..).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bin=${CARGO_TARGET_DIR:-target}/release
subs=${1:-3000}; size=${2:-64}; secs=${3:-5}; rounds=${4:-2}; rate=${5:-0}; publishers=${6:-3}
out=${7:-$(mktemp -d)}
read -r -a setups <<<"${SETUPS:-single single-redis cluster history}"
topics=${TOPICS:-1}
mkdir -p "$out"
bash scripts/install-redis.sh >/dev/null
[[ " ${setups[*]} " != *" nats"* ]] || bash scripts/install-nats.sh >/dev/null
source loadtest/children.sh

declare -A redis_pid urls admins watch
nats_pid= nats_store=
redis() { # port: a redis-server on CPU 0, its pid in redis_pid[port]
  taskset -c 0 redis-server --port "$1" --bind 127.0.0.1 --save "" --appendonly no \
    >/dev/null & pids+=($!)
  redis_pid[$1]=$!
  until redis-cli -p "$1" ping >/dev/null 2>&1; do sleep 0.05; done
}
nats() { # port: a nats-server with JetStream on CPU 0, its pid in nats_pid
  # (19622: clear of every setup's ports; NATS's usual x4222 would meet shards-2's 19422)
  local bin_nats
  bin_nats=$(command -v nats-server || echo /usr/sbin/nats-server)
  nats_store=$(mktemp -d "${TMPDIR:-/tmp}/compare-cluster-nats.XXXXXX")
  trap 'cleanup; rm -rf "$nats_store"' EXIT # stop the nats-server, then remove its store
  taskset -c 0 "$bin_nats" -a 127.0.0.1 -p "$1" -js -sd "$nats_store" \
    >"$out/nats-server.log" 2>&1 & pids+=($!)
  nats_pid=$!
  # Accepting connections: a client is greeted with INFO.
  until (exec 3<>"/dev/tcp/127.0.0.1/$1" && read -r -t 1 line <&3 && [[ $line == INFO* ]]) \
    2>/dev/null; do
    kill -0 "$nats_pid" 2>/dev/null ||
      { echo "nats-server did not start: see $out/nats-server.log" >&2; exit 1; }
    sleep 0.05
  done
}
node() { # ws admin [broker [more flags]]: a node on CPU 0, its pid in node_pid
  local ws=$1 admin=$2 broker=${3:-}
  shift $(( $# < 3 ? $# : 3 ))
  taskset -c 0 "$bin/stratus" serve --listen "127.0.0.1:$ws" --admin-listen "127.0.0.1:$admin" \
    --workers 1 --deflate off --log-level warn ${broker:+--broker "$broker"} "$@" & pids+=($!)
  node_pid=$!
}
three_nodes() { # setup ws-prefix first-admin-port broker broker-pid [more flags]: three nodes
  local name=$1 ws=$2 admin=$3 broker=$4 i
  urls[$name]=; admins[$name]=; watch[$name]=$5
  shift 5
  for i in 1 2 3; do
    node "$ws$i" "$((admin + i - 1))" "$broker" "$@"
    urls[$name]+=${urls[$name]:+,}ws://127.0.0.1:$ws$i/ws
    admins[$name]+=${admins[$name]:+,}127.0.0.1:$((admin + i - 1))
    watch[$name]+=,$node_pid
  done
}
shards() { # K: two nodes on K redis-servers (19471 ..), publishers on the first
  local k=$1 name=shards-$1 broker= i
  watch[$name]=
  for i in $(seq "$k"); do
    [[ -n ${redis_pid[1947$i]:-} ]] || redis "1947$i"
    broker+=${broker:+,}redis://127.0.0.1:1947$i/0
    watch[$name]+=${watch[$name]:+,}${redis_pid[1947$i]}
  done
  node "194${k}1" "195${k}1" "$broker"; watch[$name]+=,$node_pid
  node "194${k}2" "195${k}2" "$broker"; watch[$name]+=,$node_pid
  admins[$name]=127.0.0.1:195${k}1; urls[$name]=ws://127.0.0.1:194${k}2/ws
}
start() { # setup
  case $1 in
    single-redis|cluster|history) [[ -n ${redis_pid[19379]:-} ]] || redis 19379 ;;
    nats|nats-history) [[ -n $nats_pid ]] || nats 19622 ;;
  esac
  case $1 in
    single) node 19301 19391; watch[single]=$node_pid
      urls[single]=ws://127.0.0.1:19301/ws; admins[single]=127.0.0.1:19391 ;;
    single-redis) node 19311 19392 "redis://127.0.0.1:19379/0"
      watch[single-redis]=${redis_pid[19379]},$node_pid
      urls[single-redis]=ws://127.0.0.1:19311/ws; admins[single-redis]=127.0.0.1:19392 ;;
    cluster) three_nodes cluster 1932 19393 redis://127.0.0.1:19379/0 "${redis_pid[19379]}" ;;
    history) three_nodes history 1933 19381 redis://127.0.0.1:19379/0 "${redis_pid[19379]}" \
      --history 1000 ;;
    nats) three_nodes nats 1934 19344 nats://127.0.0.1:19622 "$nats_pid" ;;
    nats-history) three_nodes nats-history 1935 19354 nats://127.0.0.1:19622 "$nats_pid" \
      --history 1000 ;;
    shards-[123]) shards "${1#shards-}" ;;
    *) echo "unknown setup $1 (single single-redis cluster history nats nats-history" \
      "shards-1 shards-2 shards-3)" >&2
      exit 2 ;;
  esac
}
for name in "${setups[@]}"; do start "$name"; done
sleep 1

for round in $(seq "$rounds"); do
  for name in "${setups[@]}"; do
    topic=fanout-$round
    [[ $name == shards-* ]] && topic=fanout
    "$bin/stratus-load" fanout --client-cpu 1 --watch-cpu 0 --url "${urls[$name]}" \
      --admin "${admins[$name]}" -n "$subs" -s "$size" -r "$rate" -P "$publishers" -d "$secs" \
      --topic "$topic" --topics "$topics" --cpu-of "${watch[$name]}" \
      --out "$out/cluster-$name-$round.json" >/dev/null
    python3 loadtest/fanout_report.py round "$out/cluster-$name-$round.json" "$name" "$round"
  done
done
python3 loadtest/fanout_report.py summary "$out" cluster "compare cluster" "${setups[0]}" \
  "$subs" "$size" "$rate" "$publishers" "$secs"
