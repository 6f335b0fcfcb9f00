"""Keys: the key port, where a minion first asks for the master's keys, and
the KEYS control request (list, accept, reject, delete minion keys).

    STREAM  key_port, plain. A minion's first contact: KEY_REQUEST for the
            master's public keys (with the CURVE key), signed, which the
            minion checks against master_fingerprint before it connects.
            The minion's DEALER speaks ZMTP; the master reads it itself
            (master/zmtpnull.py), for libzmq bounds no multipart message.

The keys themselves are kept by master/keystore.py; a key that stops being
accepted loses its connections, and nothing more is published to it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import zmq

from safcm.common.crypto import KeyPair
from safcm.common.errors import ProtocolError
from safcm.common.protocol import (
    MAX_KEY_PORT_BYTES,
    Channel,
    Message,
    MsgType,
    decode_plain,
    encode_plain,
    make_key_reply,
)
from safcm.common.ratelimit import Bucket, Buckets, PeerLog
from safcm.master.cluster import held_elsewhere
from safcm.master.control import ControlConnection
from safcm.master.keystore import Action, KeyState, KeyStore, MinionKey
from safcm.master.lifecycle import Lifecycles
from safcm.master.peers import Peers
from safcm.master.transport import DOMAIN_KEY
from safcm.master.zmtpnull import HELLO, NullConnection, ZmtpError, frame

log = logging.getLogger("safcm-master")

T = TypeVar("T")

# Largest message the key port receives, in bytes: a key request.
KEY_MAX_IN = MAX_KEY_PORT_BYTES
# Key requests on the key port, per second and burst, for everyone together:
# each costs a signature (about 50 us), and a minion asks before each
# connection, so a restarted master hears from its whole fleet at once.
KEY_REQUEST_RATE = 1000.0
KEY_REQUEST_BURST = 2000.0
# Key requests one connection may make, per second and burst, before the
# global budget above is asked: a minion opens a connection for each ask
# and asks once, so this covers a retry. A flood from a few connections is
# then dropped at its own share, for the cost of a read, and never spends
# what the fleet needs (an audit's 8 connections at 4,000 requests a second
# emptied the global budget in 0.65 s, and minions' requests were dropped).
# Only a peer holding about KEY_REQUEST_RATE / KEY_REQUEST_CONN_RATE
# connections at once, within the port's connection cap, can still take it.
KEY_REQUEST_CONN_RATE = 1.0
KEY_REQUEST_CONN_BURST = 3.0
# Messages queued per connection of the key port, each way: a minion sends
# one request and reads one reply. A flooding connection's queue fills, and
# libzmq, which reads its connections in turn, stops reading that one until
# we have read what it queued.
KEY_HWM = 4
# Seconds of answering key requests in one go: a fleet that reconnects at
# once (or a stranger's flood) is answered in slices of about this long, so
# the loop reads heartbeats and results between them. A burst of signatures
# took 121 ms in one callback with the cores busy (bench/fanout.py).
KEY_SLICE = 0.01


class KeyService:
    def __init__(
        self,
        keys: KeyPair,
        peers: Peers,
        keystore: KeyStore,
        lifecycle: Lifecycles,
        clock: Callable[[], float],
        publish_port: int,
    ) -> None:
        self.keys = keys
        self.publish_port = publish_port
        self.peers = peers
        self.loop = peers.loop
        self.keystore = keystore
        self.lifecycle = lifecycle
        self.clock = clock
        self.peer_log: PeerLog = peers.peer_log
        self.key_requests = Bucket(KEY_REQUEST_RATE, KEY_REQUEST_BURST, self.loop.clock())
        # Per connection, made by open(): it knows the connection cap.
        self.connection_requests: Buckets | None = None
        self.key_sock: zmq.Socket | None = None
        # The ZMTP read so far of each connection, by its routing id: at most
        # one frame each, for the connections the port holds.
        self.wires: dict[bytes, NullConnection] = {}
        # True when other masters share the key store (PostgreSQL): then
        # last-seen times are read fresh for `keys list`.
        self.shared = False

    def open(self, address: str, cap: int) -> None:
        # A bucket for each connection the port may hold, and as many again
        # for those cut but not closed yet: connections beyond are cut at once.
        self.connection_requests = Buckets(KEY_REQUEST_CONN_RATE, KEY_REQUEST_CONN_BURST, 2 * cap)
        # ZMQ_STREAM: libzmq hands over each read as it comes, and the
        # ZMTP is read here (master/zmtpnull.py says why).
        self.key_sock = self.peers.bind(
            zmq.STREAM,
            address,
            KEY_MAX_IN,
            cap,
            DOMAIN_KEY,
            None,
            {zmq.RCVHWM: KEY_HWM, zmq.SNDHWM: KEY_HWM},
        )
        self.loop.add_reader(self.key_sock, self.on_key_request)

    def close(self) -> None:
        if self.key_sock is not None:
            self.loop.remove_reader(self.key_sock)
            self.key_sock.close(0)

    def on_key_request(self) -> None:
        key_sock = _opened(self.key_sock)
        until = self.loop.clock() + KEY_SLICE
        while True:
            try:
                peer, data = key_sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._read(key_sock, peer.bytes, data)
            if self.loop.clock() >= until:
                return  # the rest next turn: the poller reports the socket again

    def _read(self, key_sock: zmq.Socket, peer: bytes, data: zmq.Frame) -> None:
        """What came from connection `peer`: bytes of its ZMTP, or (empty) the
        news that it opened or closed."""
        conn = self.wires.get(peer)
        if not data.bytes:
            if conn is not None:  # closed
                del self.wires[peer]
            else:  # opened: the master's greeting and READY first
                self.wires[peer] = NullConnection(KEY_MAX_IN)
                with contextlib.suppress(zmq.Again):
                    key_sock.send_multipart([peer, HELLO], zmq.NOBLOCK)
            return
        if conn is None:
            return  # of a connection ended already
        try:
            requests = conn.feed(data.bytes)
        except ZmtpError as e:
            self.peer_log.warning("key port: a connection ended: %s", e)
            del self.wires[peer]
            with contextlib.suppress(zmq.Again):
                key_sock.send_multipart([peer, b""], zmq.NOBLOCK)  # closes it
            return
        for request in requests:
            self._answer(key_sock, peer, data.get(zmq.SRCFD), request)

    def _answer(self, key_sock: zmq.Socket, peer: bytes, fd: int, request: bytes) -> None:
        now = self.loop.clock()
        # A connection that asked is no longer a silent one (what the cap evicts).
        self.peers.tables[DOMAIN_KEY].active(fd, "key port", False, now)
        # The connection: its descriptor, which the kernel gives, with its
        # routing id, which a reused descriptor does not keep.
        connection = (fd, peer)
        if not _opened(self.connection_requests).take(connection, now):
            self.peer_log.warning(
                "key request dropped: a connection asks more than %g a second",
                KEY_REQUEST_CONN_RATE,
            )
            return
        if not self.key_requests.take(now):
            self.peer_log.warning("key request dropped: more than %d a second", KEY_REQUEST_RATE)
            return
        try:
            msg = decode_plain(request, Channel.KEY)
            if msg.type is not MsgType.KEY_REQUEST:
                raise ProtocolError(f"{msg.type.name} is not a request")
        except ProtocolError as e:
            self.peer_log.warning("dropped a message on the key port: %s", e)
            return
        reply = encode_plain(
            MsgType.KEY_REPLY, make_key_reply(self.keys, nonce=msg.body["nonce"], now=self.clock())
        )
        with contextlib.suppress(zmq.Again):
            key_sock.send_multipart([peer, frame(reply)], zmq.NOBLOCK)

    def on_keys(self, conn: ControlConnection, msg: Message) -> None:
        action, ids = msg.body["action"], msg.body["ids"]
        now = self.clock()
        left: list[MinionKey] = []  # matched by a pattern, decided otherwise: not changed
        if action == "list":
            if self.shared:  # another master may have heard a minion later
                self.keystore.refresh_seen()
            keys = [k for k in self.keystore.all() if not ids or k.id in ids]
        elif action == "delete":
            left = self.keystore.left_by_patterns(ids, Action.DELETE)
            keys = self.keystore.delete(ids)
            for k in keys:
                self._forget(k)
                log.info("key of %s deleted by %s", k.id, conn.user)
        else:
            state = KeyState.ACCEPTED if action == "accept" else KeyState.REJECTED
            matched = set(self.keystore.match(ids))
            before = [k for k in self.keystore.all() if k.id in matched]
            fingerprint = msg.body.get("fingerprint")
            if fingerprint is None:  # with one, the one key matched is decided
                left = self.keystore.left_by_patterns(ids, Action(action))
            keys = self.keystore.set_state(ids, state, now=now, fingerprint=fingerprint)
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
                "publish_port": self.publish_port,
                "keys": [self._key_row(k) for k in keys],
                "left": [{"id": k.id, "state": str(k.state)} for k in left],
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
        connected = key.state is KeyState.ACCEPTED and (
            self.peers.connected(key.id) or (self.shared and held_elsewhere(key, self.clock()))
        )
        return {
            "id": key.id,
            "state": str(key.state),
            "fingerprint": key.fingerprint,
            "connected": connected,
            # Known here only: another master of a cluster holds its own subscriptions.
            "not_subscribed": key.state is KeyState.ACCEPTED and self.peers.deaf(key.id),
            "last_seen": key.last_seen,
        }

    def changed_elsewhere(self, old: MinionKey | None, new: MinionKey | None) -> None:
        """Another master of the cluster changed a key (master/keystore.py
        reload()): what holds there holds here."""
        if old is not None and old.state is KeyState.ACCEPTED and not _same_accepted(old, new):
            self._forget(old)
        if new is None:
            if old is not None:
                log.info("key of %s deleted on another master", old.id)
        elif old is None or old.state is not new.state:
            log.info("key of %s %s on another master (%s)", new.id, new.state, new.fingerprint)

    def _forget(self, key: MinionKey) -> None:
        """A key stopped being accepted: drop what was kept for it, cut its
        connections, and publish nothing more to it."""
        self.peers.forget(key)
        self.lifecycle.forget_host(key.id)


def _same_accepted(old: MinionKey, new: MinionKey | None) -> bool:
    """True if `new` is `old`'s key, still accepted."""
    return new is not None and new.state is KeyState.ACCEPTED and new.public == old.public


def _opened(made: T | None) -> T:
    """What KeyService.open() makes (the socket, the buckets); RuntimeError before."""
    if made is None:
        raise RuntimeError("the key port is used before it is opened")
    return made
