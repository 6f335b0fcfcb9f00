"""The services planner (minion/svcplan.py): systemd's state and the wish in,
verbs out. One case per line."""

from __future__ import annotations

import pytest

from safcm.common.services import Enablement, UnitSpec, UnitState
from safcm.minion.svcplan import outcome_problem, plan, plan_unit

E, D, M = Enablement.ENABLED, Enablement.DISABLED, Enablement.MASKED
WISH = {
    "enable": (E, True),
    "disable": (D, False),
    "mask": (M, False),
    "start": (None, True),
    "stop": (None, False),
}


def state(file_state: str, active: str, load: str = "loaded", result: str = "success") -> UnitState:
    sub = {"active": "running", "inactive": "dead", "failed": "failed"}.get(active, active)
    return UnitState(load=load, active=active, sub=sub, file_state=file_state, result=result)


def spec(wish: str, unit: str = "u.service") -> UnitSpec:
    enablement, running = WISH[wish]
    return UnitSpec(unit, enablement, running)


@pytest.mark.parametrize(
    ("wish", "file_state", "active", "verbs"),
    [
        ("enable", "disabled", "inactive", ["enable", "start"]),
        ("enable", "enabled", "active", []),
        ("enable", "enabled", "failed", ["start"]),
        ("enable", "enabled-runtime", "active", ["enable"]),
        ("enable", "linked", "active", ["enable"]),
        ("enable", "masked", "inactive", ["unmask", "enable", "start"]),
        ("enable", "masked-runtime", "inactive", ["unmask", "enable", "start"]),
        ("enable", "static", "inactive", ["start"]),  # no [Install]: not ours to enable
        ("enable", "indirect", "active", []),
        ("enable", "enabled", "reloading", []),
        ("enable", "enabled", "deactivating", ["start"]),
        ("disable", "enabled", "active", ["stop", "disable"]),
        ("disable", "disabled", "inactive", []),
        ("disable", "disabled", "failed", []),  # failed counts as stopped
        ("disable", "enabled-runtime", "inactive", ["disable"]),
        ("disable", "masked", "inactive", ["unmask", "disable"]),
        ("disable", "static", "active", ["stop"]),
        ("disable", "disabled", "activating", ["stop"]),
        ("mask", "enabled", "active", ["stop", "mask"]),
        ("mask", "masked", "inactive", []),
        ("mask", "masked-runtime", "inactive", ["mask"]),
        ("mask", "static", "inactive", ["mask"]),
        ("start", "disabled", "inactive", ["start"]),
        ("start", "disabled", "active", []),
        ("stop", "enabled", "active", ["stop"]),
        ("stop", "enabled", "inactive", []),
    ],
)
def test_plan(wish, file_state, active, verbs):
    p = plan_unit(spec(wish), state(file_state, active))
    assert [str(v) for v in p.verbs] == verbs
    assert p.refusal is None
    assert p.acts == bool(verbs)


NOT_FOUND = state("", "inactive", load="not-found")


@pytest.mark.parametrize(
    ("wish", "verbs", "refusal"),
    [
        ("enable", [], "u.service not found: no unit file defines it"),
        ("start", [], "u.service not found: no unit file defines it"),
        ("disable", [], None),  # already disabled and stopped
        ("stop", [], None),
        ("mask", ["mask"], None),  # a mask needs no unit file
    ],
)
def test_a_unit_systemd_does_not_know(wish, verbs, refusal):
    p = plan_unit(spec(wish), NOT_FOUND)
    assert ([str(v) for v in p.verbs], p.refusal) == (verbs, refusal)


def test_a_masked_unit_is_not_started_unless_declared_enabled():
    p = plan_unit(spec("start"), state("masked", "inactive", load="masked"))
    assert p.verbs == () and p.refusal is not None and "masked" in p.refusal


def test_a_unit_this_run_delivers_is_planned_as_new_in_a_dry_run():
    states = {"new.service": NOT_FOUND, "gone.service": NOT_FOUND}
    specs = [spec("enable", "new.service"), spec("enable", "gone.service")]
    plans = plan(specs, states, delivered=frozenset({"new.service"}))
    assert [str(v) for v in plans[0].verbs] == ["enable", "start"]
    assert plans[0].before == NOT_FOUND  # reported as it is now
    assert plans[1].refusal is not None


@pytest.mark.parametrize(
    ("wish", "after", "started", "problem"),
    [
        ("enable", state("enabled", "active"), True, None),
        ("start", state("disabled", "inactive"), True, None),  # a oneshot that finished
        ("start", state("disabled", "failed", result="exit-code"), True, "did not start"),
        ("start", state("disabled", "inactive", result="exit-code"), True, "did not start"),
        ("start", state("disabled", "inactive"), False, "did not start"),
        ("stop", state("disabled", "active"), False, "did not stop"),
        ("mask", state("disabled", "inactive"), False, "not masked"),
        ("disable", state("disabled", "inactive"), False, None),
    ],
)
def test_outcome(wish, after, started, problem):
    found = outcome_problem(spec(wish), after, started)
    assert (found is None) == (problem is None)
    if problem:
        assert problem in found
