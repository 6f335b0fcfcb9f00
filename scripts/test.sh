#!/usr/bin/env bash
# Installs safcm and its test tools into .venv, then lints, type-checks and
# runs the whole test suite. Works on a fresh Debian machine with Python 3.11, as root.
# Extra arguments go to pytest (e.g. scripts/test.sh -k fileops).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh
safcm_venv "[dev]"
# libfaketime: a system test runs a minion whose wall clock is an hour off.
command -v faketime >/dev/null || { apt-get update -q && apt-get install -y -q faketime; }
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy  # settings in pyproject.toml: common/ strictly, master/ and minion/
.venv/bin/python -m pytest "$@"
