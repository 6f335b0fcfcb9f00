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


# mallopt(3)'s parameter number for the mmap threshold (<malloc.h>).
_M_MMAP_THRESHOLD = -3
# Bytes from which the C heap maps a block of its own, and unmaps it when it
# is freed. glibc raises its threshold (from 128 KiB up to 32 MiB) each time
# such a block is freed, so after the first 4 MiB frame a peer's unfinished
# frames came from the heap and stayed there after their connections were
# cut (a flood of them: the master 62-110 MiB larger at its peak). A fixed
# threshold keeps large blocks mapped and given back at once.
MMAP_THRESHOLD = 1024 * 1024


def map_large_blocks() -> None:
    """Fix the C heap's mmap threshold at MMAP_THRESHOLD (glibc's mallopt)."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: as it was
        ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
