"""The file model shared by the compiler, the wire and the engine.

The master's compiler produces FileSpecs (and AbsentSpecs, purged directories
and secret paths); they travel to the minion inside a job; the engine
(minion/fileops.py) makes the host match them and reports FileChanges (each
with its Outcome), TriggerRuns, OwedTriggers and every failure in an
ApplyResult, which travels back. Each type converts to and from a plain dict ("wire form") that
holds only str, int, bool, bytes, None, lists and dicts, for msgpack.

from_wire() trusts its shape: common/protocol.py validates every decoded
message against its schema before anything here sees it. Semantic checks that
need no host (is the path normalised, is exactly one of user/uid set) are in
FileSpec.check(), which the engine calls before any syscall.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, field
from typing import Any

from safcm.common.errors import FileOpError, InvalidPathError

# Permission bits including setuid (0o4000), setgid (0o2000) and sticky (0o1000).
MODE_MASK = 0o7777
# Linux ignores a symlink's own permission bits and always reports 0777.
SYMLINK_MODE = 0o777
# Longest path the engine accepts, in bytes (Linux PATH_MAX, including the NUL).
PATH_MAX = 4096
# Longest single component, in bytes (NAME_MAX on every Linux filesystem we target).
NAME_MAX = 255


class FileType(enum.StrEnum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    # The kinds below are never declared; the engine only finds them on a host
    # (as the old state that a declared file replaces).
    FIFO = "fifo"
    SOCKET = "socket"
    CHAR_DEVICE = "chardev"
    BLOCK_DEVICE = "blockdev"


# The types a configuration may declare.
MANAGED_TYPES = frozenset({FileType.FILE, FileType.DIR, FileType.SYMLINK})


def check_path(path: str) -> None:
    """Raise InvalidPathError unless `path` is absolute and normalised.

    Normalised means: starts with "/", no empty component ("//" or a trailing
    "/", except the root "/" itself), no "." or ".." component, no NUL, and
    within PATH_MAX/NAME_MAX.
    """
    if not isinstance(path, str) or not path:
        raise InvalidPathError(repr(path), "path is empty")
    if "\0" in path:
        raise InvalidPathError(repr(path), "path contains a NUL byte")
    if not path.startswith("/"):
        raise InvalidPathError(path, "path is not absolute")
    if len(path.encode("utf-8", "surrogateescape")) >= PATH_MAX:
        raise InvalidPathError(path, f"path is longer than {PATH_MAX - 1} bytes")
    if path == "/":
        return
    for part in path[1:].split("/"):
        if part == "":
            raise InvalidPathError(path, "path has an empty component ('//' or a trailing '/')")
        if part in (".", ".."):
            raise InvalidPathError(path, f"path has a {part!r} component")
        # A character takes at most 4 bytes in UTF-8, so only a long
        # component needs encoding to be measured (this runs for every file).
        if len(part) > NAME_MAX // 4 and len(part.encode("utf-8", "surrogateescape")) > NAME_MAX:
            raise InvalidPathError(path, f"a component is longer than {NAME_MAX} bytes")


def is_below(path: str, directory: str) -> bool:
    """True if `path` is `directory` itself or lies beneath it (both normalised)."""
    if directory == "/":
        return True
    return path == directory or path.startswith(directory + "/")


@dataclass(frozen=True, slots=True)
class FileSpec:
    """One file as declared: what the host must end up with at `path`."""

    path: str
    type: FileType
    mode: int  # permission bits only (MODE_MASK); SYMLINK_MODE for symlinks
    user: str | None = None  # exactly one of user/uid
    uid: int | None = None
    group: str | None = None  # exactly one of group/gid
    gid: int | None = None
    data: bytes = b""  # content of a regular file, target of a symlink, empty for a dir
    triggers: tuple[str, ...] = ()  # commands run when this path or anything below changed
    # A directory the repository only passes through (permissions.yaml does
    # not name it): created with this mode and owner when missing, never
    # changed when it is already a directory.
    passthrough: bool = False

    def check(self) -> None:
        """Raise a FileOpError naming the path if the spec is inconsistent."""
        check_path(self.path)
        if self.type not in MANAGED_TYPES:
            raise FileOpError(self.path, f"type {self.type!s} cannot be declared")
        if self.mode & ~MODE_MASK:
            raise FileOpError(self.path, f"mode {self.mode:#o} has bits outside {MODE_MASK:#o}")
        if self.type is FileType.SYMLINK and self.mode != SYMLINK_MODE:
            raise FileOpError(self.path, f"a symlink's mode must be {SYMLINK_MODE:#o}")
        if (self.user is None) == (self.uid is None):
            raise FileOpError(self.path, "exactly one of user and uid must be set")
        if (self.group is None) == (self.gid is None):
            raise FileOpError(self.path, "exactly one of group and gid must be set")
        for name, ident in (("uid", self.uid), ("gid", self.gid)):
            if ident is not None and not 0 <= ident < 2**32 - 1:
                raise FileOpError(self.path, f"{name} {ident} is out of range")
        if self.type is FileType.DIR and self.data:
            raise FileOpError(self.path, "a directory cannot have content")
        if self.passthrough and self.type is not FileType.DIR:
            raise FileOpError(self.path, "only a directory can be passed through")
        if self.type is FileType.SYMLINK and (not self.data or b"\0" in self.data):
            raise FileOpError(self.path, "a symlink needs a non-empty target without NUL")

    def to_wire(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "type": str(self.type),
            "mode": self.mode,
            "user": self.user,
            "uid": self.uid,
            "group": self.group,
            "gid": self.gid,
            # A regular file's content is named by its SHA-256, so that a job
            # may leave out content the host has (minion/content.py).
            "digest": hashlib.sha256(self.data).digest() if self.type is FileType.FILE else None,
            "data": self.data,
            "triggers": list(self.triggers),
            "passthrough": self.passthrough,
        }

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> FileSpec:
        return cls(
            path=d["path"],
            type=FileType(d["type"]),
            mode=d["mode"],
            user=d["user"],
            uid=d["uid"],
            group=d["group"],
            gid=d["gid"],
            data=d["data"],
            triggers=tuple(d["triggers"]),
            passthrough=d["passthrough"],
        )


@dataclass(frozen=True, slots=True)
class AbsentSpec:
    """A path that must not exist on the host (absent.yaml).

    A file, symlink or empty directory there is removed; a non-empty
    directory only with `recursive`, and then with everything below it.
    """

    path: str
    recursive: bool = False

    def to_wire(self) -> dict[str, Any]:
        return {"path": self.path, "recursive": self.recursive}

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> AbsentSpec:
        return cls(path=d["path"], recursive=d["recursive"])


@dataclass(frozen=True, slots=True)
class FileState:
    """Type, mode and owner of a file, as found before or as made after a change."""

    type: FileType
    mode: int
    uid: int
    gid: int
    user: str | None = None  # the name, if the host knows one for uid
    group: str | None = None  # the name, if the host knows one for gid

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": str(self.type),
            "mode": self.mode,
            "uid": self.uid,
            "gid": self.gid,
            "user": self.user,
            "group": self.group,
        }

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> FileState:
        return cls(
            type=FileType(d["type"]),
            mode=d["mode"],
            uid=d["uid"],
            gid=d["gid"],
            user=d["user"],
            group=d["group"],
        )


class Outcome(enum.StrEnum):
    """What became of one change: the report never claims what did not happen."""

    APPLIED = "applied"  # done, and durable when the result is sent
    FAILED = "failed"  # tried and refused or failed; `reason` says why
    SKIPPED = "skipped"  # not tried, because something it depends on failed; `reason`
    WOULD_APPLY = "would apply"  # dry run: this is what a real run would do


@dataclass(frozen=True, slots=True)
class FileChange:
    """One change the engine made, tried, skipped or (dry run) would make at one path."""

    path: str
    created: bool  # nothing was at the path before
    new: FileState | None  # None exactly when the path is removed (absent, purge)
    old: FileState | None = None  # None exactly when created
    # Unified diff when content or a link target appears, is replaced or is
    # lost; for a secret path one line with short hashes instead.
    diff: str | None = None
    outcome: Outcome = Outcome.APPLIED
    reason: str = ""  # why it failed or was skipped; "" otherwise

    @property
    def removed(self) -> bool:
        return self.new is None

    def to_wire(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "created": self.created,
            "new": None if self.new is None else self.new.to_wire(),
            "old": None if self.old is None else self.old.to_wire(),
            "diff": self.diff,
            "outcome": str(self.outcome),
            "reason": self.reason,
        }

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> FileChange:
        return cls(
            path=d["path"],
            created=d["created"],
            new=None if d["new"] is None else FileState.from_wire(d["new"]),
            old=None if d["old"] is None else FileState.from_wire(d["old"]),
            diff=d["diff"],
            outcome=Outcome(d["outcome"]),
            reason=d["reason"],
        )


class TriggerStatus(enum.StrEnum):
    OK = "ok"  # ran and exited 0
    FAILED = "failed"  # ran and exited non-zero, or could not be started
    TIMEOUT = "timeout"  # killed after the trigger timeout
    WOULD_RUN = "would run"  # dry run: listed, not run


@dataclass(frozen=True, slots=True)
class TriggerRun:
    """One trigger command and what became of it."""

    command: str
    status: TriggerStatus
    exit_code: int | None = None  # None unless the command ran to an exit
    output: str = ""  # stdout and stderr interleaved, capped in size
    duration: float = 0.0  # seconds

    def to_wire(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "status": str(self.status),
            "exit_code": self.exit_code,
            "output": self.output,
            "duration": self.duration,
        }

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> TriggerRun:
        return cls(
            command=d["command"],
            status=TriggerStatus(d["status"]),
            exit_code=d["exit_code"],
            output=d["output"],
            duration=d["duration"],
        )


@dataclass(frozen=True, slots=True)
class OwedTrigger:
    """A trigger whose path changed in an apply that had a failure, not run yet.

    Kept on the minion until an apply without failure runs it; `path` and
    `jid` name the change and the job that caused it.
    """

    command: str
    path: str
    jid: str

    def to_wire(self) -> dict[str, Any]:
        return {"command": self.command, "path": self.path, "jid": self.jid}

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> OwedTrigger:
        return cls(command=d["command"], path=d["path"], jid=d["jid"])


@dataclass(frozen=True, slots=True)
class ApplyFailure:
    """One path that could not be made as declared (or "" before any path), and why."""

    path: str
    reason: str

    def to_wire(self) -> dict[str, Any]:
        return {"path": self.path, "reason": self.reason}

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> ApplyFailure:
        return cls(path=d["path"], reason=d["reason"])


@dataclass(slots=True)
class ApplyResult:
    """Everything one apply did, in order. `failures` is empty when every path succeeded."""

    dry_run: bool
    changes: list[FileChange] = field(default_factory=list)
    triggers: list[TriggerRun] = field(default_factory=list)
    failures: list[ApplyFailure] = field(default_factory=list)
    owed: list[OwedTrigger] = field(default_factory=list)  # still owed after this apply
    duration: float = 0.0  # seconds, the whole apply including triggers

    @property
    def ok(self) -> bool:
        """No path failed and every trigger that ran succeeded."""
        return not self.failures and all(
            t.status in (TriggerStatus.OK, TriggerStatus.WOULD_RUN) for t in self.triggers
        )

    def to_wire(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "changes": [c.to_wire() for c in self.changes],
            "triggers": [t.to_wire() for t in self.triggers],
            "failures": [f.to_wire() for f in self.failures],
            "owed": [o.to_wire() for o in self.owed],
            "duration": self.duration,
        }

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> ApplyResult:
        return cls(
            dry_run=d["dry_run"],
            changes=[FileChange.from_wire(c) for c in d["changes"]],
            triggers=[TriggerRun.from_wire(t) for t in d["triggers"]],
            failures=[ApplyFailure.from_wire(f) for f in d["failures"]],
            owed=[OwedTrigger.from_wire(o) for o in d["owed"]],
            duration=d["duration"],
        )
