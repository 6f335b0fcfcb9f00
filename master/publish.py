"""Publishing jobs: the XPUB socket, the minions' subscriptions, sealing and
(re-)publishing envelopes.

    XPUB    publish_port, CURVE. Jobs, one sealed envelope per host, under a
            topic this master gives that host (Topics). Only accepted minions
            complete the handshake (the ZAP handler, master/transport.py).
            A minion subscribes to everything (protocol.SUBSCRIPTION) and
            nothing else: XPUB_MANUAL hands us each subscription with the
            User-Id of its connection, and for that connection we apply the
            topic of the key's minion instead, so it receives its own
            envelopes alone. A (re)subscription gets the minion's undelivered
            envelopes at once, at most once a second per envelope.

When to publish an envelope (at once, again with backoff until its receipt,
on a subscription) is decided by master/lifecycle.py; this module seals and
sends it. An envelope is sealed when it is published, from the job's parts
(master/jobcontent.py: the host's manifest and the content it lacks), which
are kept in memory while the job is open and read back from the job store
after a restart.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import zmq

from safcm.common.crypto import KeyPair, PublicKeys
from safcm.common.errors import ProtocolError
from safcm.common.protocol import (
    ENVELOPE_SLACK,
    MASTER_ID,
    SUBSCRIPTION,
    MsgType,
    pack_body,
    seal_packed_at,
)
from safcm.common.ratelimit import PeerLog
from safcm.master.cluster import Relay
from safcm.master.jobcontent import JobParts
from safcm.master.jobstore import JobStore
from safcm.master.keystore import KeyStore
from safcm.master.lifecycle import Lifecycles
from safcm.master.peers import Peers, user_id
from safcm.master.transport import DOMAIN_PUBLISH

log = logging.getLogger("safcm-master")

# Messages ZeroMQ may queue per subscriber before it drops (then re-publish
# helps). Each subscriber gets its own topic only, so this holds a few of one
# host's envelopes: a stalled subscriber costs little.
PUBLISH_HWM = 16
PUBLISH_RCVHWM = 8
# Seconds a key whose publish connection was cut for a subscription not its
# own is refused at the handshake there. libzmq keeps every subscription it
# reads (XPUB_MANUAL too) until the connection ends, and a SUB or XSUB
# re-sends all of its subscriptions on each reconnect: without this, a
# minion could refill that memory ten times a second. An honest minion never
# sends such a subscription.
PUBLISH_PENALTY = 60.0
# Keys remembered in that penalty box at most (the oldest go first).
MAX_PENALISED_KEYS = 10_000
# Largest message the publish socket receives, in bytes. libzmq applies the
# limit to the handshake's commands too, and a SUB's CURVE INITIATE is about
# 290 bytes (measured: 256 fails, 300 works): the publish socket allows that
# much, and on_xpub() refuses anything but the minion's own topic.
PUBLISH_MAX_IN = 300


# Bytes of a topic (Topics). Fixed, so no topic is a prefix of another and
# ZeroMQ's prefix matching is exact; 2**32 minions a master's lifetime.
TOPIC_BYTES = 4


class Topics:
    """The publish topic of each minion: numbers in the order they first
    subscribe since this master started. libzmq walks its whole subscription
    trie for every publish connection that ends, so the trie's size is paid
    once per disconnecting minion: for half of a fleet reconnecting, its
    square. Numbers in sequence share their leading bytes and make the
    smallest trie: with 1,000 subscribers, half of them gone cost the
    socket's thread about 25 ms of CPU, against 1.3 s for 16 random bytes a
    minion (bench/xpubterm.py). The minion never needs to know its number:
    it subscribes to everything, and the master applies the number."""

    def __init__(self) -> None:
        self.by_id: dict[str, bytes] = {}

    def of(self, minion_id: str) -> bytes | None:
        """The topic `minion_id` is published under; None before it subscribes."""
        return self.by_id.get(minion_id)

    def give(self, minion_id: str) -> bytes:
        """The topic of `minion_id`, given now if it has none (the next number)."""
        topic = self.by_id.get(minion_id)
        if topic is None:
            topic = (len(self.by_id) + 1).to_bytes(TOPIC_BYTES, "big")
            self.by_id[minion_id] = topic
        return topic


# Seconds of sealing and sending in one go: envelopes due together (a job's
# start, a re-publish round) go out in slices of about this long, so the loop
# reads heartbeats, receipts and results between them.
PUBLISH_SLICE = 0.01


def seal_job(
    keys: KeyPair,
    packed: bytes,
    *,
    jid: str,
    host: str,
    recipient_keys: PublicKeys,
    now: float,
    timeout: float,
) -> bytes:
    """The envelope of a JOB (its body packed by pack_body()) for one host:
    readable by that host alone, and valid until the job's deadline plus
    ENVELOPE_SLACK."""
    return seal_packed_at(
        MsgType.JOB,
        packed,
        jid=jid,
        sender=MASTER_ID,
        sender_keys=keys,
        recipient=host,
        recipient_keys=recipient_keys,
        now=now,
        ttl=math.ceil(timeout) + ENVELOPE_SLACK,
    )


def _pack_job(body: dict[str, Any]) -> bytes:
    return pack_body(MsgType.JOB, body)


class Publisher:
    def __init__(
        self,
        keys: KeyPair,
        peers: Peers,
        keystore: KeyStore,
        jobs: JobStore,
        lifecycle: Lifecycles,
        clock: Callable[[], float],
        unsendable: Callable[[str, str, str], None],
    ) -> None:
        """`unsendable(jid, host, reason)` is called when the envelope of
        (jid, host) cannot be sealed: the host must then be answered with
        the reason, not left waiting for an envelope that never comes."""
        self.keys = keys
        self.peers = peers
        self.keystore = keystore
        self.jobs = jobs
        self.lifecycle = lifecycle
        # Set where masters share the database (master/cluster.py): work
        # passed to and from the other masters.
        self.relay: Relay | None = None
        self.clock = clock
        self.unsendable = unsendable
        self.peer_log: PeerLog = peers.peer_log
        self.xpub: zmq.Socket | None = None
        self.penalised: dict[bytes, float] = {}  # transport key -> refused on publish until
        self.topics = Topics()
        # What the envelopes of open jobs are sealed from, by jid: put here by
        # master/runs.py when a job starts, dropped when it finishes.
        self.open_jobs: dict[str, JobParts] = {}
        # Envelopes and bytes published per open job (logged when it finishes).
        self.sent: dict[str, tuple[int, int]] = {}
        # (jid, host) due to be published, in order, each once (PUBLISH_SLICE).
        self.due: dict[tuple[str, str], None] = {}
        self.draining = False

    def open(self, address: str, cap: int, curve_secret: bytes) -> None:
        # Subscriptions waiting to be read, per connection (RCVHWM): an honest
        # minion sends one; a flood stays in its own TCP buffers, not in our memory.
        self.xpub = xpub = self.peers.bind(
            zmq.XPUB,
            address,
            PUBLISH_MAX_IN,
            cap,
            DOMAIN_PUBLISH,
            curve_secret,
            {zmq.SNDHWM: PUBLISH_HWM, zmq.RCVHWM: PUBLISH_RCVHWM},
        )
        # Subscriptions are ours to apply (XPUB_MANUAL), each one reported (VERBOSE).
        xpub.setsockopt(zmq.XPUB_MANUAL, 1)
        xpub.setsockopt(zmq.XPUB_VERBOSE, 1)
        # A send to a subscriber whose queue is full fails (EAGAIN) rather
        # than dropping the envelope unseen: the lifecycle then tries again
        # soon, and need not re-publish on a timer what is on its way.
        xpub.setsockopt(zmq.XPUB_NODROP, 1)
        self.peers.loop.add_reader(xpub, self.on_xpub)

    def close(self) -> None:
        if self.xpub is not None:
            self.peers.loop.remove_reader(self.xpub)
            self.xpub.close(0)

    def refused(self, curve_key: bytes) -> bool:
        """Whether the publish socket refuses this transport key for now (PUBLISH_PENALTY)."""
        return self.penalised.get(curve_key, 0.0) > self.peers.loop.clock()

    def publish(self, jid: str, host: str) -> None:
        """Publish the envelope of (jid, host) soon: sealed and sent in slices
        of PUBLISH_SLICE, in the order asked."""
        self.due[(jid, host)] = None
        if not self.draining:
            self.draining = True
            self.peers.loop.call_later(0, self._drain)

    def _drain(self) -> None:
        loop = self.peers.loop
        until = loop.clock() + PUBLISH_SLICE
        while self.due and loop.clock() < until:
            jid, host = next(iter(self.due))
            del self.due[(jid, host)]
            try:
                self._send(jid, host)
            except ProtocolError as e:
                # Checked when the job was submitted; still possible for a
                # job an older master stored, or after the clock stepped
                # back. It would fail again at every re-publish.
                log.error("job %s: the envelope of %s cannot be sealed: %s", jid, host, e)
                self.unsendable(jid, host, f"the master cannot seal this host's envelope: {e}")
        if self.due:
            loop.call_later(0, self._drain)
        else:
            self.draining = False

    def _send(self, jid: str, host: str) -> None:
        topic = self.topics.of(host)
        if topic is None:  # not subscribed since we started: sent once it does
            return
        envelope = self._envelope(jid, host)
        if envelope is None:  # received meanwhile
            return
        try:
            _opened(self.xpub).send_multipart([topic, envelope], zmq.NOBLOCK)
        except zmq.Again:  # its subscriber's queue is full (XPUB_NODROP): soon again
            self.lifecycle.queue_full(jid, host, self.clock())
            return
        count, size = self.sent.get(jid, (0, 0))
        self.sent[jid] = (count + 1, size + len(envelope))

    def forget(self, jid: str) -> tuple[int, int]:
        """The job is finished: nothing of it is published again. Returns the
        envelopes and bytes it published."""
        self.open_jobs.pop(jid, None)
        for key in [k for k in self.due if k[0] == jid]:
            del self.due[key]
        return self.sent.pop(jid, (0, 0))

    def _envelope(self, jid: str, host: str) -> bytes | None:
        parts = self.open_jobs.get(jid)
        if parts is None:  # after a restart
            parts = self.jobs.parts(jid)
            if parts is None:  # a job stored before migration 4, sealed then
                return self.jobs.envelope(jid, host)
            self.open_jobs[jid] = parts
        if host not in parts.hosts:
            return None
        recipient_keys = self.peers.minion_keys(host)
        if recipient_keys is None:  # its key was deleted or replaced meanwhile
            return None
        now = self.clock()
        return seal_job(
            self.keys,
            parts.packed_body(host, _pack_job),
            jid=jid,
            host=host,
            recipient_keys=recipient_keys,
            now=now,
            timeout=max(0.0, parts.deadline - now),
        )

    def on_xpub(self) -> None:
        """Subscriptions: for the one a minion sends, from an accepted key, that
        key's minion's topic is applied to the connection that sent it
        (XPUB_MANUAL applies a SUBSCRIBE to the connection of the last
        message read)."""
        xpub = _opened(self.xpub)
        # A fleet reconnecting at once (a master restart) is read in slices;
        # the rest waits for the next turn (the poller reports it again).
        until = self.peers.loop.clock() + PUBLISH_SLICE
        while self.peers.loop.clock() < until:
            try:
                frame = xpub.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            event = frame.bytes
            if event[:1] != b"\x01":
                continue  # an unsubscription; libzmq drops a closed connection's own
            key = self.keystore.accepted_by_curve(bytes.fromhex(user_id(frame)))
            if self.peers.noted(DOMAIN_PUBLISH, frame, known=key is not None) is None:
                continue
            if key is None or event[1:] != SUBSCRIPTION:
                # libzmq keeps every subscription it hands us (XPUB_MANUAL), applied
                # or not: a connection that sends one an honest minion never would
                # is cut, so junk subscriptions cannot pile up in its memory.
                who = "a key no longer accepted" if key is None else key.id
                self.peer_log.warning(
                    "refused a subscription of %s to a topic of its choosing (a minion "
                    "subscribes to everything and the master picks its topic); "
                    "closing that connection",
                    who,
                )
                self.peers.cut_fd(
                    DOMAIN_PUBLISH, frame.get(zmq.SRCFD), "a subscription of its choosing"
                )
                self._penalise(bytes.fromhex(user_id(frame)))
                continue
            xpub.setsockopt(zmq.SUBSCRIBE, self.topics.give(key.id))
            self.peer_log.log(logging.DEBUG, "subscription of %s applied", key.id)
            self.lifecycle.subscribed(key.id, self.clock())
            if self.relay is not None:  # the cluster's other masters publish through us
                self.relay.subscribed(key.id)

    def _penalise(self, curve_key: bytes) -> None:
        self.penalised.pop(curve_key, None)
        self.penalised[curve_key] = self.peers.loop.clock() + PUBLISH_PENALTY
        while len(self.penalised) > MAX_PENALISED_KEYS:
            del self.penalised[next(iter(self.penalised))]


def _opened(sock: zmq.Socket | None) -> zmq.Socket:
    """The publish socket; RuntimeError before Publisher.open()."""
    if sock is None:
        raise RuntimeError("the publish socket is used before it is opened")
    return sock
