"""The cmd module on the minion: run one command, as root, and report how it
ended, its output and its duration.

How it runs (the planner, invocation(), decides; run_invocation() acts):
- the argv as given, without a shell; with `shell`, `/bin/sh -c` and the
  arguments joined by spaces;
- stdin from /dev/null, working directory /, and a minimal environment:
  PATH (the usual system directories), LANG=C.UTF-8 and HOME (root's home,
  from the password database), nothing from the daemon's own;
- in a process group of its own: at the timeout the whole group is killed
  (SIGKILL, which a command cannot ignore), and the command is reported as
  timed out;
- stdout and stderr are read apart, each kept up to OUTPUT_MAX bytes and the
  rest counted; reading stops once the command exited and its pipes have
  been quiet for DRAIN seconds (a daemon it started may hold them open).

minion.yaml `root:` does not apply: the command runs in the real root
directory of the host (root: is where the file engine writes, for tests
and the demo). A minion that must not run commands leaves cmd out of
`modules:`.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import selectors
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from safcm.common.modules.cmd import OUTPUT_MAX, WIRE, CmdStatus
from safcm.minion.children import CHILD_UMASK
from safcm.minion.modules import Context, Done, MinionModule
from safcm.minion.triggers import SHELL, TRIGGER_PATH

# Seconds we keep reading after the command exited, while its pipes still
# give output; a daemon it started may hold them open for ever.
DRAIN = 1.0
# Bytes per read from a pipe.
_CHUNK = 64 * 1024
LANG = "C.UTF-8"
# HOME when the password database has no entry for our user.
FALLBACK_HOME = "/"


@dataclass(frozen=True)
class Invocation:
    """How a command is started: decided, not yet done."""

    argv: list[str]
    env: dict[str, str]
    cwd: str
    timeout: float  # seconds


def invocation(fields: Mapping[str, Any], home: str) -> Invocation:
    """The planner: the job's cmd fields -> how the command is started."""
    cmd = fields["cmd"]
    argv = [SHELL, "-c", " ".join(cmd["argv"])] if cmd["shell"] else list(cmd["argv"])
    env = {"PATH": TRIGGER_PATH, "LANG": LANG, "HOME": home}
    return Invocation(argv, env, "/", cmd["timeout"])


def home_of_this_user() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_dir or FALLBACK_HOME
    except KeyError:
        return FALLBACK_HOME


def execute(fields: Mapping[str, Any], ctx: Context, hold: bool) -> Done:
    plan = invocation(fields, home_of_this_user())
    if ctx.dry_run:
        section = _section(plan, CmdStatus.WOULD_RUN, duration=0.0)
    else:
        section = run_invocation(plan)
    return Done(section, WIRE.succeeded(section, None) is not False)


def run_invocation(plan: Invocation) -> dict[str, Any]:
    """The executor: start the command, read its output, wait for it until
    its timeout (then kill its process group), and report. Never raises for
    a command that fails or cannot be started."""
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            plan.argv,
            cwd=plan.cwd,
            env=plan.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group: a timeout kills it all
            umask=CHILD_UMASK,  # not the daemon's private one (minion/children.py)
        )
    except OSError as e:
        error = f"cannot run {plan.argv[0]}: {e.strerror or e}"
        return _section(
            plan, CmdStatus.NOT_STARTED, duration=time.monotonic() - started, error=error
        )
    deadline = started + plan.timeout
    out, err = _Capped(), _Capped()
    stdout, stderr = proc.stdout, proc.stderr
    if stdout is None or stderr is None:  # never: both are pipes
        raise RuntimeError("the command's pipes are missing")
    with stdout, stderr:
        _read(proc, {stdout.fileno(): out, stderr.fileno(): err}, deadline)
    timed_out = False
    try:
        proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        timed_out = True
    if timed_out:
        with contextlib.suppress(ProcessLookupError):  # the group is gone already
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    duration = time.monotonic() - started
    code = proc.returncode
    fields: dict[str, Any] = {"stdout": out, "stderr": err}
    if timed_out:
        return _section(plan, CmdStatus.TIMED_OUT, duration, signal_name="SIGKILL", **fields)
    if code < 0:
        name = _signal_name(-code)
        return _section(plan, CmdStatus.KILLED, duration, signal_name=name, **fields)
    status = CmdStatus.OK if code == 0 else CmdStatus.FAILED
    return _section(plan, status, duration, exit_code=code, **fields)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _read(proc: subprocess.Popen[bytes], pipes: dict[int, _Capped], deadline: float) -> None:
    """Read both pipes until both are closed, the deadline, or DRAIN after
    the command exited."""
    stop_at = deadline
    exited = False
    with selectors.DefaultSelector() as selector:
        for fd in pipes:
            selector.register(fd, selectors.EVENT_READ)
        while selector.get_map():
            now = time.monotonic()
            if not exited and proc.poll() is not None:
                exited = True
                stop_at = min(deadline, now + DRAIN)
            if now >= stop_at:
                return
            # Wake up at least every DRAIN to notice the exit of a silent command.
            for key, _ in selector.select(timeout=min(DRAIN, stop_at - now)):
                chunk = os.read(key.fd, _CHUNK)
                if chunk:
                    pipes[key.fd].add(chunk)
                else:
                    selector.unregister(key.fd)  # closed: nobody writes it any more


class _Capped:
    """Output kept up to OUTPUT_MAX bytes, with a count of the rest."""

    def __init__(self) -> None:
        self.kept = bytearray()
        self.omitted = 0

    def add(self, chunk: bytes) -> None:
        room = OUTPUT_MAX - len(self.kept)
        self.kept += chunk[:room]
        self.omitted += max(0, len(chunk) - room)


def _section(
    plan: Invocation,
    status: str,
    duration: float,
    *,
    exit_code: int | None = None,
    signal_name: str | None = None,
    error: str | None = None,
    stdout: _Capped | None = None,
    stderr: _Capped | None = None,
) -> dict[str, Any]:
    out, err = stdout or _Capped(), stderr or _Capped()
    return {
        "argv": plan.argv,
        "status": status,
        "exit_code": exit_code,
        "signal": signal_name,
        "error": error,
        # A cut in the middle of a character, or bytes that are not UTF-8,
        # become U+FFFD: at most one character per byte, so it fits.
        "stdout": out.kept.decode("utf-8", "replace"),
        "stdout_omitted": out.omitted,
        "stderr": err.kept.decode("utf-8", "replace"),
        "stderr_omitted": err.omitted,
        "timeout": plan.timeout,
        "duration": duration,
    }


MODULE = MinionModule(WIRE.name, execute)
