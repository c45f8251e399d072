#!/usr/bin/env bash
# Install the Autobahn testsuite (`wstest`, Python 2.7 only) on Debian bookworm.
#
#  1. python2.7 from Debian bullseye (bookworm no longer ships it), pinned so
#     bullseye is only used for packages we explicitly ask for.
#  2. pip 20.3.4 / setuptools 44.1.1 / wheel 0.37.1 (last py2.7 releases),
#     fetched as wheels with python3's pip, bootstrapped by running pip from
#     its own wheel.
#  3. autobahntestsuite via python2.7's pip, with pins for deps whose newest
#     versions no longer support py2.7 (see PY2_PINS below).
#
# Idempotent: exits early when a working wstest already exists.
# Non-interactive (CI has no stdin). Needs root (or sudo) for apt.
# Prints the wstest path on the last line of stdout.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
# Keep pip deterministic: ignore any site-wide local wheel dirs.
unset PIP_FIND_LINKS

PY2=/usr/bin/python2.7   # NOT `python2.7` from PATH: may be a pyenv shim
AUTOBAHN_VERSION="${AUTOBAHN_VERSION:-25.10.1}"
WHEEL_DIR="${WSTEST_WHEEL_DIR:-/tmp/stratus-py27-wheels}"

log() { echo "[install-wstest] $*" >&2; }
die() { echo "[install-wstest] ERROR: $*" >&2; exit 1; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || die "must run as root (or have sudo)"
  SUDO="sudo -n"
fi

find_wstest() {
  local c
  for c in "${WSTEST:-}" "$(command -v wstest 2>/dev/null || true)" /usr/local/bin/wstest /usr/bin/wstest; do
    if [ -n "$c" ] && [ -x "$c" ] && "$c" --help >/dev/null 2>&1; then
      echo "$c"; return 0
    fi
  done
  return 1
}

if w="$(find_wstest)"; then
  log "working wstest already present: $w"
  echo "$w"
  exit 0
fi

start=$(date +%s)

# ---- 1. python2.7 from bullseye -------------------------------------------
if ! "$PY2" -c 'import sys; assert sys.version_info[:2] == (2, 7)' >/dev/null 2>&1 \
   || [ ! -e /usr/include/python2.7/Python.h ]; then
  log "installing python2.7 + python2.7-dev from Debian bullseye"
  if [ ! -f /etc/apt/sources.list.d/bullseye.sources ]; then
    $SUDO tee /etc/apt/sources.list.d/bullseye.sources >/dev/null <<'SRC'
# Added by stratus autobahn/install-wstest.sh: python2.7 for the Autobahn testsuite.
Types: deb
URIs: http://deb.debian.org/debian
Suites: bullseye
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  fi
  if [ ! -f /etc/apt/preferences.d/bullseye-lowprio ]; then
    $SUDO tee /etc/apt/preferences.d/bullseye-lowprio >/dev/null <<'PREF'
# Added by stratus autobahn/install-wstest.sh: never pick bullseye unless asked.
Package: *
Pin: release n=bullseye
Pin-Priority: 100
PREF
  fi
  $SUDO apt-get update -q >&2 || die "apt-get update failed"
  $SUDO apt-get install -y -q --no-install-recommends -t bullseye \
      python2.7 python2.7-dev >&2 \
    || die "apt-get install python2.7 python2.7-dev (bullseye) failed"
fi
"$PY2" -c 'import sys; assert sys.version_info[:2] == (2, 7)' \
  || die "$PY2 is not a working Python 2.7"

# ---- 2. pip / setuptools / wheel for py2.7 --------------------------------
if ! "$PY2" -m pip --version >/dev/null 2>&1; then
  log "bootstrapping pip 20.3.4 / setuptools 44.1.1 / wheel 0.37.1 into $PY2"
  mkdir -p "$WHEEL_DIR"
  command -v python3 >/dev/null 2>&1 || die "python3 is needed to fetch the py2.7 pip wheels"
  python3 -m pip download -q --no-deps --only-binary=:all: \
      --python-version 27 --implementation py --abi none --platform any \
      -d "$WHEEL_DIR" pip==20.3.4 setuptools==44.1.1 wheel==0.37.1 >&2 \
    || die "could not download the py2.7 pip/setuptools/wheel wheels"
  pipwhl="$WHEEL_DIR/pip-20.3.4-py2.py3-none-any.whl"
  [ -f "$pipwhl" ] || die "missing $pipwhl after download"
  $SUDO "$PY2" "$pipwhl/pip" install -q --no-index --find-links "$WHEEL_DIR" \
      pip==20.3.4 setuptools==44.1.1 wheel==0.37.1 >&2 \
    || die "bootstrapping pip into $PY2 failed"
fi

# ---- 3. autobahntestsuite -------------------------------------------------
# Known-good py2.7 dependency set (what pip's resolver picked on 2025-11 with
# autobahntestsuite 25.10.1; verified: wstest runs, fuzzingclient works).
# Nothing needed manual pinning -- pip honours Requires-Python -- but we pin
# it all so a future upload can't break CI. Override with WSTEST_NO_PINS=1.
PY2_PINS=(
  autobahn==0.10.9 Twisted==19.10.0 txaio==2.1.0 zope.interface==4.6.0
  Automat==22.10.0 attrs==21.4.0 constantly==15.1.0 hyperlink==21.0.0
  incremental==16.10.1 PyHamcrest==1.10.1 idna==2.10 six==1.16.0
  klein==17.10.0 Werkzeug==1.0.1 Jinja2==2.11.3 MarkupSafe==1.1.1
  pyOpenSSL==19.1.0 cryptography==3.3.2 cffi==1.15.1 pycparser==2.21
  enum34==1.1.10 ipaddress==1.0.23 service-identity==18.1.0 pyasn1==0.5.1
  pyasn1-modules==0.3.0 ujson==2.0.3 wsaccel==0.6.6 typing==3.10.0.0
  unittest2==1.1.0 linecache2==1.0.0 traceback2==1.4.0
)
[ "${WSTEST_NO_PINS:-0}" = 1 ] && PY2_PINS=()
log "installing autobahntestsuite==$AUTOBAHN_VERSION with $PY2 -m pip"
$SUDO "$PY2" -m pip install -q --disable-pip-version-check \
    "autobahntestsuite==$AUTOBAHN_VERSION" "${PY2_PINS[@]}" >&2 \
  || die "pip install autobahntestsuite==$AUTOBAHN_VERSION failed"

w="$(find_wstest)" || die "autobahntestsuite installed but no working wstest found (looked in PATH, /usr/local/bin, /usr/bin)"
log "done in $(( $(date +%s) - start ))s"
echo "$w"
