#!/usr/bin/env python3
"""Reports for the side-by-side fanout scripts (compare-fanout.sh, compare-cluster.sh,
compare-protocols.sh, compare-sse.sh).

  fanout_report.py round FILE NAME ROUND
      one line per run: deliveries/s, publishes/s, missing, latency, server core busy,
      server CPU per delivery where the run measured it (`--server-pid`: first publish to
      last delivery, not connection set-up) and bytes on the wire per delivery; with `--cpu-of`,
      the brokers' CPU per publish (the redis-servers' all together, and each; the
      nats-server's) and the Stratus nodes' CPU per delivery (all together)
  fanout_report.py summary OUT PREFIX SCENARIO BASE SUBS SIZE RATE PUBLISHERS SECS [DEFLATE]
      gathers OUT/PREFIX-NAME-ROUND.json into OUT/compare-PREFIX.json (per setup: the mean and
      every round's figures) with each setup's mean over BASE's (stratus's when BASE did not
      run), and prints the ratios: of deliveries/s, of server CPU per delivery where every
      run measured it, and at a fixed rate, of p99 latency
  fanout_report.py metrics ADMIN
      one line from a Stratus node's /metrics at ADMIN (HOST:PORT): publishes, compressions
      (a shared-mode broadcast compressed once for all its subscribers) and their ratio
"""
import glob
import json
import socket
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
          f"server core {'-' if busy is None else f'{busy:.0%}'} busy"
          + cpu_text(r.get("server_cpu_us_per_delivery"))
          + cpu_text(r.get("client_cpu_us_per_delivery"), "load generator")
          + wire_text(r.get("wire_bytes_per_delivery"))
          + processes_text(r))


def wire_text(b):
    """", N B on the wire per delivery" where measured (a compressed frame is smaller)."""
    return "" if b is None else f", {b:.1f} B on the wire per delivery"


def metrics(admin):
    """Publishes and compressions from a Stratus node's /metrics, and their ratio."""
    host, port = admin.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        page = b""
        while chunk := s.recv(65536):
            page += chunk
    values = {}
    for line in page.decode(errors="replace").splitlines():
        parts = line.split()
        if len(parts) == 2 and not line.startswith("#"):
            values[parts[0]] = parts[1]
    keys = ["stratus_publishes_total", "stratus_deflate_compressions_total",
            "stratus_deflate_compressions_per_publish"]
    print("  stratus /metrics so far: "
          + ", ".join(f"{k.removeprefix('stratus_')} {values.get(k, 'absent')}" for k in keys))


def watched(r, name):
    """The processes named NAME among those `--cpu-of` watched, in the order given."""
    return [p for p in r.get("processes", []) if p["name"] == name]


# The broker processes `--cpu-of` may watch: (process name, what the reports call it).
BROKERS = [("redis-server", "redis"), ("nats-server", "nats")]


def broker_per_publish(r, process="redis-server"):
    """The PROCESS brokers' CPU per publish, all together (us), or None if none was watched."""
    brokers = watched(r, process)
    return round(sum(p["us_per_publish"] for p in brokers), 2) if brokers else None


def nodes_per_delivery(r):
    """The Stratus nodes' CPU per delivery, all together (us), or None if none was watched."""
    nodes = watched(r, "stratus")
    return round(sum(p["us_per_delivery"] for p in nodes), 3) if nodes else None


def processes_text(r):
    """", redis CPU X us/publish (a + b), nodes CPU Y us/delivery" where watched (nats
    CPU for a nats-server)."""
    text = ""
    for process, label in BROKERS:
        brokers = watched(r, process)
        if brokers:
            each = " + ".join(f"{p['us_per_publish']:.2f}" for p in brokers)
            text += f", {label} CPU {broker_per_publish(r, process):.2f} us/publish ({each})"
    if watched(r, "stratus"):
        text += f", nodes CPU {nodes_per_delivery(r):.3f} us/delivery"
    return text


def cpu_text(us, whose="server"):
    """", server CPU X us/delivery" where measured."""
    return "" if us is None else f", {whose} CPU {us:.2f} us/delivery"


def mean(values):
    return sum(values) / len(values)


def gather(out, prefix):
    """The reports OUT/PREFIX-NAME-ROUND.json, whole, in lists by NAME."""
    runs = {}
    for f in sorted(glob.glob(f"{out}/{prefix}-*-*.json")):
        name = f.rsplit("/", 1)[1][len(prefix) + 1:].rsplit("-", 1)[0]
        runs.setdefault(name, []).append(json.load(open(f)))
    return runs


def summary(out, prefix, scenario, base, subs, size, rate, publishers, secs, deflate=None):
    runs = {name: [r["results"] for r in reports] for name, reports in gather(out, prefix).items()}
    if base not in runs:
        base = "stratus" if "stratus" in runs else sorted(runs)[0]
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
        figures = [(f"{label}_cpu_us_per_publish", lambda r, p=process: broker_per_publish(r, p))
                   for process, label in BROKERS]
        for key, of in figures + [("nodes_cpu_us_per_delivery", nodes_per_delivery)]:
            values = [of(r) for r in rs]
            if all(v is not None for v in values):
                results[name][key] = values
                results[name][f"{key}_mean"] = round(mean(values), 3)
        for process, label in BROKERS:
            each = [[p["us_per_publish"] for p in watched(r, process)] for r in rs]
            if all(each):
                results[name][f"{label}_cpu_us_per_publish_each"] = each
        results[name]["publishes_per_s"] = [round(r["published"] / float(secs)) for r in rs]
        wire = [r.get("wire_bytes_per_delivery") for r in rs]
        if all(b is not None for b in wire):
            results[name]["wire_bytes_per_delivery"] = wire
        cpu = [r.get("server_cpu_us_per_delivery") for r in rs]
        if all(us is not None for us in cpu):
            results[name]["server_cpu_us_per_delivery"] = cpu
            results[name]["server_cpu_us_per_delivery_mean"] = round(mean(cpu), 3)
    ratios = {f"{name}_over_{base}": round(results[name]["mean"] / max(results[base]["mean"], 1), 2)
              for name in results if name != base}
    cpu_ratios = {f"{name}_over_{base}_server_cpu_per_delivery":
                  round(results[name]["server_cpu_us_per_delivery_mean"]
                        / max(results[base]["server_cpu_us_per_delivery_mean"], 1e-9), 2)
                  for name in results if name != base
                  and "server_cpu_us_per_delivery_mean" in results[name]
                  and "server_cpu_us_per_delivery_mean" in results[base]}
    p99_ratios = {f"{name}_over_{base}_p99":
                  round(mean(results[name]["latency_p99_us"])
                        / max(mean(results[base]["latency_p99_us"]), 1), 2)
                  for name in results if name != base} if float(rate) > 0 else {}
    params = {"subscribers": int(subs), "size": int(size), "rate": float(rate),
              "publishers": int(publishers), "duration_s": float(secs)}
    if deflate is not None:
        params["deflate"] = deflate
    report = {"scenario": scenario, "params": params, "base": base,
              "results": results, **ratios, **cpu_ratios, **p99_ratios}
    json.dump(report, open(f"{out}/compare-{prefix}.json", "w"), indent=2)
    for name, r in results.items():
        p50, p99 = r["latency_p50_us"], r["latency_p99_us"]
        print(f"{name}: {r['mean']} deliveries/s (mean of {len(p50)}), "
              f"p50 {min(p50)}-{max(p50)} us, p99 {min(p99)}-{max(p99)} us"
              + cpu_text(r.get("server_cpu_us_per_delivery_mean"))
              + wire_text(mean(r["wire_bytes_per_delivery"])
                          if "wire_bytes_per_delivery" in r else None)
              + "".join(f", {label} CPU {r[f'{label}_cpu_us_per_publish_mean']:.2f} us/publish"
                        for _, label in BROKERS if f"{label}_cpu_us_per_publish_mean" in r)
              + (f", nodes CPU {r['nodes_cpu_us_per_delivery_mean']:.3f} us/delivery"
                 if "nodes_cpu_us_per_delivery_mean" in r else ""))
    for key, ratio in ratios.items():
        print(f"{key.replace('_over_', ' / ')} deliveries/s: {ratio:.2f}")
    for key, ratio in cpu_ratios.items():
        key = key.removesuffix("_server_cpu_per_delivery").replace("_over_", " / ")
        print(f"{key} server CPU per delivery: {ratio:.2f}")
    for key, ratio in p99_ratios.items():
        key = key.removesuffix("_p99").replace("_over_", " / ")
        print(f"{key} p99 latency: {ratio:.2f}")


if __name__ == "__main__":
    if sys.argv[1] == "round":
        round_line(*sys.argv[2:5])
    elif sys.argv[1] == "metrics":
        metrics(sys.argv[2])
    else:
        summary(*sys.argv[2:12])
