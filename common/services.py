"""The services model shared by the compiler, the wire and the minion.

What a host's units must be (UnitSpec, compiled from <group>/services.yaml),
what systemd says a unit is (UnitState), and what the minion changed
(UnitChange, in a ServicesResult). Each converts to and from a plain dict
("wire form") for msgpack; from_wire() trusts the shape, which the
protocol's schemas check first.

A UnitSpec holds two independent wishes, each of which may be left open:

    enablement   enabled, disabled or masked: the unit's state at boot
                 (systemctl enable/disable/mask); None leaves it alone
    running      True (started), False (stopped); None leaves it alone

services.yaml's lists set both: enable (enabled, running), disable
(disabled, stopped), mask (masked, stopped), start (running), stop (stopped).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any

from safcm.common.schema import Bool, List, Map, OneOf, Optional, Str

# Unit types systemctl can enable or start.
UNIT_SUFFIXES = (
    "service",
    "socket",
    "target",
    "timer",
    "path",
    "mount",
    "automount",
    "swap",
    "slice",
    "device",
    "scope",
)
# A unit name as systemd accepts it (unit_name_is_valid): letters, digits
# and ":-_.\\", one "@" before an instance, a known suffix; at most 255 bytes.
UNIT_NAME_RE = re.compile(
    r"[A-Za-z0-9:_.\\-]+(@[A-Za-z0-9:_.\\-]+)?\.(" + "|".join(UNIT_SUFFIXES) + r")"
)
UNIT_NAME_MAX = 255
# systemctl's own default for a name without a suffix.
DEFAULT_SUFFIX = ".service"
# Longest reason a failed unit carries (systemctl's message, the unit's
# states and the last lines of its journal: about 1 KB in practice).
MAX_UNIT_REASON_CHARS = 2048
# Most units one host's job may declare: far above a host's few dozen
# managed units. Every one failing with the longest reason, each character
# 4 bytes of UTF-8, is 2 MB: within a result's MAX_RESULT_BYTES (4 MB).
MAX_UNITS = 256
# Longest state value systemd reports (ActiveState, UnitFileState, ...):
# its longest today is "enabled-runtime" or "bad-setting"; room to grow.
MAX_STATE_CHARS = 64
# The systemctl verbs a change may name (minion/svcplan.py Verb).
VERBS = ("stop", "unmask", "mask", "disable", "enable", "start")


class Enablement(enum.StrEnum):
    ENABLED = "enabled"
    DISABLED = "disabled"
    MASKED = "masked"


class UnitOutcome(enum.StrEnum):
    APPLIED = "applied"  # every action ran and the unit ended as asked
    FAILED = "failed"  # an action failed, or the unit did not end as asked (see reason)
    WOULD_APPLY = "would apply"  # dry run


def unit_name(name: str) -> str:
    """The full unit name for what an administrator wrote: "nginx" is
    "nginx.service", as systemctl reads it."""
    base, dot, suffix = name.rpartition(".")
    if not dot or not base or suffix not in UNIT_SUFFIXES:
        return name + DEFAULT_SUFFIX
    return name


def unit_name_problem(unit: str) -> str | None:
    """Why `unit` (a full name) cannot be managed, or None."""
    if len(unit.encode()) > UNIT_NAME_MAX:
        return f"a unit name is at most {UNIT_NAME_MAX} bytes"
    if re.search(r"@\.[a-z]+$", unit):
        return f"{unit} is a template: name an instance (e.g. {unit.replace('@.', '@name.')})"
    if not UNIT_NAME_RE.fullmatch(unit):
        return f"{unit!r} is not a valid unit name"
    return None


@dataclass(frozen=True, slots=True)
class UnitSpec:
    unit: str
    enablement: Enablement | None
    running: bool | None

    def to_wire(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "enablement": None if self.enablement is None else str(self.enablement),
            "running": self.running,
        }

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> UnitSpec:
        enablement = None if d["enablement"] is None else Enablement(d["enablement"])
        return cls(d["unit"], enablement, d["running"])

    def describe(self) -> str:
        """The wish as services.yaml says it ("enable", "stop", ...)."""
        wishes: dict[tuple[Enablement | None, bool | None], str] = {
            (Enablement.ENABLED, True): "enable",
            (Enablement.DISABLED, False): "disable",
            (Enablement.MASKED, False): "mask",
            (None, True): "start",
            (None, False): "stop",
        }
        return wishes.get((self.enablement, self.running), f"{self.enablement}/{self.running}")


@dataclass(frozen=True, slots=True)
class UnitState:
    """A unit as systemd reports it (`systemctl show` properties)."""

    load: str  # LoadState: loaded, not-found, masked, error, bad-setting
    active: str  # ActiveState: active, inactive, failed, activating, deactivating, reloading
    sub: str  # SubState: running, dead, exited, failed, ...
    file_state: str  # UnitFileState: enabled, disabled, static, masked, ... ("" if no file)
    result: str  # Result of the last run: success, exit-code, signal, timeout, ...

    def to_wire(self) -> dict[str, Any]:
        return {
            "load": self.load,
            "active": self.active,
            "sub": self.sub,
            "enablement": self.file_state,
            "result": self.result,
        }

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> UnitState:
        return cls(d["load"], d["active"], d["sub"], d["enablement"], d["result"])

    def describe(self) -> str:
        """ "enabled, active (running)", "not found", ..."""
        if self.load == "not-found":
            return "not found"
        return f"{self.file_state or 'no unit file'}, {self.active} ({self.sub})"


@dataclass(frozen=True, slots=True)
class UnitChange:
    """What was (or would be) done to one unit, with its state before and after."""

    unit: str
    actions: tuple[str, ...]  # systemctl verbs, in the order run
    before: UnitState
    after: UnitState | None  # None in a dry run and where it could not be read
    outcome: UnitOutcome
    reason: str = ""  # why it failed

    def to_wire(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "actions": list(self.actions),
            "before": self.before.to_wire(),
            "after": None if self.after is None else self.after.to_wire(),
            "outcome": str(self.outcome),
            "reason": self.reason,
        }

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> UnitChange:
        after = None if d["after"] is None else UnitState.from_wire(d["after"])
        return cls(
            d["unit"],
            tuple(d["actions"]),
            UnitState.from_wire(d["before"]),
            after,
            UnitOutcome(d["outcome"]),
            d["reason"],
        )


@dataclass(frozen=True, slots=True)
class ServicesResult:
    """A host's services section: whether it was a dry run, whether systemd
    reloaded (would reload) its unit files, and every unit that was (would
    be) changed or failed."""

    dry_run: bool
    reloaded: bool
    changes: tuple[UnitChange, ...]

    @property
    def failed(self) -> bool:
        return any(c.outcome is UnitOutcome.FAILED for c in self.changes)

    def to_wire(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "reloaded": self.reloaded,
            "changes": [c.to_wire() for c in self.changes],
        }

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> ServicesResult:
        changes = tuple(UnitChange.from_wire(c) for c in d["changes"])
        return cls(d["dry_run"], d["reloaded"], changes)


# The wire: the services job field and result section (common/modules/services.py).
# The grammar alone (ASCII, so characters are bytes): it has no template
# without its instance either.
_UNIT = Str(UNIT_NAME_MAX, min_len=1, pattern=UNIT_NAME_RE.pattern)
_STATE_VALUE = Str(MAX_STATE_CHARS)
UNIT_SPEC = Map(
    {
        "unit": _UNIT,
        "enablement": Optional(OneOf(Enablement)),
        "running": Optional(Bool()),
    }
)
UNIT_STATE = Map(
    {
        "load": _STATE_VALUE,
        "active": _STATE_VALUE,
        "sub": _STATE_VALUE,
        "enablement": _STATE_VALUE,
        "result": _STATE_VALUE,
    }
)
UNIT_CHANGE = Map(
    {
        "unit": _UNIT,
        "actions": List(OneOf(VERBS), len(VERBS)),
        "before": UNIT_STATE,
        "after": Optional(UNIT_STATE),
        "outcome": OneOf(UnitOutcome),
        "reason": Str(MAX_UNIT_REASON_CHARS),
    }
)
SERVICES_JOB = List(UNIT_SPEC, MAX_UNITS)
SERVICES_RESULT = Map(
    {"dry_run": Bool(), "reloaded": Bool(), "changes": List(UNIT_CHANGE, MAX_UNITS)}
)
