"""The light base of the wire (common/wire.py): it agrees with the full
protocol, and the CLI's reply decoder refuses what is not a reply."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from safcm.common import codec, protocol, wire
from safcm.common.errors import ProtocolError
from safcm.common.protocol import SPECS, Channel, MsgType

REQUESTS = {MsgType.RUN, MsgType.KEYS, MsgType.JOBS}


def test_the_cli_reads_exactly_the_control_messages_the_master_sends():
    control = {t for t, spec in SPECS.items() if spec.channel is Channel.CONTROL}
    assert control - REQUESTS == wire.CONTROL_REPLIES


def test_protocol_re_exports_the_light_base():
    for name in ("MsgType", "FrameReader", "encode_frame", "PROTOCOL_VERSION", "NO_RESPONSE"):
        assert getattr(protocol, name) is getattr(wire, name)


def test_a_reply_encoded_by_the_master_decodes_as_the_cli_reads_it():
    body = {"jobs": []}
    reply = wire.decode_reply(protocol.encode_plain(MsgType.JOBS_REPLY, body))
    assert (reply.type, reply.body, reply.version) == (MsgType.JOBS_REPLY, body, 1)


def test_a_request_packed_by_the_cli_decodes_on_the_master_side():
    body = {"action": "list", "ids": ["web*"]}
    msg = protocol.decode_plain(wire.pack_plain(MsgType.KEYS, body), Channel.CONTROL)
    assert (msg.type, msg.body) == (MsgType.KEYS, body)


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ([1, int(MsgType.KEYS), {"action": "list", "ids": []}], "KEYS is not a reply"),
        ([1, int(MsgType.HEARTBEAT), {}], "HEARTBEAT is not a reply"),
        ([1, int(MsgType.KEYS_REPLY), []], "KEYS_REPLY body: expected a map"),
        ([2, int(MsgType.KEYS_REPLY), {}], "protocol version 2 is not supported"),
        ([1, 999, {}], "unknown message type 999"),
        ([1, True, {}], "unknown message type True"),
        ([1, int(MsgType.ERROR)], "array of [version, type, body]"),
        ({"a": 1}, "array of [version, type, body]"),
    ],
)
def test_the_cli_refuses_what_is_not_a_reply(value, error):
    with pytest.raises(ProtocolError, match=error.replace("[", r"\[").replace("]", r"\]")):
        wire.decode_reply(codec.pack(value))


@given(st.binary(max_size=64))
def test_any_bytes_decode_to_a_reply_or_a_protocol_error(data):
    try:
        reply = wire.decode_reply(data)
    except ProtocolError:
        return
    assert reply.type in wire.CONTROL_REPLIES and type(reply.body) is dict


def test_frames_split_and_join():
    frames = [b"", b"a", b"x" * 1000]
    stream = b"".join(wire.encode_frame(f) for f in frames)
    reader = wire.FrameReader(max_bytes=1000)
    out = []
    for i in range(len(stream)):
        out.extend(reader.feed(stream[i : i + 1]))
    reader.eof()
    assert out == frames
    with pytest.raises(ProtocolError, match="exceeds 1000"):
        wire.FrameReader(max_bytes=1000).feed(wire.encode_frame(b"x" * 1001))
