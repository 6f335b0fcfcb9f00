"""The triggers a minion owes: kept in its state directory across restarts.

An apply that has a failure runs no trigger (a reload must never meet a
half-applied host), so the triggers of the changes it did apply are owed
until an apply without failure runs them (minion/fileops.py). Losing that
record would silently lose a reload, so it is written atomically and
durably: a temporary file in the same directory, fsync, rename over the
old file, fsync of the directory. A crash leaves the old list or the new one,
and at worst a stray temporary, which the next save replaces. The list is
cleared only after its triggers ran, so a crash in between runs them again:
a trigger may run twice, never not at all.

Only the engine reads and writes this file, while it holds the engine lock.
"""

from __future__ import annotations

import os

from common import codec
from common.errors import SafcmError, StoreError
from common.model import OwedTrigger

OWED_NAME = "owed-triggers"
# Largest owed-trigger file we read, in bytes: every command is owed once,
# so even thousands of them stay far below this.
OWED_MAX_BYTES = 16 * 1024 * 1024
# Nesting of the file's msgpack: a list of maps of strings.
_OWED_DEPTH = 2
_TMP_SUFFIX = ".tmp"


def load(state_dir: str) -> list[OwedTrigger]:
    """The owed triggers, oldest first; [] when nothing is owed."""
    path = os.path.join(state_dir, OWED_NAME)
    try:
        with open(path, "rb") as f:
            data = f.read(OWED_MAX_BYTES + 1)
    except FileNotFoundError:
        return []
    except OSError as e:
        raise StoreError(f"{path}: cannot read the owed triggers: {e.strerror}") from e
    try:
        if len(data) > OWED_MAX_BYTES:
            raise ValueError(f"larger than {OWED_MAX_BYTES} bytes")
        return [OwedTrigger.from_wire(d) for d in codec.unpack(data, max_depth=_OWED_DEPTH)]
    except (SafcmError, ValueError, KeyError, TypeError) as e:
        raise StoreError(
            f"{path}: the owed triggers are unreadable ({e}); run them by hand, then remove"
            " the file"
        ) from e


def save(state_dir: str, owed: list[OwedTrigger]) -> None:
    """Replace the owed triggers with `owed`, atomically and durably."""
    data = codec.pack([o.to_wire() for o in owed])
    try:
        write_atomically(state_dir, OWED_NAME, data)
    except OSError as e:
        raise StoreError(
            f"{os.path.join(state_dir, OWED_NAME)}: cannot record the owed triggers: {e.strerror}"
        ) from e


def write_atomically(directory: str, name: str, data: bytes) -> None:
    """Make `directory`/`name` hold `data`: whole and durable, or unchanged.

    Written to a temporary name in the same directory (so the rename cannot
    cross filesystems), fsynced, renamed over `name`, and the directory
    fsynced so that the rename itself survives a power loss.
    """
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        tmp = name + _TMP_SUFFIX
        fd = os.open(
            tmp,
            os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=dir_fd,
        )
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
