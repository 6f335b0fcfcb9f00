"""The files module on the master: compile each host's files from the
repository (master/compiler.py), and show what applying them did."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from safcm.master.modules import MasterModule, Request

if TYPE_CHECKING:
    from safcm.master.render import Style


def compile_files(repo: Any, hosts: list[str], request: Request) -> dict[str, dict[str, Any]]:
    """Each host's files, absent paths, purged directories and secrets;
    ConfigError naming every problem of every host."""
    from safcm.master.compiler import compile_hosts

    configs = compile_hosts(repo, hosts, request.facts)
    # A spec that several hosts get (the compiler shares the repository's
    # spec unless a template or trigger changes it) has one wire form, shared:
    # 10,000 hosts with the same 100 files hash 100 files and make 100 maps,
    # not a million. Nothing changes a job's file maps or lists once built
    # (the job store's manifest_of() and with_content() copy them). By id():
    # the specs live in `configs` as long as these maps.
    wire: dict[int, dict[str, Any]] = {}

    def wire_of(spec: Any) -> dict[str, Any]:
        found = wire.get(id(spec))
        if found is None:
            found = wire[id(spec)] = spec.to_wire()
        return found

    # Hosts that get the very same specs (the compiler shares a contest's
    # files among the hosts in the same groups) share one list of them too,
    # so the job store packs it once (master/jobcontent.py).
    lists: dict[tuple[int, ...], list[dict[str, Any]]] = {}

    def files_of(config: Any) -> list[dict[str, Any]]:
        specs = config.specs()
        key = tuple(map(id, specs))
        found = lists.get(key)
        if found is None:
            found = lists[key] = [wire_of(spec) for spec in specs]
        return found

    return {
        host: {
            "files": files_of(config),
            "absent": [a.to_wire() for a in config.absent],
            "purge": list(config.purge),
            "secrets": list(config.secrets),
        }
        for host, config in configs.items()
    }


def render(apply: Mapping[str, Any], style: Style) -> list[str]:
    from safcm.common.model import ApplyResult
    from safcm.master.render import render_apply

    return render_apply(ApplyResult.from_wire(dict(apply)), style)


def to_json(apply: Mapping[str, Any]) -> dict[str, Any]:
    from safcm.master.jsonout import change_document

    return dict(apply, changes=[change_document(c) for c in apply["changes"]])


MODULE = MasterModule(
    name="files",
    result_key="apply",
    summary="make the files as configured, then run their triggers",
    compile=compile_files,
    render=render,
    to_json=to_json,
    changes=lambda apply: len(apply["changes"]),
    reads_repository=True,
    reports_changes=True,
)
