"""Fixtures for tests on booted Debian systems (tests/hosts/machine.py, fleet.py).

The tree is built on first use (scripts/build-test-host.sh, about a minute)
and reused while the dependencies in pyproject.toml stay the same. The tests
are skipped, with the reason, only on a machine that cannot boot one: not
root, no systemd-nspawn, or no tree and none can be built (no Debian mirror).

A module's tests share one fleet (`fleet`, with the module's HOSTS ids),
booted once: each test there uses paths and units of its own. A test that
changes what others would see asks for `fresh_fleet` instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from tests.hosts import machine
from tests.hosts.fleet import Fleet

BUILD = os.path.join(machine.SOURCE, "scripts", "build-test-host.sh")
# Seconds a build of the tree may take (debootstrap and pip download).
BUILD_TIMEOUT = 900


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def _requirements() -> str:
    import tomllib

    with open(os.path.join(machine.SOURCE, "pyproject.toml"), "rb") as f:
        return "\n".join(tomllib.load(f)["project"]["dependencies"])


def _current() -> bool:
    try:
        with open(os.path.join(machine.TREE, "opt/safcm/requirements.txt")) as f:
            return f.read().strip() == _requirements()
    except FileNotFoundError:
        return False


@pytest.fixture(scope="session")
def host_tree() -> str:
    reason = machine.unavailable()
    if reason:
        pytest.skip(f"booted-host tests: {reason}")
    machine.reap_stale()
    if not _current():
        bootable = os.path.exists(os.path.join(machine.TREE, "lib/systemd/systemd"))
        if not bootable and not machine.installed("debootstrap"):
            pytest.skip("booted-host tests: no tree, and debootstrap is not installed")
        result = subprocess.run(
            ["bash", BUILD, machine.TREE, sys.executable],
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT,
            check=False,
        )
        if result.returncode != 0:
            message = f"cannot build {machine.TREE}: {result.stderr.strip()[-2000:]}"
            if bootable:
                pytest.fail(message)
            pytest.skip(f"booted-host tests: {message}")
    return machine.TREE


def _fleet(request, ids: list[str]):
    fleet = Fleet(ids)
    try:
        fleet.start()
    except BaseException:
        print(fleet.logs())
        fleet.close()
        raise
    return fleet


@pytest.fixture(scope="module")
def fleet(request, host_tree):
    """The module's HOSTS (default one host, "host1"), booted, enrolled, connected."""
    f = _fleet(request, list(getattr(request.module, "HOSTS", ["host1"])))
    yield f
    f.close()


@pytest.fixture
def fresh_fleet(request, host_tree):
    f = _fleet(request, list(getattr(request.module, "HOSTS", ["host1"])))
    yield f
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        print(f.logs())
    f.close()


@pytest.fixture(autouse=True)
def _logs_on_failure(request):
    """After a failed test: the master's log and each minion's journal
    (fresh_fleet prints its own before it is torn down)."""
    yield
    failed = getattr(request.node, "rep_call", None)
    if failed is None or not failed.failed:
        return
    if "fleet" in request.fixturenames:
        print(request.getfixturevalue("fleet").logs())


@pytest.fixture(scope="module")
def booted(host_tree):
    """One booted machine without a minion, for the module's tests."""
    work = tempfile.mkdtemp(prefix="safcm-m-", dir="/tmp")
    m = machine.Machine(machine.machine_name(), work, hostname="solo")
    try:
        m.boot()
        yield m
    finally:
        m.shutdown()
        shutil.rmtree(work, ignore_errors=True)
