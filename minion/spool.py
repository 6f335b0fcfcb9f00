"""The minion's spool: what it has promised the master, kept on disk.

- Jobs are not written here any more: an accepted job is kept with its
  seen jid (common/seen.py), one commit for both. A .job file is one an
  earlier minion kept here; it is resumed, and removed once its result is
  written.
- A result is written here before it is first sent, and removed when the
  master confirms it has stored it. That removal need not be durable: a
  result back after a crash is sent again, and the master, which has it,
  answers with a receipt again.

One file per item, named by its jid (whose grammar admits no '/' or '..')
and a suffix for its kind. Every write and removal goes through
common/atomicfile.py, so a crash leaves either no file or a whole one, and
what a call wrote is on disk when it returns; temporaries left by a crash
are removed on open.
"""

from __future__ import annotations

import enum
import os

from safcm.common import atomicfile
from safcm.common.ids import check_jid


class Kind(enum.StrEnum):
    JOB = ".job"
    RESULT = ".result"


class Spool:
    def __init__(self, directory: str) -> None:
        self.directory = directory
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self._dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        atomicfile.remove_temporaries(self._dir_fd)

    def close(self) -> None:
        os.close(self._dir_fd)

    def put(self, kind: Kind, jid: str, data: bytes) -> None:
        atomicfile.replace_file(self._dir_fd, check_jid(jid) + kind, data)

    def get(self, kind: Kind, jid: str) -> bytes | None:
        return atomicfile.read_file(self._dir_fd, check_jid(jid) + kind)

    def remove(self, kind: Kind, jid: str, *, durable: bool = True) -> bool:
        return atomicfile.remove_file(self._dir_fd, check_jid(jid) + kind, durable=durable)

    def jids(self, kind: Kind) -> list[str]:
        """Jids with an item of this kind, oldest first."""
        names = os.listdir(self._dir_fd)
        return sorted(n[: -len(kind)] for n in names if n.endswith(kind) and n[0] != ".")
