"""Benchmark the minion's seen-jid store: what each job costs it.

    .venv/bin/python bench/seen.py [--jobs 2000]

For every job a minion records the envelope and keeps the job in one
commit (check_and_add), then drops the kept job in another once it is done
(drop): common/seen.py. Printed per job, in a store under /dev/shm (no real
fsync) and one under /tmp (this machine's disk): wall and CPU microseconds.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from safcm.common.crypto import Header
from safcm.common.seen import SeenJids

# A kept job's body: about a ping's packed size, in bytes.
BODY = b"x" * 200
# Seconds an entry is kept past now: far beyond the run.
KEEP = 3600.0
JOB = 5


def per_job(directory: str, jobs: int) -> tuple[float, float]:
    """Microseconds of wall and CPU time per job (add, then drop)."""
    with SeenJids(os.path.join(directory, "seen.db")) as seen:
        wall, cpu = time.perf_counter(), time.process_time()
        for i in range(jobs):
            now = time.time()
            jid = f"20261203T000000.{i:06d}Z"
            header = Header(1, JOB, jid, "@master", "web1", int(now), int(now) + 60)
            seen.check_and_add(header, keep_until=now + KEEP, now=now, keep=BODY)
            seen.drop(jid)
        return (
            1e6 * (time.perf_counter() - wall) / jobs,
            1e6 * (time.process_time() - cpu) / jobs,
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    args = parser.parse_args()
    for base in ("/dev/shm", "/tmp"):
        with tempfile.TemporaryDirectory(dir=base) as d:
            wall, cpu = per_job(d, args.jobs)
        print(f"{base:9s} {args.jobs} jobs: {wall:7.1f} us wall, {cpu:7.1f} us CPU per job")
    return 0


if __name__ == "__main__":
    sys.exit(main())
