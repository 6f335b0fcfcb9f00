"""The cmd module on the master: `run TARGET cmd -- COMMAND [ARG...]` sends
the same command to every targeted host, and shows how it ended on each.

It compiles nothing from the repository (only its hosts and groups are
read, for the target). The command's timeout is the run's --timeout (or
job_timeout); the job waits REPORT_MARGIN longer, so a command killed at
its timeout is still reported, not "no response".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from safcm.master.modules import MasterModule, Request

if TYPE_CHECKING:
    from safcm.master.render import Style


def _timeout(request: Request) -> float:
    from safcm.common.modules.cmd import MAX_TIMEOUT, MIN_TIMEOUT

    return min(max(request.timeout, MIN_TIMEOUT), MAX_TIMEOUT)


def compile_cmd(repo: Any, hosts: list[str], request: Request) -> dict[str, dict[str, Any]]:
    """The same command for every host."""
    options = request.options
    cmd = {"argv": list(options["argv"]), "shell": options["shell"], "timeout": _timeout(request)}
    return {host: {"cmd": dict(cmd)} for host in hosts}


def job_seconds(request: Request) -> float:
    from safcm.common.modules.cmd import REPORT_MARGIN

    return _timeout(request) + REPORT_MARGIN


def command_line(argv: list[str]) -> str:
    """The argv as a shell would read it back, escaped for a terminal."""
    import shlex

    from safcm.common.text import escape

    return escape(shlex.join(argv))


def render(cmd: Mapping[str, Any], style: Style) -> list[str]:
    """The command, how it ended, and its output; every string from the
    host escaped, so output cannot move the cursor or forge lines."""
    from safcm.common.modules.cmd import CmdStatus
    from safcm.common.text import escape
    from safcm.master.render import INDENT, escape_lines

    status = cmd["status"]
    how = {
        CmdStatus.OK: style.green("exit 0"),
        CmdStatus.FAILED: style.red(f"exit {cmd['exit_code']}"),
        CmdStatus.KILLED: style.red(f"killed by {escape(str(cmd['signal']))}"),
        CmdStatus.TIMED_OUT: style.red(
            f"timed out after {cmd['timeout']:g} s: killed with its process group"
        ),
        CmdStatus.NOT_STARTED: style.red(f"not started: {escape(str(cmd['error']))}"),
        CmdStatus.WOULD_RUN: style.yellow("would run (dry run: nothing was run)"),
    }.get(status, escape(status))
    if status != CmdStatus.WOULD_RUN:
        how += style.dim(f" ({cmd['duration']:.2f} s)")
    lines = [f"{INDENT}$ {style.bold(command_line(cmd['argv']))}", f"{INDENT}{how}"]
    for stream in ("stdout", "stderr"):
        text, omitted = cmd[stream], cmd[f"{stream}_omitted"]
        if not text and not omitted:
            continue
        lines.append(f"{INDENT}{stream}:")
        lines.extend(f"{INDENT}{INDENT}{line}" for line in escape_lines(text))
        if omitted:
            lines.append(f"{INDENT}{INDENT}{style.yellow(f'(truncated, {omitted} bytes more)')}")
    return lines


MODULE = MasterModule(
    name="cmd",
    result_key="cmd",
    summary="run a command on every host: run TARGET cmd [--shell] -- COMMAND [ARG...]",
    compile=compile_cmd,
    render=render,
    job_seconds=job_seconds,
)
