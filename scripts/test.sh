#!/usr/bin/env bash
# Installs safcm and its test tools into .venv, then lints and runs the whole
# test suite. Works on a fresh Debian machine with Python 3.11 as root.
# Extra arguments go to pytest (e.g. scripts/test.sh -k fileops).
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian splits venv/ensurepip into a package of its own.
if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    apt-get update -q && apt-get install -y -q python3-venv
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest "$@"
