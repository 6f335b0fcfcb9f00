"""The triggers a minion owes: kept in its state directory across restarts.

An apply that has a failure runs no trigger (a reload must never meet a
half-applied host), so the triggers of the changes it did apply are owed
until an apply without failure runs them (minion/fileops.py). Losing that
record would silently lose a reload, so it is written through the one
durable-write primitive (common/atomicfile.py): a crash leaves the old list
or the new one, never a missing or partial file. The list is
cleared only after its triggers ran, so a crash in between runs them again:
a trigger may run twice, never not at all.

Only the engine reads and writes this file, while it holds the engine lock.
"""

from __future__ import annotations

import os

from safcm.common import atomicfile, codec
from safcm.common.errors import SafcmError, StateFileError, StoreError
from safcm.common.model import OwedTrigger

OWED_NAME = "owed-triggers"
# Largest owed-trigger file we read, in bytes: every command is owed once,
# so even thousands of them stay far below this.
OWED_MAX_BYTES = 16 * 1024 * 1024
# Nesting of the file's msgpack: a list of maps of strings.
_OWED_DEPTH = 2


def load(state_dir: str) -> list[OwedTrigger]:
    """The owed triggers, oldest first; [] when nothing is owed."""
    path = os.path.join(state_dir, OWED_NAME)
    try:
        data = atomicfile.read_file(state_dir, OWED_NAME, max_bytes=OWED_MAX_BYTES)
    except StateFileError as e:
        raise StoreError(f"{path}: cannot read the owed triggers: {e.reason}") from e
    if data is None:
        return []
    try:
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
        atomicfile.replace_file(state_dir, OWED_NAME, data)
    except StateFileError as e:
        raise StoreError(
            f"{os.path.join(state_dir, OWED_NAME)}: cannot record the owed triggers: {e.reason}"
        ) from e
