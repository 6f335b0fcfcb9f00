"""Run the slow part of jobs (an fsync) on a few threads; finish them in order on ours.

The file engine makes a new file version durable before it makes it
visible: write, fsync, then rename. Done one file at a time, every file
waits for its own trip to the disk. With several fsyncs in flight at once
the trips are shared: a journaling filesystem (ext4, xfs) folds the fsyncs
that arrive during one journal commit into the next, and without a journal
the disk takes their writes and cache flushes together.

A Pipeline holds jobs in the order they were submitted. Each job has an
optional `work` callable, run on a bounded pool of worker threads, and a
`finish` callable, run on the submitting thread (never on a worker) with
what `work` returned or raised, only after `work` is done and only after
every earlier job has finished. So the engine renames each file only once
its fsync has returned, and still changes the host in path order.

Nothing here calls the operating system on a managed path; the callables
come from minion/fileops.py, which is the only code that does.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(slots=True)
class _Job(Generic[T]):
    # Resolved when `work` is done; None for a job without work.
    future: Future[T] | None
    # Called in order with what `work` returned (None without work) and
    # what it raised (None if it returned).
    finish: Callable[[T | None, BaseException | None], None]
    # Called instead of `finish`, with what `work` returned, when the
    # pipeline is closed before the job was finished (the apply is ending
    # on an error): release what the work acquired.
    drop: Callable[[T], None]


class Pipeline(Generic[T]):
    """Jobs whose work runs concurrently and whose finishing runs in submission order.

    At most `pending_max` jobs are held at once: submit() finishes the
    oldest (waiting for its work) before it takes one more. That bounds
    what the jobs hold (the engine: one temporary file each).

    A `work` that raises must release what it acquired; one that returns
    hands it to `finish` (or `drop`). Whatever `finish` raises propagates
    from the call that finished the job (submit or drain), so `finish`
    must release the job's resources itself. close() must be called in any
    case: it waits for the work still running, drops what the unfinished
    jobs hold and stops the threads.
    """

    def __init__(self, workers: int, pending_max: int, name: str) -> None:
        if workers < 1 or pending_max < 1:
            raise ValueError("a pipeline needs at least one worker and one pending job")
        self._workers = workers
        self._pending_max = pending_max
        self._name = name
        self._pool: ThreadPoolExecutor | None = None  # started by the first job with work
        self._jobs: collections.deque[_Job[T]] = collections.deque()

    def __len__(self) -> int:
        """Jobs submitted and not yet finished."""
        return len(self._jobs)

    def submit(
        self,
        work: Callable[[], T] | None,
        finish: Callable[[T | None, BaseException | None], None],
        drop: Callable[[T], None],
    ) -> None:
        """Queue a job; first finish the oldest while the pipeline is full,
        and afterwards every leading job whose work is already done."""
        while len(self._jobs) >= self._pending_max:
            self._finish_oldest()
        future = None
        if work is not None:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix=self._name)
            future = self._pool.submit(work)
        self._jobs.append(_Job(future, finish, drop))
        while self._jobs and _done(self._jobs[0]):
            self._finish_oldest()

    def drain(self) -> None:
        """Finish every job, in order, waiting for the work of each."""
        while self._jobs:
            self._finish_oldest()

    def _finish_oldest(self) -> None:
        job = self._jobs.popleft()
        if job.future is None:
            job.finish(None, None)
            return
        error = job.future.exception()  # waits for the work
        job.finish(job.future.result() if error is None else None, error)

    def close(self) -> None:
        """Wait for the work still running, drop the unfinished jobs, stop the threads."""
        try:
            while self._jobs:
                job = self._jobs.popleft()
                # Wait for the work: never release what a worker still uses.
                if job.future is not None and job.future.exception() is None:
                    job.drop(job.future.result())
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None


def _done(job: _Job[T]) -> bool:
    return job.future is None or job.future.done()
