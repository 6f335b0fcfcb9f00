"""The install path of the README, for real: the wheel is built, installed with
its dependencies into a fresh venv in a temporary directory, and the demo runs
from there with no checkout in sight. The units and example files ship in it."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Seconds for pip (a build, then an install whose dependencies usually come
# from pip's cache) and for the demo (three minions enrol and run files twice).
INSTALL_TIMEOUT = 240
DEMO_TIMEOUT = 180


def run(argv: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    # Nothing of this checkout on the path: PYTHONPATH unset, the cwd elsewhere.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    result = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, f"{argv}:\n{result.stdout}\n{result.stderr}"
    return result


def test_wheel_installs_into_a_fresh_venv_and_runs_the_demo(tmp_path):
    wheels = tmp_path / "wheels"
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(wheels),
            str(ROOT),
        ],
        tmp_path,
        INSTALL_TIMEOUT,
    )
    (wheel,) = wheels.glob("safcm-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.startswith("safcm-")}
    assert tops == {"safcm"}  # no top-level common, master or minion to collide
    for data in (
        "safcm/configs/master.yaml",
        "safcm/configs/minion.yaml",
        "safcm/configs/systemd/safcm-master.service",
        "safcm/configs/systemd/safcm-minion.service",
        "safcm/configs/repo/hosts.yaml",
        "safcm/docs/schema/run.json",
    ):
        assert data in names, data

    opt = tmp_path / "opt" / "safcm"  # stands in for /opt/safcm
    run([sys.executable, "-m", "venv", str(opt)], tmp_path, INSTALL_TIMEOUT)
    run([str(opt / "bin" / "pip"), "install", "-q", str(wheel)], tmp_path, INSTALL_TIMEOUT)
    for command in ("safcm-master", "safcm-minion"):  # where the units run them
        assert os.access(opt / "bin" / command, os.X_OK), command
        version = run([str(opt / "bin" / command), "--version"], tmp_path, 60)
        assert version.stdout.startswith(f"{command} ")
    # safcm-master is bin/safcm-master, whatever pip wrote the launchers: it
    # loads neither re (as older pips' launchers do) nor argparse for --version.
    launcher = str(opt / "bin" / "safcm-master")
    importtime = run(
        [str(opt / "bin" / "python"), "-X", "importtime", launcher, "--version"], tmp_path, 60
    )
    loaded = {line.rsplit("|", 1)[-1].strip() for line in importtime.stderr.splitlines()}
    assert "safcm.master.lightcli" in loaded
    assert not {"re", "argparse", "enum", "typing", "msgpack"} & loaded

    # The README's way to find the shipped examples and units.
    found = run(
        [str(opt / "bin" / "python"), "-c", "import safcm.configs; print(*safcm.configs.__path__)"],
        tmp_path,
        60,
    )
    configs = Path(found.stdout.strip())
    assert configs.is_relative_to(opt) and (configs / "systemd" / "safcm-master.service").is_file()

    # The demo uses the example repository installed with it, not this checkout's.
    repo = run(
        [str(opt / "bin" / "python"), "-c", "import safcm.master.demo as d; print(d.EXAMPLE_REPO)"],
        tmp_path,
        60,
    )
    assert Path(repo.stdout.strip()) == configs / "repo"
    demo = run([str(opt / "bin" / "safcm-master"), "demo"], tmp_path, DEMO_TIMEOUT)
    assert "==> Done" in demo.stdout, demo.stdout
