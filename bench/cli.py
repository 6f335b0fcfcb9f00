"""Benchmark the CLI's start-up: wall time of light commands against the bare interpreter.

    .venv/bin/python bench/cli.py [--minions 2] [--repeat 15] [--no-wheel] [--json]

Starts, in a temporary directory under /tmp, a real master daemon and
--minions real minion daemons (master/sandbox.py, the example repository,
keys accepted automatically), runs one `run '*' files` so that the files
are in place, and then times, each --repeat times in turn (after one round
of warm-up, which also writes the bytecode caches), by its wall clock from
start to exit:

    python -c pass                      the bare interpreter (the yardstick)
    safcm-master --version
    safcm-master keys list
    safcm-master jobs list
    safcm-master run '*' files          a no-op run: every file already as configured

each in two installations, side by side:

- checkout: this interpreter's venv, where safcm is usually installed
  editable (its finder, loaded at every start-up, makes the bare
  interpreter slower too: it loads pathlib, re and enum);
- wheel: the wheel built from this checkout and installed into a fresh
  venv in a temporary directory, as tests/test_install.py and the README
  install it (--no-wheel leaves it out).

Each installation is measured against its own bare interpreter. safcm-master
is the command installed beside the interpreter (as an administrator runs
it), or `python -m safcm.master.cli` where there is none. Each command is
checked: exit code 0 and, for run, nothing changed. It prints each command's
median and fastest wall time, its median CPU time (user + system: less
disturbed by other processes on a busy machine), and both medians as
multiples of the bare interpreter's. Issue 10's goal: keys list and jobs
list at most 2x. The commands run in turn, so a load that comes and goes
(another process on the machine) falls on all of them alike.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from safcm.common.wire import MsgType
from safcm.master.client import ControlClient
from safcm.master.sandbox import Sandbox, wait_for

SOURCE_DIR = pathlib.Path(__file__).resolve().parents[1]
REPO = SOURCE_DIR / "configs" / "repo"
# The example repository's hosts (configs/repo/hosts.yaml), in order.
HOSTS = ["web1", "web2", "web3", "db1"]
# Seconds to wait for the minions to connect, for one command, and for
# building and installing the wheel (pip: dependencies from its cache).
SETTLE = 60.0
COMMAND_TIMEOUT = 120.0
INSTALL_TIMEOUT = 300.0
BARE = "python -c pass"


def master_command(python: str) -> list[str]:
    script = pathlib.Path(python).parent / "safcm-master"
    return [str(script)] if script.exists() else [python, "-m", "safcm.master.cli"]


def connected(sb: Sandbox, minions: list[str]) -> bool:
    with ControlClient(sb.control_path) as client:
        keys = client.request(MsgType.KEYS, {"action": "list", "ids": []}).body["keys"]
    state = {k["id"]: k for k in keys}
    return all(m in state and state[m]["connected"] for m in minions)


def cpu_of_children() -> float:
    """CPU seconds (user + system) of this process's waited-for children. The
    daemons are waited for only at the end, so a delta is one command's."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(
    argv: list[str], env: dict[str, str], cwd: str
) -> tuple[float, float, subprocess.CompletedProcess]:
    """Wall and CPU seconds of one command, and how it ended."""
    cpu = cpu_of_children()
    start = time.perf_counter()
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )
    return time.perf_counter() - start, cpu_of_children() - cpu, done


def install_wheel(base: str) -> str:
    """Build the wheel of this checkout and install it into a fresh venv under
    `base`, as tests/test_install.py does; the venv's python."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    wheels, venv = os.path.join(base, "wheels"), os.path.join(base, "venv")
    build = ["wheel", "-q", "--no-deps", "--no-build-isolation", "-w", wheels, str(SOURCE_DIR)]
    steps = [[sys.executable, "-m", "pip", *build], [sys.executable, "-m", "venv", venv]]
    for argv in steps:
        subprocess.run(
            argv, cwd=base, env=env, capture_output=True, check=True, timeout=INSTALL_TIMEOUT
        )
    (wheel,) = pathlib.Path(wheels).glob("safcm-*.whl")
    pip = [os.path.join(venv, "bin", "pip"), "install", "-q", str(wheel)]
    subprocess.run(pip, cwd=base, env=env, capture_output=True, check=True, timeout=INSTALL_TIMEOUT)
    return os.path.join(venv, "bin", "python")


def commands(python: str, config: list[str]) -> dict[str, list[str]]:
    safcm = master_command(python)
    return {
        BARE: [python, "-c", "pass"],
        "safcm-master --version": [*safcm, "--version"],
        "safcm-master keys list": [*safcm, *config, "keys", "list"],
        "safcm-master jobs list": [*safcm, *config, "jobs", "list"],
        "safcm-master run '*' files (no-op)": [*safcm, *config, "run", "*", "files", "--json"],
    }


def figures_of(times: dict[str, list[float]], cpus: dict[str, list[float]]) -> dict[str, dict]:
    bare, bare_cpu = statistics.median(times[BARE]), statistics.median(cpus[BARE])
    return {
        name: {
            "median_ms": round(statistics.median(t) * 1000, 1),
            "min_ms": round(min(t) * 1000, 1),
            "ratio": round(statistics.median(t) / bare, 2),
            "cpu_ms": round(statistics.median(cpus[name]) * 1000, 1),
            "cpu_ratio": round(statistics.median(cpus[name]) / bare_cpu, 2),
        }
        for name, t in times.items()
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minions", type=int, default=2, choices=range(1, len(HOSTS) + 1))
    parser.add_argument("--repeat", type=int, default=15, help="runs of each command")
    parser.add_argument("--no-wheel", action="store_true", help="measure the checkout only")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()

    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    base = tempfile.mkdtemp(prefix="safcm-bench-cli-", dir="/tmp")
    # As an installed command runs: with its bytecode cached (a test
    # environment may set PYTHONDONTWRITEBYTECODE, and then every start
    # compiles every module again). The first round is a warm-up, not timed.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    # The wheel's commands run with nothing of this checkout in sight.
    wheel_env = {k: v for k, v in env.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    pythons = {"checkout": (sys.executable, env, str(SOURCE_DIR))}
    if not args.no_wheel:
        pythons["wheel"] = (install_wheel(base), wheel_env, base)
    sb = Sandbox(os.path.join(base, "sandbox"), str(REPO), log_level="info", auto_accept=True)
    times: dict[str, dict[str, list[float]]] = {}
    cpus: dict[str, dict[str, list[float]]] = {}
    failures = []
    try:
        sb.start_master()
        minions = HOSTS[: args.minions]
        for m in minions:
            sb.add_minion(m, log_level="info")
            sb.start_minion(m)
        wait_for(lambda: connected(sb, minions), SETTLE, "the minions to connect")
        config = ["-c", sb.master.config]
        first = sb.cli("run", "*", "files", "--json")
        if first.returncode != 0:
            print(f"the first run failed:\n{first.stdout}{first.stderr}", file=sys.stderr)
            return 1
        runs = {where: commands(python, config) for where, (python, _, _) in pythons.items()}
        for where, named in runs.items():
            times[where] = {name: [] for name in named}
            cpus[where] = {name: [] for name in named}
        for round_ in range(args.repeat + 1):
            for name in runs["checkout"]:
                for where, (_, run_env, cwd) in pythons.items():
                    seconds, cpu, done = timed(runs[where][name], run_env, cwd)
                    if round_:
                        times[where][name].append(seconds)
                        cpus[where][name].append(cpu)
                    if done.returncode != 0:
                        failures.append(
                            f"{where}: {name}: exit {done.returncode}: {done.stderr.strip()}"
                        )
                    elif name.startswith("safcm-master run"):
                        summary = json.loads(done.stdout)["summary"]
                        if summary["changed"] or summary["ok"] != len(minions):
                            failures.append(f"{where}: {name}: not a no-op: {summary}")
    finally:
        sb.close()
        shutil.rmtree(base, ignore_errors=True)

    figures = {where: figures_of(times[where], cpus[where]) for where in times}
    if args.json:
        document = {
            "pythons": {where: python for where, (python, _, _) in pythons.items()},
            "runs": args.repeat,
            "figures": figures,
        }
        print(json.dumps(document, indent=2))
    else:
        print(f"{args.minions} minions, {args.repeat} runs of each command; load average before:")
        print(f"{load}. Wall time (median, fastest) and CPU time (user + system, median),")
        print("each with its multiple of the same installation's bare interpreter.")
        for where, (python, _, _) in pythons.items():
            print(f"  {where}: {python}")
        header = f"{'command':36s}"
        for where in figures:
            header += f" | {where + ': wall':>14s} {'fastest':>9s} {'x bare':>7s}"
            header += f" {'CPU':>9s} {'x bare':>7s}"
        print(header)
        for name in runs["checkout"]:
            line = f"{name:36s}"
            for where in figures:
                f = figures[where][name]
                line += (
                    f" | {f['median_ms']:11.1f} ms {f['min_ms']:6.1f} ms {f['ratio']:6.2f}x"
                    f" {f['cpu_ms']:6.1f} ms {f['cpu_ratio']:6.2f}x"
                )
            print(line)
    for failure in failures:
        print(f"FAILED {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
