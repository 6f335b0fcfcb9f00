"""Benchmark fan-out: a real master and N minions, `run '*' ping` and `run '*' files`.

    /work/venv/bin/python bench/fanout.py [--sizes 10,100,500] [--files 100]
        [--swarms 2] [--workers 4] [--fsync-workers N] [--repeat 1] [--ping-only]
        [--swarm-dir DIR] [--swarm-nice 10]
        [--profile DIR] [--json] [--keep] [--max-seconds 840]

For each N in --sizes, in a fresh temporary directory under /tmp:

1. A configuration repository: hosts.yaml with hosts m0001..mNNNN, and
   --files files of about 1 KiB each, in all/files/srv/bench/dNN/, so every
   host gets them all. The master loads and compiles it on every run, as in
   production.
2. A real master daemon (master/sandbox.py: a subprocess on 127.0.0.1, free
   ports, log level info), one real minion daemon process (m0001, the
   reference for one minion's memory), and the other N-1 identities in
   --swarms swarm processes, more if each would hold over
   MAX_IDENTITIES_PER_SWARM (bench/swarm.py: real Minion objects sharing one
   loop, context and thread pool per process, each with its own keys, state
   directory and root). The heartbeat interval grows with N (1 s up to 200
   minions, then N/200 s), so heartbeats stay at about 200 a second. The
   swarms run at --swarm-nice: they stand in for hosts with CPUs of their
   own, so they must not take a core from the master while its loop has
   work (at the same priority, the master's loop waited up to 159 ms for a
   core during a files create of 1,000 hosts, which its longest call then
   showed; at nice 10, 23 ms). Their CPU still counts in every wall time.
3. Enrolment: wait until N keys are pending, `keys accept '*'`, wait until
   every minion is connected (both timed, not part of the run figures).
   Beyond ACCEPT_ALL_AT_ONCE_UP_TO minions, pending keys are accepted in
   waves until every minion is connected.
4. Timed, each with the CLI as a user runs it, by its wall clock from start
   to exit: `run '*' ping --json`, then `run '*' files --json` (creates the
   files), then the same again (changes nothing). Each answer is checked:
   all N hosts answered ok; the first files run created exactly --files
   regular files per host, and they are on disk with the right content; the
   second changed nothing. A failed check is printed and makes the exit code
   1; it is never hidden.
5. Where the time went, from `jobs show JID --json` (untimed): CLI start to
   the job's submission (CLI start-up, repository load and compile), then to
   the last receipt and the last stored result (master clock), then to the
   CLI's exit (streaming the results and printing the document). Also the
   CPU seconds each side used during the run (/proc/<pid>/stat, the
   master's with its prepare worker process; the CLI's from its rusage,
   with its peak RSS),
   each host's apply time on its minion (from its result), and how many
   envelopes reached a minion again after it had taken the job (the master
   re-published before the receipt came; from the minions' logs).
6. The load with no job: the share of a core the master and the minions use
   over one heartbeat interval (at least IDLE_WINDOW seconds), after one
   interval to settle: the cost of heartbeats. --profile samples the master
   during that window too.
7. Memory: the peak RSS (VmHWM) of the master; of each swarm process, given
   per identity both as total / identities and as (peak - RSS before the
   first identity) / identities; and of the real minion daemon.

--profile DIR runs `py-spy record` (raw collapsed stacks) on the master, the
first swarm and the CLI during each timed run and prints the functions that
took the most samples. Only the thread holding the GIL is sampled (--gil):
otherwise a thread waiting for it (the loop, while the result writer's
thread holds it) looks busy where it waits, and a master's 0.8 CPU
seconds showed as 1.4 seconds of samples.

Everything is bounded: each wait has its own timeout, and the whole run
stops at --max-seconds. All processes are stopped and the
temporary directories removed at the end, on error, and on Ctrl-C (--keep
leaves the directories for a look at the logs).
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import pathlib
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import zmq

from bench.swarm import measured_argv, raise_fd_limit, read_measured, rss_kib, write_json
from safcm.common.protocol import MsgType
from safcm.master.control import ControlClient
from safcm.master.sandbox import Sandbox

SOURCE_DIR = pathlib.Path(__file__).resolve().parents[1]
SWARM_SCRIPT = SOURCE_DIR / "bench" / "swarm.py"

FILE_SIZE = 1024  # bytes of each generated file, as in the other benchmarks
FILES_PER_DIR = 10  # generated files per directory under /srv/bench
REFERENCE_MINION = "m0001"  # the one minion that runs as its own daemon process
# Heartbeats a second the fleet sends at most: the interval is 1 s up to this
# many minions and grows with N beyond, as an administrator would set it.
HEARTBEATS_PER_SECOND = 200
MIN_HEARTBEAT = 1.0  # seconds
# Seconds to wait for enrolment (all keys pending), and for all minions to be
# connected after the accept: a base plus a share per minion.
ENROL_TIMEOUT_BASE, ENROL_TIMEOUT_PER_MINION = 60.0, 0.2
# Largest fleet whose keys are all pending before one `keys accept '*'`. The
# master lets keys that are not accepted hold a quarter of a socket's
# connections (master/transport.py UNKNOWN_SHARE): about 1,600 at a limit of
# 20,000 descriptors. A larger fleet is accepted in waves, as an
# administrator accepting what is pending would.
ACCEPT_ALL_AT_ONCE_UP_TO = 1000
# Identities one swarm process holds at most: about fourteen descriptors each
# while they reconnect (bench/swarm.py raise_fd_limit()) within the 20,000
# this machine allows a process, with room to spare. More swarms are started
# than --swarms asks for when the fleet needs them.
MAX_IDENTITIES_PER_SWARM = 1100
# Niceness of the swarm processes (--swarm-nice): hosts of their own, which
# never take a core from the master (module docstring, 2.).
SWARM_NICE = 10
MAX_NICE = 19  # nice(2)'s lowest priority
# Seconds a timed run may take before its hosts count as no response (the
# job's --timeout); the CLI process itself gets CLI_SLACK more (the CLI waits
# RUN_GRACE = 30 s beyond the job's timeout for the daemon's last word).
RUN_TIMEOUT_BASE, RUN_TIMEOUT_PER_MINION = 60.0, 0.4
CLI_SLACK = 60.0
# Seconds between two looks at the key list while waiting.
POLL_INTERVAL = 0.25
# Seconds a swarm gets to exit after SIGTERM before it is killed.
STOP_TIMEOUT = 20.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")  # units of /proc/<pid>/stat's CPU times, per second
# Seconds the connected fleet is watched with no job, to measure what
# heartbeats alone cost the master.
IDLE_WINDOW = 5.0
# Problems printed per run; the count of the rest follows.
MAX_PROBLEMS_SHOWN = 20
# Whole benchmark, in seconds: the brief allows well under 15 minutes.
DEFAULT_MAX_SECONDS = 840.0
# py-spy (--profile): samples per second; seconds to let it attach before a
# run; seconds it gets to write its file when stopped; functions listed per
# process; share of samples above which a function is the entry chain
# (main, Loop.run) and not listed; the packages whose functions are listed.
PROFILE_RATE = 200
PROFILE_SETTLE = 0.5
PROFILE_STOP_TIMEOUT = 30.0
PROFILE_TOP = 14
PROFILE_ENTRY_SHARE = 0.95
SAFCM_PACKAGES = ("common", "master", "minion", "bench", "swarm.py")
# Largest --sizes: 10,000 minions hold 20,000 connections on the master, and
# more than that needs a descriptor limit few machines give.
MAX_SIZE = 20_000


class BenchError(Exception):
    """A step of the benchmark could not be done (a daemon died, a wait timed out)."""


class Budget:
    """The time left for the whole benchmark; every wait takes from it."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def timeout(self, wanted: float, what: str) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise BenchError(f"out of time (--max-seconds) before {what}")
        return min(wanted, left)


@dataclass
class RunFigures:
    name: str
    seconds: float
    hosts: int
    answered: int
    per_second: float
    cli_to_job: float | None = None
    job_to_last_receipt: float | None = None
    job_to_last_result: float | None = None
    last_result_to_exit: float | None = None
    apply_median: float | None = None  # one host's job on the minion (its result's times)
    apply_max: float | None = None
    duplicates: int = 0  # envelopes a minion got again after taking the job
    master_cpu: float = 0.0  # CPU seconds the master used during the run
    master_parts: dict[str, float] = field(default_factory=dict)  # of it, master_parts_seconds()
    minions_cpu: float = 0.0  # CPU seconds of all minion processes together
    cli_cpu: float = 0.0  # CPU seconds of the CLI process
    cli_peak_kib: int = 0  # the CLI's peak RSS
    bytes_per_host: float | None = None  # envelope bytes the master published, per host
    loop_max_ms: float | None = None  # longest the master's loop was held during the job
    loop_max_where: str = ""  # and by what
    problems: list[str] = field(default_factory=list)
    profiles: dict[str, Profile] = field(default_factory=dict)


@dataclass
class SizeFigures:
    n: int
    heartbeat: float
    swarms: int
    enrol_seconds: float = 0.0
    connect_seconds: float = 0.0
    runs: list[RunFigures] = field(default_factory=list)
    master_hwm_kib: int = 0
    swarm_hwm_kib: int = 0  # sum over the swarm processes
    swarm_baseline_kib: int = 0  # sum of their RSS before the first identity
    swarm_identities: int = 0
    minion_hwm_kib: int = 0  # the one real minion daemon
    master_idle_load: float = 0.0  # share of a core with no job (heartbeats)
    master_idle_libzmq: float = 0.0  # the part of it in libzmq's I/O threads
    master_idle_rss_kib: int = 0  # the master's RSS with the fleet connected, before any job
    minions_idle_load: float = 0.0
    idle_profiles: dict[str, Profile] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


# ---- the configuration repository ----


def host_id(i: int) -> str:
    return f"m{i:04d}"  # m0001..m9999, then m10000...


def file_content(n: int) -> bytes:
    head = f"# safcm fan-out benchmark, file {n}\n".encode()
    line = b"x" * 63 + b"\n"
    return head + line * ((FILE_SIZE - len(head)) // len(line))


def bench_path(n: int) -> str:
    return f"/srv/bench/d{n // FILES_PER_DIR:02d}/f{n:03d}.conf"


def generate_repo(root: pathlib.Path, hosts: int, files: int) -> None:
    root.mkdir(parents=True)
    (root / "config.yaml").write_text("default_user: root\ndefault_group: root\n")
    (root / "hosts.yaml").write_text(
        "".join(f"- name: {host_id(i)}\n" for i in range(1, hosts + 1))
    )
    (root / "groups.yaml").write_text('bench: ["m*"]\n')
    for n in range(files):
        path = root / "all" / "files" / bench_path(n).lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(file_content(n))


# ---- processes ----


class Swarm:
    """One bench/swarm.py process and the identities it holds."""

    def __init__(
        self,
        base: str,
        index: int,
        ids: list[str],
        sb: Sandbox,
        interval: float,
        workers: int,
        fsync_workers: int | None,
        nice: int,
        data: str,
    ) -> None:
        self.ids = ids
        self.status_path = os.path.join(base, f"swarm-{index}.status")
        self.log_path = os.path.join(base, "logs", f"swarm-{index}.log")
        self.spec_path = os.path.join(base, f"swarm-{index}.json")
        self.roots = {i: os.path.join(data, "roots", i) for i in ids}
        write_json(
            self.spec_path,
            {
                "master": "127.0.0.1",
                "publish_port": sb.master.settings["publish_port"],
                "return_port": sb.master.settings["return_port"],
                "key_port": sb.master.settings["key_port"],
                "master_fingerprint": sb.master_fingerprint(),
                "heartbeat_interval": interval,
                "workers": workers,
                "fsync_workers": fsync_workers,
                "nice": nice,
                "log_level": "info",
                "status": self.status_path,
                "minions": [
                    {"id": i, "state_dir": os.path.join(data, "minions", i), "root": self.roots[i]}
                    for i in ids
                ],
            },
        )
        self.proc: subprocess.Popen | None = None
        self.baseline_kib = 0

    def start(self) -> None:
        env = dict(os.environ, PYTHONPATH=str(SOURCE_DIR))
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(SWARM_SCRIPT), self.spec_path],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=SOURCE_DIR,
            )

    def ready(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise BenchError(f"a swarm exited at start-up; see {self.log_path}:\n{self.log_tail()}")
        try:
            with open(self.status_path) as f:
                status = json.load(f)
        except FileNotFoundError:
            return False
        self.baseline_kib = status["baseline_rss_kib"]
        return True

    def log_tail(self, chars: int = 3000) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-chars:]
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def hwm_kib(pid: int) -> int:
    try:
        return rss_kib("VmHWM", pid)
    except OSError:
        raise BenchError(f"process {pid} exited; see the logs (--keep)") from None


def stat_cpu(path: str) -> tuple[str, float]:
    """The name and the user plus system CPU seconds in a /proc stat file
    (a process's: all its threads; or one thread's). OSError if it is gone."""
    with open(path) as f:
        # The command name, field 2, may hold spaces; the fields after it do not.
        name, _, rest = f.read().partition("(")[2].rpartition(")")
    fields = rest.split()
    return name, (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime: 14, 15


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process (all its threads) has used so far."""
    try:
        return stat_cpu(f"/proc/{pid}/stat")[1]
    except OSError:
        raise BenchError(f"process {pid} exited; see the logs (--keep)") from None


def children_cpu_seconds(pid: int, tid: int) -> float:
    """cpu_seconds() of the children still running that thread `tid` of
    process `pid` started. OSError if the thread is gone."""
    with open(f"/proc/{pid}/task/{tid}/children") as f:
        return sum(cpu_seconds(int(child)) for child in f.read().split())


def tree_cpu_seconds(pid: int) -> float:
    """cpu_seconds() of a process and of its children still running: the
    master's, with its prepare worker (master/prepworker.py), which does
    the master's compiling and storing."""
    tids = [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    return cpu_seconds(pid) + sum(children_cpu_seconds(pid, tid) for tid in tids)


def master_parts_seconds(pid: int) -> dict[str, float]:
    """CPU time the master has used so far, by part: its event loop (the
    main thread), libzmq's threads, its other threads (the result writer,
    the stall watch) and its child processes (the prepare worker)."""
    parts = {"loop": 0.0, "libzmq": 0.0, "threads": 0.0, "worker": 0.0}
    for tid in map(int, os.listdir(f"/proc/{pid}/task")):
        try:
            name, seconds = stat_cpu(f"/proc/{pid}/task/{tid}/stat")
            parts["worker"] += children_cpu_seconds(pid, tid)
        except OSError:
            continue  # a thread that ended
        part = "loop" if tid == pid else "libzmq" if name.startswith("ZMQbg") else "threads"
        parts[part] += seconds
    return parts


def libzmq_io_seconds(pid: int) -> float:
    """CPU time libzmq's I/O threads ("ZMQbg/IO/N") of a process have used
    so far: py-spy cannot see them, and at 6,000 minions they were most of
    an idle master's CPU (master/transport.py DEAD_PEER_*)."""
    total = 0.0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            name, seconds = stat_cpu(f"/proc/{pid}/task/{tid}/stat")
        except OSError:
            continue  # a thread that ended
        if name.startswith("ZMQbg/IO"):
            total += seconds
    return total


def py_spy() -> str:
    return shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")


class Profiler:
    """py-spy record on some processes while one run goes on (--profile)."""

    def __init__(self, directory: str | None, tag: str) -> None:
        self.directory = directory
        self.tag = tag
        self.procs: dict[str, tuple[subprocess.Popen, str]] = {}

    def attach(
        self, targets: dict[str, int], *, settle: bool = True, subprocesses: bool = False
    ) -> None:
        """py-spy on each of `targets` (name: pid), and with `subprocesses` on
        their children too."""
        if self.directory is None:
            return
        spy = py_spy()
        for name, pid in targets.items():
            out = os.path.join(self.directory, f"{self.tag}-{name}.txt")
            argv = [spy, "record", "--pid", str(pid), "--rate", str(PROFILE_RATE)]
            argv += ["--format", "raw", "--output", out, "--nonblocking", "--gil"]
            argv += ["--subprocesses"] if subprocesses else []
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            self.procs[name] = (proc, out)
        if settle:
            time.sleep(PROFILE_SETTLE)

    def finish(self) -> dict[str, Profile]:
        """Stop every py-spy (it writes its file on SIGINT or when its target exits)."""
        profiles = {}
        for name, (proc, out) in self.procs.items():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
            try:
                proc.wait(PROFILE_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            profiles[name] = summarise_profile(out)
        return profiles


@dataclass
class Profile:
    samples_seconds: float  # sampled seconds of a thread holding the GIL
    functions: list[tuple[str, float]]  # safcm functions, share of samples on the stack
    leaves: list[tuple[str, float]]  # any function, share of samples at the top of the stack


def summarise_profile(path: str) -> Profile:
    """Read py-spy's collapsed stacks ("frame;frame;frame COUNT" per line)."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return Profile(0.0, [], [])
    inclusive: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    total = 0
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_frame_name(f) for f in stack.split(";")[1:]]  # [0] is the thread
        if not frames:
            continue
        leaves[frames[-1]] += n
        for frame in set(frames):
            if frame.split(" ")[-1].split("/")[0] in SAFCM_PACKAGES:
                inclusive[frame] += n
    if not total:
        return Profile(0.0, [], [])
    # Frames on (nearly) every stack are the entry chain (main, Loop.run): no news.
    functions = [
        (frame, n / total)
        for frame, n in inclusive.most_common()
        if n / total < PROFILE_ENTRY_SHARE
    ]
    return Profile(
        total / PROFILE_RATE,
        functions[:PROFILE_TOP],
        [(frame, n / total) for frame, n in leaves.most_common(PROFILE_TOP // 2)],
    )


def _frame_name(frame: str) -> str:
    """ "Loop.run (common/loop.py:149)" -> "Loop.run common/loop.py": one entry per function."""
    function, _, where = frame.partition(" (")
    file = where.rstrip(")").rpartition(":")[0]
    parts = pathlib.PurePath(file).parts
    return f"{function} {'/'.join(parts[-2:]) if parts else file}"


# ---- the fleet ----


def _connected(key: dict) -> bool:
    return key["state"] == "accepted" and key["connected"]


class Fleet:
    """A master, the reference minion daemon and the swarms, enrolled and connected.

    `with Fleet(...) as fleet:` builds it all under a fresh directory in /tmp
    and tears it all down again, also on error and Ctrl-C.
    """

    def __init__(self, n: int, args: argparse.Namespace, budget: Budget) -> None:
        self.n = n
        self.files = args.files
        self.budget = budget
        self.keep = args.keep
        self.interval = max(MIN_HEARTBEAT, n / HEARTBEATS_PER_SECOND)
        self.ids = [host_id(i) for i in range(1, n + 1)]
        swarm_ids = [i for i in self.ids if i != REFERENCE_MINION]
        k = max(1, min(args.swarms, len(swarm_ids)), -(-len(swarm_ids) // MAX_IDENTITIES_PER_SWARM))
        self.chunks = [swarm_ids[i::k] for i in range(k)] if swarm_ids else []
        self.workers = args.workers
        self.fsync_workers = args.fsync_workers
        self.nice = args.swarm_nice
        self.run_timeout = RUN_TIMEOUT_BASE + RUN_TIMEOUT_PER_MINION * n
        self.enrol_timeout = ENROL_TIMEOUT_BASE + ENROL_TIMEOUT_PER_MINION * n
        self.swarm_dir = args.swarm_dir
        self.base = ""
        self.data = ""  # the swarms' identities' state and roots: under base, or --swarm-dir
        self.sb: Sandbox | None = None
        self.swarms: list[Swarm] = []
        self.roots: dict[str, str] = {}
        self.enrol_seconds = 0.0
        self.connect_seconds = 0.0

    def __enter__(self) -> Fleet:
        self.base = self.data = tempfile.mkdtemp(prefix=f"safcm-fanout-{self.n}-", dir="/tmp")
        try:
            if self.swarm_dir:
                self.data = tempfile.mkdtemp(prefix=f"safcm-swarm-{self.n}-", dir=self.swarm_dir)
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self) -> None:
        repo = pathlib.Path(self.base) / "config"
        generate_repo(repo, self.n, self.files)
        sb = self.sb = Sandbox(
            self.base,
            str(repo),
            heartbeat_interval=self.interval,
            log_level="info",
            job_timeout=self.run_timeout,
        )
        sb.start_master()
        sb.add_minion(REFERENCE_MINION, log_level="info")
        sb.start_minion(REFERENCE_MINION)
        self.roots[REFERENCE_MINION] = sb.root(REFERENCE_MINION)
        self.swarms = [
            Swarm(
                self.base,
                i,
                chunk,
                sb,
                self.interval,
                self.workers,
                self.fsync_workers,
                self.nice,
                self.data,
            )
            for i, chunk in enumerate(self.chunks)
        ]
        for swarm in self.swarms:
            self.roots.update(swarm.roots)

        started = time.monotonic()
        for swarm in self.swarms:
            swarm.start()
        deadline = time.monotonic() + self.budget.timeout(self.enrol_timeout, "the swarms start")
        while not all(s.ready() for s in self.swarms):
            if time.monotonic() > deadline:
                raise BenchError("the swarms did not start in time")
            time.sleep(POLL_INTERVAL)
        if self.n > ACCEPT_ALL_AT_ONCE_UP_TO:
            self.accept_in_waves(started)
            return
        self.wait_keys("pending", lambda key: key["state"] == "pending")
        self.enrol_seconds = time.monotonic() - started

        started = time.monotonic()
        self.accept_pending()
        self.wait_keys("connected", _connected)
        self.connect_seconds = time.monotonic() - started

    def accept_pending(self) -> None:
        accept = self.sb.cli("keys", "accept", "*")  # a glob accepts pending keys only
        if accept.returncode != 0:
            raise BenchError(f"keys accept failed: {accept.stderr.strip()}")

    def accept_in_waves(self, started: float) -> None:
        """Accept what is pending, again and again, until every minion is
        connected: enrol s is until every key was pending or accepted,
        accept→conn from then until every minion is connected."""

        def accept(keys: list[dict]) -> None:
            known = sum(1 for k in keys if k["state"] in ("pending", "accepted"))
            if known >= self.n and not self.enrol_seconds:
                self.enrol_seconds = time.monotonic() - started
            if any(k["state"] == "pending" for k in keys):
                self.accept_pending()

        self.wait_keys("connected", _connected, each=accept, patience=2)
        now = time.monotonic()
        if not self.enrol_seconds:  # connected before a list showed every key
            self.enrol_seconds = now - started
        self.connect_seconds = now - started - self.enrol_seconds

    def list_keys(self) -> list[dict]:
        with ControlClient(self.sb.control_path) as client:
            return client.request(MsgType.KEYS, {"action": "list", "ids": []}).body["keys"]

    def wait_keys(
        self,
        what: str,
        ok: Callable[[dict], bool],
        *,
        each: Callable[[list[dict]], None] = lambda keys: None,
        patience: float = 1.0,
    ) -> None:
        """Poll the master's key list until `ok` holds for every minion,
        handing each list read to `each`, for `patience` times the
        enrolment timeout at most."""
        timeout = self.budget.timeout(patience * self.enrol_timeout, f"all minions are {what}")
        deadline = time.monotonic() + timeout
        while True:
            if not self.sb.master.running:
                raise BenchError(f"the master exited while waiting for minions to be {what}")
            keys = self.list_keys()
            count = sum(1 for k in keys if ok(k))
            if count >= self.n:
                return
            each(keys)
            if time.monotonic() > deadline:
                raise BenchError(f"after {timeout:.0f} s only {count} of {self.n} were {what}")
            time.sleep(POLL_INTERVAL)

    def cpu(self) -> dict[str, float]:
        """CPU seconds used so far by the master, and by all minion processes together."""
        minions = [self.sb.minions[REFERENCE_MINION].proc.pid]
        minions += [s.proc.pid for s in self.swarms]
        parts = master_parts_seconds(self.sb.master.proc.pid)
        return {
            **{f"master part {part}": seconds for part, seconds in parts.items()},
            "master": tree_cpu_seconds(self.sb.master.proc.pid),
            "master libzmq": libzmq_io_seconds(self.sb.master.proc.pid),
            "minions": sum(cpu_seconds(pid) for pid in minions),
        }

    def idle_load(self, profile: str | None) -> tuple[dict[str, float], dict[str, Profile]]:
        """Share of one core the master and the minions use with no job:
        heartbeats. First one heartbeat interval passes, so the minions
        connected last are done with what a connection starts (facts, first
        heartbeats); then the window is at least one interval, so every
        minion's heartbeat falls in it."""
        time.sleep(self.budget.timeout(self.interval, "the fleet settles"))
        window = max(IDLE_WINDOW, self.interval)
        profiler = Profiler(profile, f"n{self.n}-idle")
        profiler.attach({"master": self.sb.master.proc.pid})
        before = self.cpu()
        time.sleep(self.budget.timeout(window, "the idle window"))
        after = self.cpu()
        tops = profiler.finish()
        return {key: (after[key] - before[key]) / window for key in before}, tops

    def pids(self) -> dict[str, int]:
        """The processes worth profiling: the master and the first swarm."""
        pids = {"master": self.sb.master.proc.pid}
        if self.swarms:
            pids["swarm0"] = self.swarms[0].proc.pid
        return pids

    def cli_argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "safcm.master.cli", "-c", self.sb.master.config, *args]

    def duplicates(self, jid: str) -> int:
        """Envelopes of `jid` that reached a minion again after it had taken the job
        (the master re-published before the receipt came), from the minions' logs."""
        needle = f"job {jid} seen before"
        logs = [self.sb.minions[REFERENCE_MINION].log] + [s.log_path for s in self.swarms]
        count = 0
        for path in logs:
            with open(path, errors="replace") as f:
                count += sum(1 for line in f if needle in line)
        return count

    def master_rss_kib(self) -> int:
        try:
            return rss_kib("VmRSS", self.sb.master.proc.pid)
        except OSError:
            raise BenchError("the master exited; see the logs (--keep)") from None

    def memory(self, figures: SizeFigures) -> None:
        figures.master_hwm_kib = hwm_kib(self.sb.master.proc.pid)
        figures.minion_hwm_kib = hwm_kib(self.sb.minions[REFERENCE_MINION].proc.pid)
        for swarm in self.swarms:
            figures.swarm_hwm_kib += hwm_kib(swarm.proc.pid)
            figures.swarm_baseline_kib += swarm.baseline_kib
            figures.swarm_identities += len(swarm.ids)

    def master_log_tail(self) -> str:
        return "" if self.sb is None else self.sb.master.log_text()[-3000:]

    def close(self) -> None:
        for swarm in self.swarms:
            swarm.stop()
        if self.sb is not None:
            self.sb.close()
        for path in {self.base, self.data} - {""}:
            if self.keep:
                print(f"kept {path}", file=sys.stderr)
            else:
                shutil.rmtree(path, ignore_errors=True)


# ---- one timed run ----


def stop_cli_during_job(
    fleet: Fleet, proc: subprocess.Popen, logged_before: int, seconds: float
) -> None:
    """Stop the CLI (SIGSTOP, as ^Z or a terminal's ^S leave it) from its
    job's start to its end, at most `seconds`, then let it go on: the
    results all come while it reads nothing, and the master's peak RSS
    shows what it holds for it."""
    until = time.monotonic() + seconds
    started = re.compile(r"job (\S+): \w+ on \* by ")
    found = None
    while found is None:
        if proc.poll() is not None or time.monotonic() > until:
            return
        found = started.search(fleet.sb.master.log_text(), logged_before)
        time.sleep(POLL_INTERVAL)
    os.killpg(proc.pid, signal.SIGSTOP)
    try:
        finished = f"job {found.group(1)} finished:"
        while finished not in fleet.sb.master.log_text() and time.monotonic() < until:
            time.sleep(POLL_INTERVAL)
    finally:
        os.killpg(proc.pid, signal.SIGCONT)


def timed_run(
    fleet: Fleet, module: str, name: str, profile: str | None, stop_cli: bool = False
) -> tuple[RunFigures, dict]:
    """`run '*' MODULE --json` as a user runs it, timed from start to exit;
    with `stop_cli`, its CLI reads nothing while the job runs."""
    timeout = fleet.budget.timeout(fleet.run_timeout, name)
    tag = f"n{fleet.n}-{name.replace(' ', '-')}"
    profiler = Profiler(profile, tag)
    profiler.attach(fleet.pids())
    cli = fleet.cli_argv("run", "*", module, "--json", "--timeout", str(max(1, round(timeout))))
    # The CLI's CPU seconds and peak RSS, its own (bench/swarm.py measured_argv()).
    report = os.path.join(fleet.base, f"{tag}.cli-usage")
    argv = measured_argv(cli, report)
    env = dict(os.environ, PYTHONPATH=str(SOURCE_DIR))
    cpu_before = fleet.cpu()
    logged_before = len(fleet.sb.master.log_text())
    started_wall = time.time()
    started = time.perf_counter()
    try:
        with subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=SOURCE_DIR,
            start_new_session=True,  # a group, to stop the CLI with its measuring parent
        ) as proc:
            profiler.attach({"cli": proc.pid}, settle=False, subprocesses=True)
            if stop_cli:
                stop_cli_during_job(fleet, proc, logged_before, timeout + CLI_SLACK)
            try:
                out, err = proc.communicate(timeout=timeout + CLI_SLACK)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
                limit = timeout + CLI_SLACK
                raise BenchError(f"{name}: the CLI did not exit in {limit:.0f} s") from None
            seconds = time.perf_counter() - started
            cpu_after = fleet.cpu()
    finally:
        tops = profiler.finish()
    figures = RunFigures(name, seconds, fleet.n, 0, 0.0, profiles=tops)
    figures.master_cpu = cpu_after["master"] - cpu_before["master"]
    figures.master_parts = {
        key.removeprefix("master part "): cpu_after[key] - cpu_before[key]
        for key in cpu_before
        if key.startswith("master part ")
    }
    figures.minions_cpu = cpu_after["minions"] - cpu_before["minions"]
    figures.cli_cpu, figures.cli_peak_kib = read_measured(report)
    try:
        doc = json.loads(out)
    except json.JSONDecodeError:
        tail = err.decode(errors="replace").strip()[-2000:]
        figures.problems.append(f"exit {proc.returncode}, no JSON document; stderr: {tail}")
        return figures, {}
    figures.answered = sum(1 for h in _hosts(doc).values() if h["result"] is not None)
    figures.per_second = figures.answered / seconds
    if proc.returncode != 0:
        figures.problems.append(f"exit code {proc.returncode}: {doc.get('summary')}")
    applied = sorted(
        _epoch(h["result"]["finished"]) - _epoch(h["result"]["started"])
        for h in _hosts(doc).values()
        if h["result"] is not None
    )
    if applied:
        figures.apply_median = applied[len(applied) // 2]
        figures.apply_max = applied[-1]
    if doc.get("jid") is not None:
        figures.duplicates = fleet.duplicates(doc["jid"])
        add_breakdown(fleet, figures, doc["jid"], started_wall, started_wall + seconds)
        add_master_figures(fleet, figures, doc["jid"])
    return figures, doc


def add_master_figures(fleet: Fleet, figures: RunFigures, jid: str) -> None:
    """Bytes published and the loop's longest hold, from the master's line
    "job JID finished: N envelopes, B bytes published; the event loop was held
    at most X ms at a time since (WHERE)"."""
    found = re.search(
        rf"job {jid} finished: \d+ envelopes, (\d+) bytes published; the event loop was "
        r"held at most ([\d.]+) ms at a time since \((.*)\)",
        fleet.sb.master.log_text(),
    )
    if found is None:
        figures.problems.append(f"job {jid}: the master logged no figures at its end")
        return
    figures.bytes_per_host = int(found.group(1)) / max(1, figures.hosts)
    figures.loop_max_ms = float(found.group(2))
    figures.loop_max_where = found.group(3)


def add_breakdown(
    fleet: Fleet, figures: RunFigures, jid: str, started: float, ended: float
) -> None:
    """Where the time went, from the job history's timestamps (master clock)."""
    proc = fleet.sb.cli("jobs", "show", jid, "--json")
    if proc.returncode != 0:
        figures.problems.append(f"jobs show {jid}: {proc.stderr.strip()}")
        return
    doc = json.loads(proc.stdout)
    submitted = _epoch(doc["submitted"])
    receipts = [_epoch(h["received"]) for h in doc["hosts"] if h["received"] is not None]
    returns = [_epoch(h["returned"]) for h in doc["hosts"] if h["returned"] is not None]
    figures.cli_to_job = submitted - started
    if receipts:
        figures.job_to_last_receipt = max(receipts) - submitted
    if returns:
        figures.job_to_last_result = max(returns) - submitted
        figures.last_result_to_exit = ended - max(returns)


# ---- checks ----


def _hosts(doc: dict) -> dict[str, dict]:
    """The hosts a `run --json` document (format safcm/1) sent the job to, by id."""
    return {h["host"]: h for h in doc.get("hosts", []) if h["status"] != "skipped"}


def _epoch(when: float | str) -> float:
    """A time of the JSON format (ISO 8601, UTC) in seconds since the epoch."""
    if isinstance(when, str):
        return datetime.datetime.fromisoformat(when.replace("Z", "+00:00")).timestamp()
    return when


def check_hosts(doc: dict, ids: list[str], figures: RunFigures) -> None:
    if not doc:
        return
    hosts = _hosts(doc)
    missing = sorted(set(ids) - set(hosts))
    if sorted(hosts) != sorted(ids):
        figures.problems.append(f"targeted {len(hosts)} hosts, not {len(ids)}")
    if missing:
        figures.problems.append(f"{len(missing)} hosts missing from the results: {missing[:5]}")


def check_ping(doc: dict, fleet: Fleet, figures: RunFigures) -> None:
    check_hosts(doc, fleet.ids, figures)
    for host, h in sorted(_hosts(doc).items()):
        result = h["result"]
        if result is None or result["status"] != "ok" or result["ping"] is None:
            figures.problems.append(f"{host}: ping {h['status']}")


def check_create(doc: dict, fleet: Fleet, figures: RunFigures) -> None:
    """Every host reports exactly the generated regular files created, and has them on disk."""
    check_hosts(doc, fleet.ids, figures)
    expected = {bench_path(n): file_content(n) for n in range(fleet.files)}
    for host, h in sorted(_hosts(doc).items()):
        result = h["result"]
        if result is None or result["status"] != "ok":
            error = result and result["error"]
            figures.problems.append(f"{host}: files run {h['status']}: {error}")
            continue
        changes = result["apply"]["changes"]
        created = {c["path"] for c in changes if c["created"] and c["new"]["type"] == "file"}
        if created != set(expected):
            figures.problems.append(
                f"{host}: created {len(created)} files, expected the {len(expected)} generated"
            )
        for path, content in expected.items():
            full = os.path.join(fleet.roots[host], path.lstrip("/"))
            try:
                with open(full, "rb") as f:
                    if f.read() != content:
                        figures.problems.append(f"{host}: {path} has other content")
            except OSError as e:
                figures.problems.append(f"{host}: {path}: {e.strerror}")
                break


def check_noop(doc: dict, fleet: Fleet, figures: RunFigures) -> None:
    check_hosts(doc, fleet.ids, figures)
    for host, h in sorted(_hosts(doc).items()):
        result = h["result"]
        if result is None or result["status"] != "ok":
            figures.problems.append(f"{host}: files run {h['status']}")
        elif result["apply"]["changes"]:
            changed = len(result["apply"]["changes"])
            figures.problems.append(f"{host}: the second files run changed {changed} paths")


# ---- one size ----


def bench_size(n: int, args: argparse.Namespace, budget: Budget) -> SizeFigures:
    plan = [("ping", "ping", check_ping)] * args.repeat
    if not args.ping_only:
        plan += [("files", "files create", check_create), ("files", "files no-op", check_noop)]
    fleet = Fleet(n, args, budget)
    figures = SizeFigures(n, fleet.interval, len(fleet.chunks))
    try:
        with fleet:
            figures.enrol_seconds = fleet.enrol_seconds
            figures.connect_seconds = fleet.connect_seconds
            idle, figures.idle_profiles = fleet.idle_load(args.profile)
            figures.master_idle_load = idle["master"]
            figures.master_idle_libzmq = idle["master libzmq"]
            figures.minions_idle_load = idle["minions"]
            figures.master_idle_rss_kib = fleet.master_rss_kib()
            for module, name, check in plan:
                stop_cli = args.stop_cli and name == "files create"
                run, doc = timed_run(fleet, module, name, args.profile, stop_cli)
                check(doc, fleet, run)
                figures.runs.append(run)
            fleet.memory(figures)
    except BenchError as e:
        figures.problems.append(f"{e}\nmaster log tail:\n{fleet.master_log_tail()}")
    return figures


# ---- output ----


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f}"


def maybe(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.2f}"


def print_report(sizes: list[SizeFigures], command: str, args: argparse.Namespace) -> None:
    print("safcm fan-out benchmark")
    print(f"command: {command}")
    print(
        f"machine: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"pyzmq {zmq.__version__} (libzmq {zmq.zmq_version()}); {args.files} files of "
        f"{FILE_SIZE} B per host; {args.workers} apply threads per swarm, "
        f"{args.fsync_workers or 'default'} fsync threads per apply; swarm identities in "
        f"{args.swarm_dir or '/tmp'}, swarms at nice {args.swarm_nice}"
    )
    before = " ".join(f"{x:.2f}" for x in args.load_before)
    after = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load average (1, 5, 15 min): {before} at the start, {after} at the end")
    print()
    print(
        f"{'N':>5}  {'run':<13} {'seconds':>8} {'results/s':>10} {'answered':>9}   "
        f"{'cli→job':>7} {'→receipts':>9} {'→results':>8} {'→exit':>6}"
    )
    for size in sizes:
        for r in size.runs:
            print(
                f"{size.n:>5}  {r.name:<13} {r.seconds:>8.2f} {r.per_second:>10.1f} "
                f"{f'{r.answered}/{r.hosts}':>9}   {maybe(r.cli_to_job):>7} "
                f"{maybe(r.job_to_last_receipt):>9} {maybe(r.job_to_last_result):>8} "
                f"{maybe(r.last_result_to_exit):>6}"
            )
    print()
    print(
        f"{'N':>5}  {'run':<13} {'CPU s: master':>13} {'ms/host':>7} {'minions':>8} {'cli':>6} "
        f"{'cli MiB':>7}   "
        f"{'apply p50':>9} {'max':>6}   {'dup':>5}   {'B/host':>8} {'loop max ms':>11}  by"
    )
    for size in sizes:
        for r in size.runs:
            per_host = "-" if r.bytes_per_host is None else f"{r.bytes_per_host:.0f}"
            loop = "-" if r.loop_max_ms is None else f"{r.loop_max_ms:.1f}"
            print(
                f"{size.n:>5}  {r.name:<13} {r.master_cpu:>13.2f} "
                f"{r.master_cpu / max(1, r.hosts) * 1000:>7.2f} {r.minions_cpu:>8.2f} "
                f"{r.cli_cpu:>6.2f} {mib(r.cli_peak_kib):>7}   "
                f"{maybe(r.apply_median):>9} {maybe(r.apply_max):>6}   "
                f"{r.duplicates:>5}   {per_host:>8} {loop:>11}  {r.loop_max_where}"
            )
    print()
    parts = ("loop", "libzmq", "threads", "worker")
    print(
        f"{'N':>5}  {'run':<13} {'master CPU s by part:':>21} " + " ".join(f"{p:>7}" for p in parts)
    )
    for size in sizes:
        for r in size.runs:
            split = " ".join(f"{r.master_parts.get(p, 0.0):>7.2f}" for p in parts)
            print(f"{size.n:>5}  {r.name:<13} {'':>21} {split}")
    print()
    print(
        f"{'N':>5}  {'heartbeat':>9} {'enrol s':>8} {'accept→conn':>11}   "
        f"{'idle CPU: master':>16} {'minions':>8}   "
        f"{'MiB: master idle':>16} {'peak':>6} {'minion/id':>9} {'marginal':>8} {'daemon':>7}"
    )
    for size in sizes:
        ids = size.swarm_identities
        per_id = f"{size.swarm_hwm_kib / ids / 1024:.2f}" if ids else "-"
        marginal = (
            f"{(size.swarm_hwm_kib - size.swarm_baseline_kib) / ids / 1024:.2f}" if ids else "-"
        )
        print(
            f"{size.n:>5}  {size.heartbeat:>8.1f}s {size.enrol_seconds:>8.1f} "
            f"{size.connect_seconds:>11.1f}   {size.master_idle_load * 100:>15.1f}% "
            f"{size.minions_idle_load * 100:>7.1f}%   {mib(size.master_idle_rss_kib):>16} "
            f"{mib(size.master_hwm_kib):>6} "
            f"{per_id:>9} {marginal:>8} {mib(size.minion_hwm_kib):>7}"
        )
    print()
    print(
        "seconds: wall clock of `safcm-master run '*' MODULE --json` from start to exit.\n"
        "cli→job: CLI start to the job's submission (start-up, repository load, compile);\n"
        "  →receipts / →results: submission to the last receipt / last stored result\n"
        "  (master clock); →exit: last stored result to the CLI's exit.\n"
        "CPU s: CPU seconds used during the run by the master (and its ms per host), all\n"
        "  minion processes, the CLI; cli MiB: the CLI's peak RSS.\n"
        "master CPU s by part: the master's CPU seconds in its event loop (main thread),\n"
        "  libzmq's threads, its other threads (result writer, stall watch) and its\n"
        "  prepare worker process.\n"
        "apply p50 / max: one host's job on its minion (its result's started..finished).\n"
        "dup: envelopes minions received again after taking the job (master re-publishes).\n"
        "B/host: envelope bytes the master published for the job, per host.\n"
        "loop max ms: the longest any one callback held the master's event loop from the\n"
        "  job's submission to its end (nothing else was read or sent meanwhile), and which.\n"
        "idle CPU: share of one core used with no job (heartbeats), over one heartbeat\n"
        f"  interval (at least {IDLE_WINDOW:.0f} s) after one interval to settle; the\n"
        "  master's, of it in libzmq's I/O threads: "
        + ", ".join(f"N={z.n} {z.master_idle_libzmq * 100:.1f}%" for z in sizes)
        + ".\n"
        "MiB: the master's RSS with the fleet connected and idle, before the first job;\n"
        "  peak RSS (VmHWM) of the master; of the swarms per identity (their sum over\n"
        "  identities, and the same less their RSS before the first identity); and of\n"
        f"  the one real minion daemon ({REFERENCE_MINION})."
    )
    for size in sizes:
        profiled = [("idle", size.idle_profiles)] + [(r.name, r.profiles) for r in size.runs]
        for what, profiles in profiled:
            for name, profile in profiles.items():
                print(
                    f"\nprofile N={size.n} {what}, {name}: "
                    f"{profile.samples_seconds:.2f} s with the GIL sampled"
                )
                for frame, share in profile.functions:
                    print(f"  {share * 100:5.1f}%  {frame}")
                print("  leaves:")
                for frame, share in profile.leaves:
                    print(f"  {share * 100:5.1f}%  {frame}")
    failed = False
    for size in sizes:
        for problem in size.problems:
            failed = True
            print(f"\nFAILED at N={size.n}: {problem}")
        for r in size.runs:
            for problem in r.problems[:MAX_PROBLEMS_SHOWN]:
                failed = True
                print(f"FAILED at N={size.n}, {r.name}: {problem}")
            if len(r.problems) > MAX_PROBLEMS_SHOWN:
                more = len(r.problems) - MAX_PROBLEMS_SHOWN
                print(f"FAILED at N={size.n}, {r.name}: ... and {more} more")
    if not failed:
        print("\nall checks passed: every host answered; files created, then unchanged")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", default="10,100,500", help="minion counts (default: %(default)s)"
    )
    parser.add_argument("--files", type=int, default=100, help="files per host (default: 100)")
    parser.add_argument("--swarms", type=int, default=2, help="swarm processes (default: 2)")
    parser.add_argument(
        "--workers", type=int, default=4, help="apply threads per swarm (default: 4)"
    )
    parser.add_argument(
        "--fsync-workers",
        type=int,
        help="fsync threads of each apply in the swarms (default: the engine's FSYNC_WORKERS)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="ping runs per size (default: 1)")
    parser.add_argument(
        "--swarm-dir",
        metavar="DIR",
        help="put the swarms' identities (state and roots) in a fresh directory in DIR, e.g."
        " /dev/shm: their fsyncs then cost nothing, as in a real fleet where each host has a"
        " disk of its own, rather than all of them waiting on this machine's one disk"
        " (the master and the reference minion stay in /tmp)",
    )
    parser.add_argument(
        "--swarm-nice",
        type=int,
        default=SWARM_NICE,
        help="the swarms' niceness (default: %(default)s; 0 runs them beside the master as equals)",
    )
    parser.add_argument(
        "--ping-only",
        action="store_true",
        help="no files runs: the fleet, its idle load and memory, and ping",
    )
    parser.add_argument(
        "--stop-cli",
        action="store_true",
        help="stop the create's CLI (SIGSTOP) while its job runs: the master's peak RSS then"
        " shows what it holds for a CLI that reads nothing (a pager, ^S)",
    )
    parser.add_argument("--profile", metavar="DIR", help="py-spy the master and a swarm into DIR")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directories")
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=DEFAULT_MAX_SECONDS,
        help="stop the whole benchmark after this long (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    try:
        args.sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        parser.error(f"--sizes: not a comma list of numbers: {args.sizes!r}")
    if any(n < 1 or n > MAX_SIZE for n in args.sizes):
        parser.error(f"--sizes: each size must be 1 to {MAX_SIZE}")
    for name in ("files", "swarms", "workers", "repeat", "fsync_workers"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if not 0 <= args.swarm_nice <= MAX_NICE:
        parser.error(f"--swarm-nice: 0 to {MAX_NICE}")
    if args.files > FILES_PER_DIR * 100:
        parser.error(f"--files: at most {FILES_PER_DIR * 100}")
    if args.profile is not None:
        if not os.path.exists(py_spy()):
            parser.error(f"--profile needs py-spy ({py_spy()}): pip install py-spy")
        os.makedirs(args.profile, exist_ok=True)
    return args


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join([sys.executable, *sys.argv])
    # A SIGTERM (a job runner's timeout) cleans up as Ctrl-C does; SIGINT is
    # set explicitly, since a shell starts background jobs with it ignored.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    budget = Budget(args.max_seconds)
    raise_fd_limit()  # the master inherits it: two connections per minion
    args.load_before = os.getloadavg()
    sizes: list[SizeFigures] = []
    try:
        for n in args.sizes:
            print(f"N={n} ...", file=sys.stderr, flush=True)
            sizes.append(bench_size(n, args, budget))
    except KeyboardInterrupt:
        print(f"interrupted at N={n}; the figures of the sizes before:", file=sys.stderr)
    if args.json:
        document = {
            "command": command,
            "swarm_nice": args.swarm_nice,
            "sizes": [asdict(s) for s in sizes],
        }
        json.dump(document, sys.stdout, indent=2)
        print()
    else:
        print_report(sizes, command, args)
    ok = len(sizes) == len(args.sizes) and not any(
        s.problems or any(r.problems for r in s.runs) for s in sizes
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
