"""The master daemon: keys, jobs, results and the control socket, in one loop.

Sockets:

    XPUB    publish_port, CURVE. Jobs, one sealed envelope per host, under that
            host's topic. Only accepted minions complete the handshake (the
            ZAP handler, master/transport.py), and each may subscribe to its
            own topic only: XPUB_MANUAL hands us every subscription with the
            User-Id of its connection, and we apply just the one that
            matches. A (re)subscription gets the minion's undelivered
            envelopes at once, at most once a second per envelope.
    ROUTER  return_port, CURVE. Any key may connect, but an unknown one can
            only enrol (plain ENROL_REQUEST, rate-limited per key and per
            connection); everything else from it is dropped before any
            decryption. Accepted minions send heartbeats, job receipts and
            results; replies go back to the sender's routing id.
    ROUTER  key_port, plain. A minion's first contact: KEY_REQUEST for the
            master's public keys (with the CURVE key), signed, which the
            minion checks against master_fingerprint before it connects.
    control an AF_UNIX socket for the CLI (master/control.py).

The sealed, signed envelopes (common/crypto.py) travel end to end inside the
CURVE transport: CURVE keeps strangers out and hides traffic and metadata
(topics, jids, sizes); the envelopes keep each job readable by its one host
and make every message verifiable on its own, also from the job history.

A message from the return socket is checked in order of cost: the
transport key named by libzmq (User-Id), the frame's size against the limit
of the type it claims, the claimed sender against that key, the signature,
then the job's state for this host (a result already stored is confirmed
again without being decrypted), and only then decryption and unpacking.

A job is compiled for every targeted host, sealed to each host alone, and
stored with its envelopes (master/jobstore.py) before the first publish. An
envelope is re-published with backoff until its receipt arrives or the job's
deadline passes; at the deadline the hosts without a result are recorded as
"no response". A result is checked against the job store (sent to that host,
not already stored), stored, and only then acknowledged; results that arrive
together are stored in one transaction. Each stored result is streamed to the
CLI that started the job, if it is still connected. A minion still working on
a job when its deadline nears (triggers may take longer than the timeout)
sends JOB_PROGRESS, and that host's deadline moves PROGRESS_GRACE ahead, up to
MAX_DEADLINE_EXTENSION past the job's; the CLI hears of it (RUN_PROGRESS).

Presence comes only from authenticated heartbeats: a minion counts as
connected while its heartbeats keep coming, never because of an address.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import resource
import signal
import sqlite3
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

import zmq

from safcm.common import codec, keyfile
from safcm.common import log as safcm_log
from safcm.common.crypto import MAX_ENVELOPE_OVERHEAD, peek_header
from safcm.common.errors import (
    ConfigError,
    EnvelopeError,
    ProtocolError,
    SafcmError,
    UsageError,
)
from safcm.common.loop import Loop, Timer
from safcm.common.protocol import (
    MASTER_ID,
    MAX_KEY_PORT_BYTES,
    MAX_PLAIN_NETWORK_BYTES,
    MAX_RESULT_BYTES,
    NO_RESPONSE,
    Channel,
    Dispatcher,
    Message,
    Module,
    MsgType,
    VerifiedMessage,
    decode_plain,
    encode_plain,
    is_sealed,
    make_enrol_reply,
    make_key_reply,
    new_jid,
    seal_message_at,
    verify_enrol_request,
    verify_message_at,
)
from safcm.common.protocol import KeyState as WireKeyState
from safcm.common.ratelimit import Bucket, Buckets, PeerLog
from safcm.master import targets
from safcm.master.compiler import HostConfig, compile_hosts, load_repository
from safcm.master.control import ControlConnection, ControlServer
from safcm.master.db import open_db
from safcm.master.jobstore import (
    HostState,
    JobRecord,
    JobStore,
    Plan,
    StoredResult,
    change_count,
    host_status,
    outcome,
)
from safcm.master.keystore import KeyState, KeyStore, MinionKey
from safcm.master.lifecycle import Lifecycles, Verdict
from safcm.master.peers import Peers, Presence, user_id
from safcm.master.publish import PUBLISH_PENALTY, Publisher, seal_job
from safcm.master.render import Tally
from safcm.master.settings import MasterSettings
from safcm.master.transport import (
    DOMAIN_KEY,
    DOMAIN_PUBLISH,
    DOMAIN_RETURN,
    Zap,
)

log = logging.getLogger("safcm-master")

# Lifetime of the master's own small sealed messages, in seconds.
MESSAGE_TTL = 60
# Messages read from the ROUTER per wake-up before results are committed:
# results that arrive together share one fsync.
ROUTER_BATCH = 512
# How often old jobs are deleted (keep_jobs), in seconds.
RETENTION_INTERVAL = 3600.0
# Messages ZeroMQ may queue from one connection of the return socket before
# it stops reading that connection (TCP then pushes back): at most this many
# results of MAX_RESULT_BYTES wait in memory per peer.
RETURN_RCVHWM = 2
# Largest message each socket receives, in bytes: a sealed result on the
# return socket, a key request on the key port (the publish socket's is
# master/publish.py PUBLISH_MAX_IN).
RETURN_MAX_IN = MAX_RESULT_BYTES + MAX_ENVELOPE_OVERHEAD
KEY_MAX_IN = MAX_KEY_PORT_BYTES
# Seconds `git rev-parse` may take to name the repository's commit.
GIT_TIMEOUT = 5.0
# Enrolment requests: per transport key and per connection, per second and
# burst (a minion sends one per heartbeat interval while it is not accepted,
# and one as a hello after each reconnect; the tables of keys are bounded),
# and for all keys that are not accepted together, since each costs a
# signature check and may cost a database write.
ENROL_RATE = 5.0
ENROL_BURST = 20.0
ENROL_KEYS = 20_000
ENROL_GLOBAL_RATE = 200.0
ENROL_GLOBAL_BURST = 400.0
# New pending keys per second and burst, for all ids together: each is a
# database write, and MAX_PENDING_KEYS of them block every later newcomer, so
# a flood of invented ids fills that table at this pace at most.
NEW_KEY_RATE = 50.0
NEW_KEY_BURST = 1000.0
# Key requests on the key port, per second and burst, for everyone together:
# each costs a signature (about 50 us), and a minion asks before each
# connection, so a restarted master hears from its whole fleet at once.
KEY_REQUEST_RATE = 1000.0
KEY_REQUEST_BURST = 2000.0
# How often connections that never identified themselves, or unknown keys
# that went quiet, are cut (master/transport.py), in seconds.
STALE_CHECK_INTERVAL = 5.0
# How often heartbeat sequence numbers and last-seen times are written when
# no result commit carried them, in seconds: a replay of a heartbeat from the
# last second before a crash is the most a restart can let through.
SEQ_FLUSH = 1.0
# Results read in one wake-up are stored together, up to this many bytes,
# then committed: a burst of large results never piles up in memory.
BATCH_BYTES = 16 * 1024 * 1024
# Descriptors kept free of network connections: the database, the control
# socket and its clients, libzmq's own.
RESERVED_FDS = 256


@dataclass
class Run:
    """A job some CLI waits on: which hosts have answered."""

    jid: str
    hosts: list[str]
    watchers: list[ControlConnection] = field(default_factory=list)
    tally: Tally = field(default_factory=Tally)


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
        # Every open (job, host): what is published when, and when a host
        # becomes "no response"; it asks for that through the methods under
        # "lifecycle effects" below.
        self.lifecycle = Lifecycles(self)
        self._wake: Timer | None = None  # the lifecycle's next wake-up
        self._wake_when = math.inf  # its time, unix
        self.runs: dict[str, Run] = {}
        self.last_jid = self.jobs.last_jid()
        self.peer_log = PeerLog(log, loop.clock)
        self.peers = Peers(ctx, loop, self.keystore, self.peer_log)
        self.publisher = Publisher(self.peers, self.keystore, self.jobs, self.lifecycle, clock)
        self.zap: Zap | None = None
        self.enrol_by_key = Buckets(ENROL_RATE, ENROL_BURST, ENROL_KEYS)
        self.enrol_by_conn = Buckets(ENROL_RATE, ENROL_BURST, ENROL_KEYS)
        self.enrol_unknown = Bucket(ENROL_GLOBAL_RATE, ENROL_GLOBAL_BURST, loop.clock())
        self.new_keys = Bucket(NEW_KEY_RATE, NEW_KEY_BURST, loop.clock())
        self.key_requests = Bucket(KEY_REQUEST_RATE, KEY_REQUEST_BURST, loop.clock())
        self._stored_bytes: dict[str, int] = {}  # per host, for result_quota; filled lazily
        self.network = Dispatcher(
            Channel.NETWORK,
            {
                MsgType.HEARTBEAT: self.on_heartbeat,
                MsgType.JOB_RECEIPT: self.on_job_receipt,
                MsgType.RESULT: self.on_result,
                MsgType.JOB_PROGRESS: self.on_job_progress,
            },
        )
        self.control_handlers = {
            MsgType.RUN: self.on_run,
            MsgType.KEYS: self.on_keys,
            MsgType.JOBS: self.on_jobs,
        }
        self.router: zmq.Socket | None = None
        self.key_sock: zmq.Socket | None = None
        self.control: ControlServer | None = None
        # Receipts and results read in this wake-up, stored together in one
        # transaction (_store_batch); each result with the routing id its
        # confirmation goes back to.
        self._receipts: list[tuple[str, str]] = []
        self._batch: dict[tuple[str, str], tuple[bytes, StoredResult]] = {}
        self._batch_bytes = 0
        # Routing id of the ROUTER message being handled: _reply() answers it.
        # Handlers take only the message (the Dispatcher's contract), so the
        # peer travels beside it.
        self._peer = b""
        # The packed body of the sealed message being handled, as it came: a
        # result is stored as these bytes, not packed a second time.
        self._plaintext = b""
        self._timers: list[Any] = []

    # ---- life cycle ----

    def start(self) -> None:
        s = self.settings
        host = f"[{s.interface}]" if ":" in s.interface else s.interface
        cap = _connection_cap(s.max_connections)
        # The ZAP handler first: libzmq lets every key in while none is bound.
        self.zap = Zap(self.ctx, self.loop, self.zap_decide)
        secret = self.keys.curve_secret().reveal()
        self.publisher.open(f"tcp://{host}:{s.publish_port}", cap, secret)
        self.router = self.peers.bind(
            zmq.ROUTER, f"tcp://{host}:{s.return_port}", RETURN_MAX_IN, cap, DOMAIN_RETURN, secret
        )
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 0)
        self.router.setsockopt(zmq.RCVHWM, RETURN_RCVHWM)
        self.key_sock = self.peers.bind(
            zmq.ROUTER, f"tcp://{host}:{s.key_port}", KEY_MAX_IN, cap, DOMAIN_KEY, None
        )
        self.control = ControlServer(
            s.control_path, loop=self.loop, admin_group=s.admin_group, handle=self.on_control
        )
        self.loop.add_reader(self.router, self.on_router)
        self.loop.add_reader(self.key_sock, self.on_key_request)
        now = self.clock()
        rows = self.jobs.open_hosts()
        # Published again at the first wake-up; those past their deadline
        # become "no response" then.
        self.lifecycle.restore(rows, now)
        unreceived = sum(1 for r in rows if r.state is HostState.SENT and r.deadline > now)
        if unreceived:
            log.info("re-publishing %d envelopes of unfinished jobs", unreceived)
        self._timers = [
            self.loop.call_every(SEQ_FLUSH, self.keystore.flush),
            self.loop.call_every(STALE_CHECK_INTERVAL, self.peers.cut_stale),
            self.loop.call_every(RETENTION_INTERVAL, self.purge_old_jobs),
        ]
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

    def close(self) -> None:
        for timer in self._timers:
            timer.cancel()
        if self._wake is not None:
            self._wake.cancel()
        with contextlib.suppress(sqlite3.Error):
            self._store_batch()
            self.keystore.flush()
        if self.control is not None:
            self.control.close()
        self.peers.close()
        self.publisher.close()
        for sock in (self.router, self.key_sock):
            if sock is not None:
                self.loop.remove_reader(sock)
                sock.close(0)
        if self.zap is not None:
            self.zap.close()
        self.db.close()

    # ---- the transport: who may connect, and which connections to cut ----

    def zap_decide(self, domain: str, address: str, curve_key: bytes) -> str | None:
        """The User-Id for a CURVE handshake with `curve_key`, or None to refuse it."""
        accepted = self.keystore.accepted_by_curve(curve_key) is not None
        if domain == DOMAIN_PUBLISH and self.publisher.refused(curve_key):
            self.peer_log.warning(
                "refused a connection from %s to the publish socket: its key sent "
                "subscriptions not its own less than %.0f s ago",
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
            if self.peers.tables[DOMAIN_RETURN].room_for_unknown():
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

    def wake(self) -> None:
        self._wake = None
        self.lifecycle.wake(self.clock())

    def purge_old_jobs(self) -> None:
        cutoff = new_jid(self.clock() - self.settings.keep_jobs)
        removed = self.jobs.purge_before(cutoff)
        if removed:
            self._stored_bytes.clear()  # quota use is counted again when next needed
            log.info("removed %d jobs older than keep_jobs", removed)

    # ---- publishing ----

    def publish(self, jid: str, host: str) -> None:
        self.publisher.publish(jid, host)

    # ---- the key port ----

    def on_key_request(self) -> None:
        key_sock = _started(self.key_sock)
        while True:
            try:
                parts = key_sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            if len(parts) != 2:
                continue
            # A connection that asked is no longer a silent one (what the cap evicts).
            self.peers.tables[DOMAIN_KEY].active(
                parts[1].get(zmq.SRCFD), "key port", False, self.loop.clock()
            )
            frames = [p.bytes for p in parts]
            if not self.key_requests.take(self.loop.clock()):
                self.peer_log.warning(
                    "key request dropped: more than %d a second", KEY_REQUEST_RATE
                )
                continue
            try:
                msg = decode_plain(frames[1], Channel.KEY)
                if msg.type is not MsgType.KEY_REQUEST:
                    raise ProtocolError(f"{msg.type.name} is not a request")
            except ProtocolError as e:
                self.peer_log.warning("dropped a message on the key port: %s", e)
                continue
            reply = make_key_reply(self.keys, nonce=msg.body["nonce"], now=self.clock())
            with contextlib.suppress(zmq.Again):
                key_sock.send_multipart(
                    [frames[0], encode_plain(MsgType.KEY_REPLY, reply)], zmq.NOBLOCK
                )

    # ---- the return socket ----

    def on_router(self) -> None:
        router = _started(self.router)
        for _ in range(ROUTER_BATCH):
            try:
                frames = router.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            if len(frames) != 2:
                self.peer_log.warning(
                    "dropped a message of %d frames instead of one", len(frames) - 1
                )
                continue
            self._route(frames[0].bytes, frames[1])
            if self._batch_bytes >= BATCH_BYTES:
                self._store_batch()
        self._store_batch()

    def _route(self, peer: bytes, frame: zmq.Frame) -> None:
        self._peer = peer
        curve_key = bytes.fromhex(user_id(frame))
        key = self.keystore.accepted_by_curve(curve_key)
        if self.peers.noted(DOMAIN_RETURN, frame, known=key is not None) is None:
            return
        data = frame.bytes
        who = key.id if key is not None else f"key {curve_key.hex()[:16]}"
        try:
            if not is_sealed(data):
                self._plain(data, curve_key, frame.get(zmq.SRCFD), known=key is not None)
            elif key is None:
                raise ProtocolError("a sealed message from a key that is not accepted")
            else:
                self._sealed(data, key)
        except EnvelopeError as e:
            self.peer_log.warning(
                "dropped a message from %s: envelope rejected (%s)", who, e.reason or "opaque"
            )
        except ProtocolError as e:
            self.peer_log.warning("dropped a message from %s: %s", who, e)
        except sqlite3.Error as e:
            self.peer_log.error("message from %s not handled: database error: %s", who, e)
        except Exception:  # a bug must cost one message, never the daemon
            self.peer_log.log(
                logging.ERROR, "failed to handle a message from %s", who, exc_info=True
            )

    def _plain(self, data: bytes, curve_key: bytes, fd: int, *, known: bool) -> None:
        """Enrolment, the one plain message: rate-limited before anything is decoded."""
        now = self.loop.clock()
        if not (self.enrol_by_key.take(curve_key, now) and self.enrol_by_conn.take(fd, now)):
            raise ProtocolError("enrolment requests come faster than allowed for this key")
        if not known and not self.enrol_unknown.take(now):
            raise ProtocolError("enrolment requests of unknown keys come faster than allowed")
        if len(data) > MAX_PLAIN_NETWORK_BYTES:
            raise ProtocolError(f"a plain message of {len(data)} bytes")
        msg = decode_plain(data, Channel.NETWORK)
        if msg.type is not MsgType.ENROL_REQUEST:
            raise ProtocolError(f"{msg.type.name} is not accepted plain")
        self.on_enrol_request(msg, curve_key)

    def _sealed(self, data: bytes, key: MinionKey) -> None:
        """A sealed message from the accepted minion `key`, whose transport
        key libzmq authenticated: checked in order of cost (module docstring)."""
        claimed = peek_header(data).sender
        if claimed != key.id:
            raise ProtocolError(f"claims to be from {claimed!r} on the connection of {key.id}")
        verified = verify_message_at(
            data, me=MASTER_ID, sender_keys=self.peers.minion_keys, now=self.clock()
        )
        if verified.spec.type is MsgType.RESULT and not self._wants_result(verified, key.id):
            return
        is_receipt = verified.spec.type is MsgType.JOB_RECEIPT
        if is_receipt and not self.lifecycle.sent_to(verified.header.jid, key.id):
            raise ProtocolError(f"receipt for job {verified.header.jid}, never sent to it")
        msg, self._plaintext = verified.open_with_plaintext(self.keys)
        try:
            self.network.dispatch(msg)
        finally:
            self._plaintext = b""

    def _wants_result(self, verified: VerifiedMessage, minion: str) -> bool:
        """Whether to open a result: not if its job never went to this minion
        (refused) or its result is stored already (confirmed again, unopened)."""
        jid = verified.header.jid
        verdict = self.lifecycle.check_result(jid, minion)
        if verdict is Verdict.UNKNOWN:
            raise ProtocolError(f"result for job {jid}, which was never sent to it")
        if verdict is Verdict.DUPLICATE:
            self.peer_log.info(
                "job %s: duplicate result from %s; already stored, confirming again", jid, minion
            )
            self._reply_sealed(minion, MsgType.RESULT_RECEIPT, {"jid": jid}, jid=jid)
            return False
        return True

    def _reply(self, frame: bytes) -> None:
        try:
            _started(self.router).send_multipart([self._peer, frame], zmq.NOBLOCK)
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
                recipient_keys=self.peers.public[minion],
                now=now,
                ttl=MESSAGE_TTL,
            )
        )

    # ---- network handlers ----

    def on_enrol_request(self, msg: Message, curve_key: bytes) -> None:
        now = self.clock()
        keys = verify_enrol_request(msg, now=now)
        if keys.curve != curve_key:
            raise ProtocolError(
                "the enrol request names another transport key than its connection's"
            )
        minion = msg.body["id"]
        known_before = self.keystore.get(minion)
        if known_before is None and not self.new_keys.take(self.loop.clock()):
            raise ProtocolError(f"enrolment of new id {minion!r}: too many new keys a second")
        state = self.keystore.enrol(minion, keys, now=now, auto_accept=self.settings.auto_accept)
        wire_state = WireKeyState.REJECTED
        if state is None:
            known = self.keystore.get(minion)
            if known is not None:
                self.peer_log.warning(
                    "refused minion %s presenting key %s: the id is claimed by key %s "
                    "(an impersonation, or a reinstalled host: compare fingerprints, then "
                    "'safcm-master keys accept %s --fingerprint FP' or 'keys delete %s')",
                    minion,
                    keys.fingerprint(),
                    known.fingerprint,
                    minion,
                    minion,
                )
                wire_state = WireKeyState.CLAIMED
            else:
                self.peer_log.warning(
                    "refused enrolment of %s: too many pending keys; accept, reject "
                    "or delete some first",
                    minion,
                )
        else:
            self.peer_log.log(logging.DEBUG, "enrol request from %s: %s", minion, state)
            wire_state = WireKeyState(state)
            if known_before is None:
                self.peer_log.info(
                    "new key of %s is %s (%s); compare it with 'safcm-minion fingerprint' "
                    "on the host",
                    minion,
                    state,
                    keys.fingerprint(),
                )
            self.keystore.touch(minion, now)  # a pending minion that knocks is seen
            if self.keystore.accepted(minion) is None:
                self.peers.public.pop(minion, None)
        reply = make_enrol_reply(minion, wire_state, self.keys, nonce=msg.body["nonce"], now=now)
        self._reply(encode_plain(MsgType.ENROL_REPLY, reply))

    def on_heartbeat(self, msg: Message) -> None:
        minion = msg.require_header().sender
        key = self.keystore.accepted(minion)
        seq = msg.body["seq"]
        if key is None:
            raise ProtocolError(f"heartbeat of {minion}, whose key is not accepted")
        if seq <= key.seq:
            raise ProtocolError(
                f"heartbeat {seq} of {minion} is not newer than its last, {key.seq} (a replay)"
            )
        if minion not in self.peers.presence:
            self.peer_log.info("minion %s is connected (version %s)", minion, msg.body["version"])
        self.peers.presence[minion] = Presence(
            self.loop.clock(), msg.body["interval"], msg.body["busy"]
        )
        self.keystore.touch(minion, self.clock(), seq)
        self._reply_sealed(minion, MsgType.HEARTBEAT_REPLY, {"time": self.clock()})

    def on_job_receipt(self, msg: Message) -> None:
        header = msg.require_header()
        self.lifecycle.receipt(header.jid, header.sender, self.clock())

    def on_result(self, msg: Message) -> None:
        header = msg.require_header()
        minion, jid, body = header.sender, header.jid, msg.body
        problem = self._result_problem(jid, minion, body)
        if problem is not None:
            raise ProtocolError(f"result for job {jid} does not answer it: {problem}")
        packed = self._plaintext or codec.pack(body)
        used = self._quota_used(minion)
        if used + len(packed) > self.settings.result_quota:
            self.peer_log.warning(
                "job %s: result of %s (%d bytes) not stored: its results take %d of its "
                "quota of %d bytes (result_quota)",
                jid,
                minion,
                len(packed),
                used,
                self.settings.result_quota,
            )
            body = _over_quota(body, len(packed), used, self.settings.result_quota)
            packed = codec.pack(body)
        result = StoredResult(
            jid,
            minion,
            host_status(body),
            change_count(body),
            body,
            self.clock(),
            packed,
        )
        # From here on it is stored (or, if the store fails, result_lost()).
        if self.lifecycle.result(jid, minion, self.clock()) is Verdict.LATE:
            self.peer_log.info(
                "job %s: late result from %s, stored after the deadline", jid, minion
            )
        self._stored_bytes[minion] = used + len(packed)
        self._batch[(jid, minion)] = (self._peer, result)
        self._batch_bytes += len(packed)

    def _quota_used(self, minion: str) -> int:
        used = self._stored_bytes.get(minion)
        if used is None:
            used = self._stored_bytes[minion] = self.jobs.stored_bytes(minion)
        return used

    def _result_problem(self, jid: str, minion: str, body: dict[str, Any]) -> str | None:
        """Why a result cannot be the answer to what job `jid` sent to `minion`, or None."""
        job = self.jobs.module_of(jid)
        if job is None:
            return "no such job"
        module, dry_run = job
        if body["module"] != module:
            return f"it is a {body['module']} result, the job was {module}"
        apply = body["apply"]
        if apply is None:
            return None
        if apply["dry_run"] != dry_run:
            return "its dry-run flag differs from the job's"
        plan = self.jobs.plan(jid, minion)
        if plan is None:
            return None  # a job from before plans were recorded
        for change in apply["changes"]:
            if not plan.covers(change["path"]):
                return f"it reports {change['path']!r}, which the job did not send"
        earlier: frozenset[str] | None = None
        for trigger in apply["triggers"]:
            if trigger["command"] in plan.triggers:
                continue
            # Owed by an earlier job that failed on this host (minion/triggers.py).
            if earlier is None:
                earlier = self.jobs.recent_triggers(minion)
            if trigger["command"] not in earlier:
                return f"it reports trigger {trigger['command']!r}, which no job sent"
        return None

    def on_job_progress(self, msg: Message) -> None:
        """A minion is still working on a job: the lifecycle moves its deadline."""
        header = msg.require_header()
        minion, jid = header.sender, header.jid
        if not self.lifecycle.sent_to(jid, minion):
            raise ProtocolError(f"progress from {minion} on job {jid}, which was never sent to it")
        if self.lifecycle.progress(jid, minion, self.clock()) is not None:
            log.debug("job %s: %s still working after %.0f s", jid, minion, msg.body["elapsed"])

    def _store_batch(self) -> None:
        """Store the receipts and results read in one wake-up in one transaction
        (one fsync), then confirm the results."""
        if not self._batch and not self._receipts:
            return
        batch, self._batch = list(self._batch.values()), {}
        receipts, self._receipts = self._receipts, []
        self._batch_bytes = 0
        try:
            self.jobs.record(receipts, [r for _, r in batch], now=self.clock())
            self.keystore.flush()  # heartbeat sequence numbers share the commit
        except sqlite3.Error as e:
            # Not confirmed, so each minion keeps its result and sends it again;
            # a lost receipt costs at most a re-publish, which minions ignore.
            for _, r in batch:
                self._stored_bytes.pop(r.host, None)
                self.lifecycle.result_lost(r.jid, r.host, self.clock())
            log.error(
                "cannot store %d results and %d receipts, they will come again: %s",
                len(batch),
                len(receipts),
                e,
            )
            return
        for peer, r in batch:
            self._peer = peer
            self._reply_sealed(r.host, MsgType.RESULT_RECEIPT, {"jid": r.jid}, jid=r.jid)
            self.peer_log.info("job %s: result from %s: %s", r.jid, r.host, r.status)
            self.lifecycle.result_stored(r.jid, r.host, self.clock(), r.result)

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
        except sqlite3.Error as e:
            log.error("control request %s failed: database error: %s", msg.type.name, e)
            conn.error("failed", f"the master's database failed ({e}); nothing was changed")
        except Exception as e:  # a bug must cost one request, never the daemon
            log.exception("control request %s from %s failed", msg.type.name, conn.user)
            conn.error("internal", f"internal error in the master: {e!r}")

    def on_run(self, conn: ControlConnection, msg: Message) -> None:
        body = msg.body
        module = body["module"]
        dry_run = body["dry_run"]
        timeout = body["timeout"] or self.settings.job_timeout
        target = targets.normalise(body["target"], body["group"])
        # ping sends no files: a problem in a group's files must not stop it.
        repo = load_repository(self.settings.config_dir, targets_only=module == Module.PING)
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
        envelopes = {}
        plans = {}
        for host in resolved.hosts:
            job = {"module": module, "dry_run": dry_run, "deadline": deadline}
            job.update(_job_files(configs.get(host)))
            plans[host] = Plan.of_job(job)
            recipient_keys = self.peers.minion_keys(host)
            if recipient_keys is None:  # accepted, but enrolled before CURVE
                raise SafcmError(f"host {host}: its key has no transport key; it must enrol again")
            envelopes[host] = seal_job(
                self.keys,
                job,
                jid=jid,
                host=host,
                recipient_keys=recipient_keys,
                now=now,
                timeout=timeout,
            )
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
        self.jobs.create(record, envelopes, plans)  # stored before anything is published
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
                    for h in resolved.hosts
                    if (note := self._host_note(h)) is not None
                ],
            },
        )
        run = Run(jid, resolved.hosts, [conn])
        self.runs[jid] = run
        conn.on_close.append(lambda c: run.watchers.remove(c) if c in run.watchers else None)
        self.publisher.fresh = {(jid, host): envelope for host, envelope in envelopes.items()}
        try:
            self.lifecycle.start(jid, resolved.hosts, deadline, now)  # published at once
        finally:
            self.publisher.fresh = {}

    # ---- lifecycle effects: what master/lifecycle.py asks for ----

    def stored_state(self, jid: str, host: str) -> HostState | None:
        return self.jobs.host_state(jid, host)

    def store_receipt(self, jid: str, host: str) -> None:
        self._receipts.append((jid, host))  # stored with this wake-up's batch

    def store_no_response(self, pairs: list[tuple[str, str]]) -> None:
        self.jobs.no_response(pairs)

    def answered(self, jid: str, host: str, result: dict[str, Any] | None) -> None:
        if result is None:
            log.info("job %s: no response from %s", jid, host)
        run = self.runs.get(jid)
        if run is None:
            return
        run.tally.add(outcome(result))
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
        summary = {**run.tally.as_dict(), "targeted": len(run.hosts)}
        for conn in list(run.watchers):
            conn.send(MsgType.RUN_DONE, {"jid": jid, "summary": summary})
            conn.finish()

    def wake_at(self, when: float) -> None:
        if self._wake is not None:
            if self._wake_when <= when:
                return
            self._wake.cancel()
        # `when` is unix time, the loop's timers monotonic: a step of the
        # clock makes this early or late, and wake() then asks again.
        self._wake = self.loop.call_later(max(0.0, when - self.clock()), self.wake)
        self._wake_when = when

    def on_keys(self, conn: ControlConnection, msg: Message) -> None:
        action, ids = msg.body["action"], msg.body["ids"]
        now = self.clock()
        if action == "list":
            keys = [k for k in self.keystore.all() if not ids or k.id in ids]
        elif action == "delete":
            keys = self.keystore.delete(ids)
            for k in keys:
                self._forget(k)
                log.info("key of %s deleted by %s", k.id, conn.user)
        else:
            state = KeyState.ACCEPTED if action == "accept" else KeyState.REJECTED
            matched = set(self.keystore.match(ids))
            before = [k for k in self.keystore.all() if k.id in matched]
            keys = self.keystore.set_state(
                ids, state, now=now, fingerprint=msg.body.get("fingerprint")
            )
            for old in before:
                new = self.keystore.get(old.id)
                if new is None or new.state is not KeyState.ACCEPTED or new.public != old.public:
                    self._forget(old)  # its old key may still hold connections
            for k in keys:
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

    def _forget(self, key: MinionKey) -> None:
        """A key stopped being accepted: drop what was kept for it, cut its
        connections, and publish nothing more to it."""
        self.peers.forget(key)
        self.lifecycle.forget_host(key.id)

    def _key_row(self, key: MinionKey) -> dict[str, Any]:
        connected = key.state is KeyState.ACCEPTED and self.peers.connected(key.id)
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
                host=body["host"],
                target=body["target"],
                limit=body["limit"],
                **{k: body.get(k) for k in ("since", "until", "module", "status", "user")},
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


def _started(sock: zmq.Socket | None) -> zmq.Socket:
    """`sock`, one of the sockets Master.start() binds; RuntimeError before it has."""
    if sock is None:
        raise RuntimeError("the master's sockets are used before Master.start()")
    return sock


def _connection_cap(wanted: int) -> int:
    """Connections per network socket: `wanted`, or fewer if the descriptor
    limit cannot hold three sockets' worth plus RESERVED_FDS. The soft limit
    is raised to the hard one first (systemd's default soft limit is 1024)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    room = max(3, (soft - RESERVED_FDS) // 3)
    if room < wanted:
        log.warning(
            "max_connections %d does not fit the descriptor limit %d; using %d "
            "(raise LimitNOFILE in the unit)",
            wanted,
            soft,
            room,
        )
    return min(wanted, room)


def _over_quota(body: dict[str, Any], size: int, used: int, quota: int) -> dict[str, Any]:
    """What is stored instead of a result that does not fit the minion's quota:
    the same job outcome (failed), with the reason, and no detail."""
    return {
        "module": body["module"],
        "status": "error",
        "started": body["started"],
        "finished": body["finished"],
        "apply": None,
        "ping": None,
        "error": (
            f"result of {size} bytes not stored: this minion's stored results take {used} "
            f"of its {quota} bytes (result_quota in master.yaml; older jobs free it as "
            "keep_jobs removes them)"
        ),
    }


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
