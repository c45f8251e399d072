#!/usr/bin/env bash
# What presence costs a node under connection churn, side by side: `stratus serve` (one
# worker, CPU 0, --deflate off) with presence off, counts, and members with join/leave
# events, each driven A B C A B C by `stratus-load churn` on CPU 1 (HELD v1 subscribers on
# one topic while RATE connections a second connect, subscribe, stay HOLD s and close).
# Reports the server's CPU seconds (/proc/PID/stat) per churned connection in each setup
# (in all, and in user mode) and each setup's cost over presence off, (on - off) / off, and
# what it adds in user mode over presence off's whole cost (see churn_report.py). Then
# fanout with presence off and members (FANOUT v1 subscribers on one topic, 64-byte
# messages at PUBLISH a second), A B A B: deliveries/s, latency and the server core's busy fraction.
# Server and generator run under the real-time FIFO policy (`chrt -f 10`, as root; else at
# nice -10): on a shared machine other work on CPU 0 would otherwise run in the server's
# place and inflate its own CPU time per connection (its cache and TLB refilled after
# every switch; seen here as 2-3x between rounds of one setup). Both wait on I/O, so they
# never hold a core they do not use; the kernel's RT throttling bounds them regardless.
# The server pings only after 600 s of silence: the held subscribers take tens of seconds
# to connect (the kernel's search for a free source port slows as 19,000 of them fill), and
# the first must not be pinged out before the generator reads them. Takes about 15 minutes
# with the defaults (a minute of it waiting out TIME_WAIT before each setup). Builds
# nothing: run `cargo build --release -p stratus-server -p stratus-loadtest` first.
#
#   loadtest/compare-presence.sh [HELD] [RATE] [SECONDS] [ROUNDS] [HOLD] [FANOUT] [PUBLISH] [OUTDIR]
# Setups, as name:flags, may be replaced with SETUPS="off:--presence off;..." (the first is
# the base).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bin=${CARGO_TARGET_DIR:-target}/release
held=${1:-18500}; rate=${2:-500}; secs=${3:-15}; rounds=${4:-2}; hold=${5:-1}; fanout=${6:-19000}
publish=${7:-20}; out=${8:-$(mktemp -d)}
setups=${SETUPS:-"off:--presence off;counts:--presence counts;members:--presence members --presence-events"}
mkdir -p "$out"
ws=19501; admin=19591
server=""
if chrt -f 10 true 2>/dev/null; then prio=(chrt -f 10); else prio=(nice -n -10); fi
# Waits (at most 90 s) until the TIME_WAIT sockets the last server left have expired, so
# every setup starts from the same kernel state: the 26,000 connections a setup closes sit
# in TIME_WAIT for 60 s, and their expiry (timer softirqs) and the longer socket-hash
# chains would otherwise land in the next setup's window, and only in some setups'.
settle() {
  local waiting
  for _ in $(seq 90); do
    waiting=$(ss -Htan state time-wait | wc -l)
    [ "$waiting" -lt 200 ] && break
    sleep 1
  done
  echo "time-wait sockets at the start: $waiting" >&2
}
stop() { if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; server=""; fi; }
trap stop EXIT
start() { # flags...
  "${prio[@]}" taskset -c 0 "$bin/stratus" serve --listen "127.0.0.1:$ws" \
    --admin-listen "127.0.0.1:$admin" --workers 1 --deflate off --ping-interval 600 "$@" \
    >/dev/null 2>&1 &
  server=$!
  sleep 0.5
}
base=${setups%%:*}
IFS=';' read -ra list <<<"$setups"
for round in $(seq "$rounds"); do
  for setup in "${list[@]}"; do
    name=${setup%%:*}; read -ra flags <<<"${setup#*:}"
    settle
    start "${flags[@]}"
    "${prio[@]}" "$bin/stratus-load" churn --client-cpu 1 --watch-cpu 0 --server-pid "$server" \
      --url "ws://127.0.0.1:$ws/ws" -n "$held" -r "$rate" -d "$secs" --hold "$hold" \
      --out "$out/churn-$name-$round.json" >/dev/null
    stop
    python3 loadtest/churn_report.py round "$out/churn-$name-$round.json" "$name" "$round"
  done
done
python3 loadtest/churn_report.py summary "$out" "$base"
[ "$fanout" -gt 0 ] || exit 0
for round in $(seq "$rounds"); do
  for setup in "off:--presence off" "members:--presence members"; do
    name=${setup%%:*}; read -ra flags <<<"${setup#*:}"
    start "${flags[@]}"
    "${prio[@]}" "$bin/stratus-load" fanout --client-cpu 1 --watch-cpu 0 \
      --url "ws://127.0.0.1:$ws/ws" --admin "127.0.0.1:$admin" --protocol v1 -n "$fanout" \
      -s 64 -r "$publish" -d 5 --out "$out/fanout-$name-$round.json" >/dev/null
    stop
    python3 loadtest/fanout_report.py round "$out/fanout-$name-$round.json" "$name" "$round"
  done
done
python3 loadtest/fanout_report.py summary "$out" fanout "fanout v1, presence off vs members" off \
  "$fanout" 64 "$publish" 1 5
