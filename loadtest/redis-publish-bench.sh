#!/usr/bin/env bash
# Redis's own CPU per PUBLISH (64 B) with K = 1, 3, 10 subscribed connections (as K nodes
# subscribed to a topic would be), one at a time (pipeline 1: a wake-up per publish) and
# pipelined 16 deep (as a busy node's publishes arrive): redis-server on CPU 0,
# redis-benchmark (6 connections) and the K `redis-cli subscribe` readers on CPU 1; Redis's
# CPU time from /proc/PID/stat (utime + stime) around each run, over its 300,000 publishes.
# Where Redis's core is not full (the readers on CPU 1 can set the pace with K = 10), the
# figure is still its CPU per publish, not its ceiling.
#
#   loadtest/redis-publish-bench.sh
set -euo pipefail
port=19499
taskset -c 0 redis-server --port $port --bind 127.0.0.1 --save "" --appendonly no >/dev/null & rp=$!
trap 'kill $(jobs -p) 2>/dev/null' EXIT
until redis-cli -p $port ping >/dev/null 2>&1; do sleep 0.05; done
ticks() { awk '{print $14+$15}' /proc/$rp/stat; }
for k in 1 3 10; do
  subs=()
  for i in $(seq $k); do taskset -c 1 redis-cli -p $port subscribe stratus:t >/dev/null & subs+=($!); done
  sleep 0.5
  for pipe in 1 16; do
    t0=$(ticks); s0=$(date +%s.%N)
    out=$(taskset -c 1 redis-benchmark -p $port -n 300000 -c 6 -P $pipe -q publish stratus:t 0123456789012345678901234567890123456789012345678901234567890123 2>&1 | tr '\r' '\n' | grep -E 'requests per second' | tail -1)
    t1=$(ticks); s1=$(date +%s.%N)
    cpu=$(echo "($t1-$t0)/100" | bc -l)
    printf 'subscribers %2d pipeline %2d: %s; redis CPU %.2f s over %.2f s = %.2f us/publish, %.2f us/delivery\n' \
      $k $pipe "$out" $cpu $(echo "$s1-$s0" | bc -l) $(echo "$cpu*1000000/300000" | bc -l) $(echo "$cpu*1000000/300000/$k" | bc -l)
  done
  kill "${subs[@]}"; wait "${subs[@]}" 2>/dev/null || true
done
