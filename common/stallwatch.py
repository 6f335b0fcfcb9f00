"""Where a long callback held the event loop: the loop thread's stack, sampled.

The loop measures how long each callback holds it (Loop.longest_call), but a
name such as "Intake.on_router" does not say whether the time went to a
database read, a log line stalled by the disk or the crypto. A StallWatch
thread looks at the loop thread's stack while one call has run longer than
STALL_SAMPLE_AFTER, every STALL_SAMPLE_EVERY, and the loop names the place
seen most often in that call beside the callback's name:

    watch = StallWatch(loop)      # from the loop's own thread
    watch.start()
    ...
    loop.longest_call
    # (0.28, "Publisher.on_xpub, at master/db.py:290 in execute < ... [S], 9 of 11 samples")
    watch.stop()

Each sample also says what the kernel saw the thread do (kernel_state):
running or waiting for a core, asleep on a lock, or waiting on the disk.

Reading another thread's frames needs the GIL, which a callback blocked in a
system call (fsync, a lock wait) has released: those are the stalls the watch
sees best. One held by pure Python code is seen after the interpreter's switch
interval (5 ms), late enough for a stall of more than STALL_SAMPLE_AFTER.

A garbage collection holds the GIL throughout, so the watch cannot sample
it: the place named is wherever the collection happened to start. The watch
therefore also times the collections on the loop thread (gc.callbacks) and
names those of a call that took GC_NAMED_AFTER or more ("..., 140 ms in
garbage collection of generation 2").
"""

from __future__ import annotations

import gc
import os
import sys
import threading
import time
from collections import Counter
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from safcm.common.loop import Loop

# A call is sampled once it has held the loop this long, in seconds: shorter
# ones are the loop's normal work (a quiet master's longest are 20-35 ms).
STALL_SAMPLE_AFTER = 0.05
# Seconds between two samples of a long call: a 160 ms stall gets about five.
# The watch thread wakes this often whatever the loop does, about 50 wake-ups
# a second of a few microseconds each.
STALL_SAMPLE_EVERY = 0.02
# Seconds of garbage collection within one call worth naming: a young
# generation's collection takes well under a millisecond, a full one of a
# large heap tens to hundreds.
GC_NAMED_AFTER = 0.01
# Our own code: the package's directory (a checkout holds the virtualenv too,
# so its subpackages are named, not the directory alone).
_OUR_CODE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Frames of our own code named in a place: the one the time went in and its callers.
PLACE_FRAMES = 3
_OUR_DIRS = tuple(os.path.join(_OUR_CODE, part) + os.sep for part in ("common", "master", "minion"))


class StallWatch:
    """Samples the stack of the thread that called start() (the loop's) while
    one loop call runs long; Loop._call asks place(seq) when the call ends."""

    def __init__(
        self,
        loop: Loop,
        after: float = STALL_SAMPLE_AFTER,
        every: float = STALL_SAMPLE_EVERY,
    ) -> None:
        self.loop = loop
        self.after = after
        self.every = every
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop_thread = 0
        self._loop_task = ""
        # The samples of one call only, the latest sampled: (seq, places seen).
        # Written by the watch thread, read by the loop thread; a swap of one
        # tuple under the GIL, so each side sees a whole one.
        self._samples: tuple[int, Counter[str]] = (0, Counter())
        # Garbage collection on the loop thread: when the one under way began,
        # and for the latest call that had any, (seq, seconds, oldest generation).
        self._gc_began: float | None = None
        self._gc: tuple[int, float, int] = (0, 0.0, 0)

    def start(self) -> None:
        self._loop_thread = threading.get_ident()
        self._loop_task = f"/proc/self/task/{threading.get_native_id()}"
        self.loop.stall_watch = self
        gc.callbacks.append(self._gc_phase)
        self._thread = threading.Thread(target=self._watch, name="stall-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join()
        if self._gc_phase in gc.callbacks:
            gc.callbacks.remove(self._gc_phase)
        if self.loop.stall_watch is self:
            self.loop.stall_watch = None

    def place(self, seq: int) -> str:
        """The place seen most often while call `seq` ran, and its garbage
        collection if that was long; "" if neither."""
        named = []
        sampled, places = self._samples
        if sampled == seq and places:
            place, count = places.most_common(1)[0]
            named.append(f"{place}, {count} of {places.total()} samples")
        gc_seq, gc_seconds, generation = self._gc
        if gc_seq == seq and gc_seconds >= GC_NAMED_AFTER:
            named.append(
                f"{gc_seconds * 1000:.0f} ms in garbage collection of generation {generation}"
            )
        return ", ".join(named)

    def _gc_phase(self, phase: str, info: dict[str, int]) -> None:
        """gc.callbacks: time the collections the loop thread runs."""
        if threading.get_ident() != self._loop_thread:
            return
        if phase == "start":
            self._gc_began = time.perf_counter()
            return
        if self._gc_began is None:
            return
        took = time.perf_counter() - self._gc_began
        self._gc_began = None
        seq, started = self.loop.current_call
        if started is None:
            return
        gc_seq, seconds, generation = self._gc
        if gc_seq != seq:
            seconds, generation = 0.0, 0
        self._gc = (seq, seconds + took, max(generation, info["generation"]))

    def _watch(self) -> None:
        while not self._stopped.wait(self.every):
            self.sample()

    def sample(self) -> None:
        """Look at the loop thread once (the watch thread's step; tests call it)."""
        seq, started = self.loop.current_call
        if started is None or self.loop.clock() - started < self.after:
            return
        frame = sys._current_frames().get(self._loop_thread)
        if frame is None or frame.f_code is _GC_PHASE:
            return  # a collection just ended: timed by _gc_phase, not sampled
        place = where(frame) + kernel_state(self._loop_task)
        if self.loop.current_call[0] != seq:
            return  # that call ended while we looked: the stack is another's
        sampled, places = self._samples
        if sampled != seq:
            places = Counter()
            self._samples = (seq, places)
        places[place] += 1


_GC_PHASE = StallWatch._gc_phase.__code__


def where(frame: FrameType) -> str:
    """A stack as one short line: the innermost PLACE_FRAMES frames of our own
    code, callee first, then the innermost frame when it is not ours ("at
    master/db.py:290 in execute < master/jobstore.py:88 in plan < ..., in
    logging/__init__.py:1113 in flush")."""
    ours: list[str] = []
    caller: FrameType | None = frame
    while caller is not None and len(ours) < PLACE_FRAMES:
        if caller.f_code.co_filename.startswith(_OUR_DIRS):
            ours.append(_frame_name(caller))
        caller = caller.f_back
    if not ours:
        return f"at {_frame_name(frame)}"
    place = "at " + " < ".join(ours)
    if not frame.f_code.co_filename.startswith(_OUR_DIRS):
        place += f", in {_frame_name(frame)}"
    return place


def kernel_state(task: str) -> str:
    """What the kernel says the thread at /proc/self/task/TID is doing: " [R]"
    running or waiting for a core, " [S futex_do_wait]" asleep on a lock (the
    GIL's too), " [D ...]" waiting on the disk; "" if /proc cannot tell."""
    try:
        with open(f"{task}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        with open(f"{task}/wchan") as f:
            wchan = f.read().strip()
    except (OSError, IndexError):
        return ""
    return f" [{state}]" if wchan in ("", "0") else f" [{state} {wchan}]"


def _frame_name(frame: FrameType) -> str:
    path = frame.f_code.co_filename
    if path.startswith(_OUR_DIRS):
        path = os.path.relpath(path, _OUR_CODE)
    else:
        # A library's file by its last two parts (logging/__init__.py, zmq/sugar/socket.py).
        path = os.path.join(*path.split(os.sep)[-2:])
    return f"{path}:{frame.f_lineno} in {frame.f_code.co_name}"
