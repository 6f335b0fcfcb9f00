"""`safcm-master show HOST`: a host's compiled file list, packages and units,
without contacting the host.

The units are compiled as a run compiles them (master/modules/services.py
compile_units, as check does too), so a services.yaml that would stop a run
stops show, with the same problems.

Two forms: a table for people (every string from the repository escaped, so a
file name cannot put control sequences on the terminal) and one JSON
document (--json) for programs. Formatting is pure (format_table,
to_document); show_host() only loads, compiles and writes.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from typing import Any, TextIO

from safcm.common.errors import ConfigError
from safcm.common.model import FileType, is_below
from safcm.common.protocol import FACT_NAMES
from safcm.common.services import UnitSpec
from safcm.common.text import escape
from safcm.master import jsonout
from safcm.master.compiler import CompiledFile, HostConfig, compile_host, load_repository
from safcm.master.facts import HostFacts
from safcm.master.modules import Request
from safcm.master.modules.services import compile_units
from safcm.master.repository import Repository

EXIT_OK = 0
EXIT_CONFIG_ERROR = 2  # DESIGN.md section 7: bad usage or a configuration error


@dataclass(frozen=True, slots=True)
class ShownUnit:
    """One unit of the host, as a run sends it, with the host's groups whose
    services.yaml declares it so (lowest priority first): groups that agree
    share it, so each is named."""

    spec: UnitSpec
    declared_by: tuple[str, ...]


def host_units(repo: Repository, config: HostConfig) -> list[ShownUnit]:
    """`config`'s host's units, by name, compiled as a run compiles them (the
    same facts as its files); ConfigError with every problem of services.yaml."""
    facts = {} if config.facts is None else {config.host: config.facts}
    fields = compile_units(repo, [config.host], Request(None, 0.0, False, facts))
    units = []
    for wire in fields[config.host]["units"]:
        spec = UnitSpec.from_wire(wire)
        by = tuple(g for g in config.groups if _declares(repo, g, spec))
        units.append(ShownUnit(spec, by))
    return units


def _declares(repo: Repository, group: str, spec: UnitSpec) -> bool:
    """Whether `group`'s services.yaml asks exactly `spec` of its unit."""
    declared = repo.services.declared.get(group, {}).get(spec.unit)
    return declared is not None and declared.spec == spec


# Lone surrogates U+DC80..U+DCFF are how Python keeps undecodable bytes
# (surrogateescape); they are shown as the byte they stand for.


def _owner(name: str | None, number: int | None) -> str:
    return name if name is not None else str(number)


def _size_or_target(f: CompiledFile) -> str:
    spec = f.spec
    if spec.type is FileType.FILE:
        return str(len(spec.data))
    if spec.type is FileType.SYMLINK:
        return "-> " + spec.data.decode("utf-8", "surrogateescape")
    return ""


_HEADER = ("PATH", "TYPE", "MODE", "USER", "GROUP", "SIZE/TARGET", "FROM", "TEMPLATE", "NOTES")
# A directory the repository only passes through: created when missing, never changed.
PASSTHROUGH_NOTE = "pass-through (created if missing, never changed)"
SECRET_NOTE = "secret (content never shown)"  # noqa: S105 (a label, not a password)
# A group the host is in because of what it claims about itself (master/facts.py).
DETECTED_NOTE = " (detected from facts)"


def _notes(f: CompiledFile, secret: bool) -> str:
    if f.spec.passthrough:
        return PASSTHROUGH_NOTE
    return SECRET_NOTE if secret else ""


def _is_secret(path: str, config: HostConfig) -> bool:
    return any(is_below(path, secret) for secret in config.secrets)


def format_table(config: HostConfig, units: list[ShownUnit], *, detecting: bool = False) -> str:
    """The human form: a header line, one row per file, its triggers below it;
    then what must be absent, purged, secret, the packages and the units.
    `detecting`: the repository has groups detected from facts (then a host
    without facts is said to be in none)."""
    rows = []
    for f in config.files:
        spec = f.spec
        rows.append(
            [
                escape(spec.path),
                str(spec.type),
                f"{spec.mode:04o}",
                escape(_owner(spec.user, spec.uid)),
                escape(_owner(spec.group, spec.gid)),
                escape(_size_or_target(f)),
                escape(f.group),
                "yes" if f.template else "",
                _notes(f, _is_secret(spec.path, config)),
            ]
        )
    widths = [max(len(r[i]) for r in [list(_HEADER), *rows]) for i in range(len(_HEADER))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    groups = ", ".join(
        escape(g) + (DETECTED_NOTE if g in config.detected else "") for g in config.groups
    )
    out = [f"host {escape(config.host)}: groups {groups} (lowest priority first)"]
    if detecting and config.facts is None:
        out.append("facts: not reported yet (no detected group can hold this host)")
    out.append("")
    out.append(line(list(_HEADER)))
    for f, row in zip(config.files, rows, strict=True):
        out.append(line(row))
        out.extend(f"    trigger: {escape(c)}" for c in f.spec.triggers)
    if config.absent or config.purge or config.secrets or config.packages or units:
        out.append("")
    for a in config.absent:
        out.append(f"absent: {escape(a.path)}{' (recursive)' if a.recursive else ''}")
    out.extend(f"purged: {escape(p)} (undeclared entries are removed)" for p in config.purge)
    out.extend(f"secret: {escape(p)}" for p in config.secrets)
    out.extend(
        f"{p.spec.want}: {escape(p.spec.arg().rstrip('-'))} (from {escape(p.group)})"
        for p in config.packages
    )
    out.extend(
        f"{u.spec.describe()}: {escape(u.spec.unit)}"
        f" (from {', '.join(escape(g) for g in u.declared_by)})"
        for u in units
    )
    out.append("")
    out.append(_summary(config))
    return "\n".join(out) + "\n"


def _summary(config: HostConfig) -> str:
    counts = {t: 0 for t in (FileType.DIR, FileType.FILE, FileType.SYMLINK)}
    for f in config.files:
        counts[f.spec.type] += 1
    templates = sum(1 for f in config.files if f.template)
    triggered = sum(1 for f in config.files if f.spec.triggers)
    passed = sum(1 for f in config.files if f.spec.passthrough)
    return (
        f"{_count(len(config.files), 'path')}: {_count(counts[FileType.DIR], 'directory')}"
        f" ({passed} passed through),"
        f" {_count(counts[FileType.FILE], 'file')} ({templates} from templates),"
        f" {_count(counts[FileType.SYMLINK], 'symlink')}; {triggered} with triggers"
    )


def _count(n: int, noun: str) -> str:
    if n == 1:
        return f"1 {noun}"
    return f"{n} {noun[:-1]}ies" if noun.endswith("y") else f"{n} {noun}s"


def to_document(config: HostConfig, units: list[ShownUnit]) -> dict[str, Any]:
    """The --json form: only str, int, bool, None, lists and dicts."""
    files = []
    for f in config.files:
        spec = f.spec
        is_file = spec.type is FileType.FILE
        secret = _is_secret(spec.path, config)
        files.append(
            {
                "path": spec.path,
                "type": str(spec.type),
                "mode": f"{spec.mode:04o}",
                "user": spec.user,
                "uid": spec.uid,
                "group": spec.group,
                "gid": spec.gid,
                "size": len(spec.data) if is_file else None,
                # Not even a hash of a secret: a hash of a short password can be guessed.
                "sha256": hashlib.sha256(spec.data).hexdigest() if is_file and not secret else None,
                "target": spec.data.decode("utf-8") if spec.type is FileType.SYMLINK else None,
                "provider": f.group,
                "source": f.source,
                "template": f.template,
                "triggers": list(spec.triggers),
                "passthrough": spec.passthrough,
                "secret": secret,
            }
        )
    return {
        "host": config.host,
        "groups": list(config.groups),
        "detected": list(config.detected),
        # every fact, null where the host could not tell (templates see those missing)
        "facts": None
        if config.facts is None
        else {name: config.facts.get(name) for name in FACT_NAMES},
        "files": files,
        "absent": [a.to_wire() for a in config.absent],
        "purge": list(config.purge),
        "secrets": list(config.secrets),
        "packages": [
            {
                "name": p.spec.name,
                "want": str(p.spec.want),
                "version": p.spec.version,
                "provider": p.group,
            }
            for p in config.packages
        ],
        "services": [
            {
                "unit": u.spec.unit,
                "wish": u.spec.describe(),  # as services.yaml says it
                # what the job asks (common/services.py UnitSpec)
                "enablement": None if u.spec.enablement is None else str(u.spec.enablement),
                "running": u.spec.running,
                "declared_by": list(u.declared_by),
            }
            for u in units
        ],
    }


def show_host(
    repo_dir: str,
    host: str,
    *,
    as_json: bool,
    out: TextIO,
    err: TextIO | None = None,
    facts: HostFacts | None = None,
) -> int:
    """Print `host`'s compiled files, packages and units to `out`, compiled
    with the facts it reported (`facts`; None: they could not be read); the
    exit code for the CLI.

    A configuration error or an unknown host: every problem on `err`
    (default stderr), exit code 2; with `as_json` also the error document
    (master/jsonout.py) on `out`, else nothing.
    """
    err = sys.stderr if err is None else err
    try:
        repo = load_repository(repo_dir)
        config = compile_host(repo, host, facts)
        units = host_units(repo, config)
    except ConfigError as e:
        message = f"cannot show {host}: configuration error in {repo_dir}"
        print(f"safcm-master: {escape(message)}:", file=err)
        for problem in e.problems:
            print(f"  {escape(str(problem))}", file=err)
        if as_json:
            problems = [{"file": p.file, "line": p.line, "message": p.message} for p in e.problems]
            _write_json(jsonout.error_document("config", message, problems), out)
        return EXIT_CONFIG_ERROR
    if as_json:
        _write_json(jsonout.show_document(to_document(config, units)), out)
    else:
        out.write(format_table(config, units, detecting=bool(repo.detected)))
    return EXIT_OK


def _write_json(document: dict[str, Any], out: TextIO) -> None:
    json.dump(document, out, indent=2)
    out.write("\n")
