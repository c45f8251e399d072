#!/usr/bin/env python3
"""Reports for the side-by-side fanout scripts (compare-fanout.sh, compare-cluster.sh).

  fanout_report.py round FILE NAME ROUND
      one line per run: deliveries/s, publishes/s, missing, latency, server core busy
  fanout_report.py summary OUT PREFIX SCENARIO BASE SUBS SIZE RATE PUBLISHERS SECS
      gathers OUT/PREFIX-NAME-ROUND.json into OUT/compare-PREFIX.json (per setup: the mean and
      every round's figures) with each setup's mean over BASE's, and prints the ratios
"""
import glob
import json
import sys


def round_line(path, name, rnd):
    report = json.load(open(path))
    r = report["results"]
    lat = r["latency"]
    busy = r.get("server_cpu_busy")
    per_s = r["published"] / report["params"]["duration_s"]
    print(f"round {rnd} {name:>12}: {r['deliveries_per_s']:.0f} deliveries/s, "
          f"{per_s:.0f} publishes/s, refused {r.get('refused', 0)}, missing {r['missing']}, "
          f"closed {r.get('subscribers_closed', 0)}, drained in {r.get('drain_s', 0)} s, "
          f"p50 {lat['p50_us']} us, "
          f"p99 {lat['p99_us']} us, p99.9 {lat['p999_us']} us, "
          f"server core {'-' if busy is None else f'{busy:.0%}'} busy")


def gather(out, prefix):
    """The reports OUT/PREFIX-NAME-ROUND.json, whole, in lists by NAME."""
    runs = {}
    for f in sorted(glob.glob(f"{out}/{prefix}-*-*.json")):
        name = f.rsplit("/", 1)[1][len(prefix) + 1:].rsplit("-", 1)[0]
        runs.setdefault(name, []).append(json.load(open(f)))
    return runs


def summary(out, prefix, scenario, base, subs, size, rate, publishers, secs):
    runs = {name: [r["results"] for r in reports] for name, reports in gather(out, prefix).items()}
    results = {}
    for name, rs in runs.items():
        rates = [r["deliveries_per_s"] for r in rs]
        results[name] = {"mean": round(sum(rates) / len(rates)), "deliveries_per_s": rates,
                         "missing": [r["missing"] for r in rs],
                         "refused": [r.get("refused", 0) for r in rs],
                         "subscribers_closed": [r.get("subscribers_closed", 0) for r in rs],
                         "latency_p50_us": [r["latency"]["p50_us"] for r in rs],
                         "latency_p99_us": [r["latency"]["p99_us"] for r in rs],
                         "latency_p999_us": [r["latency"]["p999_us"] for r in rs],
                         "server_cpu_busy": [r.get("server_cpu_busy") for r in rs]}
    ratios = {f"{name}_over_{base}": round(results[name]["mean"] / max(results[base]["mean"], 1), 2)
              for name in results if name != base}
    report = {"scenario": scenario,
              "params": {"subscribers": int(subs), "size": int(size), "rate": float(rate),
                         "publishers": int(publishers), "duration_s": float(secs)},
              "results": results, **ratios}
    json.dump(report, open(f"{out}/compare-{prefix}.json", "w"), indent=2)
    for key, ratio in ratios.items():
        print(f"{key.replace('_over_', ' / ')} deliveries/s: {ratio:.2f}")


if __name__ == "__main__":
    if sys.argv[1] == "round":
        round_line(*sys.argv[2:5])
    else:
        summary(*sys.argv[2:11])
