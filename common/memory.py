"""Memory the C heap keeps after it was freed."""

from __future__ import annotations

import contextlib
import ctypes


def give_back() -> None:
    """Return the C heap's free memory to the system (glibc's malloc_trim).
    glibc keeps freed memory for the next allocation, so a burst that came
    and went (a large run, a flood of connections libzmq buffered for) would
    otherwise stay in the daemon's size for good."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: kept, as before
        ctypes.CDLL("libc.so.6").malloc_trim(0)


# mallopt(3)'s parameter numbers (<malloc.h>).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Bytes from which the C heap maps a block of its own, and unmaps it when it
# is freed. glibc raises its threshold (from 128 KiB up to 32 MiB) each time
# such a block is freed, so after the first 4 MiB frame a peer's unfinished
# frames came from the heap and stayed there after their connections were
# cut (a flood of them: the master 62-110 MiB larger at its peak). A fixed
# threshold keeps large blocks mapped and given back at once.
MMAP_THRESHOLD = 1024 * 1024
# Free bytes at the heap's top beyond which free() gives them back to the
# system at once. Fixing the mmap threshold also stops glibc from moving
# this one (it keeps it at twice the mmap threshold), which left it at
# 128 KiB: then every block between the two thresholds grew the heap and
# shrank it again, two system calls and a fresh page each time. Each
# msgpack.packb() is one (its buffer is 256 KiB): 11 us instead of 0.55 us,
# most of the master's cost of a heartbeat. glibc's own rule, then; at most
# this much stays unused at the top (give_back() returns it too).
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD


def map_large_blocks() -> None:
    """Fix the C heap's mmap threshold at MMAP_THRESHOLD, and its trim
    threshold at TRIM_THRESHOLD (glibc's mallopt)."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: as it was
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
