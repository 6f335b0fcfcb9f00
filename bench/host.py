#!/usr/bin/env python3
"""Benchmark one host end to end: the CLI's wall time for a `files` run of T1000.

    .venv/bin/python bench/host.py [--shared DIR] [--reps N] [--tree T1000] [--json]

For each repetition, in a fresh temporary directory under /tmp: a
configuration repository whose only host (h1) gets the benchmark tree of the
shared gen_tree.py (T1000: 1000 text files of about 1 KiB in 50 directories,
two levels deep) under /srv/bench, a real master daemon and one real minion
daemon (master/sandbox.py, the key accepted automatically), and then, each
timed by its wall clock from the CLI's start to its exit, as a user runs it:

    create    `run h1 files --json`: the host has nothing yet
    noop      the same again: nothing changes
    dry-run   the repository now holds change10 (10% of the files differ):
              `run h1 files --dry-run --json`, which writes nothing
    change10  `run h1 files --json`: the 10% are written

Each answer is checked (the host answered ok, with the expected number of
changed files); a failed check stops the benchmark with exit code 1. The
host's own apply time (from its result) is printed beside the CLI's wall
time. A fresh master and minion for each repetition, so every create is a
first one (no content cached on the minion, none known to the master).

These are the figures the issue compares with CFEngine and Puppet measured
on the same trees (issue 11: create 1.41 s, no-op 0.37 s, change10 0.44 s
before; CFEngine 3.21 with cf-serverd 0.53, 0.36 and 0.45 s). The machine's
load average is printed with them: on a shared machine they move with it.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from safcm.common.protocol import MsgType
from safcm.master.control import ControlClient
from safcm.master.sandbox import Sandbox, wait_for

SOURCE_DIR = pathlib.Path(__file__).resolve().parents[1]
HOST = "h1"
# Where the tree goes on the host, beneath the minion's root.
TARGET = "srv/bench"
# Seconds to wait for the minion to connect, and for one command.
SETTLE = 60.0
COMMAND_TIMEOUT = 300.0
WORKLOADS = ("create", "noop", "dry-run", "change10")


class BenchError(Exception):
    pass


def write_repo(repo: pathlib.Path, tree: pathlib.Path) -> None:
    repo.mkdir(parents=True)
    (repo / "config.yaml").write_text("default_user: root\ndefault_group: root\n")
    (repo / "hosts.yaml").write_text(f"- name: {HOST}\n")
    shutil.copytree(tree, repo / "all" / "files" / TARGET)


def connected(sb: Sandbox) -> bool:
    with ControlClient(sb.control_path) as client:
        keys = client.request(MsgType.KEYS, {"action": "list", "ids": []}).body["keys"]
    return any(k["id"] == HOST and k["connected"] for k in keys)


def timed_run(sb: Sandbox, *extra: str) -> tuple[float, dict]:
    """Wall seconds of one `run h1 files`, and its JSON answer."""
    argv = [sys.executable, "-m", "safcm.master.cli", "-c", sb.master.config]
    argv += ["run", HOST, "files", "--json", *extra]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    start = time.perf_counter()
    done = subprocess.run(
        argv, capture_output=True, text=True, env=env, timeout=COMMAND_TIMEOUT, check=False
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise BenchError(f"run {' '.join(extra)}: exit {done.returncode}: {done.stderr.strip()}")
    return seconds, json.loads(done.stdout)


def changed_files(answer: dict) -> tuple[int, float]:
    """Regular files changed (or that would change) on the host, and its apply time."""
    (host,) = answer["hosts"]
    if host["status"] not in ("ok", "changed"):
        reason = host.get("reason") or (host.get("result") or {}).get("error")
        raise BenchError(f"the host answered {host['status']}: {reason}")
    apply = host["result"]["apply"]
    files = [c for c in apply["changes"] if c["new"] and c["new"]["type"] == "file"]
    return len(files), apply["duration"]


def one_repetition(trees: pathlib.Path, nfiles: int, nchanged: int) -> dict[str, tuple]:
    base = tempfile.mkdtemp(prefix="safcm-bench-host-", dir="/tmp")
    try:
        repo = pathlib.Path(base) / "repo"
        write_repo(repo, trees / "base")
        sb = Sandbox(os.path.join(base, "sb"), str(repo), log_level="info", auto_accept=True)
        try:
            sb.start_master()
            sb.add_minion(HOST, log_level="info")
            sb.start_minion(HOST)
            wait_for(lambda: connected(sb), SETTLE, "the minion to connect")
            figures = {}
            expected = {"create": nfiles, "noop": 0, "dry-run": nchanged, "change10": nchanged}
            for workload in WORKLOADS:
                if workload == "dry-run":  # the repository moves on to change10
                    files = pathlib.Path(sb.config_dir) / "all" / "files" / TARGET
                    shutil.copytree(trees / "change10", files, dirs_exist_ok=True)
                extra = ("--dry-run",) if workload == "dry-run" else ()
                seconds, answer = timed_run(sb, *extra)
                changed, apply = changed_files(answer)
                if changed != expected[workload]:
                    raise BenchError(
                        f"{workload}: {changed} files changed, expected {expected[workload]}"
                    )
                figures[workload] = (seconds, apply)
            return figures
        finally:
            sb.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def count_differences(trees: pathlib.Path) -> tuple[int, int]:
    """Files in base, and files whose content change10 changes."""
    base, change = trees / "base", trees / "change10"
    names = [p.relative_to(base) for p in base.rglob("*") if p.is_file()]
    differ = sum((base / n).read_bytes() != (change / n).read_bytes() for n in names)
    return len(names), differ


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--shared",
        default=str(SOURCE_DIR.parent / "shared" / "bench"),
        help="directory with gen_tree.py (default: %(default)s)",
    )
    parser.add_argument("--reps", type=int, default=3, help="repetitions (default: %(default)s)")
    parser.add_argument("--tree", default="T1000", help="T1000 or T100 (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="safcm-bench-trees-", dir="/tmp")
    try:
        gen = os.path.join(os.path.abspath(args.shared), "gen_tree.py")
        subprocess.run([sys.executable, gen, work], check=True, stdout=subprocess.DEVNULL)
        trees = pathlib.Path(work) / args.tree
        nfiles, nchanged = count_differences(trees)
        loads = [os.getloadavg()[0]]
        reps = []
        for _ in range(args.reps):
            reps.append(one_repetition(trees, nfiles, nchanged))
            loads.append(os.getloadavg()[0])
    except BenchError as e:
        print(f"FAILED {e}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)

    figures = {
        w: {
            "cli_s": round(statistics.median(r[w][0] for r in reps), 3),
            "cli_min_s": round(min(r[w][0] for r in reps), 3),
            "apply_s": round(statistics.median(r[w][1] for r in reps), 3),
        }
        for w in WORKLOADS
    }
    load = ", ".join(f"{x:.1f}" for x in loads)
    if args.json:
        print(json.dumps({"tree": args.tree, "reps": args.reps, "load": loads, **figures}))
        return 0
    print(
        f"{args.tree} on one host, {nfiles} files ({nchanged} in change10), medians of {args.reps}"
    )
    print(f"load average (1 min) before and after each repetition: {load}")
    print(f"{'workload':10s} {'CLI wall':>9s} {'fastest':>9s} {'apply':>9s}")
    for w, f in figures.items():
        print(f"{w:10s} {f['cli_s']:8.3f}s {f['cli_min_s']:8.3f}s {f['apply_s']:8.3f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
