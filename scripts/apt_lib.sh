# Sourced by the install_*.sh scripts: what they share for Debian packages.
#   missing_debs PKG...        the PKGs that are not installed, one per line
#   sudo_for_apt NAME          sets SUDO ("" as root, "sudo" otherwise); exits naming NAME when neither works
#   apt_install PKG...         apt-get update + install (no recommends, non-interactive) with $SUDO

missing_debs() {
  local p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"
  done
}

sudo_for_apt() {
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
      echo "$1: apt needs root (or sudo)" >&2; exit 1; fi
  fi
}

apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends "$@"
}
