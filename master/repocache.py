"""Load the configuration repository again only when it has changed.

    repo = repocache.load("/etc/safcm/config")                # as load_repository()
    repo = repocache.load("/etc/safcm/config", targets_only=True)

The master loads the repository on every run; with nothing changed that is
the same parse of the same files (27 ms of a 70 ms no-op job at 1000 files).
The cache keeps the last Repository and, beside it, a fingerprint of the
tree it was read from: one lstat of every directory, file and symlink under
the root (and the target of every symlink), taken BEFORE the load. The next
load walks the tree again, which reads no file content, and hands out the
same Repository if the walk is equal. Anything else loads and parses.

What one walk entry holds, and what it catches:

- the repo-relative path: an added, removed or renamed file or directory;
- st_dev and st_ino: a file replaced by another one (an editor's
  write-and-rename, `git checkout`), a mount over a directory, the root
  moved to another directory (the root path resolved to a different one);
- st_mode: a type or permission change; st_uid, st_gid: a new owner;
- st_size and st_mtime_ns: a rewrite;
- st_ctime_ns: everything above even where the others are kept as they
  were: the kernel sets ctime to the current time on every change to an
  inode (content, mode, owner, link count, rename) and user space cannot set
  it, while mtime can be (touch -d, cp -p, tar, rsync -t). A same-size
  rewrite with its old mtime put back is still seen;
- a symlink's target (readlink): a repointed symlink, even if it was
  recreated with the same inode number and timestamps.

Racy entries (git's "racy git" rule, see git's Documentation/technical/
racy-git.txt): a timestamp has the granularity of its filesystem (1 s on
ext3, 2 s on FAT; ext4's nanoseconds come from a clock that ticks every few
ms), so a file written just after the walk, within the same tick, can look
exactly like the walked one. A walk is therefore kept only if every entry's
mtime and ctime is older than RACY_WINDOW_NS before the walk started; a tree
changed within that window is loaded on every run until it has settled. This
trusts the filesystem's clock to be this machine's (a local filesystem) and
the clock not to be set back by more than the window; a file with an mtime
in the future keeps the tree uncacheable until that time has passed.

Not covered, on purpose:
- Top-level names starting with "." (.git, editors' files) are not walked:
  the loader never reads them (repository.ignored_at_top). Adding or
  removing one still changes the root directory's own entry.
- Failed loads are not kept: a broken repository is loaded, and its
  problems reported, on every run.
- Compiled per-host results are not cached: a template may render
  differently each time (Jinja2's `random` filter, `lipsum`), so a cached
  render would not be what compiling gives, and at fleet scale the results
  of every host would hold hosts x files objects. Compiling is CPU, not
  repository I/O. (Templates see host, groups, in_group() and the host's
  facts; a cache of renders would have to be keyed by all of them.)
- A walk that fails (a directory that cannot be read, an entry that vanishes
  between listing and lstat) gives no fingerprint: the loader runs and
  reports what is wrong, and nothing is kept.

A walk is taken before its load, so a change during the load is either in the
walk (and loaded) or not (and seen by the next walk): a kept Repository is
never newer than its fingerprint says, only possibly older, which reloads.

The cache is process-wide (one master serves one repository; keeping the
last path only), behind a lock, so that the daemon's loop or a worker thread
may call it. A Repository it hands out is shared by every run that gets it:
nothing may modify it (the compiler and target resolution only read it).
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from safcm.master.repository import Repository, ignored_at_top, load_repository

log = logging.getLogger("safcm-master")

# Nanoseconds before a walk starts within which a timestamp makes the walk
# unfit to keep: the coarsest timestamp granularity of a filesystem a
# repository may sit on (FAT: 2 s), plus a second for the kernel's coarse
# clock lagging time.time() and for a clock step.
RACY_WINDOW_NS = 3_000_000_000

# Open a directory while walking: never through a symlink, never kept past exec.
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

# (repo-relative path, st_dev, st_ino, st_mode, st_uid, st_gid, st_size,
#  st_mtime_ns, st_ctime_ns, symlink target or None)
WalkEntry = tuple[str, int, int, int, int, int, int, int, int, str | None]


@dataclass(frozen=True, slots=True)
class Walk:
    """What a repository's tree looked like: its entries in walk order, and
    the newest timestamp among them."""

    entries: tuple[WalkEntry, ...]
    newest_ns: int  # the largest mtime or ctime of any entry


# ---------------------------------------------------------------------------
# Deciding (pure)


def make_walk(entries: list[WalkEntry]) -> Walk:
    newest = max((max(e[7], e[8]) for e in entries), default=0)
    return Walk(tuple(entries), newest)


def unchanged(kept: Walk | None, current: Walk | None) -> bool:
    """May the Repository loaded with `kept` be handed out for the tree `current`?"""
    return kept is not None and current is not None and kept.entries == current.entries


def keepable(walk: Walk, started_ns: int) -> bool:
    """May a load that followed `walk` (which started at `started_ns`) be kept?

    Not if an entry changed within RACY_WINDOW_NS of the start: a write in
    the same timestamp tick after the walk would leave an equal walk.
    """
    return walk.newest_ns < started_ns - RACY_WINDOW_NS


def serving(kept: Mapping[bool, Walk], current: Walk | None, targets_only: bool) -> bool | None:
    """Which kept load (by its targets_only) serves a load of the tree `current`, if any.

    A full load serves both kinds; a targets_only one (no group directories)
    serves only targets_only.
    """
    for kind in (False, True) if targets_only else (False,):
        if unchanged(kept.get(kind), current):
            return kind
    return None


# ---------------------------------------------------------------------------
# Walking (I/O)


def walk_tree(root: str) -> Walk | None:
    """lstat every entry under `root` (the root itself as ""); None if any fails.

    By directory descriptors and never through a symlink below the root,
    like the loader's own walk (repository._Loader._scan_files), with one
    descriptor open per level of depth, never one per sibling (the master
    has sockets to keep). Reads no file content: one openat per directory,
    one fstatat per entry, one readlinkat per symlink.
    """
    try:
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    entries: list[WalkEntry] = []
    # Each level being walked: its descriptor, its path, its subdirectories still to walk.
    stack: list[tuple[int, str, list[str]]] = [(root_fd, "", [])]
    try:
        entries.append(_entry("", os.fstat(root_fd), None))
        stack[-1] = (root_fd, "", _read_dir(root_fd, "", entries))
        while stack:
            dir_fd, rel, pending = stack[-1]
            if not pending:
                os.close(stack.pop()[0])
                continue
            name = pending.pop()
            child = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
            path = f"{rel}/{name}" if rel else name
            stack.append((child, path, []))  # first, so that `finally` closes it
            stack[-1] = (child, path, _read_dir(child, path, entries))
    except OSError:
        return None
    finally:
        for fd, _, _ in stack:
            os.close(fd)
    return make_walk(entries)


def _read_dir(dir_fd: int, rel: str, entries: list[WalkEntry]) -> list[str]:
    """Record one directory's entries; its subdirectories, to walk next."""
    with os.scandir(dir_fd) as it:
        names = sorted(e.name for e in it)
    subdirs = []
    for name in names:
        if not rel and ignored_at_top(name):
            continue
        st = os.lstat(name, dir_fd=dir_fd)
        target = os.readlink(name, dir_fd=dir_fd) if stat.S_ISLNK(st.st_mode) else None
        entries.append(_entry(f"{rel}/{name}" if rel else name, st, target))
        if stat.S_ISDIR(st.st_mode):
            subdirs.append(name)
    return subdirs


def _entry(rel: str, st: os.stat_result, target: str | None) -> WalkEntry:
    return (
        rel,
        st.st_dev,
        st.st_ino,
        st.st_mode,
        st.st_uid,
        st.st_gid,
        st.st_size,
        st.st_mtime_ns,
        st.st_ctime_ns,
        target,
    )


# ---------------------------------------------------------------------------
# The cache


Loader = Callable[..., Repository]  # load_repository(path, *, targets_only=...)


@dataclass(frozen=True, slots=True)
class _Kept:
    walk: Walk
    repo: Repository


class RepositoryCache:
    """The last Repository loaded from one path, per kind of load.

    `load` and `clock` (nanoseconds, time.time_ns) are injectable for tests.
    A full load is kept apart from a targets_only one (ping): a targets_only
    Repository has no group directories and must never serve a files run;
    a full one serves both.
    """

    def __init__(
        self, load: Loader = load_repository, clock: Callable[[], int] = time.time_ns
    ) -> None:
        self._load = load
        self._clock = clock
        self._lock = threading.Lock()
        self._path: str | None = None
        self._kept: dict[bool, _Kept] = {}  # targets_only -> the last load of that kind

    def load(self, path: str, *, targets_only: bool = False) -> Repository:
        """As load_repository(path, targets_only=...), read again only if changed."""
        with self._lock:
            if path != self._path:
                self._path = path
                self._kept.clear()
            started = self._clock()
            walk = walk_tree(path)
            hit = serving({k: v.walk for k, v in self._kept.items()}, walk, targets_only)
            if hit is not None:
                log.debug("repository %s unchanged: not read again", path)
                return self._kept[hit].repo
            # Drop what is not the tree any more; a ping load that still is
            # stays, in case this full load fails.
            self._kept = {k: v for k, v in self._kept.items() if unchanged(v.walk, walk)}
            repo = self._load(path, targets_only=targets_only)
            if walk is not None and keepable(walk, started):
                if not targets_only:
                    self._kept.clear()  # the full load serves ping too
                self._kept[targets_only] = _Kept(walk, repo)
                log.debug("repository %s loaded (%d entries walked)", path, len(walk.entries))
            else:
                log.debug("repository %s loaded; not kept: %s", path, _why_not(walk))
            return repo


def _why_not(walk: Walk | None) -> str:
    if walk is None:
        return "its tree could not be walked"
    return f"it changed less than {RACY_WINDOW_NS / 1e9:g} s ago"


_shared = RepositoryCache()


def load(path: str, *, targets_only: bool = False) -> Repository:
    """Load the repository at `path` through the process-wide cache."""
    return _shared.load(path, targets_only=targets_only)
