"""Names on the wire: minion ids, the master's id, job ids and publish topics.

Every name that crosses the wire has a strict grammar, checked on both ends,
so that no id can ever become a path component that escapes its directory, a
query fragment or a terminal escape:

    minion id   [a-z0-9][a-z0-9._-]{0,252}    lowercase, DNS-like; also a
                                               directory name in the config
                                               repository, so never "." or ".."
    master id   "@master"                      outside the minion grammar, so a
                                               minion can never take its name
    jid         YYYYMMDDTHHMMSS.ffffffZ        UTC, microseconds; made only by
                                               new_jid(), strictly increasing

Each check comes in two forms: `*_problem(s)` returns the reason a string is
not valid (or None), for callers that report problems in their own error type
(the configuration loader, the CLI); `check_*(s)` raises ProtocolError.
"""

from __future__ import annotations

import datetime
import math
import re

from safcm.common.errors import ProtocolError

# Longest minion id, in characters: a DNS name's limit, and below NAME_MAX so
# the id is always a valid directory name.
MINION_ID_MAX = 253
_MINION_ID_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,252}")
# A minion id or a glob over minion ids (`keys accept 'web*'`): the id's
# characters and the glob's * ? [ ] !.
_MINION_PATTERN_RE = re.compile(r"[a-z0-9._*?\[\]!-]+")

# The master's id in envelope headers. It starts with "@", which the minion
# grammar forbids, so no minion can be confused with the master.
MASTER_ID = "@master"

# A jid is exactly this long: "20261121T193000.123456Z".
JID_LENGTH = 23
_JID_RE = re.compile(r"[0-9]{8}T[0-9]{6}\.[0-9]{6}Z")
JID_FORMAT = "%Y%m%dT%H%M%S.%fZ"
_US_PER_S = 1_000_000
# The first and last instant a jid can name (the four-digit years of strftime).
_JID_MIN = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_JID_MAX = datetime.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=datetime.UTC)

# What a minion subscribes to on the master's publish socket: everything the
# master sends it. The master publishes each envelope under a topic it gives
# the addressee's connections alone (master/publish.py, Topics), so this is
# that minion's own envelopes and nothing else.
SUBSCRIPTION = b""


def minion_id_problem(value: object) -> str | None:
    """Why `value` is not a valid minion id, or None if it is."""
    if not isinstance(value, str):
        return f"a minion id must be a string, not {type(value).__name__}"
    if not value:
        return "a minion id cannot be empty"
    if len(value) > MINION_ID_MAX:
        return f"a minion id is at most {MINION_ID_MAX} characters, this one has {len(value)}"
    if _MINION_ID_RE.fullmatch(value) is None:
        return (
            f"minion id {value!r} is not valid: use lowercase letters, digits, '.', '_' "
            "and '-', starting with a letter or digit"
        )
    return None


def minion_pattern_problem(value: object) -> str | None:
    """Why `value` is neither a minion id nor a glob over minion ids, or None."""
    if not isinstance(value, str):
        return f"a minion id or pattern must be a string, not {type(value).__name__}"
    if not value:
        return "a minion id or pattern cannot be empty"
    if len(value) > MINION_ID_MAX:
        return (
            f"a minion id or pattern is at most {MINION_ID_MAX} characters, "
            f"this one has {len(value)}"
        )
    if _MINION_PATTERN_RE.fullmatch(value) is None:
        lower = value.lower()
        if lower != value and _MINION_PATTERN_RE.fullmatch(lower) is not None:
            return f"minion ids are lower case: did you mean {lower!r}?"
        return (
            f"{value!r} is not a minion id or pattern: use lowercase letters, digits, "
            "'.', '_' and '-', and * ? [ ] ! for a glob"
        )
    return None


def check_minion_id(value: object) -> str:
    """Return `value` if it is a valid minion id; raise ProtocolError otherwise."""
    problem = minion_id_problem(value)
    if problem is not None:
        raise ProtocolError(problem)
    return value  # type: ignore[return-value]  # checked above


def peer_id_problem(value: object) -> str | None:
    """Why `value` cannot be the sender or recipient of an envelope, or None."""
    if value == MASTER_ID:
        return None
    return minion_id_problem(value)


def jid_problem(value: object) -> str | None:
    """Why `value` is not a valid jid, or None if it is."""
    if not isinstance(value, str):
        return f"a jid must be a string, not {type(value).__name__}"
    if len(value) != JID_LENGTH or _JID_RE.fullmatch(value) is None:
        return f"jid {value[:64]!r} is not of the form YYYYMMDDTHHMMSS.ffffffZ"
    try:
        _jid_datetime(value)
    except ValueError:
        return f"jid {value!r} is not a real date and time"
    return None


def _jid_datetime(jid: str) -> datetime.datetime:
    """The naive UTC time of a jid of the right form (_JID_RE); ValueError
    if it names no real date and time. By its fields rather than strptime(),
    which costs 20 times as much, and every message names a jid."""
    return datetime.datetime(
        int(jid[0:4]),
        int(jid[4:6]),
        int(jid[6:8]),
        int(jid[9:11]),
        int(jid[11:13]),
        int(jid[13:15]),
        int(jid[16:22]),
    )


def check_jid(value: object) -> str:
    """Return `value` if it is a valid jid; raise ProtocolError otherwise."""
    problem = jid_problem(value)
    if problem is not None:
        raise ProtocolError(problem)
    return value  # type: ignore[return-value]  # checked above


def jid_time(jid: str) -> float:
    """The instant a valid jid names, in seconds since the epoch (UTC)."""
    return _jid_us(check_jid(jid)) / _US_PER_S


def _jid_us(jid: str) -> int:
    t = _jid_datetime(jid).replace(tzinfo=datetime.UTC)
    delta = t - _JID_MIN
    return (delta.days * 86400 + delta.seconds) * _US_PER_S + delta.microseconds


def new_jid(now: float, last: str | None = None) -> str:
    """Make the jid for a job created at `now` (seconds since the epoch).

    `last` is the newest jid this master made before. The result is always
    strictly greater than `last`, also when the clock stands still or steps
    back: it is then `last` plus one microsecond. Jids sort by time as
    strings, because every field has a fixed width.
    """
    if not isinstance(now, int | float) or not math.isfinite(now):
        raise ProtocolError(f"time {now!r} cannot be written as a jid")
    us = int(now * _US_PER_S)
    if last is not None:
        us = max(us, _jid_us(check_jid(last)) + 1)
    try:
        t = _JID_MIN + datetime.timedelta(microseconds=us)
    except OverflowError as e:
        raise ProtocolError(f"time {now!r} cannot be written as a jid") from e
    if not _JID_MIN <= t <= _JID_MAX:
        raise ProtocolError(f"time {now!r} cannot be written as a jid")
    return t.strftime(JID_FORMAT)
