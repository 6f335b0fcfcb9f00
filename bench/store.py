"""Benchmark the job store at scale: SQLite and PostgreSQL side by side.

    .venv/bin/python bench/store.py [--results 1000000] [--hosts-per-job 100]
                                    [--repeat 20] [--stores sqlite,postgresql]

Fills each store, through the real JobStore (create() and record(), as the
daemon calls them), with --results host results: jobs of --hosts-per-job
hosts each, 500 distinct hosts and 20 distinct targets in turn, a result of
a few hundred bytes per host. Then it prints, per store:

- `jobs list` query time (the store call the daemon makes for the control
  request, without the CLI's start-up): no filter, --host, --target,
  --since (the last tenth of the time span), and --status failed; median
  and slowest of --repeat calls, each returning the newest 50 jobs.
- results stored per second while a 1,000-host job's results arrive, in
  batches of 50 as the intake commits them (one transaction per batch).

PostgreSQL is a real server started for the run (tests/pgserver.py: Debian's
postgresql package, a temporary directory, 127.0.0.1). Issue 13's goal:
every `jobs list` query under 50 ms at 1,000,000 stored host results, on
both stores. The fill takes minutes; --results 100000 gives a quick look.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from safcm.common import codec
from safcm.common.ids import new_jid
from safcm.master.db import open_db, open_store
from safcm.master.jobcontent import JobParts
from safcm.master.jobstore import HostStatus, JobRecord, JobStore, StoredResult
from tests.pgserver import PgServer

DISTINCT_HOSTS = 500
DISTINCT_TARGETS = 20
# Results committed together, as the intake batches what one wake-up read.
RESULT_BATCH = 50
LIST_LIMIT = 50
# The job whose results are timed as they arrive.
TIMED_JOB_HOSTS = 1000


def result_body(host: str, jid: str, failed: bool) -> dict:
    change = {"path": "/etc/motd", "created": False, "diff": "-old\n+new\n", "outcome": "applied"}
    return {
        "jid": jid,
        "module": "files",
        "status": "failed" if failed else "changed",
        "started": 1.0,
        "finished": 2.0,
        "apply": {"dry_run": False, "changes": [change], "triggers": [], "failures": []},
        "ping": None,
        "error": None,
        "host": host,
    }


def stored(jid: str, host: str, now: float, failed: bool) -> StoredResult:
    body = result_body(host, jid, failed)
    status = HostStatus.FAILED if failed else HostStatus.CHANGED
    return StoredResult(jid, host, status, 1, body, now, codec.pack(body))


def parts_for(hosts: list[str], deadline: float) -> JobParts:
    parts = JobParts(deadline)
    body = {
        "module": "ping",
        "dry_run": False,
        "deadline": deadline,
        "files": [],
        "absent": [],
        "purge": [],
        "secrets": [],
    }
    for host in hosts:
        parts.add(host, {**body}, lambda _host: frozenset())
    return parts


def fill(store: JobStore, results: int, per_job: int, start: float) -> tuple[float, float]:
    """Store `results` host results; returns the time span the jobs cover."""
    jobs = results // per_job
    last = None
    t = start
    for n in range(jobs):
        t = start + n * 60.0  # a job a minute
        jid = new_jid(t, last)
        last = jid
        first = (n * per_job) % DISTINCT_HOSTS
        hosts = [f"host{(first + i) % DISTINCT_HOSTS:04d}" for i in range(per_job)]
        target = f"group{n % DISTINCT_TARGETS}"
        store.create(
            JobRecord(jid, t, t + 60, "root", target, "ping", False, None),
            parts_for(hosts, t + 60),
        )
        store.record(
            [],
            [stored(jid, h, t + 1, failed=(n % 97 == 0 and i == 0)) for i, h in enumerate(hosts)],
            now=t + 1,
        )
        if n % max(1, jobs // 20) == 0:
            print(f"    {n * per_job:>9} results stored", file=sys.stderr, flush=True)
    return start, t


def time_call(fn, repeat: int) -> tuple[float, float]:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), max(times)


def measure(name: str, store: JobStore, args: argparse.Namespace) -> dict:
    print(f"{name}: filling with {args.results} results ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    first, last = fill(store, args.results, args.hosts_per_job, 1_700_000_000.0)
    fill_s = time.perf_counter() - t0
    since = last - (last - first) / 10
    queries = {
        "no filter": lambda: store.list_jobs(limit=LIST_LIMIT),
        "--host": lambda: store.list_jobs(host="host0123", limit=LIST_LIMIT),
        "--target": lambda: store.list_jobs(target="group7", limit=LIST_LIMIT),
        "--since": lambda: store.list_jobs(since=since, limit=LIST_LIMIT),
        "--status failed": lambda: store.list_jobs(status="failed", limit=LIST_LIMIT),
    }
    figures = {"fill s": fill_s}
    for label, fn in queries.items():
        assert fn(), f"{name}: {label} found no job"
        figures[label] = time_call(fn, args.repeat)
    # A 1,000-host job whose results arrive in batches.
    t = last + 3600
    jid = new_jid(t, None)
    hosts = [f"big{i:05d}" for i in range(TIMED_JOB_HOSTS)]
    store.create(
        JobRecord(jid, t, t + 60, "root", "big*", "ping", False, None), parts_for(hosts, t)
    )
    t0 = time.perf_counter()
    for i in range(0, len(hosts), RESULT_BATCH):
        batch = hosts[i : i + RESULT_BATCH]
        store.record([], [stored(jid, h, t + 1, failed=False) for h in batch], now=t + 1)
    figures["results/s"] = len(hosts) / (time.perf_counter() - t0)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=int, default=1_000_000)
    parser.add_argument("--hosts-per-job", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--stores", default="sqlite,postgresql")
    args = parser.parse_args()
    stores = args.stores.split(",")
    measured: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="safcm-bench-store-") as tmp:
        if "sqlite" in stores:
            db = open_db(tmp)
            measured["sqlite"] = measure("sqlite", JobStore(db), args)
            db.close()
        if "postgresql" in stores:
            with PgServer.start() as pg:
                os.environ.update(pg.env())
                db = open_store(tmp, pg.dsn)
                measured["postgresql"] = measure("postgresql", JobStore(db), args)
                db.close()
    names = list(measured)
    print(f"job store with {args.results} host results ({args.hosts_per_job} per job)")
    print(f"{'':24}" + "".join(f"{n:>26}" for n in names))
    print(f"{'fill, s':24}" + "".join(f"{measured[n]['fill s']:>26.1f}" for n in names))
    for label in ("no filter", "--host", "--target", "--since", "--status failed"):
        row = "".join(
            f"{measured[n][label][0] * 1000:>12.2f} ms (max {measured[n][label][1] * 1000:6.2f})"
            for n in names
        )
        print(f"{'jobs list ' + label:24}{row}")
    print(f"{'results stored/s':24}" + "".join(f"{measured[n]['results/s']:>26.0f}" for n in names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
