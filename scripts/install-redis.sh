#!/usr/bin/env bash
# Installs Debian's redis-server when it is missing: the multi-node tests
# (crates/stratus-server/tests/cluster.rs) and loadtest/compare-cluster.sh start their own
# redis-server on free loopback ports. Non-interactive; needs root (or sudo) for apt.
set -euo pipefail
if ! command -v redis-server >/dev/null; then
  echo "installing Debian's redis-server"
  sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends redis-server
fi
redis-server --version
