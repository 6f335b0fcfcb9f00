"""The minion daemon: enrols with the master, heartbeats, receives jobs, applies
them one at a time, and delivers each result until the master confirms it.

Sockets (all connect out, so a minion behind NAT works):

    DEALER  key_port, plain, only until the master's keys are pinned: asks
            for them (KEY_REQUEST) and checks the signed answer against
            master_fingerprint (or, with trust_first_master, pins the first)
    SUB     CURVE, jobs published to this minion alone (protocol.SUBSCRIPTION)
    DEALER  CURVE, enrolment, heartbeats, job receipts and results to the
            master's ROUTER; enrol replies, heartbeat replies and result
            receipts back

Both CURVE sockets use our transport key and the pinned master's, so a
master without the pinned key cannot even complete the handshake. That is
what heartbeats, receipts and progress reports rely on, both ways: they
travel plain inside the CURVE connection (form "curve" in
common/protocol.py), so a heartbeat reply, and the master's time in it, can
only come from the pinned master. Results are sealed.

States:

    keys unknown --KEY_REPLY matches--> pinned
    enrolling --ENROL_REPLY accepted--> accepted --no reply for LIVENESS
        ^                                             heartbeats--+
        +-------- reconnect after a jittered, growing backoff <---+

While enrolling, an ENROL_REQUEST goes out every heartbeat interval; it also
serves as the "hello" after a reconnect, so a master that was restarted (or
that deleted and re-learnt our key) tells us our state at once. Enrolment is
idempotent for a known key, so reconnecting never means re-enrolling.

A job is received, checked, recorded and kept in the seen-jid store (one
commit), acknowledged, and queued. A worker thread applies queued jobs one
at a time; each result goes to the spool, the job is dropped from the
store, and the result is sent, and sent again with backoff until the
master's RESULT_RECEIPT arrives, across restarts of either side.

Minion takes its loop, ZeroMQ context and worker pool from the caller, so one
process can run many minions on one loop (bench/fanout.py's swarm); main()
runs exactly one.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import itertools
import logging
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from safcm.common import atomicfile, codec, keyfile
from safcm.common import log as safcm_log
from safcm.common import modules as wire
from safcm.common.crypto import DEFAULT_CLOCK_SKEW, MAX_ENVELOPE_OVERHEAD, PublicKeys
from safcm.common.daemonlock import lock_state_dir
from safcm.common.errors import (
    EnvelopeError,
    ProtocolError,
    ReplayError,
    SafcmError,
    StateFileError,
    StoreError,
)
from safcm.common.loop import Loop, Timer
from safcm.common.model import FileSpec
from safcm.common.protocol import (
    ENROL_NONCE_LENGTH,
    MASTER_ID,
    MAX_FRAME_BYTES,
    MAX_KEY_PORT_BYTES,
    MAX_SMALL_BYTES,
    SUBSCRIPTION,
    Channel,
    Dispatcher,
    KeyState,
    Message,
    MsgType,
    SeenJids,
    check_body,
    decode_plain,
    encode_plain,
    is_sealed,
    make_enrol_request,
    new_jid,
    open_message_at,
    seal_message_at,
    verify_enrol_reply,
    verify_key_reply,
)
from safcm.common.version import VERSION
from safcm.minion import content, facts, modules, results
from safcm.minion.content import ContentCache
from safcm.minion.settings import MinionSettings
from safcm.minion.spool import Kind, Spool

log = logging.getLogger("safcm-minion")

# Heartbeats without any reply after which the master counts as lost and the
# connection is rebuilt (the zguide's Paranoid Pirate liveness): as many of
# our own ticks as this, and as many heartbeat intervals (_master_silent()).
LIVENESS = 3
# Reconnect backoff, in seconds: starts at the heartbeat interval, doubles per
# failed attempt up to this, and is jittered by +-BACKOFF_JITTER so a fleet
# that lost its master does not come back in lockstep.
BACKOFF_MAX = 60.0
BACKOFF_JITTER = 0.5
# What a CURVE socket's monitor reports when its handshake fails, and why
# that happens, by socket. libzmq never connects again after a failed
# handshake, so the minion reconnects itself, after the backoff, instead of
# sitting on a dead socket: on the return socket until LIVENESS intervals of
# silence, and then blaming the silence; on the publish socket for good,
# heartbeats answered while no job ever came.
_NOT_PINNED = "the master there does not hold the key we pinned, or it is not a safcm master"
HANDSHAKE_FAILED: dict[str, dict[int, str]] = {
    "return": {
        # The master's ZAP handler said no: the return socket lets keys it has
        # not accepted enrol, up to a share of its connections (a fleet
        # enrolling at once fills it until the administrator accepts keys).
        int(zmq.EVENT_HANDSHAKE_FAILED_AUTH): "the master refused our connection (ZAP status {}): "
        "it holds as many connections of keys not accepted yet as it allows",
        int(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL): _NOT_PINNED,
        int(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL): _NOT_PINNED,
    },
    "publish": {
        # Only accepted keys get through there, and not for a while a key
        # that subscribed to what is not its own (a copy of our key elsewhere,
        # or our acceptance withdrawn between the enrol reply and this).
        int(zmq.EVENT_HANDSHAKE_FAILED_AUTH): "the master refused our connection (ZAP status {}): "
        "it does not count our key as accepted there now (its log says why)",
        int(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL): _NOT_PINNED,
        int(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL): _NOT_PINNED,
    },
}
# Heartbeat intervals the publish socket may go without a handshake, while
# the return socket's goes on, before the minion says it cannot reach it:
# libzmq keeps trying by itself, but no job reaches the minion meanwhile (a
# firewall that lets the return port through and not the publish port, say).
PUBLISH_UNREACHED_INTERVALS = LIVENESS
# The publish socket's monitor events that tell whether it is connected.
PUBLISH_PRESENCE = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
# Numbers of the monitors' inproc endpoints, unique in the process. pyzmq's
# default names the endpoint after the socket's descriptor, which the next
# socket gets again at once, while libzmq may still hold the closed one's
# endpoint: the bind then fails (EADDRINUSE). Seen at 4,000 minions, where
# bench/fanout.py's swarms open and close thousands of sockets.
_monitor_numbers = itertools.count()
# Seconds before a result is sent again without a receipt; doubles up to
# RESULT_RETRY_MAX. The first retry comes soon, since a lost first send is the
# common case (a master restarting).
RESULT_RETRY_MIN = 2.0
RESULT_RETRY_MAX = 30.0
# Lifetime of our sealed messages, in seconds: a content request is useless
# after a minute; a result is re-sealed for every send anyway.
MESSAGE_TTL = 60
RESULT_TTL = 300
# Queued jobs a minion holds at most; more are refused (the master would see
# no result), which only a runaway master could cause.
MAX_QUEUED_JOBS = 100
# Outgoing messages ZeroMQ may queue towards the master while it is away.
SEND_HWM = 1000
# How often the seen-jid store drops entries past their expiry, in seconds.
SEEN_PURGE_INTERVAL = 3600.0
# Largest message the return connection receives: the master's replies are
# small sealed messages or an enrol reply.
DEALER_MAX_IN = MAX_SMALL_BYTES + MAX_ENVELOPE_OVERHEAD
# ZMTP heartbeats on the publish connection, in milliseconds: it carries only
# jobs, so libzmq's PINGs are what notices a master (or a NAT entry) that
# vanished without closing it. The return connection has none: our own
# heartbeats and the master's replies are its liveness (LIVENESS), and each
# PING would cost the master's I/O thread about what a heartbeat costs.
ZMTP_HEARTBEAT_IVL_MS = 60_000
ZMTP_HEARTBEAT_TIMEOUT_MS = 180_000
# Heartbeat sequence numbers are reserved on disk this many at a time, so a
# heartbeat costs no write, and a restart skips at most this many.
SEQ_BLOCK = 1000
# A change of the offset to the master's clock larger than this, in seconds,
# is logged: the host's clock stepped, or NTP is not running.
CLOCK_STEP_WARNING = 5.0
# Changes of that offset up to this many seconds are ignored: a reply's
# network delay, not a clock that moved.
CLOCK_OFFSET_TOLERANCE = 0.5
# A job still running tells the master so (JOB_PROGRESS), which then extends
# that host's deadline: triggers may outlast the job's timeout, and a host
# that succeeds must not be reported as "no response". The first report goes
# after PROGRESS_FIRST seconds, well inside the shortest job timeout (1 s),
# so a short job (nearly all) sends none; then every PROGRESS_INTERVAL.
PROGRESS_FIRST = 0.5
PROGRESS_INTERVAL = 5.0
# Facts are sent when the master accepts us and when they change; also when
# this many seconds passed since the last send, unchanged: FACTS has no
# receipt, so a report the master lost (a full queue, a failed database
# write) is made good within this time.
FACTS_RESEND = 3600.0
# Seconds before a CONTENT_REQUEST without an answer is sent again: the reply
# may be lost when the connection drops; the job's deadline bounds the wait.
CONTENT_RETRY = 5.0

KEYS_DIR = "keys"
SEEN_DB = "seen.db"
SPOOL_DIR = "spool"
MASTER_KEY_FILE = "master.pub"
SEQ_FILE = "heartbeat.seq"
# Modules whose jobs change nothing on the host: not marked started, and
# after a restart past their deadline simply not run (nothing is half done).
READ_ONLY_MODULES = frozenset({"ping"})
# Modules run on the loop itself: a ping answers from memory in microseconds,
# and a worker thread's hand-off, wake-up and fight for the GIL cost more
# than the job. Its result is still spooled before it is sent.
INLINE_MODULES = frozenset({"ping"})
# Modules not run a second time when a restart interrupted them: a command
# is not known to be idempotent (files, packages and services converge, so
# they are finished instead, even past the deadline).
RUN_ONCE_MODULES = frozenset({"cmd"})
# The pinned master key file is about 80 bytes; anything much larger is not ours.
MASTER_KEY_FILE_MAX = 4096


@dataclass
class Job:
    jid: str
    # The JOB body (common/protocol.py), checked: its module's fields (a
    # files job's content may be left out: minion/content.py).
    body: dict[str, Any]
    # Resumed after a restart that interrupted it while it changed the host
    # (common/seen.py mark_started()).
    interrupted: bool = False
    # Why it must not begin (the mark could not be written), if so.
    cannot_start: str | None = None

    @property
    def module(self) -> str:
        return str(self.body["module"])

    @property
    def deadline(self) -> float:
        return float(self.body["deadline"])

    @property
    def files(self) -> list[dict[str, Any]]:
        return list(self.body.get("files", []))


@dataclass
class ContentWait:
    """Content a job waits for from the master: filled on the loop thread,
    read by the worker once `done` is set."""

    jid: str
    wanted: set[bytes]  # digests
    blobs: dict[bytes, bytes] = field(default_factory=dict)  # digest -> content
    done: threading.Event = field(default_factory=threading.Event)
    retry: Timer | None = None


@dataclass
class Outgoing:
    """A spooled result waiting for the master's receipt."""

    next_send: float
    delay: float
    # The result as the worker packed it, until it is first sent: it is in
    # the spool too, but reading it back is a file's open, read and close
    # on the loop for every job.
    packed: bytes | None = None


class Minion:
    def __init__(
        self,
        settings: MinionSettings,
        *,
        loop: Loop,
        ctx: zmq.Context,
        worker: concurrent.futures.Executor,
        clock: Any = time.time,
    ) -> None:
        self.settings = settings
        self.loop = loop
        self.ctx = ctx
        self.worker = worker
        # Times on the wire (envelope windows, job deadlines, result times)
        # are the master's: clock() is our wall clock plus the offset learnt
        # from the master's signed key reply and its heartbeat replies (which
        # only the pinned master can send on our CURVE connection), so a
        # clock that steps does not cut the minion off (its heartbeats are
        # ordered by a counter, not by time).
        self.local_clock = clock
        self.offset = 0.0
        self.id = settings.id
        self.interval = settings.heartbeat_interval
        self.started = clock()  # local: only for the uptime

        os.makedirs(settings.state_dir, mode=0o700, exist_ok=True)
        self.lock = lock_state_dir(settings.state_dir, "safcm-minion")
        atomicfile.remove_temporaries(settings.state_dir)  # of a pin written when we crashed
        self.keys, created = keyfile.load_or_create(os.path.join(settings.state_dir, KEYS_DIR))
        if created:
            log.info("%s: created a new key pair, fingerprint %s", self.id, self.keys.fingerprint())
        self.seen = SeenJids(os.path.join(settings.state_dir, SEEN_DB))
        self.spool = Spool(os.path.join(settings.state_dir, SPOOL_DIR))
        self.content = ContentCache(settings.state_dir)
        # Content a job being prepared waits for, by jid (at most the busy job's).
        self.content_waits: dict[str, ContentWait] = {}
        self.master_keys = self._load_master_keys()

        # Which of the cluster's masters (settings.master) we talk to now.
        self.current = 0
        self.accepted = False
        self.key_state: str | None = None
        # The nonce of our enrolment request awaiting its answer, and of the
        # last one answered.
        self.nonce: bytes | None = None
        self.answered_nonce: bytes | None = None
        self.last_reply = loop.clock()
        # Ticks since the master last answered: each sent a heartbeat, an
        # enrolment or waited for the key port's answer.
        self.unanswered = 0
        # When our heartbeats still unanswered were sent (local clock), by seq.
        self.heartbeats_sent: dict[int, float] = {}
        self.backoff = self.interval
        self.sub: zmq.Socket | None = None
        self.dealer: zmq.Socket | None = None
        # The CURVE sockets' monitors (HANDSHAKE_FAILED events), by socket name.
        self.monitors: dict[str, zmq.Socket] = {}
        # Since when the publish socket has had no connection (loop clock: it
        # was made, or its connection ended), whether its handshake succeeded
        # since, and whether we said it did not.
        self.sub_unreached_since = 0.0
        self.sub_up = False
        self.sub_unreached_said = False
        self.key_sock: zmq.Socket | None = None  # only while asking for the master's keys
        # The timer that will ask for the master's keys again after a
        # reconnect's backoff; None when none is due (see tick()).
        self.reconnect: Timer | None = None
        self.key_nonce: bytes | None = None
        self.key_asked = 0.0  # local time of the last key request
        self.seq, self.seq_reserved = self._load_seq()
        self.queue: collections.deque[Job] = collections.deque()
        self.busy: str | None = None  # jid being applied
        self.progress: Timer | None = None  # the next JOB_PROGRESS of the busy job
        self.outgoing: dict[str, Outgoing] = {
            jid: Outgoing(0.0, RESULT_RETRY_MIN) for jid in self.spool.jids(Kind.RESULT)
        }
        # The jobs an earlier minion spooled as files: only theirs are
        # removed from the spool when they are done (_drop_job()).
        self.spooled_jobs = set(self.spool.jids(Kind.JOB))
        self._resume_jobs()
        # The digest of the facts the master was last sent on this
        # connection (None: not yet): sent on acceptance, then on change.
        self.facts_sent: bytes | None = None
        self.facts_sent_at = 0.0  # loop clock
        self.timers: list[Timer] = []
        self.network = Dispatcher(
            Channel.NETWORK,
            {
                MsgType.ENROL_REPLY: self.on_enrol_reply,
                MsgType.HEARTBEAT_REPLY: self.on_heartbeat_reply,
                MsgType.RESULT_RECEIPT: self.on_result_receipt,
                MsgType.CONTENT: self.on_content,
            },
        )
        self.published = Dispatcher(Channel.NETWORK, {MsgType.JOB: self.on_job})

    def clock(self) -> float:
        """Now, in the master's time (see local_clock and offset)."""
        return self.local_clock() + self.offset

    def _learn_offset(self, master_time: float, asked: float, answered: float) -> None:
        """The master read its clock, `master_time`, after we asked and before
        its answer was read (`asked`, `answered`: our local clock), so the
        offset to it is between master_time - answered and master_time -
        asked. Ours is kept if it lies there, give or take
        CLOCK_OFFSET_TOLERANCE; else it becomes the middle. An answer read
        late (our loop stood still while it waited, or the master was slow)
        spans a wide range and moves nothing: taken as read, it looked like
        a clock off by as long as the wait."""
        low, high = master_time - answered, master_time - asked
        if low - CLOCK_OFFSET_TOLERANCE <= self.offset <= high + CLOCK_OFFSET_TOLERANCE:
            return  # network delay, not a step: keep the times we hand out steady
        offset = (low + high) / 2
        if abs(offset - self.offset) > CLOCK_STEP_WARNING:
            log.warning(
                "%s: this host's clock is %+.1f s off the master's; using the master's time",
                self.id,
                -offset,
            )
        self.offset = offset

    # ---- life cycle ----

    def start(self) -> None:
        self._ask_keys()
        self.timers.append(self.loop.call_every(SEEN_PURGE_INTERVAL, self._purge_seen))
        self.timers.append(self.loop.call_every(self.settings.facts_interval, self._report_facts))
        # The first hello goes out at a random point of the first interval, and
        # the heartbeats keep that phase, so minions started together (a fleet
        # reboot) neither speak at once nor stay in step afterwards.
        first = random.uniform(0, self.interval)  # noqa: S311 - jitter, not a secret

        def begin() -> None:
            # Scheduled first: a tick that fails (no descriptor left) must not
            # leave the minion without its heartbeats for good.
            self.timers.append(self.loop.call_every(self.interval, self.tick))
            self.tick()

        self.timers.append(self.loop.call_later(first, begin))
        self._next_job()  # jobs resumed from the spool

    def close(self) -> None:
        for timer in self.timers:
            timer.cancel()
        if self.reconnect is not None:
            self.reconnect.cancel()
        self._disconnect()
        self.seen.close()
        self.spool.close()
        self.content.close()
        os.close(self.lock)

    @property
    def master(self) -> str:
        """The master we talk to now."""
        return self.settings.master[self.current]

    def _next_master(self) -> None:
        """Move on to the cluster's next master (settings.master), if there is one."""
        if len(self.settings.master) > 1:
            self.current = (self.current + 1) % len(self.settings.master)
            log.warning("%s: trying master %s", self.id, self.master)

    def _address(self, port: int) -> str:
        master = self.master
        return f"tcp://[{master}]:{port}" if ":" in master else f"tcp://{master}:{port}"

    def _curve_socket(self, kind: int, max_in: int) -> zmq.Socket:
        """A socket that speaks CURVE to the pinned master, with our transport key."""
        assert self.master_keys is not None
        sock = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, max_in)
        sock.setsockopt(zmq.CURVE_SERVERKEY, self.master_keys.curve)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.keys.public.curve)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.keys.curve_secret().reveal())
        return sock

    def _connect(self) -> None:
        """Connect the return socket; the publish socket follows once we are
        accepted (_subscribe), since the master refuses any other key there
        and libzmq does not retry a refused handshake."""
        try:
            self.dealer = self._curve_socket(zmq.DEALER, DEALER_MAX_IN)
            self.dealer.setsockopt(zmq.SNDHWM, SEND_HWM)
            self._watch_handshake(self.dealer, "return")
            self.dealer.connect(self._address(self.settings.return_port))
        except zmq.ZMQError as e:  # out of descriptors: nothing half made stays
            self._reconnect(f"cannot open the return socket: {e}")
            return
        self.loop.add_reader(self.dealer, self.on_dealer)
        self._wait_for_master()

    def _subscribe(self) -> bool:
        """Connect the publish socket; False if it could not be made (then we
        reconnect: a minion without it would never receive a job)."""
        if self.sub is not None:
            return True
        try:
            self.sub = self._curve_socket(zmq.SUB, MAX_FRAME_BYTES)
            self.sub.setsockopt(zmq.HEARTBEAT_IVL, ZMTP_HEARTBEAT_IVL_MS)
            self.sub.setsockopt(zmq.HEARTBEAT_TIMEOUT, ZMTP_HEARTBEAT_TIMEOUT_MS)
            self.sub.setsockopt(zmq.SUBSCRIBE, SUBSCRIPTION)
            self._watch_handshake(self.sub, "publish")
            self.sub.connect(self._address(self.settings.publish_port))
        except zmq.ZMQError as e:
            self._reconnect(f"cannot open the publish socket: {e}")
            return False
        self.loop.add_reader(self.sub, self.on_sub)
        self.sub_unreached_since, self.sub_up = self.loop.clock(), False
        return True

    def _watch_handshake(self, sock: zmq.Socket, name: str) -> None:
        """Read `sock`'s failed handshakes (on_monitor); `name` is its key in HANDSHAKE_FAILED."""
        # The publish socket's connection comes and goes too (_check_publish_reached()).
        events = PUBLISH_PRESENCE if name == "publish" else 0
        for event in HANDSHAKE_FAILED[name]:
            events |= event
        address = f"inproc://safcm-monitor-{next(_monitor_numbers)}"
        self.monitors[name] = sock.get_monitor_socket(events, address)
        self.loop.add_reader(self.monitors[name], lambda: self.on_monitor(name))

    def _close(self, sock: zmq.Socket, name: str) -> None:
        """Close the CURVE socket `name` and its monitor."""
        monitor = self.monitors.pop(name, None)
        if monitor is not None:
            self.loop.remove_reader(monitor)
            monitor.close(0)
        self.loop.remove_reader(sock)
        sock.close(0)

    def _unsubscribe(self) -> None:
        if self.sub is not None:
            self._close(self.sub, "publish")
            self.sub = None

    def _disconnect(self) -> None:
        """Drop every socket to the master, the key port's too."""
        self._close_key_sock()
        self._unsubscribe()
        if self.dealer is not None:
            self._close(self.dealer, "return")
            self.dealer = None

    # ---- first contact: the master's public keys ----

    def _ask_keys(self) -> None:
        """Ask the key port for the master's keys, before every connection: the
        signed answer proves the master still holds the pinned keys (or names
        the one that does not), and tells the master's time."""
        self.reconnect = None
        self._close_key_sock()
        try:
            self.key_sock = self.ctx.socket(zmq.DEALER)
            self.key_sock.setsockopt(zmq.LINGER, 0)
            self.key_sock.setsockopt(zmq.MAXMSGSIZE, MAX_KEY_PORT_BYTES)
            self.key_sock.connect(self._address(self.settings.key_port))
        except zmq.ZMQError as e:
            # Out of descriptors, say: a failure every heartbeat would
            # neither wait nor say more than once why.
            self._reconnect(f"cannot open a socket to the key port: {e}")
            return
        self.loop.add_reader(self.key_sock, self.on_key_reply)
        self.key_nonce = os.urandom(ENROL_NONCE_LENGTH)
        self._wait_for_master()
        self.key_asked = self.local_clock()
        with contextlib.suppress(zmq.Again):
            self.key_sock.send(
                encode_plain(MsgType.KEY_REQUEST, {"nonce": self.key_nonce}), zmq.NOBLOCK
            )

    def _close_key_sock(self) -> None:
        if self.key_sock is not None:
            self.loop.remove_reader(self.key_sock)
            self.key_sock.close(0)
            self.key_sock = None

    def on_key_reply(self) -> None:
        while self.key_sock is not None:
            try:
                frame = self.key_sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                msg = decode_plain(frame, Channel.KEY)
                if msg.type is not MsgType.KEY_REPLY or self.key_nonce is None:
                    raise ProtocolError(f"{msg.type.name} is not a key reply")
                keys = verify_key_reply(
                    msg, nonce=self.key_nonce, pinned=self.settings.master_fingerprint
                )
            except (EnvelopeError, ProtocolError) as e:
                reason = e.reason if isinstance(e, EnvelopeError) and e.reason else e
                self._reconnect(
                    f"refused the key reply from {self.master}: {reason}", level=logging.ERROR
                )
                return
            if self.master_keys is not None and keys != self.master_keys:
                self._reconnect(
                    f"the master at {self.master} now presents key {keys.fingerprint()}, "
                    f"not the pinned {self.master_keys.fingerprint()}; not connecting. "
                    "If its keys were replaced on purpose, remove "
                    f"{os.path.join(self.settings.state_dir, MASTER_KEY_FILE)}",
                    level=logging.ERROR,
                )
                return
            self._close_key_sock()
            now = self.local_clock()
            self._learn_offset(msg.body["issued_at"], self.key_asked, now)
            if self.master_keys is None:
                self._pin_master_keys(keys, first_use=self.settings.master_fingerprint is None)
            self._connect()
            self.tick()
            return

    def _reconnect(self, why: str | None = None, *, level: int = logging.WARNING) -> None:
        """The master went quiet, or refused us (`why`): drop every socket
        (and whatever they queued), then come back after a jittered backoff
        (the zguide's Lazy Pirate). A key port that answered with keys we do
        not trust is one such refusal (`level` ERROR): whoever holds that
        address answers every request alike, so it is asked again after the
        growing backoff, not at every heartbeat."""
        jitter = random.uniform(1 - BACKOFF_JITTER, 1 + BACKOFF_JITTER)  # noqa: S311 - not a secret
        delay = self.backoff * jitter
        if why is None:
            why = f"no reply from the master for {LIVENESS * self.interval:.0f} s"
        log.log(level, "%s: %s; reconnecting in %.1f s", self.id, why, delay)
        self._disconnect()
        self.accepted = False
        self.backoff = min(self.backoff * 2, BACKOFF_MAX)
        # A cluster's next master is tried at once; the backoff grows for
        # a master that stays away (one alone, or all of them in turn).
        if len(self.settings.master) > 1:
            self._next_master()
            delay = min(delay, self.interval * jitter)
        self.reconnect = self.loop.call_later(delay, self._ask_keys)

    # ---- periodic work ----

    def _master_silent(self) -> bool:
        """The master has not answered LIVENESS ticks of ours in a row, nor for
        LIVENESS intervals. Time alone is not enough: a minion whose own loop
        stood still (a disk taking seconds to sync, a starved machine) sent
        no heartbeat meanwhile, and the replies to those before may wait
        unread, so it would blame the master and reconnect, and a fleet on a
        slow night would reconnect at once."""
        return (
            self.unanswered >= LIVENESS
            and self.loop.clock() - self.last_reply > LIVENESS * self.interval
        )

    def tick(self) -> None:
        if self.key_sock is not None:
            if self._master_silent():
                log.warning(
                    "%s: no answer from the key port of %s; asking again",
                    self.id,
                    self._address(self.settings.key_port),
                )
                self._next_master()
                self._ask_keys()
            else:
                self.unanswered += 1
            return
        if self.dealer is None:
            # Waiting to reconnect, unless the last try failed before it had
            # a socket (no descriptor left, say): a one-shot timer is not
            # run again, so the heartbeat's tick tries again.
            if self.reconnect is None:
                self._ask_keys()
            return
        if self._master_silent():
            self._reconnect()
            return
        self.unanswered += 1
        if self.accepted:
            seq = self._next_seq()
            self._send_plain(
                MsgType.HEARTBEAT,
                {
                    "version": VERSION,
                    "uptime": max(0.0, self.local_clock() - self.started),
                    "busy": self.busy,
                    "interval": self.interval,
                    "seq": seq,
                },
            )
            self.heartbeats_sent[seq] = self.local_clock()
            self._check_publish_reached()
            # The master answers only every second one at long intervals
            # (master/intake.py HEARTBEAT_REPLY_SPACING): the oldest go.
            if len(self.heartbeats_sent) > LIVENESS + 1:
                del self.heartbeats_sent[next(iter(self.heartbeats_sent))]
            self._send_results()
        else:
            self._send_enrol_request()

    def _purge_seen(self) -> None:
        self.seen.purge(self.clock())

    def _report_facts(self, *, again: bool = False) -> None:
        """Look at the host's facts; send them, sealed, if the master has not
        had them on this connection (`again`), if they changed, or if they
        were last sent FACTS_RESEND ago."""
        if not self.accepted:
            return
        try:
            found = facts.gather(self.settings.root)
        except Exception:  # a bug must cost the facts, never the daemon
            log.exception("%s: could not gather this host's facts", self.id)
            return
        digest = facts.digest(found)
        due = self.loop.clock() - self.facts_sent_at >= FACTS_RESEND
        if not again and not due and digest == self.facts_sent:
            return
        try:
            self._send_sealed(MsgType.FACTS, found, jid=new_jid(self.clock()))
        except ProtocolError as e:
            log.error("%s: this host's facts cannot be sent: %s", self.id, e)
            return
        if self.facts_sent is not None and digest != self.facts_sent:
            log.info("%s: this host's facts changed; sent them to the master", self.id)
        self.facts_sent = digest
        self.facts_sent_at = self.loop.clock()

    # ---- sending ----

    def _send_enrol_request(self) -> None:
        # Sent again each tick until answered, under the same nonce: a master
        # slow to answer (a fleet enrolling at once) answers an earlier copy,
        # and that answer must count.
        if self.nonce is None:
            self.nonce = os.urandom(ENROL_NONCE_LENGTH)
        body = make_enrol_request(self.id, self.keys, nonce=self.nonce, now=self.clock())
        self._send_plain(MsgType.ENROL_REQUEST, body)

    def _send_plain(self, msg_type: MsgType, body: dict[str, Any]) -> None:
        """A plain message to the master: an enrolment, or a curve message
        (heartbeat, receipt, progress), which the master takes as ours
        because it comes from our CURVE key."""
        self._send(encode_plain(msg_type, body))

    def _send_sealed(
        self, msg_type: MsgType, body: dict[str, Any], *, jid: str, ttl: int = MESSAGE_TTL
    ) -> None:
        if self.master_keys is None:
            return
        now = self.clock()
        frame = seal_message_at(
            msg_type,
            body,
            jid=jid,
            sender=self.id,
            sender_keys=self.keys,
            recipient=MASTER_ID,
            recipient_keys=self.master_keys,
            now=now,
            ttl=ttl,
        )
        self._send(frame)

    def _send(self, frame: bytes) -> None:
        if self.dealer is None:
            return
        try:
            self.dealer.send(frame, zmq.NOBLOCK)
        except zmq.Again:
            log.debug("%s: send queue to the master is full; dropped one message", self.id)

    def _send_results(self, *, all_now: bool = False) -> None:
        """Send every spooled result whose retry time has come (or all of them)."""
        now = self.loop.clock()
        for jid, out in list(self.outgoing.items()):
            if not all_now and out.next_send > now:
                continue
            data = out.packed if out.packed is not None else self.spool.get(Kind.RESULT, jid)
            out.packed = None
            if data is None:
                del self.outgoing[jid]
                continue
            body: Any = None
            try:
                body = codec.unpack(data, max_depth=16)
                self._send_sealed(MsgType.RESULT, body, jid=jid, ttl=RESULT_TTL)
            except (ProtocolError, SafcmError) as e:
                # A result that cannot go as it is goes as an error that says
                # why: the master must hear how the job ended, never nothing.
                replacement = _unsendable(body if isinstance(body, dict) else {}, str(e))
                if replacement is None:
                    log.error(
                        "%s: spooled result of job %s cannot be sent, dropping it: %s",
                        self.id,
                        jid,
                        e,
                    )
                    self.spool.remove(Kind.RESULT, jid)
                    del self.outgoing[jid]
                    continue
                log.error(
                    "%s: spooled result of job %s cannot be sent (%s); sending an error "
                    "result instead",
                    self.id,
                    jid,
                    e,
                )
                self.spool.put(Kind.RESULT, jid, codec.pack(replacement))
                self._send_sealed(MsgType.RESULT, replacement, jid=jid, ttl=RESULT_TTL)
            out.next_send = now + out.delay
            out.delay = min(out.delay * 2, RESULT_RETRY_MAX)

    # ---- receiving ----

    def on_dealer(self) -> None:
        while self.dealer is not None:
            try:
                frames = self.dealer.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) != 1:
                log.warning(
                    "%s: dropped a message of %d frames from the master", self.id, len(frames)
                )
                continue
            self._receive(frames[0], self.network, peer=MASTER_ID)

    def on_monitor(self, name: str) -> None:
        while (monitor := self.monitors.get(name)) is not None:
            try:
                event = recv_monitor_message(monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            if name == "publish" and event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._publish_reached()
                continue
            if name == "publish" and event["event"] == zmq.EVENT_DISCONNECTED:
                # libzmq connects again by itself; unreached from now until then.
                self.sub_unreached_since, self.sub_up = self.loop.clock(), False
                continue
            why = HANDSHAKE_FAILED[name].get(int(event["event"]))
            if why is not None:
                port = self.settings.return_port if name == "return" else self.settings.publish_port
                where = self._address(port)
                self._reconnect(f"handshake with {where} failed: {why.format(event['value'])}")
                return

    def _publish_reached(self) -> None:
        self.sub_up = True
        if self.sub_unreached_said:
            self.sub_unreached_said = False
            log.info(
                "%s: reached the publish socket at %s",
                self.id,
                self._address(self.settings.publish_port),
            )

    def _check_publish_reached(self) -> None:
        """Say once, when the publish socket has had no connection for
        PUBLISH_UNREACHED_INTERVALS heartbeat intervals while the return
        socket is answered."""
        if (
            self.sub is None
            or self.sub_up
            or self.sub_unreached_said
            or self.loop.clock() - self.sub_unreached_since
            < PUBLISH_UNREACHED_INTERVALS * self.interval
        ):
            return
        self.sub_unreached_said = True
        log.warning(
            "%s: cannot reach the publish socket at %s for %.0f s, while the return "
            "socket answers: no job reaches this minion until it can (is that port "
            "open between here and the master?)",
            self.id,
            self._address(self.settings.publish_port),
            self.loop.clock() - self.sub_unreached_since,
        )

    def on_sub(self) -> None:
        while self.sub is not None:
            try:
                frames = self.sub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) != 2:
                log.warning("%s: dropped a published message of %d frames", self.id, len(frames))
                continue
            self._receive(frames[1], self.published, peer=None)

    def _receive(self, frame: bytes, dispatcher: Dispatcher, *, peer: str | None) -> None:
        """Decode a frame from the master and dispatch it. `peer` is MASTER_ID
        on the return connection, whose CURVE handshake proved the pinned
        master's key: the curve messages it carries are the master's."""
        try:
            if is_sealed(frame):
                msg = open_message_at(
                    frame,
                    me=self.id,
                    my_keys=self.keys,
                    sender_keys=self._master_lookup,
                    now=self.clock(),
                )
            else:
                msg = decode_plain(frame, Channel.NETWORK, peer=peer)
            dispatcher.dispatch(msg)
        except EnvelopeError as e:
            log.warning(
                "%s: dropped a message that is not from our master for us: %s",
                self.id,
                e.reason or e,
            )
        except ProtocolError as e:
            log.warning("%s: dropped an invalid message: %s", self.id, e)
        except Exception:  # a bug must cost one message, never the daemon
            log.exception("%s: failed to handle a message from the master", self.id)

    def _master_lookup(self, sender: str) -> PublicKeys | None:
        return self.master_keys if sender == MASTER_ID else None

    def _wait_for_master(self) -> None:
        """The master's silence counts from now (_master_silent())."""
        self.last_reply = self.loop.clock()
        self.unanswered = 0

    def _heard_from_master(self) -> None:
        self._wait_for_master()
        self.backoff = self.interval

    # ---- handlers ----

    def on_enrol_reply(self, msg: Message) -> None:
        pinned = self.settings.master_fingerprint
        if pinned is None and self.master_keys is not None:
            pinned = self.master_keys.fingerprint()
        # An answer to the request awaited, or to another copy of the one
        # answered last: replies come in order on one connection, so either
        # is the master's latest word (an administrator may have accepted us
        # between the two copies).
        nonce = self.nonce
        if self.answered_nonce is not None and msg.body["nonce"] == self.answered_nonce:
            nonce = self.answered_nonce
        if nonce is None:
            raise ProtocolError("an enrol reply we did not ask for")
        keys = verify_enrol_reply(msg, minion_id=self.id, nonce=nonce, pinned=pinned)
        if nonce == self.nonce:
            self.answered_nonce, self.nonce = self.nonce, None
        self._heard_from_master()
        if self.master_keys is None or self.master_keys != keys:
            self._pin_master_keys(keys, first_use=self.settings.master_fingerprint is None)
        state = msg.body["state"]
        if state != self.key_state:
            if state == KeyState.PENDING:
                log.info(
                    "%s: waiting for the administrator to accept our key %s "
                    "(safcm-master keys accept %s)",
                    self.id,
                    self.keys.fingerprint(),
                    self.id,
                )
            elif state == KeyState.REJECTED:
                log.warning("%s: the master rejected our key %s", self.id, self.keys.fingerprint())
            elif state == KeyState.CLAIMED:
                log.warning(
                    "%s: this id is claimed by another key on the master; ours is %s. "
                    "If this host is the real %s, the administrator runs "
                    "'safcm-master keys accept %s --fingerprint %s'",
                    self.id,
                    self.keys.fingerprint(),
                    self.id,
                    self.id,
                    self.keys.fingerprint(),
                )
            else:
                log.info("%s: accepted by the master %s", self.id, keys.fingerprint())
            self.key_state = state
        was_accepted, self.accepted = self.accepted, state == KeyState.ACCEPTED
        if self.accepted and not was_accepted:
            if not self._subscribe():
                return
            self._send_results(all_now=True)
            self._report_facts(again=True)
        elif not self.accepted:
            self._unsubscribe()

    def on_heartbeat_reply(self, msg: Message) -> None:
        self._heard_from_master()
        asked = self.heartbeats_sent.pop(msg.body["seq"], None)
        if asked is not None:  # else one of a former connection's: how old, unknown
            self._learn_offset(msg.body["time"], asked, self.local_clock())

    def on_result_receipt(self, msg: Message) -> None:
        self._heard_from_master()
        jid = msg.body["jid"]
        # Not synced: a result back after a crash is only sent again, and the
        # master confirms a copy of one it stored. One fsync less per job,
        # and it was on the loop.
        if self.spool.remove(Kind.RESULT, jid, durable=False):
            log.debug("%s: the master stored the result of job %s", self.id, jid)
        self.outgoing.pop(jid, None)

    def on_job(self, msg: Message) -> None:
        header = msg.require_header()
        jid = header.jid
        if len(self.queue) >= MAX_QUEUED_JOBS and not self.seen.contains(int(MsgType.JOB), jid):
            log.error("%s: %d jobs queued already; refusing job %s", self.id, len(self.queue), jid)
            return
        # Seen and kept in one commit, then acknowledged: once the master has
        # the receipt it stops re-publishing, so the job must already be safe
        # here, and no crash may leave it kept but not seen, which would let
        # a re-publish apply it twice (common/seen.py).
        try:
            self.seen.check_and_add(
                header,
                keep_until=header.expires_at + DEFAULT_CLOCK_SKEW,
                now=self.clock(),
                keep=codec.pack(msg.body),
            )
        except ReplayError:
            # A re-publish whose receipt got lost, or a replay: never applied
            # twice; the receipt again stops the master re-publishing.
            log.info("%s: job %s seen before; not applied again", self.id, jid)
            self._send_plain(MsgType.JOB_RECEIPT, {"jid": jid})
            return
        self._send_plain(MsgType.JOB_RECEIPT, {"jid": jid})
        job = _job_from_body(jid, msg.body)
        log.info(
            "%s: job %s received (%s%s, %d files, %d contents carried)",
            self.id,
            jid,
            job.module,
            ", dry run" if job.body["dry_run"] else "",
            len(job.files),
            sum(1 for f in job.files if f["digest"] is not None and f["data"] is not None),
        )
        self.queue.append(job)
        self._next_job()

    # ---- applying ----

    def _next_job(self) -> None:
        if self.busy is not None or not self.queue:
            return
        job = self.queue.popleft()
        self.busy = job.jid
        started = self.loop.clock()
        if _changes_host(job) and not job.interrupted:
            try:
                self.seen.mark_started(job.jid)
            except StoreError as e:
                # Not begun: a crash now could not tell a half-applied host
                # from an untouched one after the deadline.
                job = replace(job, cannot_start=str(e))

        if job.module in INLINE_MODULES:
            self._job_done(job, _ran(self._run_job, job))
            return
        jid = job.jid  # not the job: a cancelled timer waits in the loop's heap until due
        self.progress = self.loop.call_later(
            PROGRESS_FIRST, lambda: self._report_progress(jid, started)
        )
        future = self.worker.submit(self._run_job, job)
        future.add_done_callback(
            lambda f: self.loop.call_soon_threadsafe(lambda: self._job_done(job, f))
        )

    def _report_progress(self, jid: str, started: float) -> None:
        """JOB_PROGRESS of the busy job `jid`, begun at `started` (loop clock),
        then again every PROGRESS_INTERVAL until it is done. A method, not a
        closure that schedules itself: that closure was a reference cycle,
        which kept the job, content and all, until a full collection."""
        elapsed = self.loop.clock() - started
        self._send_plain(MsgType.JOB_PROGRESS, {"jid": jid, "elapsed": elapsed})
        self.progress = self.loop.call_later(
            PROGRESS_INTERVAL, lambda: self._report_progress(jid, started)
        )

    def _run_job(self, job: Job) -> bytes:
        """In a worker thread: apply the job, spool its result and return it packed.

        The finish time is the start time plus the monotonic time elapsed:
        the offset to the master's clock may be corrected while the job runs,
        and a result must never finish before it started."""
        started = self.clock()
        begun = time.monotonic()

        def finished() -> float:
            return started + (time.monotonic() - begun)

        if job.cannot_start is not None:
            log.error("%s: job %s not applied: %s", self.id, job.jid, job.cannot_start)
            body = results.error_result(
                job.module,
                f"not applied: {job.cannot_start}",
                started=started,
                finished=started,
            )
        elif job.interrupted and job.module in RUN_ONCE_MODULES:
            body = results.error_result(
                job.module,
                "the minion restarted while this job ran: whether it finished is not "
                "known, and it is not run again",
                started=started,
                finished=started,
            )
        elif started > job.deadline and not job.interrupted:
            body = results.error_result(
                job.module,
                "the job's deadline passed before it could start; not applied",
                started=started,
                finished=started,
            )
        elif (refused := self._refusal(job)) is not None:
            log.warning("%s: job %s refused: %s", self.id, job.jid, refused)
            body = results.error_result(job.module, refused, started=started, finished=started)
        else:
            ctx = modules.Context(
                self.settings,
                job.jid,
                job.body["dry_run"],
                job.deadline,
                VERSION,
                now=finished,
                resolve_files=lambda files: self._resolve(job.jid, job.deadline, files),
            )
            body = {**modules.run(job.body, ctx), "started": started, "finished": finished()}
            if job.interrupted:
                body["resumed"] = True  # what changed before the restart is not listed
        return self._finish(job.jid, body)

    def _refusal(self, job: Job) -> str | None:
        return modules.refusal(job.module, job.body.get("steps", []), self.settings.modules)

    def _resolve(
        self, jid: str, deadline: float, files: list[dict[str, Any]]
    ) -> list[FileSpec] | None:
        """In the worker: the job's files with all their content, from the job,
        the content cache or, for what is in neither, the master (one round
        trip, waited for until the job's deadline). None if it never came: a
        job is applied whole or not at all."""
        missing = content.resolve(files, self.content)
        if missing:
            log.info(
                "%s: job %s: asking the master for %d contents not cached here",
                self.id,
                jid,
                len(missing),
            )
            wait = ContentWait(jid, set(missing))
            self.loop.call_soon_threadsafe(lambda: self._ask_content(wait))
            arrived = wait.done.wait(max(0.0, deadline - self.clock()))
            self.loop.call_soon_threadsafe(lambda: self._stop_asking(wait))
            if not arrived:
                return None
            for f in files:
                if f["data"] is None:
                    f["data"] = wait.blobs[f["digest"]]
            for blob in wait.blobs.values():
                self.content.put(blob)
        return [FileSpec.from_wire(f) for f in files]

    def _ask_content(self, wait: ContentWait) -> None:
        """On the loop: send the CONTENT_REQUEST, and again every
        CONTENT_RETRY while it is unanswered (a reply lost in a reconnect)."""
        self.content_waits[wait.jid] = wait
        if wait.done.is_set():
            return
        still = sorted(wait.wanted - wait.blobs.keys())
        self._send_sealed(
            MsgType.CONTENT_REQUEST, {"jid": wait.jid, "digests": still}, jid=wait.jid
        )
        wait.retry = self.loop.call_later(CONTENT_RETRY, lambda: self._ask_content(wait))

    def _stop_asking(self, wait: ContentWait) -> None:
        if wait.retry is not None:
            wait.retry.cancel()
        self.content_waits.pop(wait.jid, None)

    def on_content(self, msg: Message) -> None:
        jid = msg.body["jid"]
        wait = self.content_waits.get(jid)
        if wait is None or wait.done.is_set():
            log.info("%s: content for job %s, which no longer waits for it", self.id, jid)
            return
        for blob in msg.body["blobs"]:
            digest = content.digest_of(blob)
            if digest in wait.wanted:  # anything else is not ours to keep
                wait.blobs[digest] = blob
        if wait.wanted <= wait.blobs.keys():
            wait.done.set()
            return
        # One reply carries a few MiB at most: ask for the rest at once.
        if wait.retry is not None:
            wait.retry.cancel()
        self._ask_content(wait)

    def _finish(self, jid: str, body: dict[str, Any]) -> bytes:
        """Spool the result and return it packed. The job is dropped after
        it, on the loop (_job_done(), _drop_job()): a crash between the two
        finds both, and _resume_jobs() then keeps the result and drops the job."""
        packed = results.fit(body)
        self.spool.put(Kind.RESULT, jid, packed)
        return packed

    def _drop_job(self, jid: str) -> bool:
        """Forget a finished job, durably, before its result is first sent
        (common/seen.py says why), and the file of one an earlier minion
        spooled (spooled_jobs; no unlink for the others). False if it
        could not: then its result must not be sent, for once the master had
        it, the result would leave the spool, and a restart would find the
        job alone and apply it again."""
        try:
            self.seen.drop(jid)
            if jid in self.spooled_jobs:
                self.spool.remove(Kind.JOB, jid)
                self.spooled_jobs.discard(jid)
        except (StoreError, StateFileError) as e:
            log.error(
                "%s: job %s: %s; its result waits in the spool for a start that can drop it",
                self.id,
                jid,
                e,
            )
            return False
        return True

    def _resume_jobs(self) -> None:
        """Queue the jobs a previous run acknowledged but did not finish: kept
        with their seen jid, or spooled as files (where an earlier minion kept
        them)."""
        interrupted = self.seen.started()
        for jid in self.seen.kept():
            self._resume(jid, self.seen.kept_body(jid), interrupted=jid in interrupted)
        for jid in sorted(self.spooled_jobs):  # oldest first, as jids sort
            self._resume(jid, self.spool.get(Kind.JOB, jid))

    def _resume(self, jid: str, data: bytes | None, *, interrupted: bool = False) -> None:
        if data is None:
            return  # gone since it was listed: nothing to resume
        if jid in self.outgoing:  # finished just before a crash
            if not self._drop_job(jid):
                del self.outgoing[jid]
            return
        try:
            body = codec.unpack(data, max_depth=16)
            check_body(MsgType.JOB, body)  # checked as a received job is
            job = replace(_job_from_body(jid, body), interrupted=interrupted)
        except (ProtocolError, KeyError, TypeError, ValueError) as e:
            log.error("%s: kept job %s is unreadable, dropping it: %s", self.id, jid, e)
            self._drop_job(jid)
            return
        if interrupted:
            log.warning(
                "%s: resuming job %s, which a restart interrupted while it changed the host",
                self.id,
                jid,
            )
        else:
            log.info("%s: resuming job %s, received before a restart", self.id, jid)
        self.queue.append(job)

    def _job_done(self, job: Job, future: concurrent.futures.Future) -> None:
        self.busy = None
        if self.progress is not None:
            self.progress.cancel()
            self.progress = None
        error = future.exception()
        if error is not None:
            # A bug, not a host problem: report it rather than lose the job.
            log.error("%s: job %s failed inside the minion", self.id, job.jid, exc_info=error)
            now = self.clock()
            body = results.error_result(
                job.module, f"internal error in the minion: {error!r}", started=now, finished=now
            )
            packed = self._finish(job.jid, body)
        else:
            log.info("%s: job %s done", self.id, job.jid)
            packed = future.result()
        if self._drop_job(job.jid):
            self.outgoing[job.jid] = Outgoing(0.0, RESULT_RETRY_MIN, packed)
            self._send_results()
        self._next_job()

    # ---- the heartbeat sequence ----

    def _load_seq(self) -> tuple[int, int]:
        """(last used, reserved up to) from the counter file: numbers above
        the reservation were never used, so the next run starts there."""
        path = os.path.join(self.settings.state_dir, SEQ_FILE)
        try:
            data = atomicfile.read_file(self.settings.state_dir, SEQ_FILE, max_bytes=64)
            reserved = 0 if data is None else int(data.decode("ascii").strip())
        except (StateFileError, ValueError, UnicodeDecodeError) as e:
            raise SafcmError(
                f"{path}: unreadable heartbeat counter ({e}); remove it and delete this "
                "minion's key on the master ('safcm-master keys delete ID') to start over"
            ) from e
        return reserved, reserved

    def _next_seq(self) -> int:
        self.seq += 1
        if self.seq > self.seq_reserved:
            self.seq_reserved = self.seq + SEQ_BLOCK
            atomicfile.replace_file(
                self.settings.state_dir, SEQ_FILE, f"{self.seq_reserved}\n".encode("ascii")
            )
        return self.seq

    # ---- the pinned master key ----

    def _load_master_keys(self) -> PublicKeys | None:
        path = os.path.join(self.settings.state_dir, MASTER_KEY_FILE)
        try:
            data = atomicfile.read_file(
                self.settings.state_dir, MASTER_KEY_FILE, max_bytes=MASTER_KEY_FILE_MAX
            )
            if data is None:
                return None
            keys = PublicKeys.from_wire(codec.unpack(data, max_depth=2))
        except (StateFileError, ProtocolError, ValueError, KeyError, TypeError) as e:
            raise SafcmError(
                f"{path}: unreadable pinned master key ({e}); remove it to "
                "trust the master again on first use"
            ) from e
        pinned = self.settings.master_fingerprint
        if pinned is not None and not keys.matches(pinned):
            log.warning(
                "%s: %s does not match master_fingerprint; it will be replaced by "
                "the key of a master that matches",
                self.id,
                path,
            )
            return None
        return keys

    def _pin_master_keys(self, keys: PublicKeys, *, first_use: bool) -> None:
        # Durable before we trust it: a pin lost in a power cut would make the
        # next start trust whichever master answers first.
        save_master_keys(self.settings.state_dir, keys)
        self.master_keys = keys
        how = "trusted on first use and pinned" if first_use else "matches master_fingerprint"
        log.info("%s: master key %s %s", self.id, keys.fingerprint(), how)


def save_master_keys(state_dir: str, keys: PublicKeys) -> None:
    """Pin the master's public keys in `state_dir` (atomic and durable)."""
    atomicfile.replace_file(state_dir, MASTER_KEY_FILE, codec.pack(keys.to_wire()))


def _unsendable(body: dict[str, Any], reason: str) -> dict[str, Any] | None:
    """An error result in place of a spooled one that fails the wire's checks,
    or None if not even its module is known."""
    module = body.get("module")
    if not wire.is_module(module):
        return None
    when = body.get("started")
    when = when if isinstance(when, float) and when >= 0 else 0.0
    return results.error_result(
        str(module),
        f"the minion's result could not be sent ({reason}); its log has the details",
        started=when,
        finished=when,
    )


def _ran(fn: Callable[[Job], bytes], job: Job) -> concurrent.futures.Future:
    """`fn(job)` run here and now, as the done future a worker would give."""
    future: concurrent.futures.Future = concurrent.futures.Future()
    try:
        future.set_result(fn(job))
    except Exception as e:  # _job_done() reports it as the worker's would be
        future.set_exception(e)
    return future


def _changes_host(job: Job) -> bool:
    """Whether applying `job` may change the host (marked started first)."""
    return job.module not in READ_ONLY_MODULES and not job.body.get("dry_run", False)


def _job_from_body(jid: str, body: dict[str, Any]) -> Job:
    return Job(jid, body)


def run(settings: MinionSettings) -> int:
    """Run one minion until SIGTERM or SIGINT."""
    ctx = zmq.Context()
    loop = Loop()
    loop.stop_on_signals(signal.SIGTERM, signal.SIGINT)
    # One worker: one job at a time on this host.
    worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="apply")
    minion = Minion(settings, loop=loop, ctx=ctx, worker=worker)
    log.info(
        "%s: starting; master %s ports %d/%d, root %s, key %s",
        settings.id,
        ", ".join(settings.master),
        settings.publish_port,
        settings.return_port,
        settings.root,
        minion.keys.fingerprint(),
    )
    minion.start()
    try:
        loop.run()
    finally:
        if minion.busy is not None:
            # The unit gives it the longest job's time (KillMode=mixed).
            log.info("%s: stopping after job %s finishes", settings.id, minion.busy)
        else:
            log.info("%s: stopping", settings.id)
        worker.shutdown(wait=True)
        loop.run_once(0)  # deliver the callbacks of a job that just finished
        minion.close()
        loop.close()
        ctx.term()
    return 0


def main(settings: MinionSettings) -> int:
    safcm_log.setup(settings.log_level)
    return run(settings)
