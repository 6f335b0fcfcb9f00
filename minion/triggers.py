"""Running the trigger commands of an apply, one after the other.

Each command runs as `/bin/sh -c COMMAND` with cwd "/", stdin from
/dev/null, stdout and stderr captured together (and capped), a small fixed
environment, and a timeout after which its whole process group is killed.
Which commands run, and in which order, is decided in minion/plan.py.

Every command runs even when an earlier one failed: triggers are independent
reactions to changed files ("reload nginx", "restart app"), and the report
shows each one's status, so nothing is silently skipped.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Iterable

from safcm.common.model import TriggerRun, TriggerStatus
from safcm.minion.children import CHILD_UMASK

# Seconds one trigger may run before its process group is killed. Below the
# master's default job timeout (60 s), so a hung trigger still lets the
# minion send a result in time.
TRIGGER_TIMEOUT = 30.0
# Bytes of output kept per trigger; the rest is counted, not kept. The
# output travels to the master and into its job history.
TRIGGER_OUTPUT_MAX = 64 * 1024
# Seconds we keep reading output after the shell has exited. A daemon that
# the trigger started may hold the pipe open for ever; we stop reading then,
# and leave it running (it is what the trigger asked for).
TRIGGER_DRAIN = 1.0
# Seconds between checks whether the shell has exited, while it is silent.
_POLL = 0.05
# Bytes per read from the output pipe.
_CHUNK = 64 * 1024
# The PATH of a trigger: the usual system directories, and nothing from the
# daemon's own environment.
TRIGGER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SHELL = "/bin/sh"


def would_run(commands: Iterable[str]) -> list[TriggerRun]:
    """The dry-run report: every command listed, none run."""
    return [TriggerRun(command, TriggerStatus.WOULD_RUN) for command in commands]


def run_triggers(
    commands: Iterable[str], *, root: str, timeout: float = TRIGGER_TIMEOUT
) -> list[TriggerRun]:
    """Run each command once, in the given order; see run_trigger()."""
    return [run_trigger(command, root=root, timeout=timeout) for command in commands]


def run_trigger(command: str, *, root: str, timeout: float = TRIGGER_TIMEOUT) -> TriggerRun:
    """Run one command and report its status, exit code, output and duration.

    The environment holds PATH and SAFCM_ROOT=`root`, so that a trigger can
    act on the files of a sandboxed root. Never raises for a failing command.
    """
    started = time.monotonic()
    env = {"PATH": TRIGGER_PATH, "SAFCM_ROOT": root}
    try:
        proc = subprocess.Popen(
            [SHELL, "-c", command],
            cwd="/",
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group, so a timeout kills it all
            umask=CHILD_UMASK,  # not the daemon's private one (minion/children.py)
        )
    except OSError as e:
        return TriggerRun(
            command,
            TriggerStatus.FAILED,
            output=f"could not start {SHELL}: {e.strerror}\n",
            duration=time.monotonic() - started,
        )
    deadline = started + timeout
    output = _Output(TRIGGER_OUTPUT_MAX)
    with proc.stdout:  # type: ignore[union-attr]  # stdout=PIPE makes it a file
        _read_output(proc, output, deadline)
    try:
        proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):  # it may exit on its own meanwhile
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        output.note(f"[killed after the trigger timeout of {timeout:g} s]")
        return TriggerRun(
            command, TriggerStatus.TIMEOUT, None, output.text(), time.monotonic() - started
        )
    duration = time.monotonic() - started
    if proc.returncode == 0:
        return TriggerRun(command, TriggerStatus.OK, 0, output.text(), duration)
    if proc.returncode > 0:
        return TriggerRun(command, TriggerStatus.FAILED, proc.returncode, output.text(), duration)
    output.note(f"[killed by signal {signal.Signals(-proc.returncode).name}]")
    return TriggerRun(command, TriggerStatus.FAILED, None, output.text(), duration)


def _read_output(proc: subprocess.Popen[bytes], output: _Output, deadline: float) -> None:
    """Read the pipe until EOF, the deadline, or TRIGGER_DRAIN after the shell exited."""
    fd = proc.stdout.fileno()  # type: ignore[union-attr]
    stop_at = deadline
    exited = False
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while True:
            now = time.monotonic()
            if not exited and proc.poll() is not None:
                exited = True
                stop_at = min(deadline, now + TRIGGER_DRAIN)
            if now >= stop_at:
                return
            if selector.select(timeout=min(_POLL, stop_at - now)):
                chunk = os.read(fd, _CHUNK)
                if not chunk:
                    return  # EOF: nobody holds the pipe any more
                output.add(chunk)


class _Output:
    """Output kept up to a cap, with a count of what was dropped."""

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._kept = bytearray()
        self._dropped = 0
        self._notes: list[str] = []

    def add(self, chunk: bytes) -> None:
        room = self._cap - len(self._kept)
        self._kept += chunk[:room]
        self._dropped += max(0, len(chunk) - room)

    def note(self, line: str) -> None:
        self._notes.append(line)

    def text(self) -> str:
        text = self._kept.decode("utf-8", "replace")
        notes = list(self._notes)
        if self._dropped:
            notes.insert(0, f"[output truncated: {self._dropped} more bytes not shown]")
        if notes:
            if text and not text.endswith("\n"):
                text += "\n"
            text += "".join(note + "\n" for note in notes)
        return text
