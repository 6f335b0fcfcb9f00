"""Every program the minion starts runs with CHILD_UMASK (022), whatever the
daemon's own umask (the unit's UMask=0077): trigger commands, cmd jobs,
apt's runs, systemctl and journalctl. The daemon's own umask stays as it was."""

from __future__ import annotations

import os
import stat
import subprocess

import pytest

from safcm.minion import apt, systemctl
from safcm.minion.children import CHILD_UMASK
from safcm.minion.modules import cmd
from safcm.minion.triggers import run_trigger

# The daemon's umask under its unit.
DAEMON_UMASK = 0o077
# Seconds any one of these short commands may take.
TIMEOUT = 30.0
SHOW_UMASK = ["/bin/sh", "-c", "umask"]


@pytest.fixture(autouse=True)
def private_umask():
    old = os.umask(DAEMON_UMASK)
    try:
        yield
        assert os.umask(DAEMON_UMASK) == DAEMON_UMASK  # the daemon's own is untouched
    finally:
        os.umask(old)


def trigger_umask(tmp_path, monkeypatch) -> str:
    return run_trigger("umask", root=str(tmp_path), timeout=TIMEOUT).output


def cmd_umask(tmp_path, monkeypatch) -> str:
    fields = {"cmd": {"argv": SHOW_UMASK, "shell": False, "timeout": TIMEOUT}}
    return cmd.run_invocation(cmd.invocation(fields, "/"))["stdout"]


def apt_umask(tmp_path, monkeypatch) -> str:
    # The one place apt-get and dpkg-query are started.
    return apt._run(SHOW_UMASK, {}, TIMEOUT, keep=100).output.decode()


def systemctl_umask(tmp_path, monkeypatch) -> str:
    # systemctl's and journalctl's calls as they are made, with the program
    # swapped for one that says its umask.
    real = subprocess.run
    monkeypatch.setattr(systemctl.subprocess, "run", lambda argv, **kw: real(SHOW_UMASK, **kw))
    journal = systemctl.journal_tail("x.service", 0)
    assert journal == systemctl._systemctl("is-system-running").strip()
    return journal + "\n"


@pytest.mark.parametrize("child", [trigger_umask, cmd_umask, apt_umask, systemctl_umask])
def test_a_child_runs_with_umask_022(tmp_path, monkeypatch, child):
    assert child(tmp_path, monkeypatch) == f"{CHILD_UMASK:04o}\n"


def test_a_file_a_trigger_makes_is_0644(tmp_path):
    run = run_trigger('touch "$SAFCM_ROOT/made"', root=str(tmp_path), timeout=TIMEOUT)
    assert run.exit_code == 0, run.output
    assert stat.S_IMODE(os.stat(tmp_path / "made").st_mode) == 0o644
