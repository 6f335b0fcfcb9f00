"""The services module's only contact with systemd: systemctl and journalctl.

NOTE: machine-readable output only. States come from `systemctl show
--property=...` (key=value lines, one block per unit, documented as stable
in systemctl(1) and org.freedesktop.systemd1(5)); a verb's success is its exit
status. Nothing parses what systemctl prints for people. The one text read
for people is the unit's own journal, passed on as it is, as the reason of a
unit that failed.

apply() is the whole run: ask systemd for every declared unit's state,
reload its unit files first when something changed them (the files step of
the same sync changed a file under a unit directory, or systemd says a
unit's file changed on disk: NeedDaemonReload), plan (minion/svcplan.py,
pure), run the plan, and ask again for the state after. A dry run stops
after the plan and changes nothing, not even a daemon-reload.

One unit's failure is that unit's: the others are still applied.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterable

from safcm.common.errors import SafcmError
from safcm.common.services import (
    MAX_UNIT_REASON_CHARS,
    ServicesResult,
    UnitChange,
    UnitOutcome,
    UnitSpec,
    UnitState,
)
from safcm.minion import svcplan
from safcm.minion.children import CHILD_UMASK
from safcm.minion.svcplan import Verb

# The properties a UnitState is made of, and NeedDaemonReload.
PROPERTIES = ("Id", "LoadState", "ActiveState", "SubState", "UnitFileState", "Result")
RELOAD_PROPERTY = "NeedDaemonReload"
# Seconds a systemctl call may take. A start waits for the unit to start, and
# systemd gives a unit 90 s by default (DefaultTimeoutStartSec) before it
# fails the start itself; a few seconds more, so systemd's verdict comes first.
SYSTEMCTL_TIMEOUT = 100.0
# Seconds before the job's deadline at which a verb stops waiting for
# systemd, so that the result (that unit failed: no answer) still reaches
# the master in time; and the least a verb is given all the same.
DEADLINE_MARGIN = 5.0
MIN_VERB_TIMEOUT = 1.0
# Lines of a failed unit's journal reported with its failure.
JOURNAL_LINES = 10
# Directories whose change makes systemd need a daemon-reload (the unit
# search path of systemd.unit(5), the system manager's part).
UNIT_DIRS = ("/etc/systemd/", "/run/systemd/", "/lib/systemd/", "/usr/lib/systemd/")
# systemctl and journalctl in the C locale, never paged, never coloured.
_ENV = {
    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    "LC_ALL": "C",
    "SYSTEMD_PAGER": "",
    "SYSTEMD_COLORS": "0",
}


class SystemdError(SafcmError):
    """systemd could not be asked at all (no systemctl, no running systemd):
    the services module cannot run on this host."""


def touches_units(paths: Iterable[str]) -> bool:
    """Whether a change to any of `paths` needs a daemon-reload."""
    return any(p.startswith(UNIT_DIRS) for p in paths)


def apply(
    specs: list[UnitSpec],
    *,
    dry_run: bool,
    reload: bool = False,
    delivered: frozenset[str] = frozenset(),
    deadline: float | None = None,
) -> ServicesResult:
    """Make the units as `specs` say (see the module docstring). `reload`:
    unit files changed in this run; `delivered`: units whose file this run
    delivers (a dry run plans them as new units); `deadline`: the job's, in
    time.time() seconds, which bounds how long a verb waits for systemd.
    Raises SystemdError."""
    units = [s.unit for s in specs]
    states, need_reload = show(units)
    reload = reload or need_reload
    if reload and not dry_run:
        daemon_reload()
        states, _ = show(units)
    plans = svcplan.plan(specs, states, delivered if dry_run else frozenset())
    acting = [p for p in plans if p.acts]
    if dry_run:
        return ServicesResult(True, reload, tuple(_would(p) for p in acting))
    # unit -> (the verb that failed, None for a refusal; what went wrong)
    errors: dict[str, tuple[Verb | None, str]] = {}
    # The journal of a failed unit is read from here on: this run's lines.
    since = int(time.time())
    for p in acting:
        if p.refusal is not None:
            errors[p.spec.unit] = (None, p.refusal)
            continue
        for verb in p.verbs:
            error = _run_verb(verb, p.spec.unit, _verb_timeout(deadline))
            if error is not None:
                errors[p.spec.unit] = (verb, error)
                break
    after, _ = show([p.spec.unit for p in acting]) if acting else ({}, False)
    changes = tuple(_done(p, after[p.spec.unit], errors.get(p.spec.unit), since) for p in acting)
    return ServicesResult(False, reload, changes)


def _would(p: svcplan.UnitPlan) -> UnitChange:
    if p.refusal is not None:
        return UnitChange(p.spec.unit, (), p.before, None, UnitOutcome.FAILED, p.refusal)
    verbs = tuple(str(v) for v in p.verbs)
    return UnitChange(p.spec.unit, verbs, p.before, None, UnitOutcome.WOULD_APPLY)


def _done(
    p: svcplan.UnitPlan, after: UnitState, error: tuple[Verb | None, str] | None, since: int
) -> UnitChange:
    """The change of one unit that was acted on: applied, or failed with
    systemd's reason (a failed start: the unit's states and its journal)."""
    unit = p.spec.unit
    verbs = tuple(str(v) for v in p.verbs)
    failed_verb, problem = error if error is not None else (None, None)
    # A start was tried: every verb before it succeeded, or the start itself failed.
    started = Verb.START in p.verbs and (error is None or failed_verb is Verb.START)
    if problem is None:
        problem = svcplan.outcome_problem(p.spec, after, started)
        if problem is None:
            return UnitChange(unit, verbs, p.before, after, UnitOutcome.APPLIED)
    elif started:
        problem += f"\nActiveState={after.active} SubState={after.sub} Result={after.result}"
    if started:
        problem += f"\n{journal_tail(unit, since)}"
    return UnitChange(unit, verbs, p.before, after, UnitOutcome.FAILED, _bounded(problem.strip()))


def _bounded(reason: str) -> str:
    """The reason within MAX_UNIT_REASON_CHARS: its start (what failed, the
    unit's states) and its end (the journal's last lines) kept."""
    if len(reason) <= MAX_UNIT_REASON_CHARS:
        return reason
    cut = "\n[...]\n"
    head = MAX_UNIT_REASON_CHARS // 4
    return reason[:head] + cut + reason[-(MAX_UNIT_REASON_CHARS - head - len(cut)) :]


def show(units: list[str]) -> tuple[dict[str, UnitState], bool]:
    """Each unit's state, and whether systemd wants a daemon-reload for any
    of them. One call: systemctl prints one block per unit, in order,
    separated by an empty line."""
    if not units:
        return {}, False
    properties = ",".join((*PROPERTIES, RELOAD_PROPERTY))
    out = _systemctl("show", f"--property={properties}", "--", *units)
    blocks = [b for b in out.split("\n\n") if b.strip()]
    if len(blocks) != len(units):
        raise SystemdError(f"systemctl show gave {len(blocks)} states for {len(units)} units")
    states: dict[str, UnitState] = {}
    need_reload = False
    for unit, block in zip(units, blocks, strict=True):
        values = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        missing = [p for p in (*PROPERTIES, RELOAD_PROPERTY) if p not in values]
        if missing:
            raise SystemdError(f"systemctl show {unit}: no {', '.join(missing)} in its output")
        states[unit] = UnitState(
            load=values["LoadState"],
            active=values["ActiveState"],
            sub=values["SubState"],
            file_state=values["UnitFileState"],
            result=values["Result"],
        )
        need_reload = need_reload or values[RELOAD_PROPERTY] == "yes"
    return states, need_reload


def daemon_reload() -> None:
    _systemctl("daemon-reload")


def journal_tail(unit: str, since: int) -> str:
    """The last lines of the unit's journal since `since` (epoch seconds),
    as they were logged; "" if the journal cannot be read.

    The line that says why often comes from a process of the unit that is
    gone by the time journald reads it ("Failed to locate executable ..."
    from the unit's own process before its exec). journald then cannot
    tell its cgroup, so the line lacks _SYSTEMD_UNIT, which is all that
    `journalctl -u` matches for a process other than PID 1: it was left out
    under load (3 of 12 runs of the hosts test with both cores busy). So
    journald first takes in what was logged so far (--sync), and the lines
    are matched as -u does, and also by the UNIT= field systemd's code
    writes, from root's processes only (nobody else can put a line in the
    reason)."""
    argv = ["journalctl", "--no-pager", "-o", "cat", "-n", str(JOURNAL_LINES)]
    argv += [f"--since=@{since}", f"_SYSTEMD_UNIT={unit}", "+", f"UNIT={unit}", "_UID=0"]
    argv += ["+", f"OBJECT_SYSTEMD_UNIT={unit}", "_UID=0", "+", f"COREDUMP_UNIT={unit}", "_UID=0"]
    try:
        subprocess.run(
            ["journalctl", "--sync"], capture_output=True, env=_ENV,
            timeout=SYSTEMCTL_TIMEOUT, check=False, umask=CHILD_UMASK,
        )  # fmt: skip
        result = subprocess.run(
            argv, capture_output=True, text=True, errors="replace", env=_ENV,
            timeout=SYSTEMCTL_TIMEOUT, check=False, umask=CHILD_UMASK,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return result.stdout.strip()


def _verb_timeout(deadline: float | None) -> float:
    if deadline is None:
        return SYSTEMCTL_TIMEOUT
    left = deadline - time.time() - DEADLINE_MARGIN
    return min(SYSTEMCTL_TIMEOUT, max(MIN_VERB_TIMEOUT, left))


def _run_verb(verb: Verb, unit: str, timeout: float) -> str | None:
    """Run one verb; what went wrong, or None. A verb that times out is
    abandoned here; systemd goes on with its job."""
    try:
        _systemctl(str(verb), "--", unit, timeout=timeout)
    except SystemdError as e:
        return str(e)
    return None


def _systemctl(*args: str, timeout: float = SYSTEMCTL_TIMEOUT) -> str:
    argv = ["systemctl", "--no-ask-password", *args]
    try:
        result = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            errors="replace",
            env=_ENV,
            timeout=timeout,
            check=False,
            umask=CHILD_UMASK,  # not the daemon's private one (minion/children.py)
        )
    except FileNotFoundError as e:
        raise SystemdError("systemctl is not installed on this host") from e
    except subprocess.TimeoutExpired as e:
        raise SystemdError(
            f"systemctl {' '.join(args)}: no answer in {SYSTEMCTL_TIMEOUT:.0f} s"
        ) from e
    if result.returncode != 0:
        message = result.stderr.strip() or f"exit status {result.returncode}"
        raise SystemdError(f"systemctl {' '.join(args)}: {message}")
    return result.stdout


def environment_problem(root: str) -> str | None:
    """Why the services module cannot run on this minion, or None: it manages
    the running system's units, so only a minion whose root is / may."""
    if os.path.realpath(root) != "/":
        return f"services need root: / (this minion manages {root}, not the running system)"
    return None
