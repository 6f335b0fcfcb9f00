"""Result bodies as the minion sends them: built from what the job did, and
kept below the wire's size limit. Pure: no I/O.

A result must always reach the master (Salt's returns break on msgpack
limits, and a result the minion cannot send makes a host that applied look
like "no response"). The engine already caps each diff and each trigger's
output; a job that changes thousands of files can still add up past the
limit, so fit() leaves out detail in steps, each taking the largest pieces
first and stopping as soon as the result fits:

1. diffs, each replaced by a one-line note;
2. trigger output, each replaced by a one-line note;
3. per-file detail: change records, from the end of the (path-ordered) list;
4. trigger runs, from the end: what is left is a summary.

The body then carries "reduced" (common/protocol.py REDUCED): how many of
each were left out, and why, so the master can say so.
"""

from __future__ import annotations

from typing import Any

from safcm.common import codec
from safcm.common.model import ApplyResult
from safcm.common.protocol import MAX_RESULT_BYTES, ResultStatus

# Room kept below MAX_RESULT_BYTES for the envelope's header, nonce and tag.
ENVELOPE_HEADROOM = 64 * 1024
DIFF_DROPPED = "(diff omitted: the whole result was larger than the wire allows)\n"
OUTPUT_DROPPED = "(output omitted: the whole result was larger than the wire allows)\n"


def files_result(apply: ApplyResult, *, started: float, finished: float) -> dict[str, Any]:
    """The result of a files job (as minion/modules/ builds it)."""
    return {
        "module": "files",
        "status": str(ResultStatus.OK if apply.ok else ResultStatus.FAILED),
        "started": started,
        "finished": finished,
        "apply": apply.to_wire(),
        "error": None,
    }


def ping_result(version: str, *, started: float, finished: float) -> dict[str, Any]:
    """The result of a ping job (as minion/modules/ builds it)."""
    return {
        "module": "ping",
        "status": str(ResultStatus.OK),
        "started": started,
        "finished": finished,
        "ping": {"version": version, "time": finished},
        "error": None,
    }


def error_result(module: str, reason: str, *, started: float, finished: float) -> dict[str, Any]:
    """The job could not run at all (lock held, expired before it started,
    a module this minion does not accept, ...)."""
    return {
        "module": module,
        "status": str(ResultStatus.ERROR),
        "started": started,
        "finished": finished,
        "error": reason,
    }


def fit(body: dict[str, Any], limit: int = MAX_RESULT_BYTES - ENVELOPE_HEADROOM) -> bytes:
    """Pack `body`, leaving out detail in steps (see above) until it fits in `limit` bytes.

    Changes `body` in place when it is too large. A files result always
    fits in the end: all that is left is its summary (status, times, the
    failure) and the counts of what was left out.
    """
    data = codec.pack(body)
    apply = body.get("apply")
    if len(data) <= limit or apply is None:
        return data
    reduced = body["reduced"] = {
        "diffs_omitted": 0,
        "outputs_omitted": 0,
        "changes_omitted": 0,
        "triggers_omitted": 0,
        "reason": f"too large: {len(data)} bytes, the wire allows {limit}",
    }
    data = codec.pack(body)
    for step in (_omit_diffs, _omit_outputs, _omit_changes, _omit_triggers):
        step(apply, reduced, len(data) - limit)
        data = codec.pack(body)
        if len(data) <= limit:
            return data
    raise ValueError(f"a result summary of {len(data)} bytes does not fit in {limit} bytes")


def _packed(value: object) -> int:
    return len(codec.pack(value))


def _replace_largest(holders: list[dict[str, Any]], key: str, note: str, excess: int) -> int:
    """Replace holder[key] by `note`, largest first, until `excess` bytes are saved; how many."""
    note_size = _packed(note)
    savings = sorted(
        ((_packed(h[key]) - note_size, i) for i, h in enumerate(holders)), reverse=True
    )
    replaced = 0
    for saved, i in savings:
        if excess <= 0 or saved <= 0:
            break
        holders[i][key] = note
        excess -= saved
        replaced += 1
    return replaced


def _omit_diffs(apply: dict[str, Any], reduced: dict[str, Any], excess: int) -> None:
    changes = [c for c in apply["changes"] if c["diff"] and c["diff"] != DIFF_DROPPED]
    reduced["diffs_omitted"] += _replace_largest(changes, "diff", DIFF_DROPPED, excess)


def _omit_outputs(apply: dict[str, Any], reduced: dict[str, Any], excess: int) -> None:
    runs = [t for t in apply["triggers"] if t["output"] and t["output"] != OUTPUT_DROPPED]
    reduced["outputs_omitted"] += _replace_largest(runs, "output", OUTPUT_DROPPED, excess)


def _drop_from_end(items: list[Any], excess: int) -> int:
    """Remove items from the end of `items` until `excess` bytes are saved; how many."""
    dropped = 0
    while items and excess > 0:
        excess -= _packed(items.pop())
        dropped += 1
    return dropped


def _omit_changes(apply: dict[str, Any], reduced: dict[str, Any], excess: int) -> None:
    reduced["changes_omitted"] += _drop_from_end(apply["changes"], excess)


def _omit_triggers(apply: dict[str, Any], reduced: dict[str, Any], excess: int) -> None:
    reduced["triggers_omitted"] += _drop_from_end(apply["triggers"], excess)
