"""The minion's spool: what it has promised the master, kept on disk.

- A job is written here when its receipt is sent, and removed when its result
  is written, so a job acknowledged but not yet applied survives a restart.
- A result is written here before it is first sent, and removed when the
  master confirms it has stored it.

One file per item, named by its jid (whose grammar admits no '/' or '..')
and a suffix for its kind. Files are written to a temporary name, fsynced,
renamed into place and the directory fsynced, so a crash leaves either no
file or a whole one; temporaries left by a crash are removed on open.
"""

from __future__ import annotations

import enum
import os

from common.ids import check_jid

TMP_PREFIX = ".tmp-"


class Kind(enum.StrEnum):
    JOB = ".job"
    RESULT = ".result"


class Spool:
    def __init__(self, directory: str) -> None:
        self.directory = directory
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self._dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        for name in os.listdir(self._dir_fd):
            if name.startswith(TMP_PREFIX):
                os.unlink(name, dir_fd=self._dir_fd)

    def close(self) -> None:
        os.close(self._dir_fd)

    def put(self, kind: Kind, jid: str, data: bytes) -> None:
        name = check_jid(jid) + kind
        tmp = TMP_PREFIX + name
        fd = os.open(
            tmp,
            os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=self._dir_fd,
        )
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)
        os.fsync(self._dir_fd)

    def get(self, kind: Kind, jid: str) -> bytes | None:
        try:
            fd = os.open(
                check_jid(jid) + kind,
                os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                dir_fd=self._dir_fd,
            )
        except FileNotFoundError:
            return None
        with os.fdopen(fd, "rb") as f:
            return f.read()

    def remove(self, kind: Kind, jid: str) -> bool:
        try:
            os.unlink(check_jid(jid) + kind, dir_fd=self._dir_fd)
        except FileNotFoundError:
            return False
        os.fsync(self._dir_fd)
        return True

    def jids(self, kind: Kind) -> list[str]:
        """Jids with an item of this kind, oldest first."""
        names = os.listdir(self._dir_fd)
        return sorted(n[: -len(kind)] for n in names if n.endswith(kind) and n[0] != ".")
