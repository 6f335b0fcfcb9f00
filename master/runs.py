"""Runs: the RUN control request, from the CLI's target to a started job, and
the job's results streamed back to the CLI connections that wait for it.

A job is compiled for every targeted host, built into the parts its
envelopes are sealed from (master/jobcontent.py) and stored (master/jobstore.py)
before the first publish: all of that on the prepare thread, with the
database connection of its own, so the loop goes on reading heartbeats,
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
import gc
import logging
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from safcm.common.crypto import MAX_ENVELOPE_OVERHEAD, KeyPair
from safcm.common.errors import (
    ConfigError,
    ProtocolError,
    SafcmError,
    StoreError,
    UsageError,
)
from safcm.common.protocol import (
    MAX_JOB_BYTES,
    NO_RESPONSE,
    Message,
    MsgType,
    check_body,
    encode_plain,
    new_jid,
)
from safcm.master import modules, repocache, targets
from safcm.master.batch import BatchSize, Rollout
from safcm.master.cluster import held_elsewhere
from safcm.master.control import ControlConnection
from safcm.master.db import WORKER_BUSY_TIMEOUT_MS, open_store
from safcm.master.facts import HostFacts
from safcm.master.jobcontent import JobParts
from safcm.master.jobstore import JobRecord, JobStore, Plan
from safcm.master.keystore import KeyState, KeyStore, MinionKey, RefusedKey
from safcm.master.lifecycle import Lifecycles
from safcm.master.outcomes import HostStatus, outcome
from safcm.master.peers import Peers
from safcm.master.publish import Publisher
from safcm.master.render import Tally
from safcm.master.settings import MasterSettings

log = logging.getLogger("safcm-master")

# The outcomes that count towards --batch-fail.
FAILURES = (HostStatus.FAILED, NO_RESPONSE)
# Why a host of a rolling run was not run (RUN_DONE "not_run").
NOT_RUN_FAILURE_LIMIT = "not run: the batch failure limit was reached"

# Seconds `git rev-parse` may take to name the repository's commit.
GIT_TIMEOUT = 5.0
# Seconds the prepare thread waits for the loop to take its turn between two
# transactions of a job's rows (_loop_turn()): a loop that does not answer
# is stopping, or busy enough that waiting longer helps no one.
LOOP_TURN_TIMEOUT = 1.0


@dataclass(frozen=True)
class JobOrder:
    """What a RUN asks for, compiled: the same for each batch of a run."""

    module: str
    dry_run: bool
    timeout: float  # seconds, from each job's start
    target: str  # normalised, as the history keeps it
    steps: list[str]  # the modules it runs: itself, or sync's steps
    options: Any  # the RUN's options for its module (cmd: the argv), or None
    fields: dict[str, dict[str, Any]]  # by host: its modules' job fields
    git_commit: str | None  # the repository's, when it was compiled
    compiling: float = 0.0  # seconds spent loading, targeting, compiling and in git


@dataclass(frozen=True)
class Stored:
    """A job built and written by the prepare thread, ready to start (_store())."""

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
        self.pool = pool  # the prepare thread (on_run, _store)
        self.own_jobs: JobStore | None = None  # the prepare thread's (_own_jobs())
        self.stopping = threading.Event()  # the daemon is stopping: store nothing more
        self.runs: dict[str, Run] = {}
        self.last_jid = jobs.last_jid()

    def on_run(self, conn: ControlConnection, msg: Message) -> None:
        """Loading, targeting and compiling run on the prepare thread, so the
        loop goes on reading heartbeats, receipts and results meanwhile; the
        job is stored and started back on the loop (_prepared())."""
        # The longest the loop is held from here to the job's end is logged
        # when it finishes (bench/fanout.py prints it); this call counts too.
        self.peers.loop.reset_longest_call()
        body = msg.body
        target = targets.normalise(body["target"], body["group"])
        # The key store is the loop's: the thread gets a snapshot of it.
        states = {k.id: k.state for k in self.keystore.all()}
        facts = dict(self.peers.facts)  # so are the hosts' facts (each value is never changed)
        log.debug("preparing a run of %s for %s (by %s)", body["module"], target, conn.user)
        future = self.pool.submit(self._prepare, body, target, states, facts)
        self._post_back(future, lambda f: self._prepared(conn, body, f))

    def _prepare(
        self,
        body: dict[str, Any],
        target: str,
        states: dict[str, KeyState],
        facts: dict[str, HostFacts],
    ) -> tuple[targets.Resolved, JobOrder]:
        """On the prepare thread: no database, no sockets."""
        begun = time.monotonic()
        with _collector_paused():
            return self._compile(body, target, states, facts, begun)

    def _compile(
        self,
        body: dict[str, Any],
        target: str,
        states: dict[str, KeyState],
        facts: dict[str, HostFacts],
        begun: float,
    ) -> tuple[targets.Resolved, JobOrder]:
        module = body["module"]
        options = body.get("options")
        timeout = body["timeout"] or self.settings.job_timeout
        steps = modules.steps_of(module)
        if not steps:
            raise UsageError(f"{module}: no registered module takes part in it")
        parts = [modules.modules()[name] for name in steps]
        # ping sends no files: a problem in a group's files must not stop it.
        targets_only = not any(part.reads_repository for part in parts)
        repo = repocache.load(self.settings.config_dir, targets_only=targets_only)
        resolved = targets.resolve(
            target,
            hosts=repo.hosts,
            group_members=_members(repo, facts),
            accepted={i for i, state in states.items() if state is KeyState.ACCEPTED},
            key_states=states.get,
        )
        fields: dict[str, dict[str, Any]] = {host: {} for host in resolved.hosts}
        request = modules.Request(options, timeout, body["dry_run"], facts)
        for part in parts:
            if part.compile is not None:
                for host, host_fields in part.compile(repo, resolved.hosts, request).items():
                    fields[host].update(host_fields)
        if module == modules.SYNC:
            for host_fields in fields.values():
                host_fields["steps"] = steps
        git_commit = _git_commit(self.settings.config_dir)
        # A module may need longer than the timeout (cmd: to report a command
        # killed at it); sync: the timeout.
        run_module = modules.modules().get(module)
        seconds = timeout if run_module is None else run_module.job_seconds(request)
        compiling = time.monotonic() - begun
        order = JobOrder(
            module, body["dry_run"], seconds, target, steps, options, fields, git_commit, compiling
        )
        return resolved, order

    def _prepared(
        self,
        conn: ControlConnection,
        body: dict[str, Any],
        future: concurrent.futures.Future[tuple[targets.Resolved, JobOrder]],
    ) -> None:
        """Back on the loop: store and start the prepared job, or report why not."""
        if conn.closed:
            gc.unfreeze()  # no _store() will (_collector_paused())
            log.info(
                "a run by %s was withdrawn before its job started; nothing was sent", conn.user
            )
            return
        try:
            self._start(conn, body, *future.result())
        except Exception as e:
            gc.unfreeze()
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
        built and its rows written on the prepare thread (_store()), and it
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
        # Accepted, but enrolled before CURVE: the thread gets this from the key store.
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
        )
        log.debug("job %s: storing it for %d hosts", jid, len(hosts))
        future = self.pool.submit(self._store, record, order, hosts, unsealable, started, snapshot)
        # Not `order` itself: its last reference is the prepare thread's, which
        # then frees its configs (a million objects for 10,000 hosts x 100
        # files: a pause of its own), not the loop.
        compiling = order.compiling
        self._post_back(future, lambda f: self._stored(conn, record, compiling, hosts, batch, f))

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
        """On the prepare thread, with its own database connection: what each
        host's envelope is sealed from, checked, and written, not yet started;
        and RUN_STARTED (`started`, with the notes from `snapshot`), encoded."""
        try:
            return self._build_and_store(record, order, hosts, unsealable, started, snapshot)
        finally:
            gc.unfreeze()  # what _prepare() froze: its configs are freed by now

    def _build_and_store(
        self,
        record: JobRecord,
        order: JobOrder,
        hosts: list[str],
        unsealable: set[str],
        started: dict[str, Any],
        snapshot: HostSnapshot,
    ) -> Stored:
        begun = time.monotonic()
        for host in hosts:
            if host in unsealable:
                raise SafcmError(f"host {host}: its key has no transport key; it must enrol again")
        jobs = self._own_jobs()
        # The content each host has already is left out of its envelope
        # (master/jobcontent.py); envelopes are sealed when published.
        files = "files" in order.steps
        known = jobs.known_content(hosts) if files else {}
        parts = JobParts(record.deadline)
        plans = {}
        checked: set[str] = set()  # manifests whose full body was checked
        for host in hosts:
            job = {"module": order.module, "dry_run": order.dry_run, "deadline": record.deadline}
            # Taken out: each host's fields are freed here, a hundred objects at
            # a time, not all at once (every thread would wait); no later batch
            # has this host.
            job.update(order.fields.pop(host, {}))
            plans[host] = Plan.of_job(job)
            part = parts.add(host, job, lambda h: known.get(h, frozenset()))
            if part.manifest not in checked:  # hosts with one manifest have one full body
                _check_job(host, job)
                checked.add(part.manifest)
            if (size := parts.size(host)) > MAX_JOB_BYTES - MAX_ENVELOPE_OVERHEAD:
                raise ConfigError(
                    f"host {host}: its job cannot be sent: about {size} bytes, more than "
                    f"{MAX_JOB_BYTES - MAX_ENVELOPE_OVERHEAD}"
                )
        notes = [{"host": h, "note": n} for h in hosts if (n := host_note(h, snapshot)) is not None]
        message = encode_plain(MsgType.RUN_STARTED, {**started, "notes": notes})
        built = time.monotonic()
        jobs.store(record, parts, plans, between=self._loop_turn)
        return Stored(parts, message, built - begun, time.monotonic() - built)

    def _own_jobs(self) -> JobStore:
        """The prepare thread's job store, on a connection of its own (WAL:
        the loop reads meanwhile, and writes between its transactions)."""
        if self.own_jobs is None:
            self.own_jobs = JobStore(
                open_store(
                    self.settings.state_dir,
                    self.settings.store,
                    busy_timeout_ms=WORKER_BUSY_TIMEOUT_MS,
                    any_thread=True,  # closed by close(), once the thread has ended
                ),
                self.jobs.owner,  # the daemon's: this master's name in a cluster
            )
        return self.own_jobs

    def _loop_turn(self) -> None:
        """Wait (on the prepare thread) until the loop has had a turn, so that
        writes it waits to make get the database between two of ours; a
        SafcmError once the daemon stops (the loop takes no more turns)."""
        if self.stopping.is_set():
            raise SafcmError("the master is stopping; the job was not started")
        turned = threading.Event()
        with contextlib.suppress(OSError, ValueError):  # the loop has closed: shutting down
            self.peers.loop.call_soon_threadsafe(turned.set)
            turned.wait(LOOP_TURN_TIMEOUT)

    def _stored(
        self,
        conn: ControlConnection,
        record: JobRecord,
        compiling: float,
        hosts: list[str],
        batch: Rolling | None,
        future: concurrent.futures.Future[Stored],
    ) -> None:
        """Back on the loop: start the stored job, or answer why it could not be."""
        jid = record.jid
        try:
            stored = future.result()
        except Exception as e:
            self._not_started(conn, batch, hosts, e)
            return
        if conn.closed and (batch is None or batch.rollout.started == 1):
            log.info(
                "a run by %s was withdrawn before its job started; nothing was sent", conn.user
            )
            self._discard(jid, hosts)
            return
        try:
            self.jobs.start(jid)  # from here the job is there for everyone: started below
        except StoreError as e:
            self._discard(jid, hosts)
            self._not_started(conn, batch, hosts, e)
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
            compiling,
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

    def _not_started(
        self, conn: ControlConnection, batch: Rolling | None, hosts: list[str], error: Exception
    ) -> None:
        if batch is None or batch.rollout.started == 1:  # nothing started: the RUN fails
            self.report(conn, "RUN", error)
        else:
            self._batch_failed(batch, hosts, error)

    def _discard(self, jid: str, hosts: list[str]) -> None:
        """Remove a stored job that will not start, on the prepare thread."""

        def discard() -> None:
            self._own_jobs().discard(jid, hosts, between=self._loop_turn)

        def failed(f: concurrent.futures.Future[None]) -> None:
            if (e := f.exception()) is not None:
                log.error("job %s, never started, is removed at the next start: %s", jid, e)

        self._post_back(self.pool.submit(discard), failed)

    def stop(self) -> None:
        """The daemon stops: a job being stored is left there unstarted (the
        next start removes it), and the prepare thread ends soon."""
        self.stopping.set()

    def close(self) -> None:
        """After the prepare thread has ended: close its database connection."""
        if self.own_jobs is not None:
            self.own_jobs.conn.close()
            self.own_jobs = None

    def answered(self, jid: str, host: str, result: dict[str, Any] | None) -> None:
        run = self.runs.get(jid)
        if run is None:
            return
        run.tally.add(outcome(result))
        if run.batch is not None:
            run.batch.tally.add(outcome(result))
            # A failed result and no response both count towards --batch-fail.
            run.batch.rollout.answered(host, outcome(result) not in FAILURES)
        status = NO_RESPONSE if result is None else result["status"]
        for conn in list(run.watchers):
            conn.send(
                MsgType.RUN_HOST_RESULT,
                {"jid": jid, "host": host, "status": status, "result": result},
            )

    def progress(self, jid: str, host: str, until: float) -> None:
        run = self.runs.get(jid)
        if run is not None:
            for conn in list(run.watchers):
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
    busy = facts.connected[host]
    if busy is not None:
        return f"busy with job {busy}; this job is queued behind it"
    return None


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """No garbage collection while a run is compiled: the objects it makes
    (a million for 10,000 hosts x 100 files) live until the job is stored,
    and each full collection, which CPython runs when long-lived objects have
    grown by a quarter, goes over all of them while every thread waits, the
    loop's too (0.1 to 0.6 s each on a busy 2-core machine, several per
    compile). They are frozen after (left out of collections) and unfrozen
    once the job is built and stored (_store()), which frees its configs
    host by host, or when it will not be (_prepared())."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
        gc.freeze()  # not on failure: what it made is garbage, to be collected
    finally:
        if was_enabled:
            gc.enable()


def _members(repo: Any, facts: dict[str, HostFacts]) -> Any:
    def members(name: str) -> list[str]:
        if not repo.has_group(name):
            raise UsageError(f"unknown group {name!r} (groups: {', '.join(repo.group_names())})")
        hosts: list[str] = repo.members(name, facts)
        if not hosts and name in repo.detected:
            raise UsageError(
                f"group {name!r} is detected from facts, and no host's reported facts match it"
                " (see safcm-master facts)"
            )
        return hosts

    return members


def _git_commit(repo_dir: str) -> str | None:
    """The repository's HEAD commit ("-dirty" if it has uncommitted changes), or
    None if it is not a git repository (or git is missing)."""

    def git(*args: str) -> str | None:
        try:
            proc = subprocess.run(
                ["git", "-C", repo_dir, *args],
                capture_output=True,
                text=True,
                timeout=GIT_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    commit = git("rev-parse", "--verify", "--quiet", "HEAD")
    if not commit:
        return None
    dirty = git("status", "--porcelain", "--untracked-files=normal")
    return f"{commit}-dirty" if dirty else commit


def _check_job(host: str, job: dict[str, Any]) -> None:
    """Refuse a job that sealing would refuse, before anything is stored."""
    try:
        check_body(MsgType.JOB, job)
    except ProtocolError as e:
        raise ConfigError(f"host {host}: its job cannot be sent: {e}") from e
