"""The event loop: timers in order, cancellation, readers, thread wake-ups, signals."""

import gc
import logging
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Callable

import pytest
import zmq

from safcm.common.loop import Loop
from safcm.common.stallwatch import StallWatch, kernel_state


def test_timers_fire_in_order_and_cancel():
    loop = Loop()
    fired = []
    loop.call_later(0.02, lambda: fired.append("b"))
    loop.call_later(0.01, lambda: fired.append("a"))
    cancelled = loop.call_later(0.015, lambda: fired.append("x"))
    cancelled.cancel()
    loop.call_later(0.03, loop.stop)
    loop.run()
    assert fired == ["a", "b"]
    loop.close()


def test_call_every_until_cancelled():
    loop = Loop()
    ticks = []
    handle = loop.call_every(0.005, lambda: ticks.append(1))

    def enough():
        if len(ticks) >= 3:
            handle.cancel()
            loop.call_later(0.02, loop.stop)
        else:
            loop.call_later(0.005, enough)

    enough()
    loop.run()
    assert len(ticks) == 3
    loop.close()


def test_reader_and_threadsafe_wakeup():
    ctx = zmq.Context.instance()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    a.bind("inproc://loop-test")
    b.connect("inproc://loop-test")
    loop = Loop()
    got = []

    def on_b():
        got.append(b.recv())
        threading.Thread(target=lambda: loop.call_soon_threadsafe(loop.stop)).start()

    loop.add_reader(b, on_b)
    a.send(b"hello")
    loop.run()
    assert got == [b"hello"]
    loop.close()
    a.close(0)
    b.close(0)


def test_stop_on_signal():
    loop = Loop()
    old = signal.getsignal(signal.SIGTERM)
    try:
        loop.stop_on_signals(signal.SIGTERM)
        loop.call_later(0.01, lambda: os.kill(os.getpid(), signal.SIGTERM))
        loop.call_later(5, lambda: (_ for _ in ()).throw(AssertionError("signal ignored")))
        loop.run()
    finally:
        signal.signal(signal.SIGTERM, old)
        loop.close()


def test_plain_sockets_as_readers_and_writers():
    """zmq.Poller reports plain sockets by fd number; the loop must still find them."""
    a, b = socket.socketpair()
    loop = Loop()
    events = []

    def readable():
        events.append(("read", a.recv(10)))
        loop.remove_reader(a)
        loop.add_writer(a, writable)

    def writable():
        events.append(("write",))
        loop.remove_writer(a)
        loop.stop()

    loop.add_reader(a, readable)
    b.send(b"ping")
    loop.call_later(5, loop.stop)
    loop.run()
    assert events == [("read", b"ping"), ("write",)]
    loop.close()
    a.close()
    b.close()


def test_the_longest_call_is_measured_and_a_slow_one_logged(caplog):
    # A fake clock that each slow callback moves on: measuring needs no sleep.
    now = [100.0]
    loop = Loop(clock=lambda: now[0])

    def quick() -> None:
        now[0] += 0.002

    def slow() -> None:
        now[0] += 2.5

    loop.call_later(0, quick)
    loop.call_later(0, slow)
    with caplog.at_level(logging.WARNING, logger="safcm"):
        loop.run_once(max_wait=0)
    held, name = loop.reset_longest_call()
    assert held == pytest.approx(2.5) and name.endswith("slow")
    assert [r.getMessage() for r in caplog.records] == [f"{name} held the event loop for 2.5 s"]
    assert loop.longest_call == (0.0, "")
    loop.call_later(0, quick)
    loop.run_once(max_wait=0)
    assert loop.longest_call[0] == pytest.approx(0.002)
    loop.close()


def test_a_timer_due_within_a_millisecond_is_waited_for_not_spun_on():
    # A wait shorter than the poller's millisecond is rounded up, not down to
    # a poll that returns at once: the loop sleeps until the timer is due
    # instead of polling again and again.
    loop = Loop()
    fired = []
    loop.call_later(0.0009, lambda: fired.append(True))
    turns = 0
    while not fired:
        loop.run_once()
        turns += 1
    loop.close()
    assert turns == 1


def test_a_long_call_is_named_with_where_the_watch_saw_it_spend_its_time():
    # A real watch thread, sampling every millisecond once a call has held the
    # loop 5 ms; the callback holds the loop until the watch has seen it.
    loop = Loop()
    watch = StallWatch(loop, after=0.005, every=0.001)
    watch.start()

    def held_until_seen() -> None:
        seq = loop.current_call[0]
        deadline = time.monotonic() + 30
        while not watch.place(seq) and time.monotonic() < deadline:
            time.sleep(0.001)  # our code stalled in a system call, as fsync would

    try:
        loop.call_later(0, held_until_seen)
        loop.run_once(max_wait=0)
    finally:
        watch.stop()
        loop.close()
    name = loop.longest_call[1]
    assert name.startswith("test_a_long_call_is_named_with_where_the_watch_saw_it_spend_its_time")
    # Our innermost frames (the loop calling, and running a turn), then the
    # leaf, which is not ours.
    assert ", at common/loop.py:" in name and " in _call < common/loop.py:" in name
    assert " in run_once, in " in name
    # And what the kernel saw the thread do: asleep, or running between sleeps.
    assert re.search(r" in held_until_seen \[[RS]( \S+)?\], \d+ of \d+ samples$", name), name
    assert loop.stall_watch is None


def test_the_watch_samples_only_a_call_held_past_its_threshold_and_only_that_call():
    now = [100.0]
    loop = Loop(clock=lambda: now[0])
    watch = StallWatch(loop, after=0.05, every=3600)  # the thread never samples by itself
    watch.start()
    places: list[str] = []

    def sampled_from_another_thread(advance: float) -> Callable[[], None]:
        def callback() -> None:
            now[0] += advance
            # The watch reads the loop thread's stack from its own thread.
            sampler = threading.Thread(target=watch.sample)
            sampler.start()
            sampler.join()
            places.append(watch.place(loop.current_call[0]))

        return callback

    try:
        loop.call_later(0, sampled_from_another_thread(0.04))  # short of the threshold
        loop.run_once(max_wait=0)
        loop.call_later(0, sampled_from_another_thread(0.06))
        loop.run_once(max_wait=0)
        # Between calls nothing is sampled, and a later call has no place of its own.
        watch.sample()
        assert watch.place(loop.current_call[0] + 1) == ""
    finally:
        watch.stop()
        loop.close()
    assert places[0] == ""
    # Our innermost frame (the loop calling the callback), then the leaf:
    # join() waiting on the sampler.
    assert places[1].startswith("at common/loop.py:")
    # The loop thread was in join(): asleep, or about to be, when the sampler looked.
    assert "/threading.py:" in places[1]
    assert re.search(r" in wait \[[RS]( \S+)?\], 1 of 1 samples$", places[1])
    assert loop.longest_call[1].endswith(", " + places[1])


def test_a_long_garbage_collection_on_the_loop_thread_is_named():
    # A collection holds the GIL, so the watch thread cannot sample it; the
    # watch times it instead. A million small lists take a full collection
    # well past GC_NAMED_AFTER (10 ms) on any machine.
    heap = [[i] for i in range(1_000_000)]
    loop = Loop()
    watch = StallWatch(loop, every=3600)  # no sampling: the name is the GC's alone
    watch.start()
    names: list[str] = []

    def collect_elsewhere() -> None:  # another thread's collection is not the loop's
        collector = threading.Thread(target=gc.collect)
        collector.start()
        collector.join()
        names.append(watch.place(loop.current_call[0]))

    try:
        loop.call_later(0, gc.collect)
        loop.run_once(max_wait=0)
        names.append(loop.reset_longest_call()[1])
        loop.call_later(0, collect_elsewhere)
        loop.run_once(max_wait=0)
    finally:
        watch.stop()
        loop.close()
    assert len(heap) == 1_000_000
    assert re.fullmatch(r"collect, \d+ ms in garbage collection of generation 2", names[0])
    assert names[1] == ""
    assert watch._gc_phase not in gc.callbacks


def test_the_kernel_state_of_a_thread_is_read_from_proc():
    asleep = threading.Event()
    task: list[str] = []

    def sleeper() -> None:
        task.append(f"/proc/self/task/{threading.get_native_id()}")
        asleep.wait(30)

    thread = threading.Thread(target=sleeper)
    thread.start()
    try:
        while not task:
            time.sleep(0.001)
        # Asleep on its event's lock once the kernel has put it to sleep.
        deadline = time.monotonic() + 30
        while not kernel_state(task[0]).startswith(" [S") and time.monotonic() < deadline:
            time.sleep(0.001)
        assert re.fullmatch(r" \[S( \S+)?\]", kernel_state(task[0]))
    finally:
        asleep.set()
        thread.join()
    assert kernel_state(f"/proc/self/task/{threading.get_native_id()}") == " [R]"
    # join() returns once the thread's Python code is done; the kernel task
    # may still be exiting for a moment, so wait for it to go.
    deadline = time.monotonic() + 30
    while kernel_state(task[0]) != "" and time.monotonic() < deadline:
        time.sleep(0.001)
    assert kernel_state(task[0]) == ""  # gone


def test_a_failure_promises_another_run_only_of_a_periodic_callback(caplog):
    # A one-shot timer that fails is not run again: its error line must not
    # say it will be (a minion's reconnect once failed so, and said so).
    now = [100.0]
    loop = Loop(clock=lambda: now[0])

    def once() -> None:
        raise RuntimeError("no descriptor left")

    def every() -> None:
        raise RuntimeError("the disk is full")

    loop.call_later(0, once)
    loop.call_every(5, every)
    with caplog.at_level(logging.ERROR, logger="safcm"):
        loop.run_once(max_wait=0)
        now[0] += 5
        loop.run_once(max_wait=0)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert lines[0].endswith("once failed: RuntimeError('no descriptor left')")
    assert lines[1].endswith(
        "every failed; it runs again every 5 s: RuntimeError('the disk is full')"
    )
    loop.close()


def test_a_slow_periodic_callback_is_named_as_itself():
    # The fan-out benchmark at 4,000 minions named a 561 ms stall only as
    # call_every's wrapper ("Loop.call_every.<locals>.tick"), which holds
    # the loop a little longer than the callback it runs: each read of this
    # clock moves it on a microsecond.
    now = [100.0]

    def clock() -> float:
        now[0] += 1e-6
        return now[0]

    loop = Loop(clock=clock)

    def sweep() -> None:
        now[0] += 0.3

    loop.call_every(5, sweep)
    now[0] += 5
    loop.run_once(max_wait=0)
    held, name = loop.reset_longest_call()
    assert held == pytest.approx(0.3, abs=1e-3)
    assert name.endswith("test_a_slow_periodic_callback_is_named_as_itself.<locals>.sweep")
    loop.close()


def test_callbacks_posted_from_threads_share_the_loop_with_its_sockets():
    # A worker thread that posts many callbacks at once (the master's result
    # writer and prepare thread during a job of 1,000 hosts) held the loop
    # 150 ms in one turn, every socket unread, and the longest call was
    # named only "Loop._drain_wake". Now a turn runs DRAIN_SLICE of them;
    # the rest run after the next poll, in the order they were posted, and
    # each is measured and named as itself.
    now = [100.0]
    loop = Loop(clock=lambda: now[0])
    ran: list[int] = []

    def work(i: int) -> Callable[[], None]:
        def posted() -> None:
            ran.append(i)
            now[0] += 0.004  # 4 ms each: three fill a 10 ms slice

        return posted

    r, w = socket.socketpair()
    read: list[int] = []
    loop.add_reader(r, lambda: read.append(len(ran)) or r.recv(1))
    poster = threading.Thread(target=lambda: [loop.call_soon_threadsafe(work(i)) for i in range(8)])
    poster.start()
    poster.join()
    w.send(b"x")  # readable in every turn: the socket gets a turn between slices
    turns = 0
    while len(ran) < 8:
        loop.run_once(max_wait=1.0)
        turns += 1
    assert ran == list(range(8))
    assert turns == 3  # 3 + 3 + 2
    assert read and read[0] == 3  # read after the first slice, not after all eight
    held, name = loop.reset_longest_call()
    assert held == pytest.approx(0.004)
    assert name.endswith("work.<locals>.posted")
    loop.remove_reader(r)
    loop.close()
    r.close()
    w.close()
