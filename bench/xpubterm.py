"""What libzmq costs the master when subscribers go: an XPUB with XPUB_MANUAL
(as master/publish.py opens it), N subscribers each on a topic of its own,
then half of them disconnecting at once (a network blip, a swarm of
reconnecting minions). Each ended connection's subscriptions are removed
from libzmq's subscription trie by a walk of the whole trie, inside the
XPUB's next poll, recv or send: on the master's loop.

    .venv/bin/python bench/xpubterm.py                 # 1000 subscribers, 3 runs each
    .venv/bin/python bench/xpubterm.py --subscribers 500 --repeat 5
    .venv/bin/python bench/xpubterm.py --subscribers 5000 --repeat 1 --styles ours,dense

Prints, per run (a fresh process each) and topic style, the CPU time of the
XPUB's thread in the seconds after the disconnection (RUSAGE_THREAD), and
the longest single poll or recv. "random": each subscriber subscribes to 16
bytes of SHA-256 of its own, as minions did before master/publish.py's
Topics; "dense": to 8 decimal digits of a sequence number, which share their
prefixes; "ours": each subscribes to everything and the XPUB applies a
4-byte sequence number of its own instead (master/publish.py Topics), so
libzmq's trie of the subscriptions as sent is a single node. Only the
constants come from safcm; everything is on 127.0.0.1 and bounded by
--subscribers. The subscribers live in child processes of PER_CHILD each
(one process holds about 1,000 ZeroMQ sockets here); half of them close at
once when their children are told to.
"""

from __future__ import annotations

import argparse
import hashlib
import pathlib
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import zmq

from safcm.common.protocol import SUBSCRIPTION
from safcm.master import publish

# Seconds the XPUB is read after the disconnection, at least, and then until
# no poll has taken longer than it waits for this long: libzmq ends a pipe
# in several steps between its threads, each recv handles what has arrived.
DRAIN_SECONDS = 3.0
QUIET_SECONDS = 1.0
# Milliseconds one poll waits while draining.
POLL_MS = 50
# Seconds to wait for every subscription to arrive.
SUBSCRIBE_TIMEOUT = 60.0
# Subscribers one child process holds (its descriptors stay well inside the
# open-file limit), and seconds a child gets to close them and exit.
PER_CHILD = 500
# Connections the kernel queues for the XPUB to accept: a child's share at once.
LISTEN_BACKLOG = 1024
CHILD_TIMEOUT = 30.0
TOPIC_BYTES = 16


def topic(index: int, style: str) -> bytes:
    if style == "ours":
        return (index + 1).to_bytes(publish.TOPIC_BYTES, "big")
    if style == "dense":
        return b"%08d" % index
    return hashlib.sha256(b"%d" % index).digest()[:TOPIC_BYTES]


def hold(address: str, style: str, first: int, count: int) -> None:
    """In a child process: `count` subscribers, the first numbered `first`,
    until a line (or the end) on stdin; then they close at once."""
    ctx = zmq.Context()
    ctx.setsockopt(zmq.MAX_SOCKETS, count + 16)
    subs = []
    for i in range(first, first + count):
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.connect(address)
        sub.setsockopt(zmq.SUBSCRIBE, SUBSCRIPTION if style == "ours" else topic(i, style))
        subs.append(sub)
    print("ready", flush=True)
    sys.stdin.readline()
    for sub in subs:
        sub.close(0)
    ctx.term()


def measure(subscribers: int, style: str) -> tuple[float, float]:
    """(CPU seconds of this thread after half disconnected, longest poll or
    recv in seconds)."""
    ctx = zmq.Context()
    xpub = ctx.socket(zmq.XPUB)
    xpub.setsockopt(zmq.XPUB_MANUAL, 1)
    xpub.setsockopt(zmq.BACKLOG, LISTEN_BACKLOG)
    xpub.bind("tcp://127.0.0.1:0")
    address = xpub.getsockopt(zmq.LAST_ENDPOINT).decode()
    children: list[subprocess.Popen[str]] = []
    try:
        for first in range(0, subscribers, PER_CHILD):
            count = min(PER_CHILD, subscribers - first)
            argv = [sys.executable, __file__, "--hold", address, style, str(first), str(count)]
            children.append(
                subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            )
        applied = 0
        deadline = time.monotonic() + SUBSCRIBE_TIMEOUT
        while applied < subscribers:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{applied} of {subscribers} subscriptions arrived")
            xpub.poll(POLL_MS)
            while xpub.poll(0):
                event = xpub.recv()
                if event[:1] == b"\x01":
                    # As the master applies it: its own number for "ours".
                    given = topic(applied, style) if style == "ours" else event[1:]
                    xpub.setsockopt(zmq.SUBSCRIBE, given)
                    applied += 1
        closing = 0
        for child in children:  # half of the subscribers, a child's share at a time
            if closing >= subscribers // 2:
                break
            assert child.stdin is not None
            child.stdin.write("close\n")
            child.stdin.flush()
            closing += PER_CHILD
        longest = 0.0
        began = time.thread_time()
        end = time.monotonic() + DRAIN_SECONDS
        while time.monotonic() < end:
            wall = time.monotonic()
            xpub.poll(POLL_MS)
            try:
                while True:
                    xpub.recv(zmq.NOBLOCK)
            except zmq.Again:
                pass
            # A poll that waited for nothing counts its wait too: an upper bound.
            held = time.monotonic() - wall
            longest = max(longest, held)
            if held > 2 * POLL_MS / 1000:  # still at work: read on
                end = max(end, time.monotonic() + QUIET_SECONDS)
        return time.thread_time() - began, longest
    finally:
        for child in children:
            if child.stdin is not None:
                child.stdin.close()
        for child in children:
            try:
                child.wait(CHILD_TIMEOUT)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        xpub.close(0)
        ctx.term()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3, help="runs per style (default: 3)")
    parser.add_argument("--one", metavar="STYLE", help=argparse.SUPPRESS)
    parser.add_argument("--hold", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument(
        "--styles", default="random,dense,ours", help="topic styles, comma-separated"
    )
    args = parser.parse_args()
    if args.hold:
        address, style, first, count = args.hold
        hold(address, style, int(first), int(count))
        return
    if args.one:
        cpu, longest = measure(args.subscribers, args.one)
        print(f"{cpu} {longest}")
        return
    print(f"XPUB_MANUAL, {args.subscribers} subscribers, half of them gone at once")
    for style in args.styles.split(","):
        argv = [sys.executable, __file__, "--one", style, "--subscribers", str(args.subscribers)]
        for run in range(1, args.repeat + 1):
            out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
            cpu, longest = (float(x) for x in out.split())
            print(
                f"  {style:>6} topics, run {run}: CPU {cpu * 1000:8.1f} ms, "
                f"longest poll or recv {longest * 1000:8.1f} ms"
            )


if __name__ == "__main__":
    main()
