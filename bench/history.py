"""Benchmark `jobs show` of a large job: the master's and the CLI's memory and
the CLI's wall time.

    .venv/bin/python bench/history.py [--hosts 1000] [--files 100] [--keep]

In a fresh temporary directory under /tmp, a `files` job to --hosts hosts is
written straight into the master's database, every host with the result of a
create of --files files, each with a diff of about 1 KiB (as bench/fanout.py's
create makes them). A real master daemon is then started on it, and the CLI
runs `jobs show JID --json` (output to a file) and `jobs show JID` (to
/dev/null). Printed, for each: the CLI's wall time and peak RSS, the bytes it
wrote, and the master's RSS before and its peak (VmHWM) after.

Nothing here is asserted; it prints figures.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from bench.fanout import generate_repo
from bench.swarm import measured_argv, read_measured, rss_kib
from safcm.common import codec
from safcm.common.model import ApplyResult, FileChange, FileState, FileType, Outcome
from safcm.master.db import open_db
from safcm.master.jobcontent import JobParts
from safcm.master.jobstore import HostStatus, JobRecord, JobStore, StoredResult
from safcm.master.sandbox import Sandbox

JID = "20261202T000000.000000Z"
# Results written per transaction while the job is filled in.
RESULTS_PER_TRANSACTION = 200
# Lines of each file's diff, of DIFF_LINE_CHARS each: about 1 KiB a file.
DIFF_LINES = 20
DIFF_LINE_CHARS = 50
# Seconds the CLI may take for one `jobs show`.
CLI_TIMEOUT = 600.0


def create_result(files: int) -> dict:
    """A files result as a create of `files` files leaves it."""
    state = FileState(FileType.FILE, 0o644, 0, 0, "root", "root")
    diff = "".join(f"+{'x' * (DIFF_LINE_CHARS - 2)}\n" for _ in range(DIFF_LINES))
    changes = [
        FileChange(f"/etc/bench/f{i:04d}.conf", True, state, None, diff, Outcome.APPLIED)
        for i in range(files)
    ]
    apply = ApplyResult(dry_run=False, changes=changes, triggers=[], failures=[], owed=[])
    now = time.time()
    return {
        "module": "files",
        "status": "ok",
        "started": now,
        "finished": now + 1.0,
        "apply": apply.to_wire(),
        "ping": None,
        "error": None,
    }


def fill(state_dir: str, hosts: list[str], files: int) -> int:
    """The job and its results; the bytes of one stored result."""
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    conn = open_db(state_dir)
    store = JobStore(conn)
    now = time.time()
    parts = JobParts(now + 3600)
    body = {
        "module": "files",
        "dry_run": False,
        "deadline": now + 3600,
        "files": [],
        "absent": [],
        "purge": [],
        "secrets": [],
    }
    for host in hosts:
        parts.add(host, body, lambda _host: frozenset())
    store.create(JobRecord(JID, now, now + 3600, "root", "*", "files", False, None), parts)
    result = create_result(files)
    packed = codec.pack(result)
    for start in range(0, len(hosts), RESULTS_PER_TRANSACTION):
        stored = [
            StoredResult(JID, h, HostStatus.CHANGED, files, result, now + 1, packed)
            for h in hosts[start : start + RESULTS_PER_TRANSACTION]
        ]
        store.record([], stored, now=now + 1)
    conn.close()
    return len(packed)


def show(sb: Sandbox, args: list[str], out: str) -> tuple[float, int, int]:
    """Run the CLI: (seconds, its peak RSS in KiB, bytes written)."""
    command = [sb.python, "-m", "safcm.master.cli", "-c", sb.master.config, *args]
    # Its peak RSS, its own (bench/swarm.py measured_argv(): this process is larger).
    report = os.path.join(sb.base, "cli-usage")
    with open(out, "wb") as stdout:
        started = time.monotonic()
        proc = subprocess.Popen(
            measured_argv(command, report), stdout=stdout, stderr=subprocess.PIPE
        )
        _, error = proc.communicate(timeout=CLI_TIMEOUT)
        seconds = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"{shlex.join(args)} failed: {error.decode().strip()}")
    written = os.path.getsize(out) if out != os.devnull else 0
    return seconds, read_measured(report)[1], written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    base = tempfile.mkdtemp(prefix=f"safcm-history-{args.hosts}-", dir="/tmp")
    sb: Sandbox | None = None
    try:
        repo = pathlib.Path(base) / "repo"
        generate_repo(repo, 1, 1)
        sb = Sandbox(base, str(repo), log_level="info")
        hosts = [f"m{i:05d}" for i in range(args.hosts)]
        started = time.monotonic()
        size = fill(sb.master.settings["state_dir"], hosts, args.files)
        print(
            f"{args.hosts} results of {size} bytes written in {time.monotonic() - started:.1f} s",
            file=sys.stderr,
        )
        sb.start_master()
        pid = sb.master.proc.pid
        print("safcm jobs show benchmark")
        print(f"command: {shlex.join([sys.executable, *sys.argv])}")
        print(f"load before: {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} CPUs")
        print(f"job: {args.hosts} hosts, a stored result of {size / 1024:.0f} KiB each")
        for label, cli_args, out in (
            ("--json", ["jobs", "show", JID, "--json"], os.path.join(base, "show.json")),
            ("text", ["jobs", "show", JID], os.devnull),
        ):
            before = rss_kib("VmRSS", pid)
            seconds, cli_kib, written = show(sb, cli_args, out)
            peak = rss_kib("VmHWM", pid)
            print(
                f"  jobs show {label:6}: {seconds:6.2f} s; CLI peak RSS {cli_kib / 1024:6.0f} MiB; "
                f"master RSS before {before / 1024:5.0f} MiB, peak since start "
                f"{peak / 1024:5.0f} MiB" + (f"; {written / 1e6:.0f} MB written" if written else "")
            )
    finally:
        if sb is not None:
            sb.close()
        if args.keep:
            print(f"kept {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
