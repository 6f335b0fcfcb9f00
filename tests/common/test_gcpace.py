"""The garbage collection pacer: freezes the old heap, thaws it hourly."""

from __future__ import annotations

import gc
import weakref

import pytest

from safcm.common import gcpace
from safcm.common.gcpace import FREEZE_EVERY, THAW_EVERY, GcPacer, pace_collections
from safcm.common.loop import Loop


class Recorder:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def freeze(self) -> None:
        self.calls.append("freeze")

    def unfreeze(self) -> None:
        self.calls.append("unfreeze")

    def collect(self) -> int:
        self.calls.append("collect")
        return 0


def test_the_heap_is_frozen_each_tick_and_thawed_and_collected_once_an_hour():
    fake = Recorder()
    pacer = GcPacer(now=100.0, collector=fake)
    assert fake.calls == ["freeze"]  # start-up's objects at once
    ticks = [100.0 + FREEZE_EVERY * i for i in range(1, int(2 * THAW_EVERY / FREEZE_EVERY) + 1)]
    thaws = []
    for now in ticks:
        fake.calls.clear()
        pacer.tick(now)
        if fake.calls == ["unfreeze", "collect", "freeze"]:
            thaws.append(now - 100.0)
        else:
            assert fake.calls == ["freeze"]
    assert thaws == [THAW_EVERY, 2 * THAW_EVERY]


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def test_a_frozen_cycle_is_kept_until_the_thaw_collects_it():
    # The real collector: what the pacer freezes no collection walks, so a
    # cycle that becomes garbage after its freeze waits for the thaw.
    a, b = Node(), Node()
    a.other, b.other = b, a
    gone = weakref.ref(a)
    try:
        pacer = GcPacer(now=0.0)
        del a, b
        gc.collect()
        assert gone() is not None  # frozen: not walked
        pacer.tick(FREEZE_EVERY)
        gc.collect()
        assert gone() is not None
        pacer.tick(THAW_EVERY)
        assert gone() is None  # thawed and collected
        assert gc.get_freeze_count() > 0  # and the survivors frozen again
    finally:
        gc.unfreeze()


@pytest.mark.timeout(30)
def test_a_loop_paced_freezes_at_once_and_then_on_its_own(monkeypatch):
    monkeypatch.setattr(gcpace, "FREEZE_EVERY", 0.01)
    fake = Recorder()
    loop = Loop()
    pace_collections(loop, fake)
    assert fake.calls == ["freeze"]
    loop.call_every(0.005, lambda: fake.calls.count("freeze") >= 3 and loop.stop())
    loop.run()
    assert set(fake.calls) == {"freeze"}  # no thaw within the hour
