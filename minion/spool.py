"""The minion's result spool: a result is on disk before it is first sent,
and stays there until the master confirms it has stored it.

One file per job, named by its jid (whose grammar admits no '/' or '..'),
holding the packed result body. Files are written to a temporary name, fsynced,
renamed into place and the directory fsynced, so a crash leaves either no
result or a whole one; temporaries left by a crash are removed on open.
"""

from __future__ import annotations

import os

SUFFIX = ".result"
TMP_PREFIX = ".tmp-"


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

    def put(self, jid: str, data: bytes) -> None:
        tmp = f"{TMP_PREFIX}{jid}"
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
        os.rename(tmp, jid + SUFFIX, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)
        os.fsync(self._dir_fd)

    def get(self, jid: str) -> bytes | None:
        try:
            fd = os.open(
                jid + SUFFIX, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self._dir_fd
            )
        except FileNotFoundError:
            return None
        with os.fdopen(fd, "rb") as f:
            return f.read()

    def remove(self, jid: str) -> bool:
        try:
            os.unlink(jid + SUFFIX, dir_fd=self._dir_fd)
        except FileNotFoundError:
            return False
        os.fsync(self._dir_fd)
        return True

    def jids(self) -> list[str]:
        """Jids with a result waiting, oldest first."""
        names = os.listdir(self._dir_fd)
        return sorted(n[: -len(SUFFIX)] for n in names if n.endswith(SUFFIX))
