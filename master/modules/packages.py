"""The packages module on the master: each host's packages from the
repository's packages.yaml files (master/packages.py), and what apt did."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from safcm.master.modules import MasterModule

if TYPE_CHECKING:
    from safcm.master.render import Style


def compile_packages(repo: Any, hosts: list[str], request: Any) -> dict[str, dict[str, Any]]:
    """Each host's packages, settled between its groups; ConfigError naming
    every problem of every host (a conflict several hosts share, once)."""
    from safcm.common.errors import ConfigError
    from safcm.common.yamlfile import Problems
    from safcm.master import packages

    fields: dict[str, dict[str, Any]] = {}
    problems = Problems()
    for host in hosts:
        found = Problems()
        # Detected groups too (a host's own facts only, as files compiles).
        groups = repo.groups_of(host, request.facts.get(host) if request is not None else None)
        compiled = packages.compile_packages(repo, host, groups, found)
        problems.extend(p for p in found if p not in problems)
        fields[host] = {"package_specs": [p.spec.to_wire() for p in compiled]}
    if problems:
        raise ConfigError(problems)
    return fields


# The verb of each action, done and (dry run) to be done.
_VERBS = {
    "installed": ("installed", "would install"),
    "upgraded": ("upgraded", "would upgrade"),
    "downgraded": ("downgraded", "would downgrade"),
    "reinstalled": ("reinstalled", "would reinstall"),
    "removed": ("removed", "would remove"),
    "configured": ("configured", "would configure"),
}


def render(section: Mapping[str, Any], style: Style) -> list[str]:
    from safcm.common.text import escape
    from safcm.master.render import INDENT, escape_lines

    dry = section["dry_run"]
    lines = []
    for c in section["changes"]:
        done, would = _VERBS.get(c["action"], (c["action"], c["action"]))
        verb = would if dry else done
        colour = style.red if c["action"] in ("removed", "downgraded") else style.green
        if c["old"] is not None and c["new"] is not None and c["old"] != c["new"]:
            versions = f"{escape(c['old'])} -> {escape(c['new'])}"
        else:
            versions = escape(c["new"] if c["new"] is not None else c["old"] or "")
        lines.append(f"{INDENT}{colour(verb)} package {style.bold(escape(c['name']))} {versions}")
    for u in section["unsettled"]:
        lines.append(
            f"{INDENT}{style.red('unsettled:')} package {style.bold(escape(u['name']))}"
            f" {escape(u['version'])} is {escape(u['status'])} in dpkg"
            " (an install or removal did not finish; see apt's output, then"
            " `dpkg --configure -a` or reinstall it)"
        )
    if section["error"] is not None:
        lines.append(f"{INDENT}{style.red('apt failed:')} {escape(section['error'])}")
        lines.extend(f"{INDENT}{INDENT}{line}" for line in escape_lines(section["output"]))
    return lines


MODULE = MasterModule(
    name="packages",
    result_key="packages",
    summary="install and remove packages as packages.yaml says (apt)",
    compile=compile_packages,
    render=render,
    changes=lambda section: len(section["changes"]),
    reads_repository=True,
    reports_changes=True,
)
