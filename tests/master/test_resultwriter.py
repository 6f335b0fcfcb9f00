"""The result writer (master/resultwriter.py): a batch of results, receipts and
heartbeat rows committed in one transaction on the writer's thread, with a
connection of its own, and its outcome posted back to the loop; on SQLite
and on a real PostgreSQL server, as the stores' tests."""

from __future__ import annotations

import concurrent.futures
import threading

import pytest

from safcm.common import codec
from safcm.common.errors import StoreError
from safcm.common.loop import Loop
from safcm.master.db import open_db, open_store
from safcm.master.facts import FactStore
from safcm.master.jobstore import HostState, HostStatus, JobStore, StoredResult
from safcm.master.keystore import KeyStore, write_seen
from safcm.master.resultwriter import Batch, ResultWriter
from tests.master.test_stores import job, parts, pub

# Seconds a test waits for the writer's answer.
SETTLE = 30.0


@pytest.fixture(params=["sqlite", "postgresql"])
def dbs(request, tmp_path):
    """Two connections to one migrated, empty database: the loop's, the writer's."""
    if request.param == "sqlite":
        opened = [open_db(str(tmp_path)), open_db(str(tmp_path), any_thread=True)]
    else:
        dsn = request.getfixturevalue("pg_dsn")
        opened = [open_store(str(tmp_path), dsn) for _ in range(2)]
    yield opened
    opened[0].close()  # the writer's is the writer's to close


def result(jid: str, host: str, status: str = HostStatus.OK) -> StoredResult:
    body = {"module": "ping", "status": "ok"}
    return StoredResult(jid, host, status, 0, body, 11.0, codec.pack(body))


def written(writer: ResultWriter, loop: Loop, batch: Batch) -> BaseException | None:
    """Write `batch`; returns the error the loop hears of, None if it is durable."""
    heard: list[tuple[concurrent.futures.Future[None], threading.Thread]] = []
    writer.write(batch, lambda f: heard.append((f, threading.current_thread())))
    deadline = loop.clock() + SETTLE
    while not heard and loop.clock() < deadline:
        loop.run_once(0.1)
    assert heard, "the writer did not answer"
    future, thread = heard[0]
    assert thread is threading.current_thread()  # on the loop's thread, this one
    return future.exception()


@pytest.fixture
def writing(dbs):
    """(loop's connection, writer, loop)."""
    ours, its = dbs
    loop = Loop()
    writer = ResultWriter(its, loop)
    yield ours, writer, loop
    writer.close()
    loop.close()


def test_results_receipts_and_heartbeat_rows_share_one_commit(writing):
    conn, writer, loop = writing
    jobs = JobStore(conn)
    jobs.create(job("J1"), parts("web1", "web2"))
    keys = KeyStore(conn)
    keys.enrol("web1", pub(b"s" * 32), now=1.0, auto_accept=True)
    keys.touch("web1", 5.0, seq=7)
    seen = keys.unwritten_seen()

    facts = [("web1", {"os_id": "debian"}, 11.0)]
    batch = Batch([("J1", "web2")], [result("J1", "web1")], seen, 12.0, facts)
    assert written(writer, loop, batch) is None
    assert FactStore(conn).all()["web1"].facts == {"os_id": "debian"}
    assert jobs.host_state("J1", "web1") is HostState.DONE
    assert jobs.result_of("J1", "web1") == {"module": "ping", "status": "ok"}
    assert jobs.host_state("J1", "web2") is HostState.RECEIVED
    assert KeyStore(conn).get("web1").seq == 7
    keys.touch("web1", 6.0, seq=8)  # a heartbeat while the rows were written
    keys.seen_written(seen)
    assert keys.dirty()  # its news is not written yet
    keys.seen_written(keys.unwritten_seen())
    assert not keys.dirty()


def test_a_batch_that_fails_stores_nothing_of_it(writing):
    conn, writer, loop = writing
    jobs = JobStore(conn)
    jobs.create(job("J1"), parts("web1", "web2", "web3"))
    keys = KeyStore(conn)
    keys.enrol("web1", pub(b"s" * 32), now=1.0, auto_accept=True)
    keys.touch("web1", 5.0, seq=7)
    # The database refuses the last row of the batch (a status it does not know).
    batch = Batch(
        [("J1", "web2")],
        [result("J1", "web1"), result("J1", "web3", "bogus")],
        keys.unwritten_seen(),
        12.0,
        [("web1", {"os_id": "debian"}, 11.0)],
    )
    assert isinstance(written(writer, loop, batch), StoreError)
    assert FactStore(conn).all() == {}
    assert [jobs.host_state("J1", h) for h in ("web1", "web2", "web3")] == [HostState.SENT] * 3
    assert KeyStore(conn).get("web1").seq == 0
    assert keys.dirty()  # written with a later batch


def test_a_heartbeat_row_written_late_never_lands_on_a_new_key_of_its_id(conn):
    # Taken on the loop, written by the writer a moment later: meanwhile the
    # administrator deleted the key and the host enrolled with a new one.
    keys = KeyStore(conn)
    keys.enrol("web1", pub(b"s" * 32), now=1.0, auto_accept=True)
    keys.touch("web1", 5.0, seq=900)
    rows = keys.unwritten_seen()
    keys.delete(["web1"])
    keys.enrol("web1", pub(b"n" * 32), now=6.0, auto_accept=True)
    write_seen(conn, rows)
    assert KeyStore(conn).get("web1").seq == 0  # its heartbeats from 1 on are taken
