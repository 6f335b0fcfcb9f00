"""Result bodies as the minion sends them: built from what the job did, and
kept below the wire's size limit. Pure: no I/O.

A large return must never fail to travel (Salt's returns break on msgpack
limits). The engine already caps each diff and each trigger's output; a job
that changes thousands of files can still add up past the limit, so the
largest diffs, then the longest trigger outputs, are replaced by a note until
the packed body fits. What changed is always reported; only the detail is
dropped, and the note says so.
"""

from __future__ import annotations

from typing import Any

from common import codec
from common.model import ApplyResult
from common.protocol import MAX_RESULT_BYTES, Module, ResultStatus

# Room kept below MAX_RESULT_BYTES for the envelope's header, nonce and tag.
ENVELOPE_HEADROOM = 64 * 1024
DIFF_DROPPED = "(diff not shown: the whole result was larger than the wire allows)\n"
OUTPUT_DROPPED = "(output not shown: the whole result was larger than the wire allows)\n"


def files_result(apply: ApplyResult, *, started: float, finished: float) -> dict[str, Any]:
    return {
        "module": str(Module.FILES),
        "status": str(ResultStatus.OK if apply.ok else ResultStatus.FAILED),
        "started": started,
        "finished": finished,
        "apply": apply.to_wire(),
        "ping": None,
        "error": None,
    }


def ping_result(version: str, *, started: float, finished: float) -> dict[str, Any]:
    return {
        "module": str(Module.PING),
        "status": str(ResultStatus.OK),
        "started": started,
        "finished": finished,
        "apply": None,
        "ping": {"version": version, "time": finished},
        "error": None,
    }


def error_result(module: str, reason: str, *, started: float, finished: float) -> dict[str, Any]:
    """The job could not run at all (lock held, expired before it started, ...)."""
    return {
        "module": module,
        "status": str(ResultStatus.ERROR),
        "started": started,
        "finished": finished,
        "apply": None,
        "ping": None,
        "error": reason,
    }


def fit(body: dict[str, Any], limit: int = MAX_RESULT_BYTES - ENVELOPE_HEADROOM) -> bytes:
    """Pack `body`, dropping the largest diffs and outputs until it fits in `limit` bytes."""
    data = codec.pack(body)
    apply = body.get("apply")
    if len(data) <= limit or apply is None:
        return data
    excess = len(data) - limit
    # Largest first: fewest details lost for the bytes saved.
    pieces = [(len(c["diff"] or ""), "diff", c) for c in apply["changes"] if c["diff"]]
    pieces += [(len(t["output"]), "output", t) for t in apply["triggers"] if t["output"]]
    pieces.sort(key=lambda p: p[0], reverse=True)
    for size, key, holder in pieces:
        note = DIFF_DROPPED if key == "diff" else OUTPUT_DROPPED
        holder[key] = note
        excess -= size - len(note)
        if excess <= 0:
            break
    return codec.pack(body)
