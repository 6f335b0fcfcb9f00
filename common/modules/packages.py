"""The packages module's wire: a host's packages (common/packages.py), and
what apt did to them (minion/apt.py PackagesOutcome).

What a minion reports is checked for size and form only: package names and
versions are the host's dpkg's, shown escaped, never trusted to follow
Debian policy."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from safcm.common import codec
from safcm.common.modules import ModuleWire
from safcm.common.packages import (
    MAX_PACKAGE_NAME,
    MAX_PACKAGE_VERSION,
    MAX_PACKAGES,
    NAME_RE,
    VERSION_RE,
    Action,
    Want,
)
from safcm.common.schema import Bool, Float, List, Map, OneOf, Optional, Str

NAME = "packages"
# In sync: first, since files may configure what a package installs and
# name its users and groups.
SYNC_ORDER = 10
# Longest apt failure reason and apt output a result carries, in characters
# (minion/apt.py keeps less: one line, and 20 lines of 500 characters).
MAX_ERROR_CHARS = 4096
MAX_OUTPUT_CHARS = 16 * 1024
# Longest "want flag status" dpkg prints ("install reinstreq half-installed").
MAX_STATUS_CHARS = 64
# Changes a run may report (the packages asked for and what apt pulled in):
# as many as a list on the wire may hold.
MAX_CHANGES = codec.MAX_LIST_ITEMS

PACKAGE_SPEC = Map(
    {
        "name": Str(MAX_PACKAGE_NAME, min_len=2, pattern=NAME_RE.pattern),
        "want": OneOf(Want),
        "version": Optional(Str(MAX_PACKAGE_VERSION, min_len=1, pattern=VERSION_RE.pattern)),
    }
)
_HOST_NAME = Str(MAX_PACKAGE_NAME, min_len=1)
_HOST_VERSION = Str(MAX_PACKAGE_VERSION)
PACKAGE_CHANGE = Map(
    {
        "name": _HOST_NAME,
        "action": OneOf(Action),
        "old": Optional(_HOST_VERSION),  # null: it was not installed
        "new": Optional(_HOST_VERSION),  # null: it is removed
    }
)
PACKAGES_RESULT = Map(
    {
        "dry_run": Bool(),
        "changes": List(PACKAGE_CHANGE, MAX_CHANGES),
        # packages dpkg left in the middle of an operation (after the run;
        # a dry run: now), with dpkg's "want flag status"
        "unsettled": List(
            Map({"name": _HOST_NAME, "status": Str(MAX_STATUS_CHARS), "version": _HOST_VERSION}),
            MAX_CHANGES,
        ),
        "error": Optional(Str(MAX_ERROR_CHARS)),  # why apt (or dpkg-query) failed
        "output": Str(MAX_OUTPUT_CHARS),  # apt's last lines when it failed
        "duration": Float(0, 1e9),
    }
)


def _job_problem(fields: Mapping[str, Any]) -> str | None:
    seen: set[str] = set()
    for p in fields["package_specs"]:
        if p["name"] in seen:
            return f"package {p['name']} is named twice"
        seen.add(p["name"])
        if p["version"] is not None and p["want"] != Want.INSTALL:
            return f"package {p['name']}: only a package to install has a version"
    return None


def _succeeded(section: Mapping[str, Any], reduced: Mapping[str, Any] | None) -> bool | None:
    return section["error"] is None and not section["unsettled"]


WIRE = ModuleWire(
    name=NAME,
    job_fields={"package_specs": List(PACKAGE_SPEC, MAX_PACKAGES)},
    result_key="packages",
    result_schema=PACKAGES_RESULT,
    sync_order=SYNC_ORDER,
    job_problem=_job_problem,
    succeeded=_succeeded,
)
