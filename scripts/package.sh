#!/usr/bin/env bash
# Builds the Debian package target/debian/stratus_<version>_amd64.deb with cargo-deb
# (installed here, pinned, when missing): the release binary; /etc/stratus/stratus.toml
# (every option commented at its default, a conffile), the man pages and the bash, zsh and
# fish completions, all three written by that binary from its own CLI definition (`stratus
# config default`, `stratus man`, `stratus completions`); the hardened systemd unit
# deploy/systemd/stratus.service; the copyright file; the Prometheus rules and the Grafana
# dashboard (/usr/share/stratus). The package's layout is [package.metadata.deb] in
# crates/stratus-server/Cargo.toml.
# CARGO overrides the cargo command (e.g. CARGO="flock /tmp/cargo.lock cargo").
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
CARGO_DEB_VERSION=3.8.0
read -r -a cargo <<<"${CARGO:-cargo}"
target="${CARGO_TARGET_DIR:-target}"

if ! "${cargo[@]}" deb --version 2>/dev/null | grep -qF "$CARGO_DEB_VERSION"; then
  echo "installing cargo-deb $CARGO_DEB_VERSION"
  "${cargo[@]}" install cargo-deb --version "$CARGO_DEB_VERSION" --locked
fi

"${cargo[@]}" build --release -p stratus-server --bin stratus
bin="$target/release/stratus"
version=$("$bin" --version | awk '{print $2}')

# The files the binary writes about itself (the asset paths in Cargo.toml).
assets="$target/release/deb-assets"
rm -rf "$assets"
mkdir -p "$assets/completions"
"$bin" config default >"$assets/stratus.toml"
"$bin" config check "$assets/stratus.toml" >/dev/null
"$bin" man "$assets/man" >/dev/null
gzip -9n "$assets"/man/*.1
"$bin" completions bash >"$assets/completions/stratus.bash"
"$bin" completions zsh >"$assets/completions/_stratus"
"$bin" completions fish >"$assets/completions/stratus.fish"

rm -f "$target"/debian/stratus_*.deb "$target"/debian/stratus-dbgsym_*
"${cargo[@]}" deb -p stratus-server --no-build
deb="$target/debian/stratus_${version}_amd64.deb"
[ -f "$deb" ] || { echo "expected $deb; cargo-deb made: $(ls "$target"/debian/)"; exit 1; }
dpkg-deb --info "$deb" | sed -n '/Package:/,$p'
dpkg-deb --contents "$deb" | awk '{print $1, $3, $6}' | grep -v '/$'
echo "$deb"
