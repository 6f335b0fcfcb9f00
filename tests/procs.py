"""Processes as the tests see them, from /proc."""

from __future__ import annotations


def alive(pid: int) -> bool:
    """Running: neither gone nor a zombie or dead (killed, not yet reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            # The command name, in parentheses, may hold spaces: the state follows its end.
            return f.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False
