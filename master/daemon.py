"""The master daemon: keys, jobs, results and the control socket, in one loop.

Sockets:

    XPUB    publish_port. Jobs, one sealed envelope per host, under that
            host's topic. XPUB is PUB that also reports subscriptions: when a
            minion (re)subscribes, its undelivered envelopes go out at once,
            so a slow joiner is served without waiting for the next re-publish.
    ROUTER  return_port. Enrolment (the only plain message accepted),
            heartbeats, job receipts and results; replies go back to the
            sender's routing id.
    control an AF_UNIX socket for the CLI (master/control.py).

A job is compiled for every targeted host, sealed to each host alone, and
stored with its envelopes (master/jobstore.py) before the first publish. An
envelope is re-published with backoff until its receipt arrives or the job's
deadline passes; at the deadline the hosts without a result are recorded as
"no response". A result is checked against the job store (sent to that host,
not already stored), stored, and only then acknowledged; results that arrive
together are stored in one transaction. Each stored result is streamed to the
CLI that started the job, if it is still connected.

Presence comes only from authenticated heartbeats: a minion counts as
connected while its heartbeats keep coming, never because of an address.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import sqlite3
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

import zmq

from common import keyfile
from common import log as safcm_log
from common.crypto import PublicKeys
from common.errors import ConfigError, EnvelopeError, ProtocolError, SafcmError, UsageError
from common.loop import Loop
from common.protocol import (
    MASTER_ID,
    MAX_FRAME_BYTES,
    MAX_PLAIN_NETWORK_BYTES,
    NO_RESPONSE,
    Channel,
    Dispatcher,
    Message,
    Module,
    MsgType,
    decode_plain,
    encode_plain,
    is_sealed,
    make_enrol_reply,
    new_jid,
    open_message_at,
    seal_message_at,
    topic_for,
    verify_enrol_request,
)
from common.protocol import KeyState as WireKeyState
from master import targets
from master.compiler import HostConfig, compile_hosts, load_repository
from master.control import ControlConnection, ControlServer
from master.db import open_db
from master.jobstore import HostState, JobRecord, JobStore, StoredResult, host_status, outcome
from master.keystore import KeyState, KeyStore, MinionKey
from master.render import Tally
from master.settings import MasterSettings

log = logging.getLogger("safcm-master")

# Re-publishing an envelope without receipt: first after this many seconds,
# then doubling up to REPUBLISH_MAX. A minion that (re)subscribes is served at
# once (XPUB), so this only covers a message lost on a live subscription; an
# early retry would mostly hit minions still busy with the first copy (the
# fan-out benchmark saw hundreds of such duplicates at 0.5 s).
REPUBLISH_FIRST = 5.0
REPUBLISH_MAX = 30.0
# How often the loop looks for envelopes to re-publish and jobs past their
# deadline, in seconds.
TICK = 0.25
# A minion counts as connected while its last heartbeat is younger than this
# many of its heartbeat intervals (it reports its interval in each heartbeat).
LIVENESS = 3
# Lifetime of the master's own small sealed messages, in seconds.
MESSAGE_TTL = 60
# Seconds added to a job's timeout for its envelope's lifetime, so an envelope
# received just before the deadline can still be opened (clock skew).
ENVELOPE_SLACK = 5
# Messages read from the ROUTER per wake-up before results are committed:
# results that arrive together share one fsync.
ROUTER_BATCH = 512
# How often last-seen times are written to the database, in seconds.
LAST_SEEN_FLUSH = 30.0
# How often old jobs are deleted (keep_jobs), in seconds.
RETENTION_INTERVAL = 3600.0
# Messages ZeroMQ may queue per subscriber before it drops (then re-publish helps).
PUBLISH_HWM = 10_000
# Seconds `git rev-parse` may take to name the repository's commit.
GIT_TIMEOUT = 5.0
# Log lines about dropped messages per second at most; the rest are counted.
DROP_LOG_RATE = 10


@dataclass
class Pending:
    """An envelope waiting for its receipt. The envelope itself stays in the
    job store, not in memory: a job for thousands of hosts would not fit."""

    jid: str
    host: str
    topic: bytes
    deadline: float
    next_send: float = 0.0
    delay: float = REPUBLISH_FIRST


class Outbox:
    """The envelopes waiting for receipts, by (jid, host) and by topic."""

    def __init__(self) -> None:
        self.items: dict[tuple[str, str], Pending] = {}
        self._by_topic: dict[bytes, set[tuple[str, str]]] = {}

    def __len__(self) -> int:
        return len(self.items)

    def add(self, jid: str, host: str, deadline: float) -> Pending:
        item = self.items[(jid, host)] = Pending(jid, host, topic_for(host), deadline)
        self._by_topic.setdefault(item.topic, set()).add((jid, host))
        return item

    def remove(self, jid: str, host: str) -> None:
        item = self.items.pop((jid, host), None)
        if item is not None:
            keys = self._by_topic[item.topic]
            keys.discard((jid, host))
            if not keys:
                del self._by_topic[item.topic]

    def for_topic(self, topic: bytes) -> list[Pending]:
        return [self.items[key] for key in self._by_topic.get(topic, ())]


@dataclass
class Run:
    """A job some CLI waits on: which hosts have answered."""

    jid: str
    hosts: list[str]
    deadline: float
    waiting: set[str]
    dry_run: bool
    watchers: list[ControlConnection] = field(default_factory=list)
    tally: Tally = field(default_factory=Tally)


@dataclass
class Presence:
    last_seen: float  # monotonic
    interval: float  # the minion's heartbeat interval, seconds
    last_id: str  # id (a jid) of its last heartbeat; each must be newer: replays are refused


class DropLog:
    """Rate-limited warnings about dropped messages, so a flood cannot flood the log."""

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.second = 0
        self.logged = 0
        self.suppressed = 0

    def __call__(self, peer: str, reason: str) -> None:
        now = int(self.clock())
        if now != self.second:
            if self.suppressed:
                log.warning("dropped %d more messages (not logged one by one)", self.suppressed)
            self.second, self.logged, self.suppressed = now, 0, 0
        if self.logged < DROP_LOG_RATE:
            self.logged += 1
            log.warning("dropped a message from %s: %s", peer, reason)
        else:
            self.suppressed += 1


class Master:
    def __init__(
        self, settings: MasterSettings, *, loop: Loop, ctx: zmq.Context, clock: Any = time.time
    ) -> None:
        self.settings = settings
        self.loop = loop
        self.ctx = ctx
        self.clock = clock
        os.makedirs(settings.state_dir, mode=0o700, exist_ok=True)
        self.keys, created = keyfile.load_or_create(os.path.join(settings.state_dir, "keys"))
        if created:
            log.info("created the master key pair, fingerprint %s", self.keys.fingerprint())
        self.db = open_db(settings.state_dir)
        self.jobs = JobStore(self.db)
        self.keystore = KeyStore(self.db)
        self.public: dict[str, PublicKeys] = {}  # accepted minions' keys, as objects
        self.presence: dict[str, Presence] = {}
        self.pending = Outbox()
        self.runs: dict[str, Run] = {}
        # Deadlines of jobs with hosts that have not answered, also jobs from
        # before a restart: when one passes, those hosts become "no response".
        self.deadlines: dict[str, float] = {}
        self.last_jid = self.jobs.last_jid()
        self.drop = DropLog(clock)
        self.network = Dispatcher(
            Channel.NETWORK,
            {
                MsgType.ENROL_REQUEST: self.on_enrol_request,
                MsgType.HEARTBEAT: self.on_heartbeat,
                MsgType.JOB_RECEIPT: self.on_job_receipt,
                MsgType.RESULT: self.on_result,
            },
        )
        self.control_handlers = {
            MsgType.RUN: self.on_run,
            MsgType.KEYS: self.on_keys,
            MsgType.JOBS: self.on_jobs,
        }
        self.xpub: zmq.Socket | None = None
        self.router: zmq.Socket | None = None
        self.control: ControlServer | None = None
        # Receipts and results read in this wake-up, stored together in one
        # transaction (_store_batch); each result with the routing id its
        # confirmation goes back to.
        self._receipts: list[tuple[str, str]] = []
        self._batch: dict[tuple[str, str], tuple[bytes, StoredResult]] = {}
        # Routing id of the ROUTER message being handled: _reply() answers it.
        # Handlers take only the message (the Dispatcher's contract), so the
        # peer travels beside it.
        self._peer = b""
        self._timers: list[Any] = []

    # ---- life cycle ----

    def start(self) -> None:
        s = self.settings
        host = f"[{s.interface}]" if ":" in s.interface else s.interface
        self.xpub = self._bind(zmq.XPUB, f"tcp://{host}:{s.publish_port}")
        self.xpub.setsockopt(zmq.XPUB_VERBOSE, 1)  # hear every re-subscription too
        self.xpub.setsockopt(zmq.SNDHWM, PUBLISH_HWM)
        self.router = self._bind(zmq.ROUTER, f"tcp://{host}:{s.return_port}")
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 0)
        self.control = ControlServer(
            s.control_path, loop=self.loop, admin_group=s.admin_group, handle=self.on_control
        )
        self.loop.add_reader(self.xpub, self.on_xpub)
        self.loop.add_reader(self.router, self.on_router)
        now = self.clock()
        for record in self.jobs.expire(now):
            log.info("job %s: %s did not answer before the deadline", *record)
        for jid, host, deadline in self.jobs.unreceived(now):
            self.pending.add(jid, host, deadline)  # the first tick publishes them
        self.deadlines = self.jobs.open_deadlines()
        if self.pending:
            log.info("re-publishing %d envelopes of unfinished jobs", len(self.pending))
        self._timers = [
            self.loop.call_every(TICK, self.tick),
            self.loop.call_every(LAST_SEEN_FLUSH, self.keystore.flush_last_seen),
            self.loop.call_every(RETENTION_INTERVAL, self.purge_old_jobs),
        ]
        self.purge_old_jobs()
        log.info(
            "listening on %s ports %d (jobs) and %d (returns); key %s",
            s.interface,
            s.publish_port,
            s.return_port,
            self.keys.fingerprint(),
        )

    def _bind(self, kind: int, address: str) -> zmq.Socket:
        sock = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)
        try:
            sock.bind(address)
        except zmq.ZMQError as e:
            sock.close(0)
            raise SafcmError(f"cannot listen on {address}: {e.strerror}") from e
        return sock

    def close(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._store_batch()
        self.keystore.flush_last_seen()
        if self.control is not None:
            self.control.close()
        for sock in (self.xpub, self.router):
            if sock is not None:
                self.loop.remove_reader(sock)
                sock.close(0)
        self.db.close()

    # ---- periodic work ----

    def tick(self) -> None:
        now = self.clock()
        mono = self.loop.clock()
        for item in list(self.pending.items.values()):
            if item.deadline <= now:
                self.pending.remove(item.jid, item.host)
            elif item.next_send <= mono:
                self._publish(item)
        due = [jid for jid, deadline in self.deadlines.items() if deadline <= now]
        if due:
            for jid in due:
                del self.deadlines[jid]
            for jid, host in self.jobs.expire(now):
                log.info("job %s: no response from %s", jid, host)
                self.pending.remove(jid, host)
                run = self.runs.get(jid)
                if run is not None and host in run.waiting:
                    self._run_answered(run, host, NO_RESPONSE, None)

    def purge_old_jobs(self) -> None:
        cutoff = new_jid(self.clock() - self.settings.keep_jobs)
        removed = self.jobs.purge_before(cutoff)
        if removed:
            log.info("removed %d jobs older than keep_jobs", removed)

    # ---- publishing ----

    def _publish(self, item: Pending, envelope: bytes | None = None) -> None:
        """Publish one envelope (read from the job store unless given)."""
        if envelope is None:
            envelope = self.jobs.envelope(item.jid, item.host)
            if envelope is None:  # received or expired meanwhile
                self.pending.remove(item.jid, item.host)
                return
        # A full subscriber queue drops the message; the next re-publish tries again.
        with contextlib.suppress(zmq.Again):
            self.xpub.send_multipart([item.topic, envelope], zmq.NOBLOCK)
        item.next_send = self.loop.clock() + item.delay
        item.delay = min(item.delay * 2, REPUBLISH_MAX)

    def on_xpub(self) -> None:
        while True:
            try:
                event = self.xpub.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if event[:1] != b"\x01":
                continue  # an unsubscription
            for item in self.pending.for_topic(event[1:]):
                self._publish(item)

    # ---- the ROUTER ----

    def on_router(self) -> None:
        for _ in range(ROUTER_BATCH):
            try:
                frames = self.router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            if len(frames) != 2:
                self.drop(
                    frames[0].hex() if frames else "?", f"{len(frames) - 1} frames instead of one"
                )
                continue
            self._route(frames[0], frames[1])
        self._store_batch()

    def _route(self, peer: bytes, frame: bytes) -> None:
        self._peer = peer
        try:
            if is_sealed(frame):
                msg = open_message_at(
                    frame,
                    me=MASTER_ID,
                    my_keys=self.keys,
                    sender_keys=self._minion_keys,
                    now=self.clock(),
                )
            else:
                if len(frame) > MAX_PLAIN_NETWORK_BYTES:
                    raise ProtocolError(f"a plain message of {len(frame)} bytes")
                msg = decode_plain(frame, Channel.NETWORK)
            self.network.dispatch(msg)
        except EnvelopeError as e:
            self.drop(f"peer {peer.hex()}", f"envelope rejected ({e.reason or 'opaque'})")
        except ProtocolError as e:
            self.drop(f"peer {peer.hex()}", str(e))
        except Exception:  # a bug must cost one message, never the daemon
            log.exception("failed to handle a message from peer %s", peer.hex())

    def _reply(self, frame: bytes) -> None:
        try:
            self.router.send_multipart([self._peer, frame], zmq.NOBLOCK)
        except zmq.Again:
            log.debug("reply to %s dropped: its queue is full", self._peer.hex())

    def _reply_sealed(
        self, minion: str, msg_type: MsgType, body: dict[str, Any], jid: str | None = None
    ) -> None:
        now = self.clock()
        self._reply(
            seal_message_at(
                msg_type,
                body,
                jid=jid or new_jid(now),
                sender=MASTER_ID,
                sender_keys=self.keys,
                recipient=minion,
                recipient_keys=self.public[minion],
                now=now,
                ttl=MESSAGE_TTL,
            )
        )

    def _minion_keys(self, sender: str) -> PublicKeys | None:
        """The keys a sealed message from `sender` must be signed with: accepted ones only."""
        keys = self.public.get(sender)
        if keys is None:
            key = self.keystore.accepted(sender)
            if key is None:
                return None
            keys = self.public[sender] = PublicKeys(sign=key.sign_pub, kx=key.kx_pub)
        return keys

    # ---- network handlers ----

    def on_enrol_request(self, msg: Message) -> None:
        now = self.clock()
        keys = verify_enrol_request(msg, now=now)
        minion = msg.body["id"]
        state = self.keystore.enrol(
            minion,
            keys.sign,
            keys.kx,
            keys.fingerprint(),
            now=now,
            auto_accept=self.settings.auto_accept,
        )
        if state is None:
            known = self.keystore.get(minion)
            if known is not None:
                log.warning(
                    "refused minion %s presenting key %s: it is known with key %s "
                    "(possible impersonation; if the host was reinstalled, run "
                    "'safcm-master keys delete %s')",
                    minion,
                    keys.fingerprint(),
                    known.fingerprint,
                    minion,
                )
            else:
                log.warning(
                    "refused enrolment of %s: too many pending keys; accept, reject "
                    "or delete some first",
                    minion,
                )
            state = KeyState.REJECTED
        else:
            log.debug("enrol request from %s: %s", minion, state)
            if self.keystore.accepted(minion) is None:
                self.public.pop(minion, None)
        reply = make_enrol_reply(
            minion, WireKeyState(state), self.keys, nonce=msg.body["nonce"], now=now
        )
        self._reply(encode_plain(MsgType.ENROL_REPLY, reply))

    def on_heartbeat(self, msg: Message) -> None:
        minion = msg.sender
        seen = self.presence.get(minion)
        if seen is not None and msg.jid <= seen.last_id:
            raise ProtocolError(f"heartbeat of {minion} is not newer than its last (a replay)")
        if seen is None:
            log.info("minion %s is connected (version %s)", minion, msg.body["version"])
        self.presence[minion] = Presence(self.loop.clock(), msg.body["interval"], msg.jid)
        self.keystore.touch(minion, self.clock())
        self._reply_sealed(minion, MsgType.HEARTBEAT_REPLY, {"time": self.clock()})

    def on_job_receipt(self, msg: Message) -> None:
        self._receipts.append((msg.jid, msg.sender))  # stored with this wake-up's batch
        self.pending.remove(msg.jid, msg.sender)

    def on_result(self, msg: Message) -> None:
        minion, jid = msg.sender, msg.jid
        state = self.jobs.host_state(jid, minion)
        if state is None:
            raise ProtocolError(f"result from {minion} for job {jid}, which was never sent to it")
        if state is HostState.DONE or (jid, minion) in self._batch:
            log.info(
                "job %s: duplicate result from %s; already stored, confirming again", jid, minion
            )
            self._reply_sealed(minion, MsgType.RESULT_RECEIPT, {"jid": jid}, jid=jid)
            return
        if state is HostState.NO_RESPONSE:
            log.info("job %s: late result from %s, stored after the deadline", jid, minion)
        self.pending.remove(jid, minion)
        body = msg.body
        result = StoredResult(
            jid,
            minion,
            host_status(body),
            len(body["apply"]["changes"]) if body["apply"] else 0,
            body,
            self.clock(),
        )
        self._batch[(jid, minion)] = (self._peer, result)

    def _store_batch(self) -> None:
        """Store the receipts and results read in one wake-up in one transaction
        (one fsync), then confirm the results."""
        if not self._batch and not self._receipts:
            return
        batch, self._batch = list(self._batch.values()), {}
        receipts, self._receipts = self._receipts, []
        try:
            self.jobs.record(receipts, [r for _, r in batch], now=self.clock())
        except sqlite3.Error as e:
            # Not confirmed, so each minion keeps its result and sends it again;
            # a lost receipt costs at most a re-publish, which minions ignore.
            log.error("cannot store %d results, they will come again: %s", len(batch), e)
            return
        for peer, r in batch:
            self._peer = peer
            self._reply_sealed(r.host, MsgType.RESULT_RECEIPT, {"jid": r.jid}, jid=r.jid)
            log.info("job %s: result from %s: %s", r.jid, r.host, r.status)
            run = self.runs.get(r.jid)
            if run is not None and r.host in run.waiting:
                self._run_answered(run, r.host, r.result["status"], r.result)

    # ---- control ----

    def on_control(self, conn: ControlConnection, msg: Message) -> None:
        handler = self.control_handlers.get(msg.type)
        if handler is None:
            conn.error("protocol", f"{msg.type.name} is not a request")
            return
        try:
            handler(conn, msg)
        except ConfigError as e:
            conn.error(
                "config",
                "the configuration has errors; nothing was sent",
                [{"file": p.file, "line": p.line, "message": p.message} for p in e.problems[:1000]],
            )
        except UsageError as e:
            conn.error("usage", str(e))
        except SafcmError as e:
            conn.error("failed", str(e))
        except Exception as e:  # a bug must cost one request, never the daemon
            log.exception("control request %s from %s failed", msg.type.name, conn.user)
            conn.error("internal", f"internal error in the master: {e!r}")

    def on_run(self, conn: ControlConnection, msg: Message) -> None:
        body = msg.body
        module = body["module"]
        dry_run = body["dry_run"]
        timeout = body["timeout"] or self.settings.job_timeout
        target = targets.normalise(body["target"], body["group"])
        repo = load_repository(self.settings.config_dir)
        resolved = targets.resolve(
            target,
            hosts=repo.hosts,
            group_members=_members(repo),
            accepted={k.id for k in self.keystore.all() if k.state is KeyState.ACCEPTED},
            key_states=lambda i: k.state if (k := self.keystore.get(i)) else None,
        )
        configs = compile_hosts(repo, resolved.hosts) if module == Module.FILES else {}

        now = self.clock()
        jid = new_jid(now, self.last_jid)
        deadline = now + timeout
        ttl = math.ceil(timeout) + ENVELOPE_SLACK
        envelopes = {}
        for host in resolved.hosts:
            job = {"module": module, "dry_run": dry_run, "deadline": deadline}
            job.update(_job_files(configs.get(host)))
            try:
                envelopes[host] = seal_message_at(
                    MsgType.JOB,
                    job,
                    jid=jid,
                    sender=MASTER_ID,
                    sender_keys=self.keys,
                    recipient=host,
                    recipient_keys=self._minion_keys(host),
                    now=now,
                    ttl=ttl,
                )
            except ProtocolError as e:
                raise ConfigError(f"host {host}: its job cannot be sent: {e}") from e
        record = JobRecord(
            jid,
            now,
            deadline,
            conn.user,
            target,
            module,
            dry_run,
            _git_commit(self.settings.config_dir),
        )
        self.jobs.create(record, envelopes)  # stored before anything is published
        self.last_jid = jid
        self.deadlines[jid] = deadline
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
            },
        )
        run = Run(jid, resolved.hosts, deadline, set(resolved.hosts), dry_run, [conn])
        self.runs[jid] = run
        conn.on_close.append(lambda c: run.watchers.remove(c) if c in run.watchers else None)
        for host, envelope in envelopes.items():
            self._publish(self.pending.add(jid, host, deadline), envelope)

    def _run_answered(
        self, run: Run, host: str, status: str, result: dict[str, Any] | None
    ) -> None:
        run.waiting.discard(host)
        run.tally.add(outcome(result))
        for conn in list(run.watchers):
            conn.send(
                MsgType.RUN_HOST_RESULT,
                {"jid": run.jid, "host": host, "status": status, "result": result},
            )
        if not run.waiting:
            summary = {**run.tally.as_dict(), "targeted": len(run.hosts)}
            for conn in list(run.watchers):
                conn.send(MsgType.RUN_DONE, {"jid": run.jid, "summary": summary})
                conn.finish()
            del self.runs[run.jid]
            self.deadlines.pop(run.jid, None)

    def on_keys(self, conn: ControlConnection, msg: Message) -> None:
        action, ids = msg.body["action"], msg.body["ids"]
        now = self.clock()
        if action == "list":
            keys = [k for k in self.keystore.all() if not ids or k.id in ids]
        elif action == "delete":
            keys = self.keystore.delete(ids)
            for k in keys:
                self.public.pop(k.id, None)
                self.presence.pop(k.id, None)
                log.info("key of %s deleted by %s", k.id, conn.user)
        else:
            state = KeyState.ACCEPTED if action == "accept" else KeyState.REJECTED
            keys = self.keystore.set_state(ids, state, now=now)
            for k in keys:
                self.public.pop(k.id, None)
                log.info("key of %s %s by %s (%s)", k.id, state, conn.user, k.fingerprint)
        conn.send(
            MsgType.KEYS_REPLY,
            {
                "master": self.keys.fingerprint(),
                "keys": [self._key_row(k) for k in keys],
                "refused": [
                    {
                        "id": r.id,
                        "fingerprint": r.fingerprint,
                        "attempts": r.attempts,
                        "last_seen": r.last_seen,
                    }
                    for r in self.keystore.refused()
                    if action == "list" and (not ids or r.id in ids)
                ],
            },
        )
        conn.finish()

    def _key_row(self, key: MinionKey) -> dict[str, Any]:
        seen = self.presence.get(key.id)
        connected = (
            key.state is KeyState.ACCEPTED
            and seen is not None
            and self.loop.clock() - seen.last_seen < LIVENESS * seen.interval
        )
        return {
            "id": key.id,
            "state": str(key.state),
            "fingerprint": key.fingerprint,
            "connected": connected,
            "last_seen": key.last_seen,
        }

    def on_jobs(self, conn: ControlConnection, msg: Message) -> None:
        body = msg.body
        if body["action"] == "list":
            rows = self.jobs.list_jobs(
                host=body["host"], target=body["target"], limit=body["limit"]
            )
            conn.send(
                MsgType.JOBS_REPLY,
                {
                    "jobs": [
                        {
                            **_job_dict(s.job),
                            "hosts": s.hosts,
                            "changed": s.changed,
                            "ok": s.ok,
                            "failed": s.failed,
                            "no_response": s.no_response,
                            "pending": s.pending,
                        }
                        for s in rows
                    ]
                },
            )
        else:
            job = self.jobs.get_job(body["jid"])
            if job is None:
                raise UsageError(f"no job {body['jid']} in the history")
            hosts = self.jobs.get_hosts(job.jid, body["host"])
            if body["host"] is not None and not hosts:
                raise UsageError(f"job {job.jid} did not go to {body['host']}")
            conn.send(
                MsgType.JOB_REPLY,
                {
                    "job": _job_dict(job),
                    "hosts": [
                        {
                            "host": h.host,
                            "state": str(h.state),
                            "status": _stored_status(h.state, h.result),
                            "received": h.received,
                            "returned": h.returned,
                            "result": h.result,
                        }
                        for h in hosts
                    ],
                },
            )
        conn.finish()


# ---- pure helpers ----


def _members(repo: Any) -> Any:
    def members(name: str) -> list[str]:
        if not repo.has_group(name):
            raise UsageError(f"unknown group {name!r} (groups: {', '.join(repo.group_names())})")
        return repo.members(name)

    return members


def _stored_status(state: HostState, result: dict[str, Any] | None) -> str:
    if result is not None:
        return result["status"]
    return NO_RESPONSE if state is HostState.NO_RESPONSE else "pending"


def _job_dict(job: JobRecord) -> dict[str, Any]:
    return {
        "jid": job.jid,
        "submitted": job.submitted,
        "deadline": job.deadline,
        "user": job.user,
        "target": job.target,
        "module": job.module,
        "dry_run": job.dry_run,
        "git_commit": job.git_commit,
    }


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


def run(settings: MasterSettings) -> int:
    """Run the master until SIGTERM or SIGINT."""
    ctx = zmq.Context()
    loop = Loop()
    loop.stop_on_signals(signal.SIGTERM, signal.SIGINT)
    master = Master(settings, loop=loop, ctx=ctx)
    try:
        master.start()
        loop.run()
    finally:
        log.info("stopping")
        master.close()
        loop.close()
        ctx.term()
    return 0


def main(settings: MasterSettings) -> int:
    safcm_log.setup(settings.log_level)
    return run(settings)


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
