#!/usr/bin/env python3
"""Reports for compare-presence.sh (the `churn` scenario side by side).

  churn_report.py round FILE NAME ROUND
      one line per run: churn achieved, failures, what the held subscribers got, server CPU
  churn_report.py summary OUT BASE
      gathers OUT/churn-NAME-ROUND.json into OUT/compare-churn.json (per setup: the mean server
      CPU per churned connection and every round's figures) with each setup's cost over BASE's,
      (setup - base) / base, and prints them

Other work on the server's core inflates the server's own CPU time per connection (seen here:
the same setup 2-3x dearer in a round where the core was busy with something else), so each
round also gets its interference: the core's busy fraction less the server's own share of the
window. The cost is also given over the clean rounds alone (interference at most
CLEAN_INTERFERENCE), where every setup has one.

What presence adds is the server's own code (a table update per join and leave, one
coalesced push per interval), which runs in user mode; the kernel's work for the churn
(accepting, closing, the loopback traffic) and the softirq work that lands on the server by
chance are system time. So the summary also gives each setup's user-mode CPU per churned
connection (median over rounds) and what presence adds to it over BASE, as a share of BASE's
whole cost per churned connection (median): presence's cost against the churn's, with the
kernel's noise out of the numerator.
"""
from statistics import median
import json
import sys

from fanout_report import gather

CLEAN_INTERFERENCE = 0.05


def interference(r):
    """The server core's busy fraction not spent by the server (None without a core watch)."""
    busy = r.get("server_cpu_busy")
    return None if busy is None else round(busy - r["server_cpu_s"] / r["window_s"], 3)


def round_line(path, name, rnd):
    r = json.load(open(path))["results"]
    busy = r.get("server_cpu_busy")
    other = interference(r)
    print(f"round {rnd} {name:>8}: {r['closed_per_s']:.0f} churned/s (failed {r['failed']}, "
          f"skipped {r['skipped']}), held got {r['held_presence_pushes']} presence + "
          f"{r['held_occupancy_pushes']} occupancy pushes ({r['held_bytes_received'] / 1e6:.1f} MB), "
          f"{r['held_closed_by_server']} held closed by the server; server {r['server_cpu_s']} CPU s, "
          f"{r['server_cpu_us_per_churned']} us per churned connection "
          f"({r.get('server_user_us_per_churned', '-')} us in user mode), "
          f"core {'-' if busy is None else f'{busy:.0%}'} busy "
          f"({'-' if other is None else f'{other:.0%}'} by other work)")


def summary(out, base):
    reports = gather(out, "churn")
    runs = {name: [r["results"] for r in rs] for name, rs in reports.items()}
    params = next(iter(reports.values()))[0]["params"]
    results = {}
    for name, rs in runs.items():
        per = [r["server_cpu_us_per_churned"] for r in rs]
        results[name] = {
            "mean_server_cpu_us_per_churned": round(sum(per) / len(per), 1),
            "server_cpu_us_per_churned": per,
            "server_cpu_s": [r["server_cpu_s"] for r in rs],
            "median_server_cpu_us_per_churned": median(per),
            "server_user_us_per_churned": [r.get("server_user_us_per_churned") for r in rs],
            "churned_per_s": [r["closed_per_s"] for r in rs],
            "failed": [r["failed"] for r in rs],
            "skipped": [r["skipped"] for r in rs],
            "held_presence_pushes": [r["held_presence_pushes"] for r in rs],
            "held_occupancy_pushes": [r["held_occupancy_pushes"] for r in rs],
            "held_bytes_received": [r["held_bytes_received"] for r in rs],
            "held_closed_by_server": [r["held_closed_by_server"] for r in rs],
            "server_cpu_busy": [r.get("server_cpu_busy") for r in rs],
            "interference": [interference(r) for r in rs],
        }
        clean = [r["server_cpu_us_per_churned"] for r in rs
                 if (interference(r) or 0) <= CLEAN_INTERFERENCE]
        if clean:
            results[name]["clean_mean_server_cpu_us_per_churned"] = round(sum(clean) / len(clean), 1)
            results[name]["clean_rounds"] = len(clean)
    off = results[base]["mean_server_cpu_us_per_churned"]
    costs = {f"{name}_cost_over_{base}":
             round((res["mean_server_cpu_us_per_churned"] - off) / max(off, 1e-9), 3)
             for name, res in results.items() if name != base}
    clean_off = results[base].get("clean_mean_server_cpu_us_per_churned")
    clean_costs = {f"{name}_clean_cost_over_{base}":
                   round((res["clean_mean_server_cpu_us_per_churned"] - clean_off) / clean_off, 3)
                   for name, res in results.items()
                   if name != base and clean_off and "clean_rounds" in res}
    users = {name: [u for u in res["server_user_us_per_churned"] if u is not None]
             for name, res in results.items()}
    for name, us in users.items():
        if us:
            results[name]["median_server_user_us_per_churned"] = median(us)
    whole_off = results[base]["median_server_cpu_us_per_churned"]
    user_off = results[base].get("median_server_user_us_per_churned")
    user_costs = {f"{name}_user_mode_addition_over_{base}_whole":
                  round((res["median_server_user_us_per_churned"] - user_off) / whole_off, 3)
                  for name, res in results.items()
                  if name != base and user_off is not None
                  and "median_server_user_us_per_churned" in res}
    report = {"scenario": f"churn, presence setups against {base}", "params": params,
              "results": results, "clean_interference": CLEAN_INTERFERENCE, **costs, **clean_costs, **user_costs}
    json.dump(report, open(f"{out}/compare-churn.json", "w"), indent=2)
    for name, res in results.items():
        print(f"{name:>8}: {res['mean_server_cpu_us_per_churned']} us server CPU per churned "
              f"connection {res['server_cpu_us_per_churned']}, interference {res['interference']}; "
              f"clean rounds: {res.get('clean_rounds', 0)}, mean "
              f"{res.get('clean_mean_server_cpu_us_per_churned', '-')} us; user mode "
              f"{res['server_user_us_per_churned']}, median "
              f"{res.get('median_server_user_us_per_churned', '-')} us")
    for key, cost in {**costs, **clean_costs, **user_costs}.items():
        print(f"{key.replace('_cost_over_', ' cost over ').replace('_', ' ')}: {cost:+.1%}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["round"]:
        round_line(*sys.argv[2:5])
    elif sys.argv[1:2] == ["summary"]:
        summary(*sys.argv[2:4])
    else:
        sys.exit(__doc__)
