"""Benchmark the master's queue of bytes for a CLI that reads slower than
results come (master/control.py SendQueue), against the bytearray it
replaced, on the master's heap settings (common/memory.py).

    .venv/bin/python bench/sendqueue.py [--messages 4000] [--size 122000]
        [--read 200000] [--every 3]

Queues --messages frames of --size bytes (a files create of T100 sends
about 122 KB per host to the CLI that waits), and after every --every-th
takes --read bytes from the front, as a slow reader would: the queue grows
by about a third of what is queued. Prints, for each, the longest single
queuing (a call that holds the master's loop), the total time, and the
bytes left queued. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time
from collections.abc import Callable

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from safcm.common.memory import map_large_blocks
from safcm.master.control import SEND_CHUNKS, SendQueue


class OldQueue:
    """The bytearray the control socket queued in before SendQueue."""

    def __init__(self) -> None:
        self.out = bytearray()

    def put(self, data: bytes) -> None:
        self.out += data

    def take(self, count: int) -> int:
        taken = len(self.out[:count])
        del self.out[:count]
        return taken

    def __len__(self) -> int:
        return len(self.out)


class NewQueue:
    def __init__(self) -> None:
        self.queue = SendQueue()

    def put(self, data: bytes) -> None:
        self.queue.put(data)

    def take(self, count: int) -> int:
        if not self.queue:
            return 0
        offered = sum(len(view) for view in self.queue.front(SEND_CHUNKS))
        taken = min(count, offered)
        self.queue.sent(taken)
        return taken

    def __len__(self) -> int:
        return len(self.queue)


def measure(make: Callable[[], OldQueue | NewQueue], args: argparse.Namespace) -> str:
    queue = make()
    frame = b"x" * args.size
    longest = 0.0
    started = time.perf_counter()
    for i in range(args.messages):
        before = time.perf_counter()
        queue.put(frame)
        longest = max(longest, time.perf_counter() - before)
        if i % args.every == 0:
            queue.take(args.read)
    total = time.perf_counter() - started
    return (
        f"longest queuing {longest * 1000:7.2f} ms, total {total:6.2f} s, "
        f"{len(queue) / 2**20:6.1f} MiB left queued"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=4000)
    parser.add_argument("--size", type=int, default=122_000)
    parser.add_argument("--read", type=int, default=200_000)
    parser.add_argument("--every", type=int, default=3)
    args = parser.parse_args()
    map_large_blocks()  # as the master daemon runs
    print(f"{args.messages} frames of {args.size} B; {args.read} B read after every {args.every}")
    print(f"bytearray (before): {measure(OldQueue, args)}")
    print(f"SendQueue (now):    {measure(NewQueue, args)}")


if __name__ == "__main__":
    main()
