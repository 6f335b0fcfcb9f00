"""What a piece of code leaves to the cyclic garbage collector."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Iterator
from typing import Any


@contextlib.contextmanager
def garbage_kept() -> Iterator[Callable[[], list[Any]]]:
    """Within the block, the collector is off, and found() collects and
    returns what became cyclic garbage since the block began (gc.DEBUG_SAVEALL
    keeps it). Reference counting frees everything else as it goes, as it
    would with the collector on."""
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)

    def found() -> list[Any]:
        gc.collect()
        return list(gc.garbage)

    try:
        yield found
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
