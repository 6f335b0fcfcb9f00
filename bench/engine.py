#!/usr/bin/env python3
"""Benchmark the file engine against the C floor on the same trees, in one run.

    python bench/engine.py [--shared DIR] [--reps N] [--tree T1000] [--dir DIR] [--walk] [--serial]

Builds the benchmark trees with the shared gen_tree.py (1000 files of about
1 KiB in 50 directories, two levels deep) and the C reference engine with
its Makefile, both in a temporary directory on the filesystem under test.
Then, for each repetition, it times three workloads for our engine and for
the floor, on fresh targets:

    create    target empty, apply base
    noop      target equals base, apply base again
    change10  target equals base, apply change10 (10% of the files differ)

It prints medians, files per second, and our median time divided by the
floor's median in the same run: in its default mode (ours/floor:
--walk=openat --dirsync=each, a directory fsync after every file) and in
its fastest mode (ours/fastest: --walk=openat2 --dirsync=batch, each
changed directory fsynced once at the end). Below 1 we are faster. Loading
the trees into memory is not timed, for us as for the floor (its load_s).

Both modes of the floor fsync one file at a time; our engine keeps several
fsyncs in flight (FSYNC_WORKERS threads, fed WRITE_BATCH files at a time).
The last lines check the goal of issue 11, point 8, against each mode:
create in at most CREATE_GOAL times the floor's time, in the same run.
--serial also times our engine with one fsync at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

# The job id an apply names in the triggers it leaves owed (none here).
BENCH_JID = "20260101T000000.000000Z"

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from safcm.common.model import FileSpec, FileType  # noqa: E402
from safcm.minion import fileops  # noqa: E402
from safcm.minion.fileops import Resolve  # noqa: E402

WORKLOADS = ("create", "noop", "change10")
# Issue 11, point 8: our create at most this fraction of the floor's, which
# fsyncs every file one at a time.
CREATE_GOAL = 0.7
FLOOR_MODES = {
    "floor": ["--walk=openat", "--dirsync=each"],
    "floor-openat2-batch": ["--walk=openat2", "--dirsync=batch"],
}


def load_tree(src: str) -> list[FileSpec]:
    """The tree under `src` as FileSpecs: every directory and file, with its mode and owner."""
    specs = []
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames.sort()
        for name in dirnames + sorted(filenames):
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            rel = "/" + os.path.relpath(p, src)
            if name in dirnames:
                spec = FileSpec(
                    rel, FileType.DIR, st.st_mode & 0o7777, uid=st.st_uid, gid=st.st_gid
                )
            else:
                with open(p, "rb") as f:
                    data = f.read()
                spec = FileSpec(
                    rel, FileType.FILE, st.st_mode & 0o7777, uid=st.st_uid, gid=st.st_gid, data=data
                )
            specs.append(spec)
    return specs


def run_ours(dst: str, specs: list[FileSpec], state: str) -> float:
    started = time.perf_counter()
    result = fileops.apply_files(dst, specs, dry_run=False, state_dir=state, jid=BENCH_JID)
    elapsed = time.perf_counter() - started
    if result.failures:
        sys.exit(f"our engine failed: {result.failures}")
    return elapsed


def run_floor(floor: str, mode: list[str], src: str, dst: str) -> float:
    out = subprocess.run([floor, *mode, src, dst], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)["apply_s"]


def fresh(path: str) -> str:
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--shared",
        default=os.path.join(REPO, "..", "shared", "bench"),
        help="directory with gen_tree.py, floor.c and its Makefile (default: %(default)s)",
    )
    parser.add_argument("--reps", type=int, default=9, help="repetitions (default: %(default)s)")
    parser.add_argument("--tree", default="T1000", help="T1000 or T100 (default: %(default)s)")
    parser.add_argument("--dir", default=None, help="work directory (default: a new one in /tmp)")
    parser.add_argument(
        "--walk", action="store_true", help="also time our engine with the component walk"
    )
    parser.add_argument(
        "--serial", action="store_true", help="also time our engine with one fsync at a time"
    )
    args = parser.parse_args()

    shared = os.path.abspath(args.shared)
    work = os.path.abspath(args.dir) if args.dir else tempfile.mkdtemp(prefix="safcm-bench-")
    os.makedirs(work, exist_ok=True)
    try:
        subprocess.run(
            [sys.executable, os.path.join(shared, "gen_tree.py"), os.path.join(work, "trees")],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        build = os.path.join(work, "build")
        subprocess.run(
            ["make", "-s", "-C", shared, f"BUILD={build}"], check=True, stdout=subprocess.DEVNULL
        )
        floor = os.path.join(build, "floor")
        trees = os.path.join(work, "trees", args.tree)
        src = {"base": os.path.join(trees, "base"), "change10": os.path.join(trees, "change10")}
        specs = {name: load_tree(path) for name, path in src.items()}
        nfiles = sum(1 for s in specs["base"] if s.type is FileType.FILE)
        state = os.path.join(work, "state")

        # Our engine's variants: the module settings each one runs with.
        ours: dict[str, dict[str, object]] = {"ours": {}}
        if args.walk:
            ours["ours-walk"] = {"FORCE_RESOLVE": Resolve.WALK}
        if args.serial:
            ours["ours-serial"] = {"FSYNC_WORKERS": 1}
        times: dict[str, dict[str, list[float]]] = {
            engine: {w: [] for w in WORKLOADS} for engine in [*ours, *FLOOR_MODES]
        }
        engines = [*FLOOR_MODES, *ours]
        for rep in range(args.reps):
            # Interleave the engines and rotate their order, so drift in the
            # machine's speed, and the tail of the I/O of whichever engine ran
            # just before, hit all of them alike.
            for engine in engines[rep % len(engines) :] + engines[: rep % len(engines)]:
                dst = fresh(os.path.join(work, "dst-" + engine))
                if engine in FLOOR_MODES:
                    mode = FLOOR_MODES[engine]
                    times[engine]["create"].append(run_floor(floor, mode, src["base"], dst))
                    times[engine]["noop"].append(run_floor(floor, mode, src["base"], dst))
                    times[engine]["change10"].append(run_floor(floor, mode, src["change10"], dst))
                    continue
                saved = {name: getattr(fileops, name) for name in ours[engine]}
                for name, value in ours[engine].items():
                    setattr(fileops, name, value)
                try:
                    times[engine]["create"].append(run_ours(dst, specs["base"], state))
                    times[engine]["noop"].append(run_ours(dst, specs["base"], state))
                    times[engine]["change10"].append(run_ours(dst, specs["change10"], state))
                finally:
                    for name, value in saved.items():
                        setattr(fileops, name, value)

        med = {e: {w: statistics.median(t) for w, t in ws.items()} for e, ws in times.items()}
        resolve = "openat2" if fileops.openat2_available() else "walk"
        print(f"{args.tree}: {nfiles} files, {args.reps} repetitions, medians; work dir {work}")
        in_flight = min(fileops.FSYNC_WORKERS, fileops.PENDING_WRITES_MAX // fileops.WRITE_BATCH)
        print(
            f"our engine resolves with {resolve}, writes through O_TMPFILE, and keeps up to"
            f" {in_flight} fsyncs in flight ({fileops.WRITE_BATCH} files per worker handoff)"
        )
        header = f"{'workload':<10} {'engine':<20} {'seconds':>9} {'files/s':>9}"
        print(header + f" {'ours/floor':>11} {'ours/fastest':>13}")
        for w in WORKLOADS:
            for engine in times:
                line = (
                    f"{w:<10} {engine:<20} {med[engine][w]:>9.4f} {nfiles / med[engine][w]:>9.0f}"
                )
                if engine in ours:
                    ratio = med[engine][w] / med["floor"][w]
                    fastest = med[engine][w] / med["floor-openat2-batch"][w]
                    line += f" {ratio:>10.2f}x {fastest:>12.2f}x"
                print(line)
        for floor in FLOOR_MODES:
            ratio = med["ours"]["create"] / med[floor]["create"]
            verdict = "met" if ratio <= CREATE_GOAL else "NOT met"
            goal = f"goal create <= {CREATE_GOAL:.2f}x {floor} (fsync per file)"
            print(f"{goal}: {ratio:.2f}x, {verdict}")
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
