"""Hypothesis strategies derived from the wire schemas, and the fuzzing budget.

FUZZ_EXAMPLES is the example count of the main fuzzing tests; raise it for a
soak run: SAFCM_FUZZ_EXAMPLES=20000 .venv/bin/python -m pytest tests/common
"""

from __future__ import annotations

import math
import os
import string
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from safcm.common import modules
from safcm.common import schema as S
from safcm.common.crypto import PublicKeys, fingerprint_problem
from safcm.common.errors import ProtocolError
from safcm.common.ids import jid_problem, minion_id_problem, minion_pattern_problem, new_jid
from safcm.common.model import (
    AbsentSpec,
    ApplyFailure,
    ApplyResult,
    FileChange,
    FileSpec,
    FileState,
    FileType,
    Outcome,
    OwedTrigger,
    TriggerRun,
    TriggerStatus,
)
from safcm.common.protocol import SPECS, MsgType, ResultStatus

FUZZ_EXAMPLES = int(os.environ.get("SAFCM_FUZZ_EXAMPLES", "400"))


def fuzz(factor: float = 1.0) -> settings:
    """Settings for a fuzzing test: FUZZ_EXAMPLES * factor examples, no deadline."""
    return settings(
        max_examples=max(1, int(FUZZ_EXAMPLES * factor)),
        deadline=None,  # a shared 2-core machine; timing is not what these test
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# Generated strings and byte strings stay short: the limits themselves are
# tested with explicit oversize values, not by generating megabytes.
_SHORT = 12

minion_ids = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,30}", fullmatch=True)
jids = st.floats(0, 2**35, allow_nan=False).map(new_jid)
fingerprints = st.builds(
    lambda a, b, c: PublicKeys(a, b, c).fingerprint(),
    st.binary(min_size=32, max_size=32),
    st.binary(min_size=32, max_size=32),
    st.binary(min_size=32, max_size=32),
)
minion_patterns = st.from_regex(r"[a-z0-9._*?\[\]!-]{1,30}", fullmatch=True)
_GRAMMARS = {
    minion_id_problem: minion_ids,
    minion_pattern_problem: minion_patterns,
    jid_problem: jids,
    fingerprint_problem: fingerprints,
}


def strategy_for(schema: S.Schema) -> st.SearchStrategy[Any]:
    """Values that fit `schema` (checked by the schema alone, not by cross-field checks)."""
    if schema is modules.MODULE_NAME:
        return st.sampled_from([*modules.names(), modules.SYNC])
    if isinstance(schema, S.Str):
        if schema.problem is not None:
            return _GRAMMARS[schema.problem]
        if schema.pattern is not None:
            return st.from_regex(schema.pattern, fullmatch=True).filter(
                lambda s: schema.min_len <= len(s) <= schema.max_len
            )
        return st.text(
            min_size=schema.min_len, max_size=max(schema.min_len, min(schema.max_len, _SHORT))
        )
    if isinstance(schema, S.Bytes):
        return st.binary(
            min_size=schema.min_len, max_size=max(schema.min_len, min(schema.max_len, _SHORT))
        )
    if isinstance(schema, S.Int):
        return st.integers(schema.lo, schema.hi)
    if isinstance(schema, S.Float):
        # Integers too (the wire accepts them), but only those within a fractional bound.
        return st.floats(schema.lo, schema.hi, allow_nan=False, allow_infinity=False) | st.integers(
            math.ceil(schema.lo), math.floor(schema.hi)
        )
    if isinstance(schema, S.Bool):
        return st.booleans()
    if isinstance(schema, S.OneOf):
        return st.sampled_from([str(v) for v in schema.values])
    if isinstance(schema, S.Optional):
        return st.none() | strategy_for(schema.inner)
    if isinstance(schema, S.List):
        return st.lists(
            strategy_for(schema.item), min_size=schema.min_items, max_size=min(schema.max_items, 3)
        )
    if isinstance(schema, modules.ModuleBody):
        # a module, then a body of the fields it composes
        return st.sampled_from([*modules.names(), modules.SYNC]).flatmap(
            lambda m: strategy_for(modules.composed(schema, m)).map(lambda b: {**b, "module": m})
        )
    if isinstance(schema, modules.ModuleOptions):
        return st.nothing()  # a module's own options: tested with the module
    if isinstance(schema, S.Map):
        required = {k: strategy_for(v) for k, v in schema.fields.items() if k in schema.required}
        optional = {
            k: strategy_for(v) for k, v in schema.fields.items() if k not in schema.required
        }
        return st.fixed_dictionaries(required, optional=optional)
    raise TypeError(f"no strategy for {schema!r}")


# ---- model objects, for bodies that must also pass the cross-field checks ----

_names = st.text(string.ascii_lowercase, min_size=1, max_size=8)
_paths = st.lists(_names, min_size=1, max_size=4).map(lambda parts: "/" + "/".join(parts))
_durations = st.floats(0, 1e6, allow_nan=False)
_times = st.floats(0, 2**34, allow_nan=False)


@st.composite
def file_specs(draw: st.DrawFn) -> FileSpec:
    kind = draw(st.sampled_from([FileType.FILE, FileType.DIR, FileType.SYMLINK]))
    by_name = draw(st.booleans())
    data = {
        FileType.FILE: draw(st.binary(max_size=64)),
        FileType.DIR: b"",
        FileType.SYMLINK: draw(st.binary(min_size=1, max_size=32).filter(lambda b: b"\0" not in b)),
    }[kind]
    return FileSpec(
        path=draw(_paths),
        type=kind,
        mode=0o777 if kind is FileType.SYMLINK else draw(st.integers(0, 0o7777)),
        user=draw(_names) if by_name else None,
        uid=None if by_name else draw(st.integers(0, 2**32 - 2)),
        group=draw(_names) if by_name else None,
        gid=None if by_name else draw(st.integers(0, 2**32 - 2)),
        data=data,
        triggers=tuple(draw(st.lists(st.text(min_size=1, max_size=20), max_size=2))),
        passthrough=kind is FileType.DIR and draw(st.booleans()),
    )


file_states = st.builds(
    FileState,
    type=st.sampled_from(list(FileType)),
    mode=st.integers(0, 0o7777),
    uid=st.integers(0, 2**32 - 1),
    gid=st.integers(0, 2**32 - 1),
    user=st.none() | _names,
    group=st.none() | _names,
)


@st.composite
def file_changes(draw: st.DrawFn) -> FileChange:
    created = draw(st.booleans())
    removed = not created and draw(st.booleans())
    outcome = draw(st.sampled_from(list(Outcome)))
    failed = outcome in (Outcome.FAILED, Outcome.SKIPPED)
    return FileChange(
        path=draw(_paths),
        created=created,
        new=None if removed else draw(file_states),
        old=None if created else draw(file_states),
        diff=draw(st.none() | st.text(max_size=80)),
        outcome=outcome,
        reason=draw(st.text(min_size=1, max_size=40)) if failed else "",
    )


trigger_runs = st.builds(
    TriggerRun,
    command=st.text(min_size=1, max_size=20),
    status=st.sampled_from(list(TriggerStatus)),
    exit_code=st.none() | st.integers(-64, 255),
    output=st.text(max_size=40),
    duration=_durations,
)
apply_results = st.builds(
    ApplyResult,
    dry_run=st.booleans(),
    changes=st.lists(file_changes(), max_size=3),
    triggers=st.lists(trigger_runs, max_size=3),
    failures=st.lists(
        st.builds(ApplyFailure, path=st.just("") | _paths, reason=st.text(max_size=40)),
        max_size=2,
    ),
    owed=st.lists(
        st.builds(OwedTrigger, command=st.text(min_size=1, max_size=20), path=_paths, jid=jids),
        max_size=2,
    ),
    duration=_durations,
)


@st.composite
def result_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """A RESULT body that is consistent: status, error, apply and ping agree."""
    module = draw(st.sampled_from(["files", "ping"]))
    started = draw(_times)
    body: dict[str, Any] = {
        "module": str(module),
        "started": started,
        "finished": started + draw(_durations),
        "apply": None,
        "ping": None,
        "error": None,
    }
    if draw(st.booleans()):
        body["status"] = str(ResultStatus.ERROR)
        body["error"] = draw(st.text(max_size=40))
    elif module == "files":
        result = draw(apply_results)
        body["apply"] = result.to_wire()
        body["status"] = str(ResultStatus.OK if result.ok else ResultStatus.FAILED)
    else:
        body["ping"] = {"version": draw(st.text(max_size=10)), "time": draw(_times)}
        body["status"] = str(ResultStatus.OK)
    return body


@st.composite
def run_host_result_bodies(draw: st.DrawFn) -> dict[str, Any]:
    jid, host = draw(jids), draw(minion_ids)
    if draw(st.booleans()):
        return {"jid": jid, "host": host, "status": "no response", "result": None}
    result = draw(result_bodies())
    return {"jid": jid, "host": host, "status": result["status"], "result": result}


def _passes_check(msg_type: MsgType, body: dict[str, Any]) -> bool:
    check = SPECS[msg_type].check
    if check is None:
        return True
    try:
        check(body, None)
    except ProtocolError:
        return False
    return True


def bodies(msg_type: MsgType) -> st.SearchStrategy[dict[str, Any]]:
    """Valid bodies of `msg_type`, cross-field checks included."""
    if msg_type is MsgType.RESULT:
        return result_bodies()
    if msg_type is MsgType.RUN_HOST_RESULT:
        return run_host_result_bodies()
    if msg_type is MsgType.JOB:
        return st.fixed_dictionaries(
            {
                "module": st.just("files"),
                "dry_run": st.booleans(),
                "files": st.lists(file_specs(), max_size=3).map(
                    lambda fs: [f.to_wire() for f in fs]
                ),
                "absent": st.lists(
                    st.builds(AbsentSpec, path=_paths, recursive=st.booleans()), max_size=2
                ).map(lambda items: [a.to_wire() for a in items]),
                "purge": st.lists(_paths, max_size=2),
                "secrets": st.lists(_paths, max_size=2),
                "deadline": _times,
            }
        ) | st.fixed_dictionaries(
            {
                "module": st.just("ping"),
                "dry_run": st.booleans(),
                "deadline": _times,
            }
        )
    return strategy_for(SPECS[msg_type].schema).filter(lambda b: _passes_check(msg_type, b))
