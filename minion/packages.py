"""Plan a host's packages: what it wants against what dpkg says it has. Pure.

Decide, then act (minion/apt.py acts). The inputs are the job's package list
and the text that `dpkg-query -W -f='${Package}\\t${Status}\\t${Version}\\n'`
prints; the outputs are the arguments of one `apt-get install` call and,
from dpkg's state before and after it (or from apt's simulation in a dry
run), the changes to report. Nothing here runs a process.

- A package to install is satisfied when dpkg has it installed and settled
  ("install ok installed", or held), at the version asked for if one is. An
  unpinned package that is installed is left alone even when a newer version
  is available: `install` means present, as apt-get install does not upgrade
  on its own either; pin `name=version` to move it.
- A package to remove is satisfied when it is not installed (its config
  files may remain, as after `apt-get remove`).
- One apt-get call does all of it ("name", "name=version", "name-" for a
  removal), so apt resolves installs and removals together, and the dry run
  simulates that very call.
- A package dpkg left unsettled (half-installed, unpacked, half-configured,
  triggers pending, or flagged reinst-required: a postinst that failed, a
  dpkg that was killed) is reported in every result, wanted or not, and makes
  the result failed; one the job wants is passed to apt again, which retries
  configuring it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from safcm.common.packages import Action, PackageSpec, Want

# dpkg's package states (dpkg-query(1), "Package states"). Two mean "not
# installed"; two are settled and installed; the rest are an operation that
# did not finish.
ABSENT_STATES = frozenset({"not-installed", "config-files"})
SETTLED_STATES = frozenset({"installed"})
# The error flag: "ok", or "reinstreq" when dpkg needs the package reinstalled.
OK_FLAG = "ok"


@dataclass(frozen=True, slots=True)
class PkgState:
    """One line of dpkg-query: the package, its "want flag status" and its version."""

    name: str
    want: str  # unknown, install, hold, deinstall, purge
    flag: str  # ok, reinstreq
    status: str  # not-installed, config-files, half-installed, unpacked, ...
    version: str  # "" when dpkg knows none

    @property
    def present(self) -> bool:
        return self.status not in ABSENT_STATES

    @property
    def unsettled(self) -> bool:
        return self.present and (self.status not in SETTLED_STATES or self.flag != OK_FLAG)

    def status_text(self) -> str:
        return f"{self.want} {self.flag} {self.status}"


@dataclass(frozen=True, slots=True)
class Change:
    name: str
    action: Action
    old: str | None  # version before; None when it was not installed
    new: str | None  # version after; None when it is removed

    def to_wire(self) -> dict[str, str | None]:
        return {"name": self.name, "action": str(self.action), "old": self.old, "new": self.new}


@dataclass(frozen=True, slots=True)
class Plan:
    args: list[str]  # for `apt-get install`, in the job's order; [] when nothing is to do
    satisfied: int  # packages of the job that need nothing


class DpkgParseError(ValueError):
    """dpkg-query printed a line that is not "name TAB want flag status TAB version"."""


def parse_dpkg_status(text: str) -> dict[str, PkgState]:
    """dpkg-query's lines, by package name. Raises DpkgParseError."""
    state: dict[str, PkgState] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line:
            continue
        fields = line.split("\t")
        words = fields[1].split(" ") if len(fields) == 3 else []
        if len(words) != 3 or not fields[0]:
            raise DpkgParseError(f"dpkg-query line {number} is not 'name, status, version'")
        name = _strip_arch(fields[0])
        state[name] = PkgState(name, words[0], words[1], words[2], fields[2])
    return state


def plan(specs: Iterable[PackageSpec], state: dict[str, PkgState]) -> Plan:
    """The apt-get install arguments that make `state` what `specs` ask for."""
    args: list[str] = []
    satisfied = 0
    for spec in specs:
        have = state.get(spec.name)
        if spec.want is Want.REMOVE:
            done = have is None or not have.present
        else:
            done = (
                have is not None
                and have.present
                and not have.unsettled
                and (spec.version is None or have.version == spec.version)
            )
        if done:
            satisfied += 1
        else:
            args.append(spec.arg())
    return Plan(args, satisfied)


def unsettled(state: dict[str, PkgState]) -> list[PkgState]:
    """Every package dpkg left in the middle of an operation, by name."""
    return sorted((s for s in state.values() if s.unsettled), key=lambda s: s.name)


def diff_states(before: dict[str, PkgState], after: dict[str, PkgState]) -> list[Change]:
    """What a real apt run changed, from dpkg's state before and after it, by name."""
    changes: list[Change] = []
    for name in sorted(before.keys() | after.keys()):
        old, new = before.get(name), after.get(name)
        old_v = old.version if old is not None and old.present else None
        new_v = new.version if new is not None and new.present else None
        if old_v is None and new_v is None:
            continue
        if old_v is None:
            changes.append(Change(name, Action.INSTALLED, None, new_v))
        elif new_v is None:
            changes.append(Change(name, Action.REMOVED, old_v, None))
        elif old_v != new_v:
            changes.append(Change(name, _version_action(old_v, new_v), old_v, new_v))
        elif old is not None and new is not None and old.unsettled and not new.unsettled:
            changes.append(Change(name, Action.CONFIGURED, old_v, new_v))
    return changes


# apt-get -s prints one line per operation (apt-get(8), --simulate):
#   Inst NAME [OLD] (NEW RELEASE [ARCH])     OLD only when it replaces a version
#   Remv NAME [OLD]       Purg NAME [OLD]    Conf NAME (VERSION RELEASE [ARCH])
_INST = re.compile(r"Inst (\S+) (?:\[(\S+)\] )?\((\S+)[ )]")
_REMV = re.compile(r"(?:Remv|Purg) (\S+)(?: \[(\S+)\])?")
_CONF = re.compile(r"Conf (\S+) \((\S+)[ )]")


def parse_simulation(text: str, state: dict[str, PkgState]) -> list[Change]:
    """What `apt-get -s install ...` says the real run would change, by name.

    Versions before come from dpkg's `state`, as diff_states() takes them, so
    that a dry run and the real run report the same changes.
    """
    found: dict[str, Change] = {}
    configured: dict[str, str] = {}
    for line in text.splitlines():
        if m := _INST.match(line):
            name, new = _strip_arch(m.group(1)), m.group(3)
            have = state.get(name)
            old = have.version if have is not None and have.present else None
            if old is None:
                found[name] = Change(name, Action.INSTALLED, None, new)
            elif old == new:
                found[name] = Change(name, Action.REINSTALLED, old, new)
            else:
                found[name] = Change(name, _version_action(old, new), old, new)
        elif m := _REMV.match(line):
            name = _strip_arch(m.group(1))
            have = state.get(name)
            old = have.version if have is not None and have.present else m.group(2)
            found[name] = Change(name, Action.REMOVED, old, None)
        elif m := _CONF.match(line):
            configured[_strip_arch(m.group(1))] = m.group(2)
    for name, version in configured.items():
        have = state.get(name)
        if name not in found and have is not None and have.unsettled:
            found[name] = Change(name, Action.CONFIGURED, have.version, version)
    return [found[n] for n in sorted(found)]


def _strip_arch(name: str) -> str:
    """apt and dpkg may qualify a name with its architecture ("libc6:amd64")."""
    return name.partition(":")[0]


def _version_action(old: str, new: str) -> Action:
    return Action.UPGRADED if compare_versions(new, old) > 0 else Action.DOWNGRADED


# ---- Debian version comparison (Debian policy 5.6.12) ----


def compare_versions(a: str, b: str) -> int:
    """Negative, zero or positive as version `a` sorts before, with or after `b`.

    [epoch:]upstream[-revision]: epochs compare as numbers; upstream and
    revision alternately compare a run of non-digits (letters before other
    characters, "~" before everything, even the end) and a run of digits (as
    numbers).
    """
    ea, ua, ra = _split_version(a)
    eb, ub, rb = _split_version(b)
    if ea != eb:
        return -1 if ea < eb else 1
    return _compare_part(ua, ub) or _compare_part(ra, rb)


def _split_version(v: str) -> tuple[int, str, str]:
    epoch, colon, rest = v.partition(":")
    if not colon:
        epoch, rest = "0", v
    upstream, dash, revision = rest.rpartition("-")
    if not dash:
        upstream, revision = rest, ""
    return int(epoch) if epoch.isdigit() else 0, upstream, revision


def _order(c: str) -> int:
    if c == "~":
        return -1
    if c.isalpha():
        return ord(c)
    return ord(c) + 256


def _compare_part(a: str, b: str) -> int:
    i = j = 0
    while i < len(a) or j < len(b):
        # the non-digit run
        while (i < len(a) and not a[i].isdigit()) or (j < len(b) and not b[j].isdigit()):
            ca = _order(a[i]) if i < len(a) and not a[i].isdigit() else 0
            cb = _order(b[j]) if j < len(b) and not b[j].isdigit() else 0
            if ca != cb:
                return -1 if ca < cb else 1
            if i < len(a) and not a[i].isdigit():
                i += 1
            if j < len(b) and not b[j].isdigit():
                j += 1
        # the digit run
        si = i
        while i < len(a) and a[i].isdigit():
            i += 1
        sj = j
        while j < len(b) and b[j].isdigit():
            j += 1
        na, nb = int(a[si:i] or "0"), int(b[sj:j] or "0")
        if na != nb:
            return -1 if na < nb else 1
    return 0
