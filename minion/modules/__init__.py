"""The minion's module registry: which modules this minion can run, and how
a job of one module, or of `sync`, becomes a result.

How to add a module (say `foo`); nothing else changes:

1. common/modules/foo.py: `WIRE = ModuleWire(name="foo", ...)`, its job
   fields, result key and schema, options, and SYNC_ORDER if it takes part
   in sync (common/modules/__init__.py says what each field means). The
   wire finds it by its file; common/protocol.py composes it.
2. minion/modules/foo.py: `MODULE = MinionModule("foo", execute)`. Keep the
   deciding pure (a planner: job fields and what the host has in, the
   actions out) and the executor thin; execute() calls both, and in a dry
   run stops before it acts and reports what it would do. It returns a
   Done; it raises nothing for a problem of the host (that is a Done with
   ok=False, or section=None and the error, when it could not run at all).
3. The one line here: "foo" in REGISTERED.
4. master/modules/foo.py, and its one line in master/modules/__init__.py
   (that file says what the master part holds).
5. Tests: tests/minion/test_<foo>.py for the planner, a system test with
   real daemons, and its result section in docs/schema/common.json
   ("result" properties) for --json.

A job runs on the worker thread (one job at a time on this host). A job of
a module this minion does not accept (minion.yaml `modules:`) is answered
with an error result that says so, and a sync job with such a step is
refused whole: nothing of it runs.

sync runs its steps in the order the job names them (the master orders
them by SYNC_ORDER, common/protocol.py checks that it did). A step that
fails or cannot run stops the steps after it ("not run"). A step may defer
work to the end (Done.after): files holds its triggers while steps follow,
and they run last, once every step has run, only if every step succeeded
(otherwise they stay owed on the host, as after any failed apply).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from safcm.common import modules as wire
from safcm.common.modules import SYNC, StepStatus

if TYPE_CHECKING:
    from safcm.common.model import FileSpec
    from safcm.minion.settings import MinionSettings

# The registration: one line per module, the name of its file here.
REGISTERED = (
    "files",
    "ping",
    "cmd",
    "services",
)


@dataclass
class Context:
    """What a module's executor may use besides its job fields."""

    settings: MinionSettings
    jid: str
    dry_run: bool
    deadline: float  # the job's, as this minion's clock reads it
    version: str  # this minion's
    now: Callable[[], float]  # the time, on the master's clock as far as we know it
    # The files of a job with all their content (from the job, the cache or
    # the master); None if some never came before the deadline.
    resolve_files: Callable[[list[dict[str, Any]]], list[FileSpec] | None]
    # The sections of the steps of this sync that ran before, by result key
    # (services reads what files changed: a unit file means a daemon-reload).
    sections: dict[str, Any] = field(default_factory=dict)


@dataclass
class Done:
    """What one module did with its job (or its step of a sync)."""

    # Its RESULT section (the wire's result_key); None when it could not
    # run at all, and then `error` says why.
    section: dict[str, Any] | None
    ok: bool  # everything in it succeeded
    error: str | None = None
    # Work deferred until every step of a sync ran, given whether all of
    # them succeeded; it may update `section`, and returns the new `ok`.
    after: Callable[[bool], bool] | None = None


@dataclass(frozen=True)
class MinionModule:
    name: str
    # (its job fields, the context, hold) -> Done. `hold`: steps follow in
    # this sync job, so work that must come last goes into Done.after.
    execute: Callable[[Mapping[str, Any], Context, bool], Done]


def _load() -> dict[str, MinionModule]:
    table: dict[str, MinionModule] = {}
    wires = wire.wires()
    for name in REGISTERED:
        module = importlib.import_module(f"{__name__}.{name}").MODULE
        if not isinstance(module, MinionModule) or module.name != name:
            raise RuntimeError(f"minion/modules/{name}.py: its MODULE must be named {name}")
        if name not in wires:
            raise RuntimeError(f"module {name} has no wire (common/modules/{name}.py)")
        table[name] = module
    return table


# Every module this minion can run, by name.
MODULES: Mapping[str, MinionModule] = _load()


def refusal(module: str, steps: list[str], accepted: frozenset[str]) -> str | None:
    """Why this minion refuses a job of `module` (with `steps`, for sync),
    or None. `accepted` is minion.yaml `modules:`."""
    for name in steps if module == SYNC else [module]:
        if name not in accepted or name not in MODULES:
            how = "" if module != SYNC else ", a step of this sync job; no step was run"
            return f"this minion does not accept module {name} (minion.yaml modules:){how}"
    return None


def run(
    body: Mapping[str, Any],
    ctx: Context,
    table: Mapping[str, MinionModule] | None = None,
    wires: Mapping[str, wire.ModuleWire] | None = None,
) -> dict[str, Any]:
    """Run a job whose module this minion accepts (refusal() is None): the
    RESULT fields beyond the times (module, status, error, the sections,
    and for sync the steps). `table` and `wires`: the registered modules
    and their wire, unless a test gives its own."""
    table = MODULES if table is None else table
    wires = wire.wires() if wires is None else wires

    def execute(name: str, hold: bool) -> Done:
        fields = {k: body[k] for k in wires[name].job_fields}
        return table[name].execute(fields, ctx, hold)

    def section(name: str, done: Done) -> dict[str, Any]:
        key = wires[name].result_key
        return {} if key is None else {key: done.section}

    module = body["module"]
    if module != SYNC:
        done = execute(module, hold=False)
        if done.section is None:
            return {"module": module, "status": "error", "error": _why(done)}
        return {
            "module": module,
            "status": "ok" if done.ok else "failed",
            "error": None,
            **section(module, done),
        }
    names = list(body["steps"])
    ran: list[tuple[str, Done]] = []
    for i, name in enumerate(names):
        done = execute(name, hold=i < len(names) - 1)
        ran.append((name, done))
        ctx.sections.update(section(name, done))
        if not done.ok:
            break  # the steps after it are not run
    all_ok = all(done.ok for _, done in ran) and len(ran) == len(names)
    for _, done in ran:
        if done.after is not None:
            done.ok = done.after(all_ok)
    result: dict[str, Any] = {"module": SYNC, "error": None, "steps": []}
    for name, done in ran:
        step: dict[str, str | None]
        if done.section is None:
            step = {"module": name, "status": StepStatus.ERROR, "error": _why(done)}
        else:
            status = StepStatus.OK if done.ok else StepStatus.FAILED
            step = {"module": name, "status": status, "error": None}
            result.update(section(name, done))
        result["steps"].append(step)
    for name in names[len(ran) :]:
        result["steps"].append({"module": name, "status": StepStatus.NOT_RUN, "error": None})
    ok = all(s["status"] == StepStatus.OK for s in result["steps"])
    result["status"] = "ok" if ok else "failed"
    return result


def _why(done: Done) -> str:
    return done.error or "the module could not run"
