"""`<group>/packages.yaml`: the packages a group's hosts must have, or must not.

    # web/packages.yaml
    install:
      - nginx
      - curl=7.88.1-10+deb12u5    # exactly this version (upgraded or downgraded to it)
    remove:
      - telnet

Both keys are optional; names and versions follow Debian policy
(common/packages.py). `install` means installed, at the version given if one
is; an installed package without a version is not upgraded. `remove` means
not installed (apt-get remove: its configuration files stay). One group may
name a package once.

Conflicts follow the rules of files (master/compiler.py): a package named by
several groups of a host, to install or to remove, at the same version or
not, is taken from the group that outranks every other (the host's own
group beats every group, "all" loses to every group, group_order ranks the
groups it lists); if no group outranks all others, that is an error naming
the package, the files and lines, and the groups group_order does not rank.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from safcm.common.packages import MAX_PACKAGES, PackageSpec, Want, name_problem, version_problem
from safcm.common.yamlfile import KIND_NAMES, Problems, YMap, YScalar, YSeq, kind_of, load_yaml_file

if TYPE_CHECKING:
    from safcm.master.repository import Repository

PACKAGES_FILE = "packages.yaml"
PACKAGES_KEYS = ("install", "remove")


@dataclass(frozen=True, slots=True)
class CompiledPackage:
    """One package of a host's result, with the group whose packages.yaml won."""

    spec: PackageSpec
    group: str


@dataclass(frozen=True, slots=True)
class PackageEntry:
    """One package one group's packages.yaml names."""

    spec: PackageSpec
    file: str  # repo-relative packages.yaml
    line: int


def read_packages(root: str, group: str, problems: Problems) -> dict[str, PackageEntry]:
    """`<group>/packages.yaml`, by package name; {} when there is none. Problems are added."""
    file = f"{group}/{PACKAGES_FILE}"
    node = load_yaml_file(root, file, problems)
    found: dict[str, PackageEntry] = {}
    if node is None:
        return found
    if not isinstance(node, YMap):
        problems.add(
            file, node.line, f"packages.yaml must be {KIND_NAMES[YMap]}, not {kind_of(node)}"
        )
        return found
    for key, value in node.items:
        if key.text not in PACKAGES_KEYS:
            problems.add(
                file,
                key.line,
                f"unknown key {key.text!r} in packages.yaml (expected: {', '.join(PACKAGES_KEYS)})",
            )
            continue
        want = Want(key.text)
        if isinstance(value, YScalar) and value.text == "":
            continue  # "remove:" with nothing under it
        if not isinstance(value, YSeq):
            problems.add(
                file, value.line, f"{key.text!r} must be {KIND_NAMES[YSeq]}, not {kind_of(value)}"
            )
            continue
        for item in value.items:
            if not isinstance(item, YScalar):
                problems.add(
                    file, item.line, f"a package must be {KIND_NAMES[YScalar]}, not {kind_of(item)}"
                )
                continue
            spec = _parse(item, want, file, problems)
            if spec is None:
                continue
            first = found.get(spec.name)
            if first is not None:
                problems.add(
                    file,
                    item.line,
                    f"package {spec.name} is named twice (first at line {first.line})",
                )
                continue
            if len(found) >= MAX_PACKAGES:
                problems.add(file, item.line, f"more than {MAX_PACKAGES} packages")
                break
            found[spec.name] = PackageEntry(spec, file, item.line)
    return found


def _parse(item: YScalar, want: Want, file: str, problems: Problems) -> PackageSpec | None:
    name, eq, version = item.text.partition("=")
    problem = name_problem(name)
    if problem is None and eq:
        if want is Want.REMOVE:
            problem = "a package to remove has no version"
        else:
            problem = version_problem(version)
    if problem is not None:
        problems.add(file, item.line, f"{item.text!r}: {problem}")
        return None
    return PackageSpec(name, want, version if eq else None)


def compile_packages(
    repo: Repository, host: str, groups: list[str], problems: Problems
) -> list[CompiledPackage]:
    """The packages of `host` (in `groups`), sorted by name; a conflict is a problem."""
    named: dict[str, list[tuple[str, PackageEntry]]] = {}
    for group in groups:
        for name, entry in repo.packages.get(group, {}).items():
            named.setdefault(name, []).append((group, entry))
    result: list[CompiledPackage] = []
    for name in sorted(named):
        cands = named[name]
        winner = next(
            (
                (g, e)
                for g, e in reversed(cands)
                if all(repo.outranks(g, other, host) for other, _ in cands if other != g)
            ),
            None,
        )
        if winner is not None:
            result.append(CompiledPackage(winner[1].spec, winner[0]))
            continue
        # Imported here: the compiler imports the repository, which imports this module.
        from safcm.master.compiler import unranked_where

        top = [(g, e) for g, e in cands if not any(repo.outranks(o, g, host) for o, _ in cands)]
        where = " and ".join(f"{g!r} ({e.file}:{e.line})" for g, e in top)
        first = top[0][1]
        problems.add(
            first.file,
            first.line,
            f"package {name} is named by groups {where}, and {unranked_where(repo)};"
            " list them in group_order or name the package in one group only",
        )
    return result
