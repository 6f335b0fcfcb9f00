"""The master's module registry: for each module, how the master builds each
host's job body (compile) and shows its results (human and --json).

How to add a module (say `foo`); nothing else changes:

1. common/modules/foo.py: `WIRE = ModuleWire(name="foo", ...)`: its job
   fields, its result key and schema, the options a RUN passes it, and
   `sync_order` if it takes part in `sync` (packages 10, files 20,
   services 30: lower runs first). common/protocol.py composes the JOB and
   RESULT schemas from these files; no line to add there.
2. minion/modules/foo.py and "foo" in minion/modules/__init__.py REGISTERED
   (that file says what the minion part holds).
3. master/modules/foo.py: `MODULE = MasterModule(...)` (fields below), and
   the one line here: "foo" in REGISTERED. Keep its top light (import the
   compiler, the model and the like inside the functions): the CLI imports
   this registry for every command.
4. For --json: the schema of its result section in docs/schema/common.json
   ("result" properties, keyed by its result_key; null when absent), so
   that tests/schemas.py validates it.
5. Tests: its compile and render (tests/master/), its planner
   (tests/minion/), and a system test with real daemons (tests/system/).

`run TARGET sync` runs, in one job, every registered module that has a
sync_order, in that order; the minion runs the steps one after the other
and stops at the first that fails. The triggers of files run last, after
every other step (minion/modules/__init__.py).
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple

from safcm.common.wire import SYNC as SYNC  # re-exported

if TYPE_CHECKING:
    from safcm.master.facts import HostFacts
    from safcm.master.render import Style

# The registration: one line per module, the name of its file here.
REGISTERED = (
    "files",
    "ping",
    "cmd",
    "packages",
    "services",
)


# NOTE: light on purpose (no dataclasses, no schemas at the top): `run --help`
# and `jobs list` import it for the module names.


class Request(NamedTuple):
    """What a RUN asks of a module, beyond its targets."""

    options: Any  # the RUN's options for the module (cmd: its argv), or None
    timeout: float  # seconds: the run's --timeout, or master.yaml job_timeout
    dry_run: bool
    # What each host last reported about itself (master/facts.py): the files
    # module compiles each host with its own, and nothing else sees them.
    facts: Mapping[str, HostFacts] = MappingProxyType({})


class MasterModule(NamedTuple):
    name: str
    # The key of its section in a RESULT body: its wire's result_key
    # (common/modules/), said again here so that the CLI, which reads
    # results, need not load the wires and the protocol behind them
    # (tests/master/test_modules.py holds the two equal).
    result_key: str
    # One line for `run --help` and the docs.
    summary: str
    # (the loaded repository, the targeted hosts, the request) -> the job
    # fields of each host; ConfigError for a repository problem, which stops
    # the run before anything is sent. None: no fields of its own.
    compile: Callable[[Any, list[str], Request], dict[str, dict[str, Any]]] | None
    # (its result section, the style) -> the lines that show it, each string
    # from the minion escaped (common/text.py).
    render: Callable[[Mapping[str, Any], Style], list[str]]
    # Its result section as --json shows it (times ISO 8601, modes as text).
    to_json: Callable[[Mapping[str, Any]], dict[str, Any]] = dict
    # How many things its section reports changed (0: the host is "ok").
    changes: Callable[[Mapping[str, Any]], int] = lambda section: 0
    # Whether compile() needs the whole repository (files, packages: a group's
    # files and packages); otherwise only its hosts and groups are read, so a
    # problem in a group's files cannot stop it (ping, cmd).
    reads_repository: bool = False
    # Whether its results count changes: a host with none is "unchanged"
    # (files); otherwise "ok" (ping, cmd).
    reports_changes: bool = False
    # The job's deadline, seconds from its start, when it needs more than
    # the run's timeout (cmd: its command's timeout and the time to report).
    job_seconds: Callable[[Request], float] = lambda request: request.timeout


def names() -> list[str]:
    """What `run` takes as MODULE: every module, and sync. Light: loads none."""
    return [*REGISTERED, SYNC]


# sync's line for `run --help`, as the minion runs it (minion/modules/
# __init__.py run()): its steps in sync_order (common/modules/), which
# tests/master/test_cli_parser.py holds this to.
SYNC_SUMMARY = (
    "packages, then files, then services, in one job (a step that fails stops"
    " those after it); the triggers of files run last, only if every step succeeded"
)


def summaries() -> dict[str, str]:
    """Each MODULE's line for `run --help`, sync's last. Light: loads each
    module's file here (whose top is light), not its wire."""
    lines = {
        name: importlib.import_module(f"{__name__}.{name}").MODULE.summary for name in REGISTERED
    }
    return {**lines, SYNC: SYNC_SUMMARY}


@functools.cache
def modules() -> dict[str, MasterModule]:
    """Every registered module, by name, loaded on first use. Light: not
    their wires (tests/master/test_modules.py checks each has one)."""
    table: dict[str, MasterModule] = {}
    for name in REGISTERED:
        module = importlib.import_module(f"{__name__}.{name}").MODULE
        if not isinstance(module, MasterModule) or module.name != name:
            raise RuntimeError(f"master/modules/{name}.py: its MODULE must be named {name}")
        table[name] = module
    return table


def steps_of(module: str) -> list[str]:
    """The registered modules a job of `module` runs: itself, or sync's steps
    (their order is the wires': loaded for sync only)."""
    if module != SYNC:
        return [module]
    from safcm.common import modules as wire

    return [name for name in wire.sync_steps() if name in modules()]


def sections(result: Mapping[str, Any]) -> list[tuple[MasterModule, Mapping[str, Any]]]:
    """The module sections a RESULT body carries, in the order they ran."""
    if result["module"] == SYNC:
        order = [s["module"] for s in result.get("steps") or []]
    else:
        order = [result["module"]]
    found = []
    for name in order:
        module = modules().get(name)
        if module is not None and result.get(module.result_key) is not None:
            found.append((module, result[module.result_key]))
    return found


def change_count(result: Mapping[str, Any]) -> int:
    """How many things a RESULT body reports changed, also those a reduced
    result left out (minion/results.py fit())."""
    reduced = result.get("reduced")
    omitted = 0 if reduced is None else reduced["changes_omitted"]
    return sum(module.changes(section) for module, section in sections(result)) + omitted


def render_result(result: Mapping[str, Any], style: Style) -> list[str]:
    """The lines of every section of a RESULT body; for sync, each step's
    status first (a step that failed, could not run, or did not run)."""
    if result["module"] != SYNC:
        return [
            line for module, section in sections(result) for line in module.render(section, style)
        ]
    # Here, not at the top: a result of one module needs no wire (modules()).
    from safcm.common.modules import StepStatus
    from safcm.common.text import escape
    from safcm.master.render import INDENT

    lines = []
    shown = dict(sections_by_name(result))
    for step in result.get("steps") or []:
        name, status = step["module"], step["status"]
        word = {
            StepStatus.OK: style.green("ok"),
            StepStatus.FAILED: style.red("FAILED"),
            StepStatus.ERROR: style.red("could not run"),
            StepStatus.NOT_RUN: style.yellow("not run (an earlier step failed)"),
        }.get(status, escape(status))
        lines.append(f"{INDENT}{style.bold(escape(name))}: {word}")
        if step["error"]:
            lines.append(f"{INDENT}{INDENT}{style.red('error:')} {escape(step['error'])}")
        module, section = shown.get(name, (None, None))
        if module is not None and section is not None:
            lines.extend(INDENT + line for line in module.render(section, style))
    return lines


def sections_by_name(
    result: Mapping[str, Any],
) -> list[tuple[str, tuple[MasterModule, Mapping[str, Any]]]]:
    return [(module.name, (module, section)) for module, section in sections(result)]


def result_json(result: Mapping[str, Any]) -> dict[str, Any]:
    """A RESULT body's module sections as --json shows them: every module's
    key, null for those that did not run (so a reader finds each key)."""
    doc: dict[str, Any] = {module.result_key: None for module in modules().values()}
    for module, section in sections(result):
        doc[module.result_key] = module.to_json(section)
    return doc
