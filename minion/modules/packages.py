"""The packages module on the minion: apt and dpkg (minion/apt.py, whose
planner is minion/packages.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from safcm.common.modules.packages import WIRE
from safcm.common.packages import PackageSpec
from safcm.minion.apt import apply_packages
from safcm.minion.modules import Context, Done, MinionModule


def execute(fields: Mapping[str, Any], ctx: Context, hold: bool) -> Done:
    """Plan against dpkg's state, then run apt-get (a dry run: apt-get -s).

    Packages are the machine's whatever the minion's `root`: that setting
    places the files module's tree, while apt and dpkg always act on the
    host (their own configuration can point them elsewhere: apt_config)."""
    settings = ctx.settings
    outcome = apply_packages(
        [PackageSpec.from_wire(p) for p in fields["package_specs"]],
        dry_run=ctx.dry_run,
        apt_config=settings.apt_config,
        timeout=settings.apt_timeout,
    )
    return Done(outcome.to_wire(), outcome.ok)


MODULE = MinionModule(WIRE.name, execute)
