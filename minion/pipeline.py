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

Consecutive jobs' work goes to a worker in batches of up to `batch` (run
there one after another), so a handoff between threads, which costs about
as much as a small file's whole write on a busy machine, is paid once per
batch, not once per file; the fsyncs in flight at once are then the batches
on their way, up to the number of workers.

Nothing here calls the operating system on a managed path; the callables
come from minion/fileops.py, which is the only code that does.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(slots=True)
class _Job(Generic[T]):
    # Called in order with what the work returned (None without work) and
    # what it raised (None if it returned).
    finish: Callable[[T | None, BaseException | None], None]
    # Called instead of `finish` when the pipeline is closed before the job
    # was finished (the apply is ending on an error), once its work (if it
    # started) is done, with what the work returned (None if it never ran
    # or raised): release what the job holds.
    drop: Callable[[T | None], None]
    batch: _Batch[T] | None  # the batch its work runs in; None for a job without work
    # Set on the worker by the work, before the batch's future resolves.
    result: T | None = None
    error: BaseException | None = None


@dataclass(slots=True)
class _Batch(Generic[T]):
    """The work of consecutive jobs, run in order on one worker."""

    jobs: list[_Job[T]] = field(default_factory=list)
    works: list[Callable[[], T]] = field(default_factory=list)
    future: Future[None] | None = None  # None until the batch goes to a worker
    # Set by the worker once every work has run: a plain flag, which the
    # main thread reads after each submit without taking the future's lock.
    ran: bool = False

    def run(self) -> None:
        for job, work in zip(self.jobs, self.works, strict=True):
            try:
                job.result = work()
            except BaseException as e:  # handed to the job's finish
                job.error = e
        self.ran = True


class Pipeline(Generic[T]):
    """Jobs whose work runs concurrently and whose finishing runs in submission order.

    At most `pending_max` jobs are held at once: submit() finishes the
    oldest (waiting for its work) before it takes one more. That bounds
    what the jobs hold (the engine: one temporary file each). The work of
    up to `batch` consecutive jobs runs on one worker, in order; a batch
    goes to the workers when it is full, or when a job in it must be
    finished.

    What a job holds (the engine: a temporary file) is released by its
    `finish`, whatever the work did, or by its `drop`.
    Whatever `finish` raises propagates from the call that finished the job
    (submit or drain), so `finish` must release the job's resources itself.
    close() must be called in any case: it waits for the work still
    running, drops the unfinished jobs and stops the threads.
    """

    def __init__(self, workers: int, pending_max: int, name: str, batch: int = 1) -> None:
        if workers < 1 or pending_max < 1 or batch < 1:
            raise ValueError("a pipeline needs at least one worker, one pending job and batches")
        self._workers = workers
        self._pending_max = pending_max
        self._batch = batch
        self._name = name
        self._pool: ThreadPoolExecutor | None = None  # started by the first batch
        self._jobs: collections.deque[_Job[T]] = collections.deque()
        self._open: _Batch[T] | None = None  # the batch being filled

    def __len__(self) -> int:
        """Jobs submitted and not yet finished."""
        return len(self._jobs)

    def submit(
        self,
        work: Callable[[], T] | None,
        finish: Callable[[T | None, BaseException | None], None],
        drop: Callable[[T | None], None],
    ) -> None:
        """Queue a job; first finish the oldest while the pipeline is full,
        and afterwards every leading job whose work is already done."""
        self.make_room()
        batch = None
        if work is not None:
            if self._open is None:
                self._open = _Batch()
            batch = self._open
        job = _Job(finish, drop, batch)
        self._jobs.append(job)
        if batch is not None and work is not None:
            batch.jobs.append(job)
            batch.works.append(work)
            if len(batch.works) >= self._batch:
                self._send()
        while self._jobs and _done(self._jobs[0]):
            self._finish_oldest()

    def make_room(self) -> None:
        """Finish the oldest jobs until one more fits: call it before acquiring
        what the next job will hold, so that no more than `pending_max` are
        held at once."""
        while len(self._jobs) >= self._pending_max:
            self._finish_oldest()

    def drain(self) -> None:
        """Finish every job, in order, waiting for the work of each."""
        while self._jobs:
            self._finish_oldest()

    def _send(self) -> None:
        """Hand the batch being filled to the workers."""
        batch, self._open = self._open, None
        if batch is None:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix=self._name)
        batch.future = self._pool.submit(batch.run)

    def _finish_oldest(self) -> None:
        job = self._jobs.popleft()
        # Unlinked from its batch (which lists its jobs) as it leaves: a job
        # and its batch would otherwise be a reference cycle, which only a
        # full garbage collection frees, with all that the jobs' callables
        # hold (one run of bench/fanout.py --sizes 200: 180,000 objects in
        # a swarm of 100 identities).
        batch, job.batch = job.batch, None
        if batch is not None:
            if batch.future is None:
                self._send()  # it is the batch being filled
            _wait(batch)
        job.finish(job.result, job.error)

    def close(self) -> None:
        """Wait for the work still running, drop the unfinished jobs, stop the threads."""
        try:
            self._open = None  # its work never started: it holds nothing
            while self._jobs:
                job = self._jobs.popleft()
                batch, job.batch = job.batch, None  # no cycle (_finish_oldest)
                # Wait for the work: never release what a worker still uses.
                if batch is not None and batch.future is not None:
                    _wait(batch)
                job.drop(job.result)
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None


def _wait(batch: _Batch[T]) -> None:
    """Wait until the batch's work has run (Batch.run raises nothing of its own)."""
    if batch.future is None:
        raise RuntimeError("waited for a batch that never went to a worker")
    batch.future.result()


def _done(job: _Job[T]) -> bool:
    return job.batch is None or job.batch.ran
