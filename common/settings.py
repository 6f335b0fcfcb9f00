"""Daemon settings files (master.yaml, minion.yaml): typed fields, checked at start-up.

A settings file is a YAML mapping. Each key must be a known field; each value
is parsed, from the text as written, by that field's parser (so `yes` is not
silently a boolean and `0644` not silently decimal 420). Every problem is collected and reported
together, each naming the file, the line and the key, so an administrator
fixes them all in one go instead of one per restart.

Most settings files are flat: `key: value` lines and comments. Those are
read by a few lines of code (_flat_entries) that decline anything else, so
that every command of the CLI does not pay for PyYAML (about 20 ms of
imports, against a goal of 40 ms for the whole of `safcm-master jobs
list`); whatever they decline goes to the YAML parser, which reads it or
reports its problems. Both give the same entries for a file the fast reader
accepts (tests/common/test_settings_flat.py).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any, NamedTuple

from safcm.common.errors import ConfigError, ConfigProblem
from safcm.common.lightwire import (
    ENVELOPE_SLACK,
    MAX_ENVELOPE_TTL,
    MAX_JOB_TIMEOUT,
    MIN_JOB_TIMEOUT,
)

# Largest settings file we read, in bytes; a settings file is a few hundred bytes.
MAX_SETTINGS_BYTES = 1 << 20

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)?\s*$")
_DURATION_UNITS = {None: 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
# A DNS name or label (RFC 1123), used for the master's address.
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)
_GROUP_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}\$?$")
# Values that leave a key at its default.
_UNSET = ("", "~", "null", "Null", "NULL")


class BadValue(ValueError):
    """Raised by a field parser; the message says what was expected."""


class Field(NamedTuple):
    """One settings key: how to parse its value, and its default. (A
    NamedTuple: the dataclasses module would cost the CLI 7 ms.)"""

    parse: Callable[[Any], Any]
    default: Any = None
    required: bool = False
    # The value may also be a YAML list of plain values: the parser then
    # gets them joined with ", " (as if written on one line with commas), and
    # "" for an empty list.
    many: bool = False
    # What an empty value ("key:", "key: ''", "key: null") is: None, the
    # default; or a message that makes it an error, for a key where leaving
    # the default by accident is dangerous (minion.yaml modules: all of them).
    if_empty: str | None = None


def load_settings(path: str, fields: dict[str, Field]) -> dict[str, Any]:
    """Read `path` and return {key: parsed value} for every field.

    Missing optional keys take their default. Raises ConfigError naming
    every unknown key, bad value and missing required key.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_SETTINGS_BYTES + 1)
    except OSError as e:
        raise ConfigError(ConfigProblem(path, None, f"cannot read: {e.strerror}")) from e
    if len(raw) > MAX_SETTINGS_BYTES:
        raise ConfigError(ConfigProblem(path, None, f"larger than {MAX_SETTINGS_BYTES} bytes"))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(ConfigProblem(path, None, "not valid UTF-8")) from e
    return parse_settings(text, fields, path)


def parse_settings(text: str, fields: dict[str, Field], name: str) -> dict[str, Any]:
    """Like load_settings, for settings already in memory; `name` is used in errors."""
    entries = _flat_entries(text)
    if entries is None:
        entries = _yaml_entries(text, name)
    problems: list[ConfigProblem] = []
    result: dict[str, Any] = {}
    for key, line, value, kind in entries:
        field = fields.get(key)
        if field is None:
            known = ", ".join(sorted(fields))
            problems.append(ConfigProblem(name, line, f"{key}: unknown key (known: {known})"))
        elif value is None and field.many and kind.startswith(_LIST_OF_VALUES):
            try:
                result[key] = field.parse(kind[len(_LIST_OF_VALUES) :])
            except BadValue as e:
                problems.append(ConfigProblem(name, line, f"{key}: {e}"))
        elif value is None:
            shown = "a list" if kind.startswith(_LIST_OF_VALUES) else kind
            message = f"{key}: must be a single value, not {shown}"
            problems.append(ConfigProblem(name, line, message))
        elif value in _UNSET and field.if_empty is not None:
            problems.append(ConfigProblem(name, line, f"{key}: {field.if_empty}"))
        elif value in _UNSET:
            continue  # "key:" or "key: null" leaves the default
        else:
            try:
                result[key] = field.parse(value)
            except BadValue as e:
                problems.append(ConfigProblem(name, line, f"{key}: {e}"))
    for setting, field in fields.items():
        if setting in result:
            continue
        if field.required:
            problems.append(ConfigProblem(name, None, f"{setting}: required key is missing"))
        else:
            result[setting] = field.default
    if problems:
        # One file: by line, problems on one line in the order found
        # (yamlfile.Problems.by_file()); the missing keys (no line) first.
        raise ConfigError(sorted(problems, key=lambda p: p.line or 0))
    return result


# One entry of a settings file: the key, its line, the value as written, or
# None and what the value is ("a list") if it is not a single value.
_Entry = tuple[str, int, str | None, str]
# The kind of a list of plain values, followed by them, joined with ", ".
_LIST_OF_VALUES = "a list:"


# The flat form the fast reader accepts: printable ASCII lines, each blank, a
# comment, or a lowercase key at the start of the line with a plain value
# that YAML reads as the same text (no quotes, no flow or block indicators,
# no ': ' or ' #' inside, not ending in ':'), and a comment after it.
_FLAT_TEXT = re.compile(r"[ -~\n]*")
_FLAT_SKIP = re.compile(r" *(#.*)?")
_FLAT_ENTRY = re.compile(r"([a-z_]+):(?: +([A-Za-z0-9_./][A-Za-z0-9_./:+-]*(?<!:)))?(?: +#.*| *)")


def _flat_entries(text: str) -> list[_Entry] | None:
    """The entries of a flat settings file, or None for anything else
    (then the YAML parser reads it)."""
    if not _FLAT_TEXT.fullmatch(text):
        return None
    entries: list[_Entry] = []
    seen: set[str] = set()
    for number, line in enumerate(text.split("\n"), 1):
        if _FLAT_SKIP.fullmatch(line):
            continue
        m = _FLAT_ENTRY.fullmatch(line)
        if m is None or m.group(1) in seen:
            return None  # the YAML parser says what is wrong (a duplicate key too)
        seen.add(m.group(1))
        entries.append((m.group(1), number, m.group(2) or "", ""))
    return entries


def _yaml_entries(text: str, name: str) -> list[_Entry]:
    """The entries of any settings file, through the YAML parser; ConfigError
    for a file that is not a mapping of settings."""
    from safcm.common.yamlfile import Problems, YMap, YScalar, kind_of, parse_yaml

    problems = Problems()
    node = parse_yaml(text, name, problems)
    if node is not None and not isinstance(node, YMap):
        problems.add(name, node.line, f"must be a mapping of settings, not {kind_of(node)}")
    if problems:
        raise ConfigError(problems)
    if not isinstance(node, YMap):
        return []  # an empty file
    return [
        (key.text, key.line, value.text, "")
        if isinstance(value, YScalar)
        else (key.text, key.line, None, _kind(value))
        for key, value in node.items
    ]


def _kind(node: Any) -> str:
    """What a value that is not a plain value is, for _Entry; a list of plain
    values carries them (see _LIST_OF_VALUES)."""
    from safcm.common.yamlfile import YScalar, YSeq, kind_of

    if isinstance(node, YSeq):  # an empty one too: "key: []"
        texts = [i.text for i in node.items if isinstance(i, YScalar)]
        if len(texts) == len(node.items):
            return _LIST_OF_VALUES + ", ".join(texts)
    return kind_of(node)


# Parsers. Each takes the value as written (quotes removed) and returns the
# typed value or raises BadValue.


def port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise BadValue(f"must be a TCP port number 1-65535, got {text!r}")
    return int(text)


def boolean(text: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise BadValue(f"must be true or false, got {text!r}")
    return text.lower() == "true"


def duration(text: str) -> float:
    """Seconds, as a number or with a unit: 45, 2.5, 30s, 5m, 12h, 90d, 2w."""
    m = _DURATION.match(text)
    if not m:
        raise BadValue(f"must be a duration such as 60, 5m or 90d, got {text!r}")
    seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    if seconds <= 0:
        raise BadValue(f"must be longer than zero, got {text!r}")
    return seconds


def job_timeout(text: str) -> float:
    """A job's timeout, as a duration(): master.yaml job_timeout and `run
    --timeout`. Bounded by how long the job's envelope may live
    (common/lightwire.py MAX_JOB_TIMEOUT), so that a job is never accepted
    that could not be sent."""
    seconds = duration(text)
    if not MIN_JOB_TIMEOUT <= seconds <= MAX_JOB_TIMEOUT:
        longest = (
            f"{MAX_JOB_TIMEOUT // 3600}h {MAX_JOB_TIMEOUT % 3600 // 60}m {MAX_JOB_TIMEOUT % 60}s"
        )
        raise BadValue(
            f"must be from {MIN_JOB_TIMEOUT} s to {MAX_JOB_TIMEOUT} s ({longest}), got "
            f"{text!r}: a job's envelope lives at most {MAX_ENVELOPE_TTL // 3600} hours, "
            f"{ENVELOPE_SLACK} s of them past the job's deadline"
        )
    return seconds


_SIZE = re.compile(r"(\d+)\s*([KMG]i?B?|B)?", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def size(text: str) -> int:
    """Bytes, as a number or with a binary unit: 1048576, 512K, 256M, 2G (also MiB, GB)."""
    m = _SIZE.fullmatch(text.strip())
    if not m:
        raise BadValue(f"must be a size such as 256M or 2G, got {text!r}")
    value = int(m.group(1)) * _SIZE_UNITS[(m.group(2) or "")[:1].lower()]
    if value <= 0:
        raise BadValue(f"must be larger than zero, got {text!r}")
    return value


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise BadValue(f"must be a whole number of at least 1, got {text!r}")
    return int(text)


def absolute_path(text: str) -> str:
    if not text.startswith("/") or "\0" in text:
        raise BadValue(f"must be an absolute path, got {text!r}")
    return os.path.normpath(text)


def host(text: str) -> str:
    """An IP address or a DNS name."""
    import ipaddress  # here: only a settings file that names a host pays for it

    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    if not _HOSTNAME.match(text):
        raise BadValue(f"must be a host name or IP address, got {text!r}")
    return text


def interface(text: str) -> str:
    """An IP address to bind to ("0.0.0.0" or "::" for all)."""
    import ipaddress  # here: only a settings file that names one pays for it

    try:
        return str(ipaddress.ip_address(text))
    except ValueError as e:
        raise BadValue(f"must be an IP address to listen on, got {text!r}") from e


def group_name(text: str) -> str:
    if not _GROUP_NAME.match(text):
        raise BadValue(f"must be a Unix group name, got {text!r}")
    return text


def store(text: str) -> str:
    """Where the master keeps keys and history: "sqlite", or a PostgreSQL URI
    (postgresql://USER@HOST:PORT/DB) or libpq connection string (host=... dbname=...).
    The string is checked fully when the master connects (master/pgdb.py)."""
    text = text.strip()
    if text == "sqlite":
        return text
    if text.startswith(("postgresql://", "postgres://")) or "=" in text:
        if any(c in text for c in "\0\n\r"):
            raise BadValue("must be one line")
        return text
    raise BadValue(
        "must be sqlite, a PostgreSQL URI (postgresql://USER@HOST:PORT/DB) "
        f"or a libpq connection string (host=... dbname=...), got {text!r}"
    )


def log_level(text: str) -> str:
    levels = ("debug", "info", "warning", "error")
    if text.lower() not in levels:
        raise BadValue(f"must be one of {', '.join(levels)}, got {text!r}")
    return text.lower()
