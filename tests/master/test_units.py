"""The shipped systemd units pass systemd-analyze verify (Debian 12's systemd),
with ExecStart pointing at the installed commands. systemd is never booted."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

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
