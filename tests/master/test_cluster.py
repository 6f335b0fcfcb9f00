"""Masters sharing one PostgreSQL database: leases and taking over the open
jobs of a master that stopped (master/cluster.py), on a real server."""

from __future__ import annotations

import select

import psycopg
import pytest

from safcm.common import codec
from safcm.master.cluster import Cluster
from safcm.master.db import open_store
from safcm.master.jobstore import RESULTS_CHANNEL, HostStatus, JobStore, StoredResult
from tests.master.test_stores import job, parts


@pytest.fixture
def masters(pg_dsn, tmp_path):
    """Three masters' databases (connections) on one PostgreSQL database."""
    dbs = [open_store(str(tmp_path), pg_dsn) for _ in range(3)]
    yield dbs
    for db in dbs:
        db.close()


def expire(db, name: str) -> None:
    db.execute("UPDATE masters SET lease_until = 0 WHERE name = ?", (name,))


def test_the_open_jobs_of_a_master_whose_lease_ran_out_are_taken_over_once(masters):
    a_db, b_db, c_db = masters
    a, b, c = Cluster(a_db, "a:1"), Cluster(b_db, "b:1"), Cluster(c_db, "c:1")
    for m in (a, b, c):
        m.renew()
    a_jobs = JobStore(a_db, "a:1")
    a_jobs.create(job("J1"), parts("web1", "web2"))
    a_jobs.create(job("J2"), parts("web1"))
    body = {"module": "ping", "status": "ok"}
    a_jobs.record(
        [], [StoredResult("J2", "web1", HostStatus.OK, 0, body, 11.0, codec.pack(body))], now=11
    )
    # A is alive: nobody takes its jobs, and it alone restores them.
    assert b.take_over() == []
    assert [r.jid for r in JobStore(b_db, "b:1").open_hosts()] == []
    assert {r.host for r in a_jobs.open_hosts()} == {"web1", "web2"}

    expire(a_db, "a:1")
    # B takes the open job (J2 is finished: nothing to take), C finds nothing left.
    assert b.take_over() == ["J1"]
    assert c.take_over() == []
    b_jobs = JobStore(b_db, "b:1")
    assert {r.host for r in b_jobs.open_hosts()} == {"web1", "web2"}
    assert a_jobs.open_hosts() == []  # A, restarted, no longer runs it
    assert {r.host for r in b_jobs.open_hosts(["J1"])} == {"web1", "web2"}


def test_a_job_locked_by_one_taker_is_skipped_by_another(masters, pg_dsn):
    a_db, b_db, _ = masters
    JobStore(a_db, "a:1").create(job("J1"), parts("web1"))
    Cluster(a_db, "a:1").renew()
    expire(a_db, "a:1")
    with psycopg.connect(pg_dsn, autocommit=False) as holder:
        # Another master is in the middle of taking J1 over.
        holder.execute("SELECT jid FROM jobs WHERE jid = 'J1' FOR UPDATE")
        assert Cluster(b_db, "b:1").take_over() == []
    assert Cluster(b_db, "b:1").take_over() == ["J1"]


def test_a_stored_result_is_announced_and_stored_once(masters, pg_dsn):
    a_db, b_db, _ = masters
    a_jobs, b_jobs = JobStore(a_db, "a:1"), JobStore(b_db, "b:1")
    a_jobs.create(job("J1"), parts("web1"))
    listener = a_db.listener([RESULTS_CHANNEL])
    try:
        first = {"module": "ping", "status": "ok", "n": 1}
        second = {"module": "ping", "status": "ok", "n": 2}
        b_jobs.record(
            [],
            [StoredResult("J1", "web1", HostStatus.OK, 0, first, 11.0, codec.pack(first))],
            now=11,
        )
        # The same host's result reaching another master again is not stored twice.
        a_jobs.record(
            [],
            [StoredResult("J1", "web1", HostStatus.OK, 0, second, 12.0, codec.pack(second))],
            now=12,
        )
        assert a_jobs.result_of("J1", "web1")["n"] == 1
        select.select([listener], [], [], 10)
        assert ("safcm_results", "J1 web1") in listener.drain()
    finally:
        listener.close()
