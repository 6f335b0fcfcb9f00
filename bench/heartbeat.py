"""Benchmark heartbeats: the master's CPU time per heartbeat it answers.

    /work/venv/bin/python bench/heartbeat.py [--minions 200] [--interval 0.2]
        [--window 10] [--rounds 3] [--keep]

A real master daemon (master/sandbox.py: a subprocess on 127.0.0.1, log
level info, auto_accept so the fleet needs no `keys accept`), and --minions
real minion identities in this process (minion/daemon.py Minion objects
sharing one loop (bench/swarm.py's SwarmLoop), ZeroMQ context and thread
pool, as bench/swarm.py runs them), each heartbeating every --interval
seconds. This process's CPU does not count: only the master's is read,
from /proc/<pid>/stat (user + system, all threads, so libzmq's I/O thread
and its CURVE work are included), and shown by thread.

1. The master's idle load: CPU seconds a second with nothing connected.
2. The fleet starts, enrols (auto-accepted) and connects; the benchmark
   waits until every identity has had a heartbeat answered.
3. --rounds windows of --window seconds each: the master's CPU time over the
   window, divided by the heartbeats the fleet sent in it (the sum of the
   identities' heartbeat sequence numbers, which grow by one per heartbeat),
   is the figure. The idle load is not subtracted; it is printed beside.
   A round in which some identity lost its master (it reconnects, and
   enrols again, which costs the master a signature each) or whose
   heartbeat count falls short of the rate asked for is flagged: the figure
   then means less.

Run it on a tree before and after a change to the heartbeat path (the
identities and the master are both the tree's own code) to compare.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import logging
import os
import pathlib
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import zmq

from bench.swarm import SOCKET_SLACK, SOCKETS_PER_MINION, SwarmContext, SwarmLoop, raise_fd_limit
from safcm.master.sandbox import Sandbox
from safcm.minion.daemon import Minion
from safcm.minion.settings import MinionSettings

SOURCE_DIR = pathlib.Path(__file__).resolve().parents[1]
REPO = SOURCE_DIR / "configs" / "repo"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")  # units of /proc/<pid>/stat's CPU times, per second
# Seconds the master is watched with nothing connected (its idle load).
IDLE_WINDOW = 2.0
# Seconds the whole fleet gets to enrol and have a heartbeat answered: a
# base plus a share per identity (each enrolment costs the master a
# signature check and a database write).
READY_TIMEOUT_BASE, READY_TIMEOUT_PER_MINION = 30.0, 0.1
# A round counts as full when the fleet sent at least this share of the
# heartbeats its interval asks for (timers fire late when both cores are busy).
FULL_ROUND = 0.9


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process (all its threads) has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        # The command name, field 2, may hold spaces; the fields after it do not.
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime: fields 14, 15


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds so far of each of a process's threads, summed by thread name
    (the loop's "python", libzmq's "ZMQbg/IO/0" and "ZMQbg/Reaper", pools')."""
    threads: dict[str, float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:  # the thread ended meanwhile
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat.rpartition(")")[2].split()
        threads[name] = threads.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return threads


class Reconnects(logging.Handler):
    """Counts the identities' "no reply from the master ... reconnecting"
    lines: a round with any measured enrolments and key replies too."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg.startswith("%s: no reply from the master"):
            self.count += 1


class Fleet:
    """The identities, on one loop in this process."""

    def __init__(self, sb: Sandbox, n: int, interval: float, base: str) -> None:
        self.ctx = SwarmContext()
        self.ctx.set(zmq.MAX_SOCKETS, SOCKETS_PER_MINION * n + SOCKET_SLACK)
        self.loop = self.ctx.loop = SwarmLoop()
        self.worker = concurrent.futures.ThreadPoolExecutor(max_workers=2)
        settings = sb.master.settings
        self.minions: list[Minion] = []
        for i in range(n):
            minion_id = f"m{i:05d}"
            root = os.path.join(base, "roots", minion_id)
            os.makedirs(root)
            ms = MinionSettings(
                id=minion_id,
                master="127.0.0.1",
                publish_port=settings["publish_port"],
                return_port=settings["return_port"],
                key_port=settings["key_port"],
                master_fingerprint=sb.master_fingerprint(),
                state_dir=os.path.join(base, "minions", minion_id),
                root=root,
                heartbeat_interval=interval,
                log_level="warning",
            )
            self.minions.append(Minion(ms, loop=self.loop, ctx=self.ctx, worker=self.worker))

    def start(self) -> None:
        for minion in self.minions:
            minion.start()

    def run_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.loop.run_once(min(0.1, max(0.0, deadline - time.monotonic())))

    def heartbeats(self) -> int:
        """Heartbeats sent so far, by all identities (each is one sequence number)."""
        return sum(m.seq for m in self.minions)

    def answered(self) -> int:
        """Identities that are accepted and heard from the master recently."""
        now = self.loop.clock()
        return sum(1 for m in self.minions if m.accepted and now - m.last_reply < 2 * m.interval)

    def close(self) -> None:
        self.worker.shutdown(wait=True)
        for minion in self.minions:
            minion.close()
        self.loop.close()
        self.ctx.term()


def measure(args: argparse.Namespace) -> int:
    # The identities' own warnings (a first enrol reply that answers an
    # earlier request, say) are not what is measured here.
    logging.basicConfig(level=logging.ERROR)
    reconnects = Reconnects()
    logging.getLogger("safcm-minion").addHandler(reconnects)
    raise_fd_limit()
    base = tempfile.mkdtemp(prefix="safcm-heartbeat-", dir="/tmp")
    sb = Sandbox(base, str(REPO), heartbeat_interval=args.interval, log_level="info")
    sb.configure_master(auto_accept=True)
    fleet: Fleet | None = None
    try:
        sb.start_master()
        pid = sb.master.proc.pid
        before = cpu_seconds(pid)
        time.sleep(IDLE_WINDOW)
        idle = (cpu_seconds(pid) - before) / IDLE_WINDOW

        fleet = Fleet(sb, args.minions, args.interval, base)
        fleet.start()
        started = time.monotonic()
        timeout = READY_TIMEOUT_BASE + READY_TIMEOUT_PER_MINION * args.minions
        while fleet.answered() < args.minions:
            if time.monotonic() - started > timeout:
                print(f"only {fleet.answered()} of {args.minions} identities were answered")
                return 1
            fleet.run_for(0.5)
        print(
            f"{args.minions} identities, heartbeat every {args.interval:g} s "
            f"({args.minions / args.interval:.0f} a second asked); ready in "
            f"{time.monotonic() - started:.1f} s; master idle load {idle * 100:.2f}% of a core"
        )
        fleet.run_for(args.interval * 2)  # past the enrolment's last traffic

        figures = []
        for r in range(1, args.rounds + 1):
            lost0 = reconnects.count
            threads0 = thread_cpu(pid)
            cpu0, beats0, t0 = cpu_seconds(pid), fleet.heartbeats(), time.monotonic()
            fleet.run_for(args.window)
            cpu1, beats1, t1 = cpu_seconds(pid), fleet.heartbeats(), time.monotonic()
            threads1 = thread_cpu(pid)
            beats = beats1 - beats0
            per_beat = (cpu1 - cpu0) / beats * 1e6 if beats else float("nan")
            rate = beats / (t1 - t0)
            flags = []
            if rate < FULL_ROUND * args.minions / args.interval:
                flags.append("fewer heartbeats than asked")
            if reconnects.count > lost0:
                flags.append(f"{reconnects.count - lost0} reconnects")
            if fleet.answered() < args.minions:
                flags.append(f"{args.minions - fleet.answered()} identities unanswered")
            figures.append(per_beat)
            print(
                f"round {r}: {beats} heartbeats in {t1 - t0:.1f} s ({rate:.0f}/s); master "
                f"{cpu1 - cpu0:.3f} CPU s = {(cpu1 - cpu0) / (t1 - t0) * 100:.1f}% of a core; "
                f"{per_beat:.1f} us per heartbeat" + (f"  [{'; '.join(flags)}]" if flags else "")
            )
            if beats:
                shares = ", ".join(
                    f"{name} {(used - threads0.get(name, 0.0)) / beats * 1e6:.1f}"
                    for name, used in sorted(threads1.items())
                    if used > threads0.get(name, 0.0)
                )
                print(f"  us per heartbeat by thread: {shares}")
        print(
            f"master CPU per heartbeat: median {statistics.median(figures):.1f} us "
            f"(min {min(figures):.1f}, max {max(figures):.1f}) over {len(figures)} rounds"
        )
        return 0
    finally:
        if fleet is not None:
            fleet.close()
        sb.close()
        if args.keep:
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minions", type=int, default=200, help="identities (default 200)")
    p.add_argument(
        "--interval", type=float, default=0.2, help="heartbeat interval, seconds (default 0.2)"
    )
    p.add_argument("--window", type=float, default=10.0, help="seconds per round (default 10)")
    p.add_argument("--rounds", type=int, default=3, help="measured rounds (default 3)")
    p.add_argument("--keep", action="store_true", help="keep the directory (logs) at the end")
    args = p.parse_args(argv)
    if args.minions < 1 or args.interval <= 0 or args.window <= 0 or args.rounds < 1:
        p.error("--minions, --interval, --window and --rounds must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    return measure(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
