# Sourced by the install steps: `apt_install [OPTION...] PKG...` installs Debian packages
# non-interactively (as root, or through sudo), running `apt-get update` once per script.
export DEBIAN_FRONTEND=noninteractive
apt_sudo=()
[ "$(id -u)" -eq 0 ] || apt_sudo=(sudo)
apt_updated=
apt_install() {
  if [ -z "$apt_updated" ]; then
    "${apt_sudo[@]}" apt-get update -qq
    apt_updated=1
  fi
  "${apt_sudo[@]}" apt-get install -y -qq "$@"
}
