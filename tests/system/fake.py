"""A scriptable minion for attack tests: real keys, real sockets, real envelopes,
but every step is the test's choice, so it can send what no honest minion would."""

from __future__ import annotations

import os
import time

import zmq

from common import codec
from common.crypto import KeyPair, PublicKeys
from common.protocol import (
    ENROL_NONCE_LENGTH,
    MASTER_ID,
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
    topic_for,
    verify_enrol_reply,
)
from master.sandbox import Sandbox

# Milliseconds a fake waits for one reply.
RECV_TIMEOUT_MS = 5000


class FakeMinion:
    def __init__(self, sb: Sandbox, minion_id: str, keys: KeyPair | None = None) -> None:
        self.id = minion_id
        self.keys = keys or KeyPair.generate()
        self.ctx = zmq.Context.instance()
        settings = sb.master.settings
        self.dealer = self.ctx.socket(zmq.DEALER)
        self.dealer.setsockopt(zmq.LINGER, 0)
        self.dealer.connect(f"tcp://127.0.0.1:{settings['return_port']}")
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.SUBSCRIBE, topic_for(minion_id))
        self.sub.connect(f"tcp://127.0.0.1:{settings['publish_port']}")
        self.master_keys: PublicKeys | None = None
        self.last_id: str | None = None

    def close(self) -> None:
        self.dealer.close(0)
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
        self.master_keys = verify_enrol_reply(reply, minion_id=self.id, nonce=nonce, pinned=None)
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

    def heartbeat(self) -> None:
        self.send_raw(
            self.seal(
                MsgType.HEARTBEAT, {"version": "fake", "uptime": 1.0, "busy": None, "interval": 5.0}
            )
        )

    # receiving

    def recv_frame(self, timeout_ms: int = RECV_TIMEOUT_MS) -> bytes:
        if not self.dealer.poll(timeout_ms):
            raise TimeoutError(f"{self.id}: no reply from the master")
        [frame] = self.dealer.recv_multipart()
        return frame

    def recv_sealed(self, timeout_ms: int = RECV_TIMEOUT_MS) -> Message:
        frame = self.recv_frame(timeout_ms)
        assert is_sealed(frame)
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
        if not self.sub.poll(timeout_ms):
            raise TimeoutError(f"{self.id}: no job published")
        _topic, frame = self.sub.recv_multipart()
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
