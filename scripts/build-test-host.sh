#!/usr/bin/env bash
# Builds the Debian 12 tree that the container tests (tests/hosts/) boot with
# systemd-nspawn: a minbase system with systemd as init, D-Bus, and python3 with
# safcm's runtime dependencies in a virtualenv at /opt/safcm. safcm's own code
# is not in the tree: each container bind-mounts the checkout under test
# read-only at /opt/safcm/src (see tests/hosts/machine.py), so one tree serves
# every commit.
#
#   scripts/build-test-host.sh [TREE] [PYTHON]
#
# TREE defaults to /var/cache/safcm-test/bookworm. PYTHON (default python3) is
# the host's Python 3.11 whose pip downloads the dependency wheels; it uses the
# host's pip configuration (index, proxy), so the chroot needs no network setup
# of its own. Needs root, debootstrap and a Debian mirror (the first one in
# the host's apt sources, or $MIRROR). About 60 s and 260 MB, once: the tests
# reuse the tree until the dependencies in pyproject.toml change.
set -euo pipefail
cd "$(dirname "$0")/.."
TREE=${1:-/var/cache/safcm-test/bookworm}
PYTHON=${2:-python3}
SUITE=bookworm
# Packages beyond minbase: systemd as PID 1 (systemd-sysv), the bus systemctl
# talks to (dbus), the interpreter and its venv module.
INCLUDE=systemd,systemd-sysv,dbus,python3,python3-venv
MIRROR=${MIRROR:-$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)}
[ -n "$MIRROR" ] || MIRROR=$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
[ -n "$MIRROR" ] || MIRROR=http://deb.debian.org/debian

# The dependencies, one a line, exactly as pyproject.toml lists them; written to
# the tree as its stamp, so that the tests see when the tree is out of date.
requirements() {
    "$PYTHON" -c 'import sys, tomllib
print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))'
}

mkdir -p "$(dirname "$TREE")"
exec 9>"$TREE.lock"
flock 9  # two suites on one machine build the tree once
STAMP=$TREE/opt/safcm/requirements.txt
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(requirements)" ]; then
    exit 0  # built while we waited for the lock, or already current
fi

WORK=$TREE.tmp
rm -rf "$WORK"
if [ -x "$TREE/lib/systemd/systemd" ]; then
    mv "$TREE" "$WORK"  # only the virtualenv is out of date: keep the system
    rm -rf "$WORK/opt/safcm"
else
    rm -rf "$TREE"
    echo "build-test-host: debootstrap $SUITE from $MIRROR into $TREE (about a minute)" >&2
    debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$WORK" "$MIRROR" >/dev/null
fi

WHEELS=$(mktemp -d)
trap 'rm -rf "$WHEELS"' EXIT
requirements >"$WHEELS/requirements.txt"
# Binary wheels only: the tree has no compiler. The host runs the same
# Python minor version on the same architecture as the tree (3.11, Debian 12).
"$PYTHON" -m pip download -q --only-binary=:all: -d "$WHEELS" -r "$WHEELS/requirements.txt"
mkdir -p "$WORK/tmp/wheels"
cp "$WHEELS"/* "$WORK/tmp/wheels/"
chroot "$WORK" python3 -m venv /opt/safcm
chroot "$WORK" /opt/safcm/bin/pip install -q --no-index --find-links /tmp/wheels \
    -r /tmp/wheels/requirements.txt
rm -rf "$WORK/tmp/wheels"

# The checkout is mounted at /opt/safcm/src/safcm/{common,master,minion,...};
# this path file puts it on the virtualenv's import path, as an editable
# install does on the host.
site=$(chroot "$WORK" /opt/safcm/bin/python3 -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
echo /opt/safcm/src >"$WORK$site/safcm-src.pth"
# The console script where configs/systemd/safcm-minion.service expects it.
cat >"$WORK/opt/safcm/bin/safcm-minion" <<'SCRIPT'
#!/opt/safcm/bin/python3
import sys

from safcm.minion.cli import main

sys.exit(main())
SCRIPT
chmod 0755 "$WORK/opt/safcm/bin/safcm-minion"
# Boot faster and quieter: no getty on the container's console.
chroot "$WORK" systemctl mask -q console-getty.service getty@.service
requirements >"$WORK/opt/safcm/requirements.txt"
# No host name of its own: systemd keeps the one nspawn gives each machine.
rm -f "$WORK/etc/hostname"
mv "$WORK" "$TREE"
echo "build-test-host: $TREE ready" >&2
