"""The files module on the minion: apply a host's files (minion/fileops.py,
whose planner is minion/plan.py) and run their triggers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from safcm.common.errors import SafcmError
from safcm.common.model import AbsentSpec
from safcm.common.modules.files import WIRE
from safcm.minion import fileops
from safcm.minion.modules import Context, Done, MinionModule

CONTENT_MISSING = (
    "the content of some files did not arrive from the master before the job's "
    "deadline; nothing was applied"
)


def execute(fields: Mapping[str, Any], ctx: Context, hold: bool) -> Done:
    """Apply the files; with `hold` (steps follow in a sync), their triggers
    are owed until the end, and run by the Done's after()."""
    files = ctx.resolve_files(fields["files"])
    if files is None:  # a job is applied whole or not at all
        return Done(None, False, CONTENT_MISSING)
    settings = ctx.settings
    try:
        apply = fileops.apply_files(
            settings.root,
            files,
            dry_run=ctx.dry_run,
            state_dir=settings.state_dir,
            jid=ctx.jid,
            absent=[AbsentSpec.from_wire(a) for a in fields["absent"]],
            purge=fields["purge"],
            secrets=fields["secrets"],
            trigger_timeout=settings.trigger_timeout,
            hold_triggers=hold,
        )
    except SafcmError as e:  # the lock is held, or the root cannot be opened
        return Done(None, False, str(e))
    section = apply.to_wire()
    if not hold or ctx.dry_run or not apply.ok:
        return Done(section, apply.ok)
    return Done(section, True, after=lambda all_ok: _held_triggers(section, ctx, all_ok))


def _held_triggers(section: dict[str, Any], ctx: Context, all_ok: bool) -> bool:
    """The end of a sync: run the triggers held while later steps ran, if
    every step succeeded; otherwise they stay owed, as after a failed apply."""
    if all_ok:
        settings = ctx.settings
        try:
            runs = fileops.run_owed_triggers(
                settings.root,
                state_dir=settings.state_dir,
                trigger_timeout=settings.trigger_timeout,
            )
        except SafcmError as e:  # they stay owed
            section["failures"].append({"path": "", "reason": f"triggers not run: {e}"})
        else:
            section["triggers"] = [run.to_wire() for run in runs]
            section["owed"] = []
    return WIRE.succeeded(section, None) is not False


MODULE = MinionModule(WIRE.name, execute)
