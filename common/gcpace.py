"""Short garbage collections on a daemon's long-lived heap.

CPython's full (generation 2) collection walks every tracked object, and
holds the GIL, so the event loop, while it runs. A master with a large fleet
keeps most of its objects for hours (keys, connections, facts, topics): at
6,000 minions its full collections took 95-216 ms of the loop during a job
(bench/fanout.py, named by common/stallwatch.py), against a budget of 50 ms.

The pacer freezes what has lived FREEZE_EVERY seconds (gc.freeze(): out of
every later collection), so a full collection walks only what came since.
A cycle of frozen objects that becomes garbage is not collected while
frozen: every THAW_EVERY seconds the pacer thaws everything and collects
once, one long pause at a time of its choosing instead of one per job.

    pace_collections(loop)  # GcPacer(loop.clock()), ticked every FREEZE_EVERY

The decisions are pure (time passed in); `collector` is the gc module, or a
test's fake that records what it is asked.
"""

from __future__ import annotations

import gc
import logging
from typing import Protocol

from safcm.common.loop import Loop

log = logging.getLogger(__name__)

# Seconds between freezes: an object that has lived this long is likely to
# live as long as the daemon; what is younger is still walked.
FREEZE_EVERY = 60.0
# Seconds between thaws and a full collection of everything: bounds how
# long garbage cycles among frozen objects are kept.
THAW_EVERY = 3600.0


class Collector(Protocol):
    def freeze(self) -> None: ...
    def unfreeze(self) -> None: ...
    def collect(self) -> int: ...


class GcPacer:
    def __init__(self, now: float, collector: Collector = gc) -> None:
        self.collector = collector
        self.next_thaw = now + THAW_EVERY
        collector.freeze()  # what start-up made: modules, settings, the stores

    def tick(self, now: float) -> None:
        """Freeze what is there now; once every THAW_EVERY, thaw and collect
        everything first."""
        if now >= self.next_thaw:
            self.next_thaw = now + THAW_EVERY
            self.collector.unfreeze()
            self.collector.collect()
        self.collector.freeze()


def pace_collections(loop: Loop, collector: Collector = gc) -> GcPacer:
    """Freeze the heap now and pace collections on `loop` from here on."""
    pacer = GcPacer(loop.clock(), collector)
    loop.call_every(FREEZE_EVERY, lambda: pacer.tick(loop.clock()))
    log.info(
        "garbage collection paced: what lives %.0f s is frozen, all of it collected every %.0f s",
        FREEZE_EVERY,
        THAW_EVERY,
    )
    return pacer
