#!/usr/bin/env bash
# Fanout side by side: `stratus serve` (one worker) and the tokio-tungstenite broadcast
# peer (current-thread runtime), each on CPU 0, driven A B A B by `stratus-load fanout`
# on CPU 1 (subscribers and publisher). Prints deliveries/s, latency and the ratio.
# Builds nothing: run `cargo build --release -p stratus-server -p stratus-loadtest` first.
#
#   loadtest/compare-fanout.sh SUBSCRIBERS SIZE [SECONDS] [ROUNDS] [RATE] [PUBLISHERS] [OUTDIR]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bin=${CARGO_TARGET_DIR:-target}/release
subs=${1:-10000}; size=${2:-64}; secs=${3:-5}; rounds=${4:-2}; rate=${5:-0}; publishers=${6:-1}
out=${7:-$(mktemp -d)}
mkdir -p "$out"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
taskset -c 0 "$bin/stratus" serve --listen 127.0.0.1:19201 --admin-listen 127.0.0.1:19291 \
  --workers 1 --deflate off >/dev/null 2>&1 & pids+=($!)
taskset -c 0 "$bin/stratus-load" peer tungstenite-broadcast --threads 1 \
  --listen 127.0.0.1:19202 --admin 127.0.0.1:19292 >/dev/null 2>&1 & pids+=($!)
sleep 0.5
for round in $(seq "$rounds"); do
  for target in stratus:19201:19291 tungstenite:19202:19292; do
    IFS=: read -r name ws admin <<<"$target"
    "$bin/stratus-load" fanout --client-cpu 1 --watch-cpu 0 --url "ws://127.0.0.1:$ws/ws" \
      --admin "127.0.0.1:$admin" -n "$subs" -s "$size" -r "$rate" -P "$publishers" -d "$secs" \
      --out "$out/fanout-$name-$round.json" >/dev/null
    python3 - "$out/fanout-$name-$round.json" "$name" "$round" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["results"]
busy = r.get("server_cpu_busy")
print(f"round {sys.argv[3]} {sys.argv[2]}: {r['deliveries_per_s']:.0f} deliveries/s, "
      f"missing {r['missing']}, p50 {r['latency']['p50_us']} us, p99 {r['latency']['p99_us']} us, "
      f"server core {'-' if busy is None else f'{busy:.0%}'} busy")
PY
  done
done
python3 - "$out" "$subs" "$size" "$rate" "$publishers" "$secs" <<'PY'
import glob, json, sys
out, subs, size, rate, publishers, secs = sys.argv[1:]
runs = {}
for f in sorted(glob.glob(f"{out}/fanout-*-*.json")):
    name = f.rsplit("/", 1)[1].split("-")[1]
    runs.setdefault(name, []).append(json.load(open(f))["results"])
results = {}
for name, rs in runs.items():
    rates = [r["deliveries_per_s"] for r in rs]
    results[name] = {"mean": round(sum(rates) / len(rates)), "deliveries_per_s": rates,
                     "missing": [r["missing"] for r in rs],
                     "latency_p50_us": [r["latency"]["p50_us"] for r in rs],
                     "latency_p99_us": [r["latency"]["p99_us"] for r in rs],
                     "server_cpu_busy": [r.get("server_cpu_busy") for r in rs]}
ratio = results["stratus"]["mean"] / results["tungstenite"]["mean"]
report = {"scenario": "compare fanout",
          "params": {"subscribers": int(subs), "size": int(size), "rate": float(rate),
                     "publishers": int(publishers), "duration_s": float(secs)},
          "results": results, "stratus_over_tungstenite": round(ratio, 2)}
json.dump(report, open(f"{out}/compare-fanout.json", "w"), indent=2)
print(f"stratus / tungstenite deliveries/s: {ratio:.2f}")
PY
echo "results in $out"
