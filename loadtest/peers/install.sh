#!/usr/bin/env bash
# Installs the npm peers into loadtest/peers/node_modules from package-lock.json (pinned):
# Bun (the `bun` package ships its binary) and uWebSockets.js (the native build in
# @trufflesuite/uws-js-unofficial), with Node.js and npm from Debian when missing, then
# checks that each peer asked for runs. Idempotent: a tree installed from this very lock
# file is left as it is. Non-interactive; exits non-zero when a peer cannot run here.
#
#   loadtest/peers/install.sh            NPM_PEERS="bun uws" (the default) picks the peers
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
peers=${NPM_PEERS-bun uws}
[ -n "$peers" ] || exit 0

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  source ../../scripts/apt.sh
  echo "installing Node.js and npm"
  apt_install nodejs npm
fi

stamp=node_modules/.stratus-installed
lock=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$lock" ]; then
  echo "installing the npm peers (package-lock.json)"
  npm ci --no-audit --no-fund --loglevel=error
  echo "$lock" >"$stamp"
fi

pinned() { node -p "require('./package.json').dependencies['$1']"; }
for peer in $peers; do
  case $peer in
    bun)
      # The bun package's postinstall puts the platform's binary in place; npm versions that
      # hold install scripts back leave a stub there, so run it when the binary does not.
      if ! node_modules/.bin/bun --version >/dev/null 2>&1; then
        (cd node_modules/bun && node install.js)
      fi
      version=$(node_modules/.bin/bun --version)
      if [ "$version" != "$(pinned bun)" ]; then
        echo "bun: $version installed, package.json pins $(pinned bun)" >&2
        exit 1
      fi
      echo "bun $version: $PWD/node_modules/.bin/bun"
      ;;
    uws)
      # uws.mjs loads the binary by the same path; its ABI must be one the build ships.
      binary="@trufflesuite/uws-js-unofficial/binaries/uws_$(node -p 'process.platform + "_" + process.arch + "_" + process.versions.modules').node"
      if ! node -e "require('$binary')" 2>/dev/null; then
        echo "uWebSockets.js: $binary does not load under node $(node --version)" \
          "(the build ships Node.js 16, 18 and 20 binaries); NPM_PEERS=bun leaves it out" >&2
        exit 1
      fi
      echo "uWebSockets.js $(pinned @trufflesuite/uws-js-unofficial) under node $(node --version): $binary"
      ;;
    *)
      echo "NPM_PEERS: unknown peer $peer (bun, uws)" >&2
      exit 1
      ;;
  esac
done
