"""One daemon per state directory: an exclusive lock held for the process's life.

Two minions on one state directory would interleave heartbeat sequence
numbers (the master then refuses one as replays), share a spool and a
seen-job store, and apply each job twice; two masters on one would share a
database and its keys. So each daemon takes an flock on DAEMON_LOCK in its
state directory before it reads or writes anything there, and a second one
stops at once with a clear message. The kernel drops the lock when the
process ends, however it ends: no stale lock files after a crash.
"""

from __future__ import annotations

import fcntl
import os

from safcm.common.errors import SafcmError

DAEMON_LOCK = "daemon.lock"


def lock_state_dir(state_dir: str, daemon: str) -> int:
    """Hold the state directory's lock; returns the descriptor that holds it
    (keep it open). SafcmError if another process holds it."""
    path = os.path.join(state_dir, DAEMON_LOCK)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as e:
        raise SafcmError(f"cannot open the lock {path}: {e.strerror}") from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SafcmError(
            f"another {daemon} is running with state_dir {state_dir}; only one may use it"
        ) from None
    return fd
