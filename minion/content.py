"""The minion's content cache: file content by its SHA-256, so that a job
carries only the content this host lacks (issue 11: a no-op run sends
manifests, not files).

Each entry is one file in <state_dir>/content named by the digest in hex. An
entry is written to a temporary name and renamed, but not fsynced: the cache
is an optimisation, never the only copy (the master keeps every job's content
until the job's results are in). What protects it is the check on every read:
an entry whose content does not hash to its name (torn by a crash, damaged on
disk, planted) is removed and reported missing, and the minion asks the
master for it. A job is applied only once all its content is there.

The cache is bounded by `budget` bytes. A use of an entry refreshes its
time (at most once per TOUCH_INTERVAL), and when a write takes the cache
over budget the least recently used entries go (plan_evictions(), pure).
A job's own content is written as it arrives, so a budget smaller than one
job's content only costs round trips.

The cache is used from one thread at a time (the minion's apply worker).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass

from safcm.common.errors import StateFileError
from safcm.common.protocol import MAX_FILE_BYTES

CONTENT_DIR = "content"
# Bytes a cache keeps by default: several times the managed content of a
# large host (1000 files of a few KiB), small against a disk.
DEFAULT_BUDGET = 256 * 1024 * 1024
# Temporary entries start with this; a name of 64 hex digits is never one.
_TEMP_PREFIX = ".new-"
# Largest entry read back: the largest file a job may carry, so a planted
# huge file cannot make a read unbounded.
MAX_ENTRY_BYTES = MAX_FILE_BYTES
# Seconds: an entry's time (its mtime) is refreshed by a use only when it is
# older than this. Refreshing on every use cost two syscalls per file of
# every job; an hour is still fine grain for choosing what to evict from a
# cache that holds the content of many jobs.
TOUCH_INTERVAL = 3600.0


def digest_of(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


@dataclass(frozen=True)
class Entry:
    name: str  # the digest in hex
    size: int  # bytes
    used: float  # when last written or read (the entry's mtime), seconds


def plan_evictions(entries: Iterable[Entry], budget: int) -> list[Entry]:
    """The least recently used entries to remove so the rest fit in `budget`
    bytes (ties broken by name, so the choice is deterministic)."""
    ordered = sorted(entries, key=lambda e: (e.used, e.name))
    total = sum(e.size for e in ordered)
    evict = []
    for entry in ordered:
        if total <= budget:
            break
        evict.append(entry)
        total -= entry.size
    return evict


class ContentCache:
    def __init__(self, state_dir: str, budget: int = DEFAULT_BUDGET) -> None:
        path = os.path.join(state_dir, CONTENT_DIR)
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
        try:
            self.dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as e:
            raise StateFileError(path, f"cannot open the content cache: {e.strerror}") from e
        info = os.fstat(self.dir_fd)
        if info.st_uid != os.geteuid() or stat.S_IMODE(info.st_mode) & 0o077:
            os.close(self.dir_fd)
            raise StateFileError(
                path,
                "the content cache must belong to this user with mode 0700 "
                f"(it has uid {info.st_uid}, mode {stat.S_IMODE(info.st_mode):04o})",
            )
        self.path = path
        self.budget = budget
        self.entries: dict[str, Entry] = {}
        self._total = 0  # bytes in `entries`, kept as they change
        for name in os.listdir(self.dir_fd):
            if name.startswith(_TEMP_PREFIX):  # a write a crash interrupted
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=self.dir_fd)
                continue
            with contextlib.suppress(FileNotFoundError):
                st = os.stat(name, dir_fd=self.dir_fd, follow_symlinks=False)
                if stat.S_ISREG(st.st_mode):
                    self._keep(Entry(name, st.st_size, st.st_mtime))

    @property
    def size(self) -> int:
        return self._total

    def _keep(self, entry: Entry) -> None:
        old = self.entries.get(entry.name)
        if old is not None:
            self._total -= old.size
        self.entries[entry.name] = entry
        self._total += entry.size

    def _forget(self, name: str) -> None:
        old = self.entries.pop(name, None)
        if old is not None:
            self._total -= old.size

    def get(self, digest: bytes) -> bytes | None:
        """The content with this digest, or None (never cached, evicted, or
        damaged: a damaged entry is removed)."""
        name = digest.hex()
        entry = self.entries.get(name)
        if entry is None:
            return None
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.dir_fd)
        except OSError:
            self._drop(name)
            return None
        try:
            data = _read_at_most(fd, MAX_ENTRY_BYTES)
            if data is None or digest_of(data) != digest:
                self._drop(name)
                return None
            used = entry.used
            if _stale(used):
                os.utime(fd)  # used now: the last to be evicted
                used = os.fstat(fd).st_mtime
        finally:
            os.close(fd)
        self._keep(Entry(name, len(data), used))
        return data

    def put(self, data: bytes) -> bytes:
        """Keep `data`; returns its digest. An entry already there is only
        marked as used. Then evicts what no longer fits."""
        digest = digest_of(data)
        name = digest.hex()
        entry = self.entries.get(name)
        if entry is not None:
            if not _stale(entry.used):
                return digest  # its content is checked when it is read
            try:  # mark it used
                os.utime(name, dir_fd=self.dir_fd, follow_symlinks=False)
                st = os.stat(name, dir_fd=self.dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                self._forget(name)
            else:
                self._keep(Entry(name, st.st_size, st.st_mtime))
                return digest
        temp = _TEMP_PREFIX + secrets.token_hex(8)
        fd = os.open(
            temp,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=self.dir_fd,
        )
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            st = os.fstat(fd)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(temp, dir_fd=self.dir_fd)
            raise
        os.close(fd)
        os.rename(temp, name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
        self._keep(Entry(name, len(data), st.st_mtime))
        if self._total > self.budget:
            self.evict()
        return digest

    def evict(self) -> list[str]:
        """Remove least recently used entries until the cache fits its budget."""
        removed = []
        for entry in plan_evictions(self.entries.values(), self.budget):
            self._drop(entry.name)
            removed.append(entry.name)
        return removed

    def _drop(self, name: str) -> None:
        self._forget(name)
        try:
            os.unlink(name, dir_fd=self.dir_fd)
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise

    def close(self) -> None:
        os.close(self.dir_fd)


def resolve(files: list[dict[str, object]], cache: ContentCache) -> list[bytes]:
    """Fill in the content of a job's files (wire form) that came without it,
    from the cache; keep the content that came with the job in the cache for
    the next one. Returns the digests still missing, each once, in order."""
    missing: dict[bytes, None] = {}  # ordered, each digest once
    for f in files:
        data, digest = f.get("data"), f.get("digest")
        if not isinstance(digest, bytes):
            continue  # not a regular file: a directory or a symlink
        if isinstance(data, bytes):
            cache.put(data)
            continue
        found = cache.get(digest)
        if found is not None:
            f["data"] = found
        else:
            missing[digest] = None
    return list(missing)


def _stale(used: float) -> bool:
    """True if an entry last stamped `used` should be stamped again."""
    return time.time() - used >= TOUCH_INTERVAL


def _read_at_most(fd: int, limit: int) -> bytes | None:
    """The whole file, or None if it is longer than `limit` bytes."""
    chunks = []
    total = 0
    while chunk := os.read(fd, 1024 * 1024):
        total += len(chunk)
        if total > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
