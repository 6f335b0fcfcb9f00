"""The master daemon: one loop, its sockets, and the parts that serve them.

    socket             port          served by
    XPUB, CURVE        publish_port  master/publish.py  jobs, one sealed envelope per host
    ROUTER, CURVE      return_port   master/intake.py   enrolment, heartbeats, receipts,
                                                        progress and results
    ROUTER, plain      key_port      master/keys.py     the master's public keys
    control (AF_UNIX)  control_path  master/control.py  the CLI: RUN (master/runs.py),
                                                        KEYS (master/keys.py),
                                                        JOBS (master/history.py)

The sealed, signed envelopes (common/crypto.py) travel end to end inside the
CURVE transport: CURVE keeps strangers out and hides traffic and metadata
(topics, jids, sizes); the envelopes keep each job readable by its one host
and make every message verifiable on its own, also from the job history.
Which keys may finish a CURVE handshake is decided here (zap_decide), for
every socket; who is connected is master/peers.py's.

The state of each (job, host), sent -> received -> done or no response, with
its re-publish schedule and deadline, is master/lifecycle.py's: the parts
above feed it what arrives, and it asks for what must happen through the
"lifecycle effects" of Master, which route each to the part that does it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import grp
import logging
import math
import os
import resource
import signal
import time
from collections.abc import Callable

import zmq

from safcm.common import codec, keyfile
from safcm.common import log as safcm_log
from safcm.common import modules as module_wires
from safcm.common.daemonlock import lock_state_dir
from safcm.common.errors import ConfigError, DaemonError, SafcmError, StoreError, UsageError
from safcm.common.gcpace import pace_collections
from safcm.common.loop import Loop, Timer
from safcm.common.memory import map_large_blocks
from safcm.common.protocol import Message, MsgType, ResultStatus, new_jid
from safcm.common.ratelimit import PeerLog
from safcm.common.stallwatch import StallWatch
from safcm.master.backlog import UNKNOWN_WAITING_MAX, WATCH_INTERVAL, BacklogWatch, rss_bytes
from safcm.master.cluster import (
    LEASE_RENEW,
    RELAY_CHANNEL,
    Cluster,
    Relay,
    master_name,
    parse_relay,
)
from safcm.master.control import ControlConnection, ControlServer
from safcm.master.db import WORKER_BUSY_TIMEOUT_MS, Listener, open_store
from safcm.master.facts import FactStore, host_facts
from safcm.master.history import History
from safcm.master.intake import RETURN_MAX_IN, RETURN_RCVHWM, Intake
from safcm.master.jobstore import RESULTS_CHANNEL, Answer, HostState, JobStore, StoredResult
from safcm.master.keys import KeyService
from safcm.master.keystore import KEYS_CHANNEL, KeyStore
from safcm.master.lifecycle import STORE_RETRY, Lifecycles, Verdict
from safcm.master.outcomes import HostStatus
from safcm.master.peers import Peers
from safcm.master.prepworker import PrepareWorker
from safcm.master.publish import PUBLISH_PENALTY, Publisher
from safcm.master.resultwriter import ResultWriter
from safcm.master.runs import Runs
from safcm.master.settings import MasterSettings
from safcm.master.transport import DOMAIN_PUBLISH, DOMAIN_RETURN, Zap

log = logging.getLogger("safcm-master")

# How often old jobs are deleted (keep_jobs), in seconds.
RETENTION_INTERVAL = 3600.0
# How often connections that never identified themselves, or unknown keys
# that went quiet, are cut (master/transport.py), in seconds.
STALE_CHECK_INTERVAL = 5.0
# How often heartbeat sequence numbers and last-seen times are written when
# no result commit carried them, in seconds: a replay of a heartbeat from the
# last second (and a commit) before a crash is the most a restart can let through.
SEQ_FLUSH = 1.0
# Seconds between attempts to hear other masters again after the database
# went away (a PostgreSQL restart or failover).
LISTEN_RETRY = 2.0
# Descriptors kept free of network connections: the database, the control
# socket and its clients, libzmq's own (about 35 are open once started).
RESERVED_FDS = 256
# Bytes an accepted minion's connection to the return socket may make
# libzmq hold: RETURN_RCVHWM whole results queued, and one on its way.
RETURN_WAITING_MAX = (RETURN_RCVHWM + 1) * RETURN_MAX_IN
# Descriptors each network socket may hold beyond its connection cap, as a
# share of the cap. libzmq accepts a connection before its monitor event
# reaches us and we cut it, so a burst of connects overshoots the caps for a
# moment: by 350-480 descriptors over three caps of 170 (1,500 to 12,000
# connects from 127.0.0.1 in 0.04-0.2 s). A 1024 limit thus gives caps of
# 170 and room for most such bursts. No share stops a burst that outruns
# our cuts, so the limit itself is made cheap to reach: a cut needs no
# descriptor (master/transport.py) and the control socket pauses
# (master/control.py); a burst to the limit costs about 0.1 CPU-s and one
# log line (tests/system/test_transport.py).
BURST_SHARE = 0.5
# Fewest connections per network socket the master starts with; below, the
# descriptor limit is a mistake to fix, not a size to run at.
MIN_CONNECTIONS = 16


class Master:
    def __init__(
        self,
        settings: MasterSettings,
        *,
        loop: Loop,
        ctx: zmq.Context,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.loop = loop
        self.ctx = ctx
        self.clock = clock
        os.makedirs(settings.state_dir, mode=0o700, exist_ok=True)
        _open_state_dir(settings)
        self.lock = lock_state_dir(settings.state_dir, "safcm-master")
        self.keys, created = keyfile.load_or_create(os.path.join(settings.state_dir, "keys"))
        if created:
            log.info("created the master key pair, fingerprint %s", self.keys.fingerprint())
        self.db = open_store(settings.state_dir, settings.store)
        # Where masters share the database, this one's name and lease.
        name = master_name(settings.interface, settings.return_port)
        self.cluster = Cluster(self.db, name) if self.db.shared else None
        self.jobs = JobStore(self.db, None if self.cluster is None else self.cluster.name)
        self.relay: Relay | None = None
        self.keystore = KeyStore(self.db)
        self.peer_log = PeerLog(log, loop.clock)
        self.peers = Peers(ctx, loop, self.keystore, self.peer_log)
        self.peers.facts.update(host_facts(FactStore(self.db).all()))
        # Every open (job, host): what is published when, and when a host
        # becomes "no response"; it asks for that through the methods under
        # "lifecycle effects" below.
        self.lifecycle = Lifecycles(self)
        self._wake: Timer | None = None  # the lifecycle's next wake-up
        self._wake_when = math.inf  # its time, unix
        self.publisher = Publisher(
            self.keys, self.peers, self.keystore, self.jobs, self.lifecycle, clock, self.unsendable
        )
        # Results, receipts and heartbeat rows are committed off the loop, on
        # a connection of the writer's own (master/resultwriter.py), which
        # may wait for the database as a worker does.
        writer_db = open_store(
            settings.state_dir,
            settings.store,
            busy_timeout_ms=WORKER_BUSY_TIMEOUT_MS,
            any_thread=True,
        )
        self.writer = ResultWriter(writer_db, loop)
        self.intake = Intake(
            settings,
            self.keys,
            self.peers,
            self.keystore,
            self.jobs,
            self.lifecycle,
            clock,
            self.writer,
        )
        self.key_service = KeyService(
            self.keys, self.peers, self.keystore, self.lifecycle, clock, settings.publish_port
        )
        # Loading, targeting and compiling a run's job, then building and
        # storing it (master/runs.py): in a worker process, so that the loop
        # does not wait for the GIL either (master/prepworker.py), asked by
        # one thread, so runs are prepared and stored in the order they came.
        self.prepare_worker = PrepareWorker(settings, self.jobs.owner)
        self.prepare_pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="prepare"
        )
        self.runs = Runs(
            settings,
            self.keys,
            self.peers,
            self.keystore,
            self.jobs,
            self.publisher,
            self.lifecycle,
            clock,
            lambda callback: self.loop.call_later(0.0, callback),
            self.report,
            self.prepare_pool,
            self.prepare_worker,
            self.writer,
        )
        self.history = History(self.jobs, self.report)
        if self.cluster is not None:
            self.relay = Relay(self.db, self.cluster.name, self.peers.connected, self.loop.clock)
            self.intake.relay = self.relay
            self.publisher.relay = self.relay
        self.control_handlers: dict[MsgType, Callable[[ControlConnection, Message], None]] = {
            MsgType.RUN: self.runs.on_run,
            MsgType.KEYS: self.key_service.on_keys,
            MsgType.JOBS: self.history.on_jobs,
        }
        self.zap: Zap | None = None
        self.control: ControlServer | None = None
        self._timers: list[Timer] = []
        self._purging = False  # old jobs are being deleted, a chunk a loop turn
        # Other masters' key changes, where the database is shared (PostgreSQL).
        self.listener: Listener | None = None
        self._listening_fd: int | None = None

    # ---- life cycle ----

    def start(self) -> None:
        s = self.settings
        host = f"[{s.interface}]" if ":" in s.interface else s.interface
        cap = _connection_cap(s.max_connections)
        # Every module's wire, found now: the first RUN would otherwise scan
        # and import the modules package on the loop (80 ms seen under disk load).
        module_wires.wires()
        # The ZAP handler first: libzmq lets every key in while none is bound.
        self.zap = Zap(self.ctx, self.loop, self.zap_decide)
        secret = self.keys.curve_secret().reveal()
        self.publisher.open(f"tcp://{host}:{s.publish_port}", cap, secret)
        self.intake.open(f"tcp://{host}:{s.return_port}", cap, secret)
        self.key_service.open(f"tcp://{host}:{s.key_port}", cap)
        self.control = ControlServer(
            s.control_path,
            loop=self.loop,
            admin_group=s.admin_group,
            handle=self.on_control,
            peer_log=self.peer_log,
        )
        discarded = self.jobs.discard_unstarted()
        if discarded:
            log.info("removed %d jobs that were being stored when the master stopped", discarded)
        # Now, not at the first run: that run does not wait for it to start.
        self.prepare_worker.start()
        self.listener = self.db.listener([KEYS_CHANNEL, RESULTS_CHANNEL, RELAY_CHANNEL])
        if self.listener is not None:
            self._watch_listener()
            self.key_service.shared = True
        if self.cluster is not None:
            self.cluster.renew()
            self._timers.append(self.loop.call_every(LEASE_RENEW, self.keep_lease))
        now = self.clock()
        rows = self.jobs.open_hosts()
        # Published again at the first wake-up; those past their deadline
        # become "no response" then.
        self.lifecycle.restore(rows, now)
        unreceived = sum(1 for r in rows if r.state is HostState.SENT and r.deadline > now)
        if unreceived:
            log.info("re-publishing %d envelopes of unfinished jobs", unreceived)
        self._timers += [
            self.loop.call_every(SEQ_FLUSH, self.intake.flush),
            self.loop.call_every(STALE_CHECK_INTERVAL, self.peers.cut_stale),
            self.loop.call_every(RETENTION_INTERVAL, self.purge_old_jobs),
            self.loop.call_every(WATCH_INTERVAL, self.watch_waiting),
        ]
        self.waiting_watch = BacklogWatch(self.loop.clock(), rss_bytes())
        self.purge_old_jobs()
        log.info(
            "listening on %s ports %d (jobs), %d (returns) and %d (keys), at most %d "
            "connections each; key %s",
            s.interface,
            s.publish_port,
            s.return_port,
            s.key_port,
            cap,
            self.keys.fingerprint(),
        )
        if not os.path.isdir(s.config_dir):
            # Said now, not at the first run: a fresh install without one
            # starts fine otherwise.
            log.warning(
                "config_dir %s is not a directory: every run fails until the "
                "configuration repository is there",
                s.config_dir,
            )

    # ---- other masters (a cluster on one PostgreSQL database) ----

    def _watch_listener(self) -> None:
        assert self.listener is not None
        if self._listening_fd is not None:
            self.loop.remove_reader(self._listening_fd)
        self._listening_fd = self.listener.fileno()
        self.loop.add_reader(self._listening_fd, self.on_notifications)

    def on_notifications(self) -> None:
        """Another master changed keys: take its changes, and cut the
        connections of keys no longer accepted, as if changed here."""
        assert self.listener is not None
        try:
            pairs = self.listener.drain()
            if pairs is None:  # the listener reconnected: some may be lost
                self._watch_listener()
                changes = self.keystore.reload_all()
                pairs = []
            else:
                ids = sorted({payload for channel, payload in pairs if channel == KEYS_CHANNEL})
                changes = [self.keystore.reload(minion_id) for minion_id in ids]
            for channel, payload in pairs:
                if channel == RESULTS_CHANNEL:
                    jid, _, host = payload.partition(" ")
                    if self.relay is not None:
                        self.relay.forget(jid, host)
                    if self.lifecycle.state(jid, host) is not None:
                        answer = self.jobs.answer_of(jid, host)
                        self.lifecycle.stored_elsewhere(jid, host, answer)
                elif channel == RELAY_CHANNEL:
                    self.on_relay(payload)
        except StoreError as e:
            # The database is away; the listener's socket stays readable, so
            # stop watching it and try again shortly rather than spin.
            log.error("cannot hear other masters' key changes: %s", e)
            if self._listening_fd is not None:
                self.loop.remove_reader(self._listening_fd)
                self._listening_fd = None
            self.loop.call_later(LISTEN_RETRY, self._retry_listener)
            return
        for old, new in changes:
            self.key_service.changed_elsewhere(old, new)

    def on_relay(self, payload: str) -> None:
        """Work another master passed on (master/cluster.py Relay)."""
        assert self.relay is not None
        parsed = parse_relay(payload)
        if parsed is None:
            log.warning("ignored a malformed relay notice %r", payload[:200])
            return
        kind, jid, host, origin = parsed
        if origin == self.relay.name:
            return  # our own notice
        now = self.clock()
        if kind == "publish":
            if self.relay.holds(host):
                self.relay.published_for(jid, host)
                self.publisher.publish(jid, host)
        elif kind == "receipt":
            if self.lifecycle.state(jid, host) is not None:
                self.lifecycle.receipt(jid, host, now)
        elif kind == "progress":
            if self.lifecycle.state(jid, host) is not None:
                self.lifecycle.progress(jid, host, now)
        elif kind == "subscribed":
            self.lifecycle.subscribed(host, now)

    def keep_lease(self) -> None:
        """Renew this master's lease, and take over the open jobs of masters
        whose leases ran out (master/cluster.py)."""
        assert self.cluster is not None
        try:
            self.cluster.renew()
            jids = self.cluster.take_over()
            rows = self.jobs.open_hosts(jids) if jids else []
        except StoreError as e:
            log.error("cannot renew this master's lease: %s", e)
            return
        if jids:
            log.info(
                "took over %d open jobs (%d hosts) of masters that stopped: %s",
                len(jids),
                len(rows),
                ", ".join(jids),
            )
            self.lifecycle.restore(rows, self.clock())

    def _retry_listener(self) -> None:
        assert self.listener is not None
        try:
            self.listener.drain()  # reconnects if it must
        except StoreError as e:
            log.error("cannot hear other masters' key changes: %s", e)
            self.loop.call_later(LISTEN_RETRY, self._retry_listener)
            return
        self._watch_listener()
        for old, new in self.keystore.reload_all():
            self.key_service.changed_elsewhere(old, new)

    def close(self) -> None:
        self.runs.stop()
        self.prepare_pool.shutdown(wait=True, cancel_futures=True)
        self.runs.close()
        for timer in self._timers:
            timer.cancel()
        if self._wake is not None:
            self._wake.cancel()
        with contextlib.suppress(StoreError):
            # The result writer ends first: what it writes is confirmed (or
            # not) before the database closes.
            self.intake.finish_writing()
            self.keystore.flush()
            if self.cluster is not None:
                self.cluster.release()
        if self.control is not None:
            self.control.close()
        self.peers.close()
        self.publisher.close()
        self.intake.close()
        self.key_service.close()
        if self.zap is not None:
            self.zap.close()
        if self.listener is not None:
            self.listener.close()
        self.db.close()
        os.close(self.lock)

    # ---- the transport: who may connect ----

    def zap_decide(self, domain: str, address: str, curve_key: bytes) -> str | None:
        """The User-Id for a CURVE handshake with `curve_key`, or None to refuse it."""
        accepted = self.keystore.accepted_by_curve(curve_key) is not None
        if domain == DOMAIN_PUBLISH and self.publisher.refused(curve_key):
            self.peer_log.warning(
                "refused a connection from %s to the publish socket: its key sent "
                "subscriptions of its choosing less than %.0f s ago",
                address,
                PUBLISH_PENALTY,
            )
            return None
        self.peer_log.log(
            logging.DEBUG,
            "handshake on the %s socket from %s, accepted key: %s",
            domain,
            address,
            accepted,
        )
        if accepted:
            return curve_key.hex()
        if domain == DOMAIN_RETURN:
            if self.peers.room_for_unknown(DOMAIN_RETURN):
                return curve_key.hex()
            self.peer_log.warning(
                "refused a connection from %s to the return socket: too many connections "
                "of keys that are not accepted",
                address,
            )
            return None
        self.peer_log.warning(
            "refused a connection from %s to the %s socket: its key is not accepted",
            address,
            domain,
        )
        return None

    # ---- periodic work ----

    def watch_waiting(self) -> None:
        """Cut the connections that make libzmq hold too much for us, when
        the master grew or a while passed (master/backlog.py)."""
        if self.waiting_watch.look(self.loop.clock(), rss_bytes()):
            self.peers.cut_waiting(
                {DOMAIN_RETURN: RETURN_WAITING_MAX, DOMAIN_PUBLISH: UNKNOWN_WAITING_MAX}
            )

    def purge_old_jobs(self) -> None:
        """Delete jobs older than keep_jobs, PURGE_CHUNK host rows a loop turn."""
        if not self._purging:
            self._purging = True
            self._purge(new_jid(self.clock() - self.settings.keep_jobs), 0)

    def _purge(self, cutoff: str, removed: int) -> None:
        try:
            jobs, more = self.jobs.purge_before(cutoff)
        except StoreError:
            self._purging = False  # tried again at the next RETENTION_INTERVAL
            raise
        # Results were deleted: each host's use of its quota is counted again.
        self.intake.forget_quota()
        removed += jobs
        if more:
            self.loop.call_later(0, lambda: self._purge(cutoff, removed))
            return
        self._purging = False
        if removed:
            log.info("removed %d jobs older than keep_jobs", removed)

    # ---- control ----

    def on_control(self, conn: ControlConnection, msg: Message) -> None:
        handler = self.control_handlers.get(msg.type)
        if handler is None:
            conn.error("protocol", f"{msg.type.name} is not a request")
            return
        try:
            handler(conn, msg)
        except Exception as e:  # a bug must cost one request, never the daemon
            self.report(conn, msg.type.name, e)

    def report(self, conn: ControlConnection, request: str, e: Exception) -> None:
        """Answer a control request that failed with `e`: the error the CLI shows."""
        if isinstance(e, ConfigError):
            conn.error(
                "config",
                "the configuration has errors; nothing was sent",
                [{"file": p.file, "line": p.line, "message": p.message} for p in e.problems[:1000]],
            )
        elif isinstance(e, UsageError):
            conn.error("usage", str(e))
        elif isinstance(e, StoreError):
            log.error("control request %s failed: %s", request, e)
            conn.error("failed", f"the master's database failed ({e}); nothing was changed")
        elif isinstance(e, SafcmError):
            conn.error("failed", str(e))
        else:
            log.error("control request %s from %s failed", request, conn.user, exc_info=e)
            conn.error("internal", f"internal error in the master: {e!r}")

    # ---- lifecycle effects: what master/lifecycle.py asks for ----

    def wake(self) -> None:
        self._wake = None
        self.lifecycle.wake(self.clock())

    def stored_state(self, jid: str, host: str) -> HostState | None:
        return self.jobs.host_state(jid, host)

    def publish(self, jid: str, host: str) -> None:
        if self.relay is not None and not self.relay.holds(host):
            # The minion is held by another master of the cluster, or by
            # none: the one that holds it publishes (on_relay there).
            try:
                self.relay.send("publish", jid, host)
            except StoreError as e:
                log.error("job %s: cannot pass %s's envelope on: %s", jid, host, e)
            return
        self.publisher.publish(jid, host)

    def store_receipt(self, jid: str, host: str) -> None:
        self.intake.store_receipt(jid, host)

    def store_no_response(self, pairs: list[tuple[str, str]]) -> None:
        # Written by the result writer: on the loop, the write would wait for
        # the lock behind a batch's commit. The hosts are answered "no
        # response" at once (a late result still wins: it is written after).
        self.writer.call(
            lambda jobs: jobs.no_response(pairs), lambda f: self._no_response_written(pairs, f)
        )

    def _no_response_written(
        self, pairs: list[tuple[str, str]], future: concurrent.futures.Future[None]
    ) -> None:
        error = future.exception()
        if error is None:
            return
        log.error(
            'cannot record %d hosts as "no response", tried again in %.2f s: %s',
            len(pairs),
            STORE_RETRY,
            error if isinstance(error, SafcmError) else repr(error),
        )
        self.loop.call_later(STORE_RETRY, lambda: self.store_no_response(pairs))

    def unsendable(self, jid: str, host: str, reason: str) -> None:
        """The envelope of (jid, host) cannot be sealed (master/publish.py):
        answer the host now with an error result that says why, stored as
        a minion's result is, rather than leave it pending until its
        deadline (the run would wait with no word of the reason)."""
        own = self.lifecycle.state(jid, host) is not None
        # Not open here: a job of another master of the cluster, relayed to
        # us, is stored here as a result that came here is, and the store
        # announces it to the job's master, whose run hears it
        # (stored_elsewhere()); before, that master waited for the deadline
        # and recorded "no response", the reason only in this master's log.
        relayed = not own and self.relay is not None and self.relay.relayed_to(jid, host)
        if not (own or relayed):
            return  # or answered meanwhile
        known = self.jobs.module_of(jid)
        if known is None:
            return
        now = self.clock()
        if own and self.lifecycle.result(jid, host, now) is not Verdict.NEW:
            return
        result = {
            "module": known[0],
            "status": ResultStatus.ERROR.value,
            "started": now,
            "finished": now,
            "error": reason,
        }
        stored = StoredResult(jid, host, HostStatus.FAILED, 0, result, now, codec.pack(result))
        self.writer.call(
            lambda jobs: jobs.record([], [stored], now=now),
            lambda future: self._unsendable_written(stored, future, own),
        )

    def _unsendable_written(
        self, stored: StoredResult, future: concurrent.futures.Future[None], own: bool
    ) -> None:
        error = future.exception()
        if error is None:
            if own:
                self.lifecycle.result_stored(stored.jid, stored.host, self.clock(), stored.answer())
            return
        # Nothing is published any more: the host becomes "no response" at
        # the deadline, and the reason is in this log.
        log.error(
            "job %s: cannot record that the envelope of %s cannot be sealed: %s",
            stored.jid,
            stored.host,
            error if isinstance(error, SafcmError) else repr(error),
        )
        if own:
            self.lifecycle.result_lost(stored.jid, stored.host, self.clock())

    def answered(self, jid: str, host: str, answer: Answer | None) -> None:
        if answer is None:
            log.info("job %s: no response from %s", jid, host)
        self.runs.answered(jid, host, answer)

    def progress(self, jid: str, host: str, until: float) -> None:
        self.runs.progress(jid, host, until)

    def finished(self, jid: str) -> None:
        envelopes, size = self.publisher.forget(jid)
        held, where = self.loop.reset_longest_call()
        log.info(
            "job %s finished: %d envelopes, %d bytes published; the event loop was held "
            "at most %.1f ms at a time since (%s)",
            jid,
            envelopes,
            size,
            held * 1000,
            where or "-",
        )
        self.runs.finished(jid)

    def wake_at(self, when: float) -> None:
        if self._wake is not None:
            if self._wake_when <= when:
                return
            self._wake.cancel()
        # `when` is unix time, the loop's timers monotonic: a step of the
        # clock makes this early or late, and wake() then asks again.
        self._wake = self.loop.call_later(max(0.0, when - self.clock()), self.wake)
        self._wake_when = when


def _open_state_dir(settings: MasterSettings) -> None:
    """Who may pass through the state directory: root alone (0700); with
    admin_group, when the control socket is in it (the default), that group
    too (0710, group admin_group), or its members could never reach the
    socket. The socket's own mode (0660 root:admin_group) and the peer's
    credentials then decide (master/control.py). Passing through reads
    nothing: the directory cannot be listed, and what is in it is root's
    alone (the database and the lock 0600, the keys 0700 and 0600)."""
    state_dir = os.path.normpath(settings.state_dir)
    if settings.admin_group is not None and os.path.dirname(settings.control_path) == state_dir:
        os.chown(state_dir, -1, grp.getgrnam(settings.admin_group).gr_gid)
        os.chmod(state_dir, 0o710)  # noqa: S103 - search only, for the group: see above
    else:
        os.chmod(state_dir, 0o700)


def _connection_cap(wanted: int) -> int:
    """Connections per network socket (fitting_cap), under the descriptor
    limit raised first from soft to hard (systemd's default soft limit is 1024)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    cap = fitting_cap(wanted, soft)
    if cap < wanted:
        log.warning(
            "max_connections %d does not fit the descriptor limit %d (ulimit -n; "
            "LimitNOFILE in the unit), which must hold %d + %g per connection on each "
            "of 3 ports; using %d",
            wanted,
            soft,
            RESERVED_FDS,
            1 + BURST_SHARE,
            cap,
        )
    return cap


def fitting_cap(wanted: int, limit: int) -> int:
    """The most connections per network socket, at most `wanted`, for which
    three sockets with their burst share (BURST_SHARE) and RESERVED_FDS fit
    in `limit` descriptors. DaemonError if that is below MIN_CONNECTIONS."""
    room = math.floor((limit - RESERVED_FDS) / (3 * (1 + BURST_SHARE)))
    least = min(wanted, MIN_CONNECTIONS)
    if room < least:
        needed = RESERVED_FDS + math.ceil(3 * least * (1 + BURST_SHARE))
        raise DaemonError(
            f"the descriptor limit {limit} (ulimit -n; LimitNOFILE in the unit) is too "
            f"low: {least} connections on each of 3 ports need {needed} descriptors "
            f"({RESERVED_FDS} + {1 + BURST_SHARE:g} per connection); raise the limit"
        )
    return min(wanted, room)


def run(settings: MasterSettings) -> int:
    """Run the master until SIGTERM or SIGINT."""
    ctx = zmq.Context()
    loop = Loop()
    loop.stop_on_signals(signal.SIGTERM, signal.SIGINT)
    master = Master(settings, loop=loop, ctx=ctx)
    # The log line of a job's end and of a slow callback name where the
    # longest hold of the loop was spent, not only the callback.
    watch = StallWatch(loop)
    watch.start()
    try:
        master.start()
        # Full garbage collections walk only what is younger than a minute
        # (common/gcpace.py): the fleet's keys, connections and facts are not
        # walked at every job.
        pace_collections(loop)
        map_large_blocks()
        loop.run()
    finally:
        log.info("stopping")
        watch.stop()
        master.close()
        loop.close()
        ctx.term()
    return 0


def main(settings: MasterSettings) -> int:
    safcm_log.setup(settings.log_level)
    return run(settings)
