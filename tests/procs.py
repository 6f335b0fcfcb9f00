"""Processes as the tests see them, from /proc."""

from __future__ import annotations

import contextlib
import errno
import os
import resource
from collections.abc import Iterator


def alive(pid: int) -> bool:
    """Running: neither gone nor a zombie or dead (killed, not yet reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            # The command name, in parentheses, may hold spaces: the state follows its end.
            return f.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def cpu_seconds(pid: int) -> float:
    """CPU time a process has used so far, user and system, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    # utime and stime: fields 14 and 15 of proc(5), the 12th and 13th after the name.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def descriptors(pid: int) -> int:
    """Descriptors a process holds open."""
    return len(os.listdir(f"/proc/{pid}/fd"))


@contextlib.contextmanager
def no_descriptor_free() -> Iterator[None]:
    """This process at its descriptor limit: the soft limit lowered to just
    above the highest descriptor open, and every number below it taken, so
    the next open(), dup() or accept() fails with EMFILE. Restored after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1, hard))
    fillers = []
    try:
        while True:
            try:
                fillers.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
            except OSError as e:
                if e.errno != errno.EMFILE:
                    raise
                break
        yield
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
