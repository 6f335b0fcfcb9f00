"""The shipped systemd units pass systemd-analyze verify (Debian 12's systemd),
with ExecStart pointing at the installed commands, and their settings agree
with the minion's limits, master.yaml and the README. systemd is never
booted here; tests/hosts/ runs the units under a real one."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from safcm.common.protocol import MAX_JOB_TIMEOUT
from safcm.common.settings import duration
from safcm.master.lifecycle import MAX_DEADLINE_EXTENSION

UNITS = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "systemd")


@pytest.mark.parametrize("name", ["safcm-master", "safcm-minion"])
def test_unit_verifies(tmp_path, name):
    analyzer = shutil.which("systemd-analyze")
    assert analyzer, "systemd-analyze is missing (scripts/test.sh installs systemd)"
    with open(os.path.join(UNITS, f"{name}.service")) as f:
        text = f.read()
    assert f"ExecStart=/opt/safcm/bin/{name} " in text  # the documented install path
    assert "LimitNOFILE=" in text
    # The commands of this checkout's venv stand in for /opt/safcm/bin.
    command = os.path.join(os.path.dirname(sys.executable), name)
    unit = tmp_path / f"{name}.service"
    unit.write_text(text.replace(f"/opt/safcm/bin/{name}", command))
    result = subprocess.run(
        [analyzer, "verify", str(unit)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "" and result.stdout.strip() == "", result.stderr


def directives(name: str) -> dict[str, str]:
    """The unit's `Key=value` lines (each key set once in ours)."""
    with open(os.path.join(UNITS, f"{name}.service")) as f:
        lines = [line.strip() for line in f if "=" in line and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


def test_a_stopping_minion_finishes_its_job_before_systemd_kills_anything():
    """SIGTERM reaches the daemon alone (it waits for its job: apt and dpkg
    must not be cut short), and the stop timeout, after which systemd kills
    the whole unit, outlasts the longest job the minion runs: a cmd job's
    timeout, plus the hour the master waits for its triggers."""
    minion = directives("safcm-minion")
    assert minion["KillMode"] == "mixed"
    assert duration(minion["TimeoutStopSec"]) >= MAX_JOB_TIMEOUT + MAX_DEADLINE_EXTENSION


@pytest.mark.parametrize("name", ["safcm-master", "safcm-minion"])
def test_bad_settings_are_not_restarted_forever(name):
    # Exit 2: it did not start, and would not the next time. Anything else
    # (the master's exit 1: its PostgreSQL store cannot be reached) is restarted.
    unit = directives(name)
    assert unit["RestartPreventExitStatus"] == "2"
    assert unit["Restart"] == "on-failure"


def test_the_documentation_is_the_settings_file_the_readme_installs():
    with open(os.path.join(UNITS, "..", "..", "README.md")) as f:
        readme = f.read()
    for name in ("master", "minion"):
        path = directives(f"safcm-{name}")["Documentation"].removeprefix("file:")
        assert path == f"/etc/safcm/{name}.yaml"
        assert f"install -m 0600 $ex/{name}.yaml /etc/safcm/" in readme


def test_the_example_control_socket_is_in_the_masters_runtime_directory():
    with open(os.path.join(UNITS, "..", "master.yaml")) as f:
        (example,) = re.findall(r"^# control_socket: (/\S+)$", f.read(), re.MULTILINE)
    master = directives("safcm-master")
    assert os.path.dirname(example) == "/run/" + master["RuntimeDirectory"]
    assert "ReadWritePaths" not in master  # StateDirectory= makes state_dir writable
