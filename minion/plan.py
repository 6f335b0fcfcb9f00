"""Deciding what to do with each declared file. Pure: nothing here touches the host.

fileops.py observes what is at a path (a Found, or None when nothing is
there), resolves the declared owner on the host (an Owner), and asks decide()
what to do. The Decision carries the change record for the report and the
steps for the executor. A dry run records the same change and stops before
the steps, so its report is the real run's by construction.

Removal (absent.yaml, purge.yaml) works the same way: the executor observes
each entry to remove, decide_removal() returns the record and the step.

The other pure parts of an apply live here too: check_specs() checks the whole
input before any syscall, trigger_commands() picks the triggers to run, owe_first()
records them before the change that fires them, owe() and due_commands()
keep the triggers an apply with a failure could not run,
and temp_name()/is_temp_name() define the names of our temporary files.
"""

from __future__ import annotations

import bisect
import dataclasses
import enum
import re
import stat
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from safcm.common.errors import FileOpError, NonEmptyDirectoryError, SymlinkInPathError
from safcm.common.model import (
    NAME_MAX,
    AbsentSpec,
    FileChange,
    FileSpec,
    FileState,
    FileType,
    Outcome,
    OwedTrigger,
    check_path,
    is_below,
)
from safcm.minion.diff import secret_summary, unified_diff

# Temporary files (and new directories until they are whole) are named
# ".<name>.safcm-tmp-<16 hex digits>": hidden, so most tools ignore them,
# recognisable, so a later apply can remove the ones a crash left behind,
# and never a name anyone else would choose.
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


def check_removals(
    files: Sequence[FileSpec], absent: Sequence[AbsentSpec], purge: Sequence[str]
) -> tuple[list[AbsentSpec], list[str]]:
    """Check the paths to remove and return them in the order they are removed.

    Absent paths go deepest first (so /a/b is gone before /a is looked at),
    purged directories in path order. Raises FileOpError naming the first bad
    path: an invalid path, "/" as absent, a path both declared and absent,
    or an absent path above a declared one (the compiler refuses all of these;
    the engine trusts no input it has not checked).
    """
    declared = {spec.path for spec in files}
    for item in absent:
        check_path(item.path)
        if item.path == "/":
            raise FileOpError("/", "the root directory cannot be absent")
        if item.path in declared:
            raise FileOpError(item.path, "declared and absent at once")
    absent_paths = sorted({a.path for a in absent})
    for spec in files if absent_paths else ():
        above = next(_ancestors_in(spec.path, absent_paths), None)
        if above is not None:
            raise FileOpError(above, f"absent, but {spec.path} is declared below it")
    for path in purge:
        check_path(path)
    ordered = sorted({a.path: a for a in absent}.values(), key=lambda a: a.path, reverse=True)
    return ordered, sorted(set(purge))


def _ancestors_in(path: str, sorted_paths: list[str]) -> Iterator[str]:
    for above in ancestors(path)[:-1]:
        i = bisect.bisect_left(sorted_paths, above)
        if i < len(sorted_paths) and sorted_paths[i] == above:
            yield above


def is_secret(path: str, secrets: Sequence[str]) -> bool:
    """True if `path` is a secret path or lies below one (secrets.yaml)."""
    return any(is_below(path, secret) for secret in secrets)


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
    # A new directory: made 0700 under a temporary name, chowned, chmodded,
    # then renamed into place (never seen at its path half-made).
    MKDIR = "mkdir"
    FIX_DIR = "fix dir"  # chown and/or chmod an existing directory in place
    UNLINK = "unlink"  # remove a file, symlink, fifo, ... (absent, purge)
    RMDIR = "rmdir"  # remove a directory, after everything below it (absent, purge)


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
    # Set when the change must not be applied, or the path not passed; the
    # executor records the change (if any), then raises this (in a dry run
    # too, so both reports agree).
    refusal: FileOpError | None = None


NO_CHANGE = Decision(change=None, step=Step.NONE)

_CREATE_STEP = {FileType.FILE: Step.WRITE, FileType.SYMLINK: Step.WRITE, FileType.DIR: Step.MKDIR}
_HAS_DATA = (FileType.FILE, FileType.SYMLINK)


def decide(spec: FileSpec, owner: Owner, found: Found | None, *, secret: bool = False) -> Decision:
    """What to do so that `found` (None: nothing there) becomes `spec`.

    `secret`: the path's content must never be shown (secrets.yaml); its
    diff is one line of short hashes.
    """
    if found is not None:
        if spec.passthrough and found.type is FileType.DIR:
            # Only passed through: it exists, which is all the repository asks.
            return NO_CHANGE
        if spec.passthrough and found.type is FileType.SYMLINK:
            # A link to a directory (merged /usr's /lib -> usr/lib) is the
            # host's layout: replacing it with an empty directory would cut
            # off what is behind it, and the engine follows no symlink.
            return Decision(None, Step.NONE, refusal=_passthrough_link(spec.path, found))
        type_changed = found.type is not spec.type
        mode_changed = found.mode != spec.mode
        owner_changed = found.uid != owner.uid or found.gid != owner.gid
        data_changed = not type_changed and spec.type in _HAS_DATA and found.data != spec.data
        if not (type_changed or mode_changed or owner_changed or data_changed):
            return NO_CHANGE

    new = FileState(spec.type, spec.mode, owner.uid, owner.gid, owner.user, owner.group)
    if found is None:
        diff = _diff(spec.path, None, spec, secret) if spec.type in _HAS_DATA else None
        return Decision(
            FileChange(spec.path, created=True, new=new, diff=diff), _CREATE_STEP[spec.type]
        )

    diff = None
    if (found.type in _HAS_DATA or spec.type in _HAS_DATA) and (type_changed or data_changed):
        diff = _diff(spec.path, found, spec, secret)
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


def _passthrough_link(path: str, found: Found) -> SymlinkInPathError:
    target = (found.data or b"").decode("utf-8", "backslashreplace")
    return SymlinkInPathError(
        path,
        f"is a symlink on this host (to {target!r}), where the repository only passes "
        "through a directory: it is never replaced, and no symlink is followed; declare "
        "the files by the path it points to, or name it in permissions.yaml to have it "
        "replaced by a directory",
    )


def decide_removal(path: str, found: Found, *, recursive: bool, secret: bool) -> Decision:
    """What to do so that nothing is at `path`, where `found` is.

    A directory is removed after everything below it; without `recursive`
    only an empty one (the executor looked: found.dir_empty).
    """
    old = FileState(found.type, found.mode, found.uid, found.gid, found.user, found.group)
    diff = None
    if found.type in _HAS_DATA:
        diff = _content_diff(
            path,
            found.data,
            found.size,
            b"",
            old_link=found.type is FileType.SYMLINK,
            new_link=False,
            old_missing=False,
            new_missing=True,
            secret=secret,
        )
    change = FileChange(path, created=False, new=None, old=old, diff=diff)
    if found.type is not FileType.DIR:
        return Decision(change, Step.UNLINK)
    if not recursive and not found.dir_empty:
        refusal = NonEmptyDirectoryError(
            path,
            "the directory is not empty; safcm removes a non-empty directory only when"
            " absent.yaml asks for it with 'recursive: true'",
        )
        return Decision(change, Step.RMDIR, refusal=refusal)
    return Decision(change, Step.RMDIR)


def _diff(path: str, found: Found | None, spec: FileSpec, secret: bool) -> str | None:
    """The diff of the content or target, from what is there to what is declared."""
    old_missing = found is None or found.type not in _HAS_DATA
    new_missing = spec.type not in _HAS_DATA
    return _content_diff(
        path,
        None if found is None else found.data,
        0 if found is None else found.size,
        spec.data,
        old_link=found is not None and found.type is FileType.SYMLINK,
        new_link=spec.type is FileType.SYMLINK,
        old_missing=old_missing,
        new_missing=new_missing,
        secret=secret,
    )


def _content_diff(
    path: str,
    old: bytes | None,
    old_size: int,
    new: bytes,
    *,
    old_link: bool,
    new_link: bool,
    old_missing: bool,
    new_missing: bool,
    secret: bool,
) -> str | None:
    if secret:
        return secret_summary(old, old_size, new, old_missing=old_missing, new_missing=new_missing)
    text = unified_diff(
        path,
        old,
        old_size,
        new,
        old_link=old_link,
        new_link=new_link,
        old_missing=old_missing,
        new_missing=new_missing,
    )
    return text or None  # an empty file created, or replaced by a directory: nothing to show


def with_outcome(change: FileChange, outcome: Outcome, reason: str = "") -> FileChange:
    """The same change with what became of it."""
    return dataclasses.replace(change, outcome=outcome, reason=reason)


def trigger_commands(changed: Iterable[str], specs: Mapping[str, FileSpec]) -> list[str]:
    """The commands to run after the `changed` paths changed, each once, in order.

    A path's own triggers and those of every declared directory above it
    count. Order: by changed path as given, and for one path from "/" down;
    a command already queued keeps its first place.
    """
    queued: dict[str, None] = {}  # an ordered set
    if not has_triggers(specs):
        return []  # the common case, without a walk up from every changed path
    for path in changed:
        for command in _triggers_of(path, specs):
            queued.setdefault(command)
    return list(queued)


def has_triggers(specs: Mapping[str, FileSpec]) -> bool:
    return any(spec.triggers for spec in specs.values())


def _triggers_of(path: str, specs: Mapping[str, FileSpec]) -> Iterator[str]:
    """The triggers a change at `path` fires: its own and those of every
    declared directory above it, from "/" down."""
    for above in ancestors(path):
        spec = specs.get(above)
        if spec is not None:
            yield from spec.triggers


def owe_first(
    owed: Sequence[OwedTrigger], path: str, specs: Mapping[str, FileSpec], jid: str
) -> list[OwedTrigger] | None:
    """The owed triggers to record before `path` of job `jid` changes: those
    owed, and the triggers the change fires that are not owed yet. None if
    it fires none that is not owed already (nothing to record).

    Owed before the change, not after it: a crash between the change and the
    triggers (a killed minion) must leave them owed. The apply that follows
    finds the path as declared, changes nothing, and would otherwise never
    run them. Owing one whose change then fails only runs it after the next
    apply without failure, as a failed apply's triggers are."""
    commands = {o.command for o in owed}
    new = [
        OwedTrigger(command, path, jid)
        for command in dict.fromkeys(_triggers_of(path, specs))
        if command not in commands
    ]
    return [*owed, *new] if new else None


def owe(
    owed: Sequence[OwedTrigger],
    applied: Iterable[str],
    specs: Mapping[str, FileSpec],
    jid: str,
) -> list[OwedTrigger]:
    """The triggers owed after an apply with a failure: those owed before, and
    those of the `applied` paths of job `jid`.

    Each command is owed once: what counts is that it runs after the next
    apply without failure. The entry keeps the first path and job that made
    it owed, so the report says where the debt came from.
    """
    result = list(owed)
    commands = {o.command for o in owed}
    for path in applied:
        for command in trigger_commands([path], specs):
            if command not in commands:
                commands.add(command)
                result.append(OwedTrigger(command, path, jid))
    return result


def due_commands(owed: Sequence[OwedTrigger], commands: Iterable[str]) -> list[str]:
    """The commands to run after an apply without failure: the owed ones first
    (they are older), then this apply's own; each command once."""
    queued: dict[str, None] = {}
    for o in owed:
        queued.setdefault(o.command)
    for command in commands:
        queued.setdefault(command)
    return list(queued)
