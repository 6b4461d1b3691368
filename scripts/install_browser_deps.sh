#!/usr/bin/env bash
# Install what the studio's end-to-end browser test (tests/test_ui_browser.py) needs.
#
#   apt (Debian bookworm, main):  chromium + chromium-driver   (one Debian build, so the two always match)
#                                 fonts-liberation             (readable text in the screenshot)
#   pip:                          the `ui` extra (gradio) and selenium, at the versions pinned in pyproject.toml
#
# Selenium drives Debian's chromedriver directly; nothing is downloaded at test time (selenium-manager and
# Playwright's browser download cannot reach their CDNs here).
# Idempotent: re-running only installs what is missing. Needs root (or sudo) for apt.
# Set SONGFLOW_SKIP_APT=1 or SONGFLOW_SKIP_PIP=1 to skip a half.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(chromium chromium-driver fonts-liberation)

. scripts/apt_lib.sh
sudo_for_apt install_browser_deps.sh

if [ "${SONGFLOW_SKIP_APT:-0}" != "1" ]; then
  need=($(missing_debs "${APT_PACKAGES[@]}"))
  if [ "${#need[@]}" -gt 0 ]; then
    apt_install "${need[@]}"
  else
    echo "apt: all of ${APT_PACKAGES[*]} already installed"
  fi
fi

if [ "${SONGFLOW_SKIP_PIP:-0}" != "1" ]; then
  PY="${PYTHON:-python3}"
  "$PY" -m pip install -q -e ".[ui,ui-test]"
fi

# quick self-check
command -v chromium >/dev/null 2>&1 && echo "chromium: $(chromium --version 2>/dev/null || echo '?')"
command -v chromedriver >/dev/null 2>&1 && echo "chromedriver: $(chromedriver --version 2>/dev/null || echo '?')"
