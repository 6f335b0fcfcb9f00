"""The pipeline: work on worker threads, finishing in submission order, bounded.

Jobs are driven with fakes that record what happens; work that must end
out of order waits on an event another job's work sets, never on time.
"""

from __future__ import annotations

import errno
import threading

import pytest

from safcm.minion.pipeline import Pipeline
from tests.garbage import garbage_kept

# Long enough never to end a wait in a passing run: a wait that times out
# means a job that should have run did not.
WAIT = 30.0


class Log:
    """What the jobs did, in the order it happened."""

    def __init__(self) -> None:
        self.events: list[tuple] = []
        self._lock = threading.Lock()

    def add(self, *event) -> None:
        with self._lock:
            self.events.append(event)

    def finish(self, name: str, pipeline: Pipeline | None = None):
        def finish(result, error):
            held = None if pipeline is None else len(pipeline)
            self.add("finish", name, result, error, held)

        return finish

    def drop(self, name: str):
        return lambda result: self.add("drop", name, result)

    def of(self, kind: str) -> list[tuple]:
        return [e[1:] for e in self.events if e[0] == kind]


def waits_for(event: threading.Event, result: str):
    def work():
        if not event.wait(WAIT):
            raise TimeoutError("the other job's work never ran")
        return result

    return work


def sets(event: threading.Event, result: str):
    def work():
        event.set()
        return result

    return work


def test_work_ending_out_of_order_is_finished_in_submission_order():
    log = Log()
    second_done = threading.Event()
    p: Pipeline[str] = Pipeline(workers=2, pending_max=8, name="test")
    try:
        # The first job's work ends only after the second's.
        p.submit(waits_for(second_done, "one"), log.finish("1"), log.drop("1"))
        p.submit(sets(second_done, "two"), log.finish("2"), log.drop("2"))
        p.submit(None, log.finish("3"), log.drop("3"))  # no work: finished in its turn
        p.drain()
    finally:
        p.close()
    assert [e[:3] for e in log.of("finish")] == [
        ("1", "one", None),
        ("2", "two", None),
        ("3", None, None),
    ]
    assert log.of("drop") == []
    assert len(p) == 0


def test_submit_finishes_the_oldest_before_it_holds_more_than_pending_max():
    log = Log()
    gate = threading.Event()
    p: Pipeline[str] = Pipeline(workers=2, pending_max=2, name="test")
    try:
        p.submit(waits_for(gate, "one"), log.finish("1", p), log.drop("1"))
        p.submit(waits_for(gate, "two"), log.finish("2", p), log.drop("2"))
        assert log.of("finish") == [] and len(p) == 2
        gate.set()
        # Full: the first job is finished (its work awaited) before the
        # third is taken, so the pipeline never holds more than two.
        p.submit(lambda: "three", log.finish("3", p), log.drop("3"))
        assert log.of("finish")[0] == ("1", "one", None, 1)
        p.drain()
    finally:
        p.close()
    assert [e[0] for e in log.of("finish")] == ["1", "2", "3"]


def test_a_failed_work_reaches_its_own_finish_and_stops_nothing_else():
    log = Log()
    error = OSError(errno.EIO, "Input/output error")

    def fails():
        raise error

    p: Pipeline[str] = Pipeline(workers=2, pending_max=4, name="test")
    try:
        p.submit(lambda: "one", log.finish("1"), log.drop("1"))
        p.submit(fails, log.finish("2"), log.drop("2"))
        p.submit(lambda: "three", log.finish("3"), log.drop("3"))
        p.drain()
    finally:
        p.close()
    assert [e[:3] for e in log.of("finish")] == [
        ("1", "one", None),
        ("2", None, error),
        ("3", "three", None),
    ]


def test_an_error_in_finish_propagates_and_close_drops_what_the_rest_hold():
    log = Log()
    gate = threading.Event()

    def broken(result, error):
        raise RuntimeError("a bug")

    def fails():
        raise OSError(errno.EIO, "Input/output error")

    p: Pipeline[str] = Pipeline(workers=2, pending_max=8, name="test")
    p.submit(waits_for(gate, "one"), broken, log.drop("1"))
    p.submit(lambda: "two", log.finish("2"), log.drop("2"))
    p.submit(fails, log.finish("3"), log.drop("3"))
    gate.set()
    with pytest.raises(RuntimeError, match="a bug"):
        p.drain()
    p.close()
    # The job whose finish raised releases its own; close() drops every
    # unfinished job, with what its work returned (None: it raised).
    assert log.of("drop") == [("2", "two"), ("3", None)]
    assert log.of("finish") == []
    assert len(p) == 0


def test_close_waits_for_running_work_before_dropping_it():
    log = Log()
    started = threading.Event()
    release = threading.Event()

    def slow():
        started.set()
        if not release.wait(WAIT):
            raise TimeoutError("never released")
        log.add("work done")
        return "slow"

    p: Pipeline[str] = Pipeline(workers=1, pending_max=4, name="test")
    p.submit(slow, log.finish("1"), log.drop("1"))
    assert started.wait(WAIT)
    closer = threading.Thread(target=p.close)
    closer.start()
    release.set()
    closer.join(WAIT)
    assert not closer.is_alive()
    assert log.events == [("work done",), ("drop", "1", "slow")]


@pytest.mark.parametrize("workers, pending_max, batch", [(0, 1, 1), (1, 0, 1), (1, 1, 0)])
def test_a_pipeline_needs_a_worker_room_for_a_job_and_batches(workers, pending_max, batch):
    with pytest.raises(ValueError):
        Pipeline(workers, pending_max, "test", batch=batch)


def test_a_batch_runs_on_one_worker_in_order_and_goes_when_full_or_needed():
    log = Log()

    def work(name: str):
        def run():
            log.add("work", name, threading.current_thread().name)
            return name

        return run

    p: Pipeline[str] = Pipeline(workers=4, pending_max=16, name="test", batch=3)
    try:
        for name in "abc":  # a full batch: sent at once
            p.submit(work(name), log.finish(name), log.drop(name))
        p.submit(work("d"), log.finish("d"), log.drop("d"))
        p.submit(None, log.finish("no work"), log.drop("no work"))
        # "d" waits for two more; the job without work waits for "d".
        assert [e[0] for e in log.of("finish") if e[0] in ("d", "no work")] == []
        p.drain()  # sends the partial batch
    finally:
        p.close()
    works = log.of("work")
    assert [w[0] for w in works] == ["a", "b", "c", "d"]
    assert works[0][1] == works[1][1] == works[2][1]  # one worker for the batch
    assert [e[:3] for e in log.of("finish")] == [
        *[(n, n, None) for n in "abcd"],
        ("no work", None, None),
    ]


def test_a_failed_work_in_a_batch_fails_only_its_own_job():
    log = Log()
    error = OSError(errno.EIO, "Input/output error")

    def fails():
        raise error

    p: Pipeline[str] = Pipeline(workers=1, pending_max=8, name="test", batch=3)
    try:
        p.submit(lambda: "one", log.finish("1"), log.drop("1"))
        p.submit(fails, log.finish("2"), log.drop("2"))
        p.submit(lambda: "three", log.finish("3"), log.drop("3"))
        p.drain()
    finally:
        p.close()
    assert [e[:3] for e in log.of("finish")] == [
        ("1", "one", None),
        ("2", None, error),
        ("3", "three", None),
    ]


def test_close_drops_the_jobs_of_a_batch_never_sent():
    log = Log()
    p: Pipeline[str] = Pipeline(workers=1, pending_max=8, name="test", batch=4)
    p.submit(lambda: log.add("work") or "x", log.finish("1"), log.drop("1"))
    p.submit(None, log.finish("2"), log.drop("2"))
    p.close()
    assert log.events == [("drop", "1", None), ("drop", "2", None)]


def test_finished_and_dropped_jobs_leave_no_garbage_cycles():
    # A job held its batch and the batch its jobs: a reference cycle that
    # kept every job's callables (and what they hold: the engine's apply,
    # its file specs) until a full collection. One run of bench/fanout.py
    # --sizes 200 left 180,000 objects to it in a swarm of 100 identities.
    finished: list[int | None] = []
    with garbage_kept() as found:
        pipeline: Pipeline[int] = Pipeline(workers=2, pending_max=8, name="t", batch=3)
        try:
            for i in range(10):
                pipeline.submit(lambda i=i: i, lambda r, _e: finished.append(r), lambda _r: None)
            pipeline.drain()
            for i in range(4):  # dropped by close(), the last batch never sent
                pipeline.submit(lambda i=i: i, lambda r, _e: finished.append(r), lambda _r: None)
        finally:
            pipeline.close()
        del pipeline
        garbage = found()
    assert finished == list(range(10))
    assert not [o for o in garbage if type(o).__name__ in ("_Job", "_Batch")]
