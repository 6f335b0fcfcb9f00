"""The ping module on the minion: its version and its clock."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from safcm.common.modules.ping import WIRE
from safcm.minion.modules import Context, Done, MinionModule


def execute(fields: Mapping[str, Any], ctx: Context, hold: bool) -> Done:
    """Nothing to apply, so a dry run answers as a real one."""
    return Done({"version": ctx.version, "time": ctx.now()}, True)


MODULE = MinionModule(WIRE.name, execute)
