"""The result writer: the commit of what minions return, off the event loop.

NOTE: a result is confirmed to its minion (RESULT_RECEIPT), which then
deletes its copy, only once the commit that holds it is durable; that is
the intake's side (master/intake.py), which hears it here.

The loop reads the return socket and gathers what arrives into a Batch:
results, receipts, hosts' facts, and the heartbeat rows of the key store,
taken on the loop so that they still share the one commit (one fsync). It
hands the batch here and goes on reading; the writer commits it on a thread of its
own with a database connection of its own (an SQLite connection may not
cross threads, and the loop's must stay free), then posts the outcome back
to the loop (call_soon_threadsafe). One batch is written at a time: the next
is gathered meanwhile, and handed over when this one is done.

A job's start (JobStore.start()) and "no response" (JobStore.no_response())
are written here too, in turn with the batches (call()), so that the loop
never waits for the lock.

The one lock SQLite has for writing is shared with the loop's own writes (a
"no response", a key change, a purge) and the prepare worker's (a job's
rows): the writer holds it for one transaction per batch, and waits for it
up to WORKER_BUSY_TIMEOUT_MS (master/db.py); the loop waits for it at most
BUSY_TIMEOUT_MS, as for any other writer. PostgreSQL works the same, with
row locks.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from safcm.common.loop import Loop
from safcm.master.db import Database, transaction
from safcm.master.facts import FactStore
from safcm.master.jobstore import JobStore, StoredResult
from safcm.master.keystore import SeenRow, write_seen


@dataclass(frozen=True)
class Batch:
    """What arrived since the last commit, written in one transaction."""

    receipts: list[tuple[str, str]]  # (jid, host)
    results: list[StoredResult]
    seen: list[SeenRow]  # heartbeat rows (KeyStore.unwritten_seen())
    now: float  # unix time: when the receipts count as received
    # Hosts' facts: (host, facts as reported, unix time they arrived).
    facts: list[tuple[str, dict[str, Any], float]] = field(default_factory=list)


class ResultWriter:
    def __init__(self, db: Database, loop: Loop) -> None:
        """`db`: a connection of the writer's own, that any thread may close
        (master/db.py open_store(..., any_thread=True))."""
        self.db = db
        self.jobs = JobStore(db)
        self.facts = FactStore(db)
        self.loop = loop
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="results"
        )

    def write(
        self, batch: Batch, then: Callable[[concurrent.futures.Future[None]], None]
    ) -> concurrent.futures.Future[None]:
        """Commit `batch` on the writer's thread, then call then(future) on the
        loop: future.exception() is None once the batch is durable, else why
        nothing of it was stored. The caller writes one batch at a time."""
        return self._submit(lambda: self._commit(batch), then)

    def call(
        self,
        write: Callable[[JobStore], None],
        then: Callable[[concurrent.futures.Future[None]], None],
    ) -> concurrent.futures.Future[None]:
        """A small write of the loop's (a job's start, "no response") on the
        writer's thread, in turn with the batches: write(jobs) states its own
        transaction where it has several statements. Then then(future) on
        the loop, as for write()."""
        return self._submit(lambda: write(self.jobs), then)

    def _submit(
        self, work: Callable[[], None], then: Callable[[concurrent.futures.Future[None]], None]
    ) -> concurrent.futures.Future[None]:
        future = self._pool.submit(work)

        def done(f: concurrent.futures.Future[None]) -> None:
            with contextlib.suppress(OSError, ValueError):  # the loop has closed: stopping
                self.loop.call_soon_threadsafe(lambda: then(f))

        future.add_done_callback(done)
        return future

    def _commit(self, batch: Batch) -> None:
        with transaction(self.db):
            self.jobs.record_rows(batch.receipts, batch.results, now=batch.now)
            write_seen(self.db, batch.seen)
            for host, facts, when in batch.facts:
                self.facts.put(host, facts, now=when)

    def close(self) -> None:
        """Wait for the batch being written, if any, then close the connection."""
        self._pool.shutdown(wait=True)
        self.db.close()
