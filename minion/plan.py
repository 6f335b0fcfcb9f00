"""Deciding what to do with each declared file. Pure: nothing here touches the host.

fileops.py observes what is at a path (a Found, or None when nothing is
there), resolves the declared owner on the host (an Owner), and asks decide()
what to do. The Decision carries the change record for the report and the
steps for the executor. A dry run records the same change and stops before
the steps, so its report is the real run's by construction.

The other pure parts of an apply live here too: check_specs() checks the whole
file list before any syscall, trigger_commands() picks the triggers to run,
and temp_name()/is_temp_name() define the names of our temporary files.
"""

from __future__ import annotations

import enum
import re
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from common.errors import FileOpError, NonEmptyDirectoryError
from common.model import NAME_MAX, FileChange, FileSpec, FileState, FileType
from minion.diff import unified_diff

# Temporary files are named ".<name>.safcm-tmp-<16 hex digits>": hidden, so
# most tools ignore them, recognisable, so a later apply can remove the ones a
# crash left behind, and never a name anyone else would choose.
TEMP_MARK = ".safcm-tmp-"
TEMP_TOKEN_HEX = 16  # hex digits of randomness: 64 bits, a collision is an attack
_TEMP_RE = re.compile(rf"\..*{re.escape(TEMP_MARK)}[0-9a-f]{{{TEMP_TOKEN_HEX}}}", re.DOTALL)
# Bytes of the target's own name kept in a temporary name, so the whole name
# stays within NAME_MAX: "." + name + TEMP_MARK + token.
_TEMP_NAME_ROOM = NAME_MAX - 1 - len(TEMP_MARK) - TEMP_TOKEN_HEX


def temp_name(name: str, token: str) -> str:
    """The temporary name for a new version of `name`; `token` is random hex."""
    raw = name.encode("utf-8", "surrogateescape")[:_TEMP_NAME_ROOM]
    return "." + raw.decode("utf-8", "surrogateescape") + TEMP_MARK + token


def is_temp_name(name: str) -> bool:
    """True if `name` is one of our temporary names (and so ours to remove)."""
    return _TEMP_RE.fullmatch(name) is not None


def check_specs(files: Sequence[FileSpec]) -> list[FileSpec]:
    """Check the whole list and return it in apply order (by path).

    Raises FileOpError naming the first bad path: a spec that fails its own
    check(), a path declared twice, "/" declared as anything but a directory,
    a path whose name is reserved for our temporary files, or a path declared
    below one that is not a directory (it could never be created).
    """
    for spec in files:
        spec.check()  # first, so that sorting only ever sees valid paths
    ordered = sorted(files, key=lambda f: f.path)
    seen: set[str] = set()
    not_dirs: set[str] = set()
    for spec in ordered:
        if spec.path in seen:
            raise FileOpError(spec.path, "declared more than once")
        seen.add(spec.path)
        if spec.path == "/":
            if spec.type is not FileType.DIR:
                raise FileOpError("/", "the root directory can only be declared as a directory")
            continue
        if is_temp_name(spec.path.rsplit("/", 1)[1]):
            raise FileOpError(spec.path, "this name is reserved for safcm's temporary files")
        parent = spec.path
        while not_dirs and (cut := parent.rfind("/")) > 0:
            parent = parent[:cut]
            if parent in not_dirs:
                raise FileOpError(
                    spec.path, f"its parent {parent} is declared as a {_kind(parent, ordered)}"
                )
        if spec.type is not FileType.DIR:
            not_dirs.add(spec.path)
    return ordered


def _kind(path: str, specs: Sequence[FileSpec]) -> str:
    return next(str(s.type) for s in specs if s.path == path)


def ancestors(path: str) -> list[str]:
    """ "/" and every directory down to `path` itself: /a/b -> ["/", "/a", "/a/b"]."""
    if path == "/":
        return ["/"]
    parts = path[1:].split("/")
    return ["/"] + ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


@dataclass(frozen=True, slots=True)
class Owner:
    """The declared owner and group, resolved to ids (and names) on the host."""

    uid: int
    gid: int
    user: str | None
    group: str | None


@dataclass(slots=True)  # not frozen: built for every file, and frozen init is slower
class Found:
    """What is at a path now, as observed without following a symlink."""

    type: FileType
    mode: int  # permission bits including setuid/setgid/sticky
    uid: int
    gid: int
    user: str | None  # names the host knows for uid and gid, for the report
    group: str | None
    size: int = 0  # st_size of a file, length of a link target
    # A file's content or a link target. For a file it holds at most the
    # declared size + 1 bytes when the sizes match (so a longer file shows up
    # as different), or the whole file for the diff when they differ; None
    # when the file was too large to read for a diff.
    data: bytes | None = None
    dir_empty: bool | None = None  # for a directory that would be replaced
    dev: int = 0  # identity, so the executor notices a swap under its feet
    ino: int = 0


class Step(enum.Enum):
    NONE = "none"  # nothing to do
    WRITE = "write"  # a file or symlink under a temporary name, renamed over the path
    MKDIR = "mkdir"  # a new directory: mkdir 0700, then chown and chmod
    FIX_DIR = "fix dir"  # chown and/or chmod an existing directory in place


class Remove(enum.Enum):
    NOTHING = "nothing"
    EMPTY_DIR = "empty dir"  # rmdir the old empty directory before the rename
    NON_DIR = "non-dir"  # unlink the old file, symlink, fifo, ... before mkdir


@dataclass(frozen=True, slots=True)
class Decision:
    change: FileChange | None  # None when the path is already as declared
    step: Step
    remove: Remove = Remove.NOTHING
    chown: bool = False  # FIX_DIR: the owner or group differs
    chmod: bool = False  # FIX_DIR: the mode differs
    # FIX_DIR when both differ: first chmod to this (group and other closed,
    # setgid and sticky kept), so no moment has a mix of old and new access.
    interim_mode: int | None = None
    # Set when the change must not be applied; the executor records the
    # change, then raises this (in a dry run too, so both reports agree).
    refusal: FileOpError | None = None


NO_CHANGE = Decision(change=None, step=Step.NONE)

_CREATE_STEP = {FileType.FILE: Step.WRITE, FileType.SYMLINK: Step.WRITE, FileType.DIR: Step.MKDIR}
_HAS_DATA = (FileType.FILE, FileType.SYMLINK)


def decide(spec: FileSpec, owner: Owner, found: Found | None) -> Decision:
    """What to do so that `found` (None: nothing there) becomes `spec`."""
    if found is not None:
        type_changed = found.type is not spec.type
        mode_changed = found.mode != spec.mode
        owner_changed = found.uid != owner.uid or found.gid != owner.gid
        data_changed = not type_changed and spec.type in _HAS_DATA and found.data != spec.data
        if not (type_changed or mode_changed or owner_changed or data_changed):
            return NO_CHANGE

    new = FileState(spec.type, spec.mode, owner.uid, owner.gid, owner.user, owner.group)
    if found is None:
        return Decision(FileChange(spec.path, created=True, new=new), _CREATE_STEP[spec.type])

    diff = None
    if found.type in _HAS_DATA and (type_changed or data_changed):
        diff = _diff(found, spec)
    old = FileState(found.type, found.mode, found.uid, found.gid, found.user, found.group)
    change = FileChange(spec.path, created=False, new=new, old=old, diff=diff)

    if spec.type is FileType.DIR:
        if type_changed:
            return Decision(change, Step.MKDIR, remove=Remove.NON_DIR)
        interim = None
        if mode_changed and owner_changed:
            interim = (found.mode & 0o700) | (found.mode & (stat.S_ISGID | stat.S_ISVTX))
        return Decision(
            change, Step.FIX_DIR, chown=owner_changed, chmod=mode_changed, interim_mode=interim
        )
    if found.type is FileType.DIR:
        if not found.dir_empty:
            refusal = NonEmptyDirectoryError(
                spec.path,
                f"a non-empty directory is in the way of this {spec.type}; safcm never "
                "removes one: remove it by hand, then apply again",
            )
            return Decision(change, Step.WRITE, remove=Remove.EMPTY_DIR, refusal=refusal)
        return Decision(change, Step.WRITE, remove=Remove.EMPTY_DIR)
    # Any other change of a file or symlink, even of mode or owner alone, is
    # a new version renamed over the old one: readers never see a half-made
    # state, and a hard link at the path keeps its own content and mode.
    return Decision(change, Step.WRITE)


def _diff(found: Found, spec: FileSpec) -> str | None:
    new = spec.data if spec.type in _HAS_DATA else b""
    text = unified_diff(
        found.data,
        found.size,
        new,
        old_link=found.type is FileType.SYMLINK,
        new_link=spec.type is FileType.SYMLINK,
    )
    return text or None  # an empty file replaced by a directory loses nothing


def trigger_commands(changed: Iterable[str], specs: Mapping[str, FileSpec]) -> list[str]:
    """The commands to run after the `changed` paths changed, each once, in order.

    A path's own triggers and those of every declared directory above it
    count. Order: by changed path as given, and for one path from "/" down;
    a command already queued keeps its first place.
    """
    queued: dict[str, None] = {}  # an ordered set
    for path in changed:
        for above in ancestors(path):
            spec = specs.get(above)
            if spec is not None:
                for command in spec.triggers:
                    queued.setdefault(command)
    return list(queued)
