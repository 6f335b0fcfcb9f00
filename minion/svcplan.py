"""Decide what to do to each unit: a pure function of the wish and systemd's state.

plan() takes a host's UnitSpecs (common/services.py) and the state of each
unit as systemd reported it, and returns, per unit, the systemctl verbs to
run in order, or why nothing can be done. It runs nothing: minion/systemctl.py
asks systemd for the state, runs the plan, and asks again. A dry run is the
same plan, reported instead of run, so it says exactly what the real run
would do from the same state.

The verbs run in this order, so that each one finds what it needs:

    stop      before the unit is masked or disabled (a masked unit can
              still be stopped, but nothing may start it in between)
    unmask    before enable or start: a masked unit can do neither
    mask
    disable
    enable    before start, so that a unit that fails to start is still
              enabled at boot as declared
    start

Enablement. A unit file's state (UnitFileState) decides:
- enabled: nothing for "enabled"; anything that is not enabled by us and
  cannot be (static, indirect, generated, transient, alias: no [Install]
  section or not ours to change) is left as it is, as `systemctl enable`
  itself would.
- "enabled-runtime" and "linked" are enabled for this boot only: enable
  makes it last. A masked unit is unmasked first.
- disabled: disable what is enabled or linked; a masked unit is unmasked
  and disabled (unmasking alone could leave it enabled).
- masked: mask what is not masked (or only for this boot).

Running: start a unit that is not active (or reloading); stop one that is
active, activating, reloading or deactivating. A failed unit counts as
stopped.

A unit systemd does not know (LoadState not-found) cannot be enabled or
started; it is already disabled and stopped, and masking it is allowed (a
mask is a link to /dev/null and needs no unit file). In a dry run of a sync,
a unit whose file the files step of the same run would deliver is planned as
a new, disabled and stopped unit (`delivered`), as the real run finds it
after its daemon-reload.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from safcm.common.services import Enablement, UnitSpec, UnitState


class Verb(enum.StrEnum):
    STOP = "stop"
    UNMASK = "unmask"
    MASK = "mask"
    DISABLE = "disable"
    ENABLE = "enable"
    START = "start"


# The order verbs run in (see above).
VERB_ORDER = (Verb.STOP, Verb.UNMASK, Verb.MASK, Verb.DISABLE, Verb.ENABLE, Verb.START)

# UnitFileState values (systemctl(1), is-enabled).
ENABLED_FOR_GOOD = frozenset({"enabled"})
ENABLED_FOR_NOW = frozenset({"enabled-runtime", "linked", "linked-runtime"})
MASKED_FOR_GOOD = frozenset({"masked"})
MASKED_STATES = frozenset({"masked", "masked-runtime"})
# Enablement systemctl enable and disable do not change.
NOT_OURS = frozenset({"static", "indirect", "generated", "transient", "alias"})
# ActiveState values that count as running, and those a stop changes.
RUNNING = frozenset({"active", "reloading"})
STOPPABLE = frozenset({"active", "activating", "reloading", "deactivating"})
NOT_FOUND = "not-found"
# How a delivered, not yet loaded unit is planned in a dry run.
NEW_UNIT = UnitState(load="loaded", active="inactive", sub="dead", file_state="disabled", result="")


@dataclass(frozen=True, slots=True)
class UnitPlan:
    spec: UnitSpec
    before: UnitState
    verbs: tuple[Verb, ...]
    refusal: str | None = None  # why the unit cannot be made as declared

    @property
    def acts(self) -> bool:
        return bool(self.verbs) or self.refusal is not None


def plan(
    specs: list[UnitSpec],
    states: Mapping[str, UnitState],
    delivered: frozenset[str] = frozenset(),
) -> list[UnitPlan]:
    """Every unit's plan, in the order of `specs`. `states` has a state for
    every unit; `delivered` names units whose file this run delivers but
    systemd has not loaded yet (dry run only)."""
    return [plan_unit(spec, states[spec.unit], spec.unit in delivered) for spec in specs]


def plan_unit(spec: UnitSpec, state: UnitState, delivered: bool = False) -> UnitPlan:
    before = state
    if state.load == NOT_FOUND and delivered:
        state = NEW_UNIT
    verbs: set[Verb] = set()
    if state.load == NOT_FOUND:
        if spec.enablement is Enablement.ENABLED or spec.running:
            return UnitPlan(spec, before, (), f"{spec.unit} not found: no unit file defines it")
        if spec.enablement is Enablement.MASKED and state.file_state not in MASKED_FOR_GOOD:
            verbs.add(Verb.MASK)
        return UnitPlan(spec, before, _ordered(verbs))
    masked = state.file_state in MASKED_STATES
    if spec.enablement is Enablement.ENABLED:
        if masked:
            verbs |= {Verb.UNMASK, Verb.ENABLE}
        elif state.file_state not in ENABLED_FOR_GOOD and state.file_state not in NOT_OURS:
            verbs.add(Verb.ENABLE)
    elif spec.enablement is Enablement.DISABLED:
        if masked:
            verbs |= {Verb.UNMASK, Verb.DISABLE}
        elif state.file_state in ENABLED_FOR_GOOD | ENABLED_FOR_NOW:
            verbs.add(Verb.DISABLE)
    elif spec.enablement is Enablement.MASKED and state.file_state not in MASKED_FOR_GOOD:
        verbs.add(Verb.MASK)
    if spec.running is True and state.active not in RUNNING:
        if masked and Verb.UNMASK not in verbs:
            reason = f"{spec.unit} is masked: it cannot start; declare it under enable to unmask it"
            return UnitPlan(spec, before, (), reason)
        verbs.add(Verb.START)
    elif spec.running is False and state.active in STOPPABLE:
        verbs.add(Verb.STOP)
    return UnitPlan(spec, before, _ordered(verbs))


def _ordered(verbs: set[Verb]) -> tuple[Verb, ...]:
    return tuple(v for v in VERB_ORDER if v in verbs)


def outcome_problem(spec: UnitSpec, after: UnitState, started: bool) -> str | None:
    """Why the unit, as systemd reports it after the run, is not as declared
    (or None). `started` says whether this run started it: a unit that
    stopped again at once failed to start, unless it finished as a oneshot
    does (inactive, Result success)."""
    finished = started and after.active == "inactive" and after.result == "success"
    if spec.running is True and after.active not in RUNNING and not finished:
        return (
            f"{spec.unit} did not start: ActiveState={after.active}"
            f" SubState={after.sub} Result={after.result}"
        )
    if spec.running is False and after.active in STOPPABLE:
        return f"{spec.unit} did not stop: ActiveState={after.active} SubState={after.sub}"
    if spec.enablement is Enablement.MASKED and after.file_state not in MASKED_FOR_GOOD:
        return f"{spec.unit} is not masked: UnitFileState={after.file_state}"
    return None
