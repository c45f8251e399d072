#!/usr/bin/env bash
# The JavaScript/TypeScript client SDK (clients/js): installs what it needs on a fresh
# Debian machine (Node.js and npm from apt when missing; redis-server through
# scripts/install-redis.sh; the pinned TypeScript from clients/js/package-lock.json),
# builds it, checks that `npm pack` makes a package that installs into an empty project and
# imports, then runs its `node --test` tests against the real `stratus` binary (every
# command and error, reconnects after SIGKILL with and without a history that survives,
# token refresh, the offline queue). Non-interactive; exits non-zero on any failure.
#
# STRATUS_BIN=path runs that binary (a release build, say) instead of building one.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

source scripts/apt.sh

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "installing Node.js and npm"
  apt_install nodejs npm
fi
node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 20 ]; then
  echo "sdk-js: the SDK's tests need Node.js 20 or later (its WebSocket); this machine has $(node --version)"
  exit 1
fi
bash scripts/install-redis.sh >/dev/null
echo "node $(node --version); npm $(npm --version 2>/dev/null); $(redis-server --version | cut -d' ' -f1-3)"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ -z "${STRATUS_BIN:-}" ]; then
  # Others build in the same target directory: the lock keeps builds apart, and is held
  # until the copy (the binary the tests run) is taken.
  flock /tmp/cargo.lock bash -c 'cargo build -p stratus-server --bin stratus && cp "$1" "$2"' \
    _ "${CARGO_TARGET_DIR:-target}/debug/stratus" "$work/stratus"
  STRATUS_BIN="$work/stratus"
fi
STRATUS_BIN=$(realpath "$STRATUS_BIN")

cd clients/js
npm ci --no-audit --no-fund --loglevel=error
npm run --silent build

# The package as a user gets it: packed, installed into an empty project, imported.
tarball=$(npm pack --silent --pack-destination "$work" | tail -n 1)
echo "packed $tarball ($(tar tzf "$work/$tarball" | wc -l) files)"
mkdir "$work/consumer"
(
  cd "$work/consumer"
  npm init -y >/dev/null
  npm install --no-audit --no-fund --loglevel=error "$work/$tarball"
  node --input-type=module -e '
    import { Client, StratusError, backoffDelay, resolveBackoff } from "@stratus/client";
    const c = new Client("ws://127.0.0.1:1/ws");
    if (c.state !== "disconnected" || !(new StratusError("timeout", "x") instanceof Error)) process.exit(1);
    if (backoffDelay(3, resolveBackoff({ initial: 1, max: 5, jitter: 0 })) !== 5) process.exit(1);
    console.log("the packed package installs and imports");
  '
  test -f node_modules/@stratus/client/dist/index.d.ts
)

# Every wait in the tests is bounded; this is the backstop should node itself hang.
STRATUS_BIN="$STRATUS_BIN" timeout --kill-after=10 150 \
  node --experimental-websocket --test --test-concurrency=4 --test-reporter=spec test/
