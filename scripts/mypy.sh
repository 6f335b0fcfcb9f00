#!/usr/bin/env bash
# Type-checks the package safcm. mypy cannot follow pyproject's package-dir
# mapping (safcm.common is the directory common/), so it reads the code
# through a tree of links that has the installed layout.
set -euo pipefail
cd "$(dirname "$0")/.."
tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT
mkdir "$tree/safcm"
for package in common master minion; do
    ln -s "$PWD/$package" "$tree/safcm/$package"
done
MYPYPATH="$tree" .venv/bin/mypy --cache-dir .mypy_cache -p safcm.common -p safcm.master -p safcm.minion "$@"
