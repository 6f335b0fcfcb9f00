"""Schemas for decoded wire messages: the shape every message body must have.

A schema is a tree of small objects (Map, List, Str, Bytes, Int, Float, Bool,
OneOf, Optional). `validate(schema, value, name)` walks a decoded value along
its schema and raises ProtocolError naming the first field that does not fit,
e.g. "JOB body.files[3].mode: expected an int in 0..4095, got str".

The walk follows the schema, never the value, so it never recurses deeper
than the schema itself (Schema.depth). Every container is bounded: a Map
allows exactly its fields, a List has a maximum length, a Str or Bytes a
maximum length. Error messages describe a bad value by its type or length and
never quote it, so a peer cannot put arbitrary text into a log line.

Success is fast: a path to the bad field is only built on failure, by each
container adding its key or index as the error passes up.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from safcm.common.errors import ProtocolError


class _Invalid(Exception):
    """A value did not fit; internal to this module, always turned into ProtocolError."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.where: list[str] = []


def _kind(value: object) -> str:
    """A short, safe description of a value for an error message (never its content)."""
    if value is None:
        return "null"
    if isinstance(value, str | bytes | list | dict):
        return f"{type(value).__name__} of length {len(value)}"
    return type(value).__name__


class Schema:
    """Base of all schemas. `depth` is how many nested containers it allows."""

    depth = 0

    def check(self, value: Any) -> None:
        raise NotImplementedError


class Str(Schema):
    """A text string of min_len..max_len characters, optionally with a grammar.

    `problem`, if given, returns why a string is not valid (or None); it is for
    grammars like minion ids that already have a checker of their own.
    """

    def __init__(
        self,
        max_len: int,
        *,
        min_len: int = 0,
        pattern: str | None = None,
        problem: Callable[[str], str | None] | None = None,
    ) -> None:
        self.max_len = max_len
        self.min_len = min_len
        self.pattern = None if pattern is None else re.compile(pattern)
        self.problem = problem

    def check(self, value: Any) -> None:
        if type(value) is not str:
            raise _Invalid(f"expected a string, got {_kind(value)}")
        if not self.min_len <= len(value) <= self.max_len:
            raise _Invalid(
                f"expected a string of {self.min_len}..{self.max_len} characters, got {len(value)}"
            )
        if self.pattern is not None and self.pattern.fullmatch(value) is None:
            raise _Invalid(f"string does not match {self.pattern.pattern}")
        if self.problem is not None:
            reason = self.problem(value)
            if reason is not None:
                raise _Invalid(reason)


class Bytes(Schema):
    """A byte string of min_len..max_len bytes."""

    def __init__(self, max_len: int, *, min_len: int = 0) -> None:
        self.max_len = max_len
        self.min_len = min_len

    def check(self, value: Any) -> None:
        if type(value) is not bytes:
            raise _Invalid(f"expected bytes, got {_kind(value)}")
        if not self.min_len <= len(value) <= self.max_len:
            raise _Invalid(f"expected {self.min_len}..{self.max_len} bytes, got {len(value)}")


class Int(Schema):
    """An integer in lo..hi (a bool is not an integer here)."""

    def __init__(self, lo: int, hi: int) -> None:
        self.lo = lo
        self.hi = hi

    def check(self, value: Any) -> None:
        if type(value) is not int or not self.lo <= value <= self.hi:
            got = value if type(value) is int else _kind(value)
            raise _Invalid(f"expected an int in {self.lo}..{self.hi}, got {got}")


class Float(Schema):
    """A finite number in lo..hi. Integers are accepted too; bools, NaN and infinities not."""

    def __init__(self, lo: float, hi: float) -> None:
        self.lo = lo
        self.hi = hi

    def check(self, value: Any) -> None:
        if type(value) not in (float, int):
            raise _Invalid(f"expected a number, got {_kind(value)}")
        if not (math.isfinite(value) and self.lo <= value <= self.hi):
            raise _Invalid(f"expected a number in {self.lo}..{self.hi}, got {value!r}")


class Bool(Schema):
    def check(self, value: Any) -> None:
        if type(value) is not bool:
            raise _Invalid(f"expected true or false, got {_kind(value)}")


class OneOf(Schema):
    """One string out of a fixed set."""

    def __init__(self, values: Iterable[str]) -> None:
        self.values = tuple(values)
        self._set = frozenset(self.values)

    def check(self, value: Any) -> None:
        if type(value) is not str or value not in self._set:
            raise _Invalid(f"expected one of {', '.join(self.values)}, got {_kind(value)}")


class Optional(Schema):
    """Null, or a value of the inner schema."""

    def __init__(self, inner: Schema) -> None:
        self.inner = inner
        self.depth = inner.depth

    def check(self, value: Any) -> None:
        if value is not None:
            self.inner.check(value)


class List(Schema):
    """A list of min_items..max_items values, all of one schema."""

    def __init__(self, item: Schema, max_items: int, *, min_items: int = 0) -> None:
        self.item = item
        self.max_items = max_items
        self.min_items = min_items
        self.depth = 1 + item.depth

    def check(self, value: Any) -> None:
        if type(value) is not list:
            raise _Invalid(f"expected a list, got {_kind(value)}")
        if not self.min_items <= len(value) <= self.max_items:
            raise _Invalid(
                f"expected a list of {self.min_items}..{self.max_items} items, got {len(value)}"
            )
        check = self.item.check
        try:
            for item in value:
                check(item)
        except _Invalid:
            # Only now the index: counting it as the loop goes costs a
            # tenth of a check that passes.
            for i, item in enumerate(value):
                try:
                    check(item)
                except _Invalid as e:
                    e.where.append(f"[{i}]")
                    raise
            raise


class Map(Schema):
    """A map with string keys: every key of `fields` is required, none other allowed.

    Keys listed in `optional` may be absent.
    """

    def __init__(self, fields: Mapping[str, Schema], *, optional: Iterable[str] = ()) -> None:
        self.fields = dict(fields)
        self.optional = frozenset(optional)
        unknown = self.optional - self.fields.keys()
        if unknown:
            raise ValueError(f"optional keys {sorted(unknown)} are not fields")
        self.required = frozenset(self.fields.keys() - self.optional)
        self._keys = frozenset(self.fields)
        # Checked in field order, so that a body missing several keys is
        # always reported by the same one (a frozenset's order follows the
        # process's string hash seed).
        self._required_in_order = tuple(k for k in self.fields if k in self.required)
        self.depth = 1 + max((s.depth for s in self.fields.values()), default=0)

    def check(self, value: Any) -> None:
        if type(value) is not dict:
            raise _Invalid(f"expected a map, got {_kind(value)}")
        fields = self.fields
        # The key sets compared whole first (in C), each key looked for only
        # if they differ: most maps checked are a file's or a change's, by
        # the hundred per message.
        keys = value.keys()
        if not keys <= self._keys:
            for key in value:
                if key not in fields:
                    # repr() escapes control characters; the slice bounds the log line.
                    raise _Invalid(f"unexpected key {repr(key)[:40]}")
        if len(value) != len(fields) and not self.required <= keys:
            for key in self._required_in_order:
                if key not in value:
                    raise _Invalid(f"missing key {key!r}")
        key = ""
        try:
            for key, item in value.items():
                fields[key].check(item)
        except _Invalid as e:
            e.where.append(f".{key}")
            raise


def validate(schema: Schema, value: Any, name: str) -> None:
    """Raise ProtocolError unless `value` fits `schema`; `name` starts the message."""
    try:
        schema.check(value)
    except _Invalid as e:
        raise ProtocolError(f"{name}{''.join(reversed(e.where))}: {e.reason}") from None
