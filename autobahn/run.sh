#!/usr/bin/env bash
# Run the Autobahn testsuite against Stratus and gate the result.
#
#   autobahn/run.sh server [GATE_ARGS...]   wstest (fuzzingclient) -> `stratus echo`
#   autobahn/run.sh client [GATE_ARGS...]   examples/autobahn -> wstest (fuzzingserver)
#
# GATE_ARGS go to gate.py, e.g. `--unimplemented-ok 12,13`.
#
# Environment:
#   STRATUS_SKIP_BUILD=1       don't run cargo build
#   STRATUS_BIN                server binary   (default $CARGO_TARGET_DIR|target/release/stratus)
#   STRATUS_AUTOBAHN_CLIENT    client example  (default .../release/examples/autobahn)
#   WSTEST                     wstest executable (default: PATH, /usr/local/bin; installed if missing)
#   AUTOBAHN_STEP_TIMEOUT      seconds per long step (default 1800)
#   STRATUS_ECHO_ARGS          extra flags for `stratus echo` (e.g. --deflate dedicated)
#   AUTOBAHN_SPEC              alternative wstest spec (e.g. a case subset; pass --expected N
#                              to the gate)
#   AUTOBAHN_PORT              the port on 127.0.0.1 (default 9001)
#   AUTOBAHN_NAME              the run's name, for its reports and logs (default: MODE)
#
# Runs with different ports and names can go side by side: the spec is copied with this
# run's URL and report folder. Reports: autobahn/reports/NAME/ (index.html, index.json);
# logs next to them (NAME-stratus.log, NAME-wstest.log).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
HOST=127.0.0.1
PORT="${AUTOBAHN_PORT:-9001}"
URL="ws://$HOST:$PORT"
STEP_TIMEOUT="${AUTOBAHN_STEP_TIMEOUT:-1800}"

log() { echo "[autobahn] $*" >&2; }
die() { echo "[autobahn] ERROR: $*" >&2; exit 1; }

usage() {
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}" >&2
  exit 2
}

[ $# -ge 1 ] || usage
MODE="$1"; shift
GATE_ARGS=("$@")
NAME="${AUTOBAHN_NAME:-$MODE}"
case "$MODE" in
  server|client) ;;
  -h|--help) usage ;;
  *) echo "unknown mode: $MODE" >&2; usage ;;
esac

T0=$(date +%s)
elapsed() { echo "$(( $(date +%s) - $1 ))s"; }

# ---- background process bookkeeping / cleanup ------------------------------
BG_PID=""      # the one long-lived background process (server or wstest)
BG_NAME=""

stop_bg() {
  [ -n "$BG_PID" ] || return 0
  local pid="$BG_PID" name="$BG_NAME" i
  BG_PID=""
  if kill -0 "$pid" 2>/dev/null; then
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "$name did not exit after SIGTERM; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$?
  stop_bg
  log "mode $MODE finished in $(elapsed "$T0") (exit $rc)"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port_open() { (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null; }

wait_for_port() {  # wait_for_port SECONDS
  local deadline=$(( $(date +%s) + $1 ))
  while ! port_open; do
    if ! kill -0 "$BG_PID" 2>/dev/null; then
      wait "$BG_PID" 2>/dev/null && rc=0 || rc=$?
      BG_PID=""
      die "$BG_NAME exited (status $rc) before listening on $HOST:$PORT; see $BG_LOG"
    fi
    [ "$(date +%s)" -lt "$deadline" ] || die "$BG_NAME did not listen on $HOST:$PORT within $1s; see $BG_LOG"
    sleep 0.2
  done
}

# start_bg NAME LOGFILE CMD...  (bounded by a timeout so nothing can outlive us for long)
start_bg() {
  BG_NAME="$1"; BG_LOG="$2"; shift 2
  timeout --kill-after=10 "$(( STEP_TIMEOUT + 300 ))" "$@" >"$BG_LOG" 2>&1 &
  BG_PID=$!
  log "started $BG_NAME (pid $BG_PID), log: $BG_LOG"
}

# ---- wstest ------------------------------------------------------------------
find_wstest() {
  local c
  for c in "${WSTEST:-}" "$(command -v wstest 2>/dev/null || true)" /usr/local/bin/wstest; do
    if [ -n "$c" ] && [ -x "$c" ] && "$c" --help >/dev/null 2>&1; then
      echo "$c"; return 0
    fi
  done
  return 1
}
if ! WSTEST="$(find_wstest)"; then
  log "wstest not found; running install-wstest.sh"
  t=$(date +%s)
  WSTEST="$("$HERE/install-wstest.sh" | tail -n 1)" || die "install-wstest.sh failed"
  log "installed wstest in $(elapsed "$t")"
  [ -x "$WSTEST" ] || die "install-wstest.sh did not yield an executable wstest ($WSTEST)"
fi
log "wstest: $WSTEST ($("$WSTEST" -a 2>/dev/null | tr '\n' ' '))"

# ---- build -------------------------------------------------------------------
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$ROOT/$TARGET_DIR" ;; esac
STRATUS_BIN="${STRATUS_BIN:-$TARGET_DIR/release/stratus}"
STRATUS_AUTOBAHN_CLIENT="${STRATUS_AUTOBAHN_CLIENT:-$TARGET_DIR/release/examples/autobahn}"

if [ "${STRATUS_SKIP_BUILD:-0}" != 1 ]; then
  t=$(date +%s)
  log "cargo build --release (stratus server + autobahn client example)"
  # Two builds, not one: built together, the example's dev-dependencies would turn on
  # stratus-proto's test-support in the server too, so the server tested here would not
  # be the one `cargo build --release -p stratus-server` (and the package) ships.
  (cd "$ROOT" && timeout "$STEP_TIMEOUT" cargo build --release -p stratus-server --bin stratus \
      && timeout "$STEP_TIMEOUT" cargo build --release -p stratus-client --example autobahn) \
    || die "cargo build failed"
  log "build took $(elapsed "$t")"
fi

# ---- preflight ---------------------------------------------------------------
if port_open; then
  die "something is already listening on $HOST:$PORT; stop it first"
fi
OUT="$HERE/reports/$NAME"
rm -rf "$OUT"
mkdir -p "$HERE/reports"
cd "$HERE"   # wstest resolves the specs' relative outdir against cwd
# This run's copy of the spec: its URL and its report folder.
SPEC="$HERE/reports/$NAME.spec.json"
default_spec=fuzzingclient.json; [ "$MODE" = client ] && default_spec=fuzzingserver.json
python3 - "${AUTOBAHN_SPEC:-$default_spec}" "$SPEC" "$URL" "./reports/$NAME" <<'PY'
import json, sys
spec = json.load(open(sys.argv[1]))
spec["outdir"] = sys.argv[4]
if "url" in spec:
    spec["url"] = sys.argv[3]
for server in spec.get("servers", []):
    server["url"] = sys.argv[3]
json.dump(spec, open(sys.argv[2], "w"), indent=2)
PY

# ---- modes -------------------------------------------------------------------
run_server_mode() {
  [ -x "$STRATUS_BIN" ] || die "server binary not found: $STRATUS_BIN (set STRATUS_BIN or build)"
  start_bg "stratus echo" "$HERE/reports/$NAME-stratus.log" \
    "$STRATUS_BIN" echo --listen "$HOST:$PORT" ${STRATUS_ECHO_ARGS:-}
  wait_for_port 30
  local t=$(date +%s) rc=0
  log "running wstest -m fuzzingclient (log: reports/$NAME-wstest.log)"
  timeout --kill-after=10 "$STEP_TIMEOUT" \
    "$WSTEST" -m fuzzingclient -s "$SPEC" >"$HERE/reports/$NAME-wstest.log" 2>&1 || rc=$?
  log "wstest fuzzingclient took $(elapsed "$t") (exit $rc)"
  if ! kill -0 "$BG_PID" 2>/dev/null; then
    local src=0; wait "$BG_PID" 2>/dev/null || src=$?
    BG_PID=""
    tail -n 30 "$HERE/reports/$NAME-stratus.log" >&2 || true
    die "stratus server died during the run (status $src); see reports/$NAME-stratus.log"
  fi
  stop_bg
  if [ "$rc" -ne 0 ]; then
    tail -n 30 "$HERE/reports/$NAME-wstest.log" >&2 || true
    [ "$rc" -eq 124 ] && die "wstest timed out after ${STEP_TIMEOUT}s"
    die "wstest fuzzingclient failed (exit $rc)"
  fi
}

run_client_mode() {
  [ -x "$STRATUS_AUTOBAHN_CLIENT" ] || die "client example not found: $STRATUS_AUTOBAHN_CLIENT (set STRATUS_AUTOBAHN_CLIENT or build)"
  # -u 0: no embedded web server (it would otherwise bind 0.0.0.0:8080).
  start_bg "wstest fuzzingserver" "$HERE/reports/$NAME-wstest.log" \
    "$WSTEST" -m fuzzingserver -s "$SPEC" -u 0
  wait_for_port 60
  local t=$(date +%s) rc=0
  log "running $STRATUS_AUTOBAHN_CLIENT $URL stratus (log: reports/$NAME-stratus.log)"
  timeout --kill-after=10 "$STEP_TIMEOUT" \
    "$STRATUS_AUTOBAHN_CLIENT" "$URL" stratus >"$HERE/reports/$NAME-stratus.log" 2>&1 || rc=$?
  log "autobahn client took $(elapsed "$t") (exit $rc)"
  if ! kill -0 "$BG_PID" 2>/dev/null; then
    BG_PID=""
    tail -n 30 "$HERE/reports/$NAME-wstest.log" >&2 || true
    die "wstest fuzzingserver died during the run; see reports/$NAME-wstest.log"
  fi
  stop_bg
  if [ "$rc" -ne 0 ]; then
    tail -n 30 "$HERE/reports/$NAME-stratus.log" >&2 || true
    [ "$rc" -eq 124 ] && die "autobahn client timed out after ${STEP_TIMEOUT}s"
    die "autobahn client failed (exit $rc)"
  fi
}

"run_${MODE}_mode"

[ -f "$OUT/index.json" ] || die "no report at $OUT/index.json"
log "gate: reports/$NAME/index.json ${GATE_ARGS[*]:-}"
python3 "$HERE/gate.py" "$OUT/index.json" "${GATE_ARGS[@]}"
