#!/usr/bin/env bash
# Installs safcm and its test tools into .venv, then lints, type-checks and
# runs the whole test suite. Works on a fresh Debian machine with Python 3.11, as root.
# Extra arguments go to pytest (e.g. scripts/test.sh -k fileops).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh
safcm_venv "[dev]"
# Debian tools the tests use: libfaketime (a minion whose wall clock is an
# hour off), systemd-analyze (the units are verified), systemd-nspawn
# with debootstrap (tests/hosts/ boot Debian 12 with systemd as PID 1), and
# apt-ftparchive (the packages tests index a local apt repository of .deb
# files they build with dpkg-deb, which dpkg itself provides).
missing=()
command -v faketime >/dev/null || missing+=(faketime)
command -v systemd-analyze >/dev/null || missing+=(systemd)
command -v systemd-nspawn >/dev/null || missing+=(systemd-container)
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v apt-ftparchive >/dev/null || missing+=(apt-utils)
# PostgreSQL's server (tests/pgserver.py starts one as the postgres user in a
# temporary directory; the machine's own clusters are never touched).
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -q && apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
.venv/bin/ruff check .
.venv/bin/ruff format --check .
scripts/mypy.sh  # settings in pyproject.toml: common/ strictly, master/ and minion/
.venv/bin/python -m pytest "$@"
