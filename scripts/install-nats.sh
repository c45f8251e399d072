#!/usr/bin/env bash
# Installs Debian's nats-server when it is missing: the NATS broker tests
# (crates/stratus-server/tests/nats.rs, the NATS half of tests/broker_faults.rs, the
# testkit's own) start their own `nats-server -js` on free loopback ports. Debian puts it
# in /usr/sbin, which a user's PATH may lack: the testkit looks there too. The package
# also ships a systemd unit (port 4222), which the tests do not use. Non-interactive;
# needs root (or sudo) for apt.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/apt.sh"
nats_server() { command -v nats-server || { [ -x /usr/sbin/nats-server ] && echo /usr/sbin/nats-server; }; }
if ! nats_server >/dev/null; then
  echo "installing Debian's nats-server"
  apt_install --no-install-recommends nats-server
fi
"$(nats_server)" --version
