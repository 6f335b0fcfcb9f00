"""Daemon settings files (master.yaml, minion.yaml): typed fields, checked at start-up.

A settings file is a YAML mapping. Each key must be a known field; each value
is parsed by that field's parser. Every problem is collected and reported
together, each naming the file, the line and the key, so an administrator
fixes them all in one go instead of one per restart.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

from common.errors import ConfigError, ConfigProblem

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


class BadValue(ValueError):
    """Raised by a field parser; the message says what was expected."""


@dataclass(frozen=True)
class Field:
    """One settings key: how to parse its value, and its default."""

    parse: Callable[[Any], Any]
    default: Any = None
    required: bool = False


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
    return parse_settings(raw, fields, path)


def parse_settings(raw: bytes | str, fields: dict[str, Field], name: str) -> dict[str, Any]:
    """Like load_settings, for settings already in memory; `name` is used in errors."""
    try:
        node = yaml.compose(raw, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(ConfigProblem(name, line, f"invalid YAML: {problem}")) from e
    if node is None:
        entries: list[tuple[str, int, Any]] = []
    elif not isinstance(node, yaml.MappingNode):
        raise ConfigError(ConfigProblem(name, node.start_mark.line + 1, "must be a mapping"))
    else:
        entries = []
        problems = []
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str):
                problems.append(ConfigProblem(name, line, "keys must be plain names"))
                continue
            if key in seen:
                problems.append(
                    ConfigProblem(name, line, f"{key}: duplicate key (first on line {seen[key]})")
                )
                continue
            seen[key] = line
            try:
                value = yaml.SafeLoader(b"").construct_document(value_node)
            except yaml.YAMLError as e:
                problems.append(ConfigProblem(name, line, f"{key}: invalid value: {e}"))
                continue
            entries.append((key, line, value))
        if problems:
            raise ConfigError(problems)

    result: dict[str, Any] = {}
    problems = []
    for key, line, value in entries:
        field = fields.get(key)
        if field is None:
            known = ", ".join(sorted(fields))
            problems.append(ConfigProblem(name, line, f"{key}: unknown key (known: {known})"))
            continue
        try:
            result[key] = field.parse(value)
        except BadValue as e:
            problems.append(ConfigProblem(name, line, f"{key}: {e}"))
    for key, field in fields.items():
        if key in result:
            continue
        if field.required:
            problems.append(ConfigProblem(name, None, f"{key}: required key is missing"))
        else:
            result[key] = field.default
    if problems:
        raise ConfigError(problems)
    return result


# Parsers. Each takes the YAML value and returns the typed value or raises BadValue.


def port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise BadValue(f"must be a TCP port number 1-65535, got {value!r}")
    return value


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise BadValue(f"must be true or false, got {value!r}")
    return value


def duration(value: Any) -> float:
    """Seconds, as a number or a string with a unit: 45, "30s", "5m", "12h", "90d", "2w"."""
    if isinstance(value, bool):
        raise BadValue(f"must be a duration such as 60, '5m' or '90d', got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value))
        if not m:
            raise BadValue(f"must be a duration such as 60, '5m' or '90d', got {value!r}")
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    if seconds <= 0:
        raise BadValue(f"must be longer than zero, got {value!r}")
    return seconds


def absolute_path(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("/") or "\0" in value:
        raise BadValue(f"must be an absolute path, got {value!r}")
    return os.path.normpath(value)


def host(value: Any) -> str:
    """An IP address or a DNS name."""
    if not isinstance(value, str):
        raise BadValue(f"must be a host name or IP address, got {value!r}")
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    if not _HOSTNAME.match(value):
        raise BadValue(f"must be a host name or IP address, got {value!r}")
    return value


def interface(value: Any) -> str:
    """An IP address to bind to ("0.0.0.0" or "::" for all)."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError as e:
        raise BadValue(f"must be an IP address to listen on, got {value!r}") from e


def group_name(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _GROUP_NAME.match(value):
        raise BadValue(f"must be a Unix group name, got {value!r}")
    return value


def log_level(value: Any) -> str:
    levels = ("debug", "info", "warning", "error")
    if not isinstance(value, str) or value.lower() not in levels:
        raise BadValue(f"must be one of {', '.join(levels)}, got {value!r}")
    return value.lower()
