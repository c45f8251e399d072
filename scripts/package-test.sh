#!/usr/bin/env bash
# Builds the Debian package (scripts/package.sh), installs it with dpkg on this machine and
# checks it as an operator would meet it: the files and the conffile are where they belong;
# `systemd-analyze verify` passes on the installed unit and `systemd-analyze security`
# scores it (at most MAX_EXPOSURE); `stratus config check` accepts the installed config;
# the installed binary, started with the unit's own ExecStart line and LimitNOFILE, as an
# unprivileged user, under the unit's system call filter (scripts/seccomp_run.py: there is
# no systemd as PID 1 here), serves a subscriber a message published through the admin API
# with curl, and exits 0 on SIGTERM after draining; the same run with io_uring_setup taken
# out of the filter serves nothing (so the filter really applies); `dpkg -r` leaves only the
# conffile, and `dpkg --purge` removes that too.
# STRATUS_SKIP_BUILD=1 tests the newest package already built.
# Needs root (dpkg). Non-interactive; exits non-zero on the first failure. Leaves the
# package purged and nothing running.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
started=$(date +%s)
MAX_EXPOSURE=${MAX_EXPOSURE:-1.5}
step() { printf '\n--- %s\n' "$*"; }
fail() { echo "FAIL: $*"; exit 1; }

source scripts/apt.sh
command -v systemd-analyze >/dev/null || apt_install --no-install-recommends systemd
/usr/bin/python3 -c 'import seccomp' 2>/dev/null || apt_install --no-install-recommends python3-seccomp
command -v man >/dev/null || apt_install --no-install-recommends man-db

work=$(mktemp -d)
chmod 755 "$work"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  dpkg --purge stratus >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_http() { # URL SECONDS PID: until URL answers 200, or the process has gone
  for _ in $(seq $(($2 * 10))); do
    curl -sf --max-time 1 "$1" >/dev/null 2>&1 && return 0
    kill -0 "$3" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

step "build the package"
build_started=$(date +%s)
if [ -n "${STRATUS_SKIP_BUILD:-}" ]; then
  deb=$(ls -t "${CARGO_TARGET_DIR:-target}"/debian/stratus_*_amd64.deb | head -n 1)
else
  deb=$(bash scripts/package.sh | tail -n 1)
fi
[ -f "$deb" ] || fail "package.sh made no package"
echo "$deb ($(du -h "$deb" | cut -f1)) in $(($(date +%s) - build_started))s"

step "dpkg -i"
dpkg --purge stratus >/dev/null 2>&1 || true
dpkg -i "$deb"
unit=$(dpkg -L stratus | grep -E '/systemd/system/stratus\.service$')
for path in /usr/bin/stratus /etc/stratus/stratus.toml "$unit" \
  /usr/share/man/man1/stratus.1.gz /usr/share/man/man1/stratus-config-check.1.gz \
  /usr/share/bash-completion/completions/stratus /usr/share/zsh/vendor-completions/_stratus \
  /usr/share/fish/vendor_completions.d/stratus.fish /usr/share/doc/stratus/copyright \
  /usr/share/stratus/prometheus/alerts.yml /usr/share/stratus/grafana/stratus.json; do
  [ -f "$path" ] || fail "$path is not installed"
done
dpkg-query -W -f='${Conffiles}\n' stratus | grep -q '^ /etc/stratus/stratus.toml ' ||
  fail "/etc/stratus/stratus.toml is not a conffile"
man -w stratus >/dev/null || fail "man stratus finds no page"
bash -c 'source /usr/share/bash-completion/completions/stratus && complete -p stratus' >/dev/null ||
  fail "the bash completion does not register"
stratus --version

step "systemd-analyze verify and security ($unit)"
systemd-analyze verify "$unit"
security=$(systemd-analyze security --offline=yes --no-pager "$unit" 2>&1)
grep -E '^✗' <<<"$security" || true
score=$(sed -n 's/.*Overall exposure level for stratus.service: \([0-9.]*\).*/\1/p' <<<"$security")
echo "exposure score: $score (0 safest, 10 unprotected; at most $MAX_EXPOSURE)"
[ -n "$score" ] && awk -v s="$score" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(s <= m) }' ||
  fail "systemd-analyze security scored $score"
grep -q io_uring_setup <<<"$(grep '^SystemCallFilter=' "$unit")" ||
  fail "the unit does not allow io_uring_setup by name"

step "stratus config check /etc/stratus/stratus.toml"
stratus config check /etc/stratus/stratus.toml >"$work/effective.toml"
grep -c '=' "$work/effective.toml" | xargs echo "options in effect:"
# Every option the binary knows is in the installed file.
diff <(stratus config default) /etc/stratus/stratus.toml || fail "the conffile differs from config default"

# The unit's ExecStart (without systemd's prefixes) and LimitNOFILE, as root would not run it.
read -r -a exec_start <<<"$(sed -n 's/^ExecStart=[-@:+!]*//p' "$unit")"
nofile=$(sed -n 's/^LimitNOFILE=//p' "$unit")
if ! prlimit --nofile="$nofile:$nofile" true 2>/dev/null; then
  echo "note: LimitNOFILE=$nofile is beyond this machine's hard limit, which root cannot raise" \
    "here (no CAP_SYS_RESOURCE); the run uses the hard limit, $(ulimit -Hn)"
  nofile=$(ulimit -Hn)
fi
[ "${exec_start[0]}" = /usr/bin/stratus ] || fail "ExecStart is ${exec_start[*]}"
cp scripts/seccomp_run.py "$work/"
run_as_unit() { # LOG [--deny CALL]: starts ExecStart as nobody under the unit's filter
  local log=$1
  shift
  STRATUS_LISTEN=127.0.0.1:$ws STRATUS_ADMIN_LISTEN=127.0.0.1:$admin \
    prlimit --nofile="$nofile:$nofile" \
    setpriv --reuid=nobody --regid=nogroup --clear-groups -- \
    /usr/bin/python3 "$work/seccomp_run.py" "$unit" "$@" -- "${exec_start[@]}" >"$log" 2>&1 &
  pid=$!
  pids+=("$pid")
}

step "ExecStart as nobody under the unit's system call filter: ${exec_start[*]}"
ws=$(free_port)
admin=$(free_port)
run_as_unit "$work/serve.log"
wait_http "http://127.0.0.1:$admin/healthz" 10 "$pid" || { cat "$work/serve.log"; fail "the server did not come up"; }
head -n 1 "$work/serve.log"
[ "$(ps -o user= -p "$pid")" = nobody ] || fail "the server does not run as nobody"
grep -q "Max open files *$nofile" "/proc/$pid/limits" || fail "LimitNOFILE not in force"
curl -sf "http://127.0.0.1:$admin/readyz"
echo
python3 scripts/ws_probe.py --ws "127.0.0.1:$ws" --topic installed --subscribers 2 \
  --expect 1 --ready "$work/ready" --timeout 10 >"$work/probe.out" &
probe=$!
for _ in $(seq 100); do [ -f "$work/ready" ] && break; sleep 0.1; done
[ -f "$work/ready" ] || fail "the subscribers did not connect"
curl -sf -X POST -H 'Content-Type: text/plain' --data 'hello from the package' \
  "http://127.0.0.1:$admin/publish/installed"
echo
wait "$probe" || { cat "$work/probe.out" "$work/serve.log"; fail "the subscribers did not get the message"; }
cat "$work/probe.out"
grep -q '"first": "hello from the package"' "$work/probe.out" || fail "wrong message"
stop_started=$(date +%s%N)
kill -TERM "$pid"
rc=0
wait "$pid" || rc=$?
echo "exit $rc after SIGTERM, in $((($(date +%s%N) - stop_started) / 1000000)) ms"
[ "$rc" -eq 0 ] || { cat "$work/serve.log"; fail "exit status $rc after SIGTERM"; }
grep -q 'stopped' "$work/serve.log" || fail "no drain in the log"

step "negative control: without io_uring_setup in the filter, nothing is served"
run_as_unit "$work/denied.log" --deny io_uring_setup
sleep 1
if python3 scripts/ws_probe.py --ws "127.0.0.1:$ws" --topic none --timeout 2 >/dev/null 2>&1; then
  fail "a WebSocket was served without io_uring_setup: the filter does not apply"
fi
kill -TERM "$pid" 2>/dev/null || true
rc=0
wait "$pid" || rc=$?
echo "no WebSocket served; exit $rc; $(grep -ohE 'Operation not permitted[^"]*' "$work/denied.log" | head -n 1)"

step "dpkg -r leaves only the conffile; dpkg --purge removes it"
dpkg -L stratus | while read -r path; do [ -d "$path" ] || echo "$path"; done >"$work/files"
dpkg -r stratus >/dev/null
left=$(while read -r path; do [ -e "$path" ] && echo "$path"; done <"$work/files" || true)
[ "$left" = /etc/stratus/stratus.toml ] || fail "after dpkg -r these remain: $left"
dpkg-query -W -f='${db:Status-Abbrev}\n' stratus | grep -q '^rc' || fail "not in config-files state"
dpkg --purge stratus >/dev/null
[ ! -e /etc/stratus ] || fail "/etc/stratus remains after purge"
echo "removed: $(wc -l <"$work/files") files, the conffile kept until the purge"

echo
echo "package test passed in $(($(date +%s) - started))s"
