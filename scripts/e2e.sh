#!/usr/bin/env bash
# Browser end-to-end tests of the status page (e2e/status-page.mjs), of the admin page
# (e2e/admin-page.mjs), of a page using the JavaScript SDK (e2e/sdk-page.mjs: receiving,
# publishing, a server restart with Redis history, the fallback to Server-Sent Events) and
# of the browser's own EventSource on /sse (e2e/eventsource.mjs), sharing e2e/harness.mjs:
# installs what they need when missing (Debian's chromium; Node.js and npm; playwright-core
# from e2e/package-lock.json; redis-server through scripts/install-redis.sh; the SDK's
# TypeScript from clients/js/package-lock.json), builds the `stratus` binary and the SDK,
# and runs the tests in headless Chromium. Non-interactive; exits non-zero on any failure.
#
# STRATUS_BIN=path runs that binary (a release build, say) instead of building one.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

source scripts/apt.sh

if [ ! -x /usr/bin/chromium ]; then
  echo "installing Debian's chromium"
  apt_install chromium
fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "installing Node.js and npm"
  apt_install nodejs npm
fi
node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 20 ]; then
  echo "e2e: playwright-core needs Node.js 20 or later; this machine has $(node --version)"
  exit 1
fi
echo "chromium: $(/usr/bin/chromium --version 2>/dev/null | tail -n 1); node $(node --version); npm $(npm --version 2>/dev/null)"

(cd e2e && npm ci --no-audit --no-fund --loglevel=error)
# The SDK page imports clients/js/dist; the SDK and EventSource tests run their own Redis.
(cd clients/js && npm ci --no-audit --no-fund --loglevel=error && npm run --silent build)
bash scripts/install-redis.sh >/dev/null

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ -z "${STRATUS_BIN:-}" ]; then
  # The target directory may be shared with other checkouts, which can rebuild the binary
  # from their own sources at any time: run a copy taken right after this build.
  target_dir=$(cargo metadata --format-version 1 --no-deps |
    node -e 'let s = ""; process.stdin.on("data", (d) => (s += d)).on("end", () => console.log(JSON.parse(s).target_directory))')
  # Others build in the same target directory: the lock keeps builds apart, and is held
  # until the copy is taken.
  flock /tmp/cargo.lock bash -c 'cargo build -p stratus-server --bin stratus && cp "$1" "$2"' \
    _ "$target_dir/debug/stratus" "$work/stratus"
  STRATUS_BIN="$work/stratus"
fi
# Each test bounds itself at 60 s; this is the backstop should node itself hang.
STRATUS_BIN="$STRATUS_BIN" timeout --kill-after=10 120 node e2e/status-page.mjs
STRATUS_BIN="$STRATUS_BIN" timeout --kill-after=10 120 node e2e/admin-page.mjs
STRATUS_BIN="$STRATUS_BIN" timeout --kill-after=10 120 node e2e/sdk-page.mjs
STRATUS_BIN="$STRATUS_BIN" timeout --kill-after=10 120 node e2e/eventsource.mjs
