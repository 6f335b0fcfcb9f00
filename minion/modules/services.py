"""The services module on the minion: make the host's units as declared
(minion/systemctl.py asks systemd and acts; minion/svcplan.py decides).

In a sync, the files step ran just before: a unit file it changed (or, in
a dry run, would change) makes systemd reload its unit files first, and a
unit whose file it would create is planned as the real run will find it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

from safcm.common.model import Outcome
from safcm.common.modules.services import WIRE
from safcm.common.services import ServicesResult, UnitSpec, unit_name_problem
from safcm.minion import systemctl
from safcm.minion.modules import Context, Done, MinionModule


def execute(fields: Mapping[str, Any], ctx: Context, hold: bool) -> Done:
    specs = [UnitSpec.from_wire(u) for u in fields["units"]]
    reload, delivered = _from_files(ctx.sections.get("apply"), ctx.dry_run)
    nothing = Done(ServicesResult(ctx.dry_run, False, ()).to_wire(), True)
    if not specs and not reload:
        return nothing  # nothing asks for systemd
    problem = systemctl.environment_problem(ctx.settings.root)
    if problem is not None:
        # A unit file in a sandboxed root is no unit of this system's.
        return nothing if not specs else Done(None, False, problem)
    deadline = time.time() + (ctx.deadline - ctx.now())  # the job's, on this clock
    try:
        result = systemctl.apply(
            specs, dry_run=ctx.dry_run, reload=reload, delivered=delivered, deadline=deadline
        )
    except systemctl.SystemdError as e:
        return Done(None, False, str(e))
    return Done(result.to_wire(), not result.failed)


def _from_files(apply: Mapping[str, Any] | None, dry_run: bool) -> tuple[bool, frozenset[str]]:
    """From the files step of this sync (its section, None if none ran):
    whether a unit file changed (would change), and the units whose file it
    creates (would create)."""
    if apply is None:
        return False, frozenset()
    done = Outcome.WOULD_APPLY if dry_run else Outcome.APPLIED
    paths = [c["path"] for c in apply["changes"] if c["outcome"] == done]
    created = {
        os.path.basename(c["path"])
        for c in apply["changes"]
        if c["outcome"] == done and c["created"] and systemctl.touches_units([c["path"]])
    }
    units = frozenset(u for u in created if unit_name_problem(u) is None)
    return systemctl.touches_units(paths), units


MODULE = MinionModule(WIRE.name, execute)
