#!/usr/bin/env bash
# Installs Debian's redis-server when it is missing: the multi-node tests
# (crates/stratus-server/tests/cluster.rs) and loadtest/compare-cluster.sh start their own
# redis-server on free loopback ports; tests/redis_cluster.rs also joins three into a Redis
# Cluster with redis-cli. Non-interactive; needs root (or sudo) for apt.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/apt.sh"
if ! command -v redis-server >/dev/null; then
  echo "installing Debian's redis-server"
  apt_install --no-install-recommends redis-server
fi
if ! command -v redis-cli >/dev/null; then
  apt_install --no-install-recommends redis-tools
fi
redis-server --version
