"""Runs: the RUN control request, from the CLI's target to a started job, and
the job's results streamed back to the CLI connections that wait for it.

A job is compiled for every targeted host, built into the parts its
envelopes are sealed from (master/jobcontent.py) and stored (master/jobstore.py)
before the first publish: all of that in the prepare worker, a process with
the database connection of its own (master/prepworker.py), which the
prepare thread here talks to, so the loop goes on reading heartbeats,
receipts and results; the loop decides the job's jid and deadline before,
and starts it after (_start_job(), _stored()). Until then the stored job is
there for no one, so nothing about it can arrive and be misfiled. The
CLI then hears RUN_STARTED (with what the master knows that will delay a
host), RUN_HOST_RESULT for each host as it answers or is "no response",
RUN_PROGRESS when a host still working moves its deadline, and RUN_DONE. When
each of these happens is decided by master/lifecycle.py (answered, progress,
finished).

`run --batch` (master/batch.py decides which hosts start when): every host
is compiled up front, then each batch is a job of its own, started by
_start_job() as a whole run is, once every host of the batch before has
answered. The CLI hears a RUN_STARTED per batch, the results as they come,
and one RUN_DONE at the end over all batches, with the hosts not run.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from safcm.common.crypto import KeyPair
from safcm.common.errors import SafcmError, StoreError
from safcm.common.protocol import (
    NO_RESPONSE,
    Message,
    MsgType,
    encode_host_result,
    encode_plain,
    encode_stored_host_result,
    new_jid,
)
from safcm.master import targets
from safcm.master.batch import BatchSize, Rollout
from safcm.master.cluster import held_elsewhere
from safcm.master.control import ControlConnection
from safcm.master.jobcontent import JobParts
from safcm.master.jobstore import Answer, JobRecord, JobStore
from safcm.master.keystore import KeyStore, MinionKey, RefusedKey
from safcm.master.lifecycle import Lifecycles
from safcm.master.outcomes import HostStatus
from safcm.master.peers import Peers
from safcm.master.prepworker import JobOrder, PrepareWorker
from safcm.master.publish import Publisher
from safcm.master.render import Tally
from safcm.master.resultwriter import ResultWriter
from safcm.master.settings import MasterSettings

log = logging.getLogger("safcm-master")

# The outcomes that count towards --batch-fail.
FAILURES = (HostStatus.FAILED, NO_RESPONSE)
# Why a host of a rolling run was not run (RUN_DONE "not_run").
NOT_RUN_FAILURE_LIMIT = "not run: the batch failure limit was reached"

# Seconds the prepare thread waits for the loop to take its turn between two
# transactions of a job's rows (_loop_turn()): a loop that does not answer
# is stopping, or busy enough that waiting longer helps no one.
LOOP_TURN_TIMEOUT = 1.0


@dataclass(frozen=True)
class Submission:
    """One job on its way from the RUN to its start (Runs.submit): who asked,
    what it is and to whom it goes."""

    conn: ControlConnection
    record: JobRecord
    order: JobOrder
    hosts: list[str]
    batch: Rolling | None  # the rollout it is one batch of


@dataclass(frozen=True)
class Stored:
    """A job built and written by the prepare worker, ready to start (_store())."""

    parts: JobParts
    started: bytes  # its RUN_STARTED, encoded
    building: float  # seconds spent building its parts
    storing: float  # and writing its rows


@dataclass
class Rolling:
    """A run in rolling batches (`run --batch`): one job per batch, one CLI
    for all of them. Its CLI leaving is the operator's brake: the running
    batch completes, no further one starts."""

    conn: ControlConnection
    order: JobOrder
    rollout: Rollout
    jids: list[str] = field(default_factory=list)  # of the batches started
    tally: Tally = field(default_factory=Tally)  # over every batch

    def numbering(self) -> dict[str, int]:
        """RUN_STARTED's "batch": which batch of how many has just started."""
        return {"number": self.rollout.started, "of": len(self.rollout.batches)}


@dataclass
class Run:
    """A job some CLI waits on, and how its hosts have answered so far."""

    jid: str
    hosts: list[str]
    watchers: list[ControlConnection] = field(default_factory=list)
    tally: Tally = field(default_factory=Tally)
    batch: Rolling | None = None  # the rollout this job is one batch of


class Runs:
    def __init__(
        self,
        settings: MasterSettings,
        keys: KeyPair,
        peers: Peers,
        keystore: KeyStore,
        jobs: JobStore,
        publisher: Publisher,
        lifecycle: Lifecycles,
        clock: Callable[[], float],
        defer: Callable[[Callable[[], None]], object],
        report: Callable[[ControlConnection, str, Exception], None],
        pool: concurrent.futures.Executor,
        worker: PrepareWorker,
        writer: ResultWriter,
    ) -> None:
        self.settings = settings
        self.keys = keys
        self.peers = peers
        self.keystore = keystore
        self.jobs = jobs
        self.publisher = publisher
        self.lifecycle = lifecycle
        self.clock = clock
        self.defer = defer  # call it soon, from the loop, not from inside this call
        self.report = report  # a failed request's answer, as for any control request
        self.pool = pool  # the prepare thread, which talks to the worker (one request at a time)
        self.worker = worker
        self.writer = writer  # writes a job's start off the loop
        self.stopping = threading.Event()  # the daemon is stopping: store nothing more
        self.runs: dict[str, Run] = {}
        self.last_jid = jobs.last_jid()

    def on_run(self, conn: ControlConnection, msg: Message) -> None:
        """Loading, targeting and compiling run in the prepare worker, so the
        loop goes on reading heartbeats, receipts and results meanwhile; the
        job is stored and started back on the loop (_prepared())."""
        # The longest the loop is held from here to the job's end is logged
        # when it finishes (bench/fanout.py prints it); this call counts too.
        self.peers.loop.reset_longest_call()
        body = msg.body
        target = targets.normalise(body["target"], body["group"])
        # The key store is the loop's: the worker gets a snapshot of it.
        states = {k.id: k.state for k in self.keystore.all()}
        facts = dict(self.peers.facts)  # so are the hosts' facts (each value is never changed)
        log.debug("preparing a run of %s for %s (by %s)", body["module"], target, conn.user)
        future = self.pool.submit(self.worker.prepare, body, target, states, facts)
        self._post_back(future, lambda f: self._prepared(conn, body, f))

    def _prepared(
        self,
        conn: ControlConnection,
        body: dict[str, Any],
        future: concurrent.futures.Future[tuple[targets.Resolved, JobOrder]],
    ) -> None:
        """Back on the loop: store and start the prepared job, or report why not."""
        try:
            resolved, order = future.result()
        except Exception as e:
            self.report(conn, "RUN", e)
            return
        if conn.closed:
            self._forget(order)
            log.info(
                "a run by %s was withdrawn before its job started; nothing was sent", conn.user
            )
            return
        try:
            self._start(conn, body, resolved, order)
        except Exception as e:
            self._forget(order)
            self.report(conn, "RUN", e)

    def _start(
        self,
        conn: ControlConnection,
        body: dict[str, Any],
        resolved: targets.Resolved,
        order: JobOrder,
    ) -> None:
        batch = body.get("batch")
        if batch is None:
            self._start_job(conn, order, resolved)
            return
        # Every host was compiled (_prepare), before any batch starts: a repository
        # error stops the run untouched, and every batch gets this configuration.
        size = BatchSize(batch["size"], batch["percent"]).hosts(len(resolved.hosts))
        rolling = Rolling(conn, order, Rollout(resolved.hosts, size, body.get("batch_fail")))
        self._next_batch(rolling, resolved.skipped)  # a failure here is the RUN's
        conn.on_close.append(lambda c: self._braked(rolling))

    def _start_job(
        self,
        conn: ControlConnection,
        order: JobOrder,
        resolved: targets.Resolved,
        batch: Rolling | None = None,
    ) -> None:
        """Create, store and publish one job of `order` to `resolved.hosts`,
        and tell `conn` (RUN_STARTED): a whole run, or one batch of one.

        Its jid and deadline are decided here, on the loop; its parts are
        built and its rows written in the prepare worker (_store()), and it
        starts back on the loop (_stored()), where a failure is answered."""
        now = self.clock()
        jid = self.last_jid = new_jid(now, self.last_jid)
        record = JobRecord(
            jid,
            now,
            now + order.timeout,
            conn.user,
            order.target,
            order.module,
            order.dry_run,
            order.git_commit,
        )
        # Accepted, but enrolled before CURVE: the worker gets this from the key store.
        unsealable = self.keystore.without_transport_key()
        hosts = resolved.hosts
        started = {
            "jid": jid,
            "hosts": hosts,
            "skipped": [{"host": h, "reason": r} for h, r in resolved.skipped.items()],
            **({} if batch is None else {"batch": batch.numbering()}),
        }
        connected = {h: p.busy for h, p in self.peers.presence.items() if self.peers.connected(h)}
        if self.keystore.shared:
            # A cluster: a minion another master heard lately is connected
            # there (master/cluster.py), and reached through it.
            self.keystore.refresh_seen()
            now = self.clock()
            for h in hosts:
                if h not in connected and held_elsewhere(self.keystore.get(h), now):
                    connected[h] = None
        snapshot = HostSnapshot(
            {h: self.keystore.get(h) for h in hosts},
            {claim.id: claim for claim in self.keystore.refused()},  # the latest of each id
            connected,
            frozenset(h for h in hosts if self.peers.deaf(h)),
            self.settings.publish_port,
        )
        log.debug("job %s: storing it for %d hosts", jid, len(hosts))
        future = self.pool.submit(self._store, record, order, hosts, unsealable, started, snapshot)
        submission = Submission(conn, record, order, hosts, batch)
        self._post_back(future, lambda f: self._stored(submission, f))

    def _post_back(
        self, future: concurrent.futures.Future[Any], then: Callable[[Any], None]
    ) -> None:
        """Call then(future) on the loop once the prepare thread is done with it."""
        loop = self.peers.loop

        def done(f: concurrent.futures.Future[Any]) -> None:
            with contextlib.suppress(OSError, ValueError):  # the loop has closed: shutting down
                loop.call_soon_threadsafe(lambda: then(f))

        future.add_done_callback(done)

    def _store(
        self,
        record: JobRecord,
        order: JobOrder,
        hosts: list[str],
        unsealable: set[str],
        started: dict[str, Any],
        snapshot: HostSnapshot,
    ) -> Stored:
        """On the prepare thread: RUN_STARTED (`started`, with the notes from
        `snapshot`), encoded, then the worker builds, checks and writes the
        job, not yet started."""
        notes = [{"host": h, "note": n} for h in hosts if (n := host_note(h, snapshot)) is not None]
        message = encode_plain(MsgType.RUN_STARTED, {**started, "notes": notes})
        parts, building, storing = self.worker.store(
            order, record, hosts, unsealable, self._loop_turn
        )
        return Stored(parts, message, building, storing)

    def _loop_turn(self) -> bool:
        """Wait (on the prepare thread) until the loop has had a turn, so that
        writes it waits to make get the database between two of the worker's;
        False once the daemon stops (the loop takes no more turns)."""
        if self.stopping.is_set():
            return False
        turned = threading.Event()
        with contextlib.suppress(OSError, ValueError):  # the loop has closed: shutting down
            self.peers.loop.call_soon_threadsafe(turned.set)
            turned.wait(LOOP_TURN_TIMEOUT)
        return True

    def _stored(self, sub: Submission, future: concurrent.futures.Future[Stored]) -> None:
        """Back on the loop: start the stored job, or answer why it could not be."""
        jid, batch = sub.record.jid, sub.batch
        try:
            stored = future.result()
        except Exception as e:
            self._not_started(sub, e)
            return
        if sub.conn.closed and (batch is None or batch.rollout.started == 1):
            log.info(
                "a run by %s was withdrawn before its job started; nothing was sent", sub.conn.user
            )
            self._forget(sub.order)
            self._discard(jid, sub.hosts)
            return
        # From its start the job is there for everyone; it is published once
        # that is written. Written by the result writer: on the loop, the
        # write would wait for the lock behind a batch's commit.
        self.writer.call(
            lambda jobs: jobs.start(jid),
            lambda f: self._started(sub, stored, f),
        )

    def _started(
        self, sub: Submission, stored: Stored, future: concurrent.futures.Future[None]
    ) -> None:
        """Back on the loop, the job's start written: publish it, or answer
        why it could not start."""
        conn, record, hosts, batch = sub.conn, sub.record, sub.hosts, sub.batch
        jid = record.jid
        error = future.exception()
        if error is not None:
            if not isinstance(error, Exception):
                raise error
            self._discard(jid, hosts)
            self._not_started(sub, error)
            return
        held, where = self.peers.loop.longest_call
        log.info(
            "job %s: %s%s on %s by %s; %d hosts, compiled in %.2f s, built in %.2f s, stored "
            "in %.2f s; the event loop was held at most %.1f ms at a time since the request (%s)",
            jid,
            record.module,
            " (dry run)" if record.dry_run else "",
            record.target,
            conn.user,
            len(hosts),
            sub.order.compiling,
            stored.building,
            stored.storing,
            held * 1000,
            where or "-",
        )
        conn.send_encoded(stored.started)  # before any result of it
        run = Run(jid, hosts, [conn], batch=batch)
        self.runs[jid] = run
        conn.on_close.append(lambda c: run.watchers.remove(c) if c in run.watchers else None)
        self.publisher.open_jobs[jid] = stored.parts
        # Published at once, START_SLICE hosts a loop turn (master/lifecycle.py).
        self.lifecycle.start(jid, hosts, record.deadline, self.clock())
        if batch is not None:
            batch.jids.append(jid)

    def _not_started(self, sub: Submission, error: Exception) -> None:
        self._forget(sub.order)  # no further batch of it starts either
        if sub.batch is None or sub.batch.rollout.started == 1:  # nothing started: the RUN fails
            self.report(sub.conn, "RUN", error)
        else:
            self._batch_failed(sub.batch, sub.hosts, error)

    def _discard(self, jid: str, hosts: list[str]) -> None:
        """Remove a stored job that will not start, in the prepare worker."""

        def failed(f: concurrent.futures.Future[None]) -> None:
            if (e := f.exception()) is not None:
                log.error("job %s, never started, is removed at the next start: %s", jid, e)

        future = self._submit(self.worker.discard, jid, hosts, self._loop_turn)
        if future is not None:
            self._post_back(future, failed)

    def _forget(self, order: JobOrder) -> None:
        """The hosts of `order` not stored yet never will be: the worker frees
        what it compiled for them."""

        def failed(f: concurrent.futures.Future[None]) -> None:
            if (e := f.exception()) is not None:
                log.debug("the prepare worker did not forget order %d: %s", order.kept, e)

        future = self._submit(self.worker.forget, order)
        if future is not None:
            self._post_back(future, failed)

    def _submit(
        self, call: Callable[..., None], *args: Any
    ) -> concurrent.futures.Future[None] | None:
        """call(*args) on the prepare thread; None once the daemon stops."""
        if self.stopping.is_set():
            return None
        return self.pool.submit(call, *args)

    def stop(self) -> None:
        """The daemon stops: a job being stored is left there unstarted (the
        next start removes it), the worker is ended, and the prepare thread
        ends soon."""
        self.stopping.set()
        self.worker.stop()

    def close(self) -> None:
        """After the prepare thread has ended: wait for the worker's end."""
        self.worker.close()

    def answered(self, jid: str, host: str, answer: Answer | None) -> None:
        run = self.runs.get(jid)
        if run is None:
            return
        counted = NO_RESPONSE if answer is None else answer.status
        run.tally.add(counted)
        if run.batch is not None:
            run.batch.tally.add(counted)
            # A failed result and no response both count towards --batch-fail.
            run.batch.rollout.answered(host, counted not in FAILURES)
        message = None
        for conn in list(run.watchers):
            if answer is not None and conn.behind():
                # Read back from the store when the CLI has caught up: what
                # it has not read yet stays bounded (control.DEFER_BYTES).
                conn.send_later(lambda: self._stored_result(jid, host))
                continue
            if message is None:
                message = (
                    encode_host_result(jid, host, None)
                    if answer is None
                    else encode_stored_host_result(jid, host, answer.packed)
                )
            conn.send_encoded(message)

    def _stored_result(self, jid: str, host: str) -> bytes:
        """The RUN_HOST_RESULT of (jid, host), read back from the job store
        (results are stored before they are answered)."""
        answer = self.jobs.answer_of(jid, host)
        if answer is None:
            raise StoreError(
                f"job {jid}: the result of {host} is no longer in the job history "
                "(keep_jobs removed it before this command read it)"
            )
        return encode_stored_host_result(jid, host, answer.packed)

    def progress(self, jid: str, host: str, until: float) -> None:
        run = self.runs.get(jid)
        if run is not None:
            for conn in list(run.watchers):
                # Only a wait's extension: a CLI behind has more to read.
                if not conn.behind():
                    conn.send(MsgType.RUN_PROGRESS, {"jid": jid, "host": host, "until": until})

    def finished(self, jid: str) -> None:
        run = self.runs.pop(jid, None)
        if run is None:
            return
        if run.batch is not None:
            # Not from inside the lifecycle's call: the next batch is a new job.
            rolling = run.batch
            self.defer(lambda: self._next_batch(rolling))
            return
        summary = {**run.tally.as_dict(), "targeted": len(run.hosts)}
        for conn in list(run.watchers):
            conn.send(MsgType.RUN_DONE, {"jid": jid, "summary": summary})
            conn.finish()

    # ---- rolling batches ----

    def _next_batch(self, rolling: Rolling, skipped: dict[str, str] | None = None) -> None:
        """Start the rollout's next batch, or end the run when none is left
        to start. `skipped`: the hosts the target matched but that are not
        accepted, told with the first batch."""
        rollout = rolling.rollout
        hosts = rollout.next_batch()
        if hosts:  # a failure to start it is answered by _stored()
            self._start_job(
                rolling.conn, rolling.order, targets.Resolved(hosts, skipped or {}), rolling
            )
            return
        if not rollout.finished:
            return
        self._forget(rolling.order)  # the hosts not run, compiled for nothing
        not_run = rollout.not_run
        if rolling.conn.closed:
            if not_run:
                log.info(
                    "run of jobs %s: stopped, as no CLI watches it; %d hosts not run",
                    ", ".join(rolling.jids),
                    len(not_run),
                )
            return
        if not_run:
            log.info(
                "run of jobs %s: stopped after %d failed hosts (--batch-fail %s); %d hosts not run",
                ", ".join(rolling.jids),
                rollout.failed,
                rollout.fail_limit,
                len(not_run),
            )
        summary = {
            **rolling.tally.as_dict(),
            "targeted": sum(len(b) for b in rollout.batches),
            "not_run": len(not_run),
        }
        rolling.conn.send(
            MsgType.RUN_DONE,
            {
                "jid": rolling.jids[-1],
                "summary": summary,
                "not_run": [{"host": h, "reason": NOT_RUN_FAILURE_LIMIT} for h in not_run],
            },
        )
        rolling.conn.finish()

    def _braked(self, rolling: Rolling) -> None:
        """The rollout's CLI left (Ctrl-C): the running batch completes, and
        no further batch starts."""
        rollout = rolling.rollout
        if rollout.finished or rollout.halted:
            return
        rollout.halt()
        if not rollout.not_run:
            return  # the last batch runs: nothing is held back
        log.info(
            "run of jobs %s: its CLI left; batch %d of %d completes, %d hosts will not be run",
            ", ".join(rolling.jids),
            rollout.started,
            len(rollout.batches),
            len(rollout.not_run),
        )

    def _batch_failed(self, rolling: Rolling, hosts: list[str], error: Exception) -> None:
        """A batch after the first could not start (a database error, a host
        whose key changed): the run ends there, and says so."""
        rollout = rolling.rollout
        rollout.halt()
        log.error(
            "run of jobs %s: batch %d of %d could not start: %s; %d hosts not run",
            ", ".join(rolling.jids),
            rollout.started,
            len(rollout.batches),
            error,
            len(hosts) + len(rollout.not_run),
            exc_info=not isinstance(error, SafcmError),  # a bug: its trace
        )
        rolling.conn.error(
            "failed",
            f"batch {rollout.started} of {len(rollout.batches)} could not start ({error}); "
            "it and the batches after it were not run",
        )


@dataclass(frozen=True)
class HostSnapshot:
    """What the master knows of a job's hosts as it starts the job, taken on
    the loop for the prepare thread (RUN_STARTED's notes, host_note())."""

    keys: dict[str, MinionKey | None]
    claims: dict[str, RefusedKey]  # the latest other key that claimed each id
    connected: dict[str, str | None]  # connected hosts: the job each said it is busy with
    # Connected here, but without a subscription on the publish socket
    # (Peers.deaf()), and that socket's port.
    deaf: frozenset[str] = frozenset()
    publish_port: int = 0


def host_note(host: str, facts: HostSnapshot) -> str | None:
    """What the master knows that will delay or stop a job for `host`: said
    at submit time, so an administrator need not wait for the deadline to
    learn it (the job still waits for the host until then)."""
    key = facts.keys.get(host)
    claim = facts.claims.get(host)
    if key is not None and claim is not None and (key.last_seen or 0.0) < claim.last_seen:
        return (
            f"presents a new key ({claim.fingerprint}): compare fingerprints, "
            f"then 'safcm-master keys accept {host} --fingerprint FP'"
        )
    if host not in facts.connected:
        seen = (
            "never seen"
            if key is None or key.last_seen is None
            else "last seen " + time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(key.last_seen))
        )
        return f"not connected ({seen}); the job waits for it until its deadline"
    if host in facts.deaf:
        return (
            f"connected, but not subscribed to the publish socket (port {facts.publish_port}): "
            "no job reaches it until it is; can it reach that port? The job waits for it "
            "until its deadline"
        )
    busy = facts.connected[host]
    if busy is not None:
        return f"busy with job {busy}; this job is queued behind it"
    return None
