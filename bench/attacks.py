"""Benchmark attacks: a real master with one honest minion, and what each attack costs it.

    .venv/bin/python bench/attacks.py [--seconds 10] [--only NAME] [--json PATH]
        [--nofile 1024] [--quota 64MiB] [--late-jobs 8] [--keep]

The set-up, in a fresh directory under /tmp (master/sandbox.py: real daemon
processes on 127.0.0.1, free ports, log level info as in production):

- a configuration repository with two hosts: `honest`, a real minion daemon
  that pins the master's fingerprint, and `evil`, an identity this script
  holds (its own KeyPair) and drives with raw pyzmq sockets: the compromised
  minion. Both are enrolled and accepted. evil's host directory has
  BIG_FILES files of BIG_FILE_BYTES each, so its files jobs are large
  envelopes (what a stalled subscriber would make the master hold).
- the master and the minions run under `ulimit -n --nofile` (default 1024,
  systemd's default; 0 keeps this process's limit), and with result_quota
  --quota, so the quota is reached within an attack.

Each attack runs for --seconds (every loop is also bounded in count), while
a thread runs `safcm-master run honest ping --json` again and again. A
preparation that is not the attack (starting jobs, making envelopes) runs
before the measured window. The attacks (`--only` takes a name or the part
before its dash, e.g. `--only resubscribe`):

    baseline              no attack: the figures of a quiet master
    resubscribe-stranger  raw SUB (XSUB) connections to the publish port, half
                          with a random CURVE key, half without CURVE, each
                          sending honest's subscription RESUBSCRIBES times
    resubscribe-minion    evil, with a large files job and a ping job waiting
                          for it, opens SUB_CONNECTIONS CURVE connections that
                          never read, subscribes to its own topic again and
                          again (also unsubscribe + subscribe), to honest's
                          topic and to random topics
    topics-stranger       TOPIC_BYTES of random subscription topics from
                          strangers: XSUB with a random CURVE key, and raw TCP
                          that sends a ZMTP greeting and then random frames
    topics-minion         TOPIC_BYTES of random topics (1..400 bytes) from evil
    idle                  IDLE_CONNECTIONS raw TCP connections spread over the
                          publish, return and key ports, half sending nothing,
                          half only the ZMTP 3.0 greeting (CURVE; NULL on the
                          key port), held open; the honest minion is restarted
                          in the middle and the seconds until it answers a
                          ping are noted; the connections the master closed
                          are counted at the end and IDLE_RECHECK s after
    burst                 BURST_CONNECTS bare TCP connects (no data) spread over
                          the publish, return and key ports, as fast as they go
                          (about 0.1 s), held to the window's end: the master
                          reaches its descriptor limit; the master's log lines
                          about failed accepts are counted
    keyflood              KEY_FLOOD_CONNECTIONS plain DEALERs send KEY_REQUESTs
                          to the key port as fast as they are taken (at most
                          MAX_KEY_REQUESTS), while a new connection asks once
                          every KEY_ASK_GAP s, as a minion does; its answered
                          asks are counted
    multipart-stranger    raw TCP to the key port: the greeting exchange, a
                          READY, then MULTIPART_FRAME-byte frames each marked
                          "more", without end (at most MULTIPART_LIMIT bytes),
                          on a new connection whenever the master ends one
    handshake-stranger    HANDSHAKE_CONNECTIONS raw TCP connections to the
                          return port at a time, each a CURVE greeting and all
                          but the last byte of a HANDSHAKE_FRAME handshake
                          frame; again every 0.5 s
    enrol                 unknown keys (fresh KeyPairs, ENROL_BATCH connections
                          at a time) send signed ENROL_REQUESTs on CURVE DEALER
                          connections to the return port, as fast as they can,
                          one each (ENROLS_PER_KEY from every REPEATER-th key),
                          under fresh ids and under "honest"; then a new
                          minion enrols; the pending keys are deleted after
    oversized             evil sends, round after round: a 60 MiB envelope
                          claiming HEARTBEAT (above the socket's message size),
                          a 15 MiB frame claiming HEARTBEAT, and a 15 MiB
                          RESULT with a broken signature
    late-results          --late-jobs files jobs for evil time out unanswered
                          (preparation); then evil sends a result as large as
                          the protocol allows (MAX_RESULT_BYTES) for each, more
                          than the quota in all, and resends a stored one and a
                          different one for a stored job RESENDS times
    db-lock               another process holds `BEGIN IMMEDIATE` on master.db
                          for the whole window; afterwards, the seconds until a
                          ping succeeds again

Figures, one row per attack:

- RSS +MiB: the master's peak memory during the window minus its RSS just
  before: the peak is the largest of VmRSS sampled every SAMPLE_INTERVAL and,
  if VmHWM rose during the window, VmHWM (both /proc/PID/status). "kept" is
  VmRSS SETTLE seconds after the window minus the RSS before.
- ping: the worst wall-clock time of `safcm-master run honest ping --json`
  (CLI start to exit, so it includes the CLI's own start-up, about 0.4 s
  here; the baseline row shows it) over the pings started in the window,
  with ok/total; a ping that failed counts as its whole time and shows in the
  notes. A second thread sends the same RUN itself over the control socket,
  in a loop of its own, and times it to RUN_DONE: "ctl", the master's and
  the minion's part without a Python process starting (which a CPU kept busy
  by the attacker slows too). Failed ctl pings fail a row as CLI pings do.
- log: bytes the master's log file (logs/master.log) grew from just before
  the window to SETTLE seconds after it, and that as MiB per minute of window.
- DB +MiB: growth of master.db plus master.db-wal over the same span.
- CPU s: CPU seconds (user + system, /proc/PID/stat) the master used in it.
- fds: the most descriptors the master held (/proc/PID/fd), sampled.
- alive: the master process still runs and answers `safcm-master keys list`.

Goals (issue 8), each row judged PASS or FAIL against its kind:

    stranger  RSS +MiB <= 50, worst ping <= 1 s with every ping ok,
              log <= 1 MiB/min, alive
    minion    RSS +MiB <= 200, DB growth <= result_quota, alive
              (ping and log are shown; over 1 s or 1 MiB/min is noted)
    local     alive, and a ping succeeds within RECOVERY_GOAL s of the end
    baseline  alive, every ping ok

A daemon that dies is a row that says so (with its log's last lines), not a
traceback; the master is then restarted for the next attack. Traffic goes to
127.0.0.1 only. Everything is stopped and the directory removed at the end,
on error and on Ctrl-C (--keep leaves it).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import platform
import random
import shlex
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import zmq

from bench.fanout import BenchError, cpu_seconds
from bench.swarm import raise_fd_limit, rss_kib, write_json
from safcm.common import codec
from safcm.common.crypto import KeyPair, PublicKeys, seal_at
from safcm.common.errors import EnvelopeError, ProtocolError, SafcmError
from safcm.common.protocol import (
    ENROL_NONCE_LENGTH,
    MASTER_ID,
    MAX_RESULT_BYTES,
    PROTOCOL_VERSION,
    SUBSCRIPTION,
    Channel,
    MsgType,
    decode_plain,
    encode_plain,
    make_enrol_request,
    new_jid,
    open_message_at,
    seal_message_at,
    verify_enrol_reply,
    verify_key_reply,
)
from safcm.master import publish
from safcm.master.control import ControlClient, raise_for_error
from safcm.master.sandbox import Sandbox, wait_for

SOURCE_DIR = pathlib.Path(__file__).resolve().parents[1]
MiB = 1024 * 1024

HONEST, EVIL = "honest", "evil"
# evil's host directory: files of this many bytes, so one files job for it is
# an envelope of about BIG_FILES * BIG_FILE_BYTES.
BIG_FILES = 8
BIG_FILE_BYTES = 1 * MiB
HEARTBEAT = 0.5  # seconds, the honest minion's heartbeat interval
# Goals from issue 8.
STRANGER_RSS_MIB = 50.0
MINION_RSS_MIB = 200.0
PING_GOAL = 1.0  # seconds
LOG_GOAL_MIB_PER_MIN = 1.0
RECOVERY_GOAL = 10.0  # seconds from the end of a db-lock until a ping succeeds

# Measuring.
SAMPLE_INTERVAL = 0.05  # seconds between two RSS/fd samples
SETTLE = 2.0  # seconds after a window before the "after" figures are read
PING_JOB_TIMEOUT = 10  # the ping job's --timeout, seconds
PING_CLI_TIMEOUT = 40.0  # the ping CLI process, seconds (RUN_GRACE is 30 s beyond the job)
PING_GAP = 0.1  # seconds between two pings
MAX_PINGS = 500  # per window
CLI_TIMEOUT = 30.0  # seconds for `keys list` and other set-up commands
READY_TIMEOUT = 60.0  # seconds for a daemon to start, a minion to connect
LOG_TAIL_LINES = 12  # lines of a dead master's log shown in its row

# Attack sizes (every loop is also bounded by the window).
RESUBSCRIBES = 250  # subscriptions per stranger connection, and per evil round
STRANGER_BATCH = 20  # stranger connections open at once
MAX_STRANGER_SOCKETS = 5000
SUB_CONNECTIONS = 6  # evil's stalled subscriber connections (the master allows 4 per key)
MAX_SUB_MESSAGES = 2_000_000
TOPIC_BYTES = 6 * MiB
MAX_TOPIC_LEN = 400
RAW_CHUNK = 64 * 1024
# multipart-stranger: frames of this many bytes, each marked "more", on the
# plain key port, at most this many bytes in all.
MULTIPART_FRAME = 200
MULTIPART_LIMIT = 64 * 1024 * 1024 * 1024
# handshake-stranger: connections at once, each with most of a handshake
# frame of this size (the return socket's largest message).
HANDSHAKE_CONNECTIONS = 64
HANDSHAKE_FRAME = 4 * 1024 * 1024
IDLE_CONNECTIONS = 1000
BURST_CONNECTS = 3000
KEY_FLOOD_CONNECTIONS = 8
MAX_KEY_REQUESTS = 2_000_000
KEY_ASK_GAP = 0.1  # seconds between two honest key requests
KEY_ASK_TIMEOUT_MS = 1000  # an honest key request not answered within is counted lost
# Seconds after the last idle connection was opened when they are counted
# again (outside the window): beyond the master's HANDSHAKE_IVL of 10 s.
IDLE_RECHECK = 15.0
ENROL_BATCH = 64  # unknown-key connections open at once
ENROLS_PER_KEY = 25  # more than the master's burst of 20 per key, from every REPEATER-th key
REPEATER = 8
ENROL_ID_PREFIX = "flood-"
NEWCOMER = "newcomer"  # a legitimate new minion that enrols after the flood
MAX_ENROL_KEYS = 20_000
CLAIM_SHARE = 0.1  # share of flood keys that claim the honest minion's id
OVERSIZED_BYTES = 60 * MiB
UNDER_LIMIT_BYTES = MAX_RESULT_BYTES - MiB  # a sealed result the socket takes in
MAX_OVERSIZED_ROUNDS = 200
RESENDS = 40
RESULT_TTL = 3600  # seconds, evil's result envelopes
SEND_TIMEOUT_MS = 5000  # a send that blocks longer is given up

# The ZMTP 3.0 greeting (RFC 23): signature, version 3.0, mechanism, as-server, filler.
ZMTP_SIGNATURE = b"\xff" + b"\x00" * 8 + b"\x7f"


def zmtp_greeting(mechanism: bytes) -> bytes:
    return ZMTP_SIGNATURE + bytes([3, 0]) + mechanism.ljust(20, b"\x00") + b"\x00" * 32


# ---- figures ----


@dataclass
class Row:
    name: str
    kind: str  # stranger, minion, local, baseline
    seconds: float = 0.0  # the measured window
    rss_before_mib: float = 0.0
    rss_growth_mib: float | None = None
    rss_kept_mib: float | None = None
    pings: list[dict] = field(default_factory=list)  # {"seconds", "ok", "error"}
    control_pings: list[dict] = field(default_factory=list)  # the same, over the control socket
    log_bytes: int | None = None
    log_mib_per_min: float | None = None
    db_growth_mib: float | None = None
    cpu_seconds: float | None = None
    fd_before: int | None = None
    fd_peak: int | None = None
    survived: bool | None = None
    recovery_seconds: float | None = None  # db-lock: release to the first ping that succeeds
    error: str | None = None  # the attack could not run (or the master died)
    notes: list[str] = field(default_factory=list)
    verdict: str = "-"
    failed_goals: list[str] = field(default_factory=list)

    @property
    def worst_ping(self) -> float | None:
        return max((p["seconds"] for p in self.pings), default=None)

    @property
    def worst_control_ping(self) -> float | None:
        return max((p["seconds"] for p in self.control_pings), default=None)

    @property
    def pings_ok(self) -> int:
        return sum(1 for p in self.pings if p["ok"])


def judge(row: Row, quota: int) -> None:
    """Set the row's verdict against its kind's goals (module docstring)."""
    failed = []
    if not row.survived:
        failed.append("the master did not survive")
    if row.error and row.survived:
        failed.append(f"the attack did not run: {row.error}")
    growth, ping, log_rate = row.rss_growth_mib, row.worst_ping, row.log_mib_per_min
    if row.kind in ("stranger", "baseline"):
        if row.kind == "stranger" and growth is not None and growth > STRANGER_RSS_MIB:
            failed.append(f"RSS +{growth:.0f} MiB > {STRANGER_RSS_MIB:.0f}")
        if ping is not None and ping > PING_GOAL:
            failed.append(f"worst ping {ping:.2f} s > {PING_GOAL:.0f} s")
        if row.pings_ok < len(row.pings) or not row.pings:
            failed.append(f"{len(row.pings) - row.pings_ok} of {len(row.pings)} pings failed")
        control_failed = sum(1 for p in row.control_pings if not p["ok"])
        if control_failed:
            failed.append(f"{control_failed} of {len(row.control_pings)} ctl pings failed")
        if log_rate is not None and log_rate > LOG_GOAL_MIB_PER_MIN:
            failed.append(f"log {log_rate:.2f} MiB/min > {LOG_GOAL_MIB_PER_MIN:.0f}")
    elif row.kind == "minion":
        if growth is not None and growth > MINION_RSS_MIB:
            failed.append(f"RSS +{growth:.0f} MiB > {MINION_RSS_MIB:.0f}")
        if row.db_growth_mib is not None and row.db_growth_mib * MiB > quota:
            failed.append(f"DB +{row.db_growth_mib:.0f} MiB > quota {quota / MiB:.0f} MiB")
        if ping is not None and ping > PING_GOAL:
            row.notes.append(f"(not a goal) worst ping {ping:.2f} s > {PING_GOAL:.0f} s")
        if log_rate is not None and log_rate > LOG_GOAL_MIB_PER_MIN:
            row.notes.append(f"(not a goal) log {log_rate:.2f} MiB/min > 1")
    elif row.kind == "local" and (
        row.recovery_seconds is None or row.recovery_seconds > RECOVERY_GOAL
    ):
        failed.append(f"no ping succeeded within {RECOVERY_GOAL:.0f} s of the end")
    row.failed_goals = failed
    row.verdict = "FAIL" if failed else "PASS"


# ---- the master, seen from outside ----


def db_bytes(state_dir: str) -> int:
    total = 0
    for name in ("master.db", "master.db-wal"):
        with contextlib.suppress(FileNotFoundError):
            total += os.path.getsize(os.path.join(state_dir, name))
    return total


def fd_count(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


class Sampler(threading.Thread):
    """Samples the master's VmRSS and descriptor count until stopped."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.stop = threading.Event()
        self.rss_peak = 0
        self.fd_peak = 0

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.rss_peak = max(self.rss_peak, rss_kib("VmRSS", self.pid))
            except (OSError, LookupError):
                return  # the master is gone
            self.fd_peak = max(self.fd_peak, fd_count(self.pid) or 0)
            self.stop.wait(SAMPLE_INTERVAL)


class Pinger(threading.Thread):
    """Runs `ping` (ping or control_ping) in a loop until stopped."""

    def __init__(self, sb: Sandbox, ping: Callable[[Sandbox], dict]) -> None:
        super().__init__(daemon=True)
        self.sb = sb
        self.ping = ping
        self.stop = threading.Event()
        self.resume = threading.Event()  # cleared: pause between pings
        self.resume.set()
        self.busy = threading.Lock()  # held while a ping runs
        self.pings: list[dict] = []  # {"seconds", "ok", "error"}

    def run(self) -> None:
        while not self.stop.is_set() and len(self.pings) < MAX_PINGS:
            self.resume.wait()
            if self.stop.is_set():
                return
            with self.busy:
                self.pings.append(self.ping(self.sb))
            self.stop.wait(PING_GAP)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """No ping runs inside: waits for the one in flight, starts none."""
        self.resume.clear()
        try:
            with self.busy:
                yield
        finally:
            self.resume.set()


def ping(sb: Sandbox) -> dict:
    """One `run honest ping --json`, timed from start to exit."""
    started = time.perf_counter()
    try:
        proc = sb.cli(
            "run",
            HONEST,
            "ping",
            "--json",
            "--timeout",
            str(PING_JOB_TIMEOUT),
            timeout=PING_CLI_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        return {"seconds": PING_CLI_TIMEOUT, "ok": False, "error": "the CLI did not exit"}
    seconds = time.perf_counter() - started
    error = None
    if proc.returncode != 0:
        error = f"exit {proc.returncode}: " + (proc.stderr.strip() or proc.stdout.strip())[-200:]
    return {"seconds": seconds, "ok": proc.returncode == 0, "error": error}


def control_ping(sb: Sandbox) -> dict:
    """The same run as ping(), from this process over the control socket: the
    master's and the minion's part, without a CLI process starting."""
    started = time.perf_counter()
    request = {
        "target": HONEST,
        "group": False,
        "module": "ping",
        "dry_run": False,
        "timeout": float(PING_JOB_TIMEOUT),
    }
    status = None
    try:
        with ControlClient(sb.control_path) as client:
            client.send(MsgType.RUN, request)
            for reply in client.replies(PING_CLI_TIMEOUT):
                raise_for_error(reply)
                if reply.type is MsgType.RUN_HOST_RESULT:
                    status = reply.body["status"]
                if reply.type is MsgType.RUN_DONE:
                    break
    except (SafcmError, OSError) as e:
        return {"seconds": time.perf_counter() - started, "ok": False, "error": str(e)}
    seconds = time.perf_counter() - started
    error = None if status == "ok" else f"the honest minion's status: {status}"
    return {"seconds": seconds, "ok": status == "ok", "error": error}


def master_answers(sb: Sandbox) -> bool:
    if not sb.master.running:
        return False
    try:
        return sb.cli("keys", "list", timeout=CLI_TIMEOUT).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def control(sb: Sandbox, msg_type: MsgType, body: dict) -> dict:
    """One request on the master's control socket; its first reply's body."""
    try:
        with ControlClient(sb.control_path) as client:
            reply = client.request(msg_type, body)
    except (SafcmError, OSError) as e:
        raise BenchError(f"{msg_type.name} on the control socket: {e}") from e
    return reply.body


def keys_of(sb: Sandbox) -> dict[str, dict]:
    body = control(sb, MsgType.KEYS, {"action": "list", "ids": []})
    return {k["id"]: k for k in body["keys"]}


def jids_for(sb: Sandbox, host: str) -> set[str]:
    body = control(
        sb,
        MsgType.JOBS,
        {"action": "list", "host": host, "target": None, "limit": 1000, "jid": None},
    )
    return {j["jid"] for j in body["jobs"]}


def log_tail(sb: Sandbox, lines: int = LOG_TAIL_LINES) -> str:
    return "\n".join(sb.master.log_text().splitlines()[-lines:])


# ---- the compromised minion: our keys, raw sockets ----


class Evil:
    """An accepted minion identity this script holds and drives with raw sockets."""

    def __init__(self, sb: Sandbox, ctx: zmq.Context, minion_id: str = EVIL) -> None:
        self.sb = sb
        self.ctx = ctx
        self.id = minion_id
        self.keys = KeyPair.generate()
        self.master_keys = fetch_master_keys(sb, ctx)
        self.last_id: str | None = None
        self.dealer = self.curve_socket(zmq.DEALER, "return_port")

    def curve_socket(self, kind: int, port: str, keys: KeyPair | None = None) -> zmq.Socket:
        keys = keys or self.keys
        sock = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDTIMEO, SEND_TIMEOUT_MS)
        sock.setsockopt(zmq.CURVE_SERVERKEY, self.master_keys.curve)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public.curve)
        sock.setsockopt(zmq.CURVE_SECRETKEY, keys.curve_secret().reveal())
        sock.connect(address(self.sb, port))
        return sock

    def enrol(self) -> str:
        nonce = os.urandom(ENROL_NONCE_LENGTH)
        body = make_enrol_request(self.id, self.keys, nonce=nonce, now=time.time())
        self.dealer.send(encode_plain(MsgType.ENROL_REQUEST, body))
        frame = self.recv(READY_TIMEOUT)
        reply = decode_plain(frame, Channel.NETWORK)
        verify_enrol_reply(
            reply, minion_id=self.id, nonce=nonce, pinned=self.sb.master_fingerprint()
        )
        return reply.body["state"]

    def recv(self, timeout: float) -> bytes:
        if not self.dealer.poll(timeout * 1000):
            raise BenchError(f"{self.id}: no reply from the master in {timeout:.0f} s")
        return self.dealer.recv()

    def drain(self) -> list[bytes]:
        """Every frame the master sent us so far."""
        frames = []
        while self.dealer.poll(0):
            frames.append(self.dealer.recv())
        return frames

    def receipts(self, frames: list[bytes]) -> list[str]:
        """The jids of the RESULT_RECEIPTs among `frames`."""
        jids = []
        for frame in frames:
            try:
                msg = open_message_at(
                    frame,
                    me=self.id,
                    my_keys=self.keys,
                    sender_keys={MASTER_ID: self.master_keys}.get,
                    now=time.time(),
                )
            except (EnvelopeError, ProtocolError):
                continue
            if msg.type is MsgType.RESULT_RECEIPT:
                jids.append(msg.body["jid"])
        return jids

    def seal(self, msg_type: MsgType, body: dict, jid: str | None = None, ttl: int = 60) -> bytes:
        now = time.time()
        if jid is None:
            jid = self.last_id = new_jid(now, self.last_id)
        return seal_message_at(
            msg_type,
            body,
            jid=jid,
            sender=self.id,
            sender_keys=self.keys,
            recipient=MASTER_ID,
            recipient_keys=self.master_keys,
            now=now,
            ttl=ttl,
        )

    def close(self) -> None:
        self.dealer.close(0)


def address(sb: Sandbox, port: str) -> str:
    return f"tcp://127.0.0.1:{sb.master.settings[port]}"


def fetch_master_keys(sb: Sandbox, ctx: zmq.Context) -> PublicKeys:
    """The master's public keys (with its CURVE key) from its key port, pinned
    to the fingerprint in its key file."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(address(sb, "key_port"))
        nonce = os.urandom(ENROL_NONCE_LENGTH)
        sock.send(encode_plain(MsgType.KEY_REQUEST, {"nonce": nonce}))
        if not sock.poll(READY_TIMEOUT * 1000):
            raise BenchError("the master's key port does not answer")
        msg = decode_plain(sock.recv(), Channel.KEY)
        return verify_key_reply(msg, nonce=nonce, pinned=sb.master_fingerprint())
    finally:
        sock.close(0)


def send_bounded(sock: zmq.Socket, frame: bytes, until: float) -> bool:
    """Send without blocking past `until`; False if it could not be queued."""
    while time.monotonic() < until:
        try:
            sock.send(frame, zmq.NOBLOCK)
            return True
        except zmq.Again:
            if not sock.poll(100, zmq.POLLOUT):
                continue
    return False


# ---- the laboratory ----


class Lab:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.base = tempfile.mkdtemp(prefix="safcm-attacks-", dir="/tmp")
        self.ctx = zmq.Context()
        self.ctx.setsockopt(zmq.LINGER, 0)
        self.ctx.set(zmq.MAX_SOCKETS, 65536)
        repo = pathlib.Path(self.base) / "repo"
        generate_repo(repo)
        python = sys.executable
        if args.nofile:
            python = os.path.join(self.base, "python-nofile")
            with open(python, "w") as f:
                f.write(
                    f'#!/bin/sh\nulimit -n {args.nofile}\nexec {shlex.quote(sys.executable)} "$@"\n'
                )
            os.chmod(python, 0o755)
        self.sb = Sandbox(
            os.path.join(self.base, "lab"),
            str(repo),
            python=python,
            heartbeat_interval=HEARTBEAT,
            log_level="info",
            result_quota=args.quota,
            job_timeout=30,
        )
        self.evil: Evil | None = None
        self.pingers: list[Pinger] = []

    @property
    def pid(self) -> int:
        if not self.sb.master.running:
            raise BenchError(f"the master is not running\n{log_tail(self.sb)}")
        return self.sb.master.proc.pid

    @property
    def state_dir(self) -> str:
        return self.sb.master.settings["state_dir"]

    def start(self) -> None:
        """Master, honest minion, and evil: all enrolled and accepted."""
        try:
            self.sb.start_master()
        except (RuntimeError, TimeoutError) as e:
            raise BenchError(f"the master did not start: {e}") from None
        self.sb.add_minion(HONEST)
        self.sb.start_minion(HONEST)
        self.wait(lambda: HONEST in keys_of(self.sb), "the honest minion to enrol")
        self.evil = Evil(self.sb, self.ctx)
        if self.evil.enrol() != "pending":
            raise BenchError("evil's first enrolment was not left pending")
        accept = self.sb.cli("keys", "accept", HONEST, EVIL, timeout=CLI_TIMEOUT)
        if accept.returncode != 0:
            raise BenchError(f"keys accept failed: {accept.stderr.strip()}")
        if (state := self.evil.enrol()) != "accepted":
            raise BenchError(f"evil is {state} after keys accept")
        self.wait_honest()

    def wait(self, predicate: Callable[[], object], what: str) -> None:
        try:
            wait_for(predicate, READY_TIMEOUT, what)
        except TimeoutError as e:
            raise BenchError(str(e)) from None

    def wait_honest(self) -> float:
        """Wait until the honest minion answers a ping; the seconds it took."""
        started = time.monotonic()
        deadline = started + READY_TIMEOUT
        while time.monotonic() < deadline:
            if not self.sb.master.running:
                raise BenchError(f"the master died\n{log_tail(self.sb)}")
            if ping(self.sb)["ok"]:
                return time.monotonic() - started
            time.sleep(0.2)
        raise BenchError(f"the honest minion answered no ping in {READY_TIMEOUT:.0f} s")

    def restart_master(self) -> None:
        self.sb.stop(self.sb.master)
        try:
            self.sb.start_master()
        except (RuntimeError, TimeoutError) as e:
            raise BenchError(f"the master did not restart: {e}") from None
        if self.evil is not None:
            self.evil.close()
            keys = self.evil.keys
            self.evil = Evil(self.sb, self.ctx)
            self.evil.keys = keys
            self.evil.dealer.close(0)
            self.evil.dealer = self.evil.curve_socket(zmq.DEALER, "return_port")

    @contextlib.contextmanager
    def window(self, row: Row) -> Iterator[float]:
        """Measure the master while the body attacks; yields the window's end (monotonic)."""
        pid = self.pid
        rss_before = rss_kib("VmRSS", pid)
        hwm_before = rss_kib("VmHWM", pid)
        log_before = os.path.getsize(self.sb.master.log)
        db_before = db_bytes(self.state_dir)
        cpu_before = cpu_seconds(pid)
        row.rss_before_mib = rss_before / 1024
        row.fd_before = fd_count(pid)
        sampler = Sampler(pid)
        self.pingers = [Pinger(self.sb, ping), Pinger(self.sb, control_ping)]
        started = time.monotonic()
        sampler.start()
        for pinger in self.pingers:
            pinger.start()
        try:
            yield started + self.args.seconds
        finally:
            row.seconds = time.monotonic() - started
            for pinger in self.pingers:
                pinger.stop.set()
                pinger.resume.set()
            for pinger in self.pingers:
                pinger.join(PING_CLI_TIMEOUT + 5)
            row.pings = list(self.pingers[0].pings)
            row.control_pings = list(self.pingers[1].pings)
            time.sleep(SETTLE)
            sampler.stop.set()
            sampler.join()
            row.fd_peak = sampler.fd_peak
            row.log_bytes = os.path.getsize(self.sb.master.log) - log_before
            row.log_mib_per_min = row.log_bytes / MiB / (row.seconds / 60)
            row.db_growth_mib = (db_bytes(self.state_dir) - db_before) / MiB
            if self.sb.master.running:
                with contextlib.suppress(OSError, LookupError):
                    peak = sampler.rss_peak
                    hwm = rss_kib("VmHWM", pid)
                    if hwm > hwm_before:
                        peak = max(peak, hwm)
                    row.rss_growth_mib = (peak - rss_before) / 1024
                    row.rss_kept_mib = (rss_kib("VmRSS", pid) - rss_before) / 1024
                    row.cpu_seconds = cpu_seconds(pid) - cpu_before
            else:
                row.rss_growth_mib = (sampler.rss_peak - rss_before) / 1024

    @contextlib.contextmanager
    def pings_paused(self) -> Iterator[None]:
        """No ping runs inside (the one in flight finishes first)."""
        with contextlib.ExitStack() as stack:
            for pinger in self.pingers:
                stack.enter_context(pinger.paused())
            yield

    def close(self) -> None:
        if self.evil is not None:
            self.evil.close()
        self.sb.close()
        self.ctx.destroy(0)
        if not self.args.keep:
            shutil.rmtree(self.base, ignore_errors=True)


def generate_repo(root: pathlib.Path) -> None:
    root.mkdir(parents=True)
    (root / "config.yaml").write_text("default_user: root\ndefault_group: root\n")
    (root / "hosts.yaml").write_text(f"- name: {HONEST}\n- name: {EVIL}\n")
    (root / "groups.yaml").write_text(f"bench: [{HONEST}, {EVIL}]\n")
    directory = root / EVIL / "files" / "srv" / "evil"
    directory.mkdir(parents=True)
    for n in range(BIG_FILES):
        # Hex text, so nothing in the compiler mistakes it for anything else.
        (directory / f"f{n:02d}.txt").write_text(os.urandom(BIG_FILE_BYTES // 2).hex())


def evil_paths() -> list[str]:
    return [f"/srv/evil/f{n:02d}.txt" for n in range(BIG_FILES)]


def spawn_runs(lab: Lab, target: str, module: str, timeout: float, count: int) -> list:
    return [
        lab.sb.spawn_cli("run", target, module, "--json", "--timeout", str(timeout))
        for _ in range(count)
    ]


def reap(procs: list, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def wait_new_jobs(lab: Lab, host: str, before: set[str], count: int) -> set[str]:
    new: set[str] = set()

    def ready() -> bool:
        nonlocal new
        new = jids_for(lab.sb, host) - before
        return len(new) >= count

    lab.wait(ready, f"{count} new jobs for {host}")
    return new


# ---- the attacks ----
# Each takes the lab and the row, prepares, then attacks inside lab.window(row)
# until the window's end, and adds what it counted to row.notes.


def attack_baseline(lab: Lab, row: Row) -> None:
    with lab.window(row) as until:
        while time.monotonic() < until:
            time.sleep(0.1)


def attack_resubscribe_stranger(lab: Lab, row: Row) -> None:
    topic = b"\x01" + SUBSCRIPTION  # as a minion subscribes
    opened = sent = 0
    with lab.window(row) as until:
        while time.monotonic() < until and opened < MAX_STRANGER_SOCKETS:
            socks = []
            for i in range(STRANGER_BATCH):
                sock = lab.ctx.socket(zmq.XSUB)
                sock.setsockopt(zmq.LINGER, 0)
                sock.setsockopt(zmq.RCVHWM, 1)
                if i % 2 == 0:  # a random CURVE key; the others speak NULL
                    keys = KeyPair.generate()
                    sock.setsockopt(zmq.CURVE_SERVERKEY, lab.evil.master_keys.curve)
                    sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public.curve)
                    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.curve_secret().reveal())
                sock.connect(address(lab.sb, "publish_port"))
                socks.append(sock)
                opened += 1
            for sock in socks:
                for _ in range(RESUBSCRIBES):
                    with contextlib.suppress(zmq.Again):
                        sock.send(topic, zmq.NOBLOCK)
                        sent += 1
            time.sleep(0.1)
            received = sum(1 for s in socks if s.poll(0))
            if received:
                row.notes.append(f"a stranger connection received {received} messages")
            for sock in socks:
                sock.close(0)
    row.notes.append(
        f"{opened} stranger connections (half CURVE with random keys, half NULL), "
        f"{sent} subscriptions queued"
    )


def attack_resubscribe_minion(lab: Lab, row: Row) -> None:
    evil = lab.evil
    before = jids_for(lab.sb, EVIL)
    timeout = lab.args.seconds + 30
    runs = spawn_runs(lab, EVIL, "files", timeout, 1) + spawn_runs(lab, EVIL, "ping", timeout, 1)
    try:
        wait_new_jobs(lab, EVIL, before, 2)
        own = SUBSCRIPTION
        # Topics of its choosing: the master numbers minions from 1 (Topics).
        others = [n.to_bytes(publish.TOPIC_BYTES, "big") for n in range(3)]
        socks = [evil.curve_socket(zmq.XSUB, "publish_port") for _ in range(SUB_CONNECTIONS)]
        for sock in socks:
            sock.setsockopt(zmq.RCVHWM, 1)
        sent = rounds = 0
        with lab.window(row) as until:
            while time.monotonic() < until and sent < MAX_SUB_MESSAGES:
                for sock in socks:
                    batch = [b"\x01" + own] * RESUBSCRIBES
                    batch += [b"\x00" + own, b"\x01" + own] * (RESUBSCRIBES // 2)
                    batch += [b"\x01" + t for t in others]
                    batch += [b"\x01" + os.urandom(random.randint(1, 64)) for _ in range(10)]
                    for message in batch:
                        with contextlib.suppress(zmq.Again):
                            sock.send(message, zmq.NOBLOCK)
                            sent += 1
                rounds += 1
                time.sleep(0.05)
        for sock in socks:
            sock.close(0)
        row.notes.append(
            f"{SUB_CONNECTIONS} never-reading connections of evil, {rounds} rounds, {sent} "
            f"subscription messages; waiting for evil: one files job "
            f"(~{BIG_FILES * BIG_FILE_BYTES / MiB:.0f} MiB envelope) and one ping"
        )
    finally:
        for proc in runs:
            proc.kill()
        reap(runs, 5)


def attack_topics_stranger(lab: Lab, row: Row) -> None:
    sent_sub = sent_raw = refused_after = 0
    raw_connections = 0
    with lab.window(row) as until:
        # XSUB with a random CURVE key: half the bytes.
        keys = KeyPair.generate()
        sock = lab.ctx.socket(zmq.XSUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.CURVE_SERVERKEY, lab.evil.master_keys.curve)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public.curve)
        sock.setsockopt(zmq.CURVE_SECRETKEY, keys.curve_secret().reveal())
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.connect(address(lab.sb, "publish_port"))
        while sent_sub < TOPIC_BYTES // 2 and time.monotonic() < until:
            topic = os.urandom(random.randint(1, MAX_TOPIC_LEN))
            with contextlib.suppress(zmq.Again):
                sock.send(b"\x01" + topic, zmq.NOBLOCK)
                sent_sub += 1 + len(topic)
        # Raw TCP: a CURVE greeting, then random bytes shaped as ZMTP frames.
        port = lab.sb.master.settings["publish_port"]
        while sent_raw < TOPIC_BYTES // 2 and time.monotonic() < until:
            raw_connections += 1
            with socket.create_connection(("127.0.0.1", port), timeout=2) as raw:
                try:
                    raw.sendall(zmtp_greeting(b"CURVE"))
                    while sent_raw < TOPIC_BYTES // 2 and time.monotonic() < until:
                        topic = os.urandom(random.randint(1, 254))
                        raw.sendall(bytes([0, len(topic) + 1, 1]) + topic)
                        sent_raw += len(topic) + 3
                except OSError:
                    refused_after += 1
        sock.close(0)
        while time.monotonic() < until:
            time.sleep(0.1)
    row.notes.append(
        f"{sent_sub / MiB:.1f} MiB of random subscriptions queued on a random-key CURVE "
        f"connection; {sent_raw / MiB:.1f} MiB sent raw after a CURVE greeting on "
        f"{raw_connections} TCP connections ({refused_after} closed by the master)"
    )


def attack_topics_minion(lab: Lab, row: Row) -> None:
    sock = lab.evil.curve_socket(zmq.XSUB, "publish_port")
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 1)
    sent = count = 0
    try:
        with lab.window(row) as until:
            while sent < TOPIC_BYTES and time.monotonic() < until:
                topic = os.urandom(random.randint(1, MAX_TOPIC_LEN))
                with contextlib.suppress(zmq.Again):
                    sock.send(b"\x01" + topic, zmq.NOBLOCK)
                    sent += 1 + len(topic)
                    count += 1
            while time.monotonic() < until:
                time.sleep(0.1)
    finally:
        sock.close(0)
    row.notes.append(f"evil sent {count} random subscriptions, {sent / MiB:.1f} MiB")


def attack_idle(lab: Lab, row: Row) -> None:
    ports = [lab.sb.master.settings[p] for p in ("publish_port", "return_port", "key_port")]
    greetings = [zmtp_greeting(b"CURVE"), zmtp_greeting(b"CURVE"), zmtp_greeting(b"NULL")]
    conns: list[socket.socket] = []
    failed = 0
    reconnect: float | None = None
    try:
        with lab.window(row) as until:
            for i in range(IDLE_CONNECTIONS):
                if time.monotonic() >= until:
                    break
                which = i % 3
                try:
                    s = socket.create_connection(("127.0.0.1", ports[which]), timeout=2)
                    if (i // 3) % 2 == 1:
                        s.sendall(greetings[which])
                    s.setblocking(False)
                    conns.append(s)
                except OSError:
                    failed += 1
            opened_at = time.monotonic()
            # The honest minion restarts while the connections are held.
            with lab.pings_paused():
                lab.sb.stop(lab.sb.minions[HONEST])
                lab.sb.start_minion(HONEST)
                try:
                    reconnect = lab.wait_honest()
                except BenchError as e:
                    row.notes.append(f"restarted honest minion: {e}")
            while time.monotonic() < until:
                time.sleep(0.1)
            closed = {i for i, s in enumerate(conns) if _closed_by_peer(s)}
            closed_in_window = set(closed)
            held_for = time.monotonic() - opened_at
        # After the window: are the rest dropped by the handshake deadline?
        later = opened_at + IDLE_RECHECK
        while time.monotonic() < later:
            time.sleep(0.2)
        closed |= {i for i, s in enumerate(conns) if i not in closed and _closed_by_peer(s)}
        fds_after = fd_count(lab.pid)
    finally:
        for s in conns:
            s.close()
    row.notes.append(
        f"{len(conns)} idle connections opened ({failed} refused); closed by the master: "
        f"{len(closed_in_window)} within {held_for:.0f} s of the last opening, "
        f"{len(closed)} within {IDLE_RECHECK:.0f} s; master fds {row.fd_before} before, "
        f"peak {row.fd_peak}, {fds_after} at {IDLE_RECHECK:.0f} s"
    )
    if reconnect is not None:
        row.notes.append(f"the restarted honest minion answered a ping after {reconnect:.1f} s")


def _closed_by_peer(s: socket.socket) -> bool:
    try:
        while True:
            data = s.recv(RAW_CHUNK)
            if not data:
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def attack_burst(lab: Lab, row: Row) -> None:
    ports = [lab.sb.master.settings[p] for p in ("publish_port", "return_port", "key_port")]
    conns: list[socket.socket] = []
    log_before = lab.sb.master.log_text().count("accept failed")
    try:
        with lab.window(row) as until:
            started = time.monotonic()
            for i in range(BURST_CONNECTS):
                if time.monotonic() >= until:
                    break
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                conns.append(s)
                s.setblocking(False)
                s.connect_ex(("127.0.0.1", ports[i % len(ports)]))
            issued = time.monotonic() - started
            while time.monotonic() < until:
                time.sleep(0.1)
    finally:
        for s in conns:
            s.close()
    failed_accepts = lab.sb.master.log_text().count("accept failed") - log_before
    row.notes.append(
        f"{len(conns)} connects in {issued:.2f} s; master fds {row.fd_before} before, "
        f"peak {row.fd_peak} (limit {lab.args.nofile or 'unchanged'}); "
        f"{failed_accepts} 'accept failed' log lines"
    )


def _key_port_ready(lab: Lab) -> socket.socket:
    """A raw connection to the key port past the greeting exchange and READY."""
    s = socket.create_connection(("127.0.0.1", lab.sb.master.settings["key_port"]), timeout=5)
    greeting = zmtp_greeting(b"NULL")
    s.sendall(greeting)
    got = b""
    while len(got) < len(greeting):  # libzmq drops a READY sent before it greeted
        data = s.recv(len(greeting) - len(got))
        if not data:
            raise OSError("the key port closed during the greeting")
        got += data
    ready = b"\x05READY\x0bSocket-Type" + struct.pack(">I", 6) + b"DEALER"
    s.sendall(bytes([0x04, len(ready)]) + ready)
    return s


def attack_multipart_stranger(lab: Lab, row: Row) -> None:
    chunk = (bytes([0x01, MULTIPART_FRAME]) + b"x" * MULTIPART_FRAME) * 1000
    sent, ended = 0, 0
    with lab.window(row) as until:
        while time.monotonic() < until and sent < MULTIPART_LIMIT:
            s = _key_port_ready(lab)
            try:
                while time.monotonic() < until and sent < MULTIPART_LIMIT:
                    s.sendall(chunk)
                    sent += len(chunk)
            except OSError:
                ended += 1  # the master ended it: open another
            finally:
                s.close()
    row.notes.append(
        f"{sent / 2**20:.1f} MiB of {MULTIPART_FRAME}-byte 'more' frames sent to the key "
        f"port; {ended} connections ended by the master"
    )


def attack_handshake_stranger(lab: Lab, row: Row) -> None:
    port = lab.sb.master.settings["return_port"]
    head = zmtp_greeting(b"CURVE") + bytes([0x06]) + struct.pack(">Q", HANDSHAKE_FRAME)
    body = bytes(HANDSHAKE_FRAME - 1)
    opened = cut = 0
    with lab.window(row) as until:
        while time.monotonic() < until:
            conns = []
            for _ in range(HANDSHAKE_CONNECTIONS):
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                opened += 1
                try:
                    s.sendall(head)
                    s.sendall(body)
                    conns.append(s)
                except OSError:
                    cut += 1
                    s.close()
            time.sleep(0.5)
            for s in conns:
                s.setblocking(False)
                cut += _closed_by_peer(s)
                s.close()
    row.notes.append(
        f"{opened} connections each sent most of a {HANDSHAKE_FRAME // 2**20} MiB "
        f"handshake frame; {cut} cut by the master within 0.5 s"
    )


def attack_keyflood(lab: Lab, row: Row) -> None:
    request = encode_plain(MsgType.KEY_REQUEST, {"nonce": b"\0" * ENROL_NONCE_LENGTH})
    flooders = []
    for _ in range(KEY_FLOOD_CONNECTIONS):
        sock = lab.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.RCVHWM, 1)  # the answers are not read
        sock.connect(address(lab.sb, "key_port"))
        flooders.append(sock)
    sent, asked, answered = 0, 0, 0
    stop = threading.Event()

    def flood() -> None:
        nonlocal sent
        while not stop.is_set() and sent < MAX_KEY_REQUESTS:
            for sock in flooders:
                with contextlib.suppress(zmq.Again):
                    sock.send(request, zmq.NOBLOCK)
                    sent += 1

    flooder = threading.Thread(target=flood, daemon=True)
    try:
        with lab.window(row) as until:
            flooder.start()
            while time.monotonic() < until:
                honest = lab.ctx.socket(zmq.DEALER)
                try:
                    honest.connect(address(lab.sb, "key_port"))
                    nonce = os.urandom(ENROL_NONCE_LENGTH)
                    honest.send(encode_plain(MsgType.KEY_REQUEST, {"nonce": nonce}))
                    asked += 1
                    answered += bool(honest.poll(KEY_ASK_TIMEOUT_MS))
                finally:
                    honest.close(0)
                time.sleep(KEY_ASK_GAP)
            stop.set()
            flooder.join()
    finally:
        stop.set()
        for sock in flooders:
            sock.close(0)
    row.notes.append(
        f"{sent} key requests from {KEY_FLOOD_CONNECTIONS} connections "
        f"({sent / max(row.seconds, 1e-9):.0f}/s); honest key requests answered within "
        f"{KEY_ASK_TIMEOUT_MS} ms: {answered}/{asked}"
    )


def attack_enrol(lab: Lab, row: Row) -> None:
    evil = lab.evil
    keys_sent = requests = replies = 0
    try:
        with lab.window(row) as until:
            while time.monotonic() < until and keys_sent < MAX_ENROL_KEYS:
                socks = []
                for _ in range(ENROL_BATCH):
                    keys = KeyPair.generate()
                    claim = random.random() < CLAIM_SHARE
                    minion_id = HONEST if claim else ENROL_ID_PREFIX + os.urandom(6).hex()
                    sock = evil.curve_socket(zmq.DEALER, "return_port", keys)
                    sock.setsockopt(zmq.SNDHWM, ENROLS_PER_KEY)
                    repeats = ENROLS_PER_KEY if keys_sent % REPEATER == 0 else 1
                    for _ in range(repeats):
                        body = make_enrol_request(
                            minion_id, keys, nonce=os.urandom(ENROL_NONCE_LENGTH), now=time.time()
                        )
                        with contextlib.suppress(zmq.Again):
                            sock.send(encode_plain(MsgType.ENROL_REQUEST, body), zmq.NOBLOCK)
                            requests += 1
                    socks.append(sock)
                    keys_sent += 1
                time.sleep(0.05)
                for sock in socks:
                    while sock.poll(0):
                        sock.recv()
                        replies += 1
                    sock.close(0)
        pending = sum(1 for k in keys_of(lab.sb).values() if k["state"] == "pending")
        body = control(lab.sb, MsgType.KEYS, {"action": "list", "ids": [HONEST]})
        refused = sum(r["attempts"] for r in body["refused"])
        newcomer = Evil(lab.sb, lab.ctx, NEWCOMER)
        try:
            newcomer_state = newcomer.enrol()
        except BenchError as e:
            newcomer_state = str(e)
        finally:
            newcomer.close()
    finally:
        with contextlib.suppress(BenchError):
            control(
                lab.sb, MsgType.KEYS, {"action": "delete", "ids": [ENROL_ID_PREFIX + "*", NEWCOMER]}
            )
    row.notes.append(
        f"{keys_sent} unknown keys sent {requests} enrol requests, got {replies} replies; "
        f"{pending} keys pending after (deleted afterwards), {refused} refused attempts on "
        f"{HONEST!r}'s id recorded; a new minion enrolling right after: {newcomer_state}"
    )


def heartbeat_envelope(evil: Evil, plaintext: bytes) -> bytes:
    """A signed envelope claiming HEARTBEAT around any plaintext (no schema check)."""
    now = time.time()
    return seal_at(
        plaintext,
        version=PROTOCOL_VERSION,
        msg_type=int(MsgType.HEARTBEAT),
        jid=new_jid(now),
        sender=evil.id,
        recipient=MASTER_ID,
        sender_keys=evil.keys,
        recipient_keys=evil.master_keys,
        now=now,
        ttl=3600,
    )


def big_result(size: int) -> dict:
    """A files result that reports evil's paths, with one diff making it about `size` bytes."""
    now = time.time()
    state = {"type": "file", "mode": 0o644, "uid": 0, "gid": 0, "user": "root", "group": "root"}
    changes = [
        {
            "path": p,
            "created": True,
            "new": state,
            "old": None,
            "diff": None,
            "outcome": "applied",
            "reason": "",
        }
        for p in evil_paths()
    ]
    body = {
        "module": "files",
        "status": "ok",
        "started": now,
        "finished": now,
        "apply": {
            "dry_run": False,
            "changes": changes,
            "triggers": [],
            "failures": [],
            "owed": [],
            "duration": 0.1,
        },
        "ping": None,
        "error": None,
    }
    room = size - len(codec.pack(body)) - 16
    changes[0]["diff"] = "+" * max(0, room)
    return body


def attack_oversized(lab: Lab, row: Row) -> None:
    evil = lab.evil
    huge = heartbeat_envelope(evil, bytes(OVERSIZED_BYTES))
    small = heartbeat_envelope(evil, b"")
    # A small heartbeat's header and signature around 15 MiB of junk: the claim
    # says HEARTBEAT, the length says otherwise.
    forged = small[:-64] + os.urandom(UNDER_LIMIT_BYTES) + small[-64:]
    result = evil.seal(MsgType.RESULT, big_result(UNDER_LIMIT_BYTES), jid=new_jid(time.time()))
    bad_signature = result[:-1] + bytes([result[-1] ^ 0xFF])
    counts = {"60 MiB HEARTBEAT": 0, "15 MiB HEARTBEAT": 0, "15 MiB RESULT, bad signature": 0}
    rounds = 0
    with lab.window(row) as until:
        while time.monotonic() < until and rounds < MAX_OVERSIZED_ROUNDS:
            rounds += 1
            # The 60 MiB frame is above the socket's limit: libzmq drops the
            # connection, so it goes on a connection of its own.
            sock = evil.curve_socket(zmq.DEALER, "return_port")
            if send_bounded(sock, huge, until):
                counts["60 MiB HEARTBEAT"] += 1
            sock.close(0)
            if send_bounded(evil.dealer, forged, until):
                counts["15 MiB HEARTBEAT"] += 1
            if send_bounded(evil.dealer, bad_signature, until):
                counts["15 MiB RESULT, bad signature"] += 1
            evil.drain()
    row.notes.append(
        f"{rounds} rounds: " + ", ".join(f"{n} x {what}" for what, n in counts.items())
    )


def attack_late_results(lab: Lab, row: Row) -> None:
    evil = lab.evil
    count = lab.args.late_jobs
    before = jids_for(lab.sb, EVIL)
    runs = spawn_runs(lab, EVIL, "files", 2, count)
    reap(runs, READY_TIMEOUT)
    jids = sorted(wait_new_jobs(lab, EVIL, before, count))
    evil.drain()
    frames = [
        evil.seal(MsgType.RESULT, big_result(MAX_RESULT_BYTES), jid=jid, ttl=RESULT_TTL)
        for jid in jids
    ]
    sent = resent = 0
    confirmed: list[str] = []
    with lab.window(row) as until:
        for frame in frames:
            if not send_bounded(evil.dealer, frame, until):
                break
            sent += 1
            confirmed += evil.receipts(evil.drain())
        # Wait for the first result's receipt, then resend it, and a different
        # result for the same job, again and again.
        while jids and jids[0] not in confirmed and time.monotonic() < until:
            if evil.dealer.poll(100):
                confirmed += evil.receipts(evil.drain())
        if jids:
            other = evil.seal(
                MsgType.RESULT, big_result(MAX_RESULT_BYTES // 2), jid=jids[0], ttl=RESULT_TTL
            )
            for i in range(RESENDS):
                if not send_bounded(evil.dealer, frames[0] if i % 2 == 0 else other, until):
                    break
                resent += 1
                confirmed += evil.receipts(evil.drain())
        while time.monotonic() < until:
            if evil.dealer.poll(100):
                confirmed += evil.receipts(evil.drain())
    stored = len(set(confirmed) & set(jids))
    whole = stubs = 0
    for jid in jids:
        body = control(
            lab.sb,
            MsgType.JOBS,
            {"action": "show", "host": EVIL, "target": None, "limit": 1, "jid": jid},
        )
        result = body["hosts"][0]["result"] if body["hosts"] else None
        if result is not None and result["status"] == "ok":
            whole += 1
        elif result is not None and "not stored" in (result["error"] or ""):
            stubs += 1
    row.notes.append(
        f"stored: {whole} whole results, {stubs} over-quota stubs (the quota counts "
        "every stored result of evil, also from earlier attacks)"
    )
    row.notes.append(
        f"{count} files jobs left unanswered; {sent} late results of "
        f"{MAX_RESULT_BYTES / MiB:.0f} MiB sent ({sent * MAX_RESULT_BYTES / MiB:.0f} MiB, "
        f"quota {lab.args.quota / MiB:.0f} MiB), {stored} confirmed; {resent} resends for a "
        f"stored job, {len(confirmed)} receipts in all"
    )


def attack_db_lock(lab: Lab, row: Row) -> None:
    path = os.path.join(lab.state_dir, "master.db")
    recovered: float | None = None
    with lab.window(row) as until:
        locker = sqlite3.connect(path, timeout=CLI_TIMEOUT, isolation_level=None)
        try:
            locker.execute("BEGIN IMMEDIATE")
            while time.monotonic() < until:
                time.sleep(0.1)
            locker.execute("ROLLBACK")
        finally:
            locker.close()
        with lab.pings_paused():
            try:
                recovered = lab.wait_honest()
            except BenchError as e:
                row.notes.append(f"after the lock: {e}")
    row.recovery_seconds = recovered
    if recovered is not None:
        row.notes.append(f"a ping succeeded {recovered:.1f} s after the lock was released")
    row.notes.append(f"lock held {lab.args.seconds:.0f} s")


@dataclass(frozen=True)
class Attack:
    name: str
    kind: str
    run: Callable[[Lab, Row], None]


ATTACKS = [
    Attack("baseline", "baseline", attack_baseline),
    Attack("resubscribe-stranger", "stranger", attack_resubscribe_stranger),
    Attack("resubscribe-minion", "minion", attack_resubscribe_minion),
    Attack("topics-stranger", "stranger", attack_topics_stranger),
    Attack("topics-minion", "minion", attack_topics_minion),
    Attack("idle", "stranger", attack_idle),
    Attack("burst", "stranger", attack_burst),
    Attack("keyflood", "stranger", attack_keyflood),
    Attack("multipart-stranger", "stranger", attack_multipart_stranger),
    Attack("handshake-stranger", "stranger", attack_handshake_stranger),
    Attack("enrol", "stranger", attack_enrol),
    Attack("oversized", "minion", attack_oversized),
    Attack("late-results", "minion", attack_late_results),
    Attack("db-lock", "local", attack_db_lock),
]


def run_attack(lab: Lab, attack: Attack) -> Row:
    row = Row(attack.name, attack.kind)
    try:
        attack.run(lab, row)
    except (BenchError, zmq.ZMQError, OSError, ProtocolError, EnvelopeError) as e:
        row.error = str(e).splitlines()[0] if str(e) else type(e).__name__
    row.survived = master_answers(lab.sb)
    if not lab.sb.master.running:
        code = lab.sb.master.proc.returncode if lab.sb.master.proc else None
        row.error = f"master died (exit code {code})"
        row.notes.append("master log, last lines:\n" + log_tail(lab.sb))
    judge(row, lab.args.quota)
    # The next attack starts from a master that serves the honest minion.
    try:
        if not row.survived:
            lab.restart_master()
            row.notes.append("the master was restarted for the next attack")
        lab.wait_honest()
    except BenchError as e:
        row.notes.append(f"not recovered before the next attack: {e}")
    return row


# ---- output ----


def fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def print_report(rows: list[Row], command: str, args: argparse.Namespace) -> None:
    print("safcm attack benchmark")
    print(f"command: {command}")
    print(
        f"machine: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"pyzmq {zmq.__version__} (libzmq {zmq.zmq_version()}); master under "
        f"ulimit -n {args.nofile or 'unchanged'}, result_quota {args.quota / MiB:.0f} MiB, "
        f"{args.seconds:.0f} s per attack"
    )
    print()
    print(
        f"{'attack':<21} {'kind':<8} {'RSS +MiB':>8} {'kept':>6} {'worst ping':>10} {'ctl':>6} "
        f"{'ok':>7} {'log KiB':>8} {'MiB/min':>7} {'DB +MiB':>7} {'CPU s':>6} {'fds':>5} "
        f"{'alive':>5}  verdict"
    )
    for r in rows:
        ping_ok = f"{r.pings_ok}/{len(r.pings)}"
        print(
            f"{r.name:<21} {r.kind:<8} {fmt(r.rss_growth_mib):>8} {fmt(r.rss_kept_mib):>6} "
            f"{fmt(r.worst_ping, '.2f'):>9}s {fmt(r.worst_control_ping, '.2f'):>5}s {ping_ok:>7} "
            f"{fmt(None if r.log_bytes is None else r.log_bytes / 1024, '.0f'):>8} "
            f"{fmt(r.log_mib_per_min, '.3f'):>7} {fmt(r.db_growth_mib):>7} "
            f"{fmt(r.cpu_seconds):>6} {fmt(r.fd_peak, 'd'):>5} "
            f"{'yes' if r.survived else 'NO':>5}  {r.verdict}"
        )
    print()
    print(
        f"goals (issue 8): stranger: RSS +{STRANGER_RSS_MIB:.0f} MiB at most, worst ping "
        f"{PING_GOAL:.0f} s at most with every ping ok, log {LOG_GOAL_MIB_PER_MIN:.0f} MiB/min "
        f"at most; minion: RSS +{MINION_RSS_MIB:.0f} MiB at most, DB growth within "
        f"result_quota ({args.quota / MiB:.0f} MiB); local: a ping within "
        f"{RECOVERY_GOAL:.0f} s of the end; all: the master survives."
    )
    print(
        "RSS +MiB: peak during the window minus before; kept: RSS after it minus before.\n"
        "worst ping: wall clock of `safcm-master run honest ping --json`, CLI start-up\n"
        "  included (see baseline); ctl: the same run sent by this process over the\n"
        "  control socket (no CLI start-up); ok: CLI pings that succeeded / started.\n"
        "log: bytes logs/master.log grew (window and settle); MiB/min of window.\n"
        "DB: master.db + master.db-wal growth. CPU s: the master's CPU in the window.\n"
        "fds: most descriptors the master held (sampled)."
    )
    for r in rows:
        lines = list(r.notes)
        if r.error:
            lines.insert(0, f"error: {r.error}")
        lines += [f"FAILED: {f}" for f in r.failed_goals]
        failed_pings = [p for p in r.pings + r.control_pings if not p["ok"]]
        if failed_pings:
            lines.append(
                f"{len(failed_pings)} pings failed, e.g. after {failed_pings[0]['seconds']:.1f} "
                f"s: {failed_pings[0]['error']}"
            )
        if lines:
            print(f"\n{r.name}:")
            for line in lines:
                print("  " + line.replace("\n", "\n    "))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--seconds", type=float, default=10.0, help="each attack's window (default: 10)"
    )
    names = [a.name for a in ATTACKS]
    parser.add_argument(
        "--only", metavar="NAME", help=f"run one attack (or group): {', '.join(names)}"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON to PATH")
    parser.add_argument(
        "--nofile",
        type=int,
        default=1024,
        help="the daemons' descriptor limit, soft and hard (default: 1024; 0: unchanged)",
    )
    parser.add_argument(
        "--quota", default="64MiB", help="the master's result_quota (default: 64MiB)"
    )
    parser.add_argument(
        "--late-jobs", type=int, default=8, help="jobs in late-results (default: 8)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    if not 1 <= args.seconds <= 600:
        parser.error("--seconds: 1 to 600")
    if not 1 <= args.late_jobs <= 64:
        parser.error("--late-jobs: 1 to 64")
    quota = args.quota.strip().lower().removesuffix("ib").removesuffix("b")
    scale = {"k": 1024, "m": MiB, "g": 1024 * MiB}.get(quota[-1:], 1)
    try:
        args.quota = int(float(quota.rstrip("kmg")) * scale)
    except ValueError:
        parser.error(f"--quota: not a size: {args.quota!r}")
    if args.only is not None:
        args.attacks = [
            a for a in ATTACKS if a.name == args.only or a.name.split("-")[0] == args.only
        ]
        if not args.attacks:
            parser.error(f"--only: no attack {args.only!r} (choose from {', '.join(names)})")
    else:
        args.attacks = list(ATTACKS)
    return args


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join([sys.executable, *sys.argv])
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    raise_fd_limit()
    rows: list[Row] = []
    lab = Lab(args)
    try:
        print("starting the master and the minions ...", file=sys.stderr, flush=True)
        lab.start()
        for attack in args.attacks:
            print(f"{attack.name} ...", file=sys.stderr, flush=True)
            rows.append(run_attack(lab, attack))
    except BenchError as e:
        print(f"benchmark stopped: {e}", file=sys.stderr)
    except KeyboardInterrupt:
        print("interrupted; the figures so far:", file=sys.stderr)
    finally:
        lab.close()
    print_report(rows, command, args)
    if args.json:
        write_json(
            args.json,
            {
                "command": command,
                "seconds": args.seconds,
                "nofile": args.nofile,
                "result_quota": args.quota,
                "goals": {
                    "stranger_rss_mib": STRANGER_RSS_MIB,
                    "minion_rss_mib": MINION_RSS_MIB,
                    "ping_seconds": PING_GOAL,
                    "log_mib_per_min": LOG_GOAL_MIB_PER_MIN,
                    "recovery_seconds": RECOVERY_GOAL,
                },
                "rows": [
                    asdict(r)
                    | {"worst_ping": r.worst_ping, "worst_control_ping": r.worst_control_ping}
                    for r in rows
                ],
            },
        )
    ok = len(rows) == len(args.attacks) and all(r.verdict == "PASS" for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
