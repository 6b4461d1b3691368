#!/usr/bin/env bash
# Install what the PostgreSQL job store and its tests (tests/test_job_store.py, tests/conftest_pg.py) need.
#
#   apt (Debian bookworm, main):  postgresql   (the server binaries: initdb, pg_ctl, postgres under
#                                               /usr/lib/postgresql/<version>/bin; the tests start and stop
#                                               their own throw-away server on a Unix socket, so the
#                                               package's own cluster service is not needed)
#   pip:                          the `postgres` extra (psycopg 3 with its binary libpq; pyproject.toml)
#
# Idempotent: re-running only installs what is missing. Needs root (or sudo) for apt.
# Set SONGFLOW_SKIP_APT=1 or SONGFLOW_SKIP_PIP=1 to skip a half.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(postgresql)

have_server() {
  command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1 && return 0
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
}

. scripts/apt_lib.sh

if [ "${SONGFLOW_SKIP_APT:-0}" != "1" ]; then
  need=()
  if ! have_server; then need=($(missing_debs "${APT_PACKAGES[@]}")); fi
  if [ "${#need[@]}" -gt 0 ]; then
    sudo_for_apt install_postgres.sh
    apt_install "${need[@]}"
  else
    echo "apt: the PostgreSQL server binaries are already installed"
  fi
fi

if [ "${SONGFLOW_SKIP_PIP:-0}" != "1" ]; then
  PY="${PYTHON:-python3}"
  "$PY" -m pip install -q -e ".[postgres]"
fi

# quick self-check
for bin in initdb pg_ctl; do
  path="$(command -v "$bin" 2>/dev/null || true)"
  if [ -z "$path" ]; then
    path="$(ls /usr/lib/postgresql/*/bin/"$bin" 2>/dev/null | sort -V | tail -n 1 || true)"
  fi
  if [ -n "$path" ]; then echo "$bin: $("$path" --version 2>/dev/null || echo '?')"; fi
done
"${PYTHON:-python3}" -c "import psycopg; print('psycopg', psycopg.__version__)" 2>/dev/null \
  || echo "psycopg: not installed"
