"""Debian packages as both sides see them: names, versions, what a host wants.

The master reads them from `<group>/packages.yaml` (master/packages.py) and
sends each host its list; the minion plans and applies it with apt
(minion/packages.py, minion/apt.py). The grammar is Debian policy's
(section 5.6.1 for names, 5.6.12 for versions), checked on both sides, so a
name can never be taken for an apt-get option or carry a shell or terminal
character: it never starts with "-", and holds only [a-z0-9+.-].
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any

# Policy 5.6.1: lowercase letters, digits, "+", "-", "."; at least two
# characters, starting with a letter or a digit.
NAME_RE = re.compile(r"[a-z0-9][a-z0-9+.-]+")
# Policy 5.6.12: [epoch:]upstream[-revision]; upstream starts with a digit.
VERSION_RE = re.compile(r"(?:[0-9]+:)?[0-9][A-Za-z0-9.+~:-]*")
# dpkg has no hard limit; these bound what the wire carries.
MAX_PACKAGE_NAME = 128
MAX_PACKAGE_VERSION = 128
MAX_PACKAGES = 10_000  # per host, install and remove together


class Want(enum.StrEnum):
    INSTALL = "install"
    REMOVE = "remove"


class Action(enum.StrEnum):
    """What a run did to one package (or, dry, would do)."""

    INSTALLED = "installed"
    UPGRADED = "upgraded"
    DOWNGRADED = "downgraded"
    REINSTALLED = "reinstalled"
    REMOVED = "removed"
    CONFIGURED = "configured"  # one dpkg had left unsettled, set up again


@dataclass(frozen=True, slots=True)
class PackageSpec:
    """One package a host must have installed (at `version`, if set) or removed."""

    name: str
    want: Want
    version: str | None = None  # install only: exactly this version

    def arg(self) -> str:
        """The package as apt-get install names it: "name", "name=version", or "name-"."""
        if self.want is Want.REMOVE:
            return f"{self.name}-"
        return self.name if self.version is None else f"{self.name}={self.version}"

    def to_wire(self) -> dict[str, Any]:
        return {"name": self.name, "want": str(self.want), "version": self.version}

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> PackageSpec:
        return cls(d["name"], Want(d["want"]), d["version"])


def name_problem(name: str) -> str | None:
    """Why `name` is not a Debian package name, or None."""
    if len(name) > MAX_PACKAGE_NAME:
        return f"a package name has at most {MAX_PACKAGE_NAME} characters"
    if not NAME_RE.fullmatch(name):
        return (
            "a package name has two or more of a-z, 0-9, '+', '-' and '.',"
            " and starts with a letter or digit"
        )
    return None


def version_problem(version: str) -> str | None:
    """Why `version` is not a Debian version, or None."""
    if len(version) > MAX_PACKAGE_VERSION:
        return f"a version has at most {MAX_PACKAGE_VERSION} characters"
    if not VERSION_RE.fullmatch(version):
        return (
            "a version is [EPOCH:]UPSTREAM[-REVISION] of A-Z, a-z, 0-9, '.', '+', '~', '-'"
            " and ':', starting with a digit"
        )
    return None
