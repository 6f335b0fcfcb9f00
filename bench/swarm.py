"""Many minion identities in one process, like Salt's minionswarm (for bench/fanout.py).

    /work/venv/bin/python bench/swarm.py SPEC.json

SPEC.json names the master's address and ports, the heartbeat interval, the
number of worker threads, a status file, and the minions, each with its own
id, state directory (keys, seen-jid store, spool) and root directory:

    {"master": "127.0.0.1", "publish_port": 4505, "return_port": 4506,
     "heartbeat_interval": 2.0, "workers": 4, "log_level": "info",
     "status": "/tmp/x/swarm-0.status", "fsync_workers": 8, "nice": 10,
     "minions": [{"id": "m0002", "state_dir": "...", "root": "..."}, ...]}

Every identity is a real minion/daemon.py Minion with its own keys and
sockets; they share one event loop, one ZeroMQ context and one thread pool.
That is the point of Minion taking those from its caller: hundreds of hosts
on one machine without hundreds of interpreters. "fsync_workers" (optional)
sets minion/fileops.py's FSYNC_WORKERS for every identity of the process:
a real host has its own disk and cores for its 8, here every identity
that applies at once shares the machine's (--fsync-workers in fanout.py). One job at a time per
identity still holds (each Minion keeps its own queue); the pool only bounds
how many identities apply at once. "nice" (optional) lowers the process's
priority by that much (nice(2)): the identities stand in for hosts with
CPUs of their own, which never take the master's.

Once every identity has started, the status file is written (atomically):
the process's RSS after its imports and before the first Minion, and the
identity count, so the caller can tell the cost of one identity from the
interpreter's. The swarm runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import heapq
import json
import logging
import os
import pathlib
import resource
import select
import signal
import sys
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import zmq

from safcm.common import log as safcm_log
from safcm.common.loop import MAX_POLL_SECONDS, Loop
from safcm.minion import fileops
from safcm.minion.daemon import Minion
from safcm.minion.settings import MinionSettings

log = logging.getLogger("safcm-swarm")


# epoll events that mean "read it"; ZeroMQ's event flags as plain ints (its
# enum.IntFlag members make `&` slow).
_READABLE = select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR
_POLLIN = int(zmq.POLLIN)
_POLLOUT = int(zmq.POLLOUT)


class SwarmSocket(zmq.Socket):
    """A socket that tells its SwarmLoop it was sent on (see SwarmLoop)."""

    def send(self, data: Any, flags: int = 0, copy: bool = True, track: bool = False, **kw: Any):
        try:
            return super().send(data, flags, copy=copy, track=track, **kw)
        finally:
            loop = self.context.loop
            if loop is not None:
                loop.touched(self)


class SwarmContext(zmq.Context):
    """A context whose sockets report their sends to `loop` (a SwarmLoop)."""

    _socket_class = SwarmSocket
    loop: SwarmLoop | None = None


class SwarmLoop(Loop):
    """The Loop for thousands of sockets in one process.

    zmq.Poller asks every socket for its state on every wake-up (zmq_poll: a
    getsockopt, and in libzmq a poll of the socket's mailbox, per socket),
    so with 2,000 identities (4,000 sockets) each turn of the loop costs
    milliseconds and the swarm, not the master, sets the pace. Here each
    ZeroMQ socket's ZMQ_FD sits in one epoll instead, and a socket is asked
    for its state (ZMQ_EVENTS) only when its descriptor says something
    changed, when a callback of it ran, or when it was sent on: the FD is a
    notification, and any operation on the socket may consume it, so a
    socket that was used is looked at again on the next turn (`touched`).
    Plain descriptors (the wake-up pipe) are watched by epoll directly.
    """

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._by_fd: dict[int, Any] = {}  # epoll's descriptor -> the socket or descriptor
        self._fd_of: dict[Any, int] = {}
        self._check: set[zmq.Socket] = set()  # ZeroMQ sockets to ask for their state
        super().__init__()

    def touched(self, sock: zmq.Socket) -> None:
        self._check.add(sock)

    def _register(self, key: Any) -> None:
        reading, writing = key in self._readers, key in self._writers
        fd = self._fd_of.get(key)
        if isinstance(key, zmq.Socket):
            if reading or writing:
                if fd is None:
                    fd = key.get(zmq.FD)
                    self._epoll.register(fd, select.EPOLLIN)
                    self._by_fd[fd], self._fd_of[key] = key, fd
                self._check.add(key)  # it may hold messages already
                return
            self._check.discard(key)
        elif reading or writing:
            events = (select.EPOLLIN if reading else 0) | (select.EPOLLOUT if writing else 0)
            if fd is None:
                self._epoll.register(key, events)
                self._by_fd[key], self._fd_of[key] = key, key
            else:
                self._epoll.modify(key, events)
            return
        if fd is not None:
            with contextlib.suppress(OSError):  # closed already: epoll dropped it
                self._epoll.unregister(fd)
            del self._by_fd[fd], self._fd_of[key]

    def run_once(self, max_wait: float = MAX_POLL_SECONDS) -> None:
        now = self.clock()
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
        wait = 0.0 if self._check else max_wait
        if self._timers:
            wait = min(wait, max(0.0, self._timers[0][0] - now))
        for fd, events in self._epoll.poll(wait):
            key = self._by_fd.get(fd)
            if isinstance(key, zmq.Socket):
                self._check.add(key)
            elif key is not None:
                if events & _READABLE and key in self._readers:
                    self._call(self._readers[key])
                if events & select.EPOLLOUT and key in self._writers:
                    self._call(self._writers[key])
        checks, self._check = self._check, set()
        for sock in checks:
            self._serve(sock)
        now = self.clock()
        while self._timers and self._timers[0][0] <= now:
            _, _, timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                self._call(timer.callback)

    def _serve(self, sock: zmq.Socket) -> None:
        """Call what waits on `sock` if its state asks for it; look again on
        the next turn if it still does (a callback that read one message)."""
        for _ in range(2):
            if sock.closed or sock not in self._fd_of:
                return
            events = sock.get(zmq.EVENTS)
            reader = self._readers.get(sock) if events & _POLLIN else None
            writer = self._writers.get(sock) if events & _POLLOUT else None
            if reader is None and writer is None:
                return
            if reader is not None:
                self._call(reader)
            if writer is not None and sock in self._writers:
                self._call(writer)
        self._check.add(sock)

    def close(self) -> None:
        super().close()
        self._epoll.close()


# ZeroMQ sockets each identity may hold at once: SUB for jobs, DEALER for the
# rest, the monitor of each (a PAIR at each end) and, while it reconnects,
# the DEALER that asks the key port. Too few, and a minion's socket fails
# with EMFILE as if the process were out of descriptors.
SOCKETS_PER_MINION = 7
# Sockets the context may hold beyond the minions' (ZeroMQ's own, slack); the
# context's default maximum, 1023, would stop a swarm at about 500 identities.
SOCKET_SLACK = 64


def rss_kib(field: str = "VmRSS", pid: int | str = "self") -> int:
    """A memory figure of a process from /proc/<pid>/status, in KiB (VmRSS, VmHWM).

    OSError if the process is gone."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise LookupError(f"no {field} in /proc/{pid}/status")


# The interpreter measured_argv() puts before a command: it runs the command
# as its child and writes that child's CPU seconds and peak RSS (KiB) to the
# file named first, then exits with its exit code.
_MEASURE = """\
import os, signal, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(f"{usage.ru_utime + usage.ru_stime} {usage.ru_maxrss}")
if os.WIFSIGNALED(status):
    signal.signal(os.WTERMSIG(status), signal.SIG_DFL)
    os.kill(os.getpid(), os.WTERMSIG(status))
sys.exit(os.WEXITSTATUS(status))
"""


def measured_argv(argv: list[str], report: str) -> list[str]:
    """`argv`, run by a small interpreter that writes to the file `report`
    the CPU seconds and peak RSS of that command alone (read_measured()).

    Not simply wait4() on the command: Linux carries the peak RSS of the
    process a command is forked from across the exec into the command's
    ru_maxrss, and a benchmark's process can be far larger than the command
    it measures (it has parsed the last run's JSON). The interpreter between
    them is small, so the peak is the command's own. Kill its process group
    (start it with start_new_session) to stop the command too."""
    return [sys.executable, "-c", _MEASURE, report, *argv]


def read_measured(report: str) -> tuple[float, int]:
    """What measured_argv() wrote: (CPU seconds, peak RSS in KiB)."""
    with open(report) as f:
        cpu, peak = f.read().split()
    return float(cpu), int(peak)


def raise_fd_limit() -> int:
    """Lift the soft open-file limit to the hard one: each identity holds about
    twelve descriptors (two TCP connections, six ZeroMQ mailboxes, SQLite's
    database, WAL and shm files, the spool directory), fourteen while it
    reconnects (bench/fanout.py MAX_IDENTITIES_PER_SWARM)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def write_json(path: str, document: dict) -> None:
    """Write a JSON file whole or not at all: a reader never sees half of it."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(document, f)
    os.replace(tmp, path)


def main(spec_path: str) -> int:
    with open(spec_path) as f:
        spec = json.load(f)
    safcm_log.setup(spec.get("log_level", "info"))
    if spec.get("fsync_workers") is not None:
        fileops.FSYNC_WORKERS = spec["fsync_workers"]  # read by each apply when it starts
    fd_limit = raise_fd_limit()
    if spec.get("nice"):
        os.nice(spec["nice"])
    baseline = rss_kib()

    ctx = SwarmContext()
    ctx.set(zmq.MAX_SOCKETS, SOCKETS_PER_MINION * len(spec["minions"]) + SOCKET_SLACK)
    loop = ctx.loop = SwarmLoop()
    loop.stop_on_signals(signal.SIGTERM, signal.SIGINT)
    worker = concurrent.futures.ThreadPoolExecutor(
        max_workers=spec["workers"], thread_name_prefix="apply"
    )
    minions: list[Minion] = []
    try:
        for m in spec["minions"]:
            os.makedirs(m["root"], exist_ok=True)
            settings = MinionSettings(
                id=m["id"],
                master=spec["master"],
                publish_port=spec["publish_port"],
                return_port=spec["return_port"],
                key_port=spec["key_port"],
                master_fingerprint=spec["master_fingerprint"],
                state_dir=m["state_dir"],
                root=m["root"],
                heartbeat_interval=spec["heartbeat_interval"],
                log_level=spec.get("log_level", "info"),
            )
            minion = Minion(settings, loop=loop, ctx=ctx, worker=worker)
            minions.append(minion)
            minion.start()
        log.info(
            "swarm of %d minions started (fd limit %d, %d KiB before the first)",
            len(minions),
            fd_limit,
            baseline,
        )
        write_json(
            spec["status"],
            {"pid": os.getpid(), "minions": len(minions), "baseline_rss_kib": baseline},
        )
        loop.run()
    finally:
        log.info("swarm stopping")
        worker.shutdown(wait=True)
        loop.run_once(0)  # results of jobs that just finished reach the spool callbacks
        for minion in minions:
            minion.close()
        loop.close()
        ctx.term()
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1]))
