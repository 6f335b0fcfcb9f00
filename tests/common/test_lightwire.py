"""The light commands' wire (common/lightwire.py) is the wire: the same type
codes, msgpack byte for byte as msgpack writes it, and a decoder that gives
the same answer as codec.unpack() for any bytes."""

from __future__ import annotations

import math

import msgpack
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from safcm.common import codec, lightwire, wire
from safcm.common.errors import ProtocolError
from safcm.common.protocol import Channel, MsgType, decode_plain, encode_plain

DEPTH = lightwire.MAX_BODY_DEPTH + 1


def test_the_light_type_codes_are_the_wires():
    for name in ("KEYS", "JOBS", "KEYS_REPLY", "JOBS_REPLY", "ERROR"):
        assert getattr(lightwire, name) == MsgType[name], name


def test_wire_and_codec_re_export_the_light_definitions():
    for name in ("PROTOCOL_VERSION", "MAX_CONTROL_FRAME_BYTES", "FrameReader", "NO_RESPONSE"):
        assert getattr(wire, name) is getattr(lightwire, name)
    assert codec.MAX_MAP_ENTRIES == lightwire.MAX_MAP_ENTRIES


scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=300)
    | st.binary(max_size=300)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=20) | st.dictionaries(st.text(max_size=20), inner, max_size=20)
    ),
    max_leaves=60,
)


def same(a, b) -> bool:
    """Equal values, NaN equal to NaN (msgpack's bytes say it)."""
    return msgpack.packb(a) == msgpack.packb(b)


@given(values)
@example([1, 102, {"action": "list", "ids": ["web*"] * 300}])
@example({"n": [2**7, 2**8, 2**16, 2**32, -33, -129, -(2**15) - 1, -(2**31) - 1]})
@example(["y" * 200, b"z" * 200, "\u00e9" * 100, b"w" * 300, {str(i): i for i in range(20)}])
@example("x" * 70000)
@example(list(range(70000)))
def test_pack_writes_what_msgpack_writes(value):
    assert lightwire.pack(value) == msgpack.packb(value)


@given(values)
def test_unpack_reads_what_msgpack_wrote(value):
    data = msgpack.packb(value)
    assert same(lightwire.unpack(data, max_depth=DEPTH), value)


def outcome(decode, data):
    try:
        return "ok", decode(data, max_depth=DEPTH)
    except ProtocolError:
        return "refused", None


def agree(data: bytes) -> None:
    light, full = outcome(lightwire.unpack, data), outcome(codec.unpack, data)
    assert light[0] == full[0], (data[:80], light, full)
    assert same(light[1], full[1])


@given(st.binary(max_size=200))
@example(b"\xc1")  # never used by msgpack
@example(b"\xd4\x01\x00")  # fixext
@example(b"\x92\x01")  # truncated
@example(b"\x01\x02")  # trailing bytes
@example(b"\xa2\xff\xfe")  # a str that is not UTF-8
@example(b"\x81\x01\x02")  # an int map key
@example(b"\xdc\xff\xff")  # claims 65535 items, has none
@example(b"\x91" * (DEPTH + 1) + b"\xc0")  # too deep
@example(b"\x91" * DEPTH + b"\xc0")  # just deep enough
@example(b"\xca\x7f\xc0\x00\x00")  # float32 NaN
def test_any_bytes_decode_as_the_codec_decodes_them(data):
    agree(data)


@given(values, st.data())
def test_damaged_messages_decode_as_the_codec_decodes_them(value, data):
    """Valid messages with one byte changed, cut short or extended: the
    headers and lengths inside are where a hand-written decoder errs."""
    raw = bytearray(msgpack.packb(value))
    if raw:
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    agree(bytes(raw[:cut]) + data.draw(st.binary(max_size=3)))


@pytest.mark.parametrize(
    "value",
    [
        {str(i): i for i in range(lightwire.MAX_MAP_ENTRIES + 1)},  # one entry too many
        [0] * (lightwire.MAX_LIST_ITEMS + 1),  # one item too many
        {b"k": 1},  # a bytes key: msgpack's strict_map_key allows it
    ],
)
def test_the_limits_are_the_codecs(value):
    agree(msgpack.packb(value))


def test_pack_refuses_what_msgpack_cannot_write():
    for value in (2**64, -(2**63) - 1, "\udcff", object()):
        with pytest.raises(ProtocolError):
            lightwire.pack(value)


def test_a_request_packed_light_is_what_the_daemon_decodes():
    body = {"action": "list", "host": None, "target": None, "limit": 20, "jid": None}
    body["since"] = 1.5e9
    frames = lightwire.FrameReader().feed(lightwire.pack_request(lightwire.JOBS, body))
    msg = decode_plain(frames[0], Channel.CONTROL)
    assert (msg.type, msg.body) == (MsgType.JOBS, body)


def test_a_reply_encoded_by_the_master_unpacks():
    body = {"jobs": [], "x": math.pi}
    frame = encode_plain(MsgType.JOBS_REPLY, {"jobs": []})
    assert lightwire.unpack_reply(frame) == (lightwire.JOBS_REPLY, {"jobs": []})
    assert lightwire.unpack(msgpack.packb(body), max_depth=DEPTH) == body


@pytest.mark.parametrize(
    "value",
    [
        [2, lightwire.KEYS_REPLY, {}],  # a version this side does not speak
        [True, lightwire.KEYS_REPLY, {}],
        [1, "KEYS_REPLY", {}],
        [1, lightwire.KEYS_REPLY, []],
        [1, lightwire.KEYS_REPLY],
        {"a": 1},
    ],
)
def test_unpack_reply_refuses_what_is_not_a_reply(value):
    with pytest.raises(ProtocolError):
        lightwire.unpack_reply(msgpack.packb(value))
