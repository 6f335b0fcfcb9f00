"""The file engine: make a host's files exactly as declared, beneath a root.

NOTE: never call a path-based function (open(path), os.stat(path),
os.rename(a, b), shutil...) on a managed path. Such a call follows a symlink
in any component, and a user who can write to a directory on the way can
point it anywhere. Every syscall here is an *at call relative to a directory
descriptor that was resolved beneath the root without following a symlink.

How one apply works (apply_files):

1. Take the engine lock (flock on a file in the state directory), so two
   applies never interleave on one host. It is held through the triggers.
   Read the triggers owed by earlier applies (minion/owed.py).
2. check_specs() and check_removals() (plan.py) check the whole input before
   any syscall on the host, and order it: files by path, so that parents come
   before their children; absent paths deepest first.
3. Open the root. For each file: resolve its parent directory (one
   openat2(RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS) call where the kernel has it,
   else a walk of openat(O_NOFOLLOW|O_DIRECTORY), one component at a time;
   descriptors are cached for the whole apply), observe what is at the name
   without following or blocking (a Found), and let plan.decide() compute the
   change and the steps. The change is recorded before anything is done,
   with its outcome: applied, or would apply in a dry run, which stops here.
4. Do the steps. A file's new version is written to an anonymous O_TMPFILE
   (or, where the filesystem lacks it, a named temporary created with
   O_EXCL|O_NOFOLLOW, mode 0600), then fchown (before fchmod, because chown
   clears the setuid and setgid bits), fchmod, fsync, linked to a temporary
   name and renamed over the target. A symlink is made under a temporary name,
   chowned with AT_SYMLINK_NOFOLLOW and renamed. A new directory, too, is
   made whole under a temporary name (mkdir 0700, opened without following,
   fchown, fchmod) and only then renamed into place, with
   renameat2(RENAME_NOREPLACE): it never appears at its path half-made,
   which matters most for a directory passed through, never changed once it
   exists (a 0700 /usr/local/bin would lock out every other user for good).
   A type change removes the old file or empty directory; a non-empty
   directory is never removed.
   New file versions are created, written, fsynced and (an O_TMPFILE, only
   then) linked to a temporary name on a few worker threads at once
   (minion/pipeline.py), handed over in batches of WRITE_BATCH, so their
   fsyncs share trips to the disk and the kernel's work of creating them
   runs on several cores, while the main thread observes and decides the
   next files. A worker works only relative to the parent's held
   descriptor (which stays open until the worker is done) and through the
   temporary's own descriptor. The main thread renames each new version
   into place, in path order, only once its own fsync has returned. Any
   other step but the making of a new directory first finishes every
   earlier write, so the host changes in path order (a new directory may
   appear before the earlier files' renames).
5. One failure stops only what depends on it. A file that fails is recorded
   as failed, with the reason, and the apply goes on with the next path. A
   directory that fails blocks the paths below it: they are recorded as
   skipped, with the reason, and never touched (their records say what the
   change would have been, as in a dry run).
6. Remove what must not exist: absent paths, then the undeclared entries of
   purged directories. Removal is as careful as writing: every entry is
   observed and recorded first (with the content it loses as a diff), and
   removed relative to a held descriptor of its directory (unlinkat,
   unlinkat(AT_REMOVEDIR)), never through a symlink (a directory is opened
   with O_NOFOLLOW, or openat2 with RESOLVE_NO_SYMLINKS) and never across a
   mount (RESOLVE_NO_XDEV, and a device check in any case). The names of
   what is found there come from the host, not from the job: a Linux name
   is any bytes, and one that is not UTF-8 cannot travel in a result. So
   the report gives every such entry a path whose components below the
   declared directory are in common/text.py's escape_name() form (a byte
   that is not UTF-8 is \\xNN, a backslash \\\\), and the engine's own
   decisions keep using the real name. The path still starts with the
   declared directory's, as the master's plan check requires (Plan.covers
   in master/jobstore.py). An entry whose path would be too long for the
   wire even so is left in place, a failure of its directory. User and
   group names from the host are escaped the same way, only when they are
   not UTF-8; a diff shows content or a link target that is not UTF-8 as
   binary (minion/diff.py). One odd name costs one escaped record, never
   the whole result.
7. fsync every directory that was changed, once: at the end (several at
   once), or earlier if its descriptor leaves the cache. The report is only
   sent after apply_files returns, so no rename is reported before it is
   durable.
8. Triggers. Before a change is made, the triggers it fires are added to
   the owed ones, durably (_Owing): a crash after the change would otherwise
   lose them, for the next apply finds the path as declared. If no path
   failed: run the owed triggers and those of the changed paths, each
   command once, and clear the owed ones (a crash before that runs them
   again: a trigger may run twice, never not at all). If a path failed: run
   none (a reload must never meet a half-applied host); they stay owed, so
   the next apply without failure runs them. Every report shows what is
   still owed.

What a crash (SIGKILL, power loss) can leave behind: only complete files,
either the old or the new version, and complete directories; and sometimes
a temporary named ".<name>.safcm-tmp-<hex>": a file (between linkat and
renameat, or for the whole write of a named temporary), a symlink, or an
empty directory (between mkdir and renameat2). The next apply removes such
names from every directory it resolves as a parent; see _Apply._clean.
These are the guarantees of common/atomicfile.py, which writes the daemons'
own state; the engine keeps its own path for speed (concurrent fsyncs, cached
directory descriptors, one directory fsync per apply) and for what managed
files need besides (owners, symlinks, directories).
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import errno
import fcntl
import grp
import os
import platform
import pwd
import secrets
import stat
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TypeVar, overload

from safcm.common.errors import (
    FileOpError,
    LockError,
    MissingDirectoryError,
    MountPointError,
    NonEmptyDirectoryError,
    OwnerLookupError,
    StoreError,
    SymlinkInPathError,
)
from safcm.common.model import (
    PATH_MAX,
    AbsentSpec,
    ApplyFailure,
    ApplyResult,
    FileChange,
    FileSpec,
    FileType,
    Outcome,
    OwedTrigger,
    TriggerRun,
    check_path,
)
from safcm.common.text import escape_name
from safcm.minion import owed, triggers
from safcm.minion.diff import DIFF_INPUT_MAX
from safcm.minion.pipeline import Pipeline
from safcm.minion.plan import (
    TEMP_MARK,
    TEMP_TOKEN_HEX,
    Decision,
    Found,
    Owner,
    Remove,
    Step,
    ancestors,
    check_removals,
    check_specs,
    decide,
    decide_removal,
    due_commands,
    has_triggers,
    is_secret,
    is_temp_name,
    owe,
    owe_first,
    temp_name,
    trigger_commands,
    with_outcome,
)

# Seconds an apply waits for another apply to release the engine lock.
LOCK_TIMEOUT = 10.0
# Seconds between attempts to take the lock while waiting.
LOCK_POLL = 0.05
# The lock file, in the minion's state directory.
LOCK_NAME = "fileops.lock"
# Seconds one trigger may run (see minion/triggers.py).
TRIGGER_TIMEOUT = triggers.TRIGGER_TIMEOUT
# Directory descriptors kept open within one apply. The default soft limit on
# open files is 1024; we stay far below it. Directories come in path order,
# so a small least-recently-used cache hits nearly always.
DIR_CACHE_MAX = 128
# How often we look again when what is at a path, or a directory on the way
# to it, changes while we look.
OBSERVE_ATTEMPTS = 3
RESOLVE_ATTEMPTS = 3
# Worker threads of one apply that create, write and fsync new file
# versions, so that this many fsyncs can be in flight at once: with a
# journal (ext4, xfs) the fsyncs that wait together share one commit;
# without one, the disk takes their writes and cache flushes together. On
# the 2-core test machine (ext4 without a journal) 4 to 16 gave about the
# same gain, 1.5x to 2.5x on create (bench/engine.py --serial); more only
# adds threads. os.fsync releases the GIL.
FSYNC_WORKERS = 8
# New file and symlink versions submitted but not yet renamed into place, at
# most; the main thread waits for the oldest when it is this far ahead. This
# bounds the temporaries in the directories and the memory of an apply, and
# its descriptors to DIR_CACHE_MAX + min(FSYNC_WORKERS, PENDING_WRITES_MAX)
# + a few (a temporary's descriptor is open only while a worker writes it),
# far below the default limit of 1024. Four per worker keeps the workers
# busy while the oldest file's fsync holds up the renames behind it.
PENDING_WRITES_MAX = 32
# New file versions handed to a worker at once, and written and fsynced
# there one after another. Each handoff between threads costs about as much
# as writing a small file (a wake-up and GIL switches, more on a busy
# machine); in batches of 4, PENDING_WRITES_MAX still keeps FSYNC_WORKERS
# batches, so as many fsyncs, in flight.
WRITE_BATCH = 4
# Directory levels below a path that is removed or purged, at most. Each
# level holds one descriptor open while its entries go; a deeper tree is
# an error that asks for removal by hand.
REMOVE_DEPTH_MAX = 128
# How many random temporary names we try before giving up; with 64 random
# bits a second collision means someone is planting names on purpose.
TEMP_ATTEMPTS = 8

# Open a directory we will work in: readable (fsync and listing need a real
# descriptor, not O_PATH), never through a symlink.
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# Open an old file to read it: O_NOFOLLOW so the last component is no
# symlink, O_NONBLOCK so a FIFO swapped in never blocks, O_NOCTTY so a
# terminal never becomes our controlling terminal.
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
# Look at a directory without opening it for reading (used to find which
# component of a path is wrong).
_LOOK_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# Create a named temporary: O_EXCL|O_NOFOLLOW, so a planted name or symlink
# makes us fail instead of writing through it.
_NAMED_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# An anonymous file in the directory, which gets a name only by linkat, so a
# crash before that leaves nothing behind.
_TMPFILE_FLAGS = os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC
# Mode of a temporary file or new directory until it has its owner: only we
# can use it meanwhile.
_PRIVATE_FILE = 0o600
_PRIVATE_DIR = 0o700
# O_TMPFILE fails with these where the filesystem does not support it.
_NO_TMPFILE = (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL)
# A stale temporary that fails to go with these is left in place: gone
# already, or (a directory so named) not empty, a mount point, or swapped
# for a non-directory since we listed it.
_KEEP_STALE = (errno.ENOENT, errno.ENOTEMPTY, errno.EEXIST, errno.EBUSY, errno.ENOTDIR)


class Resolve(enum.Enum):
    """How a parent directory is resolved beneath the root."""

    OPENAT2 = "openat2"  # one openat2(RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS) call
    WALK = "walk"  # openat(O_NOFOLLOW|O_DIRECTORY), one component at a time


class Temp(enum.Enum):
    """How a new file version gets its temporary name."""

    TMPFILE = "tmpfile"  # O_TMPFILE, linked in with linkat(AT_EMPTY_PATH)
    TMPFILE_PROC = "tmpfile-proc"  # O_TMPFILE, linked in through /proc/self/fd
    NAMED = "named"  # a named temporary, O_CREAT|O_EXCL|O_NOFOLLOW


# Switches for tests and benchmarks, read at the start of every apply. None
# means: use the best the kernel and filesystem offer, falling back by itself.
FORCE_RESOLVE: Resolve | None = None
FORCE_TEMP: Temp | None = None


# ---------------------------------------------------------------------------
# Syscalls Python's os module lacks: openat2(2), linkat(2) with
# AT_EMPTY_PATH and renameat2(2). Called through ctypes; all release the GIL.

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.linkat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
_libc.linkat.restype = ctypes.c_int
# glibc 2.28 and later (2018) wrap renameat2; without it we rename as below.
_renameat2 = getattr(_libc, "renameat2", None)
if _renameat2 is not None:
    _renameat2.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    _renameat2.restype = ctypes.c_int

# openat2 is number 437 in the generic syscall table that these architectures
# share; others (alpha, mips, ia64) number it differently and use the walk.
_SYS_OPENAT2 = 437
_OPENAT2_MACHINES = frozenset(
    {"x86_64", "aarch64", "arm64", "armv7l", "i386", "i686", "riscv64", "ppc64le", "s390x"}
)
# From <linux/openat2.h>.
_RESOLVE_NO_XDEV = 0x01
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
_AT_EMPTY_PATH = 0x1000


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


# Resolve a directory strictly beneath the descriptor we start from, and fail
# (ELOOP) on any symlink, including /proc-style magic links.
_DIR_HOW = _OpenHow(
    flags=os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC,
    mode=0,
    resolve=_RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS,
)
_DIR_HOW_SIZE = ctypes.sizeof(_DIR_HOW)
_DIR_HOW_REF = ctypes.byref(_DIR_HOW)
# The same, and never into another mount (EXDEV): for directories we remove
# or purge, whose walk must stay on the filesystem it started on.
_XDEV_HOW = _OpenHow(flags=_DIR_HOW.flags, mode=0, resolve=_DIR_HOW.resolve | _RESOLVE_NO_XDEV)
_XDEV_HOW_REF = ctypes.byref(_XDEV_HOW)


def _openat2_dir(dirfd: int, path: bytes, how_ref: object = _DIR_HOW_REF) -> int:
    """openat2(dirfd, path, how) with _DIR_HOW unless told otherwise; raises OSError."""
    fd = _libc.syscall(
        ctypes.c_long(_SYS_OPENAT2),
        ctypes.c_int(dirfd),
        ctypes.c_char_p(path),
        how_ref,
        ctypes.c_size_t(_DIR_HOW_SIZE),
    )
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return fd


_openat2_works: bool | None = None  # probed once per process


def openat2_available() -> bool:
    """True if this kernel has openat2 and lets us call it (probed once)."""
    global _openat2_works
    if _openat2_works is None:
        _openat2_works = False
        if platform.machine() in _OPENAT2_MACHINES:
            fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.close(_openat2_dir(fd, b"."))
                _openat2_works = True
            except OSError:
                # ENOSYS: kernel before 5.6; EPERM: a seccomp filter refuses it.
                pass
            finally:
                os.close(fd)
    return _openat2_works


# True until linkat(AT_EMPTY_PATH) says EPERM once.
_empty_path_link_works = True
# From <linux/fs.h>: fail with EEXIST instead of replacing the target.
_RENAME_NOREPLACE = 1
# True until renameat2 is missing, or says ENOSYS (Linux < 3.15) or EINVAL
# (a filesystem without RENAME_NOREPLACE) once.
_noreplace_works = _renameat2 is not None


def _rename_dir_noreplace(dirfd: int, tmp: str, name: str) -> None:
    """Rename the new directory `tmp` in `dirfd` to `name`, which nothing
    may hold; raises FileExistsError if something does, else OSError.

    renameat2(RENAME_NOREPLACE) where the kernel and filesystem have it.
    Else plain renameat, which fails as well on a file, symlink or
    non-empty directory at `name` (ENOTDIR, ENOTEMPTY) and replaces only
    an empty directory: one that appeared since we looked, in place of
    which the declared one is as good.
    """
    global _noreplace_works
    if _noreplace_works and _renameat2 is not None:
        if _renameat2(dirfd, os.fsencode(tmp), dirfd, os.fsencode(name), _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.ENOSYS, errno.EINVAL):
            raise OSError(err, os.strerror(err))
        _noreplace_works = False
    try:
        os.rename(tmp, name, src_dir_fd=dirfd, dst_dir_fd=dirfd)
    except OSError as e:
        if e.errno in (errno.ENOTDIR, errno.ENOTEMPTY):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST)) from e
        raise


def _link_tmpfile(fd: int, dirfd: int, name: str, proc: bool) -> None:
    """Give the O_TMPFILE `fd` the name `name` in `dirfd`; raises OSError.

    linkat(fd, "", ..., AT_EMPTY_PATH) needs CAP_DAC_READ_SEARCH (root has
    it); without it the kernel says EPERM and we link /proc/self/fd/N instead.
    """
    global _empty_path_link_works
    if not proc and _empty_path_link_works:
        if _libc.linkat(fd, b"", dirfd, os.fsencode(name), _AT_EMPTY_PATH) == 0:
            return
        err = ctypes.get_errno()
        if err != errno.EPERM:
            raise OSError(err, os.strerror(err))
        _empty_path_link_works = False
    os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=dirfd, follow_symlinks=True)


T = TypeVar("T")

# ---------------------------------------------------------------------------
# The public entry point.


def apply_files(
    root: str,
    files: Sequence[FileSpec],
    *,
    dry_run: bool,
    state_dir: str,
    jid: str,
    absent: Sequence[AbsentSpec] = (),
    purge: Sequence[str] = (),
    secrets: Sequence[str] = (),
    trigger_timeout: float = TRIGGER_TIMEOUT,
    lock_timeout: float = LOCK_TIMEOUT,
    hold_triggers: bool = False,
) -> ApplyResult:
    """Make the files beneath `root` as declared, remove what must not exist, and report.

    `files` are made as declared; `absent` paths removed; the entries of the
    `purge` directories that no file declares removed; and the content of
    `secrets` paths (and anything below them) never shown. `jid` names this
    job in the triggers it leaves owed.

    Every path that can be applied is; every failure is in `.failures`, and
    every change record carries its outcome. Bad input (a spec that fails its
    check, a path declared twice, ...) is reported the same way, before any
    syscall on the host. Triggers run only if no path failed; otherwise they
    are owed (see the module docstring). A dry run writes nothing, not even
    the owed triggers, and lists the triggers as "would run".

    `hold_triggers` (a sync job whose later steps must run before the
    triggers, minion/modules/): after an apply without failure the
    triggers are owed, durably, instead of run; run_owed_triggers() runs
    them once the later steps succeeded. A dry run lists them as "would
    run" all the same.

    Raises LockError if another apply holds the lock for longer than
    `lock_timeout` seconds, FileOpError naming `root` if the root directory
    cannot be opened at all, and StoreError if the owed triggers cannot be
    read. Nothing else: a failure to record them is one in the report.
    """
    started = time.monotonic()
    result = ApplyResult(dry_run=dry_run)
    with _engine_lock(state_dir, lock_timeout):
        owed_before = owed.load(state_dir)
        result.owed = owed_before
        try:
            ordered = check_specs(files)
            removals, purged = check_removals(ordered, absent, purge)
            for path in secrets:
                check_path(path)
        except FileOpError as e:
            result.failures.append(ApplyFailure(e.path, e.reason))
            result.duration = time.monotonic() - started
            return result
        specs = {spec.path: spec for spec in ordered}
        owing = None
        if not dry_run and has_triggers(specs):
            owing = _Owing(state_dir, jid, specs, owed_before)
        rootfd = _open_root(root)
        try:
            applied = _apply_all(rootfd, ordered, removals, purged, tuple(secrets), result, owing)
        finally:
            os.close(rootfd)
        # What the owed-trigger file holds now: the changes' triggers were
        # recorded in it before each change (_Owing).
        recorded = owed_before if owing is None else owing.recorded
        if result.failures or (hold_triggers and not dry_run):
            # A real run has them on disk already: recorded holds the
            # triggers of every change it made.
            result.owed = owe(recorded, applied, specs, jid)
        else:
            commands = due_commands(owed_before, trigger_commands(applied, specs))
            if dry_run:
                result.triggers = triggers.would_run(commands)
            else:
                result.triggers = triggers.run_triggers(
                    commands, root=os.path.abspath(root), timeout=trigger_timeout
                )
                # Ran, whatever their status: a failed trigger is reported
                # as failed, not owed again.
                result.owed = []
                if recorded:
                    _clear_owed(state_dir, recorded, result)
    result.duration = time.monotonic() - started
    return result


def _clear_owed(state_dir: str, ran: list[OwedTrigger], result: ApplyResult) -> None:
    """Owe nothing once the triggers ran. If that cannot be written, the
    report says so as a failure and lists them as still owed (they run
    again after the next apply), keeping every change it made: the host
    changed all the same."""
    try:
        owed.save(state_dir, [])
    except StoreError as e:
        result.failures.append(ApplyFailure("", f"ran the triggers, but cannot clear them: {e}"))
        result.owed = ran


@dataclass
class _Owing:
    """The owed-trigger file of a real apply whose files have triggers, and
    what it holds (`recorded`): each change's triggers go in before it is made."""

    state_dir: str
    jid: str
    specs: dict[str, FileSpec]
    recorded: list[OwedTrigger]

    def first(self, path: str) -> None:
        """Record the triggers that the change at `path` fires, durably,
        before it is made (plan.owe_first() says why); FileOpError, and the
        path left as it is, if they cannot be."""
        owing = owe_first(self.recorded, path, self.specs, self.jid)
        if owing is None:
            return
        try:
            owed.save(self.state_dir, owing)
        except StoreError as e:
            raise FileOpError(path, f"not changed: its triggers cannot be owed first: {e}") from e
        self.recorded = owing


def run_owed_triggers(
    root: str,
    *,
    state_dir: str,
    trigger_timeout: float = TRIGGER_TIMEOUT,
    lock_timeout: float = LOCK_TIMEOUT,
) -> list[TriggerRun]:
    """Run the owed triggers (those apply_files(hold_triggers=True) held),
    each once, and owe none after: a failed one is reported, not owed again.

    Raises LockError and StoreError as apply_files() does."""
    with _engine_lock(state_dir, lock_timeout):
        owed_before = owed.load(state_dir)
        runs = triggers.run_triggers(
            due_commands(owed_before, []), root=os.path.abspath(root), timeout=trigger_timeout
        )
        if owed_before:
            owed.save(state_dir, [])
    return runs


@contextlib.contextmanager
def _engine_lock(state_dir: str, timeout: float) -> Iterator[None]:
    """Hold the exclusive engine lock, waiting up to `timeout` seconds for it."""
    path = os.path.join(state_dir, LOCK_NAME)
    try:
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise LockError(f"cannot open the engine lock {path}: {e.strerror}") from e
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise LockError(
                        f"another apply holds the engine lock {path}; "
                        f"gave up after waiting {timeout:g} s"
                    ) from None
                time.sleep(min(LOCK_POLL, left))
        yield
    finally:
        os.close(fd)  # releases the lock


def _open_root(root: str) -> int:
    # The root itself is the administrator's setting, not a managed path:
    # it may be reached through a symlink. Nothing beneath it may.
    try:
        return os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise FileOpError(root, f"cannot open the root directory: {e.strerror}") from e


def _apply_all(
    rootfd: int,
    ordered: list[FileSpec],
    removals: list[AbsentSpec],
    purged: list[str],
    secrets: tuple[str, ...],
    result: ApplyResult,
    owing: _Owing | None,
) -> list[str]:
    """Apply every file, then every removal; return the paths changed (in a dry
    run: that would change), for their triggers."""
    run = _Apply(rootfd, result, secrets, ordered, purged, owing)
    try:
        for spec in ordered:
            run.apply(spec)
        run.writes.drain()  # removals come after every write, in path order
        for item in removals:
            run.remove_absent(item)
        for path in purged:
            run.purge(path)
    finally:
        run.writes.close()  # after an error only: frees the unfinished writes
        problem = run.finish()
        if problem is not None:
            run.failures.append((len(ordered) + len(removals) + len(purged), problem))
        result.failures = [failure for _, failure in sorted(run.failures, key=lambda f: f[0])]
    done = Outcome.WOULD_APPLY if result.dry_run else Outcome.APPLIED
    return [c.path for c in result.changes if c.outcome is done]


def _failure(path: str, error: FileOpError | OSError) -> ApplyFailure:
    if isinstance(error, FileOpError):
        return ApplyFailure(
            path, error.reason if error.path == path else f"{error.path}: {error.reason}"
        )
    return ApplyFailure(path, error.strerror or str(error))


# ---------------------------------------------------------------------------
# Directory descriptors.


class _Dirs:
    """The directory descriptors of one apply, keyed by path relative to the root.

    "" is the root itself. Every descriptor here was reached from the root
    without following a symlink. Least recently used ones are closed when more
    than DIR_CACHE_MAX are open, but only at the start of get(), so a
    descriptor the caller holds stays valid until its next get().
    """

    def __init__(self, rootfd: int, resolve: Resolve, before_close: Callable[[], None]) -> None:
        self.rootfd = rootfd
        self._resolve = resolve
        self._fds: OrderedDict[str, int] = OrderedDict()
        self._dirty: set[str] = set()  # changed since opened: fsync before closing
        # Called before any descriptor is closed: a queued write still uses it.
        self._before_close = before_close

    def get(self, rel: str, path: str) -> int:
        """The descriptor of directory `rel`, resolving it if needed.

        Raises SymlinkInPathError or FileOpError (naming `path`, the file we
        are applying, and the offending component) if it cannot be resolved.
        """
        if not rel:
            return self.rootfd
        if len(self._fds) > DIR_CACHE_MAX:
            self._trim()
        fd = self._fds.get(rel)
        if fd is not None:
            self._fds.move_to_end(rel)
            return fd
        for _ in range(RESOLVE_ATTEMPTS):
            try:
                if self._resolve is Resolve.OPENAT2:
                    return self._openat2(rel)
                return self._walk(rel)
            except OSError as e:
                error = _resolve_error(self.rootfd, e, rel, path)
                if error is not None:
                    raise error from e
            # Nothing is wrong when we look again: something moved meanwhile.
            # Resolve from the root next time, not through what we cached.
            self.forget(rel.split("/", 1)[0])
        raise FileOpError(
            path, f"directory /{rel} kept changing while safcm resolved it; is a program moving it?"
        )

    def _openat2(self, rel: str) -> int:
        fd = _openat2_dir(self.rootfd, os.fsencode(rel))
        self._fds[rel] = fd
        return fd

    def _walk(self, rel: str) -> int:
        parts = rel.split("/")
        # Start from the deepest directory on the way that is already open.
        start, fd = 0, self.rootfd
        for i in range(len(parts) - 1, 0, -1):
            cached = self._fds.get("/".join(parts[:i]))
            if cached is not None:
                start, fd = i, cached
                break
        for i in range(start, len(parts)):
            fd = os.open(parts[i], _DIR_FLAGS, dir_fd=fd)
            self._fds["/".join(parts[: i + 1])] = fd
        return fd

    def adopt(self, rel: str, fd: int) -> None:
        """Keep `fd`, a directory we just made or opened from a resolved parent."""
        old = self._fds.pop(rel, None)
        if old is not None:
            os.close(old)
        self._fds[rel] = fd

    def forget(self, rel: str) -> None:
        """Close `rel` and everything below it (gone, or not to be trusted any more)."""
        below = rel + "/"
        keys = [k for k in self._fds if k == rel or k.startswith(below)]
        if keys:
            self._before_close()
        for key in keys:
            self._close(key)

    def mark_dirty(self, rel: str) -> None:
        self._dirty.add(rel)

    def _trim(self) -> None:
        self._before_close()
        while len(self._fds) > DIR_CACHE_MAX:
            self._close(next(iter(self._fds)))  # the least recently used

    def _close(self, rel: str) -> None:
        fd = self._fds.pop(rel)
        try:
            if rel in self._dirty:
                self._dirty.discard(rel)
                _fsync_dir(fd, rel)  # an fsync of a removed directory is harmless
        finally:
            os.close(fd)

    def finish(self) -> ApplyFailure | None:
        """fsync every changed directory, several at once, and close them all;
        report the first error."""
        problems: list[ApplyFailure] = []

        def note(result: None, error: BaseException | None) -> None:
            if isinstance(error, FileOpError):
                problems.append(ApplyFailure(error.path, error.reason))
            elif error is not None:
                raise error  # a bug, not a host problem

        syncs: Pipeline[None] = Pipeline(FSYNC_WORKERS, PENDING_WRITES_MAX, "safcm-dirsync")
        try:
            for rel in sorted(self._dirty):
                fd = self.rootfd if not rel else self._fds[rel]
                syncs.submit(partial(_fsync_dir, fd, rel), note, _keep)
            syncs.drain()
        finally:
            syncs.close()  # waits for every fsync before a descriptor is closed
            self._dirty.clear()
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
        return problems[0] if problems else None


def _keep(result: object) -> None:
    """A directory's fsync holds nothing to release: its descriptor stays cached."""


def _fsync_dir(fd: int, rel: str) -> None:
    try:
        os.fsync(fd)
    except OSError as e:
        raise FileOpError("/" + rel, f"fsync of the directory failed: {e.strerror}") from e


def _resolve_error(rootfd: int, error: OSError, rel: str, path: str) -> FileOpError | None:
    """Turn a failed resolution of `rel` into an error naming the bad component.

    None if every component looks fine now (it changed while we looked).
    """
    if error.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EXDEV, errno.EAGAIN):
        return FileOpError(path, f"cannot open directory /{rel}: {error.strerror}")
    parts = rel.split("/")
    found = _diagnose(rootfd, parts)
    if found is None:
        return None
    i, what = found
    where = "/" + "/".join(parts[: i + 1])
    if what is None:
        return MissingDirectoryError(
            path, f"directory {where} does not exist; declare it, so that safcm creates it"
        )
    if what is FileType.SYMLINK:
        return SymlinkInPathError(path, f"symlink not permitted in path: {where}")
    return MissingDirectoryError(path, f"not a directory in path: {where} is a {what}")


def _diagnose(rootfd: int, parts: list[str]) -> tuple[int, FileType | None] | None:
    """Find the first component that is missing (None) or not a directory (its type)."""
    fd = rootfd
    opened = []
    try:
        for i, name in enumerate(parts):
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                return i, None
            kind = _TYPES.get(stat.S_IFMT(st.st_mode), FileType.FILE)
            if kind is not FileType.DIR:
                return i, kind
            try:
                fd = os.open(name, _LOOK_FLAGS, dir_fd=fd)
            except OSError:
                return None
            opened.append(fd)
        return None
    finally:
        for fd in opened:
            os.close(fd)


_TYPES = {
    stat.S_IFREG: FileType.FILE,
    stat.S_IFDIR: FileType.DIR,
    stat.S_IFLNK: FileType.SYMLINK,
    stat.S_IFIFO: FileType.FIFO,
    stat.S_IFSOCK: FileType.SOCKET,
    stat.S_IFCHR: FileType.CHAR_DEVICE,
    stat.S_IFBLK: FileType.BLOCK_DEVICE,
}


# ---------------------------------------------------------------------------
# Users and groups.


class _Names:
    """Resolves declared names to ids and ids to names, once per apply."""

    def __init__(self) -> None:
        self._owners: dict[tuple, Owner] = {}
        self._user_of: dict[int, str | None] = {}
        self._group_of: dict[int, str | None] = {}

    def owner(self, spec: FileSpec) -> Owner:
        """The owner `spec` declares; raises OwnerLookupError for an unknown name."""
        key = (spec.user, spec.uid, spec.group, spec.gid)
        owner = self._owners.get(key)
        if owner is None:
            owner = self._owners[key] = self._resolve(spec)
        return owner

    def _resolve(self, spec: FileSpec) -> Owner:
        if spec.user is not None:
            try:
                uid = pwd.getpwnam(spec.user).pw_uid
            except KeyError:
                raise _unknown(spec.path, "user", spec.user) from None
        else:
            uid = spec.uid  # type: ignore[assignment]  # check() ensures one is set
        if spec.group is not None:
            try:
                gid = grp.getgrnam(spec.group).gr_gid
            except KeyError:
                raise _unknown(spec.path, "group", spec.group) from None
        else:
            gid = spec.gid  # type: ignore[assignment]
        # Report the name given, or the one the host knows for the id.
        user = spec.user if spec.user is not None else self.user(uid)
        group = spec.group if spec.group is not None else self.group(gid)
        return Owner(uid, gid, user, group)

    def user(self, uid: int) -> str | None:
        """The name the host gives `uid`, or None."""
        try:
            return self._user_of[uid]
        except KeyError:
            pass
        try:
            name = _host_name(pwd.getpwuid(uid).pw_name)
        except KeyError:
            name = None
        self._user_of[uid] = name
        return name

    def group(self, gid: int) -> str | None:
        """The name the host gives `gid`, or None."""
        try:
            return self._group_of[gid]
        except KeyError:
            pass
        try:
            name = _host_name(grp.getgrgid(gid).gr_name)
        except KeyError:
            name = None
        self._group_of[gid] = name
        return name


def _host_name(name: str) -> str:
    """A user or group name from the host's databases, as a report carries it:
    as it is, unless a byte of it is not UTF-8 (then escape_name(), so that
    the result can be sent; the uid or gid beside it is what counts)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return escape_name(name)
    return name


def _mount_id(fd: int) -> int | None:
    """The id of the mount `fd` is on (Linux 3.15+, /proc/self/fdinfo), or None
    where /proc does not say: then the device check stands alone."""
    try:
        with open(f"/proc/self/fdinfo/{fd}", "rb") as f:
            for line in f:
                if line.startswith(b"mnt_id:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _on_mount_of(pfd: int, base: str) -> bool:
    """Whether the non-directory `base` in `pfd` is on pfd's mount: not a
    file bind-mounted over it.

    Compared by mount id, not by device number: overlayfs (a container's
    root, a volatile root) reports a regular file's st_dev from the layer it
    lives in, which differs from the directory's st_dev when the layers are on
    different filesystems, so a device check would take every lower-layer
    file for a mount point. The device check stands alone only where /proc
    does not give mount ids.
    """
    fd = os.open(base, os.O_PATH | os.O_NOFOLLOW, dir_fd=pfd)
    try:
        mine, parent = _mount_id(fd), _mount_id(pfd)
        if mine is None or parent is None:
            return os.fstat(fd).st_dev == os.fstat(pfd).st_dev
        return mine == parent
    finally:
        os.close(fd)


def _mount_error(path: str) -> MountPointError:
    return MountPointError(
        path,
        "another filesystem is mounted here; safcm never removes across a mount point:"
        " declare the path, or unmount it",
    )


def _unknown(path: str, kind: str, name: str) -> FileOpError:
    return OwnerLookupError(path, f"unknown {kind} {name!r} on this host")


# ---------------------------------------------------------------------------
# One apply.


@contextlib.contextmanager
def _doing(path: str, what: str) -> Iterator[None]:
    """Turn an OSError in the block into a FileOpError that says what failed."""
    try:
        yield
    except OSError as e:
        raise FileOpError(path, f"{what}: {e.strerror or e}") from e


class _Apply:
    """The executor: observes the host, asks plan.py, does the steps, records outcomes."""

    def __init__(
        self,
        rootfd: int,
        result: ApplyResult,
        secrets: tuple[str, ...],
        files: list[FileSpec],
        purged: list[str],
        owing: _Owing | None = None,
    ) -> None:
        self.owing = owing  # None: a dry run, or no file has triggers
        resolve = FORCE_RESOLVE
        if resolve is None:
            resolve = Resolve.OPENAT2 if openat2_available() else Resolve.WALK
        self.resolve = resolve
        # New file versions on their way: fsynced concurrently, renamed in order.
        self.writes: Pipeline[str] = Pipeline(
            FSYNC_WORKERS, PENDING_WRITES_MAX, "safcm-fsync", batch=WRITE_BATCH
        )
        self.dirs = _Dirs(rootfd, resolve, before_close=self.writes.drain)
        self.temp = FORCE_TEMP or Temp.TMPFILE
        self.names = _Names()
        self.result = result
        self.dry_run = result.dry_run
        self.secrets = secrets
        self.declared = {spec.path: spec.type for spec in files}
        self.purged = frozenset(purged)
        # Directories that a dry run would create, or that failed without
        # being a directory now: a path below one is not looked at, but
        # decided as if nothing were there (it would be created).
        self.pending: set[str] = set()
        self.cleaned: set[str] = set()  # directories already rid of stale temporaries
        # Directories that failed, with the reason: what is below them is skipped.
        self.blocked: dict[str, str] = {}
        # Every failure with its place in the apply, so the report lists them
        # in order although queued writes report theirs later.
        self.failures: list[tuple[int, ApplyFailure]] = []
        self.seq = 0
        # Paths whose removal is recorded already: a purge walk after an
        # absent path (that a dry run or a skip left in place) does not
        # record it twice, so a dry run reports what the real run does.
        self.removal_recorded: set[str] = set()
        # Directories a removal left because of an entry below them: one
        # more makes each directory above it incomplete too (_remove_below).
        self.left_standing = 0

    def finish(self) -> ApplyFailure | None:
        return self.dirs.finish()

    # -- recording -----------------------------------------------------------

    def _record(self, change: FileChange, skip: str | None) -> int:
        """Record `change` before acting, with the outcome it has unless acting fails."""
        if skip is not None:
            change = with_outcome(change, Outcome.SKIPPED, skip)
        elif self.dry_run:
            change = with_outcome(change, Outcome.WOULD_APPLY)
        self.result.changes.append(change)
        return len(self.result.changes) - 1

    def _fail(self, seq: int, path: str, error: FileOpError | OSError, index: int | None) -> None:
        """Record a failure; mark the change at `index` (if any) as failed."""
        failure = _failure(path, error)
        self.failures.append((seq, failure))
        if index is not None:
            change = self.result.changes[index]
            self.result.changes[index] = with_outcome(change, Outcome.FAILED, failure.reason)

    def _owe_first(self, path: str) -> None:
        if self.owing is not None:
            self.owing.first(path)

    def _blocker(self, path: str, *, itself: bool = False) -> str | None:
        """Why `path` must be skipped: a failed directory above it (or, with
        `itself`, at it); None if there is none."""
        if not self.blocked:
            return None
        for above in reversed(ancestors(path) if itself else ancestors(path)[:-1]):
            if above in self.blocked:
                return f"not tried: the directory {above} above it failed"
        return None

    # -- files ---------------------------------------------------------------

    def apply(self, spec: FileSpec) -> None:
        """Apply one file; record its change and outcome, or its failure."""
        self.seq += 1
        seq = self.seq
        index = None
        found_dir = False
        try:
            skip = self._blocker(spec.path)
            if spec.path == "/":
                pfd, rel, base = None, "", ""
                found: Found | None = self._found(os.fstat(self.dirs.rootfd), FileType.DIR)
            else:
                rel = spec.path[1:]
                parent, _, base = rel.rpartition("/")
                pfd = self._parent(parent, spec.path)
                found = None if pfd is None else self._observe(pfd, base, spec.path, spec)
            found_dir = found is not None and found.type is FileType.DIR
            owner = self.names.owner(spec)
            decision = decide(spec, owner, found, secret=is_secret(spec.path, self.secrets))
            if decision.change is not None:
                index = self._record(decision.change, skip)
            if decision.refusal is not None:
                raise decision.refusal
            if index is None:  # no change: nothing to do
                return
            if skip is not None or self.dry_run:
                if decision.step is Step.MKDIR:
                    self.pending.add(spec.path)
                return
            if pfd is None and spec.path != "/":
                # Never act without the parent's descriptor: an *at call with
                # dir_fd=None would work relative to the daemon's directory.
                raise FileOpError(spec.path, "its parent directory was not made; not applied")
            self._owe_first(spec.path)
            self._act(spec, owner, decision, found, pfd, rel, base, index, seq)
        except (FileOpError, OSError) as e:
            self._fail(seq, spec.path, e, index)
            if spec.type is FileType.DIR:
                self.blocked[spec.path] = _failure(spec.path, e).reason
                if not found_dir:
                    self.pending.add(spec.path)

    def _act(
        self,
        spec: FileSpec,
        owner: Owner,
        decision: Decision,
        found: Found | None,
        pfd: int | None,
        rel: str,
        base: str,
        index: int,
        seq: int,
    ) -> None:
        if pfd is not None and decision.step is Step.WRITE and decision.remove is Remove.NOTHING:
            self._queue_write(pfd, rel, base, spec, owner, index, seq)
            return
        if pfd is not None and decision.step is Step.MKDIR and decision.remove is Remove.NOTHING:
            # A new directory need not wait for the writes before it: none
            # of them is in it, and it changes nothing they depend on. So
            # the fsyncs stay in flight across directories.
            self._make_dir(pfd, rel, base, spec, owner, decision)
            return
        # Any other step waits until every earlier file is written, so the
        # host changes in path order.
        self.writes.drain()
        if pfd is None:  # the root directory itself
            self._fix_dir(self.dirs.rootfd, "", spec, owner, decision)
        elif decision.step is Step.FIX_DIR:
            self._fix_existing_dir(pfd, rel, base, spec, owner, decision, found)
        elif decision.step is Step.MKDIR:
            self._make_dir(pfd, rel, base, spec, owner, decision)
        else:
            self._write(pfd, rel, base, spec, owner, decision)

    # -- removal ---------------------------------------------------------------

    def remove_absent(self, item: AbsentSpec) -> None:
        """Make sure nothing is at `item.path` (absent.yaml)."""
        self.seq += 1
        try:
            skip = self._blocker(item.path)
            rel = item.path[1:]
            parent, _, base = rel.rpartition("/")
            pfd = self._removal_parent(parent, item.path)
            if pfd is None:
                return  # a directory on the way is missing: so is the path
            found = self._observe(pfd, base, item.path, None)
            if found is None:
                return
            if self._remove(pfd, item.path, item.path, base, found, item.recursive, skip, 0):
                self.dirs.mark_dirty(parent)
        except (FileOpError, OSError) as e:
            self._fail(self.seq, item.path, e, None)

    def purge(self, path: str) -> None:
        """Remove every entry below directory `path` that no file declares (purge.yaml)."""
        self.seq += 1
        try:
            skip = self._blocker(path, itself=True)
            rel = path[1:]
            fd = self._removal_parent(rel, path)
            if fd is None:
                return  # not there (or, in a dry run, not yet): nothing to purge
            if self._purge_entries(fd, path, skip, depth=0):
                self.dirs.mark_dirty(rel)
        except (FileOpError, OSError) as e:
            self._fail(self.seq, path, e, None)

    def _removal_parent(self, rel: str, path: str) -> int | None:
        """The descriptor of directory `rel`, or None if it is not there (or,
        in a dry run or below a failed directory, would be created first)."""
        if self.pending and any(a in self.pending for a in _ancestors_of_rel(rel)):
            return None
        try:
            return self.dirs.get(rel, path)
        except MissingDirectoryError:
            return None

    def _purge_entries(self, fd: int, path: str, skip: str | None, depth: int) -> bool:
        """Remove the undeclared entries of the directory `fd` (at the declared
        `path`), and of its declared subdirectories on the same filesystem;
        True if any went."""
        removed = False
        dev = os.fstat(fd).st_dev
        for name in sorted(os.listdir(fd)):
            if is_temp_name(name):
                continue  # ours, and removed as stale by _clean() when it is
            child = path.rstrip("/") + "/" + name
            if child in self.removal_recorded:
                continue
            kind = self.declared.get(child)
            if kind is None:
                shown = self._shown_child(path, name)
                if shown is None:
                    continue
                found = self._observe(fd, name, shown, None)
                if found is not None:
                    removed |= self._remove_entry(fd, child, shown, name, found, skip, depth + 1)
                continue
            if kind is not FileType.DIR or child in self.purged:
                continue  # a declared file; or a directory purged on its own
            sub = self._open_dir_below(fd, name, child, dev, None, missing_ok=True)
            if sub is None:
                continue  # not a directory here (yet), or another filesystem: left alone
            try:
                if self._purge_entries(sub, child, skip, depth + 1):
                    _fsync_dir(sub, child[1:])
            finally:
                os.close(sub)
        return removed

    def _shown_child(self, shown: str, name: str) -> str | None:
        """The path the report gives the entry `name` (read from the host) of
        the directory it calls `shown`: `name` in escape_name()'s form. None,
        with a failure recorded at `shown`, if that is too long for a report
        (the wire's limit): the entry is then left in place."""
        child = shown.rstrip("/") + "/" + escape_name(name)
        if len(child) < PATH_MAX:
            return child
        self._fail(
            self.seq,
            shown,
            FileOpError(
                shown,
                f"an entry in it is not removed: its path would be longer than {PATH_MAX - 1}"
                " characters in the report; remove it by hand",
            ),
            None,
        )
        return None

    def _remove_entry(
        self, pfd: int, path: str, shown: str, base: str, found: Found, skip: str | None, depth: int
    ) -> bool:
        """_remove() one entry of a walk: its failure is recorded, not raised,
        so that its siblings are still removed. True if it was removed."""
        seq = self.seq
        try:
            return self._remove(pfd, path, shown, base, found, True, skip, depth)
        except (FileOpError, OSError) as e:
            self._fail(seq, shown, e, None)
            return False

    def _remove(
        self,
        pfd: int,
        path: str,
        shown: str,
        base: str,
        found: Found,
        recursive: bool,
        skip: str | None,
        depth: int,
    ) -> bool:
        """Record and remove what is at `base` in `pfd`: a directory with
        everything below it when `recursive`. True if something was removed.

        `path` is the path as the host has it, for every decision (a secret,
        a cached directory); `shown` the same path as the report gives it,
        with each component read from the host in escape_name()'s form (a
        declared path is its own `shown`).

        Raises FileOpError (with the record marked failed) if the path
        itself cannot be removed. Failures below it are recorded as they
        happen; the directory is then skipped (it cannot be empty).
        """
        if depth > REMOVE_DEPTH_MAX:
            raise FileOpError(
                shown, f"more than {REMOVE_DEPTH_MAX} directory levels to remove; remove it by hand"
            )
        decision = decide_removal(
            shown, found, recursive=recursive, secret=is_secret(path, self.secrets)
        )
        if decision.change is None:
            raise RuntimeError(f"decide_removal() gave no change to record for {shown}")
        index = self._record(decision.change, skip)
        self.removal_recorded.add(path)
        acting = skip is None and not self.dry_run
        try:
            if decision.refusal is not None:
                raise decision.refusal
            if decision.step is Step.UNLINK:
                if not _on_mount_of(pfd, base):
                    raise _mount_error(shown)
                if acting:
                    self._owe_first(shown)
                    with _doing(shown, "removing it"):
                        os.unlink(base, dir_fd=pfd)
                return acting
            if recursive:
                fd = self._open_dir_below(pfd, base, shown, os.fstat(pfd).st_dev, found)
                try:
                    complete = self._remove_below(fd, path, shown, skip, depth)
                finally:
                    os.close(fd)
                if not complete:
                    self.result.changes[index] = with_outcome(
                        self.result.changes[index],
                        Outcome.SKIPPED,
                        "not removed: an entry below it could not be removed",
                    )
                    self.left_standing += 1
                    return False
            if acting:
                self._owe_first(shown)
                self.dirs.forget(path[1:])
                with _doing(shown, "removing the directory"):
                    os.rmdir(base, dir_fd=pfd)
            return acting
        except (FileOpError, OSError) as e:
            change = self.result.changes[index]
            self.result.changes[index] = with_outcome(
                change, Outcome.FAILED, _failure(shown, e).reason
            )
            raise

    def _remove_below(self, fd: int, path: str, shown: str, skip: str | None, depth: int) -> bool:
        """Remove every entry of the directory `fd` (at `path`, `shown` in the
        report: see _remove()); True if all went (in a dry run or a skip: if
        all would go)."""
        complete = True
        removed = False
        for name in sorted(os.listdir(fd)):
            shown_child = self._shown_child(shown, name)
            if shown_child is None:
                complete = False
                continue
            found = self._observe(fd, name, shown_child, None)
            if found is None:
                continue
            seq = self.seq
            standing = self.left_standing
            try:
                removed |= self._remove(
                    fd, path + "/" + name, shown_child, name, found, True, skip, depth + 1
                )
            except (FileOpError, OSError) as e:
                self._fail(seq, shown_child, e, None)
                complete = False
            if self.left_standing != standing:  # a directory below kept an entry
                complete = False
        if removed:
            _fsync_dir(fd, shown[1:])
        return complete

    @overload
    def _open_dir_below(
        self, pfd: int, base: str, path: str, dev: int, found: Found | None
    ) -> int: ...

    @overload
    def _open_dir_below(
        self, pfd: int, base: str, path: str, dev: int, found: Found | None, *, missing_ok: bool
    ) -> int | None: ...

    def _open_dir_below(
        self,
        pfd: int,
        base: str,
        path: str,
        dev: int,
        found: Found | None,
        *,
        missing_ok: bool = False,
    ) -> int | None:
        """Open the directory `base` in `pfd`: never through a symlink, never
        into another mount, and (given `found`) only if it is what we observed.

        With `missing_ok`, None when it is missing, not a directory or
        another filesystem; otherwise each of those raises FileOpError.
        """
        try:
            if self.resolve is Resolve.OPENAT2:
                # RESOLVE_NO_XDEV refuses any mount point, bind mounts of the
                # same filesystem included, which no device number shows.
                fd = _openat2_dir(pfd, os.fsencode(base), _XDEV_HOW_REF)
            else:
                fd = os.open(base, _DIR_FLAGS, dir_fd=pfd)
                # Without openat2, the mount id shows a bind mount of the same
                # filesystem (the device check below cannot).
                if _mount_id(fd) != _mount_id(pfd):
                    os.close(fd)
                    raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))
        except OSError as e:
            if e.errno == errno.EXDEV:
                if missing_ok:
                    return None
                raise _mount_error(path) from e
            if missing_ok and e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                return None
            raise FileOpError(path, f"opening the directory: {e.strerror}") from e
        try:
            st = os.fstat(fd)
            if st.st_dev != dev:
                raise _mount_error(path)
            if found is not None and (st.st_dev, st.st_ino) != (found.dev, found.ino):
                raise FileOpError(path, "it was replaced while safcm was removing it; apply again")
        except MountPointError:
            os.close(fd)
            if missing_ok:
                return None
            raise
        except BaseException:
            os.close(fd)
            raise
        return fd

    # -- resolving and observing ------------------------------------------

    def _parent(self, parent: str, path: str) -> int | None:
        """The parent directory's descriptor; None if it would be created first
        (in a dry run, or below a directory that failed)."""
        if self.pending:
            for above in _ancestors_of_rel(parent):
                if above in self.pending:
                    return None
        fd = self.dirs.get(parent, path)
        if not self.dry_run and parent not in self.cleaned:
            self.cleaned.add(parent)
            self._clean(fd, parent)
        return fd

    def _clean(self, fd: int, rel: str) -> None:
        """Remove temporaries that a crashed apply left in directory `rel`.

        We hold the engine lock, so no other apply is writing a temporary
        now: every name of ours here is stale. Only names with exactly our
        pattern are removed: a file or symlink (unlinkat), or an empty
        directory (unlinkat(AT_REMOVEDIR), which never follows a symlink and
        never removes a directory that holds anything: a new directory is
        renamed into place before anything is put in it). A non-empty or
        busy directory so named is left alone.
        """
        removed = False
        with _doing("/" + rel, "looking for stale temporary files"):
            with os.scandir(fd) as entries:
                stale = [
                    (entry.name, entry.is_dir(follow_symlinks=False))
                    for entry in entries
                    if TEMP_MARK in entry.name and is_temp_name(entry.name)
                ]
            for name, is_dir in stale:
                try:
                    if is_dir:
                        os.rmdir(name, dir_fd=fd)
                    else:
                        os.unlink(name, dir_fd=fd)
                    removed = True
                except OSError as e:
                    if e.errno not in _KEEP_STALE:
                        raise
        if removed:
            self.dirs.mark_dirty(rel)

    def _observe(self, pfd: int, base: str, path: str, spec: FileSpec | None) -> Found | None:
        """What is at `base` in `pfd` (at `path`) now, without following or
        blocking; None if nothing. `spec` is what is declared there, None for
        a path to remove.

        Looks with fstatat first, so a FIFO, socket or device is never even
        opened. A regular file is then opened and fstat'ed through its
        descriptor; if what we opened is not what we looked at, it changed
        under us, and we look again.
        """
        for _ in range(OBSERVE_ATTEMPTS):
            try:
                st = os.stat(base, dir_fd=pfd, follow_symlinks=False)
            except FileNotFoundError:
                return None
            except OSError as e:
                raise FileOpError(path, f"reading the old state: {e.strerror}") from e
            kind = _TYPES.get(stat.S_IFMT(st.st_mode))
            try:
                if kind is FileType.FILE:
                    found = self._observe_file(pfd, base, st, spec)
                elif kind is FileType.SYMLINK:
                    found = self._observe_link(pfd, base, st)
                elif kind is FileType.DIR:
                    found = self._observe_dir(pfd, base, st, spec)
                elif kind is None:
                    raise FileOpError(path, f"unknown file type {stat.S_IFMT(st.st_mode):#o}")
                else:
                    found = self._found(st, kind)
            except OSError as e:
                raise FileOpError(path, f"reading the old state: {e.strerror}") from e
            if found is not None:
                return found
        raise FileOpError(
            path, "it kept changing while safcm read it; is another program writing it?"
        )

    def _found(
        self,
        st: os.stat_result,
        kind: FileType,
        size: int = 0,
        data: bytes | None = None,
        dir_empty: bool | None = None,
    ) -> Found:
        uid, gid = st.st_uid, st.st_gid
        user, group = self.names.user(uid), self.names.group(gid)
        mode = st.st_mode & 0o7777
        return Found(kind, mode, uid, gid, user, group, size, data, dir_empty, st.st_dev, st.st_ino)

    def _observe_file(
        self, pfd: int, base: str, st: os.stat_result, spec: FileSpec | None
    ) -> Found | None:
        try:
            fd = os.open(base, _READ_FLAGS, dir_fd=pfd)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ELOOP, errno.ENXIO, errno.EISDIR):
                return None  # replaced since the fstatat: look again
            raise
        try:
            st = os.fstat(fd)  # the descriptor, not the path, is the truth
            if not stat.S_ISREG(st.st_mode):
                return None
            # Same size as declared: read one byte more, so a longer file
            # shows up as different. Other sizes: read it for the diff,
            # unless it is too large to be diffed anyway.
            size = st.st_size
            same_size = spec is not None and spec.type is FileType.FILE and size == len(spec.data)
            data = _read_file(fd, size) if same_size or size <= DIFF_INPUT_MAX else None
        finally:
            os.close(fd)
        return self._found(st, FileType.FILE, size, data)

    def _observe_link(self, pfd: int, base: str, st: os.stat_result) -> Found | None:
        try:
            target = os.readlink(os.fsencode(base), dir_fd=pfd)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.EINVAL):  # no longer a symlink
                return None
            raise
        return self._found(st, FileType.SYMLINK, len(target), target)

    def _observe_dir(
        self, pfd: int, base: str, st: os.stat_result, spec: FileSpec | None
    ) -> Found | None:
        if spec is not None and spec.type is FileType.DIR:
            return self._found(st, FileType.DIR)
        # It would be replaced or removed: find out whether it is empty.
        try:
            fd = os.open(base, _DIR_FLAGS, dir_fd=pfd)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                return None
            raise
        try:
            opened = os.fstat(fd)
            if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino):
                return None
            with os.scandir(fd) as entries:
                empty = next(entries, None) is None
        finally:
            os.close(fd)
        return self._found(opened, FileType.DIR, dir_empty=empty)

    # -- acting -------------------------------------------------------------

    def _fix_existing_dir(
        self,
        pfd: int,
        rel: str,
        base: str,
        spec: FileSpec,
        owner: Owner,
        decision: Decision,
        found: Found | None,
    ) -> None:
        with _doing(spec.path, "opening the directory"):
            fd = os.open(base, _DIR_FLAGS, dir_fd=pfd)
        try:
            st = os.fstat(fd)
            if found is None or (st.st_dev, st.st_ino) != (found.dev, found.ino):
                raise FileOpError(
                    spec.path, "it was replaced while safcm was applying it; apply again"
                )
            self._fix_dir(fd, rel, spec, owner, decision)
        except BaseException:
            os.close(fd)
            raise
        self.dirs.adopt(rel, fd)

    def _fix_dir(self, fd: int, rel: str, spec: FileSpec, owner: Owner, d: Decision) -> None:
        with _doing(spec.path, "changing the directory's mode and owner"):
            if d.interim_mode is not None:
                os.fchmod(fd, d.interim_mode)
            if d.chown:
                os.fchown(fd, owner.uid, owner.gid)
            if d.chmod:
                os.fchmod(fd, spec.mode)
        self.dirs.mark_dirty(rel)

    def _make_dir(
        self, pfd: int, rel: str, base: str, spec: FileSpec, owner: Owner, d: Decision
    ) -> None:
        """Make the new directory whole under a temporary name (0700, then
        owner, then mode), and only then rename it to `base`.

        So a crash leaves nothing at `base` or the finished directory, never
        one with the private mode: a directory passed through is never
        changed once it exists (plan.decide()), so a 0700 one would stay so
        for good. What a crash can leave besides is an empty directory with a
        temporary name, which the next apply's _clean() removes.
        """
        parent = rel.rpartition("/")[0]
        tmp, fd = self._temp_dir(pfd, base, spec)
        self.dirs.mark_dirty(parent)  # the temporary's name is in it, for now
        try:
            made = os.fstat(fd)
            with _doing(spec.path, "setting the new directory's owner and mode"):
                os.fchown(fd, owner.uid, owner.gid)
                os.fchmod(fd, spec.mode)  # after fchown, so setgid and sticky stick
            if d.remove is Remove.NON_DIR:
                with _doing(spec.path, "removing the old file"):
                    os.unlink(base, dir_fd=pfd)
            try:
                _rename_dir_noreplace(pfd, tmp, base)
            except FileExistsError as e:
                raise FileOpError(
                    spec.path, "something appeared at the path while safcm made it; apply again"
                ) from e
            except OSError as e:
                raise FileOpError(
                    spec.path, f"renaming the new directory into place: {e.strerror or e}"
                ) from e
            with _doing(spec.path, "checking the new directory"):
                st = os.stat(base, dir_fd=pfd, follow_symlinks=False)
            if (st.st_dev, st.st_ino) != (made.st_dev, made.st_ino):
                # Someone with write access to the parent swapped the
                # temporary name: our directory is elsewhere, and never used.
                raise FileOpError(
                    spec.path, "it was replaced while safcm was making it; apply again"
                )
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):  # gone already, or renamed into place
                os.rmdir(tmp, dir_fd=pfd)
            raise
        self.dirs.adopt(rel, fd)
        self.cleaned.add(rel)  # new and empty: nothing stale in it
        self.dirs.mark_dirty(rel)

    def _temp_dir(self, pfd: int, base: str, spec: FileSpec) -> tuple[str, int]:
        """mkdir a private directory under a new temporary name for `base`, and
        open it; return its name and descriptor."""
        name, _ = _under_temp_name(
            base,
            spec,
            "creating the directory",
            lambda name: os.mkdir(name, _PRIVATE_DIR, dir_fd=pfd),
        )
        try:
            # Open what we made without following: should someone have
            # swapped a symlink in, this fails instead of chmodding its target.
            with _doing(spec.path, "opening the new directory"):
                return name, os.open(name, _DIR_FLAGS, dir_fd=pfd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.rmdir(name, dir_fd=pfd)
            raise

    def _queue_write(
        self, pfd: int, rel: str, base: str, spec: FileSpec, owner: Owner, index: int, seq: int
    ) -> None:
        """Write the new version of a file or symlink through the pipeline.

        A file's temporary is made in the directory `pfd`, written, synced
        and named on a worker (_write_temp), so that the kernel's work of
        creating files runs on several cores; it is renamed over `base` on
        this thread, in path order, once that has returned. A symlink has
        no data to sync: it is made and renamed in its turn. A failure is
        recorded for this path only.
        """
        if spec.type is FileType.SYMLINK:
            commit = partial(self._commit_symlink, pfd, rel, base, spec, owner)
            self.writes.submit(None, partial(self._finish, index, seq, spec.path, commit), _keep)
            return
        self.writes.submit(
            partial(_write_temp, pfd, base, spec, owner, self.temp),
            partial(
                self._finish,
                index,
                seq,
                spec.path,
                partial(self._commit_file, pfd, rel, base, spec),
            ),
            partial(_drop_named, pfd),
        )

    def _finish(
        self,
        index: int,
        seq: int,
        path: str,
        commit: Callable[[str | None, BaseException | None], None],
        result: str | None,
        error: BaseException | None,
    ) -> None:
        """Do the `commit` of a queued write; record its failure as this path's own."""
        try:
            commit(result, error)
        except (FileOpError, OSError) as e:
            self._fail(seq, path, e, index)

    def _commit_file(
        self,
        pfd: int,
        rel: str,
        base: str,
        spec: FileSpec,
        tmp: str | None,
        error: BaseException | None,
    ) -> None:
        """Rename the temporary `tmp` over `base`, now that its fsync has
        returned; or, if writing it failed, raise that `error`."""
        if error is not None:
            raise error
        if tmp is None:
            raise RuntimeError(f"no temporary file and no error for {spec.path}")
        self._place(pfd, rel, base, spec, tmp, Remove.NOTHING)

    def _commit_symlink(
        self,
        pfd: int,
        rel: str,
        base: str,
        spec: FileSpec,
        owner: Owner,
        tmp: str | None,
        error: BaseException | None,
    ) -> None:
        """Make the symlink under a temporary name and rename it over `base`
        (a symlink has no work on a worker: `tmp` and `error` are None)."""
        tmp = self._temp_symlink(pfd, base, spec, owner)
        self._place(pfd, rel, base, spec, tmp, Remove.NOTHING)

    def _write(
        self, pfd: int, rel: str, base: str, spec: FileSpec, owner: Owner, d: Decision
    ) -> None:
        """Make the new version under a temporary name, then rename it over
        `base`, all on this thread (the steps that cannot be queued)."""
        if spec.type is FileType.SYMLINK:
            tmp = self._temp_symlink(pfd, base, spec, owner)
        else:
            tmp = _write_temp(pfd, base, spec, owner, self.temp)
        self._place(pfd, rel, base, spec, tmp, d.remove)

    def _place(
        self, pfd: int, rel: str, base: str, spec: FileSpec, tmp: str, remove: Remove
    ) -> None:
        """Rename the temporary `tmp` over `base` (first removing the empty
        directory there, if `remove` says so); on failure remove `tmp`."""
        parent = rel.rpartition("/")[0]
        self.dirs.mark_dirty(parent)  # the temporary's name is in it, for now
        try:
            if remove is Remove.EMPTY_DIR:
                # rename() cannot replace a directory with a file: remove the
                # empty directory first (only now, so the gap is short).
                try:
                    os.rmdir(base, dir_fd=pfd)
                except OSError as e:
                    if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                        raise NonEmptyDirectoryError(
                            spec.path,
                            "the directory in the way is no longer empty; safcm never removes "
                            "a non-empty directory: remove it by hand, then apply again",
                        ) from e
                    raise FileOpError(spec.path, f"removing the old directory: {e.strerror}") from e
                self.dirs.forget(rel)
            try:
                os.rename(tmp, base, src_dir_fd=pfd, dst_dir_fd=pfd)
            except OSError as e:
                raise FileOpError(
                    spec.path, f"renaming the new version into place: {e.strerror or e}"
                ) from e
        except BaseException:
            with contextlib.suppress(OSError):  # a leftover is removed by the next apply
                os.unlink(tmp, dir_fd=pfd)
            raise

    def _temp_symlink(self, pfd: int, base: str, spec: FileSpec, owner: Owner) -> str:
        name, _ = _under_temp_name(
            base,
            spec,
            "creating a temporary symlink",
            lambda name: os.symlink(spec.data, name, dir_fd=pfd),
        )
        try:
            with _doing(spec.path, "setting the symlink's owner"):
                os.chown(name, owner.uid, owner.gid, dir_fd=pfd, follow_symlinks=False)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=pfd)
            raise
        return name


def _write_temp(pfd: int, base: str, spec: FileSpec, owner: Owner, temp: Temp) -> str:
    """Write the new version of `base` to a temporary in `pfd`, synced; return its name.

    Runs on a pipeline worker for a queued write. It works only relative to
    `pfd` (which the main thread closes only after this has returned) and
    through the temporary's own descriptor, which it closes. An O_TMPFILE is
    linked in under a temporary name only once its fsync has returned. On
    failure nothing is left open or behind.
    """
    fd, name = _open_temp(pfd, base, spec, named=temp is Temp.NAMED)
    try:
        _fill(fd, spec, owner)
        _sync_temp(fd, spec)
        if name is None:
            name = _link_temp(fd, pfd, base, spec, proc=temp is Temp.TMPFILE_PROC)
    except BaseException:
        if name is not None:
            _drop_temp(pfd, name)
        raise
    finally:
        os.close(fd)
    return name


def _open_temp(pfd: int, base: str, spec: FileSpec, named: bool) -> tuple[int, str | None]:
    """Create the temporary for a new file version, empty and private, in `pfd`:
    an O_TMPFILE (no name yet) unless `named`, or where the filesystem lacks it."""
    if not named:
        try:
            return os.open(".", _TMPFILE_FLAGS, _PRIVATE_FILE, dir_fd=pfd), None
        except OSError as e:
            if e.errno not in _NO_TMPFILE:
                raise FileOpError(spec.path, f"creating a temporary file: {e.strerror}") from e
    name, fd = _under_temp_name(
        base,
        spec,
        "creating a temporary file",
        lambda name: os.open(name, _NAMED_TEMP_FLAGS, _PRIVATE_FILE, dir_fd=pfd),
    )
    return fd, name


def _link_temp(fd: int, pfd: int, base: str, spec: FileSpec, proc: bool) -> str:
    """Link the O_TMPFILE `fd`, complete and synced, into `pfd` under a new temporary name."""
    name, _ = _under_temp_name(
        base,
        spec,
        "linking the new version",
        lambda name: _link_tmpfile(fd, pfd, name, proc=proc),
    )
    return name


def _under_temp_name(
    base: str, spec: FileSpec, doing: str, make: Callable[[str], T]
) -> tuple[str, T]:
    """make(name) under new temporary names for `base` until one is free
    (FileExistsError: taken, try another); the name and what make returned.
    FileOpError for `spec`, saying what it was `doing`, if make fails
    otherwise or no name is free in TEMP_ATTEMPTS."""
    for _ in range(TEMP_ATTEMPTS):
        name = temp_name(base, _token())
        try:
            return name, make(name)
        except FileExistsError:
            continue
        except OSError as e:
            raise FileOpError(spec.path, f"{doing}: {e.strerror}") from e
    raise FileOpError(spec.path, "could not find a free temporary name")


def _fill(fd: int, spec: FileSpec, owner: Owner) -> None:
    """Write the content, then owner (before mode: chown clears setuid/setgid), mode."""
    try:  # not _doing(): this runs for every new file, and try is cheaper
        written = os.write(fd, spec.data)
        if written < len(spec.data):
            view = memoryview(spec.data)[written:]
            while view:
                view = view[os.write(fd, view) :]
        os.fchown(fd, owner.uid, owner.gid)
        os.fchmod(fd, spec.mode)
    except OSError as e:
        raise FileOpError(spec.path, f"writing the new version: {e.strerror or e}") from e


def _sync_temp(fd: int, spec: FileSpec) -> None:
    """fsync the written temporary `fd`."""
    try:
        os.fsync(fd)
    except OSError as e:
        raise FileOpError(spec.path, f"syncing the new version to disk: {e.strerror or e}") from e


def _drop_temp(pfd: int, name: str) -> None:
    """Remove a temporary that will not be renamed into place."""
    with contextlib.suppress(OSError):  # a leftover is removed by the next apply
        os.unlink(name, dir_fd=pfd)


def _drop_named(pfd: int, name: str | None) -> None:
    """Remove the temporary a queued write made, if it made one."""
    if name is not None:
        _drop_temp(pfd, name)


def _token() -> str:
    return secrets.token_hex(TEMP_TOKEN_HEX // 2)


def _read_file(fd: int, size: int) -> bytes:
    """Read a file that fstat says holds `size` bytes: at most `size` + 1 of them.

    One read() usually returns exactly `size` bytes, the whole file. Only a
    short read (a filesystem may return fewer) makes us read on, to EOF or
    to `size` + 1 bytes, the one byte that shows the file has grown.
    """
    data = os.read(fd, size + 1)
    if len(data) >= size:
        return data
    chunks = [data]
    got = len(data)
    while got <= size:
        chunk = os.read(fd, size + 1 - got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _ancestors_of_rel(rel: str) -> Iterator[str]:
    """The absolute paths of `rel` and the directories above it, "/" excluded."""
    if not rel:
        return
    parts = rel.split("/")
    for i in range(1, len(parts) + 1):
        yield "/" + "/".join(parts[:i])
