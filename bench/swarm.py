"""Many minion identities in one process, like Salt's minionswarm (for bench/fanout.py).

    /work/venv/bin/python bench/swarm.py SPEC.json

SPEC.json names the master's address and ports, the heartbeat interval, the
number of worker threads, a status file, and the minions, each with its own
id, state directory (keys, seen-jid store, spool) and root directory:

    {"master": "127.0.0.1", "publish_port": 4505, "return_port": 4506,
     "heartbeat_interval": 2.0, "workers": 4, "log_level": "info",
     "status": "/tmp/x/swarm-0.status", "fsync_workers": 8,
     "minions": [{"id": "m0002", "state_dir": "...", "root": "..."}, ...]}

Every identity is a real minion/daemon.py Minion with its own keys and
sockets; they share one event loop, one ZeroMQ context and one thread pool.
That is the point of Minion taking those from its caller: hundreds of hosts
on one machine without hundreds of interpreters. "fsync_workers" (optional)
sets minion/fileops.py's FSYNC_WORKERS for every identity of the process:
a real host has its own disk and cores for its 8, here every identity
that applies at once shares the machine's (--fsync-workers in fanout.py). One job at a time per
identity still holds (each Minion keeps its own queue); the pool only bounds
how many identities apply at once.

Once every identity has started, the status file is written (atomically):
the process's RSS after its imports and before the first Minion, and the
identity count, so the caller can tell the cost of one identity from the
interpreter's. The swarm runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import pathlib
import resource
import signal
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import zmq

from safcm.common import log as safcm_log
from safcm.common.loop import Loop
from safcm.minion import fileops
from safcm.minion.daemon import Minion
from safcm.minion.settings import MinionSettings

log = logging.getLogger("safcm-swarm")

# ZeroMQ sockets each identity opens: SUB for jobs, DEALER for the rest.
SOCKETS_PER_MINION = 2
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


def raise_fd_limit() -> int:
    """Lift the soft open-file limit to the hard one: each identity holds about
    eight descriptors (two TCP connections, two ZeroMQ mailboxes, SQLite's
    database, WAL and shm files, the spool directory)."""
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
    baseline = rss_kib()

    ctx = zmq.Context()
    ctx.set(zmq.MAX_SOCKETS, SOCKETS_PER_MINION * len(spec["minions"]) + SOCKET_SLACK)
    loop = Loop()
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
