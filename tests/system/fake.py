"""A scriptable minion for attack tests: real keys, real sockets (CURVE, as a
minion speaks it), real envelopes and curve messages, but every step is the
test's choice, so it can send what no honest minion would."""

from __future__ import annotations

import os
import time

import zmq

from safcm.common import codec
from safcm.common.crypto import KeyPair, PublicKeys
from safcm.common.protocol import (
    ENROL_NONCE_LENGTH,
    MASTER_ID,
    MAX_SEQUENCE,
    SUBSCRIPTION,
    Channel,
    Message,
    MsgType,
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
from safcm.common.wire import pack_plain
from safcm.master.sandbox import Sandbox

# Milliseconds a fake waits for one reply.
RECV_TIMEOUT_MS = 5000


def master_keys(sb: Sandbox) -> PublicKeys:
    """The master's public keys, asked from its key port as a new minion does."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://127.0.0.1:{sb.master.settings['key_port']}")
    try:
        nonce = os.urandom(ENROL_NONCE_LENGTH)
        sock.send(encode_plain(MsgType.KEY_REQUEST, {"nonce": nonce}))
        if not sock.poll(RECV_TIMEOUT_MS):
            raise TimeoutError("no answer from the key port")
        reply = decode_plain(sock.recv(), Channel.KEY)
        return verify_key_reply(reply, nonce=nonce, pinned=sb.master_fingerprint())
    finally:
        sock.close(0)


def curve_socket(kind: int, master: PublicKeys, keys: KeyPair | None, address: str) -> zmq.Socket:
    """A socket of `kind` connected with CURVE under `keys` (fresh ones if None)."""
    keys = keys or KeyPair.generate()
    sock = zmq.Context.instance().socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.CURVE_SERVERKEY, master.curve)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public.curve)
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.curve_secret().reveal())
    if address is not None:
        sock.connect(address)
    return sock


class FakeMinion:
    def __init__(self, sb: Sandbox, minion_id: str, keys: KeyPair | None = None) -> None:
        self.id = minion_id
        self.keys = keys or KeyPair.generate()
        self.sb = sb
        self.master_keys = master_keys(sb)
        self.dealer = curve_socket(zmq.DEALER, self.master_keys, self.keys, self.address("return"))
        self.sub: zmq.Socket | None = None
        self.last_id: str | None = None
        self.seq = 0

    def address(self, which: str) -> str:
        return f"tcp://127.0.0.1:{self.sb.master.settings[which + '_port']}"

    def subscribe(self, topic: bytes = SUBSCRIPTION) -> zmq.Socket:
        """Connect the SUB socket (as an accepted minion does) and subscribe to
        `topic` (what a minion subscribes to by default)."""
        if self.sub is None:
            self.sub = curve_socket(zmq.SUB, self.master_keys, self.keys, self.address("publish"))
        self.sub.setsockopt(zmq.SUBSCRIBE, topic)
        return self.sub

    def close(self) -> None:
        self.dealer.close(0)
        if self.sub is not None:
            self.sub.close(0)

    # sending

    def send_raw(self, *frames: bytes) -> None:
        self.dealer.send_multipart(list(frames))

    def enrol(self) -> str:
        """Send an enrol request; returns the state the master answers."""
        nonce = os.urandom(ENROL_NONCE_LENGTH)
        body = make_enrol_request(self.id, self.keys, nonce=nonce, now=time.time())
        self.send_raw(encode_plain(MsgType.ENROL_REQUEST, body))
        reply = decode_plain(self.recv_frame(), Channel.NETWORK)
        verify_enrol_reply(
            reply, minion_id=self.id, nonce=nonce, pinned=self.master_keys.fingerprint()
        )
        return reply.body["state"]

    def seal(
        self,
        msg_type: MsgType,
        body: dict,
        *,
        jid: str | None = None,
        sender: str | None = None,
        keys: KeyPair | None = None,
    ) -> bytes:
        now = time.time()
        if jid is None:
            jid = self.last_id = new_jid(now, self.last_id)
        return seal_message_at(
            msg_type,
            body,
            jid=jid,
            sender=sender or self.id,
            sender_keys=keys or self.keys,
            recipient=MASTER_ID,
            recipient_keys=self.master_keys,
            now=now,
            ttl=60,
        )

    def send_plain(self, msg_type: MsgType, body: dict) -> bytes:
        """Send a plain message (a curve message, on this CURVE connection); returns its frame."""
        frame = encode_plain(msg_type, body)
        self.send_raw(frame)
        return frame

    def heartbeat(self, **fields: object) -> bytes:
        """Send a heartbeat with the next sequence number, and any `fields`
        in its body instead, unchecked (a test may send an invalid one);
        returns its frame."""
        self.seq = min(self.seq + 1, MAX_SEQUENCE)
        # The test minions' interval, below HEARTBEAT_REPLY_SLACK: each is answered.
        body = {"version": "fake", "uptime": 1.0, "busy": None, "interval": 0.2, "seq": self.seq}
        frame = pack_plain(MsgType.HEARTBEAT, {**body, **fields})
        self.send_raw(frame)
        return frame

    # receiving

    def recv_frame(self, timeout_ms: int = RECV_TIMEOUT_MS) -> bytes:
        if not self.dealer.poll(timeout_ms):
            raise TimeoutError(f"{self.id}: no reply from the master")
        [frame] = self.dealer.recv_multipart()
        return frame

    def recv(self, timeout_ms: int = RECV_TIMEOUT_MS) -> Message:
        """The master's next message on the return connection: a curve
        message (decoded as the master's, as a minion does) or an envelope."""
        frame = self.recv_frame(timeout_ms)
        if not is_sealed(frame):
            return decode_plain(frame, Channel.NETWORK, peer=MASTER_ID)
        return open_message_at(
            frame,
            me=self.id,
            my_keys=self.keys,
            sender_keys={MASTER_ID: self.master_keys}.get,
            now=time.time(),
        )

    def silent(self, timeout_ms: int = 1000) -> bool:
        """True if the master sends us nothing within the timeout."""
        return not self.dealer.poll(timeout_ms)

    def recv_job(self, timeout_ms: int = RECV_TIMEOUT_MS) -> tuple[bytes, Message]:
        """The next job published for us: the raw envelope and the opened message."""
        sub = self.subscribe() if self.sub is None else self.sub
        if not sub.poll(timeout_ms):
            raise TimeoutError(f"{self.id}: no job published")
        _topic, frame = sub.recv_multipart()
        msg = open_message_at(
            frame,
            me=self.id,
            my_keys=self.keys,
            sender_keys={MASTER_ID: self.master_keys}.get,
            now=time.time(),
        )
        return frame, msg


def ping_result(now: float) -> dict:
    return {
        "module": "ping",
        "status": "ok",
        "started": now,
        "finished": now,
        "apply": None,
        "ping": {"version": "fake", "time": now},
        "error": None,
    }


def pack(obj: object) -> bytes:
    return codec.pack(obj)
