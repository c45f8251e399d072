#!/usr/bin/env bash
# Interoperability test of protocol v1 (stratus.v1) from outside Rust: Python's
# `websockets` client against the real `stratus` binary (interop/python/test_v1.py).
# Installs what it needs on a fresh Debian machine (python3 and python3-venv from apt when
# a venv cannot be made; a venv in target/interop-venv with the pinned packages of
# interop/python/requirements.txt from PyPI), then runs the test with that venv's Python.
# Non-interactive; exits non-zero on any failure.
#
# STRATUS_BIN=path runs that binary; else target/debug/stratus, built first if it is
# missing (scripts/test.sh has built it by the time this runs).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export PIP_DISABLE_PIP_VERSION_CHECK=1
source scripts/apt.sh

venv=target/interop-venv
# A venv left half-made, or made by a Python that is gone, is made anew.
if [ -e "$venv" ] && ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
  rm -rf "$venv"
fi
if [ ! -e "$venv" ]; then
  if ! command -v python3 >/dev/null; then
    echo "installing Debian's python3 and python3-venv"
    apt_install --no-install-recommends python3 python3-venv
  fi
  mkdir -p target
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    # Debian's python3 makes a venv only with python3-venv (ensurepip) installed.
    rm -rf "$venv"
    echo "installing Debian's python3-venv"
    apt_install --no-install-recommends python3-venv
    python3 -m venv "$venv"
  fi
fi
"$venv/bin/python" -m pip install --quiet --requirement interop/python/requirements.txt
"$venv/bin/python" -c 'import sys, websockets
print(f"Python {sys.version.split()[0]}; websockets {websockets.__version__}")'

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ -z "${STRATUS_BIN:-}" ]; then
  # Others build in the same target directory: the lock keeps builds apart, and is held
  # until the copy (the binary this runs) is taken.
  flock /tmp/cargo.lock bash -c \
    '{ [ -x "$1" ] || cargo build -p stratus-server --bin stratus; } && cp "$1" "$2"' \
    _ "${CARGO_TARGET_DIR:-target}/debug/stratus" "$work/stratus"
  STRATUS_BIN="$work/stratus"
fi
# The test bounds every wait itself; this is the backstop should Python itself hang.
STRATUS_BIN="$STRATUS_BIN" timeout --kill-after=10 300 "$venv/bin/python" interop/python/test_v1.py
