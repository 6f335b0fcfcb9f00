"""The modules' wire: what each module's job body and result carry, shared
by master and minion (the module registry's common part).

A module is one file here, one in master/modules/ and one in
minion/modules/ (master/modules/__init__.py says how to add one). Its file
here holds WIRE, a ModuleWire:

    name         the module's name on the command line and on the wire
    job_fields   the keys its JOB body adds to the common ones (module,
                 dry_run, deadline), with their schemas
    result_key   the key of its section in a RESULT body, and result_schema
                 that section's schema; None for a module that reports
                 nothing beyond the status
    options      the schema of what a RUN request passes to it beyond
                 target and dry run (cmd: the argv), or None
    sync_order   its place in `sync` (lower runs first), or None if it
                 takes no part in sync
    job_problem  cross-field checks of its job fields (-> reason or None)
    succeeded    whether a section reports success: True, False, or None
                 when the section cannot tell (details left out)

The table of modules is built from the files in this directory, once, the
first time it is needed: adding a module adds no line here or in
common/protocol.py, whose JOB and RESULT schemas are composed from it
(ModuleBody). The table is explicit data built from our own package, never
a lookup of a name a peer sent.

`sync` is not a module of its own but the ordered composite of the modules
that have a sync_order: its JOB body names its steps (in sync order) and
carries each step's job fields; its RESULT says, per step, how it went,
and carries the section of each step that ran.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from safcm.common.errors import ProtocolError
from safcm.common.schema import List, Map, OneOf, Optional, Schema, Str, validate
from safcm.common.wire import MAX_BODY_DEPTH
from safcm.common.wire import SYNC as SYNC  # re-exported: the modules speak of it

# A module's name: what the CLI, the wire and the job history spell.
MODULE_NAME = Str(32, min_len=1, pattern=r"[a-z][a-z0-9_]*")
# Longest error message or failure reason, in characters (as common/protocol.py).
MAX_REASON_CHARS = 64 * 1024


class StepStatus:
    """How one step of a sync went (RESULT "steps")."""

    OK = "ok"  # ran, and succeeded
    FAILED = "failed"  # ran, and something in it failed: later steps did not run
    ERROR = "error"  # could not run at all (see its error): later steps did not run
    NOT_RUN = "not run"  # an earlier step failed

    ALL = (OK, FAILED, ERROR, NOT_RUN)
    RAN = (OK, FAILED)  # the steps whose section the result carries


@dataclass(frozen=True)
class ModuleWire:
    name: str
    job_fields: Mapping[str, Schema]
    result_key: str | None
    result_schema: Schema | None = None
    options: Schema | None = None
    sync_order: int | None = None
    job_problem: Callable[[Mapping[str, Any]], str | None] = lambda fields: None
    # (its section, the result's "reduced" or None) -> True, False, or None
    succeeded: Callable[[Mapping[str, Any], Mapping[str, Any] | None], bool | None] = (
        lambda section, reduced: True
    )


_STEP = Map(
    {
        "module": MODULE_NAME,
        "status": OneOf(StepStatus.ALL),
        "error": Optional(Str(MAX_REASON_CHARS)),
    }
)


@functools.cache
def wires() -> dict[str, ModuleWire]:
    """Every module's wire, by name: the WIRE of each file in this package."""
    table: dict[str, ModuleWire] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        wire = importlib.import_module(f"{__name__}.{info.name}").WIRE
        if not isinstance(wire, ModuleWire) or wire.name != info.name:
            raise RuntimeError(f"common/modules/{info.name}.py: its WIRE must be named {info.name}")
        table[wire.name] = wire
    _check_table(table)
    return table


def _check_table(table: Mapping[str, ModuleWire]) -> None:
    """Refuse, at the first use, modules whose fields or keys collide."""
    job_keys: set[str] = set()  # a job body's, and a result's: apart
    result_keys: set[str] = set()
    for wire in table.values():
        if wire.name == SYNC:
            raise RuntimeError(f"{SYNC} is the composite, not a module")
        keys = [(k, job_keys) for k in wire.job_fields]
        if wire.result_key is not None:
            keys.append((wire.result_key, result_keys))
        for key, taken in keys:
            if key in taken or key in _RESERVED:
                raise RuntimeError(f"module {wire.name}: key {key!r} is taken")
            taken.add(key)


# Keys of the common fields, never a module's.
_RESERVED = frozenset(
    ("module", "dry_run", "deadline", "steps", "status", "started", "finished", "error", "reduced")
)


def names() -> list[str]:
    """Every module's name (sync not included)."""
    return list(wires())


def sync_steps(table: Mapping[str, ModuleWire] | None = None) -> list[str]:
    """The modules that take part in sync, in the order sync runs them (of
    `table`: every module's wire unless a test gives its own)."""
    table = wires() if table is None else table
    taking = [w for w in table.values() if w.sync_order is not None]
    return [w.name for w in sorted(taking, key=lambda w: (w.sync_order, w.name))]


def is_module(name: object) -> bool:
    """A name a job may carry: a module's, or sync."""
    return name == SYNC or name in wires()


class ModuleBody(Schema):
    """A JOB or RESULT body: `common` fields, and those of its module (for
    sync, of every module that can be a step) from this package's table.
    Which of a sync job's fields must be present, and which sections a
    result carries, job_problem() and result_problem() check."""

    def __init__(self, common: Mapping[str, Schema], part: str, depth: int) -> None:
        self.common = dict(common)
        self.part = part  # "job" or "result"
        # The deepest any module's body may nest (checked as each is composed):
        # what the messages that carry this body leave of MAX_BODY_DEPTH.
        self.depth = depth

    def check(self, value: Any) -> None:
        if type(value) is not dict:
            Map({}).check(value)  # says "expected a map, got ..."
        module = value.get("module")
        if not is_module(module):
            # says "missing key 'module'" or ".module: expected one of ..."
            known = OneOf([*wires(), SYNC])
            Map({"module": known}).check({k: v for k, v in value.items() if k == "module"})
        composed(self, module).check(value)


def composed(body: ModuleBody, module: str) -> Map:
    """The Map a body of `module` (a module, or sync) is checked with."""
    cache = body.__dict__.setdefault("_maps", {})
    if module not in cache:
        cache[module] = _compose(body, module)
    composed: Map = cache[module]
    return composed


def _compose(body: ModuleBody, module: str) -> Map:
    table = wires()
    fields = dict(body.common)
    optional: set[str] = set()
    if body.part == "job":
        if module == SYNC:
            fields["steps"] = List(OneOf(sync_steps()), len(table), min_items=1)
            for name in sync_steps():
                fields.update(table[name].job_fields)
                optional.update(table[name].job_fields)
        else:
            fields.update(table[module].job_fields)
    else:
        fields["steps"] = List(_STEP, len(table))
        optional.add("steps")
        for wire in table.values():
            if wire.result_key is not None:
                fields[wire.result_key] = Optional(wire.result_schema or Map({}))
                optional.add(wire.result_key)
    composed = Map(fields, optional=optional | (fields.keys() & body.common.keys() & _OPTIONAL))
    if composed.depth > body.depth:
        raise RuntimeError(f"a {module} {body.part} body nests deeper than {body.depth}")
    return composed


class ModuleOptions(Schema):
    """A RUN request's options: a map, checked against its module's options
    schema by check_options() (which module is another field of the RUN)."""

    # The RUN map holds it: one level less than a body.
    depth = MAX_BODY_DEPTH - 1

    def check(self, value: Any) -> None:
        if type(value) is not dict:
            Map({}).check(value)  # says "expected a map, got ..."


# Common fields that may be absent (a result's "reduced" and "resumed").
_OPTIONAL = frozenset(("reduced", "resumed"))


def job_problem(body: Mapping[str, Any]) -> str | None:
    """Cross-field problems of a JOB body that fits its schema, or None."""
    table = wires()
    if body["module"] == SYNC:
        steps = body["steps"]
        if steps != [s for s in sync_steps() if s in steps]:
            return f"sync steps {', '.join(steps)}: not each once in sync order"
        for wire in table.values():
            present = [k for k in wire.job_fields if k in body]
            if present and wire.name not in steps:
                return f"it carries {wire.name} fields, and {wire.name} is not one of its steps"
            if wire.name in steps and len(present) != len(wire.job_fields):
                return f"its step {wire.name} lacks some of its fields"
    else:
        steps = [body["module"]]
    for name in steps:
        wire = table[name]
        problem = wire.job_problem({k: body[k] for k in wire.job_fields})
        if problem is not None:
            return problem
    return None


def result_problem(body: Mapping[str, Any]) -> str | None:
    """Cross-field problems of a RESULT body that fits its schema, or None.

    A module's section is set exactly when that module ran (a step of a
    sync ran when its status is ok or failed); the status is ok exactly
    when every section that ran says it succeeded."""
    module, status = body["module"], body["status"]
    ran = status != "error"
    if module == SYNC:
        steps = body.get("steps")
        if (steps is not None) != ran:
            return "steps is set exactly for a sync job that ran"
        steps = steps or []
        order = [s["module"] for s in steps]
        if order != [s for s in sync_steps() if s in order]:
            return "its steps are not each once in sync order"
        for s in steps:
            if (s["status"] == StepStatus.ERROR) != (s["error"] is not None):
                return f"step {s['module']}: error is set exactly when its status is error"
        step_status = {s["module"]: s["status"] for s in steps}
    else:
        if "steps" in body:
            return "steps is set only for a sync job"
        step_status = {module: None} if ran else {}
    all_ok = all(s in (StepStatus.OK, None) for s in step_status.values())
    for wire in wires().values():
        if wire.result_key is None:
            continue
        section = body.get(wire.result_key)
        has_run = wire.name in step_status and step_status[wire.name] in (None, *StepStatus.RAN)
        if (section is not None) != has_run:
            return f"{wire.result_key} is set exactly for a {wire.name} job or step that ran"
        if section is None:
            continue
        said = wire.succeeded(section, body.get("reduced"))
        mine = step_status[wire.name]
        if mine is None:
            all_ok = all_ok and said is not False
            if said is None and status != "ok":
                all_ok = False  # details left out: the minion's word stands
        elif said is not None and said != (mine == StepStatus.OK):
            return f"step {wire.name}: its status {mine} contradicts its {wire.result_key}"
    if ran and all_ok != (status == "ok"):
        return f"status {status} contradicts the {module} result"
    return None


def check_options(module: str, options: Any) -> None:
    """ProtocolError unless `options` are what a RUN of `module` may pass
    (None: nothing beyond target and dry run)."""
    schema = wires()[module].options if module in wires() else None
    if schema is None:
        if options is not None:
            raise ProtocolError(f"RUN body.options: {module} takes no options")
        return
    validate(schema, options, "RUN body.options")
