"""Benchmark the CLI of `run` over many hosts: its peak RSS and wall time, with
and without --json, the daemon's side replayed.

    .venv/bin/python bench/runjson.py [--hosts 1000] [--files 100] [--source DIR]

A control socket in a fresh temporary directory under /tmp answers the CLI's
RUN as a master would: RUN_STARTED for --hosts hosts, then each host's
RUN_HOST_RESULT, in reverse host order (results come in any order; the
document sorts them), each with the result of a create of --files files with
a diff of about 1 KiB each (bench/history.py's create_result(), ~110 KiB a
host at 100 files), then RUN_DONE. The CLI runs as a user runs it,
`safcm-master run '*' files --json` (output to a file) and without --json
(to /dev/null); no master or minion runs, so only the CLI is measured, and
10,000 hosts take seconds. Printed, for each: the CLI's wall time and peak
RSS, and for --json the bytes written and their SHA-256 (the same document
from two versions has the same digest).

--source DIR measures the CLI of another checkout (say, a worktree of an
older commit): the CLI runs with DIR as its `safcm` package.

Nothing here is asserted; it prints figures.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pathlib
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from bench.history import create_result
from bench.swarm import measured_argv, read_measured
from safcm.common.wire import FrameReader, MsgType, encode_frame, pack_plain

JID = "20261202T000000.000000Z"
# When every host's result says it started (a unix time): the same document on every run.
STARTED = 1764633600.0
# Seconds the CLI may take for one run.
CLI_TIMEOUT = 900.0
# Bytes read per recv() while the CLI's request comes in.
READ_CHUNK = 65536


def serve(listener: socket.socket, runs: int, hosts: list[str], files: int) -> None:
    """Answer one RUN on each of `runs` connections, as the master answers it."""
    result = {**create_result(files), "started": STARTED, "finished": STARTED + 1.0}
    summary = {
        "targeted": len(hosts),
        "changed": len(hosts),
        "unchanged": 0,
        "failed": 0,
        "no_response": 0,
    }
    for _ in range(runs):
        conn, _ = listener.accept()
        with conn:
            reader = FrameReader()
            while not reader.feed(conn.recv(READ_CHUNK)):
                pass
            send = conn.sendall
            send(encode_frame(pack_plain(MsgType.RUN_STARTED, started(hosts))))
            for host in reversed(hosts):
                body = {"jid": JID, "host": host, "status": "ok", "result": result}
                send(encode_frame(pack_plain(MsgType.RUN_HOST_RESULT, body)))
            send(encode_frame(pack_plain(MsgType.RUN_DONE, {"jid": JID, "summary": summary})))


def started(hosts: list[str]) -> dict:
    return {"jid": JID, "hosts": hosts, "skipped": []}


def run_cli(
    config: str, options: list[str], out: str, env: dict[str, str]
) -> tuple[float, int, int, str]:
    """The CLI's run: (seconds, its peak RSS in KiB, bytes written, their SHA-256)."""
    command = [sys.executable, "-m", "safcm.master.cli", "-c", config, "run", "*", "files"]
    report = os.path.join(os.path.dirname(config), "cli-usage")
    with open(out, "wb") as stdout:
        started_at = time.monotonic()
        proc = subprocess.Popen(
            measured_argv([*command, *options], report),
            stdout=stdout,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,  # a group, to stop the CLI with its measuring parent
        )
        try:
            _, error = proc.communicate(timeout=CLI_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise SystemExit(f"run {shlex.join(options)}: no exit in {CLI_TIMEOUT:.0f} s") from None
        seconds = time.monotonic() - started_at
    if proc.returncode != 0:
        raise SystemExit(f"run {shlex.join(options)}: exit {proc.returncode}: {error.decode()}")
    _, peak = read_measured(report)
    if out == os.devnull:
        return seconds, peak, 0, ""
    digest = hashlib.sha256()
    with open(out, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return seconds, peak, os.path.getsize(out), digest.hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--source", help="the checkout whose CLI is measured")
    args = parser.parse_args()
    base = tempfile.mkdtemp(prefix=f"safcm-runjson-{args.hosts}-", dir="/tmp")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        path = os.path.join(base, "control.sock")
        listener.bind(path)
        listener.listen(1)
        config = os.path.join(base, "master.yaml")
        with open(config, "w") as f:
            f.write(f"state_dir: {base}\ncontrol_socket: {path}\n")
        env = dict(os.environ)
        if args.source:
            # A directory whose `safcm` is the other checkout, ahead of this one.
            os.symlink(os.path.abspath(args.source), os.path.join(base, "safcm"))
            env["PYTHONPATH"] = base
        hosts = [f"m{i:05d}" for i in range(args.hosts)]
        measured = (
            ("--json", ["--json"], os.path.join(base, "run.json")),
            ("text", [], os.devnull),
        )
        server = (listener, len(measured), hosts, args.files)
        threading.Thread(target=serve, args=server, daemon=True).start()
        print("safcm run CLI benchmark (the daemon's side replayed)")
        print(f"command: {shlex.join([sys.executable, *sys.argv])}")
        print(f"load before: {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} CPUs")
        print(f"run: {args.hosts} hosts, {args.files} files created on each")
        for label, options, out in measured:
            seconds, kib, written, digest = run_cli(config, options, out, env)
            print(
                f"  run {label:6}: {seconds:6.2f} s; CLI peak RSS {kib / 1024:6.0f} MiB"
                + (f"; {written / 1e6:.0f} MB written, sha256 {digest[:16]}" if written else "")
            )
    finally:
        listener.close()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
