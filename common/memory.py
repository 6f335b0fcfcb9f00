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
