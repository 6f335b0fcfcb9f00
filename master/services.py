"""<group>/services.yaml: read it, and compile a host's units from its groups.

    # <group>/services.yaml: each key a list of units ("nginx" is
    # "nginx.service", as systemctl reads it)
    enable: [nginx, ssh.socket]     # enabled at boot, and running now
    disable: [apache2]              # disabled at boot, and stopped now
    mask: [telnet.socket]           # masked (nothing can start it), stopped now
    start: [backup.timer]           # running now; boot left as it is
    stop: [debug-shell]             # stopped now; boot left as it is

A unit appears at most once in one file. The same unit declared by several
of a host's groups is settled as files are (master/compiler.py): groups that
declare the same thing agree and never conflict; otherwise the declaration of
the group that outranks every disagreeing one wins (the host's own group
beats every group, "all" loses to every group, group_order ranks the groups
it lists), and without such a group it is an error that names the unit, the
groups and their lines, as a file provided by two unranked groups is.

Reading checks everything that needs no host: the keys, that each unit is a
list item with a valid unit name (not a template without an instance).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from safcm.common.errors import ConfigProblem
from safcm.common.services import (
    MAX_UNITS,
    Enablement,
    UnitSpec,
    unit_name,
    unit_name_problem,
)
from safcm.common.yamlfile import KIND_NAMES, Problems, YMap, YScalar, YSeq, kind_of, load_yaml_file

SERVICES_FILE = "services.yaml"
CONFIG_FILE = "config.yaml"
# Each key of services.yaml and what it asks of its units: (enablement, running).
WISHES: dict[str, tuple[Enablement | None, bool | None]] = {
    "enable": (Enablement.ENABLED, True),
    "disable": (Enablement.DISABLED, False),
    "mask": (Enablement.MASKED, False),
    "start": (None, True),
    "stop": (None, False),
}


@dataclass(frozen=True, slots=True)
class Declared:
    """One unit as one group's services.yaml declares it."""

    spec: UnitSpec
    wish: str  # the key it is listed under
    file: str  # repo-relative, for messages
    line: int


def read_services(root: str, group: str, problems: Problems) -> dict[str, Declared]:
    """The units of `group`'s services.yaml (none if it has none), by full unit name."""
    file = f"{group}/{SERVICES_FILE}"
    node = load_yaml_file(root, file, problems)
    declared: dict[str, Declared] = {}
    if node is None:
        return declared
    if not isinstance(node, YMap):
        problems.add(file, node.line, f"{SERVICES_FILE} must be a mapping, not {kind_of(node)}")
        return declared
    for key, value in node.items:
        wish = WISHES.get(key.text)
        if wish is None:
            expected = ", ".join(WISHES)
            problems.add(file, key.line, f"unknown key {key.text!r} (expected: {expected})")
            continue
        if isinstance(value, YScalar) and value.text == "":
            continue  # "stop:" with nothing listed
        if not isinstance(value, YSeq):
            what = f"{key.text} must be {KIND_NAMES[YSeq]} of units, not {kind_of(value)}"
            problems.add(file, value.line, what)
            continue
        for item in value.items:
            if not isinstance(item, YScalar) or item.text == "":
                problems.add(file, item.line, f"a unit must be a name, not {kind_of(item)}")
                continue
            unit = unit_name(item.text)
            problem = unit_name_problem(unit)
            if problem is not None:
                problems.add(file, item.line, problem)
                continue
            earlier = declared.get(unit)
            if earlier is not None:
                problems.add(
                    file,
                    item.line,
                    f"{unit} is listed twice (under {earlier.wish}, line {earlier.line},"
                    f" and under {key.text}); list it once",
                )
                continue
            declared[unit] = Declared(UnitSpec(unit, *wish), key.text, file, item.line)
    return declared


@dataclass(frozen=True)
class ServicesRead:
    """Every group's services.yaml, as the repository's load read them
    (master/repository.py), and their problems: those stop only the runs
    that compile units (services, sync), not the others."""

    declared: dict[str, dict[str, Declared]]  # group (or host) -> unit -> what it says
    problems: list[ConfigProblem]


def read_all_services(root: str, groups: Iterable[str]) -> ServicesRead:
    """Every group's services.yaml (master/repository.py's load calls it)."""
    problems = Problems()
    declared = {group: read_services(root, group, problems) for group in groups}
    return ServicesRead(declared, problems.by_file())


class Ranking(Protocol):
    """What settling needs of the repository (master/repository.Repository)."""

    group_order_line: int | None

    def groups_of(self, host: str, facts: Any = None) -> list[str]: ...

    def outranks(self, a: str, b: str, host: str) -> bool: ...


def host_units(
    declared: dict[str, dict[str, Declared]],
    repo: Ranking,
    host: str,
    problems: Problems,
    facts: Any = None,
) -> list[UnitSpec]:
    """The host's units, by name: each settled among the host's groups.
    A conflict is added to `problems` and the unit left out."""
    by_unit: dict[str, list[tuple[str, Declared]]] = {}
    for group in repo.groups_of(host, facts):
        for unit, d in declared.get(group, {}).items():
            by_unit.setdefault(unit, []).append((group, d))
    units: list[UnitSpec] = []
    for unit in sorted(by_unit):
        cands = by_unit[unit]
        winner = next(
            (
                (g, d)
                for g, d in reversed(cands)
                if all(repo.outranks(g, og, host) for og, od in cands if od.spec != d.spec)
            ),
            None,
        )
        if winner is None:
            where = " and ".join(f"{d.wish} in {d.file}:{d.line}" for _, d in cands)
            if repo.group_order_line is None:
                unranked = f"no group_order in {CONFIG_FILE} ranks them"
            else:
                unranked = f"group_order ({CONFIG_FILE}:{repo.group_order_line}) does not rank them"
            first = cands[0][1]
            problems.add(
                first.file,
                first.line,
                f"{unit} for {host}: {where}, and {unranked};"
                " list the groups in group_order or make them agree",
            )
            continue
        units.append(winner[1].spec)
    if len(units) > MAX_UNITS:
        problems.add(
            SERVICES_FILE, None, f"{host} has {len(units)} units; a host may have {MAX_UNITS}"
        )
    return units
