"""A small single-threaded event loop over zmq.Poller: readers, timers, signals.

Both daemons are one loop each: every socket is polled, every timeout is a
timer, and no recv ever blocks. Work that must not stall the loop (applying
files on the minion) runs in a worker thread that reports back through
call_soon_threadsafe(), which wakes the poller through a pipe.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import zmq

from safcm.common.errors import SafcmError

if TYPE_CHECKING:
    from safcm.common.stallwatch import StallWatch

log = logging.getLogger("safcm")

# Seconds between two log lines about the same failing callback, after the
# first (which has the traceback): a timer failing four times a second while
# the database is locked writes one line every ten seconds.
ERROR_LOG_INTERVAL = 10.0
# Longest single poll, in seconds. Timers and wake-ups end a poll early; this
# only bounds how stale the clock can get if nothing at all happens.
MAX_POLL_SECONDS = 1.0
# A callback that holds the loop longer than this, in seconds, is logged: for
# that long no socket was read and no timer ran (heartbeats and deadlines wait).
SLOW_CALLBACK_WARNING = 1.0
# Seconds of callbacks posted from other threads (call_soon_threadsafe) run
# in one loop turn, at most (about: one callback may take longer). The rest
# run after the next poll, so threads that posted many at once (the master's
# result writer and prepare thread during a job of 1,000 hosts: 150 ms of
# them in one turn) do not leave every socket unread meanwhile.
DRAIN_SLICE = 0.01


# The poll flags as plain ints: zmq's are enum.IntFlag members, and `|` on
# those costs more than the rest of a (re-)registration.
_POLLIN = int(zmq.POLLIN)
_POLLOUT = int(zmq.POLLOUT)


def _key(sock: Any) -> Any:
    """What zmq.Poller.poll() reports for `sock`: the socket itself for ZeroMQ
    sockets, the file descriptor number for everything else."""
    if isinstance(sock, zmq.Socket | int):
        return sock
    return sock.fileno()


def _said(error: Exception) -> str:
    """An error as a log line shows it: our own by its message, others with their type."""
    return str(error) if isinstance(error, SafcmError) else repr(error)


def _name(callback: Callable[[], Any]) -> str:
    return getattr(callback, "__qualname__", repr(callback))


class Timer:
    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[[], Any]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Loop:
    """Every callback runs through _call(): one that raises costs that call,
    never the loop. Its first failure is logged with the traceback, later ones
    of the same callback in one line each, and at most one such line per
    callback per ERROR_LOG_INTERVAL; a timer keeps its schedule, so the work
    is retried (a database locked by another process, a full disk)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._failures: dict[str, tuple[int, float]] = {}  # name -> (count, last logged)
        # The longest any one callback held the loop, in seconds, and its name:
        # everything else waited that long (bench/fanout.py prints it).
        self.longest_call: tuple[float, str] = (0.0, "")
        # The call running now, for a StallWatch's thread: (its number, when it
        # started), or (number, None) between calls. One tuple, swapped whole.
        self.current_call: tuple[int, float | None] = (0, None)
        self._calls = 0
        # Names where a long call spent its time (common/stallwatch.py), if started.
        self.stall_watch: StallWatch | None = None
        self._poller = zmq.Poller()
        self._readers: dict[Any, Callable[[], Any]] = {}
        self._writers: dict[Any, Callable[[], Any]] = {}
        self._timers: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._stopping = False
        self._pending: list[Callable[[], Any]] = []
        self._pending_lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        # Run outside _call(): each posted callback is a call of its own,
        # measured and named as itself, not as this wrapper of a turn's worth.
        self._drain = self._drain_wake
        self.add_reader(self._wake_r, self._drain)

    # readers and writers

    def add_reader(self, sock: Any, callback: Callable[[], Any]) -> None:
        """Call `callback()` whenever `sock` (a zmq socket, a file descriptor or
        anything with fileno()) is readable."""
        key = _key(sock)
        self._readers[key] = callback
        self._register(key)

    def remove_reader(self, sock: Any) -> None:
        key = _key(sock)
        if self._readers.pop(key, None) is not None:
            self._register(key)

    def add_writer(self, sock: Any, callback: Callable[[], Any]) -> None:
        """Call `callback()` whenever `sock` is writable (until remove_writer)."""
        key = _key(sock)
        self._writers[key] = callback
        self._register(key)

    def remove_writer(self, sock: Any) -> None:
        key = _key(sock)
        if self._writers.pop(key, None) is not None:
            self._register(key)

    def _register(self, sock: Any) -> None:
        flags = (_POLLIN if sock in self._readers else 0) | (
            _POLLOUT if sock in self._writers else 0
        )
        if flags:
            self._poller.register(sock, flags)
        else:
            self._poller.unregister(sock)

    # timers

    def call_later(self, delay: float, callback: Callable[[], Any]) -> Timer:
        timer = Timer(self.clock() + max(0.0, delay), callback)
        heapq.heappush(self._timers, (timer.when, next(self._seq), timer))
        return timer

    def call_every(self, interval: float, callback: Callable[[], Any]) -> Timer:
        """Call `callback` every `interval` seconds until the returned timer is cancelled."""
        handle = Timer(0.0, callback)

        def tick() -> None:
            if handle.cancelled:
                return
            self.call_later(interval, tick)  # first: a failing callback keeps its schedule
            self._call(callback, again=interval)

        # Named as what it runs: the longest call and a slow call's warning
        # then name the periodic work, not this wrapper around it.
        tick.__qualname__ = _name(callback)
        self.call_later(interval, tick)
        return handle

    def call_soon_threadsafe(self, callback: Callable[[], Any]) -> None:
        """Run `callback` in the loop's thread; safe to call from any thread."""
        with self._pending_lock:
            self._pending.append(callback)
        self._poke()

    def _poke(self) -> None:
        """Make the next poll return at once, for the posted callbacks."""
        # A full pipe means a wake-up is already pending; that is enough.
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"\0")

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        with self._pending_lock:
            pending, self._pending = self._pending, []
        until = self.clock() + DRAIN_SLICE
        for i, callback in enumerate(pending):
            if i and self.clock() >= until:
                with self._pending_lock:  # ahead of any posted meanwhile: order kept
                    self._pending[:0] = pending[i:]
                self._poke()
                return
            self._call(callback)

    # running

    def stop(self) -> None:
        self._stopping = True
        self.call_soon_threadsafe(lambda: None)

    def stop_on_signals(self, *signums: int) -> None:
        """Stop the loop cleanly on these signals (SIGTERM, SIGINT)."""
        for signum in signums:
            signal.signal(signum, lambda _n, _f: self.stop())

    def run(self) -> None:
        self._stopping = False
        while not self._stopping:
            self.run_once()

    def run_once(self, max_wait: float = MAX_POLL_SECONDS) -> None:
        now = self.clock()
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
        wait = max_wait
        if self._timers:
            wait = min(wait, max(0.0, self._timers[0][0] - now))
        # Rounded up to the poller's milliseconds: rounded down, a timer due
        # in under a millisecond makes the loop spin (polls that return at
        # once) until it is due, a dozen system calls each time.
        for sock, flags in self._poller.poll(math.ceil(wait * 1000)):
            # A callback may have removed this socket or another one; look again.
            if flags & _POLLIN and sock in self._readers:
                reader = self._readers[sock]
                if reader is self._drain:
                    reader()
                else:
                    self._call(reader)
            if flags & _POLLOUT and sock in self._writers:
                self._call(self._writers[sock])
        now = self.clock()
        while self._timers and self._timers[0][0] <= now:
            _, _, timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                self._call(timer.callback)

    def _call(self, callback: Callable[[], Any], again: float | None = None) -> None:
        """Run one callback; a failure costs it, never the loop. `again`: the
        seconds until a periodic callback runs again (for the error line)."""
        started = self.clock()
        outer = self.current_call  # a callback may run the loop's own calls
        self._calls += 1
        seq = self._calls
        self.current_call = (seq, started)
        try:
            callback()
        except Exception as e:
            self._failed(callback, e, again)
        finally:
            self.current_call = outer
        held = self.clock() - started
        if held > self.longest_call[0] or held > SLOW_CALLBACK_WARNING:
            name = _name(callback)
            place = self.stall_watch.place(seq) if self.stall_watch is not None else ""
            if place:
                name = f"{name}, {place}"
            if held > self.longest_call[0]:
                self.longest_call = (held, name)
            if held > SLOW_CALLBACK_WARNING:
                log.warning("%s held the event loop for %.1f s", name, held)

    def reset_longest_call(self) -> tuple[float, str]:
        """The longest call so far (seconds, name), and start measuring afresh."""
        longest, self.longest_call = self.longest_call, (0.0, "")
        return longest

    def _failed(self, callback: Callable[[], Any], error: Exception, again: float | None) -> None:
        name = _name(callback)
        count, logged = self._failures.get(name, (0, -ERROR_LOG_INTERVAL))
        now = self.clock()
        if count == 0:
            # Our own errors (a database away, a full disk) say what happened
            # in their message; a trace is for bugs.
            trace = None if isinstance(error, SafcmError) else error
            # Only a periodic callback is sure to run again: a one-shot timer's
            # or a reader's failure must not be reported as if it would be.
            then = "" if again is None else f"; it runs again every {again:g} s"
            log.error("%s failed%s: %s", name, then, _said(error), exc_info=trace)
            logged = now
        elif now - logged >= ERROR_LOG_INTERVAL:
            log.error("%s failed again (%d times so far): %s", name, count + 1, _said(error))
            logged = now
        self._failures[name] = (count + 1, logged)

    def close(self) -> None:
        for sock in list(self._readers):
            self.remove_reader(sock)
        for sock in list(self._writers):
            self.remove_writer(sock)
        os.close(self._wake_r)
        os.close(self._wake_w)
