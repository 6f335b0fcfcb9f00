"""Durable, atomic replacement of a daemon's own state files: the one way to write one.

NOTE: every call works relative to a held directory descriptor, and never
follows a symlink at the file's name: a name is a plain name in that
directory, never a path.

    replace_file(directory, name, data)   name now holds data (old file replaced)
    create_file(directory, name, data)    the same, but never replaces: False if name exists
    read_file(directory, name)            the whole content, or None if there is no such file
    remove_file(directory, name)          unlink, durably (or not: durable=False)
    remove_temporaries(directory)         clean up after a crash (call at start-up)

`directory` is an open directory descriptor (the caller chose how to open
it, e.g. with O_NOFOLLOW after checking its owner) or a path, which is
opened for the call and closed again.

What a writer guarantees, at every instant, also across SIGKILL and power
loss (as far as the filesystem honours fsync):

- The name holds either the complete old content or the complete new one;
  never nothing (when there was an old file), never an empty or partial file.
- When the call returns, the new content and its name are on disk: the file
  was fsynced before it got the name, and the directory after.
- The file has exactly `mode` (fchmod, whatever the umask) from the moment it
  has a name; its content is never readable through a looser mode.
- A crash leaves no temporary behind, except in the instant between linkat
  and renameat (or, on a filesystem without O_TMPFILE, while a named
  temporary is written); remove_temporaries() removes those.

How: the data goes into an anonymous O_TMPFILE in the directory (a crash
before it is linked leaves nothing), which is fchmodded and fsynced, then
linked under a temporary name (linkat through /proc/self/fd) and renamed
over the target (renameat is atomic), and last the directory is fsynced.
create_file() links the file straight to its final name instead: linkat
fails if the name exists, so an existing file is never replaced, not even
by a concurrent writer. Where O_TMPFILE or /proc is missing, a named
temporary made with O_CREAT|O_EXCL|O_NOFOLLOW takes its place.

The file engine (minion/fileops.py) has its own faster path for managed
files, with the same guarantees; this module is for safcm's own state.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator

from safcm.common.errors import StateFileError

# Mode of a state file unless the caller says otherwise: the daemons' state
# (keys, the pinned master key, the spool) is for the daemon alone.
DEFAULT_MODE = 0o600
# Temporary names start with this, so remove_temporaries() can tell them from
# state files; callers never name a file so.
TEMP_PREFIX = ".safcm-new-"
# Random hex digits in a temporary name, and how many names we try: with 64
# random bits a second collision means someone plants names on purpose.
_TOKEN_BYTES = 8
_TEMP_ATTEMPTS = 8
# The largest state file read_file() reads unless told otherwise, in bytes.
DEFAULT_MAX_BYTES = 64 * 1024 * 1024

# A directory given as a path: a real directory (the administrator's choice of
# path is trusted, symlinks on the way included), closed on exec.
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
# An anonymous file in the directory; it has no name until linkat gives it one.
_TMPFILE_FLAGS = os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC
# A named temporary: O_EXCL|O_NOFOLLOW, so a planted name or symlink makes us
# fail instead of writing through it.
_NAMED_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# Reading: never through a symlink; O_NONBLOCK so a FIFO planted at the name
# cannot hang the daemon.
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
# O_TMPFILE fails with these where the filesystem does not support it; linking
# through /proc fails with ENOENT where /proc is not mounted.
_NO_TMPFILE = (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL)

# For tests: write through a named temporary even where O_TMPFILE works, so
# that both ways are exercised on any machine.
FORCE_NAMED_TEMP = False


def replace_file(directory: int | str, name: str, data: bytes, *, mode: int = DEFAULT_MODE) -> None:
    """Make `name` in `directory` hold `data` with `mode`, replacing any old file.

    Durable when it returns; atomic at every instant (see the module's
    docstring). Raises StateFileError.
    """
    _check_name(name)
    with _directory(directory) as dir_fd, _failing(name, "cannot write"):
        temp = _new_temporary(dir_fd, name, data, mode)
        try:
            os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp, dir_fd=dir_fd)
            raise
        os.fsync(dir_fd)


def create_file(directory: int | str, name: str, data: bytes, *, mode: int = DEFAULT_MODE) -> bool:
    """Like replace_file(), but never replaces: False (and nothing written) if
    `name` exists already, also when another process created it meanwhile."""
    _check_name(name)
    with _directory(directory) as dir_fd, _failing(name, "cannot create"):
        fd = None if FORCE_NAMED_TEMP else _open_tmpfile(dir_fd)
        if fd is not None:
            try:
                _fill(fd, data, mode)
                try:
                    _link_tmpfile(fd, dir_fd, name)
                except FileExistsError:
                    return False
                except FileNotFoundError:
                    pass  # no /proc to link through: write a named temporary below
                else:
                    os.fsync(dir_fd)
                    return True
            finally:
                os.close(fd)
        temp = _new_named(dir_fd, name, data, mode)
        try:
            os.link(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
        except FileExistsError:
            return False
        finally:
            with contextlib.suppress(OSError):
                os.unlink(temp, dir_fd=dir_fd)
        os.fsync(dir_fd)
        return True


def read_file(
    directory: int | str, name: str, *, max_bytes: int = DEFAULT_MAX_BYTES
) -> bytes | None:
    """The whole content of `name`, or None if it does not exist.

    StateFileError if it is a symlink or not a regular file, is larger than
    `max_bytes`, or cannot be read.
    """
    _check_name(name)
    with _directory(directory) as dir_fd, _failing(name, "cannot read"):
        try:
            fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
        except FileNotFoundError:
            return None
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise StateFileError(name, "is a symlink; refusing to follow it") from None
            raise
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise StateFileError(name, "is not a regular file")
            chunks = []
            size = 0
            while size <= max_bytes:
                chunk = os.read(fd, max_bytes + 1 - size)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        finally:
            os.close(fd)
    if size > max_bytes:
        raise StateFileError(name, f"is larger than {max_bytes} bytes")
    return b"".join(chunks)


def remove_file(directory: int | str, name: str, *, durable: bool = True) -> bool:
    """Unlink `name` and fsync the directory; False if there was no such file.

    With durable=False the directory is not synced: for a file whose return
    after a crash is harmless (the caller says why), which saves a journal
    commit the caller would otherwise wait on.
    """
    _check_name(name)
    with _directory(directory) as dir_fd, _failing(name, "cannot remove"):
        try:
            os.unlink(name, dir_fd=dir_fd)
        except FileNotFoundError:
            return False
        if durable:
            os.fsync(dir_fd)
        return True


def remove_temporaries(directory: int | str) -> int:
    """Remove the temporaries a crash left in `directory`; returns how many.

    Call it where no other writer can be at work in the directory (a
    daemon's start-up): it would remove a concurrent writer's temporary.
    """
    removed = 0
    with _directory(directory) as dir_fd, _failing(".", "cannot clean up"):
        for entry in os.listdir(dir_fd):
            if entry.startswith(TEMP_PREFIX):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry, dir_fd=dir_fd)
                    removed += 1
        if removed:
            os.fsync(dir_fd)
    return removed


# ---- the steps ----


def _check_name(name: str) -> None:
    """A name is one plain component; a path or a temporary's name is a bug in the caller."""
    if (
        not name
        or "/" in name
        or "\0" in name
        or name in (".", "..")
        or name.startswith(TEMP_PREFIX)
    ):
        raise ValueError(f"not a plain state file name: {name!r}")


@contextlib.contextmanager
def _directory(directory: int | str) -> Iterator[int]:
    if isinstance(directory, int):
        yield directory
        return
    try:
        dir_fd = os.open(directory, _DIR_FLAGS)
    except OSError as e:
        raise StateFileError(directory, f"cannot open the directory: {e.strerror}") from None
    try:
        yield dir_fd
    finally:
        os.close(dir_fd)


@contextlib.contextmanager
def _failing(name: str, what: str) -> Iterator[None]:
    """OSError -> StateFileError naming the file."""
    try:
        yield
    except OSError as e:
        raise StateFileError(name, f"{what}: {e.strerror or e}") from e


def _new_temporary(dir_fd: int, name: str, data: bytes, mode: int) -> str:
    """A complete, fsynced file holding `data` under a fresh temporary name."""
    fd = None if FORCE_NAMED_TEMP else _open_tmpfile(dir_fd)
    if fd is None:
        return _new_named(dir_fd, name, data, mode)
    try:
        _fill(fd, data, mode)
        for _ in range(_TEMP_ATTEMPTS):
            temp = _temp_name(name)
            try:
                _link_tmpfile(fd, dir_fd, temp)
            except FileExistsError:
                continue
            except FileNotFoundError:
                break  # no /proc: fall back to a named temporary
            return temp
        else:
            raise FileExistsError(errno.EEXIST, "no free temporary name")
    finally:
        os.close(fd)
    return _new_named(dir_fd, name, data, mode)


def _open_tmpfile(dir_fd: int) -> int | None:
    """An O_TMPFILE in the directory, or None where the filesystem has none."""
    try:
        return os.open(".", _TMPFILE_FLAGS, mode=DEFAULT_MODE, dir_fd=dir_fd)
    except OSError as e:
        if e.errno in _NO_TMPFILE:
            return None
        raise


def _link_tmpfile(fd: int, dir_fd: int, name: str) -> None:
    """Give the O_TMPFILE `fd` the name `name`; FileExistsError if it is taken.

    linkat through /proc/self/fd works for any user (linkat with AT_EMPTY_PATH
    would need CAP_DAC_READ_SEARCH); FileNotFoundError if /proc is missing.
    """
    os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=dir_fd, follow_symlinks=True)


def _new_named(dir_fd: int, name: str, data: bytes, mode: int) -> str:
    for _ in range(_TEMP_ATTEMPTS):
        temp = _temp_name(name)
        try:
            fd = os.open(temp, _NAMED_FLAGS, mode=DEFAULT_MODE, dir_fd=dir_fd)
        except FileExistsError:
            continue
        try:
            _fill(fd, data, mode)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp, dir_fd=dir_fd)
            raise
        finally:
            os.close(fd)
        return temp
    raise FileExistsError(errno.EEXIST, "no free temporary name")


def _fill(fd: int, data: bytes, mode: int) -> None:
    """Write all of `data`, set the mode (the umask may have taken bits off), fsync."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.fchmod(fd, mode)
    os.fsync(fd)


def _temp_name(name: str) -> str:
    # Truncated so that the temporary's name stays below NAME_MAX (255 bytes).
    return f"{TEMP_PREFIX}{secrets.token_hex(_TOKEN_BYTES)}-{name[:200]}"
