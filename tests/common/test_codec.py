"""Strict msgpack: only ProtocolError for bad bytes, bounded memory, no ext types."""

import contextlib
import math
import struct
import tracemalloc

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from safcm.common import codec
from safcm.common.errors import ProtocolError
from tests.common.strategies import fuzz

DEPTH = 9

VALUES = [
    None,
    True,
    0,
    -1,
    2**63 - 1,
    -(2**63),
    1.5,
    "",
    "é" * 300,
    b"",
    b"\x00" * 70000,
    [],
    list(range(20)),
    {"a": 1, "b": [1, {"c": b"x"}]},
    {f"k{i}": i for i in range(20)},
]


@pytest.mark.parametrize("value", VALUES)
def test_round_trip(value):
    assert codec.unpack(codec.pack(value), max_depth=DEPTH) == value


BAD = [
    (b"", "truncated"),
    (b"\x92\x01", "claims 2 items but only 1 bytes"),
    (b"\x92\xa3ab", "truncated"),
    (b"\xda\x00\x05ab", "truncated"),
    (b"\x01\x02", "unexpected bytes"),
    (b"\xc1", "invalid msgpack byte 0xc1"),
    (b"\xd6\xff\x00\x00\x00\x01", "ext type"),  # a timestamp
    (b"\xc7\x01\x05x", "ext type"),
    (b"\xd4\x01\x00", "ext type"),
    (b"\x91" * 10 + b"\x01", "deeper than 9"),
    (b"\xdd\xff\xff\xff\xff", "claims 4294967295 items"),
    (b"\xdf\x00\x00\x00\x10\x01", "claims 32 items"),
    (b"\x81\x01\x02", "not valid msgpack"),  # an int map key
    (b"\x81\x91\x01\x02", "not valid msgpack"),  # a list as map key
    (b"\xa1\xff", "not valid msgpack"),  # not UTF-8
    (b"\xa2\xed\xa0", "not valid msgpack"),  # a lone surrogate
]


@pytest.mark.parametrize(("data", "reason"), BAD)
def test_bad_bytes_raise_protocol_error_naming_the_reason(data, reason):
    with pytest.raises(ProtocolError, match=reason):
        codec.unpack(data, max_depth=DEPTH)


def test_too_many_map_entries_are_refused():
    data = codec.pack({f"k{i}": i for i in range(codec.MAX_MAP_ENTRIES + 1)})
    with pytest.raises(ProtocolError, match="not valid msgpack"):
        codec.unpack(data, max_depth=DEPTH)


def test_a_list_longer_than_the_limit_is_refused():
    data = (
        b"\xdd" + struct.pack(">I", codec.MAX_LIST_ITEMS + 1) + b"\xc0" * (codec.MAX_LIST_ITEMS + 1)
    )
    with pytest.raises(ProtocolError):
        codec.unpack(data, max_depth=DEPTH)


def test_nested_length_headers_do_not_make_msgpack_preallocate():
    # 3 KB of nested "array of 65535" headers: plain msgpack allocates ~80 MB.
    bomb = b"\xdc\xff\xff" * 1000
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError):
            codec.unpack(bomb, max_depth=DEPTH)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000


def test_deep_nesting_within_the_scan_limit_is_still_bounded():
    # Nested to the depth limit, each level claiming as many items as bytes remain.
    data = b"\xdc\xff\xff" * (DEPTH - 1) + b"\xc0" * 65535
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError):
            codec.unpack(data, max_depth=DEPTH)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < DEPTH * 65536 * 8 + 1_000_000


def test_very_deep_nesting_is_refused_without_recursion():
    with pytest.raises(ProtocolError, match="deeper"):
        codec.unpack(b"\x91" * 1_000_000 + b"\x01", max_depth=DEPTH)


def test_not_bytes_is_refused():
    with pytest.raises(ProtocolError, match="expected bytes"):
        codec.unpack("abc", max_depth=DEPTH)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "value",
    [object(), {1: 2}, 2**64, "\udcff", {"a": {1.5}}],
    ids=["object", "intkey", "big", "surrogate", "set"],
)
def test_pack_refuses_what_msgpack_cannot_carry(value):
    if isinstance(value, dict) and 1 in value:
        # msgpack itself would pack an int key; unpack() refuses it on the other side.
        with pytest.raises(ProtocolError):
            codec.unpack(codec.pack(value), max_depth=DEPTH)
        return
    with pytest.raises(ProtocolError, match="cannot be encoded"):
        codec.pack(value)


def test_canonical_pack_ignores_key_order():
    a = {"b": 1, "a": {"y": [1, {"q": 1, "p": 2}], "x": 2}}
    b = {"a": {"x": 2, "y": [1, {"p": 2, "q": 1}]}, "b": 1}
    assert codec.canonical_pack(a) == codec.canonical_pack(b)
    assert codec.pack(a) != codec.pack(b)


@given(st.binary(max_size=200))
@fuzz(4)
def test_random_bytes_raise_only_protocol_error(data):
    with contextlib.suppress(ProtocolError):
        codec.unpack(data, max_depth=DEPTH)


# Objects msgpack can carry; with st.recursive they also nest deeper than DEPTH.
_objects = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64)
    | st.floats()
    | st.text(max_size=5)
    | st.binary(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner, max_size=4)
    ),
    max_leaves=30,
)


@given(_objects, st.data())
@fuzz(2)
def test_mutated_encodings_raise_only_protocol_error(value, data):
    try:
        raw = msgpack.packb(value, use_bin_type=True)
    except (OverflowError, ValueError):
        return  # integers beyond 64 bits cannot be packed at all
    mutated = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 3))):
        action = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        pos = data.draw(st.integers(0, max(0, len(mutated) - 1)))
        if action == "flip" and mutated:
            mutated[pos] ^= data.draw(st.integers(1, 255))
        elif action == "insert":
            mutated[pos:pos] = data.draw(st.binary(min_size=1, max_size=4))
        elif action == "delete" and mutated:
            del mutated[pos]
        else:
            del mutated[pos:]
    try:
        decoded = codec.unpack(bytes(mutated), max_depth=DEPTH)
    except ProtocolError:
        return
    # Whatever survived is plain data msgpack can carry again.
    codec.pack(decoded)


@given(_objects)
@fuzz()
def test_anything_that_unpacks_packs_back_to_an_equal_value(value):
    try:
        raw = codec.pack(value)
        decoded = codec.unpack(raw, max_depth=DEPTH)
    except ProtocolError:
        return
    if not (isinstance(value, float) and math.isnan(value)):
        assert codec.pack(decoded) == raw


_SMALL = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=12,
)


@given(st.dictionaries(st.text(max_size=6), _SMALL, min_size=1, max_size=6), st.data())
def test_a_map_packed_with_one_value_packed_already_is_the_map_packed(obj, data):
    key = data.draw(st.sampled_from(sorted(obj)))
    assert codec.pack_with(obj, key, codec.pack(obj[key])) == codec.pack(obj)
