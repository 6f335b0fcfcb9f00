"""Rolling batches for `run --batch N|N% [--batch-fail K]`: which hosts start
when, and when a rollout stops. Pure: no time, no I/O; the runner asks it.

A rollout splits the targeted hosts, in their order, into batches of `size`.
The first batch starts at once; each further batch starts only when every
host of the one before has answered (a result, or "no response" at its
deadline), as Ansible's `serial` does, so a bad change reaches at most one
batch before anyone can look. With a failure limit K, the rollout stops once
K hosts have failed or not responded; the hosts of batches that never started
are reported as not run. Hosts already started always finish.

    Rollout(hosts, size, fail_limit)
    next_batch() -> hosts to start now ([] while a batch is running or when done)
    answered(host, ok) -> record one host's outcome
    halt() -> start no further batch (the operator's brake)
    finished / stopped / halted / not_run
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from safcm.common.errors import UsageError
from safcm.common.wire import MAX_BATCH_NUMBER


@dataclass(frozen=True)
class BatchSize:
    """A batch size as given: a number of hosts, or a percentage of the targets."""

    value: int
    percent: bool

    @classmethod
    def parse(cls, text: str) -> BatchSize:
        """`N` (hosts) or `N%` (of the targeted hosts, rounded up)."""
        percent = text.endswith("%")
        digits = text[:-1] if percent else text
        if not _is_number(digits) or not 1 <= int(digits) <= (100 if percent else MAX_BATCH_NUMBER):
            raise UsageError(
                f"--batch {text!r}: give a number of hosts (5) "
                "or a percentage from 1% to 100% (10%)"
            )
        return cls(int(digits), percent)

    def hosts(self, targeted: int) -> int:
        """How many hosts one batch has, of `targeted`: at least one."""
        if self.percent:
            return max(1, math.ceil(targeted * self.value / 100))
        return self.value

    def __str__(self) -> str:
        return f"{self.value}{'%' if self.percent else ''}"


def parse_fail_limit(text: str) -> int:
    """`--batch-fail K`: stop the rollout after K failed hosts (K >= 1)."""
    if not _is_number(text) or not 1 <= int(text) <= MAX_BATCH_NUMBER:
        raise UsageError(f"--batch-fail {text!r}: give a number of failed hosts, at least 1")
    return int(text)


def _is_number(text: str) -> bool:
    """Plain ASCII digits: str.isdigit() also takes "²", which int() refuses."""
    return text.isascii() and text.isdigit()


class Rollout:
    """The batches of one run. Hosts are strings; order is kept."""

    def __init__(self, hosts: list[str], size: int, fail_limit: int | None = None) -> None:
        if size < 1:
            raise ValueError(f"batch size must be at least 1, got {size}")
        self.batches = [hosts[i : i + size] for i in range(0, len(hosts), size)]
        self.fail_limit = fail_limit
        self.failed = 0
        self.started = 0  # batches started
        self.waiting: set[str] = set()  # hosts of the running batch without an answer
        self.stopped = False  # the failure limit was reached
        self.halted = False  # halt(): no further batch, whatever the failures

    def next_batch(self) -> list[str]:
        """The hosts to start now: the next batch once the running one has
        fully answered, else nothing. Nothing, too, after a stop."""
        if self.waiting or self.stopped or self.halted or self.started == len(self.batches):
            return []
        batch = self.batches[self.started]
        self.started += 1
        self.waiting = set(batch)
        return list(batch)

    def answered(self, host: str, ok: bool) -> None:
        """`host` has a result (`ok`: it succeeded) or was recorded as no
        response (not ok). Answers of hosts not waited for are ignored, so a
        repeated or late answer cannot count twice."""
        if host not in self.waiting:
            return
        self.waiting.discard(host)
        if not ok:
            self.failed += 1
            if self.fail_limit is not None and self.failed >= self.fail_limit:
                self.stopped = True

    def halt(self) -> None:
        """Start no further batch (the operator's brake: every CLI watching the
        run left). The running batch completes; the rest are not run."""
        self.halted = True

    @property
    def finished(self) -> bool:
        """No host runs and none will start."""
        return not self.waiting and (
            self.stopped or self.halted or self.started == len(self.batches)
        )

    @property
    def not_run(self) -> list[str]:
        """Hosts of batches that have not started (all of them stay so after a
        stop or a halt)."""
        return [h for batch in self.batches[self.started :] for h in batch]
