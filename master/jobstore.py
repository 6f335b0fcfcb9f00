"""The job history: every job, the hosts it went to, and each host's full result.

A job is written, with one row per expected host, before anything is
published (DESIGN section 1, "nothing lost"): by store(), off the daemon's
loop and in several transactions, then made visible by start(), on the loop,
in the same turn as its lifecycle starts; until then no read sees it.
What a host's envelope is sealed from stays until the minion's receipt
arrives, so a restarted master re-publishes exactly what it had not yet
delivered. A host's
row then moves through the states of master/lifecycle.py (sent, received,
done, no_response), which decides every change; this module only stores them.

A result that arrives after the deadline is still stored: it is the truth of
what happened on the host, even if the CLI has stopped waiting.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
from collections.abc import Callable, Collection, Iterator, Sequence, Sized
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from safcm.common import codec
from safcm.common.ids import JID_FORMAT
from safcm.common.model import is_below
from safcm.common.protocol import MAX_BODY_DEPTH, NO_RESPONSE
from safcm.master.db import Database, transaction
from safcm.master.jobcontent import HostPart, JobParts, digests_of, unpack_manifest
from safcm.master.lifecycle import OpenRow, State
from safcm.master.outcomes import DEFAULT_LIST_LIMIT, PENDING, HostStatus

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
# The last instant a jid can name (common/ids.py): later --until bounds are cut to it.
_LAST_JID_TIME = 253402300799.0
# Upper bound for --limit, so one request cannot make the daemon build a huge reply.
MAX_LIST_LIMIT = 10_000
# Host rows written (or deleted) per transaction of a job's store(): each
# transaction holds the database's one write lock, which the loop's writes
# (results, heartbeats) then wait for; about 5 ms each (bench/submit.py).
STORE_CHUNK = 500
# Values per IN (...) list: SQLite allows 32766 bound values since 3.32 and
# 999 before; PostgreSQL 65535.
IN_CHUNK = 500
# Host rows deleted per transaction when old jobs are purged (purge_before()):
# a large history (a fleet's month, or a first purge after keep_jobs was
# shortened) goes in short transactions a loop turn apart, not in one that
# holds the loop for seconds.
PURGE_CHUNK = 2000
# Host rows read at most per part of a job's hosts (hosts_after()): hosts
# without a result (pending, no response) weigh little each, so their count
# bounds a part as the results' bytes bound the others.
HOSTS_CHUNK = 500
# Jobs whose module and dry-run flag module_of() keeps, the oldest dropped
# first: results come for the few jobs running at once, so a handful would
# do; an entry is a jid and a module name.
MODULE_MEMO = 256


# The states of a job's host, as its row stores them: the lifecycle's
# (master/lifecycle.py, which also says how they change).
HostState = State

T = TypeVar("T")


@dataclass(frozen=True)
class JobRecord:
    jid: str
    submitted: float  # unix time
    deadline: float  # unix time after which hosts without result are "no response"
    user: str
    target: str
    module: str
    dry_run: bool
    git_commit: str | None


@dataclass(frozen=True)
class JobSummary:
    job: JobRecord
    hosts: int
    changed: int
    ok: int
    failed: int
    no_response: int
    pending: int  # sent or received: neither a result nor the deadline yet


@dataclass(frozen=True)
class HostRecord:
    host: str
    state: HostState
    status: HostStatus | None
    received: float | None
    returned: float | None
    changes: int | None
    result: dict[str, Any] | None  # the minion's result body, as stored
    late: bool = False  # the result arrived after the host was recorded as no response


@dataclass(frozen=True)
class StoredResult:
    jid: str
    host: str
    status: HostStatus
    changes: int
    result: dict[str, Any]
    returned: float
    packed: bytes  # the result as stored: msgpack, about its size on the wire

    def answer(self) -> Answer:
        return Answer(self.status, self.packed)


@dataclass(frozen=True, slots=True)
class Answer:
    """A host's stored result as a CLI that waits for it is told it
    (master/runs.py): its outcome for the tally, and its bytes as stored,
    which go into the CLI's message as they are."""

    status: HostStatus
    packed: bytes


# How many of a host's latest jobs may have left the triggers that a result
# runs as owed (minion/triggers.py): a trigger owed longer is refused.
OWED_JOBS_LOOKBACK = 100


@dataclass(frozen=True)
class Plan:
    """What a job sent to one host, as far as its result is checked against it:
    the paths it names (files and absent paths), the trees whose entries may
    be removed (purged directories, recursive absent paths), and the triggers."""

    paths: frozenset[str]
    triggers: frozenset[str]
    trees: frozenset[str] = frozenset()

    @classmethod
    def of_job(cls, job: dict[str, Any]) -> Plan:
        files = job.get("files", [])
        absent = job.get("absent", [])
        return cls(
            frozenset([f["path"] for f in files] + [a["path"] for a in absent]),
            frozenset(t for f in files for t in f["triggers"]),
            frozenset(list(job.get("purge", [])) + [a["path"] for a in absent if a["recursive"]]),
        )

    def covers(self, path: str) -> bool:
        return path in self.paths or any(is_below(path, tree) for tree in self.trees)

    def pack(self) -> bytes:
        return codec.pack([sorted(self.paths), sorted(self.triggers), sorted(self.trees)])

    @classmethod
    def unpack(cls, data: bytes) -> Plan:
        paths, triggers, trees = codec.unpack(data, max_depth=3)
        return cls(frozenset(paths), frozenset(triggers), frozenset(trees))


def _load_result(value: bytes | str) -> dict[str, Any]:
    # Version 1 of the schema stored JSON text, in the result format of safcm
    # 0.1; results are msgpack since, in today's format.
    if isinstance(value, str):
        return _upgrade_v1_result(json.loads(value))
    return codec.unpack(value, max_depth=MAX_BODY_DEPTH)


def _upgrade_v1_result(body: dict[str, Any]) -> dict[str, Any]:
    """A result of safcm 0.1 in today's format: its one `failure` becomes the
    list `failures`, nothing is owed, and each change gets the outcome 0.1
    meant (it stopped at the failure: the change at that path failed, every
    other one it reported was applied, or would be in a dry run)."""
    apply = body.get("apply")
    if apply is None or "failure" not in apply:
        return body
    failure = apply.pop("failure")
    apply["failures"] = [failure] if failure is not None else []
    apply["owed"] = []
    done = "would apply" if apply["dry_run"] else "applied"
    for change in apply["changes"]:
        failed = failure is not None and change["path"] == failure["path"]
        change["outcome"] = "failed" if failed else done
        change["reason"] = failure["reason"] if failed else ""
    return body


# The notification channel of stored results, between masters that share a
# PostgreSQL database (payload "JID HOST"): the master that runs the job
# hears of a result that another master received and stored.
RESULTS_CHANNEL = "safcm_results"


class JobStore:
    def __init__(self, conn: Database, owner: str | None = None) -> None:
        self.conn = conn
        # The master whose jobs this store creates (master/cluster.py).
        self.owner = owner
        self._modules: dict[str, tuple[str, bool]] = {}  # module_of()'s answers

    def create(
        self,
        job: JobRecord,
        parts: JobParts,
        plans: dict[str, Plan] | None = None,
    ) -> None:
        """Record a job and start it at once (store(), then start())."""
        self.store(job, parts, plans)
        self.start(job.jid)

    def store(
        self,
        job: JobRecord,
        parts: JobParts,
        plans: dict[str, Plan] | None = None,
        *,
        between: Callable[[], None] = lambda: None,
    ) -> None:
        """Record a job, not yet started: its manifests and content, once each,
        what each host's envelope carries (master/jobcontent.py), and what each
        host was sent (`plans`, shared between hosts with the same).

        A large job is written in several transactions of at most STORE_CHUNK
        host rows, with `between()` called after each, so that other writers
        (the daemon's loop) get their turn. Until start(), the job is there
        for no one (host_state(), get_job(), list_jobs()); a job that was
        never started is removed by discard() or discard_unstarted(); one
        that fails to be stored removes itself, or is left unstarted."""
        digests: dict[str, str] = {}
        packed: dict[str, bytes] = {}
        for host, plan in (plans or {}).items():
            data = plan.pack()
            digest = hashlib.sha256(data).hexdigest()
            packed[digest] = data
            digests[host] = digest
        with transaction(self.conn):
            self.conn.execute(
                'INSERT INTO jobs (jid, submitted, deadline, "user", target, module, dry_run,'
                " git_commit, started, owner) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, ?)",
                (
                    job.jid,
                    job.submitted,
                    job.deadline,
                    job.user,
                    job.target,
                    job.module,
                    int(job.dry_run),
                    job.git_commit,
                    self.owner,
                ),
            )
            self.conn.executemany(
                "INSERT INTO job_plans (jid, digest, plan) VALUES (?, ?, ?)",
                [(job.jid, digest, data) for digest, data in packed.items()],
            )
            self.conn.executemany(
                "INSERT INTO job_manifests (jid, digest, manifest) VALUES (?, ?, ?)",
                [(job.jid, digest, data) for digest, data in parts.packed.items()],
            )
            self.conn.executemany(
                "INSERT INTO job_content (jid, digest, data) VALUES (?, ?, ?)",
                [(job.jid, digest, data) for digest, data in parts.content.items()],
            )
        # What a host's envelope carries is most often all its manifest names
        # (a host new to the job's content) or nothing (a no-op): the first
        # is stored as NULL, not as a copy of every digest per host.
        whole = {digest: digests_of(m) for digest, m in parts.manifests.items()}
        rows = [
            (
                job.jid,
                host,
                digests.get(host),
                part.manifest,
                None if part.include == whole[part.manifest] else codec.pack(part.include),
            )
            for host, part in sorted(parts.hosts.items())
        ]
        try:
            for chunk in _chunks(rows, STORE_CHUNK):
                between()
                with transaction(self.conn):
                    self.conn.executemany(
                        "INSERT INTO job_hosts (jid, host, state, plan, manifest, include)"
                        " VALUES (?, ?, 'sent', ?, ?, ?)",
                        chunk,
                    )
        except BaseException:
            # What was written goes again; if it cannot, discard_unstarted() takes it.
            with contextlib.suppress(Exception):
                self.discard(job.jid, [row[1] for row in rows], between=between)
            raise

    def start(self, jid: str) -> None:
        """The job's rows are all stored: from now on it is there for everyone
        (one small write; the caller starts its lifecycle in the same turn)."""
        self.conn.execute("UPDATE jobs SET started = 1 WHERE jid = ?", (jid,))

    def discard(
        self, jid: str, hosts: Collection[str], *, between: Callable[[], None] = lambda: None
    ) -> None:
        """Remove a job that was stored and never started (its CLI left, or a
        later step failed), its host rows in transactions of STORE_CHUNK."""
        for chunk in _chunks(sorted(hosts), STORE_CHUNK):
            between()
            with transaction(self.conn):
                self.conn.executemany(
                    "DELETE FROM job_hosts WHERE jid = ? AND host = ?",
                    [(jid, host) for host in chunk],
                )
        with transaction(self.conn):
            self.conn.execute("DELETE FROM jobs WHERE jid = ? AND started = 0", (jid,))

    def discard_unstarted(self) -> int:
        """Remove every job that was stored but never started (the master
        stopped while storing it: nothing of it was published); at start-up.
        In a cluster, only this master's own: the others may be storing theirs."""
        with transaction(self.conn):
            if self.conn.shared and self.owner is not None:
                cur = self.conn.execute(
                    "DELETE FROM jobs WHERE started = 0 AND owner = ?", (self.owner,)
                )
            else:
                cur = self.conn.execute("DELETE FROM jobs WHERE started = 0")
        return cur.rowcount

    def parts(self, jid: str) -> JobParts | None:
        """What a job's envelopes are sealed from (after a restart: the hosts
        still waiting for their receipt), or None if it has none stored (no
        such job, or one stored before migration 4: see envelope())."""
        job = self.get_job(jid)
        if job is None:
            return None
        parts = JobParts(job.deadline)
        rows = self.conn.execute(
            "SELECT h.host, h.manifest, h.include, m.manifest AS packed FROM job_hosts h"
            " JOIN job_manifests m ON m.jid = h.jid AND m.digest = h.manifest"
            " WHERE h.jid = ? AND h.state = 'sent'",
            (jid,),
        ).fetchall()
        if not rows:
            return None
        wanted: set[bytes] = set()
        for r in rows:
            if r["manifest"] not in parts.manifests:
                parts.packed[r["manifest"]] = r["packed"]
                parts.manifests[r["manifest"]] = unpack_manifest(r["packed"])
            include = (
                digests_of(parts.manifests[r["manifest"]])
                if r["include"] is None  # the whole manifest (store())
                else codec.unpack(r["include"], max_depth=2)
            )
            parts.hosts[r["host"]] = HostPart(r["manifest"], include)
            wanted.update(include)
        parts.content = self.content(jid, wanted)
        return parts

    def content(self, jid: str, digests: Collection[bytes]) -> dict[bytes, bytes]:
        """The content of job `jid` with these digests (those it has)."""
        found: dict[bytes, bytes] = {}
        for chunk in _chunks(list(dict.fromkeys(digests)), IN_CHUNK):
            rows = self.conn.execute(
                "SELECT digest, data FROM job_content"  # noqa: S608 - placeholders only
                f" WHERE jid = ? AND digest IN ({_marks(chunk)})",
                (jid, *chunk),
            )
            found.update((bytes(digest), data) for digest, data in rows)
        return found

    def manifest_digests(self, jid: str, host: str) -> frozenset[bytes] | None:
        """The content digests job `jid` names for `host`, or None if that job
        has no manifest for it (never sent to it, or stored before migration 4)."""
        row = self.conn.execute(
            "SELECT m.manifest FROM job_hosts h JOIN job_manifests m"
            " ON m.jid = h.jid AND m.digest = h.manifest WHERE h.jid = ? AND h.host = ?",
            (jid, host),
        ).fetchone()
        return None if row is None else frozenset(digests_of(unpack_manifest(row[0])))

    def known_content(self, hosts: Collection[str]) -> dict[str, frozenset[bytes]]:
        """For each of `hosts`, the content it is taken to have: that of the
        last files job it completed (master/jobcontent.py). A few queries for
        any number of hosts: their last jobs' manifests, IN_CHUNK hosts at a
        time, and each distinct manifest once."""
        last: dict[str, tuple[str, str]] = {}  # host -> (jid, manifest digest)
        for chunk in _chunks(sorted(hosts), IN_CHUNK):
            rows = self.conn.execute(
                "SELECT c.host, h.jid, h.manifest FROM host_content c"  # noqa: S608 - placeholders
                " JOIN job_hosts h ON h.jid = c.jid AND h.host = c.host"
                f" WHERE c.host IN ({_marks(chunk)}) AND h.manifest IS NOT NULL",
                chunk,
            )
            last.update((host, (jid, manifest)) for host, jid, manifest in rows)
        by_manifest: dict[tuple[str, str], frozenset[bytes]] = {}
        for jid, manifest in set(last.values()):
            row = self.conn.execute(
                "SELECT manifest FROM job_manifests WHERE jid = ? AND digest = ?", (jid, manifest)
            ).fetchone()
            if row is not None:
                by_manifest[(jid, manifest)] = frozenset(digests_of(unpack_manifest(row[0])))
        empty: frozenset[bytes] = frozenset()
        return {host: by_manifest.get(last.get(host, ("", "")), empty) for host in hosts}

    def plan(self, jid: str, host: str) -> Plan | None:
        """What job `jid` sent to `host`, or None if it recorded no plan."""
        row = self.conn.execute(
            "SELECT p.plan FROM job_hosts h JOIN job_plans p ON p.jid = h.jid"
            " AND p.digest = h.plan WHERE h.jid = ? AND h.host = ?",
            (jid, host),
        ).fetchone()
        return None if row is None else Plan.unpack(row[0])

    def recent_triggers(self, host: str, limit: int = OWED_JOBS_LOOKBACK) -> frozenset[str]:
        """Every trigger command that the latest `limit` jobs sent to `host`."""
        rows = self.conn.execute(
            "SELECT p.plan FROM job_hosts h JOIN job_plans p ON p.jid = h.jid"
            " AND p.digest = h.plan WHERE h.host = ? ORDER BY h.jid DESC LIMIT ?",
            (host, limit),
        )
        return frozenset(t for (data,) in rows for t in Plan.unpack(data).triggers)

    def module_of(self, jid: str) -> tuple[str, bool] | None:
        """(module, dry_run) of a started job, or None if there is no such job.

        Asked for every result on the loop: a started job's are kept (they
        never change), for the last MODULE_MEMO jobs read."""
        known = self._modules.get(jid)
        if known is not None:
            return known
        row = self.conn.execute(
            "SELECT module, dry_run FROM jobs WHERE jid = ? AND started = 1", (jid,)
        ).fetchone()
        if row is None:
            return None
        if len(self._modules) >= MODULE_MEMO:
            del self._modules[next(iter(self._modules))]  # the one asked about first
        known = self._modules[jid] = (row[0], bool(row[1]))
        return known

    def stored_bytes(self, host: str) -> int:
        """Bytes of results stored for `host` (its use of the result quota)."""
        return self._result_bytes("host", host)

    def last_jid(self) -> str | None:
        row = self.conn.execute("SELECT max(jid) FROM jobs").fetchone()
        return row[0]

    def open_hosts(self, jids: Collection[str] | None = None) -> list[OpenRow]:
        """Every (job, host) without result or "no response" yet, with its
        job's deadline: what a restarted master rebuilds its lifecycles from.
        Where masters share the database, only those of this store's owner's
        jobs, or of `jids` (jobs it took over)."""
        where = ""
        args: tuple[Any, ...] = ()
        if jids is not None:
            where, args = f" AND h.jid IN ({', '.join('?' * len(jids))})", tuple(jids)
            if not jids:
                return []
        elif self.conn.shared and self.owner is not None:
            where, args = " AND j.owner = ?", (self.owner,)
        rows = self.conn.execute(
            "SELECT h.jid, h.host, h.state, j.deadline FROM job_hosts h JOIN jobs j USING (jid)"  # noqa: S608 - placeholders only
            f" WHERE h.state IN ('sent', 'received') AND j.started = 1{where}"
            " ORDER BY h.jid, h.host",
            args,
        )
        return [OpenRow(r[0], r[1], State(r[2]), r[3]) for r in rows]

    def result_of(self, jid: str, host: str) -> dict[str, Any] | None:
        """The stored result of (jid, host), or None if it has none."""
        row = self._stored_result(jid, host)
        return None if row is None or row[1] is None else _load_result(row[1])

    def answer_of(self, jid: str, host: str) -> Answer | None:
        """result_of(), as a CLI is told it: its outcome, and its bytes as
        stored (msgpack, not unpacked; a result stored as version 1's JSON
        text comes packed)."""
        row = self._stored_result(jid, host)
        if row is None or row[1] is None:
            return None
        status, stored = row[0], row[1]
        packed = codec.pack(_load_result(stored)) if isinstance(stored, str) else bytes(stored)
        return Answer(HostStatus(status), packed)

    def _stored_result(self, jid: str, host: str) -> tuple[str, bytes | str | None] | None:
        row = self.conn.execute(
            "SELECT status, result FROM job_hosts WHERE jid = ? AND host = ? AND state = 'done'",
            (jid, host),
        ).fetchone()
        return None if row is None else (row[0], row[1])

    def envelope(self, jid: str, host: str) -> bytes | None:
        """The sealed envelope of (jid, host), while it waits for its receipt:
        only jobs stored before migration 4 (since then envelopes are sealed
        when published, from parts())."""
        row = self.conn.execute(
            "SELECT envelope FROM job_hosts WHERE jid = ? AND host = ? AND state = 'sent'",
            (jid, host),
        ).fetchone()
        return None if row is None else row[0]

    def host_state(self, jid: str, host: str) -> HostState | None:
        """The state of (jid, host), or None if that job was never sent to that
        host (or is not started yet: nothing of it was published)."""
        row = self.conn.execute(
            "SELECT h.state FROM job_hosts h JOIN jobs j USING (jid)"
            " WHERE h.jid = ? AND h.host = ? AND j.started = 1",
            (jid, host),
        ).fetchone()
        return None if row is None else HostState(row[0])

    def record(
        self, receipts: list[tuple[str, str]], results: list[StoredResult], *, now: float
    ) -> None:
        """Store receipts (jid, host) and results that arrived together, in one
        transaction: one fsync for a whole batch of arrivals.

        A receipt drops the envelope; one for a host not waiting for it changes
        nothing. The caller has checked that each result's (jid, host) exists
        and is not done.
        """
        with transaction(self.conn):
            self.record_rows(receipts, results, now=now)

    def record_rows(
        self, receipts: list[tuple[str, str]], results: list[StoredResult], *, now: float
    ) -> None:
        """The writes of record(), inside a transaction the caller holds, so
        that it can commit other rows with them (master/resultwriter.py: the
        heartbeat rows, in the same fsync)."""
        self.conn.executemany(
            "UPDATE job_hosts SET state = 'received', received = ?, envelope = NULL"
            " WHERE jid = ? AND host = ? AND state = 'sent'",
            [(now, jid, host) for jid, host in receipts],
        )
        self.conn.executemany(
            "UPDATE job_hosts SET state = 'done', status = ?, changes = ?, result = ?,"
            " result_bytes = ?, returned = ?, envelope = NULL,"
            " late = CASE WHEN state = 'no_response' THEN 1 ELSE 0 END"
            " WHERE jid = ? AND host = ? AND state != 'done'",
            [
                (
                    str(r.status),
                    r.changes,
                    r.packed,
                    len(r.packed),
                    r.returned,
                    r.jid,
                    r.host,
                )
                for r in results
            ],
        )
        # A files job that ran (not an error) had all its content on the
        # host, which keeps it: the next job need not carry it again.
        self.conn.executemany(
            "INSERT INTO host_content (host, jid) VALUES (?, ?) ON CONFLICT (host)"
            " DO UPDATE SET jid = excluded.jid WHERE excluded.jid > host_content.jid",
            [
                (r.host, r.jid)
                for r in results
                if r.result.get("apply") is not None and r.result.get("status") != "error"
            ],
        )
        if self.conn.shared:  # the job's master may be another
            for r in results:
                self.conn.notify(RESULTS_CHANNEL, f"{r.jid} {r.host}")

    def no_response(self, pairs: Collection[tuple[str, str]]) -> None:
        """Record (jid, host) pairs without result as "no response", in one
        transaction; a pair that has its result meanwhile keeps it."""
        with transaction(self.conn):
            self.conn.executemany(
                "UPDATE job_hosts SET state = 'no_response', envelope = NULL"
                " WHERE jid = ? AND host = ? AND state IN ('sent', 'received')",
                list(pairs),
            )

    def purge_before(self, jid: str, rows: int = PURGE_CHUNK) -> tuple[int, bool]:
        """Delete part of the jobs older than `jid` (jids sort by time): at
        most `rows` of their host rows, oldest first, and the jobs left
        without any. Returns (jobs deleted, whether more may be left): the
        caller goes on, a loop turn later, until nothing is."""
        with transaction(self.conn):
            deleted = self.conn.execute(
                "DELETE FROM job_hosts WHERE (jid, host) IN"
                " (SELECT jid, host FROM job_hosts WHERE jid < ? ORDER BY jid, host LIMIT ?)",
                (jid, rows),
            ).rowcount
            if deleted == rows:
                return 0, True
            # The old jobs have no host rows left: they go, with their plans,
            # manifests and content (ON DELETE CASCADE), which are few per job.
            jobs = self.conn.execute("DELETE FROM jobs WHERE jid < ?", (jid,)).rowcount
        self._modules = {k: v for k, v in self._modules.items() if k >= jid}
        return jobs, False

    def list_jobs(
        self,
        *,
        host: str | None = None,
        target: str | None = None,
        limit: int = DEFAULT_LIST_LIMIT,
        since: float | None = None,
        until: float | None = None,
        module: str | None = None,
        status: str | None = None,
        user: str | None = None,
    ) -> list[JobSummary]:
        """Newest first. `host` keeps jobs that went to that host; `target`, jobs
        submitted with exactly that target; `since` and `until` (unix times),
        jobs submitted in that span, ends included; `module` and `user`, jobs
        of that module and user; `status` (an outcome: changed, ok, failed,
        no response, pending), jobs with at least one host in that state.

        The time span is a range of jids (a jid is its submission time, and
        jids sort by time), so it walks the primary key; the other filters
        are checked per job along that walk, each on an index."""
        where: list[str] = ["started = 1"]
        args: list[Any] = []
        if since is not None:
            where.append("jid >= ?")
            args.append(_jid_at(since))
        if until is not None:
            where.append("jid <= ?")
            args.append(_jid_at(until))
        if host is not None:
            where.append("jid IN (SELECT jid FROM job_hosts WHERE host = ?)")
            args.append(host)
        if target is not None:
            where.append("target = ?")
            args.append(target)
        if module is not None:
            where.append("module = ?")
            args.append(module)
        if user is not None:
            where.append('"user" = ?')
            args.append(user)
        if status is not None:
            condition, status_args = _STATUS_CONDITIONS[status]
            where.append(
                "EXISTS (SELECT 1 FROM job_hosts h WHERE h.jid = jobs.jid"  # noqa: S608 - fixed
                f" AND {condition})"
            )
            args.extend(status_args)
        clause = f"WHERE {' AND '.join(where)}"
        limit = max(1, min(limit, MAX_LIST_LIMIT))
        jobs = self.conn.execute(
            f"SELECT * FROM jobs {clause} ORDER BY jid DESC LIMIT ?",  # noqa: S608 - fixed clauses
            (*args, limit),
        ).fetchall()
        # Every listed job's host counts in one query, not one per job: on a
        # database across the network each query is a round trip.
        counts: dict[str, dict[str, int]] = {
            row["jid"]: dict.fromkeys(("changed", "ok", "failed", "no_response", "pending"), 0)
            for row in jobs
        }
        if counts:
            marks = ", ".join("?" * len(counts))
            for jid, state, status, n in self.conn.execute(
                f"SELECT jid, state, status, count(*) FROM job_hosts WHERE jid IN ({marks})"  # noqa: S608 - placeholders only
                " GROUP BY jid, state, status",
                list(counts),
            ):
                if state == HostState.DONE:
                    counts[jid][status] += n
                elif state == HostState.NO_RESPONSE:
                    counts[jid]["no_response"] += n
                else:
                    counts[jid]["pending"] += n
        summaries = [
            JobSummary(job=_job(row), hosts=sum(counts[row["jid"]].values()), **counts[row["jid"]])
            for row in jobs
        ]
        return summaries

    def get_job(self, jid: str) -> JobRecord | None:
        row = self.conn.execute(
            "SELECT * FROM jobs WHERE jid = ? AND started = 1", (jid,)
        ).fetchone()
        return None if row is None else _job(row)

    def get_hosts(self, jid: str, host: str | None = None) -> list[HostRecord]:
        if host is None:
            rows = self.conn.execute("SELECT * FROM job_hosts WHERE jid = ? ORDER BY host", (jid,))
        else:
            rows = self.conn.execute(
                "SELECT * FROM job_hosts WHERE jid = ? AND host = ?", (jid, host)
            )
        return [_host_record(r) for r in rows]

    def hosts_after(
        self, jid: str, after: str, *, max_bytes: int, max_hosts: int | None = None
    ) -> tuple[list[HostRecord], bool]:
        """The next hosts of job `jid` by name, after `after` ("" for the
        first): as many as have at most `max_bytes` of stored results together
        (at least one) and at most `max_hosts`; and whether more follow. A
        large job is read a part at a time, never all of its results at once."""
        max_hosts = HOSTS_CHUNK if max_hosts is None else max_hosts
        sizes = self.conn.execute(
            "SELECT host, coalesce(result_bytes, length(result), 0) FROM job_hosts"
            " WHERE jid = ? AND host > ? ORDER BY host LIMIT ?",
            (jid, after, max_hosts + 1),  # one more: whether more follow
        ).fetchall()
        count, total = 0, 0
        for _, size in sizes[:max_hosts]:
            if count > 0 and total + size > max_bytes:
                break
            count, total = count + 1, total + size
        if count == 0:
            return [], False
        rows = self.conn.execute(
            "SELECT * FROM job_hosts WHERE jid = ? AND host > ? AND host <= ? ORDER BY host",
            (jid, after, sizes[count - 1][0]),
        )
        return [_host_record(r) for r in rows], count < len(sizes)

    def result_bytes(self, jid: str) -> int:
        """Bytes of the results stored for job `jid`."""
        return self._result_bytes("jid", jid)

    def _result_bytes(self, column: Literal["host", "jid"], value: str) -> int:
        # Rows from before result_bytes was recorded count their result's length.
        row = self.conn.execute(
            "SELECT coalesce(sum(coalesce(result_bytes, length(result))), 0) FROM job_hosts"  # noqa: S608 - a fixed column
            f" WHERE {column} = ? AND result IS NOT NULL",
            (value,),
        ).fetchone()
        return int(row[0])


def _host_record(r: Any) -> HostRecord:
    return HostRecord(
        host=r["host"],
        state=HostState(r["state"]),
        status=None if r["status"] is None else HostStatus(r["status"]),
        received=r["received"],
        returned=r["returned"],
        changes=r["changes"],
        result=None if r["result"] is None else _load_result(r["result"]),
        late=bool(r["late"]),
    )


# A host outcome (outcome()) as a condition on a job_hosts row `h`, for list_jobs(status=...).
_STATUS_CONDITIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    HostStatus.CHANGED: ("h.state = 'done' AND h.status = ?", (HostStatus.CHANGED,)),
    HostStatus.OK: ("h.state = 'done' AND h.status = ?", (HostStatus.OK,)),
    HostStatus.FAILED: ("h.state = 'done' AND h.status = ?", (HostStatus.FAILED,)),
    NO_RESPONSE: ("h.state = 'no_response'", ()),
    PENDING: ("h.state IN ('sent', 'received')", ()),
}


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _marks(values: Sized) -> str:
    """The placeholders of an IN list of len(values) values."""
    return ", ".join("?" * len(values))


def _jid_at(t: float) -> str:
    """The jid of a job submitted at `t` (unix time), to the nearest microsecond
    (a time read from ISO 8601 text is a float a hair off its microsecond)."""
    us = round(min(max(t, 0.0), _LAST_JID_TIME) * 1_000_000)
    return (_EPOCH + datetime.timedelta(microseconds=us)).strftime(JID_FORMAT)


def _job(row: Any) -> JobRecord:
    return JobRecord(
        jid=row["jid"],
        submitted=row["submitted"],
        deadline=row["deadline"],
        user=row["user"],
        target=row["target"],
        module=row["module"],
        dry_run=bool(row["dry_run"]),
        git_commit=row["git_commit"],
    )
