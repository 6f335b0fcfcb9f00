"""minion/systemctl.py against a real systemd: state read through
`systemctl show`, verbs by exit status, a failed start with its reason."""

from __future__ import annotations

import json

import pytest

from safcm.common.services import ServicesResult, UnitOutcome, UnitSpec
from tests.hosts.units import BROKEN, FAILING, SLEEPER, WISHES, unit_text

APPLY = """
import json, sys
from safcm.common.services import UnitSpec
from safcm.minion import systemctl
args = json.load(sys.stdin)
specs = [UnitSpec.from_wire(s) for s in args["specs"]]
result = systemctl.apply(specs, dry_run=args["dry_run"], reload=args["reload"])
print(json.dumps(result.to_wire()))
"""


def apply(m, specs: list[UnitSpec], dry_run=False, reload=False) -> ServicesResult:
    args = {"specs": [s.to_wire() for s in specs], "dry_run": dry_run, "reload": reload}
    out = m.run("/opt/safcm/bin/python3", "-c", APPLY, input=json.dumps(args)).stdout
    return ServicesResult.from_wire(json.loads(out))


def wish(unit: str, name: str) -> UnitSpec:
    return UnitSpec(unit, *WISHES[name])


@pytest.mark.parametrize("name", ["enable", "start"])
def test_dry_run_then_real_run_then_nothing(booted, name):
    unit = f"layer-{name}.service"
    booted.write(f"/etc/systemd/system/{unit}", unit_text(SLEEPER))
    dry = apply(booted, [wish(unit, name)], dry_run=True, reload=True)
    real = apply(booted, [wish(unit, name)], reload=True)
    assert [c.actions for c in dry.changes] == [c.actions for c in real.changes]
    assert [c.outcome for c in real.changes] == [UnitOutcome.APPLIED]
    assert real.changes[0].after.active == "active"
    assert apply(booted, [wish(unit, name)]).changes == ()


@pytest.mark.parametrize(
    ("text", "said"), [(BROKEN, "/nonexistent"), (FAILING, "config file missing")]
)
def test_a_unit_that_fails_to_start_fails_with_systemds_reason(booted, text, said):
    unit, other = f"layer-broken-{len(text)}.service", f"layer-other-{len(text)}.service"
    booted.write(f"/etc/systemd/system/{unit}", unit_text(text))
    result = apply(booted, [wish(unit, "enable"), wish(other, "mask")], reload=True)
    by_unit = {c.unit: c for c in result.changes}
    broken = by_unit[unit]
    assert broken.outcome is UnitOutcome.FAILED and broken.actions == ("enable", "start")
    assert "Result=exit-code" in broken.reason, broken.reason
    assert said in broken.reason, broken.reason
    assert broken.after.file_state == "enabled" and broken.after.active == "failed"
    # The other unit is applied all the same.
    assert by_unit[other].outcome is UnitOutcome.APPLIED
    assert by_unit[other].after.file_state == "masked"
