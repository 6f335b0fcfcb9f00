"""The prepare worker: one process of its own that loads the repository,
targets, compiles, and builds and stores each run's job, so that the
daemon's loop never waits on that work, not even for the GIL (a thread of
the daemon doing 10 to 20 s of pure Python for 10,000 hosts held the loop
for hundreds of milliseconds at a time).

It is a fresh interpreter (never a fork: the daemon has a ZeroMQ context
and threads), started when the daemon starts, and kept: repocache's load of
the repository stays in it between runs (a no-op run does no repository
I/O beyond the cache's check). It has a database connection of its own
(SQLite WAL or PostgreSQL: both let it write while the loop reads and
writes). The daemon's stop ends it; a daemon that dies without stopping
(SIGKILL) leaves it to end at its next read or write on its socket.

The conversation, over one socket pair, one request at a time, from the
daemon's prepare thread (master/runs.py), pickled (both ends are this code):

    master                                    worker
    (settings, owner, generation, level)  ->  first, once
    (PREPARE, body, target, keys, facts)  ->  load, resolve the target, compile;
                                          <-  (DONE, (Resolved, JobOrder)): the
                                              per-host job fields stay in the
                                              worker, kept under order.kept
    (STORE, kept, record, hosts, ...)     ->  build the hosts' parts from them, check,
                                              write the job's rows, not yet started
                                          <-  (TURN,) between two transactions:
    (TURNED, ok)                          ->  the loop has had its turn (ok False:
                                              the master is stopping)
                                          <-  (DONE, (JobParts, seconds, seconds))
    (FORGET, kept)                        ->  a run's hosts that will not be stored
    (DISCARD, jid, hosts)                 ->  a stored job that will not start

Every request is answered by DONE, FAILED (a SafcmError, as _portable()
sends it: the CLI gets the same answer as if the work had been done in the
daemon) or BUG (anything else, with its traceback). What comes back is
small: the parts of a 10,000-host job name each distinct manifest, include
list and HostPart once (JobParts.share()), and the hosts' names.

A worker that dies (killed, out of memory) fails the request it had with a
WorkerError naming it and why; the next request starts a new one.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing.connection
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from safcm.common import log as daemon_log
from safcm.common.crypto import MAX_ENVELOPE_OVERHEAD
from safcm.common.errors import (
    ConfigError,
    ConfigProblem,
    ProtocolError,
    SafcmError,
    StoreError,
    UsageError,
    WorkerError,
)
from safcm.common.memory import give_back
from safcm.common.protocol import MAX_JOB_BYTES, MsgType, check_body
from safcm.master import modules, repocache, targets
from safcm.master.db import WORKER_BUSY_TIMEOUT_MS, open_store
from safcm.master.facts import HostFacts
from safcm.master.jobcontent import JobParts
from safcm.master.jobstore import JobRecord, JobStore, Plan
from safcm.master.keystore import KeyState
from safcm.master.settings import MasterSettings

log = logging.getLogger("safcm-master")

# Seconds `git rev-parse` may take to name the repository's commit.
GIT_TIMEOUT = 5.0
# Seconds the worker gets to end after SIGTERM when the daemon stops (it
# ends at once: it keeps no state that a kill would lose), then SIGKILL.
STOP_TIMEOUT = 5.0
# Objects the collector counted at most since its last collection
# (Collections) beyond which the worker collects when a run is done with:
# about 10 MiB at most of garbage waiting, and no collection after each
# small run (a full one is about 5 ms of CPU, and the one-host no-op run's
# CLI takes about 115 ms).
COLLECT_AFTER_OBJECTS = 100_000
# How the worker starts: a new interpreter (-P: not the daemon's working
# directory first on sys.path) that imports this module by its name, so the
# classes it pickles are safcm.master.prepworker's, not __main__'s.
# (multiprocessing's spawn would also run the daemon's own main module again
# in it, and an embedding script without a main guard would start itself.)
BOOTSTRAP = "import sys; from safcm.master.prepworker import main; sys.exit(main(sys.argv[1:]))"

# Requests, and the worker's answers.
PREPARE, STORE, FORGET, DISCARD, TURNED = "prepare", "store", "forget", "discard", "turned"
DONE, FAILED, BUG, TURN = "done", "failed", "bug", "turn"


@dataclass(frozen=True)
class JobOrder:
    """What a RUN asks for, compiled: the same for each batch of a run. The
    per-host job fields it compiled stay in the worker that compiled it."""

    module: str
    dry_run: bool
    timeout: float  # seconds, from each job's start
    target: str  # normalised, as the history keeps it
    steps: list[str]  # the modules it runs: itself, or sync's steps
    git_commit: str | None  # the repository's, when it was compiled
    kept: int  # the number the worker keeps its hosts' fields under
    worker: int = 0  # which worker that is (PrepareWorker.generation)
    compiling: float = 0.0  # seconds spent loading, targeting, compiling and in git


class PrepareWorker:
    """The daemon's side: the worker process, started again when it died.
    prepare(), store(), forget() and discard() are called from one thread
    (the prepare thread); stop() from any."""

    def __init__(self, settings: MasterSettings, owner: str | None) -> None:
        self.settings = settings
        self.owner = owner  # the daemon's: this master's name in a cluster
        self.generation = 0  # counts the workers started
        self._process: subprocess.Popen[bytes] | None = None
        self._conn: multiprocessing.connection.Connection | None = None
        # The facts the running worker holds: only the hosts whose facts
        # changed since (a new HostFacts object) are sent with a PREPARE.
        self._facts: dict[str, HostFacts] = {}
        self._stopping = threading.Event()

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def start(self) -> None:
        """Start a worker if none is running (at daemon start, so the first
        run does not wait for the interpreter to start and import)."""
        if self._alive():
            return
        if self._stopping.is_set():
            raise SafcmError("the master is stopping; the job was not started")
        self._reap()
        ours, theirs = socket.socketpair()
        self.generation += 1
        level = logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower()
        try:
            process = subprocess.Popen(
                [sys.executable, "-P", "-c", BOOTSTRAP, str(theirs.fileno())],
                stdin=subprocess.DEVNULL,  # stderr: the daemon's, so one log
                pass_fds=[theirs.fileno()],  # and no other descriptor of the daemon
            )
        except OSError as e:
            ours.close()
            raise WorkerError(f"cannot start the prepare worker: {e}") from e
        finally:
            theirs.close()
        conn = multiprocessing.connection.Connection(ours.detach())
        self._process, self._conn, self._facts = process, conn, {}
        self._send((self.settings, self.owner, self.generation, level))
        log.info("prepare worker %d started (pid %d)", self.generation, process.pid)

    def prepare(
        self,
        body: dict[str, Any],
        target: str,
        states: dict[str, KeyState],
        facts: dict[str, HostFacts],
    ) -> tuple[targets.Resolved, JobOrder]:
        self.start()
        changed = {h: f for h, f in facts.items() if self._facts.get(h) is not f}
        gone = [h for h in self._facts if h not in facts]
        resolved, order = self._request((PREPARE, body, target, states, changed, gone))
        self._facts = facts
        return resolved, replace(order, worker=self.generation)

    def store(
        self,
        order: JobOrder,
        record: JobRecord,
        hosts: list[str],
        unsealable: set[str],
        turn: Callable[[], bool],
    ) -> tuple[JobParts, float, float]:
        """Build and store one job of `order` for `hosts`; `turn()` waits for
        the loop's turn between two transactions (False: the master stops).
        Returns the parts, and the seconds spent building and storing them."""
        self._check_same_worker(order)
        request = (STORE, order.kept, record, order.module, order.dry_run, order.steps, hosts)
        parts, building, storing = self._request((*request, unsealable), turn)
        return parts, building, storing

    def forget(self, order: JobOrder) -> None:
        """The order's hosts not stored yet never will be: free them."""
        if order.worker == self.generation and self._alive():
            self._request((FORGET, order.kept))

    def discard(self, jid: str, hosts: list[str], turn: Callable[[], bool]) -> None:
        self.start()
        self._request((DISCARD, jid, hosts), turn)

    def stop(self) -> None:
        """The daemon stops: end the worker now, even mid-request (the job
        it was storing is left unstarted: the next start removes it)."""
        self._stopping.set()
        if self._process is not None and self._alive():
            with contextlib.suppress(OSError):
                self._process.terminate()

    def close(self) -> None:
        """After stop(), once no request is under way: wait for the worker."""
        self._reap()

    def _alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _check_same_worker(self, order: JobOrder) -> None:
        if order.worker != self.generation or not self._alive():
            raise WorkerError(
                "the prepare worker that compiled this run has ended since; "
                "run it again (a new worker compiles it)"
            )

    def _request(self, request: tuple[Any, ...], turn: Callable[[], bool] = lambda: True) -> Any:
        self._send(request)
        return self._answer(turn)

    def _send(self, request: tuple[Any, ...]) -> None:
        assert self._conn is not None
        try:
            self._conn.send(request)
        except OSError as e:
            raise self._died() from e

    def _answer(self, turn: Callable[[], bool]) -> Any:
        assert self._conn is not None
        while True:
            try:
                kind, *payload = self._conn.recv()
                if kind == TURN:
                    self._conn.send((TURNED, turn()))
                    continue
            except (EOFError, OSError) as e:
                raise self._died() from e
            except BaseException:
                # Where the conversation stands is lost (a bug in turn()):
                # the next request gets a new worker, not this one's answer.
                self._abandon()
                raise
            if kind == DONE:
                return payload[0]
            elif kind == FAILED:
                raise _rebuilt(*payload)
            else:  # BUG
                what, trace = payload
                log.error("prepare worker %d: %s", self.generation, trace)
                raise _WorkerBug(what)

    def _died(self) -> SafcmError:
        """The worker ended under a request: what the RUN is answered."""
        process = self._process
        assert process is not None
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(STOP_TIMEOUT)
        if self._stopping.is_set():
            return SafcmError("the master is stopping; the job was not started")
        code = process.returncode
        if code is None:
            why = "it closed its pipe"
        elif code < 0:
            why = f"killed by {signal.Signals(-code).name}"
        else:
            why = f"exited with status {code}"
        self._reap()
        message = (
            f"the prepare worker (pid {process.pid}) died: {why}; the job was not started. "
            "The next run starts a new worker"
        )
        log.error("%s", message)
        return WorkerError(message)

    def _abandon(self) -> None:
        if self._process is not None and self._alive():
            with contextlib.suppress(OSError):
                self._process.kill()
        self._reap()

    def _reap(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._process is not None:
            try:
                self._process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None


class _WorkerBug(Exception):
    """An unexpected error in the worker (a bug), shown to the CLI as the
    daemon shows its own: its repr; the traceback is in the daemon's log."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what

    def __repr__(self) -> str:
        return self.what


def _portable(e: SafcmError) -> tuple[str, Any]:
    """A SafcmError as the pipe carries it: kind and content, since our
    errors' constructors take other arguments than their messages (they do
    not unpickle). What report() in master/daemon.py looks at survives."""
    if isinstance(e, ConfigError):
        return "config", [(p.file, p.line, p.message) for p in e.problems]
    if isinstance(e, UsageError):
        return "usage", str(e)
    if isinstance(e, StoreError):
        return "store", str(e)
    if isinstance(e, WorkerError):
        return "worker", str(e)
    return "safcm", str(e)


def _rebuilt(kind: str, content: Any) -> SafcmError:
    if kind == "config":
        return ConfigError([ConfigProblem(*p) for p in content])
    if kind == "usage":
        return UsageError(content)
    if kind == "store":
        return StoreError(content)
    if kind == "worker":
        return WorkerError(content)
    return SafcmError(content)


# ---- the worker process ----


def main(argv: list[str]) -> int:
    """The worker process (BOOTSTRAP): its socket's descriptor is argv[0]."""
    conn = multiprocessing.connection.Connection(int(argv[0]))
    try:
        settings, owner, generation, level = conn.recv()
    except (EOFError, OSError):
        return 0  # the daemon has gone already
    serve(conn, settings, owner, generation, level)
    return 0


def serve(
    conn: multiprocessing.connection.Connection,
    settings: MasterSettings,
    owner: str | None,
    generation: int,
    level: str,
) -> None:
    """Answer requests until the daemon closes the socket."""
    # Ctrl-C on a foreground daemon reaches its whole process group: the
    # daemon decides when its worker ends.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    daemon_log.setup(level)  # the daemon's stderr, so one log
    # The objects a large run makes (a million for 10,000 hosts x 100 files)
    # live until its job is stored: collected once the run is done with,
    # not over and over while it is compiled.
    gc.disable()
    gc.freeze()  # what is there now (modules, classes) lives as long as the worker
    worker = _Worker(conn, settings, owner, generation)
    collections = Collections()
    try:
        while True:
            try:
                request = conn.recv()
            except (EOFError, OSError):
                return  # the daemon has gone
            try:
                reply: tuple[Any, ...] = (DONE, worker.handle(*request))
            except SafcmError as e:
                reply = (FAILED, *_portable(e))
            except Exception as e:  # a bug must cost one run, never the worker
                reply = (BUG, repr(e), traceback.format_exc())
            try:
                conn.send(reply)
            except OSError:
                return  # the daemon has gone
            collect = collections.after(request[0], reply[0] == DONE, gc.get_count()[0])
            # The reply holds the stored job's parts, which kept much of the
            # run reachable (790 of 875 MiB stayed after 10,000 hosts): not
            # kept alive through the collection.
            del request, reply
            if collect:
                gc.collect()
                give_back()
    finally:
        worker.close()


class Collections:
    """When the worker collects: once a run is done with (its job stored, or
    its failure answered), if the run made enough objects."""

    def __init__(self) -> None:
        self.made = 0  # the most objects the collector counted since it last collected

    def after(self, request: str, done: bool, count: int) -> bool:
        """Whether to collect after answering `request`, with the collector's
        `count` (gc.get_count()[0]) now. That count is of objects made less
        those freed: high after a large PREPARE, low again once its STORE
        freed most of them, leaving their cycles behind. So the highest
        count since the last collection decides."""
        self.made = max(self.made, count)
        if (request == PREPARE and done) or self.made <= COLLECT_AFTER_OBJECTS:
            return False
        self.made = 0
        return True


class _Worker:
    def __init__(
        self,
        conn: multiprocessing.connection.Connection,
        settings: MasterSettings,
        owner: str | None,
        generation: int,
    ) -> None:
        self.conn = conn
        self.settings = settings
        self.owner = owner
        self.generation = generation
        self.facts: dict[str, HostFacts] = {}  # the daemon's, as of the last PREPARE
        self.kept: dict[int, dict[str, dict[str, Any]]] = {}  # order -> host -> job fields
        self.orders = 0
        self._jobs: JobStore | None = None

    def handle(self, op: str, *args: Any) -> Any:
        if op == PREPARE:
            return self.prepare(*args)
        if op == STORE:
            return self.store(*args)
        if op == FORGET:
            self.kept.pop(args[0], None)
            return None
        if op == DISCARD:
            jid, hosts = args
            self.jobs().discard(jid, hosts, between=self.turn)
            return None
        raise ValueError(f"unknown request {op!r}")

    def close(self) -> None:
        if self._jobs is not None:
            with contextlib.suppress(Exception):
                self._jobs.conn.close()

    def jobs(self) -> JobStore:
        if self._jobs is None:
            self._jobs = JobStore(
                open_store(
                    self.settings.state_dir,
                    self.settings.store,
                    busy_timeout_ms=WORKER_BUSY_TIMEOUT_MS,
                ),
                self.owner,
            )
        return self._jobs

    def turn(self) -> None:
        """Between two transactions of a job's rows: wait until the daemon's
        loop has had a turn, so that writes it waits to make get the
        database between two of ours."""
        self.conn.send((TURN,))
        kind, ok = self.conn.recv()
        if kind != TURNED or not ok:
            raise SafcmError("the master is stopping; the job was not started")

    def prepare(
        self,
        body: dict[str, Any],
        target: str,
        states: dict[str, KeyState],
        changed: dict[str, HostFacts],
        gone: list[str],
    ) -> tuple[targets.Resolved, JobOrder]:
        begun = time.monotonic()
        self.facts.update(changed)
        for host in gone:
            self.facts.pop(host, None)
        facts = self.facts
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
        self.orders += 1
        self.kept[self.orders] = fields
        order = JobOrder(
            module,
            body["dry_run"],
            seconds,
            target,
            steps,
            git_commit,
            self.orders,
            self.generation,
            time.monotonic() - begun,
        )
        return resolved, order

    def store(
        self,
        kept: int,
        record: JobRecord,
        module: str,
        dry_run: bool,
        steps: list[str],
        hosts: list[str],
        unsealable: set[str],
    ) -> tuple[JobParts, float, float]:
        """What each host's envelope is sealed from, checked, and written,
        not yet started (the daemon starts it)."""
        begun = time.monotonic()
        fields = self.kept.get(kept)
        if fields is None:
            raise WorkerError("this run's compiled hosts are gone from the prepare worker")
        for host in hosts:
            if host in unsealable:
                raise SafcmError(f"host {host}: its key has no transport key; it must enrol again")
        jobs = self.jobs()
        # The content each host has already is left out of its envelope
        # (master/jobcontent.py); envelopes are sealed when published.
        known = jobs.known_content(hosts) if "files" in steps else {}
        parts = JobParts(record.deadline)
        plans = {}
        checked: set[str] = set()  # manifests whose full body was checked
        for host in hosts:
            job = {"module": module, "dry_run": dry_run, "deadline": record.deadline}
            # Taken out: no later batch has this host.
            job.update(fields.pop(host, {}))
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
        if not fields:
            del self.kept[kept]  # every host of the run is stored now
        parts.share()
        built = time.monotonic()
        jobs.store(record, parts, plans, between=self.turn)
        return parts, built - begun, time.monotonic() - built


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
