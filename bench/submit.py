"""Benchmark a large job's submission: how long the master's loop is held while
a `files` job for 10,000 accepted hosts is prepared, stored and started.

    .venv/bin/python bench/submit.py [--hosts 10000] [--files 100] [--live 3]
        [--after 10] [--keep] [--max-seconds 600]

In a fresh temporary directory under /tmp:

1. A configuration repository as bench/fanout.py makes it: --hosts hosts,
   m0001..mNNNN, each with the same --files files of about 1 KiB.
2. The key store: --hosts - --live key pairs are generated and written
   straight into the master's database as accepted (no minion runs for
   them: the job waits for them, which is what it does for hosts that are
   down). The --live others are real minion daemons (master/sandbox.py),
   enrolled and accepted through the CLI, so the loop has live traffic
   (heartbeats, receipts, results) while the job is submitted.
3. A probe process asks the master for the jobs of a target no job has
   (JOBS list, limit 1) over the control socket again and again, and notes each round trip:
   while the loop is held, the probe waits. A process, not a thread of
   this one: this one decodes the RUN_STARTED of 10,000 hosts (tens of ms
   of Python), and a thread would wait for that, not for the master. Its
   longest round trip before the submission (idle) and during it are
   printed, the latter also apart until RUN_STARTED (the job prepared and
   stored) and after it (its envelopes sealed and published, the live
   hosts' results read).
4. Timed: a RUN of `files` for '*' (as the CLI sends it), from the request
   to RUN_STARTED (prepare and store), and on until every live host has
   answered. The master's own figures, from its log line "job JID: ...
   compiled in A s, built in B s, stored in C s; the event loop was held at
   most D ms at a time since the request (WHERE)", where it logs one.
5. The master's RSS now and its peak (VmHWM), and its prepare worker's.

Nothing is timed in the tests; this prints figures. The job is not waited
for to its deadline: the master and the minions are stopped at the end and
the directory removed (--keep leaves it).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import select
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from bench.fanout import generate_repo, host_id
from bench.swarm import rss_kib
from safcm.common.crypto import KeyPair
from safcm.common.errors import DaemonError, SafcmError
from safcm.common.protocol import MsgType
from safcm.master.client import ControlClient, raise_for_error
from safcm.master.db import open_db, transaction
from safcm.master.keystore import KeyStore
from safcm.master.sandbox import Sandbox, wait_for

# Seconds the live minions wait between heartbeats: several a second each,
# so the loop has traffic to answer while the job is submitted.
LIVE_HEARTBEAT = 0.2
# Seconds to wait for the live minions to enrol and connect, for the job to
# start, and for the live hosts' results.
CONNECT_TIMEOUT = 60.0
START_TIMEOUT = 300.0
RESULTS_TIMEOUT = 120.0
# The job's --timeout, in seconds: longer than the benchmark, so no host
# becomes "no response" while it is measured.
JOB_TIMEOUT = 3600.0
# The probe lists the jobs of a target no job has: a request that costs the
# loop next to nothing itself (listing the newest job would count its
# 10,000 hosts' states, ~8 ms of the loop's time for the probe's own sake),
# so its round trip is the time the loop made it wait.
PROBE_TARGET = "probe: no such target"
# Seconds the probe waits between two requests, and the idle window before the RUN.
PROBE_INTERVAL = 0.02
IDLE_WINDOW = 2.0
# Seconds the probe goes on after the last live result: the master seals and
# publishes the other hosts' envelopes meanwhile (10,000 x 100 files: about 5 s).
AFTER_SECONDS = 10.0
# Keys written per transaction when the key store is filled.
KEYS_PER_TRANSACTION = 1000
DEFAULT_MAX_SECONDS = 600.0
# Ids are m0001..m10000 (bench/fanout.py's host_id()).
MAX_HOSTS = 10_000


class BenchError(Exception):
    """A step of the benchmark could not be done."""


class Probe:
    """Round trips of a small control request, back to back, timed in a
    process of its own (probe_main(); CLOCK_MONOTONIC is the machine's, so
    its times compare with ours)."""

    def __init__(self, control_path: str) -> None:
        self.control_path = control_path
        self.samples: list[tuple[float, float]] = []  # (sent, seconds), monotonic
        self.failures: list[str] = []
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--probe", self.control_path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def stop(self) -> None:
        """Close its stdin (it stops there) and read what it measured."""
        assert self.proc is not None
        out, _ = self.proc.communicate(input="", timeout=START_TIMEOUT)
        for line in out.splitlines():
            if line.startswith("failed "):
                self.failures.append(line[len("failed ") :])
            else:
                sent, rtt = line.split()
                self.samples.append((float(sent), float(rtt)))

    def longest(self, start: float, end: float) -> tuple[float, int]:
        """The longest round trip that overlapped [start, end], and how many did."""
        overlapping = [rtt for sent, rtt in self.samples if sent <= end and sent + rtt >= start]
        return max(overlapping, default=0.0), len(overlapping)


def probe_main(control_path: str) -> int:
    """The probe process: round trips until stdin closes, then each on a line."""
    samples: list[tuple[float, float]] = []
    while not select.select([sys.stdin], [], [], 0)[0]:
        sent = time.monotonic()
        try:
            with ControlClient(control_path, timeout=START_TIMEOUT) as client:
                client.request(
                    MsgType.JOBS,
                    {"action": "list", "host": None, "target": PROBE_TARGET, "limit": 1}
                    | {"jid": None},
                    START_TIMEOUT,
                )
        except SafcmError as e:
            print(f"failed {e}")
            return 1
        samples.append((sent, time.monotonic() - sent))
        time.sleep(PROBE_INTERVAL)
    for sent, rtt in samples:
        print(f"{sent!r} {rtt!r}")
    return 0


def fill_keystore(state_dir: str, ids: list[str]) -> None:
    """Accepted keys for `ids`, written straight into the master's database."""
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    conn = open_db(state_dir)
    store = KeyStore(conn)
    now = time.time()
    for start in range(0, len(ids), KEYS_PER_TRANSACTION):
        with transaction(conn):
            for minion_id in ids[start : start + KEYS_PER_TRANSACTION]:
                store.enrol(minion_id, KeyPair.generate().public, now=now, auto_accept=True)
    conn.close()


def submit(sb: Sandbox, live: list[str]) -> dict[str, float | str]:
    """RUN files for '*': seconds to RUN_STARTED and to the live hosts' results."""
    figures: dict[str, float | str] = {}
    client = ControlClient(sb.control_path, timeout=START_TIMEOUT)
    try:
        sent = time.monotonic()
        figures["sent"] = sent
        client.send(
            MsgType.RUN,
            {
                "target": "*",
                "group": False,
                "module": "files",
                "dry_run": False,
                "timeout": JOB_TIMEOUT,
            },
        )
        waiting = set(live)
        replies = client.replies(START_TIMEOUT)
        for reply in replies:
            raise_for_error(reply)
            if reply.type is MsgType.RUN_STARTED:
                figures["started"] = time.monotonic() - sent
                figures["jid"] = reply.body["jid"]
                figures["hosts"] = len(reply.body["hosts"])
                break
        else:
            raise BenchError("the master closed the connection before the job started")
        deadline = time.monotonic() + RESULTS_TIMEOUT
        try:
            for reply in client.replies(RESULTS_TIMEOUT):
                if reply.type is MsgType.RUN_HOST_RESULT and reply.body["host"] in waiting:
                    if reply.body["status"] not in ("changed", "ok"):
                        raise BenchError(f"{reply.body['host']}: {reply.body['status']}")
                    waiting.discard(reply.body["host"])
                if not waiting or time.monotonic() > deadline:
                    break
        except DaemonError:  # no message within RESULTS_TIMEOUT: said below
            pass
        if waiting:
            figures["answered"] = f"no result from {sorted(waiting)} within {RESULTS_TIMEOUT:.0f} s"
        else:
            figures["answered"] = f"{time.monotonic() - sent:.2f} s"
    finally:
        client.close()
    return figures


def master_figures(sb: Sandbox, jid: str) -> str:
    found = re.search(
        rf"job {jid}: .*compiled in ([\d.]+) s, built in ([\d.]+) s, stored in ([\d.]+) s; "
        r"the event loop was held at most ([\d.]+) ms at a time since the request \((.*)\)",
        sb.master.log_text(),
    )
    if found is None:
        return "not logged"
    return (
        f"compiled {found.group(1)} s, built {found.group(2)} s, stored {found.group(3)} s; "
        f"loop held at most {found.group(4)} ms ({found.group(5)})"
    )


def bench(args: argparse.Namespace) -> None:
    base = tempfile.mkdtemp(prefix=f"safcm-submit-{args.hosts}-", dir="/tmp")
    sb: Sandbox | None = None
    try:
        repo = pathlib.Path(base) / "repo"
        generate_repo(repo, args.hosts, args.files)
        ids = [host_id(i) for i in range(1, args.hosts + 1)]
        live, fake = ids[: args.live], ids[args.live :]
        sb = Sandbox(base, str(repo), heartbeat_interval=LIVE_HEARTBEAT, log_level="info")
        started = time.monotonic()
        fill_keystore(sb.master.settings["state_dir"], fake)
        print(f"{len(fake)} keys written in {time.monotonic() - started:.1f} s", file=sys.stderr)
        sb.start_master()
        for minion_id in live:
            sb.add_minion(minion_id, log_level="info")
            sb.start_minion(minion_id)
        if live:
            wait_for(
                lambda: all(f"new key of {i} is pending" in sb.master.log_text() for i in live),
                CONNECT_TIMEOUT,
                "the live minions to enrol",
            )
            accepted = sb.cli("keys", "accept", *live)
            if accepted.returncode != 0:
                raise BenchError(f"keys accept: {accepted.stderr.strip()}")
            wait_for(
                lambda: all(f"minion {i} is connected" in sb.master.log_text() for i in live),
                CONNECT_TIMEOUT,
                "the live minions to connect",
            )
        probe = Probe(sb.control_path)
        probe.start()
        time.sleep(IDLE_WINDOW)
        idle_end = time.monotonic()
        figures = submit(sb, live)
        # The probe goes on while the job's envelopes are sealed and
        # published (10,000 of about 116 KiB: seconds of the loop's slices).
        time.sleep(args.after)
        end = time.monotonic()
        probe.stop()
        if probe.failures:
            raise BenchError(f"the probe failed: {probe.failures[0]}")
        pid = sb.master.proc.pid
        rss, hwm = rss_kib("VmRSS", pid), rss_kib("VmHWM", pid)
        idle_max, idle_n = probe.longest(idle_end - IDLE_WINDOW, idle_end)
        sent = float(figures["sent"])
        busy_max, busy_n = probe.longest(sent, end)
        # Apart: while the job is prepared and stored, and once it is
        # started (its envelopes are sealed and published, results come in).
        store_max, store_n = probe.longest(sent, sent + float(figures["started"]))
        start_max, start_n = probe.longest(sent + float(figures["started"]), end)
        print("safcm submission benchmark")
        print(f"command: {shlex.join([sys.executable, *sys.argv])}")
        print(f"load before: {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} CPUs")
        print(
            f"job {figures['jid']}: files, {figures['hosts']} hosts ({len(live)} live), "
            f"{args.files} files each"
        )
        print(f"  RUN -> RUN_STARTED (prepare + store):  {figures['started']:.2f} s")
        print(f"  RUN -> last live result:               {figures['answered']}")
        print(f"  master: {master_figures(sb, str(figures['jid']))}")
        print(
            f"  probe round trip, longest: idle {idle_max * 1000:.1f} ms ({idle_n} requests); "
            f"during the submission {busy_max * 1000:.1f} ms ({busy_n} requests)"
        )
        print(
            f"    of which: until RUN_STARTED {store_max * 1000:.1f} ms ({store_n} requests); "
            f"after it, and {args.after:.0f} s after the last live result (publishing) "
            f"{start_max * 1000:.1f} ms ({start_n} requests)"
        )
        print(f"  master RSS: {rss / 1024:.1f} MiB now, peak {hwm / 1024:.1f} MiB")
        worker = re.findall(r"prepare worker \d+ started \(pid (\d+)\)", sb.master.log_text())
        if worker:  # master/prepworker.py: the process that compiles and stores
            w_rss, w_hwm = rss_kib("VmRSS", int(worker[-1])), rss_kib("VmHWM", int(worker[-1]))
            print(f"  prepare worker RSS: {w_rss / 1024:.1f} MiB now, peak {w_hwm / 1024:.1f} MiB")
    finally:
        if sb is not None:
            sb.close()
        if args.keep:
            print(f"kept {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    if args_in[:1] == ["--probe"]:
        return probe_main(args_in[1])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=10_000, help="hosts (default: 10000)")
    parser.add_argument("--files", type=int, default=100, help="files per host (default: 100)")
    parser.add_argument("--live", type=int, default=3, help="real minions (default: 3)")
    parser.add_argument(
        "--after",
        type=float,
        default=AFTER_SECONDS,
        help="seconds the probe goes on after the last live result (default: %(default)s)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--max-seconds", type=float, default=DEFAULT_MAX_SECONDS)
    args = parser.parse_args(argv)
    if not 1 <= args.live <= args.hosts <= MAX_HOSTS:
        parser.error(f"--hosts: 1 to {MAX_HOSTS}; --live: 1 to --hosts")
    timer = threading.Timer(args.max_seconds, lambda: os.kill(os.getpid(), 2))
    timer.daemon = True
    timer.start()
    try:
        bench(args)
    except (BenchError, SafcmError, TimeoutError, subprocess.SubprocessError) as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted (--max-seconds or Ctrl-C)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
