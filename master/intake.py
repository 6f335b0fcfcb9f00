"""Intake: the return socket, where minions speak to the master.

    ROUTER  return_port, CURVE. Any key may connect, but an unknown one can
            only enrol (plain ENROL_REQUEST, rate-limited per key and per
            connection); everything else from it is dropped before any
            decryption. Accepted minions send heartbeats, job receipts,
            progress and results; replies go back to the sender's routing id.

Heartbeats, receipts and progress reports are plain messages that rely on
the CURVE connection (form "curve" in common/protocol.py): one comes from
the accepted minion whose transport key libzmq names (User-Id), looked up on
every message, and from no one else, whatever its body says. They are
checked in order of cost: that key, the frame's size, a per-key and
per-connection rate, then decoding (a heartbeat by protocol.heartbeat_body,
which takes what decode_plain would for less); a heartbeat's reply is a
plain message on the same connection, for every second heartbeat where the
minion's interval allows (HEARTBEAT_REPLY_SPACING). So a heartbeat costs the
master no signature, key agreement or AEAD of its own (bench/heartbeat.py).

A sealed message (a result) is checked in order of cost: the transport key,
the frame's size against the limit of the type it claims, the claimed sender
against that key, the signature, then the job's state for this host (a
result already stored is confirmed again without being decrypted), and only
then decryption and unpacking.

A result is checked against the job store (sent to that host, what the job
sent, not already stored), stored, and only then acknowledged. Results,
receipts and heartbeat rows are gathered into a batch, committed in one
transaction by the result writer (master/resultwriter.py) off the loop, one
batch at a time: while one is written, the loop goes on reading and gathers
the next; only once the commit is durable does the loop confirm each result
(RESULT_RECEIPT) and tell the lifecycle. A copy of a result that comes while
the first is being stored is confirmed with it, never before. What a
receipt, a result or a progress report changes is decided by
master/lifecycle.py.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zmq

from safcm.common import codec
from safcm.common.crypto import MAX_ENVELOPE_OVERHEAD, KeyPair, claim
from safcm.common.errors import EnvelopeError, ProtocolError, SafcmError, StoreError
from safcm.common.loop import Timer
from safcm.common.protocol import (
    MASTER_ID,
    MAX_FILE_BYTES,
    MAX_PLAIN_NETWORK_BYTES,
    MAX_RESULT_BYTES,
    Channel,
    Dispatcher,
    Message,
    MsgType,
    VerifiedMessage,
    decode_plain,
    encode_plain,
    heartbeat_body,
    is_sealed,
    make_enrol_reply,
    new_jid,
    seal_message_at,
    verify_enrol_request,
    verify_message_at,
)
from safcm.common.protocol import KeyState as WireKeyState
from safcm.common.ratelimit import Bucket, Buckets, PeerLog
from safcm.common.wire import pack_plain
from safcm.master.cluster import Relay
from safcm.master.facts import HostFacts
from safcm.master.jobstore import OWED_JOBS_LOOKBACK, HostState, JobStore, StoredResult
from safcm.master.keystore import KeyStore, MinionKey, SeenRow
from safcm.master.lifecycle import Lifecycles, Verdict
from safcm.master.outcomes import change_count, host_status
from safcm.master.peers import LIVENESS, Peers, Presence, user_id
from safcm.master.resultwriter import Batch, ResultWriter
from safcm.master.settings import MasterSettings
from safcm.master.transport import DOMAIN_RETURN, ConnectionTable

log = logging.getLogger("safcm-master")

# Lifetime of the master's own small sealed messages, in seconds.
MESSAGE_TTL = 60
# Messages read from the ROUTER per wake-up, at most; what they bring is
# handed to the result writer after each wake-up, so results that arrive
# together share one fsync.
ROUTER_BATCH = 512
# Seconds spent reading the return socket in one go, at most (about: one
# large result may take longer): the loop must not stall on a burst.
ROUTER_SLICE = 0.02
# Seconds the return socket is left alone after it was read empty: what
# comes meanwhile (a fleet's heartbeats, spread over their interval) is read
# in one wake-up, and the replies go out in one burst. Each wake-up costs the
# loop a poll and libzmq's I/O thread a context switch, more than handling
# a heartbeat itself; this is the most a message waits for that.
RETURN_COALESCE = 0.02
# Messages ZeroMQ may queue from one connection of the return socket before
# it stops reading that connection (TCP then pushes back): at most this many
# results of MAX_RESULT_BYTES wait in memory per peer.
RETURN_RCVHWM = 2
# Largest message the return socket receives, in bytes: a sealed result.
RETURN_MAX_IN = MAX_RESULT_BYTES + MAX_ENVELOPE_OVERHEAD
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
# Plain messages of an accepted key (heartbeats, receipts, progress, an
# enrolment hello): per key and per connection, per second and burst. An
# honest minion sends at most 1 / MIN_HEARTBEAT_INTERVAL = 20 heartbeats a
# second, a receipt per job (a burst of up to MAX_QUEUED_JOBS = 100 when
# jobs pile up) and a progress report every few seconds; beyond this, a
# flood from a key costs a bucket and a rate-limited log line per message.
# A receipt dropped here costs at most a re-publish.
CURVE_RATE = 100.0
CURVE_BURST = 500.0
# New pending keys per second and burst, for all ids together: each is a
# database write, and MAX_PENDING_KEYS of them block every later newcomer, so
# a flood of invented ids fills that table at this pace at most.
NEW_KEY_RATE = 50.0
NEW_KEY_BURST = 1000.0
# Bytes of results in one batch at most: a batch this large is handed to the
# result writer at once, and if the writer is still busy with the one before,
# the return socket is not read until that one is written (what minions send
# meanwhile waits in their queues). So a burst of large results never piles
# up in memory: two batches at most, one being written and one gathered.
BATCH_BYTES = 16 * 1024 * 1024
# Seconds spent confirming stored results in one go, at most (about: one
# result's confirmation may take longer): a large batch gathered during a
# slow commit is confirmed over several loop turns, not in one.
CONFIRM_SLICE = 0.01
# Seconds between two log lines about a batch of heartbeat rows alone (last-
# seen times, sequence numbers) that could not be written: they stay unwritten
# and go with the next batch or SEQ_FLUSH, so a database locked for a minute
# says so every ten seconds, not every second.
SEEN_ERROR_INTERVAL = 10.0
# Content a minion lacks (CONTENT_REQUEST, master/jobcontent.py): one reply
# carries at most this many bytes of it, or one file's content if that is
# larger; the minion asks again for the rest when the reply has come, so one
# request is in flight per minion.
CONTENT_REPLY_BYTES = 4 * 1024 * 1024
# Bytes of content per minion, per second and burst (at least one reply of
# the largest file): a minion that asks and never reads cannot make the
# master read and queue content faster than this.
CONTENT_RATE = 4 * 1024 * 1024
CONTENT_BURST = 2 * MAX_FILE_BYTES
# Replies queued for one peer of the return socket at most; more are dropped
# (the minion asks again). Replies are small but for content: this bounds
# what a minion that stops reading can hold in the master's memory.
RETURN_SNDHWM = 8
# A heartbeat is answered only if its minion's last answer is at least this
# many of its intervals old: every second one is, so the reply's cost (a
# wake-up of libzmq's I/O thread, a CURVE box and a send, about what reading
# the heartbeat costs) is paid half as often. A minion of any version
# reconnects after three intervals without a reply (minion/daemon.py
# LIVENESS); it then sees at most two, and the reply has one interval of
# slack: a master that answers that much late looks gone...
HEARTBEAT_REPLY_SPACING = 1.5
# ...so that slack must be at least this many seconds: a minion with a
# shorter interval has every heartbeat answered, as before.
HEARTBEAT_REPLY_SLACK = 1.0
# FACTS messages per minion, per second and burst: an honest minion sends
# one per connection and one per change (at most one per facts_interval,
# 0.5 s or more); each costs a database write.
FACTS_RATE = 0.5
FACTS_BURST = 5.0


@dataclass
class Arrival:
    """A result taken (lifecycle.result()) and not confirmed yet."""

    result: StoredResult
    peer: bytes  # the routing id its confirmation goes to: the last that sent it


@dataclass
class Flight:
    """The batch the result writer is committing. Its future is the Intake's
    (_writing), not its own: the future's done callback holds the flight,
    and a flight holding its future would be a reference cycle, which only
    a full garbage collection frees, with every result of the batch in it
    (in a files create on 1,000 hosts the full collections held the loop
    51-67 ms, 24-29 ms of it CPU)."""

    arrivals: dict[tuple[str, str], Arrival]  # by (jid, host)
    receipts: int
    seen: list[SeenRow]
    facts: dict[str, tuple[dict[str, Any], float]]  # by host: (facts, when)


class Intake:
    def __init__(
        self,
        settings: MasterSettings,
        keys: KeyPair,
        peers: Peers,
        keystore: KeyStore,
        jobs: JobStore,
        lifecycle: Lifecycles,
        clock: Callable[[], float],
        writer: ResultWriter,
    ) -> None:
        self.settings = settings
        self.writer = writer
        self.keys = keys
        self.peers = peers
        self.loop = peers.loop
        self.keystore = keystore
        self.jobs = jobs
        self.lifecycle = lifecycle
        # Set where masters share the database (master/cluster.py): work
        # passed to and from the other masters.
        self.relay: Relay | None = None
        self.clock = clock
        self.peer_log: PeerLog = peers.peer_log
        now = self.loop.clock()
        self.enrol_by_key = Buckets(ENROL_RATE, ENROL_BURST, ENROL_KEYS)
        self.enrol_by_conn = Buckets(ENROL_RATE, ENROL_BURST, ENROL_KEYS)
        self.enrol_unknown = Bucket(ENROL_GLOBAL_RATE, ENROL_GLOBAL_BURST, now)
        self.curve_by_key = Buckets(CURVE_RATE, CURVE_BURST, ENROL_KEYS)
        self.curve_by_conn = Buckets(CURVE_RATE, CURVE_BURST, ENROL_KEYS)
        self.new_keys = Bucket(NEW_KEY_RATE, NEW_KEY_BURST, now)
        self.content_bytes = Buckets(CONTENT_RATE, CONTENT_BURST, ENROL_KEYS)
        self.facts_by_key = Buckets(FACTS_RATE, FACTS_BURST, ENROL_KEYS)
        # Per host, for result_quota: bytes of its results stored or being
        # stored, read from the database when first needed; how many of them
        # are being stored (taken, not yet committed or lost); and the hosts
        # whose count a purge made stale while some were (a count read then
        # could not tell whether it holds those): counted again once they are.
        self._stored_bytes: dict[str, int] = {}
        self._unsettled: dict[str, int] = {}
        self._stale: set[str] = set()
        self.network = Dispatcher(
            Channel.NETWORK,
            {
                MsgType.HEARTBEAT: self.on_heartbeat,
                MsgType.JOB_RECEIPT: self.on_job_receipt,
                MsgType.RESULT: self.on_result,
                MsgType.JOB_PROGRESS: self.on_job_progress,
                MsgType.CONTENT_REQUEST: self.on_content_request,
                MsgType.FACTS: self.on_facts,
            },
        )
        self.router: zmq.Socket | None = None
        # The return socket's connections (its table, once open()).
        self.returns = ConnectionTable(0)
        self._resume: Timer | None = None  # while the return socket rests (RETURN_COALESCE)
        # Receipts and results read since the last batch was handed to the
        # writer: the next batch (commit()).
        self._receipts: list[tuple[str, str]] = []
        self._batch: dict[tuple[str, str], Arrival] = {}
        self._batch_bytes = 0
        # Facts that arrived since (the latest of each host), and those of a
        # batch that failed: sent again with the next batch or flush(), not at
        # once, so a locked database is not asked again and again.
        self._facts: dict[str, tuple[dict[str, Any], float]] = {}
        self._facts_again: dict[str, tuple[dict[str, Any], float]] = {}
        self._flight: Flight | None = None  # the batch being written
        self._writing: concurrent.futures.Future[None] | None = None  # the writer's, of _flight
        # The return socket is not read: the next batch is full (BATCH_BYTES)
        # while the writer is busy with this one.
        self._held = False
        # Results durable and not confirmed yet (_confirm()), oldest first.
        self._durable: collections.deque[Arrival] = collections.deque()
        self._confirming: Timer | None = None  # the next slice of them, if due
        self._seen_error_logged = -SEEN_ERROR_INTERVAL  # loop clock of the last such line
        # Routing id of the ROUTER message being handled: _reply() answers it.
        # Handlers take only the message (the Dispatcher's contract), so the
        # peer travels beside it.
        self._peer = b""
        self._replies: list[tuple[bytes, bytes]] = []  # (routing id, frame), to send
        # The master's time in the heartbeat replies of this wake-up, once read.
        self._heartbeat_time: float | None = None
        # The packed body of the sealed message being handled, as it came: a
        # result is stored as these bytes, not packed a second time.
        self._plaintext = b""

    def open(self, address: str, cap: int, curve_secret: bytes) -> None:
        self.router = router = self.peers.bind(
            zmq.ROUTER,
            address,
            RETURN_MAX_IN,
            cap,
            DOMAIN_RETURN,
            curve_secret,
            {zmq.RCVHWM: RETURN_RCVHWM, zmq.SNDHWM: RETURN_SNDHWM},
        )
        router.setsockopt(zmq.ROUTER_MANDATORY, 0)
        self.returns = self.peers.tables[DOMAIN_RETURN]
        self.loop.add_reader(router, self.on_router)

    def close(self) -> None:
        if self._resume is not None:
            self._resume.cancel()
        if self.router is not None:
            self.loop.remove_reader(self.router)
            self.router.close(0)

    def store_receipt(self, jid: str, host: str) -> None:
        self._receipts.append((jid, host))  # stored with the next batch

    def forget_quota(self) -> None:
        """Results were deleted: each host's use of its quota is counted again
        when needed, or, if some of its results are being stored, once they are."""
        for host in list(self._stored_bytes):
            if host in self._unsettled:
                self._stale.add(host)
            else:
                del self._stored_bytes[host]

    def on_router(self) -> None:
        """Read what the return socket holds, within ROUTER_SLICE and
        ROUTER_BATCH, then answer it all in one burst; after reading it
        empty, rest for RETURN_COALESCE (read then by the timer, not the poller)."""
        router = _opened(self.router)
        until = self.loop.clock() + ROUTER_SLICE
        drained = False
        read = 0
        self._heartbeat_time = None  # read again in each wake-up
        while read < ROUTER_BATCH and self.loop.clock() < until:
            # Frame by frame rather than recv_multipart(): a heartbeat is
            # cheap enough that the list and the RCVMORE query count. The
            # first frame is the routing id; the frames of one message all
            # arrive together, so the rest never waits.
            try:
                peer = router.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                drained = True
                break
            read += 1
            frame = router.recv(zmq.NOBLOCK, copy=False) if peer.more else None
            if frame is None or frame.more:
                self._drop_frames(router, frame)
                continue
            self._route(peer.bytes, frame)
            if self._batch_bytes >= BATCH_BYTES:
                self.commit()
                if self._flight is not None and self._batch_bytes >= BATCH_BYTES:
                    # The writer is busy with the batch before: read nothing
                    # more until it is done (_written()).
                    self._held = True
                    self.loop.remove_reader(router)
                    log.debug("the return socket waits for the result writer")
                    break
        self.commit()
        self._send_replies()
        # Read empty after reading something: rest, and read again when the
        # timer fires (_resume_reading).
        if drained and read > 0 and self._resume is None:
            self.loop.remove_reader(router)
            self._resume = self.loop.call_later(RETURN_COALESCE, self._resume_reading)

    def _drop_frames(self, router: zmq.Socket, frame: zmq.Frame | None) -> None:
        """Read the rest of a message that is not one frame (`frame` is its
        first, if any), and drop it."""
        count = 0
        while frame is not None:
            count += 1
            self.returns.took(frame.get(zmq.SRCFD), len(frame))
            frame = router.recv(zmq.NOBLOCK, copy=False) if frame.more else None
        self.peer_log.warning("dropped a message of %d frames instead of one", count)

    def _resume_reading(self) -> None:
        self._resume = None
        try:
            self.on_router()
        finally:
            if self._resume is None and not self._held:
                # Nothing came while resting, or a limit stopped the read with
                # more waiting (or the read failed): the poller watches again.
                self.loop.add_reader(_opened(self.router), self.on_router)

    def _route(self, peer: bytes, frame: zmq.Frame) -> None:
        self._peer = peer
        transport_key = user_id(frame)
        fd = frame.get(zmq.SRCFD)
        curve_key = bytes.fromhex(transport_key)
        key = self.keystore.accepted_by_curve(curve_key)
        if not self.peers.note(DOMAIN_RETURN, fd, transport_key, known=key is not None):
            return
        data = frame.bytes
        self.returns.took(fd, len(data))
        who = key.id if key is not None else f"key {transport_key[:16]}"
        try:
            if not is_sealed(data):
                self._plain(data, curve_key, fd, key)
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
        except StoreError as e:
            self.peer_log.error("message from %s not handled: %s", who, e)
        except Exception:  # a bug must cost one message, never the daemon
            self.peer_log.log(
                logging.ERROR, "failed to handle a message from %s", who, exc_info=True
            )

    def _plain(self, data: bytes, curve_key: bytes, fd: int, key: MinionKey | None) -> None:
        """A plain message: enrolment from any key, or a curve message from
        the accepted minion `key`, whose transport key libzmq authenticated.
        Its size and rate are checked before anything is decoded."""
        if len(data) > MAX_PLAIN_NETWORK_BYTES:
            raise ProtocolError(f"a plain message of {len(data)} bytes")
        now = self.loop.clock()
        if key is None:
            self._take_enrolment(curve_key, fd, now, known=False)
            msg = decode_plain(data, Channel.NETWORK)
            if msg.type is not MsgType.ENROL_REQUEST:
                raise ProtocolError(f"{msg.type.name} from a key that is not accepted")
            self.on_enrol_request(msg, curve_key)
            return
        if not (self.curve_by_key.take(key.id, now) and self.curve_by_conn.take(fd, now)):
            raise ProtocolError("plain messages come faster than allowed for this key")
        # Most of what comes is heartbeats: they are read for less (and any
        # that heartbeat_body() does not take, decode_plain() reads).
        body = heartbeat_body(data)
        if body is not None:
            self._heartbeat(key, body)
            return
        # The sender is the minion whose key the connection proved (Message.peer).
        msg = decode_plain(data, Channel.NETWORK, peer=key.id)
        if msg.type is MsgType.ENROL_REQUEST:
            self._take_enrolment(curve_key, fd, now, known=True)
            self.on_enrol_request(msg, curve_key)
        else:
            self.network.dispatch(msg)

    def _take_enrolment(self, curve_key: bytes, fd: int, now: float, *, known: bool) -> None:
        """Spend an enrolment's tokens (each costs a signature check, maybe a
        database write); ProtocolError if there are none."""
        if not (self.enrol_by_key.take(curve_key, now) and self.enrol_by_conn.take(fd, now)):
            raise ProtocolError("enrolment requests come faster than allowed for this key")
        if not known and not self.enrol_unknown.take(now):
            raise ProtocolError("enrolment requests of unknown keys come faster than allowed")

    def _sealed(self, data: bytes, key: MinionKey) -> None:
        """A sealed message from the accepted minion `key`, whose transport
        key libzmq authenticated: checked in order of cost (module docstring)."""
        claimed = claim(data)
        if claimed.header.sender != key.id:
            raise ProtocolError(
                f"claims to be from {claimed.header.sender!r} on the connection of {key.id}"
            )
        verified = verify_message_at(
            claimed, me=MASTER_ID, sender_keys=self.peers.minion_keys, now=self.clock()
        )
        if verified.spec.type is MsgType.RESULT and not self._wants_result(verified, key.id):
            return
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
            arrival = self._storing(jid, minion)
            if arrival is not None:
                # Not durable yet: confirmed with the first, on the
                # connection this copy came on (the minion's latest).
                arrival.peer = self._peer
                self.peer_log.info(
                    "job %s: duplicate result from %s while its first is being stored; "
                    "confirmed once it is",
                    jid,
                    minion,
                )
                return False
            self.peer_log.info(
                "job %s: duplicate result from %s; already stored, confirming again", jid, minion
            )
            self._reply(encode_plain(MsgType.RESULT_RECEIPT, {"jid": jid}))
            return False
        return True

    def _storing(self, jid: str, minion: str) -> Arrival | None:
        """The result of (jid, minion) in the next batch or the one being written, if any."""
        arrival = self._batch.get((jid, minion))
        if arrival is None and self._flight is not None:
            arrival = self._flight.arrivals.get((jid, minion))
        return arrival

    def _reply(self, frame: bytes) -> None:
        """Answer the message being handled; sent with the others of this
        wake-up (_send_replies)."""
        self._replies.append((self._peer, frame))

    def _send_replies(self) -> None:
        """Send the replies of one wake-up in one burst: libzmq's I/O thread,
        woken by the first, finds more waiting, rather than being woken for
        each (a wake-up of another thread costs more than a small reply)."""
        replies, self._replies = self._replies, []
        router = _opened(self.router)
        for peer, frame in replies:
            try:
                router.send(peer, zmq.NOBLOCK | zmq.SNDMORE)
                router.send(frame, zmq.NOBLOCK)
            except zmq.Again:
                log.debug("reply to %s dropped: its queue is full", peer.hex())

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

    def on_enrol_request(self, msg: Message, curve_key: bytes) -> None:
        now = self.clock()
        keys = verify_enrol_request(msg, now=now)
        if keys.curve != curve_key:
            raise ProtocolError(
                "the enrol request names another transport key than its connection's"
            )
        minion = msg.body["id"]
        known_before = self.keystore.get(minion)
        if known_before is None:
            if not self.new_keys.take(self.loop.clock()):
                raise ProtocolError(f"enrolment of new id {minion!r}: too many new keys a second")
            if not self.settings.auto_accept:
                self._make_room(minion, now)
        state = self.keystore.enrol(minion, keys, now=now, auto_accept=self.settings.auto_accept)
        wire_state = WireKeyState.REJECTED
        if state is None:
            known = self.keystore.get(minion)
            if known is not None:
                self.peer_log.security(
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

    def _make_room(self, minion: str, now: float) -> None:
        """Drop the stalest pending key if there are MAX_PENDING_KEYS, to let
        `minion`, a new id, enrol."""
        dropped = self.keystore.make_room()
        if dropped is not None:
            self.peer_log.warning(
                "pending keys are at their limit (%d): dropped the pending key of %s (%s), "
                "last heard from %.0f s ago, to take %s's; a minion still running asks "
                "again. Many new ids at once may be a flood: 'keys list' shows them",
                self.keystore.pending_count() + 1,
                dropped.id,
                dropped.fingerprint,
                max(0.0, now - dropped.heard),
                minion,
            )

    def on_heartbeat(self, msg: Message) -> None:
        """A heartbeat that heartbeat_body() did not take (decode_plain() did)."""
        minion = msg.require_peer()
        key = self.keystore.accepted(minion)
        if key is None:
            raise ProtocolError(f"heartbeat of {minion}, whose key is not accepted")
        self._heartbeat(key, msg.body)

    def _heartbeat(self, key: MinionKey, body: dict[str, Any]) -> None:
        """Presence, and the master's time in the reply (for every second
        heartbeat, HEARTBEAT_REPLY_SPACING), for the accepted minion `key`
        whose connection sent `body`. The sequence number still
        refuses a heartbeat that is not newer than the last one taken (CURVE
        alone orders messages within one connection only)."""
        minion, seq = key.id, body["seq"]
        if seq <= key.seq:
            raise ProtocolError(
                f"heartbeat {seq} of {minion} is not newer than its last, {key.seq} (a replay)"
            )
        seen = self.loop.clock()
        presence = self.peers.presence.get(minion)
        if presence is None:
            self.peer_log.info("minion %s is connected (version %s)", minion, body["version"])
            presence = self.peers.presence[minion] = Presence(0.0, 0.0, since=seen)
        elif seen - presence.last_seen >= LIVENESS * presence.interval:
            presence.since = seen  # back after a silence: connected since now (Peers.deaf())
        # Changed in place: a new object per heartbeat costs more than the rest.
        presence.last_seen = seen
        presence.interval = interval = body["interval"]
        presence.busy = body["busy"]
        if self._heartbeat_time is None:
            # One time for the heartbeats of a wake-up (ROUTER_SLICE at most):
            # a minion ignores a difference of its offset to our clock of up
            # to CLOCK_OFFSET_TOLERANCE (0.5 s).
            self._heartbeat_time = self.clock()
        now = self._heartbeat_time
        self.keystore.touch(minion, now, seq)
        if (
            interval >= HEARTBEAT_REPLY_SLACK
            and seen - presence.answered < HEARTBEAT_REPLY_SPACING * interval
        ):
            return  # answered recently enough (HEARTBEAT_REPLY_SPACING)
        presence.answered = seen
        # Packed without encode_plain's schema check: our own clock and the
        # number the heartbeat carried, which tells the minion how long the
        # answer took, so how far to trust the time in it.
        self._reply(pack_plain(MsgType.HEARTBEAT_REPLY, {"time": now, "seq": seq}))

    def on_job_receipt(self, msg: Message) -> None:
        minion, jid = msg.require_peer(), msg.body["jid"]
        if self.relay is not None and self.relay.relayed_to(jid, minion):
            # Published here for another master's job: stored here, with the
            # next batch, and that master told (master/cluster.py), which
            # stores it too.
            self.store_receipt(jid, minion)
            self.relay.send("receipt", jid, minion)
            return
        if not self.lifecycle.sent_to(jid, minion):
            raise ProtocolError(f"receipt for job {jid}, never sent to it")
        self.lifecycle.receipt(jid, minion, self.clock())

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
        changes = change_count(body)
        result = StoredResult(
            jid,
            minion,
            host_status(body, changes),
            changes,
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
        self._unsettled[minion] = self._unsettled.get(minion, 0) + 1
        self._batch[(jid, minion)] = Arrival(result, self._peer)
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
        apply = body.get("apply")  # a files job, or a sync with files, that ran
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
            # Owed by an earlier job that failed on this host (minion/owed.py).
            if earlier is None:
                earlier = self.jobs.recent_triggers(minion)
            if trigger["command"] not in earlier:
                # Owed longer than the look-back reaches (or by a job purged
                # from the history): stored all the same, for refusing it
                # would leave the host "no response" for good while its
                # minion sends the result again and again.
                self.peer_log.warning(
                    "job %s: %s reports trigger %r, which none of its last %d jobs sent "
                    "(owed by an older job?); stored as reported",
                    jid,
                    minion,
                    trigger["command"],
                    OWED_JOBS_LOOKBACK,
                )
        return None

    def on_job_progress(self, msg: Message) -> None:
        """A minion is still working on a job: the lifecycle moves its deadline."""
        minion, jid = msg.require_peer(), msg.body["jid"]
        if self.relay is not None and self.relay.relayed_to(jid, minion):
            self.relay.send("progress", jid, minion)
            return
        if not self.lifecycle.sent_to(jid, minion):
            raise ProtocolError(f"progress from {minion} on job {jid}, which was never sent to it")
        if self.lifecycle.progress(jid, minion, self.clock()) is not None:
            log.debug("job %s: %s still working after %.0f s", jid, minion, msg.body["elapsed"])

    def on_content_request(self, msg: Message) -> None:
        """A minion lacks content of a job it has: it gets it, but only content
        its own job names, and at CONTENT_RATE at most."""
        header = msg.require_header()
        minion, jid = header.sender, header.jid
        if self.jobs.host_state(jid, minion) not in (HostState.SENT, HostState.RECEIVED):
            raise ProtocolError(f"content request from {minion} for job {jid}, not open for it")
        allowed = self.jobs.manifest_digests(jid, minion)
        if allowed is None:
            raise ProtocolError(f"content request from {minion} for job {jid}, which has none")
        asked = msg.body["digests"]
        wanted = [d for d in asked if d in allowed]
        if len(wanted) < len(asked):
            self.peer_log.warning(
                "job %s: %s asked for %d contents its job does not name; refused those",
                jid,
                minion,
                len(asked) - len(wanted),
            )
        blobs: list[bytes] = []
        size = 0
        for data in self.jobs.content(jid, wanted).values():
            if blobs and size + len(data) > CONTENT_REPLY_BYTES:
                break  # the minion asks again for the rest
            blobs.append(data)
            size += len(data)
        if not blobs:
            return
        if not self.content_bytes.take(minion, self.loop.clock(), cost=size):
            raise ProtocolError(f"content requests of {minion} come faster than allowed")
        log.info("job %s: sent %s %d contents it lacked", jid, minion, len(blobs))
        self._reply_sealed(minion, MsgType.CONTENT, {"jid": jid, "blobs": blobs}, jid=jid)

    def on_facts(self, msg: Message) -> None:
        """A minion's facts about its host: stored under the envelope's sender
        (whose signature was checked, and who is the minion the connection
        proved), so a minion can only ever state its own."""
        minion = msg.require_header().sender
        if self.keystore.accepted(minion) is None:
            raise ProtocolError(f"facts from {minion}, whose key is not accepted")
        if not self.facts_by_key.take(minion, self.loop.clock()):
            raise ProtocolError(f"facts of {minion} come faster than allowed")
        # Stored by the result writer with the next batch: on the loop, the
        # write would wait behind the writer's commit for the lock (up to
        # BUSY_TIMEOUT_MS, and 185-207 ms were seen under disk load).
        # Compiles read them from memory at once.
        facts = HostFacts(msg.body)
        changed = self.peers.facts.get(minion) != facts
        self.peers.facts[minion] = facts
        self._facts[minion] = (msg.body, self.clock())
        if changed:
            self.peer_log.info(
                "facts of %s: os %s %s, %s, kernel %s",
                minion,
                msg.body["os_id"] or "unknown",
                msg.body["os_version_id"] or "",
                msg.body["architecture"],
                msg.body["kernel"],
            )

    def commit(self) -> None:
        """Hand the receipts and results gathered so far, with the heartbeat
        rows not written yet, to the result writer as one batch; unless it is
        writing one (then _written() hands them over when it is done)."""
        if self._batch or self._receipts or self._facts:
            self._hand_over()

    def flush(self) -> None:
        """commit(), and heartbeat rows and facts not written before with
        nothing else (SEQ_FLUSH)."""
        unwritten = self._facts or self._facts_again or self.keystore.dirty()
        if self._batch or self._receipts or unwritten:
            self._hand_over()

    def _hand_over(self) -> None:
        if self._flight is not None:
            return
        arrivals, self._batch = self._batch, {}
        receipts, self._receipts = self._receipts, []
        self._batch_bytes = 0
        facts = self._facts_again | self._facts  # a newer report wins
        self._facts, self._facts_again = {}, {}
        seen = self.keystore.unwritten_seen()
        batch = Batch(
            receipts,
            [a.result for a in arrivals.values()],
            seen,
            self.clock(),
            [(host, body, when) for host, (body, when) in facts.items()],
        )
        flight = self._flight = Flight(arrivals, len(receipts), seen, facts)
        self._writing = self.writer.write(batch, lambda f: self._written(flight, f))

    def _written(self, flight: Flight, future: concurrent.futures.Future[None]) -> None:
        """Back on the loop: the batch is durable, and each result is confirmed
        to its minion (which then deletes its copy); or it failed, and nothing
        of it is confirmed: each minion keeps its result and sends it again
        (a lost receipt costs at most a re-publish, which minions ignore).
        Then the next batch goes to the writer, and reading goes on."""
        if self._flight is not flight:
            return  # done already (finish_writing())
        self._flight = self._writing = None
        error = future.exception()
        try:
            if error is None:
                self.keystore.seen_written(flight.seen)
                self._durable.extend(flight.arrivals.values())
                self._confirm()
            else:
                self._not_written(flight, error)
        finally:
            self.commit()
            if self._held and self._batch_bytes < BATCH_BYTES:
                self._held = False
                self.loop.add_reader(_opened(self.router), self.on_router)
            self._send_replies()

    def _confirm(self) -> None:
        """Confirm durable results to their minions, for CONFIRM_SLICE at most:
        each is a receipt, a log line and the lifecycle's result_stored()
        (which sends the result to a CLI that waits for it), and a batch
        gathered during a slow commit may hold hundreds. The rest a loop turn
        later. A copy of a result that arrives meanwhile is confirmed at once:
        it is durable (_wants_result())."""
        until = self.loop.clock() + CONFIRM_SLICE
        while self._durable:
            arrival = self._durable.popleft()
            r = arrival.result
            self._settle(r.host, len(r.packed), stored=True)
            self._peer = arrival.peer
            self._reply(encode_plain(MsgType.RESULT_RECEIPT, {"jid": r.jid}))
            self.peer_log.info("job %s: result from %s: %s", r.jid, r.host, r.status)
            self.lifecycle.result_stored(r.jid, r.host, self.clock(), r.answer())
            if self.loop.clock() >= until:
                break
        if self._durable and self._confirming is None:
            self._confirming = self.loop.call_later(0.0, self._confirm_more)

    def _confirm_more(self) -> None:
        self._confirming = None
        try:
            self._confirm()
        finally:
            self._send_replies()

    def _not_written(self, flight: Flight, error: BaseException) -> None:
        for arrival in flight.arrivals.values():
            r = arrival.result
            self._settle(r.host, len(r.packed), stored=False)
            self.lifecycle.result_lost(r.jid, r.host, self.clock())
        for host, reported in flight.facts.items():
            # Newer ones (in _facts) win when both are handed over.
            self._facts_again.setdefault(host, reported)
        said = error if isinstance(error, SafcmError) else repr(error)
        trace = None if isinstance(error, StoreError) else error  # a bug: its trace
        if flight.arrivals or flight.receipts:
            log.error(
                "cannot store %d results and %d receipts, they will come again: %s",
                len(flight.arrivals),
                flight.receipts,
                said,
                exc_info=trace,
            )
            return
        now = self.loop.clock()
        if now - self._seen_error_logged >= SEEN_ERROR_INTERVAL:
            self._seen_error_logged = now
            log.error(
                "cannot write minions' last-seen times or facts, tried again later: %s",
                said,
                exc_info=trace,
            )

    def _settle(self, host: str, size: int, *, stored: bool) -> None:
        """A result of `host` of `size` bytes was stored, or was not (then it
        no longer counts towards the host's quota)."""
        if not stored:
            self._stored_bytes[host] -= size
        left = self._unsettled[host] - 1
        if left:
            self._unsettled[host] = left
            return
        del self._unsettled[host]
        if host in self._stale:
            self._stale.discard(host)
            del self._stored_bytes[host]

    def finish_writing(self) -> None:
        """The daemon stops, reading no more: write what was read and is not
        stored yet, waiting for the batch being written, and end the writer.
        A batch that fails is not confirmed, so its minions send it again."""
        self.commit()
        while self._flight is not None:
            flight = self._flight
            if flight.arrivals or flight.receipts:
                log.info(
                    "stopping: waiting for %d results and %d receipts to be stored",
                    len(flight.arrivals),
                    flight.receipts,
                )
            future = self._writing
            assert future is not None  # set with _flight
            concurrent.futures.wait([future])
            self._written(flight, future)  # hands over what is left, if anything
        while self._durable:  # no more loop turns: confirmed now
            self._confirm()
            self._send_replies()
        self.writer.close()


def _over_quota(body: dict[str, Any], size: int, used: int, quota: int) -> dict[str, Any]:
    """What is stored instead of a result that does not fit the minion's quota:
    the same job outcome (failed), with the reason, and no detail."""
    return {
        "module": body["module"],
        "status": "error",
        "started": body["started"],
        "finished": body["finished"],
        "error": (
            f"result of {size} bytes not stored: this minion's stored results take {used} "
            f"of its {quota} bytes (result_quota in master.yaml; older jobs free it as "
            "keep_jobs removes them)"
        ),
    }


def _opened(sock: zmq.Socket | None) -> zmq.Socket:
    """The return socket; RuntimeError before Intake.open()."""
    if sock is None:
        raise RuntimeError("the return socket is used before it is opened")
    return sock
