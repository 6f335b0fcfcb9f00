"""The schema machinery: each kind refuses what it must, and names the field."""

import math

import pytest

from safcm.common.errors import ProtocolError
from safcm.common.schema import Bool, Bytes, Float, Int, List, Map, OneOf, Optional, Str, validate

CASES = [
    # (schema, good values, bad values, expected reason)
    (
        Str(3, min_len=1),
        ["a", "abc"],
        [
            ("", "1..3 characters"),
            ("abcd", "1..3 characters"),
            (b"a", "expected a string"),
            (None, "got null"),
        ],
    ),
    (Str(10, pattern=r"[a-z]+"), ["abc"], [("ab1", "does not match"), ("", "does not match")]),
    (
        Bytes(2, min_len=2),
        [b"ab"],
        [(b"a", "2..2 bytes"), ("ab", "expected bytes"), (bytearray(b"ab"), "expected bytes")],
    ),
    (
        Int(0, 10),
        [0, 10],
        [
            (-1, "0..10, got -1"),
            (11, "got 11"),
            (True, "got bool"),
            (1.0, "got float"),
            ("1", "got str"),
        ],
    ),
    (
        Float(0, 1),
        [0, 0.5, 1],
        [
            (math.nan, "got nan"),
            (math.inf, "got inf"),
            (-0.1, "in 0..1"),
            (False, "got bool"),
            ("0.5", "got str"),
        ],
    ),
    (Bool(), [True, False], [(0, "got int"), ("true", "got str"), (None, "got null")]),
    (OneOf(["a", "b"]), ["a", "b"], [("c", "one of a, b"), (1, "got int")]),
    (Optional(Int(0, 1)), [None, 0], [(2, "0..1")]),
    (
        List(Int(0, 1), 2, min_items=1),
        [[0], [0, 1]],
        [([], "1..2 items"), ([0, 1, 1], "1..2 items"), ((0,), "expected a list")],
    ),
    (
        Map({"a": Int(0, 1), "b": Str(1)}, optional=["b"]),
        [{"a": 0}, {"a": 1, "b": "x"}],
        [
            ({}, "missing key 'a'"),
            ({"a": 0, "c": 1}, "unexpected key 'c'"),
            ({b"a": 0}, "unexpected key b'a'"),
            ([("a", 0)], "expected a map"),
        ],
    ),
]


@pytest.mark.parametrize(("schema", "good", "bad"), [(s, g, b) for s, g, b in CASES])
def test_each_schema_kind(schema, good, bad):
    for value in good:
        validate(schema, value, "v")
    for value, reason in bad:
        with pytest.raises(
            ProtocolError, match="^v: .*" + reason.replace("(", r"\(").replace(".", r"\.")
        ):
            validate(schema, value, "v")


def test_the_error_names_the_path_to_the_bad_field():
    schema = Map({"files": List(Map({"mode": Int(0, 0o7777)}), 10)})
    with pytest.raises(ProtocolError) as info:
        validate(schema, {"files": [{"mode": 1}, {"mode": "rw"}]}, "JOB body")
    assert (
        str(info.value) == "JOB body.files[1].mode: expected an int in 0..4095, got str of length 2"
    )


def test_errors_never_quote_the_bad_value():
    secret = "x" * 50 + "\x1b[31m"
    with pytest.raises(ProtocolError) as info:
        validate(Map({"a": Int(0, 1)}), {"a": secret}, "m")
    assert secret not in str(info.value)
    assert "\x1b" not in str(info.value)
    with pytest.raises(ProtocolError) as info:
        validate(Map({"a": Int(0, 1)}), {secret: 1}, "m")
    assert "\x1b" not in str(info.value)  # repr() escapes control characters in key names
    assert len(str(info.value)) < 80


def test_depth_counts_nested_containers():
    assert Int(0, 1).depth == 0
    assert List(Int(0, 1), 1).depth == 1
    assert Map({"a": List(Map({"b": Optional(List(Int(0, 1), 1))}), 1)}).depth == 4


def test_map_refuses_an_optional_key_that_is_not_a_field():
    with pytest.raises(ValueError, match="not fields"):
        Map({"a": Int(0, 1)}, optional=["b"])
