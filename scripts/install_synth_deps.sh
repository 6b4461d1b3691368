#!/usr/bin/env bash
# Install the system and Python dependencies of the offline synthetic corpus (`songflow corpus make`).
#
#   apt (Debian bookworm):  fluidsynth + fluid-soundfont-gm        (main)
#                           mbrola                                 (contrib)
#                           mbrola-us1 (female), mbrola-us3 (male) (non-free)
#   pip:                    pyfluidsynth pretty_midi pronouncing datasets soundfile soxr tqdm
#
# Idempotent: re-running only installs what is missing. Needs root (or sudo) for apt.
# Set SONGFLOW_SKIP_APT=1 or SONGFLOW_SKIP_PIP=1 to skip a half. Licence note: the MBROLA voice databases may be
# used only with the MBROLA program and may not be sold or put into a sold product.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES_MAIN=(fluidsynth fluid-soundfont-gm)
APT_PACKAGES_EXTRA=(mbrola mbrola-us1 mbrola-us3)
PIP_PACKAGES=(pyfluidsynth pretty_midi pronouncing datasets soundfile soxr tqdm)
SOURCES_FILE=/etc/apt/sources.list.d/songflow-contrib-nonfree.sources

. scripts/apt_lib.sh
sudo_for_apt install_synth_deps.sh

has_contrib_nonfree() {
  # any enabled deb source that already lists both components
  grep -rhsE '^(Components:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
    | grep -q 'contrib' && grep -rhsE '^(Components:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/ \
    2>/dev/null | grep -qE 'non-free( |$)'
}

if [ "${SONGFLOW_SKIP_APT:-0}" != "1" ]; then
  export DEBIAN_FRONTEND=noninteractive
  codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")"
  need=($(missing_debs "${APT_PACKAGES_MAIN[@]}" "${APT_PACKAGES_EXTRA[@]}"))
  if [ "${#need[@]}" -gt 0 ]; then
    extra_need=($(missing_debs "${APT_PACKAGES_EXTRA[@]}"))
    if [ "${#extra_need[@]}" -gt 0 ] && ! has_contrib_nonfree; then
      echo "adding Debian contrib + non-free ($codename) in $SOURCES_FILE (for mbrola and its voices)"
      $SUDO tee "$SOURCES_FILE" >/dev/null <<SRC
Types: deb
URIs: http://deb.debian.org/debian
Suites: $codename
Components: contrib non-free
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    fi
    apt_install "${need[@]}"
  else
    echo "apt: all of ${APT_PACKAGES_MAIN[*]} ${APT_PACKAGES_EXTRA[*]} already installed"
  fi
fi

if [ "${SONGFLOW_SKIP_PIP:-0}" != "1" ]; then
  PY="${PYTHON:-python3}"
  "$PY" -m pip install -q "${PIP_PACKAGES[@]}"
fi

# quick self-check
ls /usr/share/sounds/sf2/FluidR3_GM.sf2 >/dev/null 2>&1 && echo "soundfont: /usr/share/sounds/sf2/FluidR3_GM.sf2"
command -v mbrola >/dev/null 2>&1 && echo "mbrola: $(command -v mbrola)"
ls -d /usr/share/mbrola/us1 /usr/share/mbrola/us3 2>/dev/null || true
