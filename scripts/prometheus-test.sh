#!/usr/bin/env bash
# Checks the observability kit against a real Prometheus (Debian's `prometheus` package,
# installed here without starting its service; its binary is run directly on a temporary
# config and data directory): `promtool check rules` passes on deploy/prometheus/alerts.yml;
# with a Redis and a Stratus node under --broker, scraped every second, and traffic driven
# through them (subscribers with and without permessage-deflate, refused upgrades,
# publishes through the admin API, closes), every PromQL expression of the Grafana
# dashboard (deploy/grafana/stratus.json) returns data, every metric a dashboard query or
# an alerting rule names is one the node exports, and every rule evaluates without error;
# then Redis is killed and StratusBrokerDown must be seen firing in /api/v1/alerts.
# All on loopback, on free ports; everything it starts is stopped at the end.
# Non-interactive; exits non-zero on the first failure.
# CARGO overrides the cargo command (e.g. CARGO="flock /tmp/cargo.lock cargo");
# STRATUS_SKIP_BUILD=1 skips the build.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
step() { printf '\n--- %s\n' "$*"; }
fail() { echo "FAIL: $*"; exit 1; }
read -r -a cargo <<<"${CARGO:-cargo}"

source scripts/apt.sh
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  # Keep the package's service from starting (there is no systemd here, but there is an
  # init script): policy-rc.d answers "not now" while the package installs.
  policy=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | "${apt_sudo[@]}" tee /usr/sbin/policy-rc.d >/dev/null
    "${apt_sudo[@]}" chmod 755 /usr/sbin/policy-rc.d
    policy=1
  fi
  apt_install --no-install-recommends prometheus
  [ -z "$policy" ] || "${apt_sudo[@]}" rm -f /usr/sbin/policy-rc.d
fi
bash scripts/install-redis.sh >/dev/null
# STRATUS_SKIP_BUILD=1: use the release binary already built (as scripts/test.sh's Autobahn step does).
[ -n "${STRATUS_SKIP_BUILD:-}" ] || "${cargo[@]}" build --release -p stratus-server --bin stratus
stratus="${CARGO_TARGET_DIR:-target}/release/stratus"
prometheus --version 2>&1 | head -n 1
started=$(date +%s)

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  sleep 0.5
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_for() { # SECONDS COMMAND...: until COMMAND succeeds
  local seconds=$1
  shift
  for _ in $(seq $((seconds * 10))); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  return 1
}

step "promtool check rules"
promtool check rules deploy/prometheus/alerts.yml

step "redis-server, stratus --broker, prometheus (scrape and evaluation every 1 s)"
redis_port=$(free_port)
ws=$(free_port)
admin=$(free_port)
prom=$(free_port)
redis-server --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly no \
  >"$work/redis.log" 2>&1 &
redis=$!
pids+=("$redis")
wait_for 10 redis-cli -p "$redis_port" ping || fail "redis-server did not start"
"$stratus" serve --listen "127.0.0.1:$ws" --admin-listen "127.0.0.1:$admin" --workers 2 \
  --broker "redis://127.0.0.1:$redis_port/0" >"$work/stratus.log" 2>&1 &
pids+=($!)
wait_for 10 curl -sf "http://127.0.0.1:$admin/readyz" || { cat "$work/stratus.log"; fail "stratus is not ready"; }
cat >"$work/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - $root/deploy/prometheus/alerts.yml
scrape_configs:
  - job_name: stratus
    static_configs:
      - targets: ["127.0.0.1:$admin"]
EOF
promtool check config "$work/prometheus.yml" >/dev/null
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/data" \
  --web.listen-address="127.0.0.1:$prom" --log.level=warn >"$work/prometheus.log" 2>&1 &
pids+=($!)
wait_for 20 curl -sf "http://127.0.0.1:$prom/-/ready" || { cat "$work/prometheus.log"; fail "prometheus is not ready"; }

# Traffic only counts in a rate once Prometheus has a sample from before it.
first_scrape() {
  curl -sf "http://127.0.0.1:$prom/api/v1/query" --data-urlencode 'query=up{job="stratus"} == 1' |
    grep -q '"value"'
}
wait_for 15 first_scrape || fail "Prometheus does not scrape the node"

step "traffic: subscribers (half with permessage-deflate), refused upgrades, publishes, closes"
for round in 1 2 3; do
  python3 scripts/ws_probe.py --ws "127.0.0.1:$ws" --admin "127.0.0.1:$admin" --topic "prices$round" \
    --subscribers 10 --publish 40 --deflate --refusals --size 512
  python3 scripts/ws_probe.py --ws "127.0.0.1:$ws" --admin "127.0.0.1:$admin" --topic "news$round" \
    --subscribers 10 --publish 40 --size 100
  sleep 1
done
# Until Prometheus has scraped the last of it (6 rounds of 40 publishes) and has enough
# samples for every rate.
scraped() {
  curl -sf "http://127.0.0.1:$prom/api/v1/query" --data-urlencode 'query=stratus_publishes_total >= 240' |
    grep -q '"value"' &&
    curl -sf "http://127.0.0.1:$prom/api/v1/query" \
      --data-urlencode 'query=count_over_time(stratus_publishes_total[1m]) >= 5' | grep -q '"value"'
}
wait_for 15 scraped || fail "Prometheus did not scrape the publishes"
curl -sf "http://127.0.0.1:$admin/metrics" >"$work/metrics.txt"

step "every dashboard expression returns data; every metric named is exported; every rule evaluates"
python3 - "$prom" deploy/grafana/stratus.json "$work/metrics.txt" <<'PY'
import json, math, re, sys, urllib.parse, urllib.request

prom, dashboard, metrics_page = sys.argv[1], sys.argv[2], sys.argv[3]
api = f"http://127.0.0.1:{prom}/api/v1"
exported = {line.split("{")[0].split(" ")[0] for line in open(metrics_page) if line and not line.startswith("#")}
# Grafana's variables, as a query would see them: every node, a one-minute rate window.
variables = {"$__rate_interval": "1m", "$__interval": "1m", "$instance": ".*"}
failures = []

def get(path, **params):
    url = f"{api}/{path}?" + urllib.parse.urlencode(params, doseq=True)
    with urllib.request.urlopen(url, timeout=10) as response:
        body = json.load(response)
    if body.get("status") != "success":
        raise RuntimeError(body)
    return body["data"]

def names(expr):
    """The metric names an expression reads (ours all start with stratus_; `up` is Prometheus's)."""
    found = set(re.findall(r"\b(stratus_[a-z0-9_]+)\b", expr))
    if re.search(r"(?<![\w.$])up\s*(\{|==|$)", expr):
        found.add("up")
    return found

def check_names(where, expr):
    for name in sorted(names(expr)):
        if name != "up" and name not in exported:
            failures.append(f"{where}: {name} is not exported by the node")
        elif not get("query", query=f'count({{__name__="{name}"}})')["result"]:
            failures.append(f"{where}: {name} has no series in Prometheus")

def panels(items):
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))

board = json.load(open(dashboard))
queries = 0
for panel in panels(board["panels"]):
    for target in panel.get("targets", []):
        expr = target["expr"]
        for var, value in variables.items():
            expr = expr.replace(var, value)
        where = f"dashboard {panel['title']!r} {target['refId']}"
        if "$" in expr:
            failures.append(f"{where}: unknown variable in {expr}")
            continue
        queries += 1
        check_names(where, expr)
        result = get("query", query=expr)["result"]
        values = [float(r["value"][1]) for r in result]
        if not result:
            failures.append(f"{where}: no data for {expr}")
        elif all(math.isnan(v) for v in values):
            failures.append(f"{where}: only NaN for {expr}")
        else:
            shown = ", ".join(f"{v:.4g}" for v in values[:4])
            print(f"ok  {where}: {len(result)} series [{shown}]")
for var in board["templating"]["list"]:
    if var["type"] == "query":
        match = re.match(r"label_values\((.*),\s*(\w+)\)$", var["query"]["query"])
        series = get("series", **{"match[]": match.group(1)})
        labels = sorted({s.get(match.group(2)) for s in series} - {None})
        if not labels:
            failures.append(f"dashboard variable {var['name']}: no values")
        else:
            print(f"ok  dashboard variable {var['name']}: {labels}")

rules = [r for g in get("rules")["groups"] for r in g["rules"]]
if not rules:
    failures.append("Prometheus loaded no rules")
for rule in rules:
    where = f"rule {rule['name']}"
    check_names(where, rule["query"])
    get("query", query=rule["query"])  # evaluates (empty is fine: not firing)
    if rule.get("health") != "ok":
        failures.append(f"{where}: health {rule.get('health')} {rule.get('lastError')}")
    elif not rule.get("annotations", {}).get("runbook"):
        failures.append(f"{where}: no runbook annotation")
    else:
        print(f"ok  {where}: {', '.join(sorted(names(rule['query'])))} have series; {rule['state']}")
print(f"{queries} dashboard queries, {len(rules)} rules, {len(exported)} metric families exported")
for failure in failures:
    print("FAIL:", failure)
sys.exit(1 if failures else 0)
PY

step "kill Redis: StratusBrokerDown must fire"
killed=$(date +%s)
kill -KILL "$redis"
firing() {
  curl -sf "http://127.0.0.1:$prom/api/v1/alerts" |
    python3 -c 'import json,sys; a=json.load(sys.stdin)["data"]["alerts"]; sys.exit(not any(x["labels"]["alertname"]=="StratusBrokerDown" and x["state"]=="firing" for x in a))'
}
wait_for 90 firing || { curl -s "http://127.0.0.1:$prom/api/v1/alerts"; fail "StratusBrokerDown did not fire"; }
echo "StratusBrokerDown firing $(($(date +%s) - killed))s after Redis was killed (for: 30s)"
curl -s "http://127.0.0.1:$admin/readyz"
echo

echo
echo "prometheus test passed in $(($(date +%s) - started))s (after install and build)"
