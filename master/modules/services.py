"""The services module on the master: compile each host's units from the
groups' services.yaml (master/services.py), and show what was done to them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from safcm.master.modules import MasterModule

if TYPE_CHECKING:
    from safcm.master.render import Style


def compile_units(repo: Any, hosts: list[str], request: Any) -> dict[str, dict[str, Any]]:
    """Each host's units; ConfigError naming every problem of every host."""
    from safcm.common.errors import ConfigError
    from safcm.common.yamlfile import Problems
    from safcm.master import services

    # Read with the repository, and cached with it (master/repocache.py).
    if repo.services.problems:
        raise ConfigError(repo.services.problems)
    declared = repo.services.declared
    problems = Problems()
    fields = {
        host: {
            "units": [
                u.to_wire()
                for u in services.host_units(
                    # Detected groups too (a host's own facts only, as files compiles).
                    declared,
                    repo,
                    host,
                    problems,
                    request.facts.get(host) if request is not None else None,
                )
            ]
        }
        for host in hosts
    }
    if problems:
        raise ConfigError(problems.by_file())
    return fields


def render(section: Mapping[str, Any], style: Style) -> list[str]:
    """One line per unit: what was done, its state before and after; a
    failed unit's reason (systemd's, and its journal) below it."""
    from safcm.common.services import ServicesResult, UnitOutcome
    from safcm.common.text import escape
    from safcm.master.render import INDENT, escape_lines

    result = ServicesResult.from_wire(dict(section))
    lines = []
    if result.reloaded:
        reload = "would reload" if result.dry_run else "reloaded"
        lines.append(f"{INDENT}{style.dim(f'systemd: unit files {reload} (daemon-reload)')}")
    for c in result.changes:
        unit = style.bold(escape(c.unit))
        actions = ", ".join(c.actions) or "nothing"
        before = escape(c.before.describe())
        if c.outcome is UnitOutcome.WOULD_APPLY:
            lines.append(f"{INDENT}{style.cyan('would ' + actions)} {unit} (now {before})")
            continue
        after = "unknown" if c.after is None else escape(c.after.describe())
        if c.outcome is UnitOutcome.APPLIED:
            lines.append(f"{INDENT}{style.green(actions)} {unit}: {before} -> {after}")
            continue
        lines.append(f"{INDENT}{style.red('FAILED ' + actions)} {unit}: {before} -> {after}")
        lines.extend(f"{INDENT}{INDENT}{line}" for line in escape_lines(c.reason))
    return lines


MODULE = MasterModule(
    name="services",
    result_key="services",
    summary="make systemd units enabled, started, disabled, stopped or masked as declared",
    compile=compile_units,
    render=render,
    changes=lambda section: len(section["changes"]),
)
