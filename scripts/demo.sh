#!/usr/bin/env bash
# Installs safcm into .venv and runs the demo: a master and three minions on
# 127.0.0.1 with sandboxed roots, enrolment, a real sync with diffs, the job
# history. Works on a fresh Debian machine with Python 3.11, as root.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh
safcm_venv ""
exec .venv/bin/safcm-master demo "$@"
