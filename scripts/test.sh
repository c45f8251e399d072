#!/usr/bin/env bash
# Runs every check Stratus has, installing what the checks need on a fresh machine:
# formatting, lints, unit and integration tests (with a real redis-server and nats-server
# for the multi-node ones), a bounded run of every fuzz target, the status page in headless
# Chromium (the status page, the admin page, a page using the SDK, EventSource), protocol v1 from Python's websockets client,
# the JS SDK against the real server, the sans-IO dependency check, the layer check,
# AddressSanitizer over the unsafe code, the Autobahn testsuite in server and client mode
# with its gate, the Debian package, and the Prometheus kit on a real Prometheus.
# Non-interactive; exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TERM_COLOR=never

step() { printf '\n=== %s\n' "$*"; }
started=$(date +%s)

step "toolchain (rust-toolchain.toml pins 1.95.0 with rustfmt and clippy; nightly for ASan)"
rustup show active-toolchain
rustup toolchain list | grep -q '^nightly' || { echo "nightly toolchain missing (needed for -Zsanitizer)"; exit 1; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "redis-server for the multi-node tests (each test starts its own on a free port)"
bash scripts/install-redis.sh

step "nats-server for the NATS broker tests (each test starts its own, with JetStream, on a free port)"
bash scripts/install-nats.sh

step "cargo test"
cargo test --workspace

step "cargo fuzz: every target for 60 s on its seed corpus (nightly, ASan)"
bash scripts/fuzz.sh 60

step "browser end-to-end in headless Chromium: status page, admin page, a page using the SDK, EventSource (installs chromium, playwright-core, redis)"
bash scripts/e2e.sh

step "protocol v1 from Python (websockets): interop/python/test_v1.py"
bash scripts/interop.sh

step "the JS/TS SDK against the real server: clients/js (node --test; installs node/npm, npm ci, builds, packs)"
STRATUS_BIN="${CARGO_TARGET_DIR:-target}/debug/stratus" bash scripts/sdk-js.sh

step "stratus-proto is sans-IO: no runtime, no libc, no OS randomness in its dependencies"
if cargo tree -p stratus-proto -e normal --prefix none | grep -E '^(tokio|tokio-uring|mio|libc|getrandom|socket2) '; then
  echo "stratus-proto must not depend on the crates listed above"
  exit 1
fi

step "stratus-server's layers: every import points down, no cycle (scripts/layers.py)"
python3 scripts/layers.py

step "AddressSanitizer over the unsafe code: masking, the worker ring (nightly)"
host=$(rustc -vV | sed -n 's/^host: //p')
RUSTFLAGS=-Zsanitizer=address cargo +nightly test -p stratus-proto --lib \
  --target "$host" --target-dir target/asan -- mask::
RUSTFLAGS=-Zsanitizer=address cargo +nightly test -p stratus-uring --test ring \
  --target "$host" --target-dir target/asan

step "Autobahn gate self-test"
python3 autobahn/test_gate.py

step "Autobahn, side by side on the two cores: server mode, server mode's compression groups with --deflate dedicated (context takeover), client mode"
# Built apart (see autobahn/run.sh): the server is then the very binary the package step
# ships, and that step finds it built.
cargo build --release -p stratus-server --bin stratus
cargo build --release -p stratus-client --example autobahn
WSTEST="$(command -v wstest || autobahn/install-wstest.sh | tail -n 1)"
export WSTEST STRATUS_SKIP_BUILD=1
mkdir -p autobahn/reports
AUTOBAHN_PORT=9001 bash autobahn/run.sh server >autobahn/reports/run-server.out 2>&1 & server=$!
AUTOBAHN_PORT=9002 AUTOBAHN_NAME=server-deflate STRATUS_ECHO_ARGS="--deflate dedicated" \
  AUTOBAHN_SPEC=fuzzingclient-compression.json \
  bash autobahn/run.sh server --expected 216 >autobahn/reports/run-server-deflate.out 2>&1 & deflate=$!
AUTOBAHN_PORT=9003 bash autobahn/run.sh client >autobahn/reports/run-client.out 2>&1 & client=$!
failed=0
for run in server:$server server-deflate:$deflate client:$client; do
  name=${run%%:*}; pid=${run#*:}
  rc=0; wait "$pid" || rc=$?
  echo "--- autobahn $name (exit $rc)"
  grep -vE '^\[autobahn\] (started|stopping|wstest:)' "autobahn/reports/run-$name.out" | tail -n 25
  [ "$rc" -eq 0 ] || failed=1
done
[ "$failed" -eq 0 ]

step "Debian package: build, dpkg -i, the unit's ExecStart under its syscall filter, SIGTERM, removal"
# The package is built here (the Autobahn step's STRATUS_SKIP_BUILD is not meant for it).
env -u STRATUS_SKIP_BUILD bash scripts/package-test.sh

step "Prometheus kit: promtool, every dashboard query and rule on a real Prometheus, broker-down fires"
STRATUS_SKIP_BUILD=1 bash scripts/prometheus-test.sh

echo
echo "all checks passed in $(( $(date +%s) - started ))s"
