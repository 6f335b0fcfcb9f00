"""Runs: the RUN control request, from the CLI's target to a started job, and
the job's results streamed back to the CLI connections that wait for it.

A job is compiled for every targeted host, sealed to each host alone, and
stored with its envelopes (master/jobstore.py) before the first publish. The
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
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from safcm.common.crypto import MAX_ENVELOPE_OVERHEAD, KeyPair
from safcm.common.errors import ConfigError, ProtocolError, SafcmError, UsageError
from safcm.common.protocol import (
    MAX_JOB_BYTES,
    NO_RESPONSE,
    Message,
    Module,
    MsgType,
    check_body,
    new_jid,
)
from safcm.master import repocache, targets
from safcm.master.batch import BatchSize, Rollout
from safcm.master.cluster import held_elsewhere
from safcm.master.compiler import HostConfig, compile_hosts
from safcm.master.control import ControlConnection
from safcm.master.jobcontent import JobParts
from safcm.master.jobstore import JobRecord, JobStore, Plan
from safcm.master.keystore import KeyState, KeyStore, MinionKey
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


@dataclass(frozen=True)
class JobOrder:
    """What a RUN asks for, compiled: the same for each batch of a run."""

    module: str
    dry_run: bool
    timeout: float  # seconds, from each job's start
    target: str  # normalised, as the history keeps it
    configs: dict[str, HostConfig]  # by host; empty for ping
    git_commit: str | None  # the repository's, when it was compiled


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
        self.pool = pool  # the prepare thread (on_run)
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
        log.debug("preparing a run of %s for %s (by %s)", body["module"], target, conn.user)
        future = self.pool.submit(self._prepare, body, target, states)
        loop = self.peers.loop

        def done(f: concurrent.futures.Future[tuple[targets.Resolved, JobOrder]]) -> None:
            with contextlib.suppress(OSError, ValueError):  # the loop has closed: shutting down
                loop.call_soon_threadsafe(lambda: self._prepared(conn, body, f))

        future.add_done_callback(done)

    def _prepare(
        self, body: dict[str, Any], target: str, states: dict[str, KeyState]
    ) -> tuple[targets.Resolved, JobOrder]:
        """On the prepare thread: no database, no sockets."""
        module = body["module"]
        timeout = body["timeout"] or self.settings.job_timeout
        # ping sends no files: a problem in a group's files must not stop it.
        repo = repocache.load(self.settings.config_dir, targets_only=module == Module.PING)
        resolved = targets.resolve(
            target,
            hosts=repo.hosts,
            group_members=_members(repo),
            accepted={i for i, state in states.items() if state is KeyState.ACCEPTED},
            key_states=states.get,
        )
        configs = compile_hosts(repo, resolved.hosts) if module == Module.FILES else {}
        git_commit = _git_commit(self.settings.config_dir)
        return resolved, JobOrder(module, body["dry_run"], timeout, target, configs, git_commit)

    def _prepared(
        self,
        conn: ControlConnection,
        body: dict[str, Any],
        future: concurrent.futures.Future[tuple[targets.Resolved, JobOrder]],
    ) -> None:
        """Back on the loop: store and start the prepared job, or report why not."""
        if conn.closed:
            log.info(
                "a run by %s was withdrawn before its job started; nothing was sent", conn.user
            )
            return
        try:
            self._start(conn, body, *future.result())
        except Exception as e:
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
    ) -> str:
        """Create, store and publish one job of `order` to `resolved.hosts`,
        and tell `conn` (RUN_STARTED): a whole run, or one batch of one."""
        # The same names as when this was the tail of on_run.
        module, dry_run, timeout, target = order.module, order.dry_run, order.timeout, order.target
        configs = order.configs
        now = self.clock()
        jid = new_jid(now, self.last_jid)
        deadline = now + timeout
        # The content each host has already is left out of its envelope
        # (master/jobcontent.py); envelopes are sealed when published.
        known = self.jobs.known_content(resolved.hosts) if module == Module.FILES else {}
        parts = JobParts(deadline)
        plans = {}
        checked: set[str] = set()  # manifests whose full body was checked
        for host in resolved.hosts:
            job = {"module": module, "dry_run": dry_run, "deadline": deadline}
            job.update(_job_files(configs.get(host)))
            plans[host] = Plan.of_job(job)
            if self.peers.minion_keys(host) is None:  # accepted, but enrolled before CURVE
                raise SafcmError(f"host {host}: its key has no transport key; it must enrol again")
            part = parts.add(host, job, lambda h: known.get(h, frozenset()))
            if part.manifest not in checked:  # hosts with one manifest have one full body
                _check_job(host, job)
                checked.add(part.manifest)
            if (size := parts.size(host)) > MAX_JOB_BYTES - MAX_ENVELOPE_OVERHEAD:
                raise ConfigError(
                    f"host {host}: its job cannot be sent: about {size} bytes, more than "
                    f"{MAX_JOB_BYTES - MAX_ENVELOPE_OVERHEAD}"
                )
        record = JobRecord(
            jid,
            now,
            deadline,
            conn.user,
            target,
            module,
            dry_run,
            order.git_commit,
        )
        self.jobs.create(record, parts, plans)  # stored before anything is published
        self.last_jid = jid
        log.info(
            "job %s: %s%s on %s by %s",
            jid,
            module,
            " (dry run)" if dry_run else "",
            target,
            conn.user,
        )
        conn.send(
            MsgType.RUN_STARTED,
            {
                "jid": jid,
                "hosts": resolved.hosts,
                "skipped": [{"host": h, "reason": r} for h, r in resolved.skipped.items()],
                "notes": [
                    {"host": h, "note": note}
                    for h in self._refreshed(resolved.hosts)
                    if (note := self._host_note(h)) is not None
                ],
                **({} if batch is None else {"batch": batch.numbering()}),
            },
        )
        run = Run(jid, resolved.hosts, [conn], batch=batch)
        self.runs[jid] = run
        conn.on_close.append(lambda c: run.watchers.remove(c) if c in run.watchers else None)
        self.publisher.open_jobs[jid] = parts
        self.lifecycle.start(jid, resolved.hosts, deadline, now)  # published at once
        return jid

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
        if hosts:
            try:
                jid = self._start_job(
                    rolling.conn, rolling.order, targets.Resolved(hosts, skipped or {}), rolling
                )
            except Exception as e:
                if rollout.started == 1:  # nothing started: the RUN fails (on_control)
                    raise
                self._batch_failed(rolling, hosts, e)
                return
            rolling.jids.append(jid)
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

    def _refreshed(self, hosts: list[str]) -> list[str]:
        """`hosts`, after reading last-seen times other masters wrote."""
        if self.keystore.shared:
            self.keystore.refresh_seen()
        return hosts

    def _held_elsewhere(self, key: MinionKey | None) -> bool:
        """True if another master of the cluster heard `key`'s minion lately
        (its last-seen time, which every master writes, is recent)."""
        return self.keystore.shared and held_elsewhere(key, self.clock())

    def _host_note(self, host: str) -> str | None:
        """What the master knows now that will delay or stop a job for `host`:
        said at submit time, so an administrator need not wait for the
        deadline to learn it (the job still waits for the host until then)."""
        key = self.keystore.get(host)
        claims = self.keystore.refused(host)
        if key is not None and claims and (key.last_seen or 0.0) < claims[-1].last_seen:
            return (
                f"presents a new key ({claims[-1].fingerprint}): compare fingerprints, "
                f"then 'safcm-master keys accept {host} --fingerprint FP'"
            )
        if not self.peers.connected(host):
            if self._held_elsewhere(key):
                return None  # another master of the cluster holds it
            seen = (
                "never seen"
                if key is None or key.last_seen is None
                else (
                    "last seen "
                    + time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(key.last_seen))
                )
            )
            return f"not connected ({seen}); the job waits for it until its deadline"
        busy = self.peers.presence[host].busy
        if busy is not None:
            return f"busy with job {busy}; this job is queued behind it"
        return None


def _members(repo: Any) -> Any:
    def members(name: str) -> list[str]:
        if not repo.has_group(name):
            raise UsageError(f"unknown group {name!r} (groups: {', '.join(repo.group_names())})")
        return repo.members(name)

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


def _job_files(config: HostConfig | None) -> dict[str, Any]:
    """The part of a JOB body that says what the host's files must be (none for ping)."""
    if config is None:
        return {"files": [], "absent": [], "purge": [], "secrets": []}
    return {
        "files": [spec.to_wire() for spec in config.specs()],
        "absent": [a.to_wire() for a in config.absent],
        "purge": list(config.purge),
        "secrets": list(config.secrets),
    }
