#!/usr/bin/env python3
"""What the (job, host) lifecycle costs the master's loop at fleet scale.

    python bench/lifecycle.py [--hosts N] [--jobs J]

Drives master/lifecycle.py alone (no sockets, no database: its effects do
nothing) through J jobs of N hosts each: start (each host published once),
a re-subscription of every host, a re-publish round, receipts and results
from half the hosts, progress from the last tenth, and the deadlines that
make the silent ones "no response" (those that reported progress later).
Prints the time of each step, per (job, host), and the memory the open
pairs hold (tracemalloc).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import tracemalloc
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from safcm.master.lifecycle import (  # noqa: E402
    REPUBLISH_FIRST,
    Lifecycles,
    State,
)

T0 = 1_000_000.0
TIMEOUT = 60.0


class Counting:
    """Effects that only count what was asked for."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.done: dict[tuple[str, str], State] = {}

    def _count(self, name: str, n: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + n

    def stored_state(self, jid: str, host: str) -> State | None:
        return self.done.get((jid, host))

    def publish(self, jid: str, host: str) -> None:
        self._count("publish")

    def store_receipt(self, jid: str, host: str) -> None:
        self._count("store_receipt")

    def store_no_response(self, pairs: list[tuple[str, str]]) -> None:
        self._count("store_no_response calls")
        self._count("no_response", len(pairs))

    def answered(self, jid: str, host: str, result: dict[str, Any] | None) -> None:
        self._count("answered")

    def progress(self, jid: str, host: str, until: float) -> None:
        self._count("progress")

    def finished(self, jid: str) -> None:
        self._count("finished")

    def wake_at(self, when: float) -> None:
        self._count("wake_at")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hosts", type=int, default=10_000)
    parser.add_argument("--jobs", type=int, default=1)
    args = parser.parse_args()
    hosts = [f"host{i:05d}" for i in range(args.hosts)]
    jids = [f"J{j}" for j in range(args.jobs)]
    fx = Counting()
    lc = Lifecycles(fx)
    pairs = args.hosts * args.jobs

    def step(name: str, fn: Any) -> None:
        start = time.perf_counter()
        fn()
        took = time.perf_counter() - start
        print(f"{name:<34} {took * 1000:9.1f} ms  {took / pairs * 1e6:7.2f} us per (job, host)")

    step("start", lambda: [lc.start(j, hosts, T0 + TIMEOUT, T0) for j in jids])
    step("re-subscription of every host", lambda: [lc.subscribed(h, T0 + 2) for h in hosts])
    # Sent at T0 + 2 by the re-subscription: again REPUBLISH_FIRST * 2 later.
    step("wake: re-publish round", lambda: lc.wake(T0 + 2 + 2 * REPUBLISH_FIRST))
    # Results come from the first half; progress from the last tenth, silent after it.
    half, tenth = hosts[: len(hosts) // 2], hosts[-(len(hosts) // 10) :]
    step("receipts from half", lambda: [lc.receipt(j, h, T0 + 14) for j in jids for h in half])
    step("progress from a tenth", lambda: [lc.progress(j, h, T0 + 50) for j in jids for h in tenth])

    def results() -> None:
        for j in jids:
            for h in half:
                lc.result(j, h, T0 + 55)
                fx.done[(j, h)] = State.DONE
                lc.result_stored(j, h, T0 + 55, {"status": "ok"})

    step("results from that half", results)
    step("wake: deadline, no response", lambda: lc.wake(T0 + TIMEOUT))
    step("wake: extended deadlines", lambda: lc.wake(T0 + TIMEOUT + 60))

    # Memory, in a second machine: tracemalloc slows what it watches.
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    other = Lifecycles(Counting())
    for j in jids:
        other.start(j, hosts, T0 + TIMEOUT, T0)
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    print(f"memory of the open pairs after start: {held / pairs:.0f} bytes per (job, host)")
    print(f"open pairs left: {len(lc)}; effects: {dict(sorted(fx.counts.items()))}")


if __name__ == "__main__":
    main()
